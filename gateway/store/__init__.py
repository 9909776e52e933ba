"""Persistence of the model behind one small interface.

Writes are queued and flushed in batches off the event loop's hot path; reads at start-up load
everything. ``sqlite`` is the embedded default, ``memory`` serves tests.
"""

from __future__ import annotations

from typing import Protocol

from gateway.model import Device


class Store(Protocol):
    def load_devices(self) -> list[Device]: ...

    def save_device(self, device: Device) -> None:
        """Queue the device's current state for the next flush (a snapshot is taken now)."""

    def delete_device(self, device_id: str) -> None: ...

    async def flush(self) -> None:
        """Write everything queued so far."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush and release resources."""
