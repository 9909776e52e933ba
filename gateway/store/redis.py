"""Redis store: the model shared by the nodes of a cluster (issue 18), same interface as SQLite.

Loads stay synchronous: :meth:`RedisStore.start` reads everything once into memory, every save
updates that view at once and is queued; a background task writes the queue every
``flush_interval`` in one ``MULTI``/``EXEC`` pipeline, so a batch lands whole or not at all.
:meth:`RedisStore.committed` is SQLite's group commit: a future done once the batch holding
everything saved so far has been executed (with Redis's AOF at ``appendfsync always``, as
``tests/redisrig.py`` runs it, an executed batch survives a crash of Redis). Records (users,
tokens, units...) are re-read every :data:`RECORDS_REFRESH` seconds, as SQLite's loads see other
writers; devices and catalogs of other nodes are re-read by :meth:`reload` (a takeover).

Keys (``P`` = ``[store] prefix``; every value is compact JSON unless said):

* ``P devices`` hash: device ID -> the device (only fields that differ from their defaults);
  ``P devnode`` hash: device ID -> ID of the node that last saved it (the node holding its
  binding and TCP connection; :meth:`node_of`).
* ``P items:{owner}`` hash: item ID -> the catalog item as ``to_plain`` gives it, without its
  ``DeviceID`` (empty fields left out; a channel as NVRs describe theirs, with ``Info``, takes
  about 590 bytes of Redis memory (``bench/cluster.py``), 200,000 channels about 115 MB);
  ``P owners`` set of owner IDs.
* ``P alarms`` list, newest first, trimmed to :data:`ALARMS_MAX`; ``P audit`` sorted set,
  score = entry ID. IDs of both come in blocks from ``INCRBY P seq:alarm`` / ``P seq:audit``,
  so nodes never share one and one node counts 1, 2, 3... as SQLite does.
* ``P idmap:{upper}`` hash local ID -> upper's ID and ``P idmapr:{upper}`` the reverse; ``P
  idmaps`` set of upper IDs. Written only by :data:`CLAIM` (a Lua script, atomic): a local ID
  already mapped keeps its mapping, an upper's ID already given to another local ID is
  refused, so two nodes never hand out one ID. A claim that loses is counted
  (``store.idmap_conflicts``), logged, and told to the upper's ID map, which adopts Redis's.
* ``P upreg`` hash: upper ID -> [Call-ID, From tag, CSeq] of the gateway's registration there.
* ``P rec:{kind}`` hash: key -> the record; ``P reckinds`` set; ``P recby`` hash
  ``{kind}/{key}`` -> node that wrote it.
* ``P epoch``: a token written at start (and by the first write-back); its absence, or a
  value other than the one this node read, means Redis restarted empty since.

Credentials, as the directory and the API hand them over (the same as in SQLite): device
account passwords in clear in ``rec:account`` (the registrar's digest check,
``sip.digest.compute_response``, starts from the password, and the credential sheets show it;
with the realm fixed HA1 = MD5(user:realm:password) would be enough for RFC 2617 digest, but
the sheets would lose the password, so the code does not use it), upper platforms' passwords in
clear in ``rec:upper`` (the gateway answers their challenges), console users as argon2id
hashes in ``rec:user``, API tokens as SHA-256 in ``rec:token``. Protect Redis accordingly
(a password or ACL in ``url``, ``rediss://`` across machines).

Redis unreachable: ``healthy()`` is false (``/readyz`` 503), ``store.redis.down`` counts
outages, one ``store.redis_down`` log line starts one and ``store.redis_recovered`` ends it;
saves keep queuing (the view serves loads) until ``max_queued_writes`` are waiting, then raise
:class:`~gateway.store.StoreUnavailable`; committed() futures wait, so the registrar sends no
200 for a binding not written. Redis found empty (``P epoch`` gone): the node writes back what
it holds (its own devices and their catalogs, its records, every ID mapping it knows, its
registrations at uppers and the newest of its alarms and audit entries): other nodes' data is
theirs to write back. Each node writes back once per emptying: the first sets a new ``P
epoch``, the others see it differ from the one they hold. A device is written back only where
Redis holds no copy of it with the same or a later ``registered_at`` (:data:`RESTORE_DEVICES`:
it moved to another node, which wrote it back or saved it since); the node then stops writing
it (and its catalog) back. The nodes' sets of what they hold drop a device, catalog or record
that :meth:`RedisStore.reload` finds saved since by another node.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.manscdp import CatalogItem, from_plain, to_plain
from gateway.metrics import Metrics
from gateway.model import Alarm, AuditEntry, Device
from gateway.store import StoreUnavailable
from gateway.store.writer import Batch, QueuedWriter

log = structlog.get_logger("gateway.store.redis")

HEALTH_INTERVAL = 1.0
"""Seconds between two checks that Redis answers and still holds ``P epoch``."""
RECORDS_REFRESH = 2.0
"""Seconds between two re-reads of the records (other nodes' users, tokens, units)."""
ALARMS_MAX = 100_000
"""Alarms kept in Redis (newest first); the view keeps :data:`ALARMS_KEPT`."""
ALARMS_KEPT = 10_000
AUDIT_KEPT = 100_000
"""Audit entries in the view (what the API's listing may scan); Redis keeps them all."""
READ_CHUNK = 64
"""Catalogs (owners) read in one pipeline at start."""
START_TIMEOUT = 30.0
"""How long :meth:`RedisStore.start` waits for Redis before giving up."""
_BLOCKS = {"alarm": 1000, "audit": 100}  # IDs taken per INCRBY

MappingConflict = Callable[[str, str, str, str], None]
"""``(local ID, upper ID wanted, upper ID stored for local or "", local ID holding wanted or
"")``: a claim lost; the ID map adopts what Redis holds."""

CLAIM = """
local out = {}
for i = 1, #ARGV, 2 do
  local loc, up = ARGV[i], ARGV[i + 1]
  local have = redis.call('HGET', KEYS[1], loc)
  if have then
    out[#out + 1] = have
    out[#out + 1] = redis.call('HGET', KEYS[2], up) or ''
  else
    local holder = redis.call('HGET', KEYS[2], up)
    if holder then
      out[#out + 1] = ''
      out[#out + 1] = holder
    else
      redis.call('HSET', KEYS[1], loc, up)
      redis.call('HSET', KEYS[2], up, loc)
      out[#out + 1] = up
      out[#out + 1] = loc
    end
  end
end
return out
"""
"""Claim recoded IDs of one upper (KEYS: its ``idmap`` and ``idmapr``), ARGV local/upper pairs;
returns per pair the upper ID stored for the local ID ('' if none) and the local ID holding the
wanted upper ID ('' if none)."""

RESTORE_DEVICES = """
local out = {}
for i = 2, #ARGV, 3 do
  local id, text, at = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]) or 0
  local cur = redis.call('HGET', KEYS[1], id)
  local newer = true
  if cur and redis.call('HGET', KEYS[2], id) ~= ARGV[1] then
    local ok, old = pcall(cjson.decode, cur)
    newer = ok and type(old) == 'table' and (tonumber(old['registered_at']) or 0) < at
  end
  if newer then
    redis.call('HSET', KEYS[1], id, text)
    redis.call('HSET', KEYS[2], id, ARGV[1])
    out[#out + 1] = ''
    out[#out + 1] = ''
  else
    out[#out + 1] = cur
    out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  end
end
return out
"""
"""Write back devices after Redis came back empty (KEYS: ``devices``, ``devnode``; ARGV: this
node, then ID, JSON, ``registered_at`` per device): a device Redis already holds for another
node with the same or a later ``registered_at`` (that node's write-back or save: the device
moved there) is kept. Returns two values per device: '' and '' (written), or the copy kept
and the node holding it."""

_RESTORE_CHUNK = 1000
"""Devices written back per :data:`RESTORE_DEVICES` call (Redis runs a script alone)."""

_RAISE_SEQ = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 0
"""

_DEVICE_DEFAULTS = {f.name: f.default for f in fields(Device) if f.name != "device_id"}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def device_json(d: Device) -> str:
    out: dict[str, Any] = {"device_id": d.device_id}
    for name, default in _DEVICE_DEFAULTS.items():
        value = getattr(d, name)
        if value != default:
            out[name] = value
    return _dumps(out)


def device_from_json(text: str) -> Device:
    data = json.loads(text)
    return Device(**{k: v for k, v in data.items() if k == "device_id" or k in _DEVICE_DEFAULTS})


def item_json(item: CatalogItem) -> str:
    """The item as ``to_plain`` gives it, without its ``DeviceID`` (the hash field names it):
    about 450 bytes for a channel as NVRs describe theirs."""
    plain = to_plain(item)
    plain.pop("DeviceID", None)
    return _dumps(plain)


def item_from_json(item_id: str, text: str) -> CatalogItem:
    plain = json.loads(text)
    plain["DeviceID"] = item_id
    return from_plain(CatalogItem, plain)


def _safe_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class _Batch(Batch):
    devices: dict[str, Device | None] = field(default_factory=dict)
    # owner -> item ID -> item, or None to delete
    items: dict[str, dict[str, CatalogItem | None]] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)
    # upper ID -> local ID -> the upper's ID to claim
    mappings: dict[str, dict[str, str]] = field(default_factory=dict)
    uppers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    records: dict[tuple[str, str], str | None] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    size: int = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def merge_older(self, older: _Batch) -> None:
        """Put back a batch that failed to write, under anything newer queued since."""
        for key, dev in older.devices.items():
            self.devices.setdefault(key, dev)
        for owner, its in older.items.items():
            mine = self.items.setdefault(owner, {})
            for key, item in its.items():
                mine.setdefault(key, item)
        self.alarms[:0] = older.alarms
        for upper, pairs in older.mappings.items():
            now = self.mappings.setdefault(upper, {})
            for key, mapped in pairs.items():
                now.setdefault(key, mapped)
        for ukey, reg in older.uppers.items():
            self.uppers.setdefault(ukey, reg)
        for rkey, data in older.records.items():
            self.records.setdefault(rkey, data)
        self.audit[:0] = older.audit
        self.waiters[:0] = older.waiters
        self.size = (
            len(self.devices)
            + sum(len(v) for v in self.items.values())
            + len(self.alarms)
            + sum(len(v) for v in self.mappings.values())
            + len(self.uppers)
            + len(self.records)
            + len(self.audit)
        )


class _Ids:
    """IDs handed out at once (``save_audit`` is synchronous) from blocks taken in Redis by
    ``INCRBY``: the next block is asked for with a flush when half of this one is used."""

    def __init__(self, key: str, block: int) -> None:
        self.key = key
        self.block = block
        self.next = 1
        self.end = 0
        self.spare: tuple[int, int] | None = None

    def set_block(self, end: int) -> None:
        first = end - self.block + 1
        if self.next > self.end:
            self.next, self.end = max(first, self.next), end
        else:
            self.spare = (first, end)

    def take(self) -> int:
        if self.next > self.end and self.spare is not None:
            self.next, self.end = max(self.spare[0], self.next), self.spare[1]
            self.spare = None
        value = self.next
        self.next += 1
        return value

    def wants_block(self) -> bool:
        return self.spare is None and self.end - self.next < self.block // 2

    @property
    def highest(self) -> int:
        return self.next - 1


class RedisStore(QueuedWriter[_Batch]):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gb:",
        node_id: str = "",
        flush_interval: float = 0.2,
        max_queued_writes: int = 1_000_000,
        metrics: Metrics | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id
        super().__init__(flush_interval, _Batch)
        self.max_queued_writes = max_queued_writes
        self.metrics = metrics if metrics is not None else Metrics()
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        # The same client, untyped: redis-py's command stubs (sync or awaitable, str or bytes)
        # do not say what ``decode_responses=True`` gives.
        self._c: Any = self._r
        # What start() read, with every save applied at once: the loads answer from it.
        self._devices: dict[str, Device] = {}
        self._nodes: dict[str, str] = {}
        self._items: dict[str, dict[str, CatalogItem]] = {}
        self._alarms: deque[Alarm] = deque(maxlen=ALARMS_KEPT)  # oldest first
        self._idmaps: dict[str, dict[str, str]] = {}
        self._uppers: dict[str, tuple[str, str, int]] = {}
        self._records: dict[str, dict[str, str]] = {}
        self._audit: list[AuditEntry] = []  # by id
        self._audit_ids: list[int] = []
        # What this node holds: written back if Redis comes back empty.
        self._own_devices: set[str] = set()
        self._own_owners: set[str] = set()
        self._own_records: set[tuple[str, str]] = set()
        self._own_uppers: set[str] = set()
        self._own_alarms: deque[Alarm] = deque(maxlen=ALARMS_KEPT)
        self._own_audit: deque[AuditEntry] = deque(maxlen=AUDIT_KEPT)
        self._ids = {kind: _Ids(f"{prefix}seq:{kind}", n) for kind, n in _BLOCKS.items()}
        self._conflict_handlers: dict[str, MappingConflict] = {}
        self._epoch = ""
        self._down_since: float | None = None  # monotonic time the outage was seen
        self._down_error = ""
        self._refused = False  # a save was refused in this outage (logged once)
        self._tasks: list[asyncio.Task[None]] = []
        self._revived = asyncio.Event()  # the watch saw Redis answer: retry the writes now
        self._last_refresh = 0.0

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def redis(self) -> aioredis.Redis:
        """The client (``gateway.cluster`` shares it: leases, membership, the bus)."""
        return self._r

    # -- devices ----------------------------------------------------------------------------
    def load_devices(self) -> list[Device]:
        return [replace(d) for d in self._devices.values()]

    def save_device(self, device: Device) -> None:
        pending = self._pending
        self._admit(device.device_id not in pending.devices)
        snap = replace(device)
        self._devices[device.device_id] = snap
        self._nodes[device.device_id] = self.node_id
        self._own_devices.add(device.device_id)
        if device.device_id not in pending.devices:
            pending.size += 1
        pending.devices[device.device_id] = snap

    def delete_device(self, device_id: str) -> None:
        pending = self._pending
        self._admit(device_id not in pending.devices)
        self._devices.pop(device_id, None)
        self._nodes.pop(device_id, None)
        self._own_devices.discard(device_id)
        if device_id not in pending.devices:
            pending.size += 1
        pending.devices[device_id] = None

    def device_nodes(self) -> dict[str, str]:
        """Device ID -> the node that holds it, as loaded (``start``/``reload``) and saved."""
        return dict(self._nodes)

    async def node_of(self, device_id: str) -> str | None:
        """The node holding ``device_id`` now, read from Redis."""
        node: str | None = await self._c.hget(self.key("devnode"), device_id)
        return node

    # -- catalog ----------------------------------------------------------------------------
    def load_items(self) -> list[tuple[str, CatalogItem]]:
        return [(owner, item) for owner, its in self._items.items() for item in its.values()]

    def _queue_item(self, owner_id: str, item_id: str, item: CatalogItem | None) -> None:
        pending = self._pending.items.setdefault(owner_id, {})
        new = item_id not in pending
        self._admit(new)
        if new:
            self._pending.size += 1
        pending[item_id] = item
        self._own_owners.add(owner_id)

    def save_item(self, owner_id: str, item: CatalogItem, now: float) -> None:
        self._queue_item(owner_id, item.device_id, item)
        self._items.setdefault(owner_id, {})[item.device_id] = item

    def delete_item(self, owner_id: str, item_id: str) -> None:
        self._queue_item(owner_id, item_id, None)
        its = self._items.get(owner_id)
        if its is not None:
            its.pop(item_id, None)
            if not its:
                del self._items[owner_id]

    # -- alarms -----------------------------------------------------------------------------
    def save_alarm(self, alarm: Alarm) -> None:
        self._admit(True)
        stored = replace(alarm, id=self._ids["alarm"].take())
        self._alarms.append(stored)
        self._own_alarms.append(stored)
        self._pending.alarms.append(stored)
        self._pending.size += 1

    def load_alarms(self, *, limit: int = 100) -> list[Alarm]:
        out: list[Alarm] = []
        for a in reversed(self._alarms):
            if len(out) >= limit:
                break
            out.append(replace(a))
        return out

    # -- ID mapping for upper platforms -----------------------------------------------------
    def load_id_map(self, upper_id: str | None = None) -> list[tuple[str, str, str]]:
        uppers = [upper_id] if upper_id is not None else list(self._idmaps)
        return [(u, loc, m) for u in uppers for loc, m in self._idmaps.get(u, {}).items()]

    def save_mapping(self, upper_id: str, local_id: str, upper_item: str, now: float) -> None:
        """Queue a claim of ``upper_item`` for ``local_id`` (written by :data:`CLAIM` at the
        flush; a claim that loses is told to the handler :meth:`on_mapping_conflict` set)."""
        pending = self._pending.mappings.setdefault(upper_id, {})
        new = local_id not in pending
        self._admit(new)
        if new:
            self._pending.size += 1
        pending[local_id] = upper_item
        self._idmaps.setdefault(upper_id, {}).setdefault(local_id, upper_item)

    def on_mapping_conflict(self, upper_id: str, handler: MappingConflict) -> None:
        """``handler`` hears each claim for ``upper_id`` that Redis refused (the latest
        handler per upper: an upper's session restarted replaces its ID map)."""
        self._conflict_handlers[upper_id] = handler

    async def claim_mapping(self, upper_id: str, local_id: str, upper_item: str) -> str:
        """Record ``local_id`` -> ``upper_item`` unless either side is taken; return the upper
        ID stored for ``local_id`` afterwards (``upper_item`` when the claim won, "" when the
        upper ID belongs to another local ID and ``local_id`` has none)."""
        got = await self._c.eval(
            CLAIM, 2, self.key(f"idmap:{upper_id}"), self.key(f"idmapr:{upper_id}"),
            local_id, upper_item,
        )  # fmt: skip
        await self._c.sadd(self.key("idmaps"), upper_id)
        stored, holder = str(got[0]), str(got[1])
        self._settle_claim(upper_id, local_id, upper_item, stored, holder)
        return stored

    def _settle_claim(
        self, upper_id: str, local_id: str, wanted: str, stored: str, holder: str
    ) -> None:
        view = self._idmaps.setdefault(upper_id, {})
        if stored == wanted:
            view[local_id] = wanted
            return
        self.metrics.inc("store.idmap_conflicts")
        log.warning(
            "store.idmap_conflict",
            upper=upper_id,
            local_id=local_id,
            wanted=wanted,
            stored=stored or None,
            held_by=holder or None,
        )
        if stored:
            view[local_id] = stored
        elif view.get(local_id) == wanted:
            del view[local_id]
        if holder:
            view[holder] = wanted
        handler = self._conflict_handlers.get(upper_id)
        if handler is not None:
            try:
                handler(local_id, wanted, stored, holder)
            except Exception:  # the batch is written: a failing handler must not undo that
                log.exception("store.idmap_conflict_handler_failed", upper=upper_id)

    # -- the gateway's registration at each upper --------------------------------------------
    def load_upper_registrations(self) -> dict[str, tuple[str, str, int]]:
        return dict(self._uppers)

    def save_upper_registration(
        self, upper_id: str, call_id: str, from_tag: str, cseq: int, now: float
    ) -> None:
        new = upper_id not in self._pending.uppers
        self._admit(new)
        if new:
            self._pending.size += 1
        self._uppers[upper_id] = (call_id, from_tag, cseq)
        self._pending.uppers[upper_id] = (call_id, from_tag, cseq)
        self._own_uppers.add(upper_id)

    # -- records and the audit log ----------------------------------------------------------
    def load_records(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._records.get(kind, {})
        return [(key, json.loads(rows[key])) for key in sorted(rows)]

    def _queue_record(self, kind: str, key: str, text: str | None) -> None:
        new = (kind, key) not in self._pending.records
        self._admit(new)
        if new:
            self._pending.size += 1
        self._pending.records[(kind, key)] = text
        self._own_records.add((kind, key))

    def save_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        text = _dumps(data)
        self._queue_record(kind, key, text)
        self._records.setdefault(kind, {})[key] = text

    def delete_record(self, kind: str, key: str) -> None:
        self._queue_record(kind, key, None)
        self._records.get(kind, {}).pop(key, None)

    def save_audit(self, entry: AuditEntry) -> None:
        self._admit(True)
        stored = replace(entry, id=self._ids["audit"].take())
        self._remember_audit(stored)
        self._own_audit.append(stored)
        self._pending.audit.append(stored)
        self._pending.size += 1

    def _remember_audit(self, entry: AuditEntry) -> None:
        eid = entry.id or 0
        at = bisect_left(self._audit_ids, eid)
        if at < len(self._audit_ids) and self._audit_ids[at] == eid:
            return
        insort(self._audit_ids, eid)
        self._audit.insert(at, entry)
        if len(self._audit) > AUDIT_KEPT + AUDIT_KEPT // 10:
            cut = len(self._audit) - AUDIT_KEPT
            del self._audit[:cut]
            del self._audit_ids[:cut]

    def load_audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        end = len(self._audit_ids) if before is None else bisect_left(self._audit_ids, before)
        rows = self._audit[max(0, end - limit) : end]
        return [replace(e) for e in reversed(rows)]

    # -- queueing, health -------------------------------------------------------------------
    def queued(self) -> int:
        """Writes waiting for Redis (saved, not yet written)."""
        return self._pending.size + (self._writing.size if self._writing is not None else 0)

    def _admit(self, new: bool) -> None:
        """Refuse a new write once ``max_queued_writes`` are waiting (Redis gone too long)."""
        if not new or self.queued() < self.max_queued_writes:
            return
        self.metrics.inc("store.writes_refused")
        if not self._refused:
            self._refused = True
            log.error("store.writes_refused", url=_safe_url(self.url), queued=self.queued())
        raise StoreUnavailable(self.trouble() or "the store is busy: too many writes queued")

    def trouble(self) -> str:
        """What is wrong, for ``/readyz`` and errors ('' when nothing is)."""
        queued = self.queued()
        if self._down_since is not None:
            return (
                f"Redis at {_safe_url(self.url)} unreachable for "
                f"{time.monotonic() - self._down_since:.0f} s ({self._down_error}); "
                f"{queued} writes queued (max {self.max_queued_writes})"
            )
        if queued >= self.max_queued_writes:
            return f"{queued} writes queued for Redis (max {self.max_queued_writes})"
        return ""

    def healthy(self) -> bool:
        return self._down_since is None and self._failures == 0

    def _went_down(self, exc: BaseException, *, writing: bool = True) -> None:
        """A write (or the watch's check) found Redis not answering: the first time in an
        outage, one log line and ``store.redis.down``."""
        if writing:
            self._failures += 1
            self.metrics.inc("store.write_failed")
        self._down_error = f"{type(exc).__name__}: {exc}"[:200]
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.metrics.inc("store.redis.down")
            log.error(
                "store.redis_down",
                url=_safe_url(self.url),
                error=self._down_error,
                queued=self.queued(),
            )

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "store.redis_recovered",
                url=_safe_url(self.url),
                down_seconds=round(time.monotonic() - self._down_since, 1),
                queued=self.queued(),
            )
            self.metrics.inc("store.redis.recovered")
        self._down_since = None
        self._failures = 0
        self._refused = False

    # -- start, reload ----------------------------------------------------------------------
    async def start(self) -> None:
        """Read everything Redis holds (waiting up to :data:`START_TIMEOUT` for it), then
        start the writer and the health watch."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                await self._begin()
                break
            except (RedisError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"Redis at {_safe_url(self.url)} did not answer in {START_TIMEOUT:.0f}"
                        f" s: {type(exc).__name__}: {exc}"
                    ) from exc
                log.warning("store.redis_waiting", url=_safe_url(self.url), error=str(exc))
                await asyncio.sleep(0.5)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._revived = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._run(), name="store.redis.writer"),
            asyncio.create_task(self._watch(), name="store.redis.watch"),
        ]

    async def _begin(self) -> None:
        epoch = f"{self.node_id}:{secrets.token_hex(8)}"
        await self._c.set(self.key("epoch"), epoch, nx=True)
        self._epoch = await self._c.get(self.key("epoch")) or epoch
        for ids in self._ids.values():
            ids.set_block(int(await self._c.incrby(ids.key, ids.block)))
        await self._read_all()
        self._last_refresh = time.monotonic()

    async def reload(self) -> None:
        """Read everything again (a takeover of another node's devices, a resync); what is
        queued here stays on top."""
        async with self._lock:
            await self._read_all()

    async def _read_all(self) -> None:
        r, k = self._c, self.key
        devices = await r.hgetall(k("devices"))
        nodes: dict[str, str] = await r.hgetall(k("devnode"))
        owners = await r.smembers(k("owners"))
        items: dict[str, dict[str, CatalogItem]] = {}
        ordered = sorted(owners)
        for at in range(0, len(ordered), READ_CHUNK):  # a pipeline per chunk of owners
            chunk = ordered[at : at + READ_CHUNK]
            pipe: Any = r.pipeline(transaction=False)
            for owner in chunk:
                pipe.hgetall(k(f"items:{owner}"))
            for owner, raw in zip(chunk, await pipe.execute(), strict=True):
                if raw:
                    items[owner] = {iid: item_from_json(iid, t) for iid, t in raw.items()}
        idmaps: dict[str, dict[str, str]] = {}
        for upper in sorted(await r.smembers(k("idmaps"))):
            idmaps[upper] = await r.hgetall(k(f"idmap:{upper}"))
        uppers_raw = await r.hgetall(k("upreg"))
        records = await self._read_records()
        recby: dict[str, str] = await r.hgetall(k("recby"))
        alarms_raw = await r.lrange(k("alarms"), 0, ALARMS_KEPT - 1)
        audit_raw = await r.zrevrange(k("audit"), 0, AUDIT_KEPT - 1)
        # Everything read; now replace the view, with what is queued here on top.
        self._devices = {i: device_from_json(t) for i, t in devices.items()}
        self._nodes = {i: n for i, n in nodes.items() if i in self._devices}
        self._items = items
        self._idmaps = idmaps
        self._uppers = {
            u: (str(v[0]), str(v[1]), int(v[2]))
            for u, v in ((u, json.loads(t)) for u, t in uppers_raw.items())
        }
        self._records = records
        self._alarms = deque(
            (Alarm(**json.loads(t)) for t in reversed(alarms_raw)), maxlen=ALARMS_KEPT
        )
        entries = sorted((AuditEntry(**json.loads(t)) for t in audit_raw), key=_audit_id)
        self._audit = entries
        self._audit_ids = [e.id or 0 for e in entries]
        # What this node holds: what Redis says it saved last, plus what it held and no other
        # node saved since (a device Redis lacks stays: Redis may have been emptied); what is
        # queued here is added back by _apply.
        me = self.node_id
        self._own_devices = {i for i in self._own_devices if nodes.get(i, me) == me} | {
            i for i, n in nodes.items() if n == me
        }
        self._own_owners = {o for o in self._own_owners if nodes.get(o, me) == me} | {
            o for o in items if nodes.get(o) == me
        }
        self._own_records = {
            (kind, key) for kind, key in self._own_records if recby.get(f"{kind}/{key}", me) == me
        } | {
            (kind, key)
            for kind, rows in records.items()
            for key in rows
            if recby.get(f"{kind}/{key}") == me
        }
        for batch in self._queued():
            self._apply(batch)

    async def _read_records(self) -> dict[str, dict[str, str]]:
        r = self._c
        kinds = sorted(await r.smembers(self.key("reckinds")))
        pipe: Any = r.pipeline(transaction=False)
        for kind in kinds:
            pipe.hgetall(self.key(f"rec:{kind}"))
        got = await pipe.execute()
        return {kind: dict(rows) for kind, rows in zip(kinds, got, strict=True) if rows}

    def _apply(self, batch: _Batch) -> None:
        """Lay a queued batch over a freshly read view."""
        for did, dev in batch.devices.items():
            if dev is None:
                self._devices.pop(did, None)
                self._nodes.pop(did, None)
                self._own_devices.discard(did)
            else:
                self._devices[did] = dev
                self._nodes[did] = self.node_id
                self._own_devices.add(did)
        for owner, its in batch.items.items():
            self._own_owners.add(owner)
            view = self._items.setdefault(owner, {})
            for iid, item in its.items():
                if item is None:
                    view.pop(iid, None)
                else:
                    view[iid] = item
            if not view:
                del self._items[owner]
        for upper, pairs in batch.mappings.items():
            idmap = self._idmaps.setdefault(upper, {})
            for loc, mapped in pairs.items():
                idmap.setdefault(loc, mapped)
        self._uppers.update(batch.uppers)
        for (kind, key), text in batch.records.items():
            self._own_records.add((kind, key))
            if text is None:
                self._records.get(kind, {}).pop(key, None)
            else:
                self._records.setdefault(kind, {})[key] = text
        for alarm in batch.alarms:
            self._alarms.append(alarm)
        for entry in batch.audit:
            self._remember_audit(entry)

    async def _refresh_records(self) -> None:
        records = await self._read_records()
        for batch in self._queued():
            for (kind, key), text in batch.records.items():
                if text is None:
                    records.get(kind, {}).pop(key, None)
                else:
                    records.setdefault(kind, {})[key] = text
        self._records = records

    # -- the writer (``QueuedWriter``: the loop, group commit) and the watch -----------------
    async def _wait_retry(self) -> None:
        """While Redis does not answer: the back-off, cut short when the watch sees it answer
        again (or by ``close``, which sets ``_revived`` too)."""
        await self._pause(self._retry_delay(), self._revived)
        self._revived.clear()

    async def _watch(self) -> None:
        """Every :data:`HEALTH_INTERVAL`: does Redis answer, does it still hold our epoch (gone,
        or another node's new one after it wrote back first: Redis was emptied)? An outage is
        seen (and its end) even when nothing is being written."""
        while not self._stopping.is_set():
            await self._pause(HEALTH_INTERVAL, self._stopping)
            if self._stopping.is_set():
                return
            try:
                async with self._lock:
                    if await self._c.get(self.key("epoch")) != self._epoch:
                        await self._restore()
                    if time.monotonic() - self._last_refresh >= RECORDS_REFRESH:
                        self._last_refresh = time.monotonic()
                        await self._refresh_records()
            except (RedisError, OSError) as exc:
                self._went_down(exc, writing=False)
                continue
            except Exception:
                log.exception("store.redis_watch_failed")
                continue
            if self._down_since is not None:
                # Answering again: the outage ends here when nothing waits to be written,
                # else when the queue has been written (a write refused for another reason,
                # Redis out of memory, is not a recovery).
                if self.queued() or self._failures:
                    self._revived.set()
                else:
                    self._came_back()

    # -- ``QueuedWriter.flush``'s steps ------------------------------------------------------
    async def _write_batch(self, batch: _Batch) -> bool:
        return await self._write(batch)

    def _write_failed(self, exc: Exception) -> None:
        self._went_down(exc)
        if not isinstance(exc, (RedisError, OSError)):
            log.exception("store.write_failed", error=str(exc))

    def _write_recovered(self) -> None:
        self._came_back()

    async def _complete(self) -> None:
        """``P epoch`` was gone or not ours at the write: Redis restarted empty, write back
        what this node holds."""
        try:
            await self._restore()
        except (RedisError, OSError) as exc:
            self._went_down(exc, writing=False)  # the watch tries again

    async def _write(
        self, batch: _Batch, *, restoring: bool = False, whole: frozenset[str] = frozenset()
    ) -> bool:
        """One MULTI/EXEC with the whole batch; False when ``P epoch`` was gone or another
        than ours (Redis restarted empty: the caller writes back what this node holds).
        ``whole``: owners whose catalog the batch holds whole (what Redis has is dropped)."""
        k, me = self.key, self.node_id
        args = await asyncio.to_thread(_encode, batch)
        pipe: Any = self._c.pipeline(transaction=True)
        pipe.get(k("epoch"))
        for owner in sorted(whole):
            pipe.delete(k(f"items:{owner}"))
        if args.devices:
            pipe.hset(k("devices"), mapping=args.devices)
            pipe.hset(k("devnode"), mapping=dict.fromkeys(args.devices, me))
        if args.device_deletes:
            pipe.hdel(k("devices"), *args.device_deletes)
            pipe.hdel(k("devnode"), *args.device_deletes)
        for owner, rows in args.items.items():
            pipe.hset(k(f"items:{owner}"), mapping=rows)
        if args.items:
            pipe.sadd(k("owners"), *args.items)
        for owner, gone in args.item_deletes.items():
            pipe.hdel(k(f"items:{owner}"), *gone)
        if args.alarms:
            pipe.lpush(k("alarms"), *args.alarms)
            pipe.ltrim(k("alarms"), 0, ALARMS_MAX - 1)
        claims: list[tuple[int, str, list[tuple[str, str]]]] = []
        for upper, pairs in batch.mappings.items():
            flat = [x for pair in pairs.items() for x in pair]
            claims.append((len(pipe), upper, list(pairs.items())))
            pipe.eval(CLAIM, 2, k(f"idmap:{upper}"), k(f"idmapr:{upper}"), *flat)
        if batch.mappings:
            pipe.sadd(k("idmaps"), *batch.mappings)
        if args.uppers:
            pipe.hset(k("upreg"), mapping=args.uppers)
        for kind, rows in args.records.items():
            pipe.hset(k(f"rec:{kind}"), mapping=rows)
            pipe.hset(k("recby"), mapping={f"{kind}/{key}": me for key in rows})
        if args.records:
            pipe.sadd(k("reckinds"), *args.records)
        for kind, keys in args.record_deletes.items():
            pipe.hdel(k(f"rec:{kind}"), *keys)
            pipe.hdel(k("recby"), *(f"{kind}/{key}" for key in keys))
        if args.audit:
            pipe.zadd(k("audit"), args.audit)
        asked: list[tuple[int, _Ids]] = []
        for ids in self._ids.values():
            if restoring:
                pipe.eval(_RAISE_SEQ, 1, ids.key, str(max(ids.highest, ids.end)))
            elif ids.wants_block():
                asked.append((len(pipe), ids))
                pipe.incrby(ids.key, ids.block)
        results = await pipe.execute()
        for at, ids in asked:
            ids.set_block(int(results[at]))
        for at, upper, claimed in claims:
            got = results[at]
            for n, (loc, wanted) in enumerate(claimed):
                self._settle_claim(upper, loc, wanted, str(got[2 * n]), str(got[2 * n + 1]))
        return bool(results[0] == self._epoch)

    async def _restore(self) -> None:
        """Redis came back empty: write back what this node holds (called under the lock),
        then the epoch again (a write-back cut short is tried again by the watch). Devices
        first (:data:`RESTORE_DEVICES`): one Redis kept for another node is dropped from what
        this node holds, with its catalog; the catalog of one written back replaces Redis's."""
        batch = self._mirror()
        log.warning(
            "store.redis_emptied",
            url=_safe_url(self.url),
            devices=len(batch.devices),
            items=sum(len(v) for v in batch.items.values()),
            records=len(batch.records),
            mappings=sum(len(v) for v in batch.mappings.values()),
        )
        kept = await self._restore_devices(batch.devices)
        queued = {did for b in self._queued() for did in b.devices}
        for did, (holder, text) in kept.items():
            if did in queued:  # saved here since: that save is written next, and wins
                continue
            self._own_devices.discard(did)
            self._own_owners.discard(did)
            batch.items.pop(did, None)
            self._devices[did] = device_from_json(text)
            if holder:
                self._nodes[did] = holder
        whole = frozenset(batch.devices) - set(kept)
        batch.devices = {}
        await self._write(batch, restoring=True, whole=whole)
        epoch = f"{self.node_id}:{secrets.token_hex(8)}"
        await self._c.set(self.key("epoch"), epoch, nx=True)
        self._epoch = await self._c.get(self.key("epoch")) or epoch
        self.metrics.inc("store.redis.restored")

    async def _restore_devices(
        self, devices: dict[str, Device | None]
    ) -> dict[str, tuple[str, str]]:
        """Write back ``devices`` where Redis holds no copy as recent (:data:`RESTORE_DEVICES`);
        returns the kept ones: device ID -> (the node holding it, Redis's copy)."""
        flat: list[str] = []
        for did, dev in devices.items():
            if dev is not None:
                flat += [did, device_json(dev), repr(float(dev.registered_at))]
        kept: dict[str, tuple[str, str]] = {}
        keys = (self.key("devices"), self.key("devnode"))
        step = 3 * _RESTORE_CHUNK
        for at in range(0, len(flat), step):
            chunk = flat[at : at + step]
            got = await self._c.eval(RESTORE_DEVICES, 2, *keys, self.node_id, *chunk)
            for n, did in enumerate(chunk[::3]):
                text, holder = str(got[2 * n]), str(got[2 * n + 1])
                if text:
                    kept[did] = (holder, text)
        return kept

    def _mirror(self) -> _Batch:
        """A batch of everything this node holds (its latest values)."""
        b = _Batch()
        b.devices = {i: self._devices[i] for i in self._own_devices if i in self._devices}
        for owner in self._own_owners:
            its: dict[str, CatalogItem | None] = dict(self._items.get(owner, {}))
            if its:
                b.items[owner] = its
        b.mappings = {u: dict(m) for u, m in self._idmaps.items() if m}
        b.uppers = {u: self._uppers[u] for u in self._own_uppers if u in self._uppers}
        b.records = {
            (kind, key): self._records[kind][key]
            for kind, key in self._own_records
            if key in self._records.get(kind, {})
        }
        b.alarms = list(self._own_alarms)
        b.audit = list(self._own_audit)
        b.size = 1
        return b

    async def close(self) -> None:
        """Stop the writer and the watch, write what is left, close the connections."""
        self._cancel_wake()
        self._stopping.set()
        self._wake.set()
        self._revived.set()
        for task in self._tasks:
            await task
        self._tasks = []
        try:
            await self.flush()
        except Exception:
            log.error("store.closed_unwritten", url=_safe_url(self.url), queued=self.queued())
        await self._r.aclose()


def _audit_id(entry: AuditEntry) -> int:
    return entry.id or 0


@dataclass
class _Args:
    devices: dict[str, str] = field(default_factory=dict)
    device_deletes: list[str] = field(default_factory=list)
    items: dict[str, dict[str, str]] = field(default_factory=dict)
    item_deletes: dict[str, list[str]] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    uppers: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    record_deletes: dict[str, list[str]] = field(default_factory=dict)
    audit: dict[str, int] = field(default_factory=dict)


def _encode(batch: _Batch) -> _Args:
    """The batch as Redis values (JSON), in a worker thread like SQLite's rows: a catalog of
    200,000 channels takes seconds to encode."""
    a = _Args()
    for did, dev in batch.devices.items():
        if dev is None:
            a.device_deletes.append(did)
        else:
            a.devices[did] = device_json(dev)
    for owner, its in batch.items.items():
        for iid, item in its.items():
            if item is None:
                a.item_deletes.setdefault(owner, []).append(iid)
            else:
                a.items.setdefault(owner, {})[iid] = item_json(item)
    # LPUSH puts the last one at the head: the newest first.
    a.alarms = [_dumps(asdict(al)) for al in batch.alarms]
    a.uppers = {u: _dumps(list(v)) for u, v in batch.uppers.items()}
    for (kind, key), text in batch.records.items():
        if text is None:
            a.record_deletes.setdefault(kind, []).append(key)
        else:
            a.records.setdefault(kind, {})[key] = text
    a.audit = {_dumps(asdict(e)): e.id or 0 for e in batch.audit}
    return a
