"""The conformance suite: scripted cases that check a GB/T 28181 device, platform or gateway.

A case (:mod:`.case`) is an ``async def`` that drives the suite's simulated peers through the
role's harness and judges what the target does, through its :class:`~.context.Context`. The
runner (:mod:`.runner`) plays the selected cases one by one, the trace (:mod:`.trace`) records
every SIP message of the suite's endpoints, and :mod:`.report` writes what happened for people
(terminal table, HTML) and for programs (JUnit XML, JSON). :mod:`.timing` says how long to wait
for the target's own timers, :mod:`.progress` shows what a run is doing. :mod:`.cli` is
``gb28181-conformance``.

Cases declare themselves with ``from conformance.suite.case import case`` (not re-exported here:
the decorator would hide the module of the same name).
"""

from conformance.suite.case import (
    GRADES,
    REGISTRY,
    CaseFailed,
    CaseInfo,
    CaseSkipped,
    Registry,
    load_cases,
)
from conformance.suite.context import Context, Step
from conformance.suite.options import EDITIONS, ROLES, Options
from conformance.suite.progress import Progress
from conformance.suite.runner import CaseResult, RunResult, StateNote, run_suite
from conformance.suite.timing import KeepaliveTiming
from conformance.suite.trace import Trace, TraceEntry

__all__ = [
    "EDITIONS",
    "GRADES",
    "REGISTRY",
    "ROLES",
    "CaseFailed",
    "CaseInfo",
    "CaseResult",
    "CaseSkipped",
    "Context",
    "KeepaliveTiming",
    "Options",
    "Progress",
    "Registry",
    "RunResult",
    "StateNote",
    "Step",
    "Trace",
    "TraceEntry",
    "load_cases",
    "run_suite",
]
