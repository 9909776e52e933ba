"""The SQLite store: batched writes, restart, and a close that never loses a write."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from gateway.model import Device
from gateway.store import SqliteStore, read_devices


async def test_close_while_a_flush_is_running_loses_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", flush_interval=0.01)
    writing = threading.Event()
    real_write = store._write

    def slow_write(batch: dict[str, Any]) -> None:
        # A slow disk: a transaction is still open in the writer thread when close() comes.
        store._db.execute("BEGIN")
        writing.set()
        time.sleep(0.3)
        store._db.execute("COMMIT")
        real_write(batch)

    store._write = slow_write  # type: ignore[method-assign]
    await store.start()
    for i in range(200):
        store.save_device(Device(f"340200000013200{i:05d}", online=True))
    while not writing.is_set():
        await asyncio.sleep(0.005)
    store.save_device(Device("34020000001320099999", online=True))  # queued during the write
    await store.close()
    ids = {d.device_id for d in read_devices(tmp_path / "s.db")}
    assert len(ids) == 201 and "34020000001320099999" in ids


async def test_delete_and_reload(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.start()
    store.save_device(Device("34020000001320000001", host="10.0.0.1", port=5060, online=True))
    store.save_device(Device("34020000001320000002"))
    await store.flush()
    store.delete_device("34020000001320000002")
    await store.close()
    again = SqliteStore(tmp_path / "s.db")
    devices = again.load_devices()
    await again.close()
    assert [(d.device_id, d.host, d.port, d.online) for d in devices] == [
        ("34020000001320000001", "10.0.0.1", 5060, True)
    ]


async def test_saves_waiting_for_their_commit_share_one(tmp_path: Path) -> None:
    """Group commit: each REGISTER waits for the commit holding its device, and those that
    arrive together share one write; the writer does not wait for ``flush_interval``."""
    store = SqliteStore(tmp_path / "s.db", flush_interval=60.0)
    writes = 0
    real_write = store._write

    def counting(batch: Any) -> None:
        nonlocal writes
        writes += 1
        real_write(batch)

    store._write = counting  # type: ignore[method-assign]
    await store.start()
    try:
        waiting = []
        for i in range(100):
            store.save_device(Device(f"340200000013200{i:05d}", online=True))
            fut = store.committed()
            assert fut is not None
            waiting.append(fut)
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert writes == 1
        assert len(read_devices(tmp_path / "s.db")) == 100
        assert store.committed() is None  # nothing pending, nothing being written
    finally:
        await store.close()
