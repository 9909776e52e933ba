"""Progress while a run goes on: which case runs, what it waits for and for how long.

A run against a target with real timings takes many minutes (a keepalive every 60 s, a
registration refreshed after tens of seconds), so the suite says what it is doing:

* on a terminal, one live line, redrawn about twice a second::

    [ 6/72] A-KA-01 · 12 s of up to 186 s waiting for a keepalive from … · Device side: keepalive

* otherwise (a log, CI) plain lines: one when a wait has gone on for :data:`PLAIN_AFTER`
  seconds (short waits say nothing), one when that wait ends, and the runner's own notes (the
  registrations it restores between cases).

Waits report themselves through :func:`waiting`, which finds the run's :class:`Progress` in a
context variable the runner sets: a case's :meth:`~conformance.suite.context.Context.wait_for`,
the harness's start and the runner's restore between cases all use it, and nothing is reported
when no progress is attached (tests, embedding).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

PLAIN_AFTER = 2.0
"""Seconds a wait must last before a plain (non-terminal) progress line mentions it."""
TICK = 0.5  # seconds between redraws of the live line

_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "conformance_progress", default=None
)


@dataclass(slots=True)
class _Wait:
    what: str
    timeout: float
    started: float
    told: bool = False  # a plain line said it started


def _clean(text: str) -> str:
    """Text that may hold network data, safe for a terminal line: no control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in text)


class Progress:
    """Progress of one run on ``stream`` (the CLI's stderr). ``live``: redraw one line
    (default: when ``stream`` is a terminal). ``clock``: seconds, monotonic."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self.stream = stream
        if live is None:
            isatty = getattr(stream, "isatty", None)
            live = bool(isatty()) if callable(isatty) else False
        self.live = live
        self.clock = clock
        self.width = width
        self.total = 0
        self.index = 0
        self.case = ""  # "ID title" of the case running, "" between cases
        self.case_started = 0.0
        self.waits: list[_Wait] = []
        self._shown = False  # the live line is on the screen
        self._task: asyncio.Task[None] | None = None

    # -- the run's steps (called by the runner) -----------------------------------------------
    def start(self, total: int) -> None:
        """The run begins with ``total`` cases; starts the redraw task (needs a running loop)."""
        self.total = total
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ticker())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.clear()

    def begin_case(self, index: int, case_id: str, title: str) -> None:
        self.index = index
        self.case = f"{case_id} {title}"
        self.case_started = self.clock()
        self.waits.clear()
        self.redraw()

    def end_case(self) -> None:
        self.case = ""
        self.waits.clear()
        self.clear()

    def note(self, text: str) -> None:
        """A line of its own (kept on screen): what the runner did between cases."""
        self.clear()
        print(f"{self._prefix()}{_clean(text)}", file=self.stream, flush=True)
        self.redraw()

    @contextlib.contextmanager
    def wait(self, what: str, timeout: float) -> Iterator[None]:
        """The block waits for ``what``, at most ``timeout`` seconds."""
        w = _Wait(_clean(what), timeout, self.clock())
        self.waits.append(w)
        self.redraw()
        try:
            yield
        finally:
            if w in self.waits:
                self.waits.remove(w)
            if w.told and not self.live:
                took = self.clock() - w.started
                self._plain(f"done waiting for {w.what} after {took:.1f} s")
            self.redraw()

    # -- drawing -----------------------------------------------------------------------------
    def _prefix(self) -> str:
        if not self.total or not self.index:
            return ""
        digits = len(str(self.total))
        return f"[{self.index:>{digits}}/{self.total}] "

    def line(self) -> str:
        """The live line as it stands now (without the terminal's control characters): the
        case's ID, the seconds so far, what it waits for, and its title last (a narrow
        terminal cuts the end of the line)."""
        now = self.clock()
        case_id, _, title = self.case.partition(" ")
        parts = [f"{self._prefix()}{case_id}"] if self.case else []
        if self.waits:
            w = self.waits[-1]
            parts.append(f"{now - w.started:.0f} s of up to {w.timeout:.0f} s waiting for {w.what}")
        elif self.case:
            parts.append(f"{now - self.case_started:.0f} s")
        if title:
            parts.append(title)
        return " · ".join(p for p in parts if p)

    def _columns(self) -> int:
        return self.width or shutil.get_terminal_size((100, 20)).columns

    def redraw(self) -> None:
        if not self.live:
            return
        text = self.line()
        if not text:
            self.clear()
            return
        limit = max(10, self._columns() - 1)
        if len(text) > limit:
            text = text[: limit - 1] + "…"
        self.stream.write(f"\r\x1b[K{text}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Take the live line off the screen (before anything else is printed there)."""
        if self.live and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def _plain(self, text: str) -> None:
        case = self.case.split(" ", 1)[0] if self.case else ""
        lead = f"{self._prefix()}{case}: " if case else self._prefix()
        print(f"{lead}{text}", file=self.stream, flush=True)

    def tick(self) -> None:
        """One step of the redraw task: redraw the live line, or (plain) announce the waits
        that have now lasted :data:`PLAIN_AFTER` seconds."""
        if self.live:
            self.redraw()
            return
        now = self.clock()
        for w in self.waits:
            if not w.told and now - w.started >= PLAIN_AFTER:
                w.told = True
                self._plain(f"waiting for {w.what} (up to {w.timeout:.0f} s)")

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()


def attach(progress: Progress | None) -> contextvars.Token[Progress | None]:
    """Make ``progress`` the one :func:`waiting` reports to (in this context and the tasks it
    starts); :func:`detach` with the token undoes it."""
    return _current.set(progress)


def detach(token: contextvars.Token[Progress | None]) -> None:
    _current.reset(token)


def current() -> Progress | None:
    return _current.get()


@contextlib.contextmanager
def waiting(what: str, timeout: float) -> Iterator[None]:
    """Report that the block waits for ``what`` (at most ``timeout`` s) to the run's progress,
    if it has one."""
    progress = _current.get()
    if progress is None:
        yield
        return
    with progress.wait(what, timeout):
        yield


__all__ = ["PLAIN_AFTER", "Progress", "attach", "current", "detach", "waiting"]
