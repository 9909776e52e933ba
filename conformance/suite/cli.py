"""``gb28181-conformance``: check a device, platform or gateway against GB/T 28181.

``gb28181-conformance list`` prints every case with its ID, grade, the clauses of GB/T 28181-2016
and -2022 it checks, and the target roles it applies to.

``gb28181-conformance run --target-role device|platform|gateway ...`` plays the opposite role(s)
against the target over real SIP and RTP, prints a line per case as it ends and a summary table,
and with ``--report DIR`` writes ``junit.xml``, ``report.html`` and ``results.json`` there. While
it runs, stderr shows the case running and what it waits for (a live line on a terminal, plain
lines otherwise). The exit status is 0 when no case failed or errored, 1 otherwise, 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import structlog

from conformance.argtypes import count as _count
from conformance.argtypes import gb_id as _gb_id
from conformance.argtypes import port as _port
from conformance.argtypes import positive as _positive
from conformance.argtypes import seconds as _seconds
from conformance.suite.case import GRADES, REGISTRY, Registry, compile_expression, load_cases
from conformance.suite.options import EDITIONS, MEDIA_TRANSPORTS, ROLES, Options
from conformance.suite.progress import Progress
from conformance.suite.report import clause_text, summary_table
from conformance.suite.runner import CaseResult, HarnessFactory, RunResult, run_suite


def _grade(text: str) -> str:
    value = text.upper()
    if value not in GRADES:
        raise argparse.ArgumentTypeError(f"grades are {', '.join(GRADES)}; got {text!r}")
    return value


def _expression(text: str) -> str:
    try:
        compile_expression(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_selection(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "-k",
        dest="select",
        action="append",
        type=_expression,
        default=[],
        metavar="EXPR",
        help="choose cases whose 'ID title' matches EXPR: substrings joined with and, or, not "
        "and parentheses, as pytest -k (repeat: every one must match)",
    )
    p.add_argument(
        "--grade",
        dest="grades",
        action="append",
        type=_grade,
        default=[],
        metavar="G",
        help=f"only cases of this grade ({', '.join(GRADES)}; repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gb28181-conformance",
        description="GB/T 28181 (2016/2022) conformance suite for devices, platforms and gateways.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser(
        "list",
        help="print every case: ID, grade, clauses, roles, title",
        description="Print the cases with their ID, grade, the clauses of GB/T 28181-2016 and "
        "-2022 they check, the target roles they apply to, and their title.",
    )
    ls.add_argument("--role", choices=ROLES, help="only cases for a target of this role")
    ls.add_argument("--edition", choices=EDITIONS, help="only cases of this edition")
    _add_selection(ls)

    r = sub.add_parser(
        "run",
        help="run the cases against a target and write the reports",
        description="Play the opposite role(s) against the target over real SIP and RTP, print "
        "the verdicts, and write junit.xml, report.html and results.json to --report DIR.",
    )
    t = r.add_argument_group("target")
    t.add_argument("--target-role", required=True, choices=ROLES)
    t.add_argument("--target-host", default="127.0.0.1")
    t.add_argument("--target-port", type=_port, default=5060)
    t.add_argument(
        "--target-id",
        type=_gb_id,
        required=True,
        help="device role: the device's ID; platform and gateway roles: the platform's ID",
    )
    t.add_argument(
        "--target-domain", help="its SIP domain (default: the first 10 digits of --target-id)"
    )
    t.add_argument("--password", default="12345678", help="digest password (default 12345678)")
    t.add_argument("--transport", choices=("udp", "tcp"), default="udp", help="SIP transport")
    t.add_argument(
        "--media-transport",
        dest="media_transports",
        action="append",
        choices=MEDIA_TRANSPORTS,
        metavar="T",
        help=f"media transports to try, of {', '.join(MEDIA_TRANSPORTS)} (repeatable; "
        "default all three)",
    )
    t.add_argument(
        "--no-media", action="store_true", help="skip the cases that check media streams"
    )
    t.add_argument("--edition", choices=EDITIONS, default="2022")

    s = r.add_argument_group("the suite's side")
    s.add_argument("--local-host", default="127.0.0.1", help="address the suite binds and gives")
    s.add_argument("--local-port", type=_port, default=0, help="SIP port (default: any free)")
    s.add_argument("--suite-platform-id", type=_gb_id, default="34020000002000000001")
    s.add_argument("--suite-domain", help="default: the first 10 digits of --suite-platform-id")
    s.add_argument(
        "--device-id",
        dest="device_ids",
        action="append",
        type=_gb_id,
        metavar="ID",
        help="a simulated device's ID (repeatable; default 34020000001180000101)",
    )
    s.add_argument("--channels", type=_count, default=4, help="channels per simulated device")
    s.add_argument(
        "--cascade",
        action="store_true",
        help="platform role: the platform also registers to the suite's upper platform "
        "(--local-host/--local-port as --suite-platform-id) and shares the suite's devices "
        "there; the gateway role's cases then apply to it too",
    )

    c = r.add_argument_group("cases and reports")
    _add_selection(c)
    c.add_argument(
        "--register-timeout", type=_seconds, default=30.0, metavar="SECONDS",
        help="how long to wait for the registrations the role needs, at the start and again "
        "after a case that ended, refused or let lapse one (then plus one of the target's "
        "keepalive periods) (default 30)",
    )  # fmt: skip
    c.add_argument(
        "--case-timeout", type=_seconds, default=60.0, metavar="SECONDS",
        help="longest a case may take, besides what it waits on the target's own timers "
        "(keepalives, refreshes) (default 60)",
    )  # fmt: skip
    c.add_argument(
        "--keepalive-interval", type=_seconds, default=None, metavar="SECONDS",
        help="the target's heartbeat period; cases waiting on the target's keepalives wait 3 "
        "periods and a margin (default: learned from its keepalives, else GB/T 28181's 60)",
    )  # fmt: skip
    c.add_argument(
        "--grant-expires", type=_positive, default=60, metavar="SECONDS",
        help="the registration lifetime the suite grants when a case checks that the target "
        "refreshes in time (default 60)",
    )  # fmt: skip
    c.add_argument("--report", metavar="DIR", help="write junit.xml, report.html, results.json")

    w = r.add_argument_group(
        "the operator",
        "Some cases need the target itself to act: a platform that opens a live view or turns a "
        "camera, a device that unregisters or raises an alarm. Without an operator they are "
        "skipped.",
    )
    w.add_argument(
        "--operator",
        choices=("none", "prompt"),
        default=None,
        help="prompt: print each instruction here and wait for its effect (a person acts at "
        "the target); none (default): skip those cases",
    )
    w.add_argument(
        "--operator-hook",
        metavar="CMD",
        help="run CMD through the shell for each action, the action as JSON on stdin and in "
        "$GB28181_ACTION (also $GB28181_ACTION_NAME, $GB28181_ACTION_TARGET); it must exit 0",
    )
    w.add_argument(
        "--operator-timeout", type=_seconds, default=60.0, metavar="SECONDS",
        help="how long to wait for each action's effect (default 60)",
    )  # fmt: skip
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    media: tuple[str, ...] = tuple(dict.fromkeys(args.media_transports or MEDIA_TRANSPORTS))
    if args.no_media:
        media = ()
    hook = args.operator_hook
    if hook is not None and not hook.strip():
        raise ValueError("--operator-hook needs a command")
    if hook is not None and args.operator is not None:
        raise ValueError(f"--operator {args.operator} and --operator-hook exclude each other")
    operator = "hook" if hook is not None else (args.operator or "none")
    return Options(
        target_role=args.target_role,
        target_host=args.target_host,
        target_port=args.target_port,
        target_id=args.target_id,
        target_domain=args.target_domain or args.target_id[:10],
        password=args.password,
        transport=args.transport,
        media_transports=media,
        edition=args.edition,
        local_host=args.local_host,
        local_port=args.local_port,
        suite_platform_id=args.suite_platform_id,
        suite_domain=args.suite_domain or args.suite_platform_id[:10],
        suite_device_ids=tuple(dict.fromkeys(args.device_ids or ("34020000001180000101",))),
        channels=args.channels,
        cascade=args.cascade,
        register_timeout=args.register_timeout,
        case_timeout=args.case_timeout,
        keepalive_interval=args.keepalive_interval,
        grant_expires=args.grant_expires,
        select=tuple(args.select),
        grades=tuple(dict.fromkeys(args.grades)),
        report_dir=args.report,
        operator=operator,
        operator_hook=args.operator_hook or "",
        operator_timeout=args.operator_timeout,
    )


def list_cases(args: argparse.Namespace, registry: Registry, out: TextIO) -> int:
    options = Options(
        target_role=args.role or "device",
        select=tuple(args.select),
        grades=tuple(args.grades),
    )
    cases = [
        c
        for c in registry.select(options)
        if (args.role is None or args.role in c.roles)
        and (args.edition is None or args.edition in c.editions)
    ]
    rows = [("ID", "Grade", "2016", "2022", "Roles", "Title")]
    rows += [
        (
            c.id,
            c.grade,
            clause_text(c.clause_2016),
            clause_text(c.clause_2022),
            ",".join(sorted(c.roles)),
            c.title + (" [media]" if c.media else "") + (" [operator]" if c.operator else ""),
        )
        for c in cases
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)]
        print("  ".join([*cells, row[5]]).rstrip(), file=out)
    print(f"\n{len(cases)} cases", file=out)
    return 0


def _progress(out: TextIO) -> Callable[[CaseResult], None]:
    def show(result: CaseResult) -> None:
        note = f"  {result.reason}" if result.verdict != "pass" else ""
        print(
            f"{result.verdict:<5} {result.info.id} ({result.duration:.2f} s){note}",
            file=out,
            flush=True,
        )
        if result.aftermath:
            print(f"      {result.aftermath}", file=out, flush=True)

    return show


async def run(
    options: Options,
    registry: Registry | None,
    harness_factory: HarnessFactory | None,
    out: TextIO,
    err: TextIO | None = None,
) -> RunResult:
    """Run the suite, a line per case on ``out``, the progress on ``err`` (None: none)."""
    o = options
    print(
        f"gb28181-conformance: {o.target_role} at {o.target_host}:{o.target_port}/{o.transport}, "
        f"GB/T 28181-{o.edition}",
        file=out,
        flush=True,
    )
    return await run_suite(
        options,
        registry=registry,
        harness_factory=harness_factory,
        on_result=_progress(out),
        progress=Progress(err) if err is not None else None,
    )


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(
    argv: Sequence[str] | None = None,
    *,
    registry: Registry | None = None,
    harness_factory: HarnessFactory | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command line. ``registry`` and ``harness_factory`` replace the suite's own cases and
    harness (tests, embedding); ``out`` replaces stdout, ``err`` the stderr progress goes to."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        options = options_from_args(args) if args.command == "run" else None
    except SystemExit as exc:  # bad usage (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else 2
    except ValueError as exc:  # options that exclude each other, or a bad combination
        print(f"gb28181-conformance: {exc}", file=sys.stderr)
        return 2
    if registry is None:
        load_cases()
        registry = REGISTRY
    if args.command == "list":
        return list_cases(args, registry, out)
    assert options is not None
    _configure_logging()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(run(options, registry, harness_factory, out, err))
    except KeyboardInterrupt:
        print("gb28181-conformance: interrupted", file=sys.stderr)
        if options.report_dir:
            print(f"gb28181-conformance: partial reports in {options.report_dir}", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"gb28181-conformance: {exc}", file=sys.stderr)
        return 2
    print("", file=out)
    print(summary_table(result), file=out)
    for kind, path in result.reports.items():
        print(f"{kind:5} report: {path}", file=out)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
