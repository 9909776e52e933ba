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
from conformance.suite.findings import Findings
from conformance.suite.operator import NO_OPERATOR, Action, Operator
from conformance.suite.options import Options
from conformance.suite.progress import waiting
from conformance.suite.timing import KeepaliveTiming
from conformance.suite.trace import Trace, TraceEntry

# How many of the case's latest messages a failure carries.
FAILURE_MESSAGES = 20
# Seconds a case keeps after a wait that pushed its deadline (:meth:`Context.allow`): the
# checks and the clean-up that follow the wait.
AFTER_WAIT = 15.0


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
        self.findings = Findings()
        self.mark = trace.mark()
        self.started = trace.now()
        self.scope: asyncio.Timeout | None = None  # the case's deadline, set by the runner

    # -- recording ----------------------------------------------------------------------------
    def step(self, text: str) -> None:
        """Note a step of the procedure, stamped with the time since the case began."""
        self.steps.append(Step(self.trace.now() - self.started, text))

    def record_media(self, **figures: Any) -> None:
        """Figures of a media check for the report, e.g. ``frames_decoded=50, ssrc="..."``."""
        self.media.update(figures)

    def finding(self, quirk: str, detail: str) -> None:
        """Record that the target shows ``quirk`` (a key of
        :data:`~conformance.suite.findings.QUIRKS`): reported apart from the verdict, with the
        last messages of the case as evidence."""
        self.findings.add(quirk, detail, self.trace.now(), *self.messages()[-2:])
        self.step(f"finding {quirk}: {detail}")

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

    # -- the target's own timers ----------------------------------------------------------------
    def keepalive_timing(self) -> KeepaliveTiming:
        """The target's heartbeat period: the run's ``keepalive_interval``, else learned from
        its keepalives so far (the harness's :meth:`target_keepalives`), else 60 s."""
        arrivals = getattr(self.harness, "target_keepalive_times", None)
        times = arrivals() if callable(arrivals) else []
        return KeepaliveTiming.of(self.options.keepalive_interval, times)

    def allow(self, seconds: float) -> None:
        """Let the case run at least ``seconds`` more (plus :data:`AFTER_WAIT`), past the case
        timeout if need be: for a wait whose length the target's own timers decide (the case
        timeout guards against a hang, not against a target configured with a 60 s
        heartbeat)."""
        if self.scope is None:
            return
        when = self.scope.when()
        wanted = asyncio.get_running_loop().time() + seconds + AFTER_WAIT
        if when is not None and wanted > when:
            self.scope.reschedule(wanted)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str, *, extend: bool = False
    ) -> None:
        """Wait until ``predicate()`` holds; fail the case with ``what`` after ``timeout``
        seconds. Polls every 10 ms at first, backing off to 100 ms. ``extend``: the wait
        follows the target's own timers, so the case may run past its timeout for it
        (:meth:`allow`). The run's progress shows the wait."""
        if extend:
            self.allow(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.01
        with waiting(what, timeout):
            while not predicate():
                left = deadline - loop.time()
                if left <= 0:
                    self.fail(f"timed out after {timeout:g} s waiting for {what}")
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 1.5, 0.1)
