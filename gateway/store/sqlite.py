"""SQLite store: WAL journal, one writer, batched writes in a worker thread.

``save_device`` only records a row tuple in a dict keyed by device ID (so ten updates of one
device between flushes cost one write); a background task swaps the dict out every
``flush_interval`` seconds and writes it with ``executemany`` in a thread, keeping SQLite's I/O
off the event loop. Readers (``gb28181-gateway devices``) open the file read-only while the
gateway runs; WAL lets them read without blocking the writer.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import structlog

from gateway.model import Device

log = structlog.get_logger("gateway.store.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id     TEXT PRIMARY KEY,
    online        INTEGER NOT NULL,
    transport     TEXT NOT NULL,
    host          TEXT NOT NULL,
    port          INTEGER NOT NULL,
    contact       TEXT NOT NULL,
    expires       INTEGER NOT NULL,
    registered_at REAL NOT NULL,
    expires_at    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    call_id       TEXT NOT NULL,
    cseq          INTEGER NOT NULL,
    user_agent    TEXT NOT NULL,
    gb_version    TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_online ON devices(online);
"""

COLUMNS = (
    "device_id",
    "online",
    "transport",
    "host",
    "port",
    "contact",
    "expires",
    "registered_at",
    "expires_at",
    "last_seen",
    "call_id",
    "cseq",
    "user_agent",
    "gb_version",
)

_UPSERT = (
    f"INSERT OR REPLACE INTO devices ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)

Row = tuple[str, int, str, str, int, str, int, float, float, float, str, int, str, str]


def _row(d: Device) -> Row:
    return (
        d.device_id,
        int(d.online),
        d.transport,
        d.host,
        d.port,
        d.contact,
        d.expires,
        d.registered_at,
        d.expires_at,
        d.last_seen,
        d.call_id,
        d.cseq,
        d.user_agent,
        d.gb_version,
    )


def device_from_row(row: sqlite3.Row | tuple[object, ...]) -> Device:
    values = dict(zip(COLUMNS, tuple(row), strict=True))
    values["online"] = bool(values["online"])
    return Device(**values)


class SqliteStore:
    def __init__(self, path: str | Path, *, flush_interval: float = 0.2) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._pending: dict[str, Row | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    def load_devices(self) -> list[Device]:
        cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM devices")
        return [device_from_row(r) for r in cur.fetchall()]

    def save_device(self, device: Device) -> None:
        self._pending[device.device_id] = _row(device)

    def delete_device(self, device_id: str) -> None:
        self._pending[device_id] = None

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self._stopping.wait(), self.flush_interval)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception:
                log.exception("store.flush_failed", path=str(self.path))

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:
                # Keep what was not written: newer saves win over the failed batch.
                for key, row in batch.items():
                    self._pending.setdefault(key, row)
                raise

    def _write(self, batch: dict[str, Row | None]) -> None:
        upserts = [row for row in batch.values() if row is not None]
        deletes = [(key,) for key, row in batch.items() if row is None]
        db = self._db
        db.execute("BEGIN")
        try:
            if upserts:
                db.executemany(_UPSERT, upserts)
            if deletes:
                db.executemany("DELETE FROM devices WHERE device_id = ?", deletes)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Stop the writer (never cancelled mid-write: its thread would still be using the
        connection), write what is left, close."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        await self.flush()
        self._db.close()


def read_devices(path: str | Path) -> list[Device]:
    """Read the devices table without disturbing a running gateway (read-only connection)."""
    p = Path(path)
    if not p.exists():
        return []
    db = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM devices ORDER BY device_id"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        return [device_from_row(r) for r in rows]
    finally:
        db.close()
