"""The runner: plays the selected cases against the target one by one and gathers the verdicts.

One run: build the trace, start the harness for the target's role (the suite's endpoints and
simulated peers; it waits for the registrations the role needs), tap its endpoints, run each
selected case under ``case_timeout``, close the harness, write the reports.

Verdicts: ``pass``; ``fail`` (the case raised :class:`CaseFailed`: the target broke a rule);
``skip`` (:class:`CaseSkipped`, or the case does not apply to the target's role or edition);
``error`` (anything else: an exception, the case's timeout, or a run that could not start, such
as a target that never registered; the suite could not judge).

Cases are independent: after each one the runner asks the harness what the case left out of
place (``state_problems()``: a registration ended, refused or lapsed) and has it put back
(``restore(timeout)``: switches reset, registrations awaited for ``register_timeout`` plus one
of the target's keepalive periods, since a target learns it was forgotten from its next
keepalive). What a case left behind is kept in its result (``aftermath``) and in the run's
``state_log``; when it cannot be put back, the later cases are not run while it lasts: each is
an ``error`` saying "not run", which case left the target so (``blocked_by``) and in what
state, never an error of its own. Harnesses without these two methods are not checked.
"""

from __future__ import annotations

import asyncio
import importlib
import pprint
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from conformance.suite.case import (
    REGISTRY,
    UNSET,
    CaseFailed,
    CaseInfo,
    CaseSkipped,
    Registry,
    load_cases,
)
from conformance.suite.context import Context, Step
from conformance.suite.findings import Finding, scan
from conformance.suite.operator import NO_OPERATOR, Operator, make_operator
from conformance.suite.options import Options
from conformance.suite.progress import Progress, attach, detach
from conformance.suite.timing import KeepaliveTiming
from conformance.suite.trace import Trace, TraceEntry

log = structlog.get_logger("conformance.suite.runner")

VERDICTS = ("pass", "fail", "skip", "error")

HarnessFactory = Callable[[Options], Any]


@dataclass(slots=True)
class CaseResult:
    info: CaseInfo
    verdict: str  # one of VERDICTS
    started: float = 0.0  # seconds since the run began
    duration: float = 0.0
    reason: str = ""  # the failure's message, the skip's reason, the error's summary
    expected: str | None = None  # formatted; None when the failure did not say
    seen: str | None = None
    traceback: str = ""  # errors only
    steps: list[Step] = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)  # every SIP message during the case
    messages: list[TraceEntry] = field(default_factory=list)  # the ones the failure names
    media: dict[str, Any] = field(default_factory=dict)
    # What the case left out of place and what became of it ("" when nothing was).
    aftermath: str = ""
    # Not run: the ID of the case that left the target in a state that could not be restored.
    blocked_by: str = ""
    findings: list[Finding] = field(default_factory=list)  # quirks the case provoked


@dataclass(frozen=True, slots=True)
class StateNote:
    """What a case left out of place (``problems``), what the runner reset (``reset``) and
    whether the registrations came back within ``waited`` seconds (``restored``)."""

    case_id: str
    problems: tuple[str, ...]
    reset: tuple[str, ...]
    restored: bool
    waited: float
    still: tuple[str, ...] = ()  # what was still wrong when the runner gave up

    def describe(self) -> str:
        what = "; ".join(self.problems) or "nothing out of place"
        if self.reset:
            what += f" (switches reset: {', '.join(self.reset)})"
        if not self.problems:
            return f"after {self.case_id}: {what}"
        if self.restored:
            return f"after {self.case_id}: {what}; restored after {self.waited:.1f} s"
        return (
            f"after {self.case_id}: {what}; NOT restored within {self.waited:.0f} s "
            f"(still: {'; '.join(self.still)})"
        )


@dataclass(slots=True)
class RunResult:
    options: Options
    started_at: datetime  # wall clock, with the local offset
    duration: float = 0.0
    results: list[CaseResult] = field(default_factory=list)
    run_error: str = ""  # why no case could run (e.g. the target never registered)
    run_traceback: str = ""
    start_trace: list[TraceEntry] = field(default_factory=list)  # while the harness started
    interrupted: bool = False
    reports: dict[str, Path] = field(default_factory=dict)
    # What cases left out of place, in order (only cases that left something).
    state_log: list[StateNote] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # quirks seen: not verdicts

    @property
    def unrestored(self) -> list[StateNote]:
        """The notes of states the runner could not put back."""
        return [n for n in self.state_log if n.problems and not n.restored]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for r in self.results:
            counts[r.verdict] += 1
        return counts

    @property
    def ok(self) -> bool:
        """Nothing failed and nothing errored."""
        return not self.interrupted and not any(
            r.verdict in ("fail", "error") for r in self.results
        )


def format_value(value: Any) -> str:
    """An expected or seen value as the reports show it."""
    return pprint.pformat(value, width=100, sort_dicts=False)


def default_harness_factory(options: Options) -> Any:
    # The role harnesses, imported when a run needs them.
    harness_module = importlib.import_module("conformance.suite.harness")
    return harness_module.Harness(options)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tap_harness(trace: Trace, harness: Any) -> None:
    for endpoint, label in list(getattr(harness, "endpoints", ()) or ()):
        trace.tap(endpoint, label)


async def _start_harness(
    options: Options, factory: HarnessFactory, trace: Trace, run: RunResult
) -> Any:
    """Build and start the harness; on failure set ``run.run_error`` (the harness, if built, is
    still returned so it gets closed)."""
    mark = trace.mark()
    harness: Any = None
    try:
        harness = factory(options)
        # Optional: a harness that declares ``trace = None`` gets the trace, to tap each
        # endpoint as soon as it exists (so the registration exchange is traced too).
        if getattr(harness, "trace", UNSET) is None:
            harness.trace = trace
        _tap_harness(trace, harness)
        # The harness bounds its own waits by register_timeout; this only guards a hang.
        async with asyncio.timeout(options.register_timeout + options.case_timeout):
            await harness.start()
        _tap_harness(trace, harness)
    except Exception as exc:
        if harness is not None:
            _tap_harness(trace, harness)
        run.run_error = f"the suite could not start for the {options.target_role} role: " + (
            _describe(exc)
        )
        if isinstance(exc, TimeoutError) and not str(exc):
            run.run_error += f" (no registration within {options.register_timeout:g} s?)"
        run.run_traceback = "".join(traceback.format_exception(exc))
        log.warning("conformance.run_failed", reason=run.run_error)
    run.start_trace = trace.since(mark)
    return harness


async def _close_harness(harness: Any) -> None:
    try:
        async with asyncio.timeout(10.0):
            await harness.close()
    except Exception:
        log.exception("conformance.harness_close_failed")


def restore_timeout(options: Options, harness: Any) -> float:
    """How long the runner waits for the registrations to come back after a case:
    ``register_timeout`` plus one of the target's keepalive periods and a margin (a target the
    suite's platform forgot hears it from its next keepalive's 404)."""
    arrivals = getattr(harness, "target_keepalive_times", None)
    timing = KeepaliveTiming.of(
        options.keepalive_interval, arrivals() if callable(arrivals) else []
    )
    return options.register_timeout + timing.wait(1)


async def _after_case(
    info: CaseInfo, options: Options, harness: Any, run: RunResult, result: CaseResult,
    progress: Progress | None,
) -> None:  # fmt: skip
    """Check and put back what the case left (harnesses with ``state_problems`` and
    ``restore``); record it in ``result.aftermath`` and ``run.state_log``."""
    problems_of = getattr(harness, "state_problems", None)
    restore = getattr(harness, "restore", None)
    if not callable(problems_of) or not callable(restore):
        return
    reset_of = getattr(harness, "reset_switches", None)
    reset = tuple(reset_of()) if callable(reset_of) else ()
    problems = tuple(problems_of())
    if not problems and not reset:
        return
    timeout = restore_timeout(options, harness)
    started = asyncio.get_running_loop().time()
    still: tuple[str, ...] = ()
    if problems:
        if progress is not None:
            left = "; ".join(problems)
            progress.note(f"{info.id} left: {left}; restoring (up to {timeout:.0f} s)")
        try:
            still = tuple(await restore(timeout))
        except Exception as exc:  # the harness could not even try: as good as not restored
            log.exception("conformance.restore_failed", case=info.id)
            still = (*problems, f"(restoring raised {_describe(exc)})")
    waited = asyncio.get_running_loop().time() - started
    note = StateNote(info.id, problems, reset, not still, waited, still)
    run.state_log.append(note)
    if problems:  # switches put back alone are only logged (results.json's state_log)
        result.aftermath = note.describe()
    log.info("conformance.state_after_case", case=info.id, note=note.describe())
    if progress is not None and problems:
        progress.note(note.describe())


def case_timeout(info: CaseInfo, options: Options) -> float:
    """``case_timeout``, plus twice ``operator_timeout`` for each action the case asks of an
    operator: a hook may take that long to run, and the case waits that long again for the
    action's effect."""
    return options.case_timeout + 2 * info.operator * options.operator_timeout


async def run_case(
    info: CaseInfo,
    options: Options,
    harness: Any,
    trace: Trace,
    operator: Operator | None = None,
) -> CaseResult:
    """Run one applicable case under its timeout (:func:`case_timeout`) and judge how it
    ended."""
    ctx = Context(options, harness, trace, info, operator)
    result = CaseResult(info, "pass", started=ctx.started)
    limit = case_timeout(info, options)
    scope = asyncio.timeout(limit)
    ctx.scope = scope
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        async with scope:
            await info.func(ctx)
    except CaseFailed as exc:
        result.verdict = "fail"
        result.reason = exc.message
        if exc.expected is not UNSET:
            result.expected = format_value(exc.expected)
        if exc.seen is not UNSET:
            result.seen = format_value(exc.seen)
        result.messages = list(exc.messages)
    except CaseSkipped as exc:
        result.verdict = "skip"
        result.reason = exc.reason
    except Exception as exc:
        result.verdict = "error"
        if isinstance(exc, TimeoutError) and scope.expired():
            when = scope.when()
            allowed = limit if when is None else when - began
            if allowed > limit + 1.0:  # a wait on the target's timers pushed it (ctx.allow)
                text = f"{allowed:.0f} s, extended for the target's timers"
            else:
                text = f"{limit:g} s"
            result.reason = f"no verdict within the case timeout ({text})"
        else:
            result.reason = _describe(exc)
        result.traceback = "".join(traceback.format_exception(exc))
    finally:
        result.duration = trace.now() - ctx.started
        result.steps = list(ctx.steps)
        result.media = dict(ctx.media)
        result.trace = ctx.messages()
        result.findings = ctx.findings.all()
    return result


def gather_findings(trace: Trace, results: list[CaseResult]) -> list[Finding]:
    """The quirks of the whole run: what the trace shows (:func:`~conformance.suite.findings.scan`)
    and what the cases provoked, each named with the case during which it was first seen."""
    found = scan(trace.entries)
    for r in results:
        for f in r.findings:
            f.case = r.info.id
            found.add_finding(f)
    out = found.all()
    for f in out:
        if not f.case:
            f.case = next(
                (r.info.id for r in results if r.started <= f.first_seen <= r.started + r.duration),
                "",
            )
    return out


async def run_suite(
    options: Options,
    *,
    registry: Registry | None = None,
    harness_factory: HarnessFactory | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
    operator: Operator | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run the cases ``options`` selects from ``registry`` (default: the suite's own, loaded)
    against the target; write the reports when ``options.report_dir`` is set.

    ``harness_factory(options)`` builds the harness (default: ``conformance.suite.harness``'s
    ``Harness``). ``on_result`` hears each case's result as it is known. ``operator`` acts at
    the target when a case asks (default: the one ``options.operator`` names; with none, the
    cases that need one are skipped). ``progress`` shows the case running and what it waits
    for (the CLI's stderr).
    """
    from conformance.suite.report import write_reports

    if registry is None:
        load_cases()
        registry = REGISTRY
    selected = registry.select(options)
    trace = Trace()
    run = RunResult(options=options, started_at=datetime.now().astimezone())
    harness: Any = None
    if operator is None:
        operator = make_operator(options)

    def why_not(info: CaseInfo) -> str:
        reason = info.not_applicable(options)
        if not reason and info.operator and operator is None:
            reason = NO_OPERATOR
        return reason

    def done(result: CaseResult) -> None:
        run.results.append(result)
        if progress is not None:
            progress.end_case()
        if on_result is not None:
            on_result(result)

    token = attach(progress)
    blocked: StateNote | None = None  # a state the runner could not put back, while it lasts
    grace = 0.0  # seconds the blocked cases may still wait, together, for the target
    try:
        if progress is not None:
            progress.start(len(selected))
        if any(not why_not(c) for c in selected):
            harness = await _start_harness(
                options, harness_factory or default_harness_factory, trace, run
            )
        for index, info in enumerate(selected, 1):
            if progress is not None:
                progress.begin_case(index, info.id, info.title)
            reason = why_not(info)
            if blocked is not None and not reason and not run.run_error:
                # A target may come back later than the restore waited: the blocked cases
                # share one more wait of that length (polling), then are reported at once.
                started = asyncio.get_running_loop().time()
                now_wrong = tuple(await harness.restore(grace)) if grace > 0 else ()
                now_wrong = now_wrong or tuple(harness.state_problems())
                grace -= asyncio.get_running_loop().time() - started
                if now_wrong:
                    done(
                        CaseResult(
                            info,
                            "error",
                            started=trace.now(),
                            reason=f"not run: {'; '.join(now_wrong)} since {blocked.case_id} "
                            f"(not restored within {blocked.waited:.0f} s)",
                            blocked_by=blocked.case_id,
                        )
                    )
                    continue
                if progress is not None:
                    progress.note(f"the target is back as the run needs it: running {info.id}")
                blocked = None
            if reason:
                done(CaseResult(info, "skip", started=trace.now(), reason=reason))
            elif run.run_error:
                done(
                    CaseResult(
                        info,
                        "error",
                        started=trace.now(),
                        reason=run.run_error,
                        traceback=run.run_traceback,
                    )
                )
            else:
                _tap_harness(trace, harness)  # endpoints the harness added meanwhile
                log.info("conformance.case_started", case=info.id)
                result = await run_case(info, options, harness, trace, operator)
                log.info("conformance.case_done", case=info.id, verdict=result.verdict)
                await _after_case(info, options, harness, run, result, progress)
                if run.state_log and run.state_log[-1].case_id == info.id:
                    note = run.state_log[-1]
                    if note.problems and not note.restored:
                        blocked = note
                        grace = restore_timeout(options, harness)
                done(result)
    except asyncio.CancelledError:
        # Interrupted (Ctrl-C): the cases not run are errors, and the reports still get written.
        run.interrupted = True
        seen = {r.info.id for r in run.results}
        for info in selected:
            if info.id not in seen:
                run.results.append(CaseResult(info, "error", reason="the run was interrupted"))
        raise
    finally:
        if progress is not None:
            await progress.stop()
        detach(token)
        if harness is not None:
            await _close_harness(harness)
        trace.untap_all()
        run.duration = trace.now()
        run.findings = gather_findings(trace, run.results)
        if options.report_dir is not None:
            run.reports = write_reports(run, Path(options.report_dir))
    return run
