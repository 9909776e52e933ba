"""In-memory store for tests: same interface, nothing survives the process."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from gateway.manscdp import CatalogItem
from gateway.model import Alarm, AuditEntry, Device


class MemoryStore:
    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}
        self.items: dict[tuple[str, str], CatalogItem] = {}
        self.alarms: list[Alarm] = []
        self.id_map: list[tuple[str, str, str]] = []
        self.upper_registrations: dict[str, tuple[str, str, int]] = {}
        self.records: dict[str, dict[str, dict[str, Any]]] = {}
        self.audit: list[AuditEntry] = []

    def load_devices(self) -> list[Device]:
        return [replace(d) for d in self.devices.values()]

    def save_device(self, device: Device) -> None:
        self.devices[device.device_id] = replace(device)

    def delete_device(self, device_id: str) -> None:
        self.devices.pop(device_id, None)

    def load_items(self) -> list[tuple[str, CatalogItem]]:
        return [(owner, item) for (owner, _), item in self.items.items()]

    def save_item(self, owner_id: str, item: CatalogItem, now: float) -> None:
        self.items[(owner_id, item.device_id)] = item

    def delete_item(self, owner_id: str, item_id: str) -> None:
        self.items.pop((owner_id, item_id), None)

    def save_alarm(self, alarm: Alarm) -> None:
        self.alarms.append(replace(alarm, id=len(self.alarms) + 1))

    def load_alarms(self, *, limit: int = 100) -> list[Alarm]:
        return list(reversed(self.alarms[-limit:]))

    def load_id_map(self, upper_id: str | None = None) -> list[tuple[str, str, str]]:
        return [row for row in self.id_map if upper_id is None or row[0] == upper_id]

    def save_mapping(self, upper_id: str, local_id: str, upper_item: str, now: float) -> None:
        self.id_map.append((upper_id, local_id, upper_item))

    def load_upper_registrations(self) -> dict[str, tuple[str, str, int]]:
        return dict(self.upper_registrations)

    def save_upper_registration(
        self, upper_id: str, call_id: str, from_tag: str, cseq: int, now: float
    ) -> None:
        self.upper_registrations[upper_id] = (call_id, from_tag, cseq)

    def load_records(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.records.get(kind, {})
        return [(key, copy.deepcopy(rows[key])) for key in sorted(rows)]

    def save_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self.records.setdefault(kind, {})[key] = copy.deepcopy(data)

    def delete_record(self, kind: str, key: str) -> None:
        self.records.get(kind, {}).pop(key, None)

    def save_audit(self, entry: AuditEntry) -> None:
        self.audit.append(replace(entry, id=len(self.audit) + 1))

    def load_audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        rows = [e for e in reversed(self.audit) if before is None or (e.id or 0) < before]
        return [replace(e) for e in rows[:limit]]

    def committed(self) -> None:
        return None  # nothing is ever more durable than it is now

    def healthy(self) -> bool:
        return True

    async def flush(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
