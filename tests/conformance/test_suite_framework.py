"""The suite's framework (declaration, selection, runner, trace, reports, CLI), driven with a tiny
registry of fake cases and a fake harness whose two real endpoints exchange real SIP MESSAGEs on
127.0.0.1, so the trace holds real wire bytes. None of the suite's own cases run here."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.platform import SimPlatform
from conformance.suite import case as case_module
from conformance.suite.case import (
    Registry,
    compile_expression,
    load_cases,
)
from conformance.suite.cli import main
from conformance.suite.context import Context
from conformance.suite.options import Options
from conformance.suite.runner import RunResult, run_suite
from conformance.suite.trace import Trace, decode_message
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, Request, Response, TimerConfig, make_response
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(20)

# Default T1 (0.5 s): no retransmission in a loaded test run adds entries to the trace.
TIMERS = TimerConfig()
PLATFORM_ID = "34020000002000000001"
DEVICE_ID = "34020000001180000101"
HOSTILE = b"<script>window.__pwned = 1</script><img src=x onerror=alert(1)>"


class FakeHarness:
    """Two endpoints: the suite's "platform" sends MESSAGEs to its "device", which answers 200
    (or ``status``). With ``answer=False`` the device endpoint has no MESSAGE handler, for a test
    that installs a simulated peer's own there (an endpoint takes one handler per method)."""

    def __init__(self, options: Options, *, answer: bool = True) -> None:
        self.options = options
        self.answer = answer
        self.endpoints: list[tuple[Endpoint, str]] = []
        self.status = 200
        self.started = False
        self.closed = False
        self.received: list[Request] = []

    async def start(self) -> None:
        platform = Endpoint(metrics=Metrics(), timers=TIMERS, user_agent="suite platform")
        device = Endpoint(metrics=Metrics(), timers=TIMERS, user_agent="suite device")
        await platform.start("127.0.0.1", 0)
        await device.start("127.0.0.1", 0)
        if self.answer:
            device.route("MESSAGE", self._on_message)
        self.platform, self.device = platform, device
        self.endpoints = [(platform, "platform"), (device, "device")]
        self.started = True

    def _on_message(self, req: Request, ctx: Any) -> Response:
        self.received.append(req)
        return make_response(req, self.status, to_tag=ctx.endpoint.tag())

    async def message(self, body: bytes) -> Response:
        peer = Peer("udp", "127.0.0.1", self.device.port)
        uri = f"sip:{DEVICE_ID}@127.0.0.1:{self.device.port}"
        req = Request(
            "MESSAGE",
            uri,
            [
                ("From", f"<sip:{PLATFORM_ID}@3402000000>;tag={self.platform.tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", self.platform.call_id()),
                ("CSeq", "1 MESSAGE"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ],
            body,
        )
        return await self.platform.request(req, peer)

    async def close(self) -> None:
        self.closed = True
        for endpoint, _ in self.endpoints:
            await endpoint.close()


class BrokenHarness(FakeHarness):
    async def start(self) -> None:
        await super().start()
        raise TimeoutError("the device did not register within 0.1 s")


class TracingHarness(FakeHarness):
    """Declares ``trace = None`` (the runner hands it the trace) and talks while starting, as a
    registration would."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.trace: Trace | None = None

    async def start(self) -> None:
        await super().start()
        assert self.trace is not None
        for endpoint, label in self.endpoints:
            self.trace.tap(endpoint, label)
        await self.message(b"<Notify><CmdType>Keepalive</CmdType></Notify>")


def make_registry() -> Registry:
    reg = Registry()

    @reg.case(
        "A-PASS-01", "Keepalive answered", grade="A", clause_2016="9.6", clause_2022="9.6.1",
        roles=("platform", "gateway"),
    )  # fmt: skip
    async def passes(ctx: Context) -> None:
        """1. Send a MESSAGE whose body holds markup.
        Pass: the answer is 200."""
        ctx.harness.status = 200
        ctx.step("send a MESSAGE with <b>markup</b>")
        resp = await ctx.harness.message(b"<?xml version='1.0'?><Notify>" + HOSTILE + b"</Notify>")
        ctx.expect_equal(resp.status, 200, "status of the MESSAGE")
        ctx.record_media(frames_decoded=50, ssrc="0200000001")

    @reg.case(
        "A-FAIL-01", "Catalog SN echoed", grade="A", clause_2016="A.2.4", clause_2022="A.2.4",
        roles=("platform",),
    )  # fmt: skip
    async def fails(ctx: Context) -> None:
        """Send a query; pass when the answer's SN is ours."""
        ctx.harness.status = 488
        resp = await ctx.harness.message(b"<Query><SN>17</SN></Query>")
        ctx.step(f"got {resp.status}")
        ctx.check(resp.status == 200, "the query is accepted", expected=200, seen=resp.status)

    @reg.case(
        "A-WAIT-01", "NOTIFY arrives", grade="A", clause_2016="9.11", clause_2022="9.11",
        roles=("platform",),
    )  # fmt: skip
    async def waits(ctx: Context) -> None:
        """Wait for a NOTIFY that never comes."""
        await ctx.wait_for(lambda: False, 0.05, "a NOTIFY from the target")

    @reg.case(
        "B-SKIP-01", "Record search", grade="B", clause_2016="9.7", clause_2022="9.7",
        roles=("platform",),
    )  # fmt: skip
    async def skipped(ctx: Context) -> None:
        """Skipped: the target has no recordings."""
        ctx.skip("the target has no recordings")

    @reg.case(
        "C-ERR-01", "Alarm reset", grade="C", clause_2016="9.3", clause_2022="9.3",
        roles=("platform",),
    )  # fmt: skip
    async def errors(ctx: Context) -> None:
        """Raises: a bug in the suite."""
        raise RuntimeError("boom in the suite")

    @reg.case(
        "D-SLOW-01", "TeleBoot", grade="D", clause_2016="9.3", clause_2022="9.3",
        roles=("platform",),
    )  # fmt: skip
    async def hangs(ctx: Context) -> None:
        """Never ends: the runner's case timeout stops it."""
        await asyncio.Event().wait()

    @reg.case(
        "E-DEV-01", "Device only", grade="E", clause_2016="9.6", clause_2022="9.6",
        roles=("device",),
    )  # fmt: skip
    async def device_only(ctx: Context) -> None:
        """Applies to device targets only."""
        raise AssertionError("must not run")

    @reg.case(
        "2022-VER-01", "X-GB-Ver", grade="2022", clause_2016="", clause_2022="9.1.2.1",
        roles=("platform",), editions=("2022",),
    )  # fmt: skip
    async def new_only(ctx: Context) -> None:
        """Applies to the 2022 edition only."""
        raise AssertionError("must not run")

    return reg


def options(tmp_path: Path | None = None, **kw: Any) -> Options:
    values: dict[str, Any] = {
        "target_role": "platform",
        "target_id": "34010000002000000001",
        "edition": "2016",
        "case_timeout": 0.3,
        "register_timeout": 1.0,
        "report_dir": str(tmp_path) if tmp_path else None,
    }
    values.update(kw)
    return Options(**values)


@pytest.fixture
async def run(tmp_path: Path) -> tuple[RunResult, list[FakeHarness]]:
    harnesses: list[FakeHarness] = []

    def factory(opts: Options) -> FakeHarness:
        harnesses.append(FakeHarness(opts))
        return harnesses[-1]

    result = await run_suite(options(tmp_path), registry=make_registry(), harness_factory=factory)
    return result, harnesses


# -- declaration and selection -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "text", "hit"),
    [
        ("", "A-REG-01 Registration", True),
        ("reg", "A-REG-01 Registration", True),
        ("REG and not 02", "A-REG-01 Registration", True),
        ("REG and not 01", "A-REG-01 Registration", False),
        ("ptz or catalog", "A-CAT-01 Catalog query", True),
        ("not (ptz or catalog)", "A-CAT-01 Catalog query", False),
        ("(reg or cat) and query", "A-CAT-01 Catalog query", True),
        ("not not reg", "A-REG-01 Registration", True),
    ],
)
def test_k_expressions(expr: str, text: str, hit: bool) -> None:
    assert compile_expression(expr)(text) is hit


@pytest.mark.parametrize("expr", ["(", "reg and", "reg )", "and", "(reg or ptz", "reg ptz"])
def test_malformed_k_expressions_are_refused(expr: str) -> None:
    with pytest.raises(ValueError, match="-k"):
        compile_expression(expr)


def test_selection_by_k_and_grade() -> None:
    reg = make_registry()
    ids = [c.id for c in reg.all()]
    assert ids == sorted(ids) and len(ids) == 8

    def chosen(**kw: Any) -> list[str]:
        return [c.id for c in reg.select(options(**kw))]

    assert chosen(select=("fail or wait",)) == ["A-FAIL-01", "A-WAIT-01"]
    assert chosen(select=("a-", "not keepalive")) == ["A-FAIL-01", "A-WAIT-01"]
    assert chosen(grades=("b", "C")) == ["B-SKIP-01", "C-ERR-01"]
    assert chosen(grades=("A",), select=("sn",)) == ["A-FAIL-01"]
    # Role and edition do not select: the runner reports those cases skipped.
    assert "E-DEV-01" in chosen() and "2022-VER-01" in chosen()


def test_declarations_are_checked() -> None:
    reg = Registry()

    async def documented(ctx: Context) -> None:
        """Steps."""

    async def another(ctx: Context) -> None:
        """Other steps."""

    async def undocumented(ctx: Context) -> None:
        pass

    def not_async(ctx: Context) -> None:
        """Steps."""

    common: dict[str, Any] = {"clause_2016": "9.1", "clause_2022": "9.1", "roles": ("device",)}
    reg.case("A-X-01", "x", grade="A", **common)(documented)
    reg.case("A-X-01", "x", grade="A", **common)(documented)  # the same function again: fine
    with pytest.raises(ValueError, match="declared twice"):
        reg.case("A-X-01", "x", grade="A", **common)(another)
    with pytest.raises(ValueError, match="docstring"):
        reg.case("A-X-02", "x", grade="A", **common)(undocumented)
    with pytest.raises(ValueError, match="async def"):
        reg.case("A-X-03", "x", grade="A", **common)(not_async)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grade"):
        reg.case("A-X-04", "x", grade="F", **common)(documented)
    with pytest.raises(ValueError, match="roles"):
        reg.case("A-X-05", "x", grade="A", clause_2016="1", clause_2022="1", roles=("nvr",))(
            documented
        )
    with pytest.raises(ValueError, match="editions"):
        reg.case("A-X-06", "x", grade="A", editions=("2011",), **common)(documented)
    assert [c.id for c in reg.all()] == ["A-X-01"]
    assert reg.get("A-X-01").doc == "Steps."


def test_load_cases_imports_every_module_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    monkeypatch.setattr(case_module, "REGISTRY", registry)
    monkeypatch.setattr(case_module, "CASES_PACKAGE", "fake_suite_cases_xyz")
    assert load_cases() == []  # no such package: no cases, no error

    package = tmp_path / "fake_suite_cases_xyz"
    (package / "deeper").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "deeper" / "__init__.py").write_text("")
    for path, case_id in [
        (package / "one.py", "A-ONE-01"),
        (package / "deeper" / "two.py", "B-TWO-01"),
    ]:
        path.write_text(
            "from conformance.suite.case import case\n"
            f"@case({case_id!r}, 't', grade={case_id[0]!r}, clause_2016='9', clause_2022='9',"
            " roles=('device',))\n"
            "async def c(ctx):\n    'Steps.'\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert [c.id for c in load_cases()] == ["A-ONE-01", "B-TWO-01"]
        assert len(registry) == 2
    finally:
        for name in list(sys.modules):
            if name.startswith("fake_suite_cases_xyz"):
                del sys.modules[name]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="target_role"):
        Options(target_role="nvr")
    with pytest.raises(ValueError, match="edition"):
        Options(target_role="device", edition="2011")
    with pytest.raises(ValueError, match="media"):
        Options(target_role="device", media_transports=("sctp",))
    assert Options(target_role="device", password="secret").public()["password"] == "********"


# -- the runner ----------------------------------------------------------------------------------
async def test_verdicts_durations_and_details(run: tuple[RunResult, list[FakeHarness]]) -> None:
    result, harnesses = run
    by_id = {r.info.id: r for r in result.results}
    assert {k: r.verdict for k, r in by_id.items()} == {
        "2022-VER-01": "skip",
        "A-FAIL-01": "fail",
        "A-PASS-01": "pass",
        "A-WAIT-01": "fail",
        "B-SKIP-01": "skip",
        "C-ERR-01": "error",
        "D-SLOW-01": "error",
        "E-DEV-01": "skip",
    }
    assert result.counts() == {"pass": 1, "fail": 2, "skip": 3, "error": 2}
    assert not result.ok

    # One harness, started once, closed at the end, its endpoints untapped.
    [harness] = harnesses
    assert harness.started and harness.closed
    for endpoint, _ in harness.endpoints:
        assert "send" not in vars(endpoint.transports)
        assert "message_received" not in vars(endpoint)

    passed = by_id["A-PASS-01"]
    assert 0 < passed.duration < 2
    assert [s.text for s in passed.steps] == ["send a MESSAGE with <b>markup</b>"]
    assert passed.media == {"frames_decoded": 50, "ssrc": "0200000001"}
    # The MESSAGE and its 200, seen from both endpoints.
    seen = [(e.label, e.direction, e.first_line.split()[0]) for e in passed.trace]
    assert seen == [
        ("platform", "sent", "MESSAGE"),
        ("device", "received", "MESSAGE"),
        ("device", "sent", "SIP/2.0"),
        ("platform", "received", "SIP/2.0"),
    ]
    assert HOSTILE in passed.trace[0].data
    assert all(passed.started <= e.t <= passed.started + passed.duration for e in passed.trace)

    failed = by_id["A-FAIL-01"]
    assert failed.reason == "the query is accepted"
    assert (failed.expected, failed.seen) == ("200", "488")
    assert [e.first_line for e in failed.messages][-1].startswith("SIP/2.0 488")
    assert failed.messages == failed.trace  # every message of the case so far

    waited = by_id["A-WAIT-01"]
    assert "a NOTIFY from the target" in waited.reason and "0.05" in waited.reason

    assert by_id["B-SKIP-01"].reason == "the target has no recordings"
    assert "not for a platform target" in by_id["E-DEV-01"].reason
    assert "not in GB/T 28181-2016" in by_id["2022-VER-01"].reason
    assert by_id["E-DEV-01"].duration == 0

    error = by_id["C-ERR-01"]
    assert error.reason == "RuntimeError: boom in the suite"
    assert "raise RuntimeError" in error.traceback

    slow = by_id["D-SLOW-01"]
    assert "case timeout (0.3 s)" in slow.reason
    assert 0.3 <= slow.duration < 1.5


async def test_a_run_that_cannot_start_errors_every_applicable_case(tmp_path: Path) -> None:
    harnesses: list[BrokenHarness] = []

    def factory(opts: Options) -> BrokenHarness:
        harnesses.append(BrokenHarness(opts))
        return harnesses[-1]

    result = await run_suite(options(tmp_path), registry=make_registry(), harness_factory=factory)
    assert "the device did not register" in result.run_error
    verdicts = {r.info.id: r.verdict for r in result.results}
    assert verdicts["E-DEV-01"] == verdicts["2022-VER-01"] == "skip"
    errored = [r for r in result.results if r.verdict == "error"]
    assert len(errored) == 6
    assert all("the device did not register" in r.reason for r in errored)
    assert harnesses[0].closed
    html = (tmp_path / "report.html").read_text()
    assert 'id="run-error"' in html and "the device did not register" in html
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "6"


async def test_no_harness_when_no_case_applies() -> None:
    def factory(opts: Options) -> FakeHarness:
        raise AssertionError("no harness is needed")

    result = await run_suite(
        options(select=("VER",)), registry=make_registry(), harness_factory=factory
    )
    assert [r.verdict for r in result.results] == ["skip"] and result.ok


async def test_the_harness_may_take_the_trace_to_record_its_start(tmp_path: Path) -> None:
    result = await run_suite(
        options(tmp_path, select=("pass",)),
        registry=make_registry(),
        harness_factory=TracingHarness,
    )
    assert result.ok
    assert [e.first_line.split()[0] for e in result.start_trace] == [
        "MESSAGE",
        "MESSAGE",
        "SIP/2.0",
        "SIP/2.0",
    ]
    [passed] = result.results
    assert len(passed.trace) == 4  # its own exchange only, each message recorded once
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="start-trace"' in html and "&lt;CmdType&gt;Keepalive" in html
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert len(data["start_trace"]) == 4


# -- the trace -----------------------------------------------------------------------------------
async def test_trace_taps_once_and_through_the_platform_tap() -> None:
    harness = FakeHarness(options(), answer=False)
    await harness.start()
    try:
        platform = SimPlatform(harness.device, platform_id=DEVICE_ID[:10] + "2000000001")
        platform.install()  # puts its own _RawTap between the transports and the endpoint
        trace = Trace()
        for endpoint, label in harness.endpoints * 2:  # twice: recorded once all the same
            trace.tap(endpoint, label)
        mark = trace.mark()
        resp = await harness.message(b"<Notify><CmdType>Keepalive</CmdType></Notify>")
        await wait_for(lambda: len(trace.since(mark)) == 4, what="four trace entries")
        entries = trace.since(mark)
        assert [(e.label, e.direction) for e in entries] == [
            ("platform", "sent"),
            ("device", "received"),
            ("device", "sent"),
            ("platform", "received"),
        ]
        assert entries[-1].first_line == f"SIP/2.0 {resp.status} {resp.reason}"
        assert entries[1].peer == f"udp:127.0.0.1:{harness.platform.port}"
        assert entries[0].t <= entries[-1].t
        trace.untap_all()
        await harness.message(b"<Notify/>")
        assert len(trace.entries) == mark + 4  # nothing recorded any more
        assert "send" not in vars(harness.platform.transports)
    finally:
        await harness.close()


def test_network_text_is_decoded_for_display() -> None:
    assert decode_message("通道一".encode("gb2312")) == "通道一"
    assert decode_message("通道一".encode()) == "通道一"
    assert "\ufffd" in decode_message(b"\xff\xfe\x00<a")


# -- the reports ---------------------------------------------------------------------------------
async def test_junit_xml(run: tuple[RunResult, list[FakeHarness]], tmp_path: Path) -> None:
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("8", "2", "2")
    assert suite.get("skipped") == "3"
    cases = {tc.get("name"): tc for tc in suite.findall("testcase")}
    assert cases["A-PASS-01 Keepalive answered"].get("classname") == "A"
    assert list(cases["A-PASS-01 Keepalive answered"]) == [
        cases["A-PASS-01 Keepalive answered"].find("system-out")
    ]
    failure = cases["A-FAIL-01 Catalog SN echoed"].find("failure")
    assert failure is not None and failure.get("message") == "the query is accepted"
    text = failure.text or ""
    assert "expected: 200" in text and "seen:     488" in text
    assert "SIP/2.0 488" in text and "<Query><SN>17</SN></Query>" in text
    skipped = cases["B-SKIP-01 Record search"].find("skipped")
    assert skipped is not None and skipped.get("message") == "the target has no recordings"
    error = cases["C-ERR-01 Alarm reset"].find("error")
    assert error is not None and "boom in the suite" in (error.get("message") or "")
    assert float(cases["D-SLOW-01 TeleBoot"].get("time") or 0) >= 0.3
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["target_role"] == "platform" and props["password"] == "********"


async def test_results_json(run: tuple[RunResult, list[FakeHarness]], tmp_path: Path) -> None:
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["totals"] == {"pass": 1, "fail": 2, "skip": 3, "error": 2, "total": 8}
    assert data["ok"] is False and data["options"]["password"] == "********"
    cases = {c["id"]: c for c in data["cases"]}
    passed = cases["A-PASS-01"]
    assert passed["clause_2022"] == "9.6.1" and passed["roles"] == ["gateway", "platform"]
    assert passed["media_figures"] == {"frames_decoded": 50, "ssrc": "0200000001"}
    assert passed["doc"].startswith("1. Send a MESSAGE")
    assert [m["direction"] for m in passed["trace"]] == ["sent", "received", "sent", "received"]
    assert HOSTILE.decode() in passed["trace"][0]["message"]
    failed = cases["A-FAIL-01"]
    assert (failed["expected"], failed["seen"]) == ("200", "488")
    assert failed["failure_messages"][-1]["first_line"].startswith("SIP/2.0 488")


async def test_html_escapes_network_text(
    run: tuple[RunResult, list[FakeHarness]], tmp_path: Path
) -> None:
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script>window.__pwned" not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;&lt;img src=x" in html
    assert "send a MESSAGE with &lt;b&gt;markup&lt;/b&gt;" in html
    assert html.count("<script") == 1  # ours, with its nonce
    assert "http://" not in html and "https://" not in html
    assert 'id="case-A-FAIL-01"' in html and "frames_decoded" in html
    assert "§A.2.4" in html


# -- the CLI -------------------------------------------------------------------------------------
def _main(argv: list[str], **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, registry=make_registry(), out=out, **kw)
    return code, out.getvalue()


def test_cli_list() -> None:
    code, out = _main(["list"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "Grade", "2016", "2022", "Roles", "Title"]
    row = next(line for line in lines if line.startswith("A-PASS-01"))
    assert row.split() == ["A-PASS-01", "A", "§9.6", "§9.6.1", "gateway,platform", "Keepalive",
                           "answered"]  # fmt: skip
    assert next(line for line in lines if line.startswith("2022-VER-01")).split()[2] == "-"
    assert lines[-1] == "8 cases"

    def ids(*argv: str) -> list[str]:
        code, out = _main(["list", *argv])
        assert code == 0
        return [line.split()[0] for line in out.splitlines()[1:-2]]

    assert ids("--role", "device") == ["E-DEV-01"]
    assert ids("--edition", "2016") == [
        c.id for c in make_registry().all() if c.id != "2022-VER-01"
    ]
    assert ids("-k", "skip or err") == ["B-SKIP-01", "C-ERR-01"]
    assert ids("--grade", "2022", "--grade", "e") == ["2022-VER-01", "E-DEV-01"]


RUN_DEVICE = ["run", "--target-role", "device", "--target-id", "34020000001320000001"]


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "-k", "(reg"],
        ["list", "--grade", "F"],
        ["run"],
        ["run", "--target-role", "nvr"],
        ["run", "--target-role", "platform"],  # the target's ID is needed
        ["run", "--target-role", "device", "--target-id", "3402"],
        [*RUN_DEVICE, "--edition", "2011"],
        [*RUN_DEVICE, "--device-id", "123"],
        [*RUN_DEVICE, "--case-timeout", "0"],
        [*RUN_DEVICE, "--target-port", "70000"],
        [*RUN_DEVICE, "--grade", "Z"],
        [*RUN_DEVICE, "-k", "a and (b"],
    ],
)
def test_cli_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _main(argv)
    assert code == 2
    assert "usage: gb28181-conformance" in capsys.readouterr().err


def _factory(made: list[FakeHarness]) -> Callable[[Options], FakeHarness]:
    def factory(opts: Options) -> FakeHarness:
        made.append(FakeHarness(opts))
        return made[-1]

    return factory


def test_cli_run_exit_codes_and_reports(tmp_path: Path) -> None:
    base = ["run", "--target-role", "platform", "--target-id", "34010000002000000001",
            "--edition", "2016", "--case-timeout", "0.3", "--device-id", DEVICE_ID]  # fmt: skip
    made: list[FakeHarness] = []
    code, out = _main(
        [*base, "-k", "pass", "--report", str(tmp_path)], harness_factory=_factory(made)
    )
    assert code == 0, out
    assert made[0].options.target_domain == "3401000000"  # from the target's ID
    assert made[0].options.suite_device_ids == (DEVICE_ID,)
    assert "pass  A-PASS-01" in out
    assert "Totals: 1 pass, 0 fail, 0 skip, 0 error (1 cases" in out
    assert {p.name for p in tmp_path.iterdir()} == {"junit.xml", "report.html", "results.json"}

    code, out = _main([*base, "--grade", "A", "--grade", "B"], harness_factory=_factory(made))
    assert code == 1
    table = out[out.index("ID ") :]
    header, _rule, *rows = table.splitlines()
    assert header.split() == ["ID", "Grade", "Title", "Verdict", "Seconds", "Note"]
    assert [r.split()[0] for r in rows[:4]] == ["A-FAIL-01", "A-PASS-01", "A-WAIT-01", "B-SKIP-01"]
    # Columns line up: every verdict starts where the header's does.
    column = header.index("Verdict")
    assert [r[column:].split()[0] for r in rows[:4]] == ["fail", "pass", "fail", "skip"]
    assert "Totals: 1 pass, 2 fail, 1 skip, 0 error" in out
    assert "A-FAIL-01 fail: the query is accepted" in out and "seen:     488" in out

    code, out = _main([*base, "-k", "skip"], harness_factory=_factory(made))
    assert code == 0  # a skip is not a failure
