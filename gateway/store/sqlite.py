"""SQLite store: WAL journal, one writer, batched writes in a worker thread.

``save_*`` only record what to write, keyed so that ten updates of one row between flushes cost
one write; a background task swaps the pending batch out every ``flush_interval`` seconds and
writes it with ``executemany`` in a thread, keeping SQLite's I/O off the event loop. Readers
(``gb28181-gateway devices``/``catalog``) open the file read-only while the gateway runs; WAL
lets them read without blocking the writer.

Group commit: :meth:`SqliteStore.committed` gives a future that is done once everything saved so
far is committed, and wakes the writer ``commit_delay`` (20 ms) after the first waiter. The
registrar answers a REGISTER only then, so a device told 200 OK is on disk even if the process
is killed the next instant; saves made meanwhile, or while a commit is being written, share the
next one, so a storm of registrations costs a few dozen commits a second.

A write that fails (disk full, I/O error) is reported (``store.write_failed`` in the log and
the metrics) and retried by the loop of :class:`~gateway.store.writer.QueuedWriter`, backing
off from ``flush_interval`` up to its ``MAX_RETRY_DELAY``: its batch is kept and merged under
newer saves (a row's newest state wins; rows are keyed, so the merge is bounded by the model's
size; pending alarms are capped at ``max_pending_alarms``, the oldest dropped and counted).
Futures waiting on it stay pending until it lands.

Tables: ``devices`` (registrations and what devices said about themselves), ``channels`` (every
catalog item a device reported: channels and the tree nodes above them, civil regions, business
groups, virtual organisations; every field is kept as JSON in ``fields``, the ones queries need
are columns with indexes), ``alarms``, ``id_map`` (the ID each item has for each upper
platform under ``id_policy = "recode"``; a row is never changed once written), and
``upper_registrations`` (per upper, the Call-ID, From tag and CSeq of the gateway's last
accepted REGISTER there, so a restarted gateway refreshes the registration the upper may still
hold instead of starting a second one), ``records`` (the operations side's objects: units,
device accounts, users, API tokens, uppers added through the API; one JSON document per kind
and key) and ``audit`` (every write through the HTTP API; never changed). Audit entries get
their ``id`` when saved, so a listing includes the ones not yet written.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from gateway.manscdp import CatalogItem, from_plain, item_kind, to_plain
from gateway.metrics import Metrics
from gateway.model import Alarm, AuditEntry, Device
from gateway.store.writer import Batch, QueuedWriter

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
CREATE TABLE IF NOT EXISTS channels (
    owner_id          TEXT NOT NULL,
    item_id           TEXT NOT NULL,
    kind              TEXT NOT NULL,
    name              TEXT,
    parent_id         TEXT,
    civil_code        TEXT,
    business_group_id TEXT,
    status            TEXT,
    fields            TEXT NOT NULL,
    updated_at        REAL NOT NULL,
    PRIMARY KEY (owner_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS channels_item ON channels(item_id);
CREATE INDEX IF NOT EXISTS channels_parent ON channels(parent_id);
CREATE INDEX IF NOT EXISTS channels_group ON channels(business_group_id);
CREATE INDEX IF NOT EXISTS channels_civil ON channels(civil_code);
CREATE TABLE IF NOT EXISTS alarms (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    priority    INTEGER,
    method      INTEGER,
    alarm_type  INTEGER,
    event_type  INTEGER,
    time        TEXT NOT NULL,
    description TEXT NOT NULL,
    longitude   REAL,
    latitude    REAL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS alarms_channel ON alarms(channel_id, received_at);
CREATE INDEX IF NOT EXISTS alarms_device ON alarms(device_id, received_at);
CREATE TABLE IF NOT EXISTS id_map (
    upper_id   TEXT NOT NULL,
    local_id   TEXT NOT NULL,
    upper_item TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (upper_id, local_id),
    UNIQUE (upper_id, upper_item)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY,
    at         REAL NOT NULL,
    who        TEXT NOT NULL,
    role       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    source     TEXT NOT NULL,
    outcome    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS upper_registrations (
    upper_id   TEXT PRIMARY KEY,
    call_id    TEXT NOT NULL,
    from_tag   TEXT NOT NULL,
    cseq       INTEGER NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Columns added to ``devices`` after the first release, with their defaults, for old files.
_DEVICE_ADDED = {
    "name": "TEXT NOT NULL DEFAULT ''",
    "manufacturer": "TEXT NOT NULL DEFAULT ''",
    "model": "TEXT NOT NULL DEFAULT ''",
    "firmware": "TEXT NOT NULL DEFAULT ''",
    "channel_count": "INTEGER NOT NULL DEFAULT 0",
    "charset": "TEXT NOT NULL DEFAULT ''",
    "declared_charset": "TEXT NOT NULL DEFAULT ''",
    "synced_at": "REAL NOT NULL DEFAULT 0",
}

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
    *_DEVICE_ADDED,
)

_UPSERT = (
    f"INSERT OR REPLACE INTO devices ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_ITEM_COLUMNS = (
    "owner_id",
    "item_id",
    "kind",
    "name",
    "parent_id",
    "civil_code",
    "business_group_id",
    "status",
    "fields",
    "updated_at",
)
_UPSERT_ITEM = (
    f"INSERT OR REPLACE INTO channels ({', '.join(_ITEM_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ITEM_COLUMNS)})"
)
_ALARM_COLUMNS = (
    "device_id",
    "channel_id",
    "priority",
    "method",
    "alarm_type",
    "event_type",
    "time",
    "description",
    "longitude",
    "latitude",
    "received_at",
)
_INSERT_ALARM = (
    f"INSERT INTO alarms ({', '.join(_ALARM_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _ALARM_COLUMNS)})"
)

Row = tuple[Any, ...]


def _row(d: Device) -> Row:
    return tuple(int(getattr(d, c)) if c == "online" else getattr(d, c) for c in COLUMNS)


def device_from_row(row: sqlite3.Row | tuple[object, ...]) -> Device:
    values = dict(zip(COLUMNS, tuple(row), strict=True))
    values["online"] = bool(values["online"])
    return Device(**values)


def item_row(owner_id: str, item: CatalogItem, updated_at: float) -> Row:
    return (
        owner_id,
        item.device_id,
        item_kind(item.device_id),
        item.name,
        item.parent_id,
        item.civil_code,
        item.group_id,
        item.status,
        json.dumps(to_plain(item), ensure_ascii=False, separators=(",", ":")),
        updated_at,
    )


def item_from_fields(text: str) -> CatalogItem:
    return from_plain(CatalogItem, json.loads(text))


def _alarm_row(a: Alarm) -> Row:
    return tuple(getattr(a, c) for c in _ALARM_COLUMNS)


def alarm_from_row(row: tuple[Any, ...]) -> Alarm:
    values = dict(zip(("id", *_ALARM_COLUMNS), row, strict=True))
    return Alarm(**values)


@dataclass
class _Batch(Batch):
    devices: dict[str, Row | None] = field(default_factory=dict)
    # (owner, item ID) -> (item, time) to write, or None to delete.
    items: dict[tuple[str, str], tuple[CatalogItem, float] | None] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)
    mappings: list[tuple[str, str, str, float]] = field(default_factory=list)
    # upper ID -> (upper ID, Call-ID, From tag, CSeq, time) of its registration.
    uppers: dict[str, Row] = field(default_factory=dict)
    # (kind, key) -> the record's JSON, or None to delete.
    records: dict[tuple[str, str], str | None] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.devices
            or self.items
            or self.alarms
            or self.mappings
            or self.uppers
            or self.records
            or self.audit
        )

    def merge_older(self, older: _Batch) -> None:
        """Put back a batch that failed to write, under anything newer queued since."""
        for key, row in older.devices.items():
            self.devices.setdefault(key, row)
        for ikey, value in older.items.items():
            self.items.setdefault(ikey, value)
        self.alarms[:0] = older.alarms
        self.mappings[:0] = older.mappings
        for ukey, urow in older.uppers.items():
            self.uppers.setdefault(ukey, urow)
        for rkey, rdata in older.records.items():
            self.records.setdefault(rkey, rdata)
        self.audit[:0] = older.audit
        self.waiters[:0] = older.waiters


_AUDIT_COLUMNS = ("at", "who", "role", "action", "target", "detail", "source", "outcome")


def _migrate(db: sqlite3.Connection) -> None:
    have = {r[1] for r in db.execute("PRAGMA table_info(devices)")}
    for name, decl in _DEVICE_ADDED.items():
        if name not in have:
            db.execute(f"ALTER TABLE devices ADD COLUMN {name} {decl}")


class SqliteStore(QueuedWriter[_Batch]):
    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.2,
        metrics: Metrics | None = None,
        max_pending_alarms: int = 10_000,
    ) -> None:
        self.path = Path(path)
        super().__init__(flush_interval, _Batch)
        self.metrics = metrics if metrics is not None else Metrics()
        self.max_pending_alarms = max_pending_alarms
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        _migrate(self._db)
        last = self._db.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        self._audit_ids = int(last or 0)
        self._task: asyncio.Task[None] | None = None

    # -- devices ----------------------------------------------------------------------------
    def load_devices(self) -> list[Device]:
        cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM devices")
        return [device_from_row(r) for r in cur.fetchall()]

    def save_device(self, device: Device) -> None:
        self._pending.devices[device.device_id] = _row(device)

    def delete_device(self, device_id: str) -> None:
        self._pending.devices[device_id] = None

    # -- catalog ----------------------------------------------------------------------------
    def load_items(self) -> list[tuple[str, CatalogItem]]:
        cur = self._db.execute("SELECT owner_id, fields FROM channels")
        return [(owner, item_from_fields(text)) for owner, text in cur.fetchall()]

    def save_item(self, owner_id: str, item: CatalogItem, now: float) -> None:
        self._pending.items[(owner_id, item.device_id)] = (item, now)

    def delete_item(self, owner_id: str, item_id: str) -> None:
        self._pending.items[(owner_id, item_id)] = None

    # -- alarms -----------------------------------------------------------------------------
    def save_alarm(self, alarm: Alarm) -> None:
        self._pending.alarms.append(alarm)

    def load_alarms(self, *, limit: int = 100) -> list[Alarm]:
        cur = self._db.execute(
            f"SELECT id, {', '.join(_ALARM_COLUMNS)} FROM alarms ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [alarm_from_row(r) for r in cur.fetchall()]

    # -- ID mapping for upper platforms -----------------------------------------------------
    def load_id_map(self, upper_id: str | None = None) -> list[tuple[str, str, str]]:
        """(upper ID, local ID, the ID the upper knows it by), oldest first; only
        ``upper_id``'s when given (by the primary key: the other uppers' rows are not read)."""
        if upper_id is None:
            cur = self._db.execute(
                "SELECT upper_id, local_id, upper_item FROM id_map ORDER BY created_at"
            )
        else:
            cur = self._db.execute(
                "SELECT upper_id, local_id, upper_item FROM id_map WHERE upper_id = ?"
                " ORDER BY created_at",
                (upper_id,),
            )
        return [(u, loc, m) for u, loc, m in cur.fetchall()]

    def save_mapping(self, upper_id: str, local_id: str, upper_item: str, now: float) -> None:
        self._pending.mappings.append((upper_id, local_id, upper_item, now))

    # -- the operations side: records and the audit log --------------------------------------
    def load_records(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows: dict[str, str | None] = dict(
            self._db.execute("SELECT key, data FROM records WHERE kind = ?", (kind,)).fetchall()
        )
        for batch in self._queued():
            for (k, key), data in batch.records.items():
                if k == kind:
                    rows[key] = data
        return [(key, json.loads(data)) for key, data in sorted(rows.items()) if data is not None]

    def save_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self._pending.records[(kind, key)] = json.dumps(data, ensure_ascii=False)

    def delete_record(self, kind: str, key: str) -> None:
        self._pending.records[(kind, key)] = None

    def save_audit(self, entry: AuditEntry) -> None:
        self._audit_ids += 1
        self._pending.audit.append(replace(entry, id=self._audit_ids))

    def load_audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        top = before if before is not None else self._audit_ids + 1
        queued = [e for b in self._queued() for e in b.audit if (e.id or 0) < top]
        cur = self._db.execute(
            f"SELECT id, {', '.join(_AUDIT_COLUMNS)} FROM audit WHERE id < ? "
            "ORDER BY id DESC LIMIT ?",
            (top, limit),
        )
        stored = [
            AuditEntry(**dict(zip(_AUDIT_COLUMNS, row[1:], strict=True)), id=row[0])
            for row in cur.fetchall()
        ]
        seen = {e.id for e in stored}
        merged = stored + [replace(e) for e in queued if e.id not in seen]
        merged.sort(key=lambda e: e.id or 0, reverse=True)
        return merged[:limit]

    # -- the gateway's registration at each upper --------------------------------------------
    def load_upper_registrations(self) -> dict[str, tuple[str, str, int]]:
        """Upper ID -> (Call-ID, From tag, CSeq) of the gateway's last accepted REGISTER."""
        cur = self._db.execute("SELECT upper_id, call_id, from_tag, cseq FROM upper_registrations")
        return {u: (c, t, int(n)) for u, c, t, n in cur.fetchall()}

    def save_upper_registration(
        self, upper_id: str, call_id: str, from_tag: str, cseq: int, now: float
    ) -> None:
        self._pending.uppers[upper_id] = (upper_id, call_id, from_tag, cseq, now)

    # -- writing (the loop and group commit: ``QueuedWriter``) -------------------------------
    def healthy(self) -> bool:
        return self._failures == 0

    async def start(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _write_batch(self, batch: _Batch) -> bool:
        await asyncio.to_thread(self._write, batch)
        return True

    def _write_recovered(self) -> None:
        if self._failures:
            log.warning("store.write_recovered", path=str(self.path), failures=self._failures)
            self._failures = 0

    def _write_failed(self, exc: Exception) -> None:
        self._failures += 1
        self.metrics.inc("store.write_failed")
        pending = self._pending
        dropped = len(pending.alarms) - self.max_pending_alarms
        if dropped > 0:
            del pending.alarms[:dropped]
            self.metrics.inc("store.alarms_dropped", dropped)
            log.error("store.alarms_dropped", path=str(self.path), alarms=dropped)
        log.error(
            "store.write_failed",
            path=str(self.path),
            error=f"{type(exc).__name__}: {exc}",
            failures=self._failures,
            devices=len(pending.devices),
            items=len(pending.items),
            alarms=len(pending.alarms),
            mappings=len(pending.mappings),
            retry_in=self._retry_delay(),
            exc_info=not isinstance(exc, (sqlite3.Error, OSError)),
        )

    def _write(self, batch: _Batch) -> None:
        upserts = [row for row in batch.devices.values() if row is not None]
        deletes = [(key,) for key, row in batch.devices.items() if row is None]
        item_rows = [
            item_row(owner, v[0], v[1]) for (owner, _), v in batch.items.items() if v is not None
        ]
        item_deletes = [key for key, v in batch.items.items() if v is None]
        db = self._db
        db.execute("BEGIN")
        try:
            if upserts:
                db.executemany(_UPSERT, upserts)
            if deletes:
                db.executemany("DELETE FROM devices WHERE device_id = ?", deletes)
            if item_rows:
                db.executemany(_UPSERT_ITEM, item_rows)
            if item_deletes:
                db.executemany(
                    "DELETE FROM channels WHERE owner_id = ? AND item_id = ?", item_deletes
                )
            if batch.alarms:
                db.executemany(_INSERT_ALARM, [_alarm_row(a) for a in batch.alarms])
            if batch.mappings:
                db.executemany(
                    "INSERT OR IGNORE INTO id_map (upper_id, local_id, upper_item, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    batch.mappings,
                )
            if batch.uppers:
                db.executemany(
                    "INSERT OR REPLACE INTO upper_registrations "
                    "(upper_id, call_id, from_tag, cseq, updated_at) VALUES (?, ?, ?, ?, ?)",
                    list(batch.uppers.values()),
                )
            if batch.records:
                db.executemany(
                    "INSERT OR REPLACE INTO records (kind, key, data) VALUES (?, ?, ?)",
                    [(k, key, d) for (k, key), d in batch.records.items() if d is not None],
                )
                db.executemany(
                    "DELETE FROM records WHERE kind = ? AND key = ?",
                    [rkey for rkey, d in batch.records.items() if d is None],
                )
            if batch.audit:
                db.executemany(
                    f"INSERT OR IGNORE INTO audit (id, {', '.join(_AUDIT_COLUMNS)}) "
                    f"VALUES (?{', ?' * len(_AUDIT_COLUMNS)})",
                    [(e.id, *(getattr(e, c) for c in _AUDIT_COLUMNS)) for e in batch.audit],
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        """Stop the writer (never cancelled mid-write: its thread would still be using the
        connection), write what is left, close."""
        self._cancel_wake()
        if self._task is not None:
            self._stopping.set()
            self._wake.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.error("store.closed_unwritten", path=str(self.path))
        self._db.close()


def _read_only(path: str | Path) -> sqlite3.Connection | None:
    p = Path(path)
    if not p.exists():
        return None
    db = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _missing_table(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)


def read_devices(path: str | Path) -> list[Device]:
    """Read the devices table without disturbing a running gateway (read-only connection)."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        try:
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM devices ORDER BY device_id"
            ).fetchall()
        except sqlite3.OperationalError as exc:
            if _missing_table(exc):
                return []
            raise
        return [device_from_row(r) for r in rows]
    finally:
        db.close()


def read_catalog(path: str | Path, device_id: str | None = None) -> list[tuple[str, CatalogItem]]:
    """(owner, item) for every stored catalog item, or only those of one device (its own items
    and, when ``device_id`` is a channel, that channel), read-only."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        sql = "SELECT owner_id, fields FROM channels"
        args: tuple[str, ...] = ()
        if device_id:
            sql += " WHERE owner_id = ? OR item_id = ?"
            args = (device_id, device_id)
        try:
            rows = db.execute(sql + " ORDER BY owner_id, item_id", args).fetchall()
        except sqlite3.OperationalError as exc:
            if _missing_table(exc):
                return []
            raise
        return [(owner, item_from_fields(text)) for owner, text in rows]
    finally:
        db.close()


def read_id_map(path: str | Path, upper_id: str | None = None) -> list[tuple[str, str, str]]:
    """(upper ID, local ID, upper's ID) rows, read-only, for operators."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        sql = "SELECT upper_id, local_id, upper_item FROM id_map"
        args: tuple[str, ...] = ()
        if upper_id:
            sql += " WHERE upper_id = ?"
            args = (upper_id,)
        try:
            rows = db.execute(sql + " ORDER BY upper_id, local_id", args).fetchall()
        except sqlite3.OperationalError as exc:
            if _missing_table(exc):
                return []
            raise
        return [(u, loc, m) for u, loc, m in rows]
    finally:
        db.close()
