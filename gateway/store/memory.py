"""In-memory store for tests: same interface, nothing survives the process."""

from __future__ import annotations

from dataclasses import replace

from gateway.model import Device


class MemoryStore:
    def __init__(self) -> None:
        self.devices: dict[str, Device] = {}

    def load_devices(self) -> list[Device]:
        return [replace(d) for d in self.devices.values()]

    def save_device(self, device: Device) -> None:
        self.devices[device.device_id] = replace(device)

    def delete_device(self, device_id: str) -> None:
        self.devices.pop(device_id, None)

    async def flush(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
