"""The gateway's SSRC pool (GB/T 28181-2016 Annex F / 2022 Annex G ``y=``; reference §6.4).

``y=`` is ten decimal digits: ``0`` live or ``1`` history, then digits 4–8 of the domain ID, then
a four-digit serial unique among the streams this domain has issued at any one time. The pool
hands serials out at random among the free ones (a restarted gateway does not reuse the serial a
device may still be streaming under) and takes them back when a session ends.
"""

from __future__ import annotations

import random


class SsrcExhausted(Exception):
    """All 10,000 serials of the domain are in use."""


class SsrcPool:
    SIZE = 10_000

    def __init__(self, domain: str, *, rng: random.Random | None = None) -> None:
        digits = "".join(ch for ch in domain if ch.isdigit())
        if len(digits) < 8:
            raise ValueError(f"domain {domain!r} needs at least 8 digits for the SSRC")
        self.middle = digits[3:8]
        self._free = list(range(self.SIZE))
        self._rng = rng or random.Random()
        self._used: set[int] = set()

    def take(self, *, history: bool) -> str:
        if not self._free:
            raise SsrcExhausted("no SSRC serial left")
        i = self._rng.randrange(len(self._free))
        # Swap-remove keeps take() O(1).
        self._free[i], self._free[-1] = self._free[-1], self._free[i]
        serial = self._free.pop()
        self._used.add(serial)
        return f"{1 if history else 0}{self.middle}{serial:04d}"

    def release(self, ssrc: str) -> None:
        """Give back an SSRC this pool handed out; anything else (a device's own) is ignored."""
        if len(ssrc) != 10 or not ssrc.isdigit() or ssrc[1:6] != self.middle:
            return
        serial = int(ssrc[6:])
        if serial in self._used:
            self._used.discard(serial)
            self._free.append(serial)

    def in_use(self) -> int:
        return len(self._used)
