"""What a case gets to work with: the run's options, the harness (the suite's simulated peers),
the trace, and the means to record steps, judge what it sees and wait for the target.

Every judgement goes through :meth:`Context.check` (or :meth:`Context.expect_equal`): on failure
it raises :class:`~conformance.suite.case.CaseFailed` with what was expected, what was seen and
the SIP messages of the case so far, so a report shows why without re-running anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from conformance.suite.case import UNSET, CaseFailed, CaseInfo, CaseSkipped
from conformance.suite.operator import NO_OPERATOR, Action, Operator
from conformance.suite.options import Options
from conformance.suite.trace import Trace, TraceEntry

# How many of the case's latest messages a failure carries.
FAILURE_MESSAGES = 20


@dataclass(frozen=True, slots=True)
class Step:
    t: float  # seconds since the case began
    text: str


class Context:
    """One case's view of the run. ``harness`` is the role's harness (duck-typed: its
    ``platform`` and ``devices`` are what cases drive)."""

    def __init__(
        self,
        options: Options,
        harness: Any,
        trace: Trace,
        case: CaseInfo,
        operator: Operator | None = None,
    ) -> None:
        self.options = options
        self.operator = operator
        self.harness = harness
        self.trace = trace
        self.case = case
        self.steps: list[Step] = []
        self.media: dict[str, Any] = {}
        self.mark = trace.mark()
        self.started = trace.now()

    # -- recording ----------------------------------------------------------------------------
    def step(self, text: str) -> None:
        """Note a step of the procedure, stamped with the time since the case began."""
        self.steps.append(Step(self.trace.now() - self.started, text))

    def record_media(self, **figures: Any) -> None:
        """Figures of a media check for the report, e.g. ``frames_decoded=50, ssrc="..."``."""
        self.media.update(figures)

    def messages(self) -> list[TraceEntry]:
        """The SIP messages since the case began."""
        return self.trace.since(self.mark)

    # -- verdicts -----------------------------------------------------------------------------
    def fail(self, what: str, *, expected: Any = UNSET, seen: Any = UNSET) -> NoReturn:
        raise CaseFailed(what, expected, seen, messages=self.messages()[-FAILURE_MESSAGES:])

    def check(self, ok: bool, what: str, *, expected: Any = UNSET, seen: Any = UNSET) -> None:
        """Fail the case with ``what`` (and ``expected`` / ``seen``) unless ``ok``."""
        if not ok:
            self.fail(what, expected=expected, seen=seen)

    def expect_equal(self, seen: Any, expected: Any, what: str) -> None:
        if seen != expected:
            self.fail(what, expected=expected, seen=seen)

    def skip(self, reason: str) -> NoReturn:
        raise CaseSkipped(reason)

    # -- the operator ---------------------------------------------------------------------------
    async def ask(self, name: str, target: str, **params: Any) -> Action:
        """Ask the operator to make the target do ``name`` (a key of
        :data:`~conformance.suite.operator.ACTIONS`) about ``target``; recorded as a step.
        Skips the case when the run has no operator; the case then waits for the effect."""
        if self.operator is None:
            self.skip(NO_OPERATOR)
        action = Action(name, target, params, case=self.case.id)
        self.step(f"asked the operator to {action.text}")
        await self.operator(action)
        return action

    @property
    def operator_timeout(self) -> float:
        """How long to wait for the effect of an action asked of the operator."""
        return self.options.operator_timeout

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds; fail the case with ``what`` after ``timeout``
        seconds. Polls every 10 ms at first, backing off to 100 ms."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                self.fail(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 1.5, 0.1)
