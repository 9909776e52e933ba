"""Lock-outs after failed digest answers: per source address and per device ID.

A wrong password is the only failure counted (``Verdict.BAD_PASSWORD``): every other refusal
(stale, replayed or used-up nonce, unsupported algorithm, another realm) checks no password and
teaches a guesser nothing. Each failure burns its nonce (``DigestServer``), so a guess costs a
challenge round trip; these limits bound how many guesses there are at all (the policy RFC 2617
§4.3 and §4.7, online dictionary attacks, leave to the server).

* **Per address** (the source IP, any port): ``max_failures_per_address`` failures within
  ``failure_window`` seconds lock the address for ``lockout_seconds``. A locked address gets
  ``403`` with ``Retry-After`` for every REGISTER, challenge or answer, and its password is not
  checked, with one exception: a device ID that is registered (online) from that very host is not
  held by the address lock, only by its own per-ID lock below. Many devices of one unit share a
  NAT address; a few misconfigured ones (or a guesser behind the same NAT) must not cut off the
  working ones' refreshes, and a guesser gains nothing from it, since guesses at a registered ID
  still meet the per-device limit.
* **Per device ID**: ``max_failures_per_device`` failures for one ID (from any address) within
  the window lock the ID, but only *against the addresses that failed for it*. A REGISTER for
  that ID from an address with no failure for it is served as usual. So an attacker at A who
  guesses D's password cannot keep D out when D registers from B; and a guesser spread over many
  addresses gets one failure per address while the ID is locked, not the per-device limit each.

Counting starts at an address's or ID's first failure and is forgotten ``failure_window``
seconds later; a lock-out does not grow while requests are refused (refused requests are not
failures). A success from an address clears that address's record for the ID (it knows the
password), but not the address's or the ID's own counts: a device that logs in must not wipe
the count of a guesser behind the same NAT.

Memory is bounded: each table keeps at most ``max_entries`` records, in least-recently-touched
order, and records expire with their window and lock-out (``prune``, from the stalest end).
Evicting a record forgets its count (and its lock); the cap is meant to be far above what honest
traffic needs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Record:
    first: float  # the first failure of the current window
    count: int = 0
    locked_until: float = 0.0


class _Table(Generic[K]):
    """Failure counts by key, least recently touched first, at most ``cap`` of them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.rows: OrderedDict[K, _Record] = OrderedDict()

    def get(self, key: K, now: float, window: float) -> _Record | None:
        """The live record of ``key``: ``None`` when it has none, or its window and lock-out
        are both over (then it is dropped)."""
        row = self.rows.get(key)
        if row is None:
            return None
        if row.locked_until <= now and now - row.first >= window:
            del self.rows[key]
            return None
        return row

    def fail(self, key: K, now: float, window: float) -> _Record:
        row = self.rows.get(key)
        if row is None or (row.locked_until <= now and now - row.first >= window):
            row = _Record(first=now)
        elif row.locked_until and row.locked_until <= now:
            # The lock-out is over: counting starts again.
            row = _Record(first=now)
        row.count += 1
        self.rows[key] = row
        self.rows.move_to_end(key)
        while len(self.rows) > self.cap:
            self.rows.popitem(last=False)
        return row

    def prune(self, now: float, window: float) -> None:
        rows = self.rows
        while rows:
            key, row = next(iter(rows.items()))
            if row.locked_until > now or now - row.first < window:
                return
            del rows[key]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True, slots=True)
class Locked:
    """A refusal: which limit (``address`` or ``device``) and the seconds left."""

    kind: str
    retry_after: int


@dataclass(frozen=True, slots=True)
class NewLockOut:
    """A lock-out that the failure just recorded started (logged once, counted once)."""

    kind: str
    key: str
    seconds: float
    failures: int


class FailureLimits:
    """The per-address and per-device failure counts of one registrar (sans-I/O: the caller
    passes the time)."""

    def __init__(
        self,
        *,
        max_failures_per_device: int,
        max_failures_per_address: int,
        failure_window: float,
        lockout_seconds: float,
        max_entries: int,
    ) -> None:
        self.per_device = max_failures_per_device
        self.per_address = max_failures_per_address
        self.window = failure_window
        self.lockout = lockout_seconds
        self.addresses: _Table[str] = _Table(max_entries)
        self.devices: _Table[str] = _Table(max_entries)
        # (device ID, address) -> time of its last failure: where a device lock applies.
        self.tried: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.max_entries = max_entries

    def _tried(self, device_id: str, address: str, now: float) -> bool:
        key = (device_id, address)
        when = self.tried.get(key)
        if when is None:
            return False
        if now - when >= self.window + self.lockout:
            del self.tried[key]
            return False
        return True

    def check(
        self,
        device_id: str | None,
        address: str,
        now: float,
        *,
        registered_here: bool = False,
    ) -> Locked | None:
        """Whether a REGISTER from ``address`` (for ``device_id``) must be refused now.
        ``registered_here``: ``device_id`` is online with a binding from this very host; the
        address lock then does not apply to it (the device lock still does)."""
        row = self.addresses.get(address, now, self.window)
        if row is not None and row.locked_until > now and not registered_here:
            self.addresses.rows.move_to_end(address)
            return Locked("address", _seconds(row.locked_until - now))
        if device_id is None:
            return None
        row = self.devices.get(device_id, now, self.window)
        if row is not None and row.locked_until > now and self._tried(device_id, address, now):
            return Locked("device", _seconds(row.locked_until - now))
        return None

    def failed(self, device_id: str, address: str, now: float) -> list[NewLockOut]:
        """Count a wrong password; the lock-outs it starts, if any."""
        started: list[NewLockOut] = []
        key = (device_id, address)
        self.tried[key] = now
        self.tried.move_to_end(key)
        while len(self.tried) > self.max_entries:
            self.tried.popitem(last=False)
        for kind, table, name, limit in (
            ("address", self.addresses, address, self.per_address),
            ("device", self.devices, device_id, self.per_device),
        ):
            row = table.fail(name, now, self.window)
            if row.locked_until <= now and row.count >= limit:
                row.locked_until = now + self.lockout
                started.append(NewLockOut(kind, name, self.lockout, row.count))
        return started

    def succeeded(self, device_id: str, address: str) -> None:
        """A right password from ``address`` for ``device_id``: that pair is clean again."""
        self.tried.pop((device_id, address), None)

    def prune(self, now: float) -> None:
        """Drop expired records from the least recently touched end (cheap to call often)."""
        self.addresses.prune(now, self.window)
        self.devices.prune(now, self.window)
        tried, horizon = self.tried, self.window + self.lockout
        while tried:
            key, when = next(iter(tried.items()))
            if now - when < horizon:
                break
            del tried[key]

    def size(self) -> int:
        return len(self.addresses) + len(self.devices) + len(self.tried)


def _seconds(left: float) -> int:
    """``Retry-After`` is whole seconds (RFC 3261 §20.33); never 0 while still locked."""
    return max(1, math.ceil(left))
