"""Persistence of the model behind one small interface.

Writes are queued and flushed in batches off the event loop's hot path; reads at start-up load
everything. ``sqlite`` is the embedded default, ``memory`` serves tests.

Catalog items are stored as the codec's :class:`~gateway.manscdp.messages.CatalogItem`, the
standard's own record of ~60 fields, rather than copied into a parallel model class: a second
class would repeat every field and double the work of syncing 200,000 channels.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

from gateway.manscdp import CatalogItem
from gateway.model import Alarm, AuditEntry, Device


class StoreUnavailable(Exception):
    """A write refused because the store cannot take it now (Redis unreachable for long
    enough that ``max_queued_writes`` are waiting); the message says why. The HTTP API answers
    503 with it, the registrar no 200."""


class Store(Protocol):
    def load_devices(self) -> list[Device]: ...

    def save_device(self, device: Device) -> None:
        """Queue the device's current state for the next flush (a snapshot is taken now)."""

    def delete_device(self, device_id: str) -> None: ...

    def load_items(self) -> list[tuple[str, CatalogItem]]:
        """Every stored catalog item with the ID of the device that reported it."""
        ...

    def save_item(self, owner_id: str, item: CatalogItem, now: float) -> None:
        """Queue an item (items are treated as immutable values: never mutate one after)."""

    def delete_item(self, owner_id: str, item_id: str) -> None: ...

    def save_alarm(self, alarm: Alarm) -> None: ...

    def load_alarms(self, *, limit: int = 100) -> list[Alarm]:
        """The newest alarms first."""
        ...

    def load_id_map(self, upper_id: str | None = None) -> list[tuple[str, str, str]]:
        """(upper ID, local ID, the ID that upper knows the item by), oldest first; only
        ``upper_id``'s when given."""
        ...

    def save_mapping(self, upper_id: str, local_id: str, upper_item: str, now: float) -> None:
        """Record a recoded ID; mappings are never changed or removed once written."""

    def load_upper_registrations(self) -> dict[str, tuple[str, str, int]]:
        """Upper ID -> (Call-ID, From tag, CSeq) of the gateway's last accepted REGISTER there
        (RFC 3261 §10.2.4: refreshes keep the Call-ID, the CSeq grows)."""
        ...

    def save_upper_registration(
        self, upper_id: str, call_id: str, from_tag: str, cseq: int, now: float
    ) -> None:
        """Queue the gateway's registration at an upper (one row per upper, replaced)."""

    def load_records(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        """Every stored record of ``kind`` (units, accounts, users, tokens, uppers...) as
        (key, data), in key order. The operations side (``gateway.api`` and the directory) keeps
        its objects this way: a JSON document per key, so a new field needs no migration."""
        ...

    def save_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Queue a record (replaces the one under the same kind and key). ``data`` must be
        JSON-serialisable; a copy is taken now."""

    def delete_record(self, kind: str, key: str) -> None: ...

    def save_audit(self, entry: AuditEntry) -> None:
        """Queue an audit entry (who did what, when, from where); entries are never changed."""

    def load_audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """The newest entries first (with their ``id``), older than ``before`` when given.
        Entries still queued are included."""
        ...

    def committed(self) -> asyncio.Future[None] | None:
        """Done once everything saved so far is durable (``None``: it already is). Callers
        that acknowledge a save to a peer (the registrar's 200 OK) await it; many share one
        commit."""

    def healthy(self) -> bool:
        """False while writes are failing (``/readyz`` says so)."""
        ...

    async def flush(self) -> None:
        """Write everything queued so far."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush and release resources."""


# The implementations, after the interface they implement (neither imports this package).
from gateway.store.memory import MemoryStore  # noqa: E402
from gateway.store.sqlite import SqliteStore, read_catalog, read_devices, read_id_map  # noqa: E402

if TYPE_CHECKING:
    from gateway.store.redis import RedisStore


def __getattr__(name: str) -> Any:
    """``RedisStore`` is imported when first asked for: redis-py takes a fifth of a second to
    import, which a SQLite gateway and the command line need not pay."""
    if name == "RedisStore":
        from gateway.store.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "read_catalog",
    "read_devices",
    "read_id_map",
]
