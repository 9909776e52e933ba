"""The IDs an upper platform knows the gateway's items by (``id_policy``).

``keep``: every item keeps its own ID. ``recode``: each shared item gets a new 20-digit ID in the
upper's namespace (reference §1.2): the configured civil code (padded to the 8-digit centre
code), the configured industry code, the item's own type code and network digit, and a 6-digit
serial the gateway allocates, the next free one for that prefix. Civil-region codes and the
gateway's own ID are never recoded: the first name a place, the second is who registered.

A mapping, once made, is stored and never changes or moves to another item, so a channel keeps
its recoded ID across restarts, re-syncs and re-registrations, and no two items share one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from gateway.manscdp import is_civil_code, is_gb_id
from gateway.settings import UpperPlatform
from gateway.store import Store


class IdSpaceFull(Exception):
    """No free serial is left for a prefix in the upper's namespace."""


class IdMap:
    def __init__(
        self,
        upper: UpperPlatform,
        store: Store,
        gateway_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upper_id = upper.id
        # IDs that must never be handed out: the platforms' own (set by the uplink).
        self.reserved: set[str] = {upper.id, gateway_id}
        self.recode = upper.id_policy == "recode"
        self.centre = upper.civil_code.ljust(8, "0")
        self.industry = upper.industry_code
        self.store = store
        self.gateway_id = gateway_id
        self.clock = clock
        self._up: dict[str, str] = {}
        self._down: dict[str, str] = {}
        self._next: dict[str, int] = {}
        self._sorted: list[tuple[str, str]] | None = None  # pairs(), until the next mapping
        # A shared store (Redis) tells us when another node's claim won (a fencing window).
        watch = getattr(store, "on_mapping_conflict", None)
        if watch is not None:
            watch(self.upper_id, self.adopt)

    def load(self, rows: list[tuple[str, str, str]]) -> None:
        for upper_id, local_id, mapped in rows:
            if upper_id == self.upper_id and local_id not in self._up and mapped not in self._down:
                self._remember(local_id, mapped)

    def _remember(self, local_id: str, mapped: str) -> None:
        self._up[local_id] = mapped
        self._down[mapped] = local_id
        self._sorted = None
        prefix, serial = mapped[:14], int(mapped[14:])
        if serial >= self._next.get(prefix, 1):
            self._next[prefix] = serial + 1

    def adopt(self, local_id: str, wanted: str, stored: str, holder: str) -> None:
        """The store refused ``local_id`` -> ``wanted``: take what it holds instead (``stored``
        for ``local_id``, ``wanted`` for ``holder``), and claim a fresh ID for ``local_id`` when
        it has none yet."""
        if self._up.get(local_id) == wanted:
            del self._up[local_id]
        if self._down.get(wanted) == local_id:
            del self._down[wanted]
        for loc, mapped in ((local_id, stored), (holder, wanted)):
            if not loc or not mapped:
                continue
            old = self._up.pop(loc, None)
            if old is not None and self._down.get(old) == loc:
                del self._down[old]
            other = self._down.get(mapped)
            if other is not None and other != loc:
                self._up.pop(other, None)
            self._remember(loc, mapped)
        self._sorted = None
        if not stored:
            self.to_upper(local_id)

    def __len__(self) -> int:
        return len(self._up)

    def pairs(self) -> Sequence[tuple[str, str]]:
        """Every recoded ID: (local ID, the ID the upper knows it by), by local ID. Sorted
        once per new mapping, not per call (a paged API reads it page after page); not to be
        changed by the caller."""
        if self._sorted is None:
            self._sorted = sorted(self._up.items())
        return self._sorted

    def _fixed(self, local_id: str) -> bool:
        return not self.recode or local_id == self.gateway_id or is_civil_code(local_id)

    def to_upper(self, local_id: str) -> str:
        """The ID the upper knows ``local_id`` by, allocating (and storing) one when needed."""
        if self._fixed(local_id):
            return local_id
        mapped = self._up.get(local_id)
        if mapped is None:
            mapped = self._allocate(local_id)
            self._remember(local_id, mapped)
            self.store.save_mapping(self.upper_id, local_id, mapped, self.clock())
        return mapped

    def known_upper(self, local_id: str) -> str | None:
        """Like :meth:`to_upper` but never allocates."""
        if self._fixed(local_id):
            return local_id
        return self._up.get(local_id)

    def to_local(self, upper_item: str) -> str | None:
        """The gateway's own ID for an ID the upper used, or ``None`` when it names nothing."""
        if self._fixed(upper_item):
            return upper_item
        return self._down.get(upper_item)

    def _allocate(self, local_id: str) -> str:
        if is_gb_id(local_id):
            type_code, network = local_id[10:13], local_id[13]
        else:
            type_code, network = "131", "0"  # a non-standard channel ID: call it a camera
        prefix = f"{self.centre}{self.industry}{type_code}{network}"
        serial = self._next.get(prefix, 1)
        while serial <= 999_999:
            candidate = f"{prefix}{serial:06d}"
            if candidate not in self._down and candidate not in self.reserved:
                self._next[prefix] = serial + 1
                return candidate
            serial += 1
        raise IdSpaceFull(f"no free serial left under {prefix} for {self.upper_id}")
