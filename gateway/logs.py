"""The log pipeline: structlog's processor chain, with a rate limit and peer-data excerpts.

The gateway stands at a network edge, so what it logs is partly written by strangers: a reason
phrase quoting a garbage datagram, a URI, a device's name. Two processors keep the log from
being a flood channel whatever a call site passes:

* :class:`RateLimit` lets at most ``burst`` lines of one event name through in each ``window``
  seconds and drops the rest; when the window ends (or at :meth:`RateLimit.flush`, at stop) one
  ``log.suppressed`` line says how many were dropped. Counters are kept by the call sites in
  :class:`~gateway.metrics.Metrics`, apart from the log, so every event is still counted.
* :class:`Excerpts` cuts every value to a short excerpt (``…(+N)`` says how much was left out)
  and escapes control and other unprintable characters the way ``repr`` does, so a line is one
  line and no byte a peer sent reaches a terminal or a log collector raw. Tracebacks are kept,
  each of their lines cut the same way (the exception's message may quote peer data).

Level filtering happens first, in the bound logger that :func:`configure` asks for
(``make_filtering_bound_logger``): a debug call under ``level = "info"`` returns before any
processor runs, so the keepalive path pays nothing for this module. The limiter comes first in
the chain, so a dropped event is neither time-stamped, nor excerpted, nor rendered.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "AUDIT",
    "Excerpts",
    "RateLimit",
    "active_limiter",
    "configure",
    "excerpt",
    "flush_suppressed",
    "processors",
    "roll_suppressed",
]

BURST = 20
WINDOW = 10.0
MAX_CHARS = 200
MAX_ITEMS = 256  # items of a list or dict value shown (the metrics snapshot at stop fits)
MAX_DEPTH = 4  # nesting of list and dict values followed before the rest is cut to an excerpt
MAX_TRACEBACK_LINES = 60  # the first 40 and the last 20 lines of a rendered exception
MAX_NAMES = 1024  # event names with a window open at once; more share one window
AUDIT = frozenset(
    {
        # What authenticated parties did: one line each is the operator's history, and a
        # stranger cannot cause them (a device must pass the digest, an upper its checks).
        "device.registered",
        "device.unregistered",
        "device.offline",
        "catalog.synced",
        "uplink.online",
        "uplink.offline",
        "invite.answered",
        "media.leg_ended",
        "media.output_ended",
        "api.audit",  # only authenticated writes are audited
    }
)

_RANKS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_METHODS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
_OTHER = "log.other"  # the shared window once MAX_NAMES names have one


# -- excerpts ---------------------------------------------------------------------------------
def _escape(text: str) -> str:
    """``text`` with control and unprintable characters written as ``repr`` writes them
    (``\\n``, ``\\x1b``, ``\\x9b``) and backslashes doubled; printable non-ASCII (a Chinese
    device name) stays as it is."""
    return repr(text)[1:-1] if not text.isprintable() else text


def excerpt(text: str, limit: int = MAX_CHARS) -> str:
    """At most ``limit`` characters of ``text``, escaped (see :func:`_escape`), followed by
    ``…(+N)`` when ``N`` characters of the original were left out."""
    if len(text) <= limit and text.isprintable():
        return text
    head = text[:limit]
    shown = _escape(head)
    while len(shown) > limit:  # escapes made it longer: show fewer characters
        head = head[: min(len(head) - 1, len(head) * limit // len(shown))]
        shown = _escape(head)
    rest = len(text) - len(head)
    return f"{shown}…(+{rest})" if rest else shown


def _excerpt_bytes(data: bytes | bytearray | memoryview, limit: int) -> str:
    head = bytes(data[:limit])
    shown = repr(head)
    while len(shown) > limit + 3:  # b'' around it; escapes made it longer: fewer bytes
        head = head[: min(len(head) - 1, len(head) * limit // len(shown))]
        shown = repr(head)
    rest = len(data) - len(head)
    return f"{shown}…(+{rest} bytes)" if rest else shown


def _excerpt_traceback(text: str, limit: int) -> str:
    """A rendered exception: every line cut to ``limit`` and escaped, and the middle of a very
    long one left out (the first frames say where, the last lines what)."""
    lines = [excerpt(line, limit) for line in text.split("\n")]
    if len(lines) > MAX_TRACEBACK_LINES:
        head, tail = MAX_TRACEBACK_LINES * 2 // 3, MAX_TRACEBACK_LINES // 3
        cut = len(lines) - head - tail
        lines = [*lines[:head], f"…(+{cut} lines)", *lines[-tail:]]
    return "\n".join(lines)


class Excerpts:
    """Processor: every value of the event cut to a short escaped excerpt.

    Strings are cut to ``limit`` characters; bytes, and objects other than numbers, booleans,
    ``None``, lists, tuples, sets and dicts, are cut in their ``repr`` (what the renderers
    would print). Lists and dicts are followed ``MAX_DEPTH`` deep and to ``MAX_ITEMS`` items.
    The event name is a call site's literal and passes untouched unless it is long or holds
    unprintable characters. ``exception`` and ``stack`` (rendered tracebacks, ours) keep their
    lines, each cut to ``limit``.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int = MAX_CHARS) -> None:
        self.limit = limit

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        limit = self.limit
        for key, value in event_dict.items():
            if type(value) is str:
                if len(value) <= limit and value.isprintable():
                    continue  # the common case: a short value of ours
                if key in ("exception", "stack"):
                    event_dict[key] = _excerpt_traceback(value, limit)
                else:
                    event_dict[key] = excerpt(value, limit)
            elif not isinstance(value, (int, float)) and value is not None:
                try:
                    event_dict[key] = self._value(value, 0)
                except Exception:  # a broken __repr__ must not fail the call site
                    event_dict[key] = f"<unprintable {type(value).__name__}>"
        return event_dict

    def _key(self, key: Any) -> Any:
        if isinstance(key, str):
            return excerpt(key, self.limit)
        if key is None or isinstance(key, (int, float)):
            return key
        return excerpt(repr(key), self.limit)

    def _value(self, value: Any, depth: int) -> Any:
        limit = self.limit
        if isinstance(value, str):
            return excerpt(value, limit)
        if value is None or isinstance(value, (int, float)):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            return _excerpt_bytes(value, limit)
        if depth < MAX_DEPTH:
            if isinstance(value, dict):
                out: dict[Any, Any] = {}
                for n, (k, v) in enumerate(value.items()):
                    if n == MAX_ITEMS:
                        out["…"] = f"+{len(value) - n} items"
                        break
                    out[self._key(k)] = self._value(v, depth + 1)
                return out
            if isinstance(value, (list, tuple, set, frozenset)):
                items: list[Any] = []
                for n, v in enumerate(value):
                    if n == MAX_ITEMS:
                        items.append(f"…(+{len(value) - n} items)")
                        break
                    items.append(self._value(v, depth + 1))
                return tuple(items) if isinstance(value, tuple) else items
        return excerpt(repr(value), limit)


# -- the rate limit ---------------------------------------------------------------------------
class _Window:
    __slots__ = ("dropped", "end", "name", "rank", "shown")

    def __init__(self, name: str, end: float) -> None:
        self.name = name
        self.end = end
        self.shown = 0
        self.dropped = 0
        self.rank = 0  # the highest level dropped: the summary is written at that level


Report = Callable[[str, str, int, float], None]
"""Writes one summary: (level method, event name, lines dropped, window seconds)."""


def _report_to_structlog(method: str, name: str, count: int, window: float) -> None:
    log = structlog.get_logger("gateway.logs")
    getattr(log, method)("log.suppressed", name=name, count=count, window=window)


class RateLimit:
    """Processor: at most ``burst`` lines of each event name per ``window`` seconds.

    A name's window opens with its first line; further lines in it beyond ``burst`` are dropped
    (:class:`structlog.DropEvent`) and counted. When the window has ended, the next line logged
    (of any name), :meth:`roll` (every ``window`` seconds from the gateway) or :meth:`flush`
    (at stop) writes ``log.suppressed name=<event> count=<dropped>`` at the highest level that
    was dropped, so it passes the same level filter. Errors are limited like the rest: a
    traceback per garbage datagram is the worst flood of all, and each name has its own budget,
    so one noisy event never hides another. Only names with a window open are remembered, at
    most ``max_names`` of them (beyond that the others share one more window): event names are
    call sites' literals, but nothing a peer sends may make this grow. Names in ``exempt``
    (by default :data:`AUDIT`: what authenticated devices and uppers did, the operator's history
    after an outage's re-registration storm) are never limited.

    The chain runs in the event loop's thread; the state has no lock.
    """

    __slots__ = (
        "_order",
        "_windows",
        "burst",
        "clock",
        "exempt",
        "max_names",
        "report",
        "window",
    )

    def __init__(
        self,
        *,
        burst: int = BURST,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_names: int = MAX_NAMES,
        report: Report = _report_to_structlog,
        exempt: frozenset[str] = AUDIT,
    ) -> None:
        self.burst = burst
        self.exempt = exempt
        self.window = window
        self.clock = clock
        self.max_names = max_names
        self.report = report
        self._windows: dict[str, _Window] = {}
        self._order: deque[_Window] = deque()  # by end time: every window is as long

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        now = self.clock()
        if self._order and self._order[0].end <= now:
            self.roll(now)
        name = event_dict.get("event")
        if name in self.exempt:
            return event_dict
        key = name if type(name) is str else _OTHER
        w = self._windows.get(key)
        if w is None:
            if len(self._windows) >= self.max_names:
                key = _OTHER
                w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window(key, now + self.window)
                self._order.append(w)
        if w.shown < self.burst:
            w.shown += 1
            return event_dict
        w.dropped += 1
        rank = _RANKS.get(method_name, logging.INFO)
        if rank > w.rank:
            w.rank = rank
        raise structlog.DropEvent

    def roll(self, now: float | None = None) -> None:
        """Close the windows that have ended and report what they dropped."""
        if now is None:
            now = self.clock()
        ended: list[_Window] = []
        while self._order and self._order[0].end <= now:
            w = self._order.popleft()
            if self._windows.get(w.name) is w:
                del self._windows[w.name]
            ended.append(w)
        self._report(ended)  # after the bookkeeping: the summaries pass through here again

    def flush(self) -> None:
        """Report what every open window has dropped so far (at stop: nothing is lost)."""
        pending = [w for w in self._windows.values() if w.dropped]
        summaries = [(w.name, w.dropped, w.rank) for w in pending]
        for w in pending:
            w.dropped = w.rank = 0
        for name, dropped, rank in summaries:
            self.report(_METHODS.get(rank, "warning"), name, dropped, self.window)

    def pending(self) -> dict[str, int]:
        """Lines dropped so far and not yet reported, by event name."""
        return {w.name: w.dropped for w in self._windows.values() if w.dropped}

    def _report(self, ended: list[_Window]) -> None:
        for w in ended:
            if w.dropped:
                self.report(_METHODS.get(w.rank, "warning"), w.name, w.dropped, self.window)


# -- the chain --------------------------------------------------------------------------------
def processors(
    *,
    json: bool = False,
    limiter: RateLimit | None = None,
    max_chars: int = MAX_CHARS,
) -> list[Processor]:
    """The gateway's processor chain: the rate limit first (dropped lines cost nothing more),
    then context, level, time, the rendered exception, excerpts of every value, the renderer."""
    renderer: Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    chain: list[Processor] = [] if limiter is None else [limiter]
    chain += [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.processors.format_exc_info,
        Excerpts(max_chars),
        renderer,
    ]
    return chain


def configure(
    *,
    level: str = "info",
    json: bool = False,
    burst: int = BURST,
    window: float = WINDOW,
    max_chars: int = MAX_CHARS,
    exempt: frozenset[str] = AUDIT,
    stream: TextIO | None = None,
) -> RateLimit:
    """Configure structlog for this process (the gateway, a relay worker) and return the rate
    limit, whose :meth:`RateLimit.flush` the process calls as it stops."""
    limiter = RateLimit(burst=burst, window=window, exempt=exempt)
    structlog.configure(
        processors=processors(json=json, limiter=limiter, max_chars=max_chars),
        # Below ``level`` a call returns at once, before any processor.
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
    return limiter


def active_limiter() -> RateLimit | None:
    """The rate limit in structlog's current configuration, if it has one."""
    chain: Any = structlog.get_config().get("processors") or ()
    return next((p for p in chain if isinstance(p, RateLimit)), None)


def roll_suppressed() -> None:
    """Report the ended windows of the configured rate limit (a periodic tick)."""
    limiter = active_limiter()
    if limiter is not None:
        limiter.roll()


def flush_suppressed() -> None:
    """Report everything the configured rate limit has dropped and not reported yet."""
    limiter = active_limiter()
    if limiter is not None:
        limiter.flush()
