"""Fault: the store's disk fills up (issue 14, "the store fails").

The SQLite file lives on a tiny tmpfs made for the test (unmounted afterwards); when mounting
is refused, the write itself is made to fail with SQLite's disk-full error instead. While the
disk is full the gateway must say so (a ``store.write_failed`` error in the log, the
``store.write_failed`` counter), keep retrying the failed batch without losing it, acknowledge
no REGISTER it could not commit, and keep what was committed before; when space comes back the
pending writes land without anything being saved again.

Catches: a failed batch dropped (the devices registered while the disk was full missing after
recovery), a silent failure (no log event or counter), a write given up after one attempt, a
200 OK sent for a registration that was not on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.sip import Endpoint
from gateway.store import SqliteStore, read_devices
from gateway.store import sqlite as sqlite_module
from tests.conftest import make_config, sim, wait_for
from tests.sip.test_transport import LogRecorder

pytestmark = pytest.mark.reliability

FIRST = "34020000001320000001"
LATER = [f"3402000000132000{n:04d}" for n in range(100, 120)]


class Disk:
    """Where the database lives, and a way to fill it up and to free it again."""

    def __init__(self, path: Path, real: bool) -> None:
        self.path = path
        self.real = real  # a tmpfs of its own; else failures are injected at the write
        self.full = False
        self._filler = path / "filler"

    def fill(self) -> None:
        self.full = True
        if not self.real:
            return
        chunk = b"\0" * 65536
        with self._filler.open("wb", buffering=0) as f:
            for _ in range(10_000):  # bounded: the tmpfs is a few MiB
                try:
                    f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
            else:
                raise AssertionError("the tmpfs never filled up")

    def free(self) -> None:
        self.full = False
        self._filler.unlink(missing_ok=True)

    def inject(self, store: SqliteStore) -> None:
        """Without a tmpfs: the write fails as SQLite fails on a full disk."""
        if self.real:
            return
        write = store._write

        def failing(batch: object) -> None:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            write(batch)  # type: ignore[arg-type]

        store._write = failing  # type: ignore[method-assign]


@contextlib.contextmanager
def tiny_disk() -> Iterator[Disk]:
    where = Path(tempfile.mkdtemp(prefix="gw-full-"))
    mounted = False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
            capture_output=True,
            timeout=20,
            check=False,
        )
        mounted = done.returncode == 0
        yield Disk(where, mounted)
    finally:
        if mounted:
            subprocess.run(["umount", str(where)], capture_output=True, timeout=20, check=False)
        for leftover in where.glob("*"):  # only when not mounted: the files of the fallback
            leftover.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(where)


@pytest.fixture
def disk() -> Iterator[Disk]:
    with tiny_disk() as d:
        yield d


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[tuple[str, dict[str, Any]]]]:
    """(level, fields) of each line the store logged under an event name."""
    recorder = LogRecorder()
    monkeypatch.setattr(sqlite_module, "log", recorder)
    return lambda name: [(level, f) for level, event, f in recorder.lines if event == name]


@pytest.mark.timeout(60)
async def test_a_full_disk_is_reported_retried_and_loses_nothing(
    disk: Disk, logged: Callable[[str], list[tuple[str, dict[str, Any]]]], device_endpoint: Endpoint
) -> None:
    db = disk.path / "gw.db"
    config = make_config(
        disk.path,
        store={"path": str(db), "flush_interval": 0.05},
        downlink={"sync_on_register": False, "catalog_subscription": False},
    )
    gw = Gateway(config)
    assert isinstance(gw.store, SqliteStore)
    disk.inject(gw.store)
    await gw.start()
    try:
        first = sim(device_endpoint, gw, FIRST)
        assert (await first.register()).status == 200
        committed = {d.device_id: d for d in read_devices(db)}
        assert committed[FIRST].online  # on disk before its 200 (group commit)

        disk.fill()
        later = [sim(device_endpoint, gw, d) for d in LATER]
        pending = [asyncio.ensure_future(d.register()) for d in later]
        # Reported and retried: at least two failed attempts while the disk stays full.
        await wait_for(lambda: gw.metrics.get("store.write_failed") >= 3, 10, "failed writes")
        failures = logged("store.write_failed")
        assert failures and failures[0][0] == "error", failures
        assert "full" in str(failures[0][1]["error"])
        # Nothing that could not be committed was acknowledged.
        assert not any(p.done() for p in pending)
        # What was committed before is still there, readable.
        assert {d.device_id for d in read_devices(db)} == {FIRST}

        disk.free()
        answers = await asyncio.wait_for(asyncio.gather(*pending), 10)
        assert [r.status for r in answers] == [200] * len(LATER)
        assert logged("store.write_recovered")
        on_disk = {d.device_id: d for d in read_devices(db)}
        assert set(on_disk) == {FIRST, *LATER}
        assert all(on_disk[d].online and on_disk[d].port == device_endpoint.port for d in LATER)
        assert on_disk[FIRST] == committed[FIRST]
    finally:
        disk.free()
        await gw.close()
    again = SqliteStore(db)
    try:
        assert {d.device_id for d in again.load_devices()} == {FIRST, *LATER}
    finally:
        await again.close()
