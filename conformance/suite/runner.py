"""The runner: plays the selected cases against the target one by one and gathers the verdicts.

One run: build the trace, start the harness for the target's role (the suite's endpoints and
simulated peers; it waits for the registrations the role needs), tap its endpoints, run each
selected case under ``case_timeout``, close the harness, write the reports.

Verdicts: ``pass``; ``fail`` (the case raised :class:`CaseFailed`: the target broke a rule);
``skip`` (:class:`CaseSkipped`, or the case does not apply to the target's role or edition);
``error`` (anything else: an exception, the case's timeout, or a run that could not start, such
as a target that never registered; the suite could not judge).
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
from conformance.suite.operator import NO_OPERATOR, Operator, make_operator
from conformance.suite.options import Options
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
            result.reason = f"no verdict within the case timeout ({limit:g} s)"
        else:
            result.reason = _describe(exc)
        result.traceback = "".join(traceback.format_exception(exc))
    finally:
        result.duration = trace.now() - ctx.started
        result.steps = list(ctx.steps)
        result.media = dict(ctx.media)
        result.trace = ctx.messages()
    return result


async def run_suite(
    options: Options,
    *,
    registry: Registry | None = None,
    harness_factory: HarnessFactory | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
    operator: Operator | None = None,
) -> RunResult:
    """Run the cases ``options`` selects from ``registry`` (default: the suite's own, loaded)
    against the target; write the reports when ``options.report_dir`` is set.

    ``harness_factory(options)`` builds the harness (default: ``conformance.suite.harness``'s
    ``Harness``). ``on_result`` hears each case's result as it is known. ``operator`` acts at
    the target when a case asks (default: the one ``options.operator`` names; with none, the
    cases that need one are skipped).
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
        if on_result is not None:
            on_result(result)

    try:
        if any(not why_not(c) for c in selected):
            harness = await _start_harness(
                options, harness_factory or default_harness_factory, trace, run
            )
        for info in selected:
            reason = why_not(info)
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
        if harness is not None:
            await _close_harness(harness)
        trace.untap_all()
        run.duration = trace.now()
        if options.report_dir is not None:
            run.reports = write_reports(run, Path(options.report_dir))
    return run
