"""Overload: seeing it early and shedding new work, so the work already taken gets done.

The day a city's network comes back after an outage every device registers at once. A gateway
that takes every REGISTER it is sent answers each later and later; past T1 (500 ms) the devices
retransmit, the retransmissions are more work again, and the gateway collapses. Here it sheds
instead: while it is behind, a share of the *new work* (an initial REGISTER, one without
``Authorization``, and any other new out-of-dialog request from a sender it does not know) is
answered ``503 Service Unavailable`` with a ``Retry-After`` (RFC 3261 §21.5.4), and everything
else is served: retransmissions (absorbed by their transactions), responses and in-dialog
requests, the authenticated second REGISTER of a registration already challenged, and requests
of registered devices and configured uppers (their keepalives: a device is never marked offline
because the gateway was busy).

**Seeing it.** Two signals, sampled every ``tick`` seconds on the event loop:

* the UDP receive queue: a transport reports :meth:`LoadGuard.backlogged` when a read of the
  socket comes back full (more datagrams wait) and :meth:`LoadGuard.drained` when it empties.
  Behind = the queue has not been empty for ``queue_delay`` seconds. This is the early signal:
  the queue holds what the gateway has been sent and not read, which no loop timer can see
  (the loop turns every few milliseconds however long the queue is);
* the lateness of the tick itself (event-loop lag), for work that does not go through the UDP
  socket (TCP connections, timers, catalog syncs).

**Shedding.** The share of new work taken (:attr:`LoadGuard.share`) follows the signals in
the manner of TCP's congestion window: down by a factor while behind, up by a step while not,
so it settles near what the gateway can take, whatever the offered load. The decision costs a
random draw; the answer to a shed REGISTER is built from its bytes without parsing, from one
pass of a regular expression over its header block (:func:`scan_register`, then
:func:`shed_response`; what is not plain enough for that goes the slow way,
:func:`is_initial_register` and :func:`quick_response`, or the parser), so a shed request
costs a small fraction of a served one and goodput holds under several times the sustainable
load.

**Coming back.** ``Retry-After`` values are not random: each shed request is given a second in
a calendar of returns, filled in order up to a quota per second (90 % of the registrations the
gateway was seen to complete per second while shedding, at least 10), from ``retry_after_min``
seconds on. The shed devices come back as a steady stream the gateway can take, not as a
second storm. Past ``retry_after_max`` the calendar is full and the value is spread at random
over the whole window.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("gateway.sip.overload")

_KEEP = (b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq")
_NEEDED = {b"via", b"from", b"to", b"call-id", b"cseq"}
_LONG = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}

# One pass over the header block: each line a response copies, with the LF before it and its
# CR (``.`` stops at LF only), and the header's name (those the parser knows, in any case,
# then the whitespace ``bytes.rstrip`` takes off a name), the colon again when the line ends
# in a bare LF; or a folded line, or an Authorization header (a name merely starting so
# counts, as in :func:`is_initial_register`).
_SCAN = re.compile(
    rb"(\n(?:(via|v|from|f|to|t|call-id|i|cseq)[ \t\r\x0b\x0c]*+(?::.*+(?<=\r)|(:).*+)"
    rb"|(authorization|[ \t])))",
    re.IGNORECASE,
)
# The order of the copied headers' names (lowered, space-separated) -> where From and To are
# in it, or None when a header is missing or given twice. A gateway meets a handful of these
# (one per kind of device), so each is worked out once. Bounded: at most _SHAPES_MAX shapes of
# at most _SHAPE_LEN bytes are kept (a stranger's odd ones take the place of none; past the
# bound, a shape is worked out each time, which costs microseconds).
_SHAPES: dict[bytes, tuple[int, int] | None] = {}
_SHAPES_MAX = 256
_UNSEEN = (-1, -1)
_SHAPE_LEN = 128


def _shape(names: bytes) -> tuple[int, int] | None:
    """Where From and To are among the copied headers named in ``names``; ``None`` unless
    there is a Via and one each of From, To, Call-ID and CSeq."""
    named = [_LONG.get(n, n) for n in names.split()]
    if b"via" not in named or any(named.count(n) != 1 for n in _NEEDED - {b"via"}):
        return None
    return named.index(b"from"), named.index(b"to")


def scan_register(data: bytes) -> tuple[str, tuple[bytes, ...], int] | bool | None:
    """One look at a datagram for the shed path: is it an initial REGISTER (no
    ``Authorization``), who does it say it is, and what would a response copy?

    ``False``: it is not one (another request, a response, an authenticated REGISTER): serve
    it as usual. ``None``: it may be one but is not plain enough to be read here (no end of
    headers, a folded line, a line ending in a bare LF, a copied header missing or given twice):
    the caller decides the slow way (:func:`is_initial_register`, :func:`quick_response`, the
    parser). Otherwise ``(user, lines, to)``: the user part of the From URI as
    :func:`from_user` reads it, and the Via, From, To, Call-ID and CSeq lines in their order
    with the index of the To among them, for :func:`shed_response`.

    One regular expression goes over the header block once, finding the copied lines, a folded
    line and ``Authorization`` together; the shape of the copied headers (their names in
    order) is then looked up, and only the From line is looked at again. What the lines say
    is copied, not checked: the request is answered and forgotten."""
    if not data.startswith(b"REGISTER "):
        return False
    head, blank, _ = data.partition(b"\r\n\r\n")
    if not blank:
        return None
    found = _SCAN.findall(head + b"\r")  # so every header line ends in CR, the last too
    if not found:
        return None
    lines, names, bare, special = zip(*found, strict=True)
    if any(special) or any(bare):
        # Authorization makes it no initial REGISTER, unless a folded line hides more.
        return False if not any(bare) and b" " not in special and b"\t" not in special else None
    key = b" ".join(names).lower()
    shape = _SHAPES.get(key, _UNSEEN)
    if shape is _UNSEEN:
        shape = _shape(key)
        if len(_SHAPES) < _SHAPES_MAX and len(key) <= _SHAPE_LEN:
            _SHAPES[key] = shape
    if shape is None:
        return None
    to = shape[1]
    _, sip, rest = lines[shape[0]].partition(b"sip:")
    user, at, _ = rest.partition(b"@")
    if not sip or not at or len(user) > 64:
        return "", lines, to
    return user.decode("ascii", "replace"), lines, to


def shed_response(lines: tuple[bytes, ...], to: int, status_line: bytes, headers: bytes) -> bytes:
    """The response to a request whose copied lines :func:`scan_register` gave: the
    ``status_line`` (``SIP/2.0 503 Service Unavailable``), those lines (the To with a tag
    added when it has none, RFC 3261 §8.2.6.2), then ``headers`` (whole lines,
    CRLF-terminated) and an empty body: what :func:`quick_response` makes of that request."""
    line = lines[to]
    if b";tag=" not in line.lower().replace(b" ", b""):
        tagged = b"".join((line.rstrip(), b";tag=%08x\r" % random.getrandbits(32)))
        lines = (*lines[:to], tagged, *lines[to + 1 :])
    return b"".join((status_line, b"\r", *lines, b"\n", headers, b"Content-Length: 0\r\n\r\n"))


def is_initial_register(data: bytes) -> bool:
    """A REGISTER without ``Authorization``: the first of a registration's two requests.
    Looked at in the bytes (the header part only, any case); a header merely starting with
    the name (``Authorization-Foo``) counts as one, which errs on the side of serving."""
    if not data.startswith(b"REGISTER "):
        return False
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    return b"\nauthorization" not in head.lower()


def from_user(data: bytes) -> str:
    """The user part of the From URI, read from the bytes (``""`` when it cannot be found
    plainly): who an initial REGISTER says it is, before it is parsed."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[:end]
    low = head.lower()
    at = low.find(b"\r\nfrom:")
    if at < 0:
        at = low.find(b"\r\nf:")
        if at < 0:
            return ""
    line_end = low.find(b"\r\n", at + 2)
    line = head[at + 2 : line_end if line_end > 0 else len(head)]
    start = line.find(b"sip:")
    if start < 0:
        return ""
    start += 4
    stop = line.find(b"@", start)
    if stop < 0 or stop - start > 64:
        return ""
    return line[start:stop].decode("ascii", "replace")


def quick_response(data: bytes, status: int, reason: str, headers: bytes = b"") -> bytes | None:
    """A response to the request in ``data`` built from its bytes: its Via headers, From,
    To (with a tag added when it has none), Call-ID and CSeq, then ``headers`` (whole lines,
    CRLF-terminated) and an empty body. ``None`` when the request is not plain enough for that
    (a folded header, a header missing or given twice): the caller then parses it the usual
    way. Nothing is kept."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    out = [b"SIP/2.0 %d %s" % (status, reason.encode())]
    seen: set[bytes] = set()
    for line in lines[1:]:
        if not line or line[0] in b" \t":
            return None  # folded: the parser knows how to join it
        colon = line.find(b":")
        if colon <= 0:
            return None
        name = line[:colon].rstrip().lower()
        if name not in _KEEP:
            continue
        name = _LONG.get(name, name)
        if name != b"via":
            if name in seen:
                return None
            seen.add(name)
            if name == b"to" and b";tag=" not in line.lower().replace(b" ", b""):
                line = line.rstrip() + b";tag=" + random.randbytes(4).hex().encode()
        else:
            seen.add(name)
        out.append(line)
    if seen != _NEEDED:
        return None
    return b"\r\n".join(out) + b"\r\n" + headers + b"Content-Length: 0\r\n\r\n"


class LoadGuard:
    """How much new work the gateway takes now, and when a shed request may come back.

    ``enabled=False`` keeps the signals (for metrics and the tests) but never sheds. Time comes
    from ``clock`` (monotonic seconds); :meth:`tick` is called by the owner every ``tick``
    seconds with the loop's lag.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        queue_delay: float = 0.2,
        loop_lag: float = 0.25,
        retry_after_min: int = 5,
        retry_after_max: int = 300,
        tick: float = 0.1,
        decrease: float = 0.7,
        increase: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.enabled = enabled
        self.queue_delay = queue_delay
        self.loop_lag = loop_lag
        self.retry_after_min = retry_after_min
        self.retry_after_max = max(retry_after_min, retry_after_max)
        self.tick_interval = tick
        self.decrease = decrease
        self.increase = increase
        #: after a decrease, none again for this long: the queue needs that long to show its
        #: effect, and cutting again meanwhile would overshoot far below what the gateway takes
        self.cooldown = queue_delay
        self._hold_until = 0.0
        self._clock = clock
        self._rng = rng
        #: share of new work taken, 0..1 (1: not shedding)
        self.share = 1.0
        self.behind = False
        self.shed = 0  # new requests shed, in all
        self.admitted = 0  # new requests taken, in all
        self._backlog_since: float | None = None
        self._last_tick = clock()
        #: authenticated REGISTERs seen while shedding (:meth:`registered`)
        self.completed = 0
        self._completed_at_tick = 0
        #: registrations completed per second while shedding, smoothed over seconds: what the
        #: gateway can take, so the calendar's quota
        self.rate = 0.0
        self._slot = 0  # the calendar's current second, and how many were given it
        self._slot_count = 0
        self.episodes = 0  # times shedding started
        self._episode_shed = 0

    # -- signals from the transports ------------------------------------------------------
    def backlogged(self) -> None:
        """A read of the UDP socket came back full: more datagrams are waiting."""
        if self._backlog_since is None:
            self._backlog_since = self._clock()

    def drained(self) -> None:
        """The UDP socket's receive queue was found empty."""
        self._backlog_since = None

    def backlog_age(self, now: float | None = None) -> float:
        """Seconds the receive queue has not been empty (0 when it has been lately)."""
        since = self._backlog_since
        if since is None:
            return 0.0
        return (self._clock() if now is None else now) - since

    # -- the control loop -----------------------------------------------------------------
    def tick(self, lag: float) -> None:
        """Every ``tick`` seconds: decide whether the gateway is behind and move the share."""
        now = self._clock()
        elapsed = max(now - self._last_tick, 1e-6)
        done = self.completed - self._completed_at_tick
        self._last_tick, self._completed_at_tick = now, self.completed
        age = self.backlog_age(now)
        behind = age > self.queue_delay or lag > self.loop_lag
        if behind != self.behind:
            self.behind = behind
            if behind:
                log.debug("overload.behind", queue_age=round(age, 3), loop_lag=round(lag, 3))
        if not self.enabled:
            return
        was = self.share
        if behind:
            if now >= self._hold_until:
                self.share = was * self.decrease
                if self.share < 0.001:
                    self.share = 0.0
                self._hold_until = now + self.cooldown
        elif was < 1.0:
            self.share = min(1.0, was + self.increase)
        if was < 1.0 or self.share < 1.0:
            # The registrations the gateway completes while shedding are what it can take:
            # the quota of the calendar of returns. Smoothed over a few seconds, so the lull
            # at a storm's end does not book the returns at a trickle.
            rate = done / elapsed
            self.rate = rate if self.rate == 0.0 else 0.95 * self.rate + 0.05 * rate
        if was == 1.0 and self.share < 1.0:
            self.episodes += 1
            self._episode_shed = self.shed
            log.warning("overload.shedding", queue_age=round(age, 3), loop_lag=round(lag, 3))
        elif was < 1.0 and self.share == 1.0:
            log.warning(
                "overload.recovered",
                shed=self.shed - self._episode_shed,
                rate=round(self.rate, 1),
            )

    # -- per request ----------------------------------------------------------------------
    def shed_new(self) -> bool:
        """Whether to shed this new request (and count the decision)."""
        share = self.share
        if share >= 1.0 or self._rng() < share:
            self.admitted += 1
            return False
        self.shed += 1
        return True

    def registered(self) -> None:
        """An authenticated REGISTER came in while shedding: a registration being completed."""
        self.completed += 1

    def retry_after(self) -> int:
        """Seconds a shed request is told to wait: its place in the calendar of returns."""
        now = int(self._clock())
        slot, count = self._slot, self._slot_count
        if slot < now + self.retry_after_min:
            slot, count = now + self.retry_after_min, 0
        if count >= max(10, int(self.rate * 0.9)):
            slot, count = slot + 1, 0
        if slot - now > self.retry_after_max:
            # The calendar is full to the end of the window: anywhere in it.
            lo, hi = self.retry_after_min, self.retry_after_max
            return lo + int(self._rng() * (hi - lo + 1))
        self._slot, self._slot_count = slot, count + 1
        return slot - now
