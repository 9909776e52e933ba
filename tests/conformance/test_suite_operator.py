"""Cases that need the target to act, and the operator who makes it act.

* The operator itself: actions, the prompt, the hook (JSON in, exit status, timeout), the CLI
  options, and a run without an operator (those cases skipped, saying why).
* ``platform`` mode against an in-process :class:`~gateway.app.Gateway`: the operator is a
  city platform above it (a :class:`~conformance.peers.platform.SimPlatform`) that opens live
  views, turns cameras, plays back, downloads, queries and controls; every platform-acting case
  passes, and a platform that turns the wrong way, or never closes a view, fails.
* ``device`` mode against a :class:`~conformance.peers.device.SimDevice`: the operator makes it
  unregister, register and raise an alarm; a bad alarm fails.
* ``--cascade``: a platform that registers up is judged by the gateway's cases too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import PlatformCall, SimPlatform
from conformance.suite.case import Registry, load_cases
from conformance.suite.cli import main as cli_main
from conformance.suite.context import Context
from conformance.suite.operator import (
    NO_OPERATOR,
    Action,
    HookOperator,
    OperatorError,
    PromptOperator,
    make_operator,
)
from conformance.suite.options import Options
from conformance.suite.runner import RunResult, run_suite
from gateway.app import Gateway
from gateway.manscdp import DeviceControl, ptz_move, ptz_stop
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.conformance.test_suite_cases import (
    DEVICE,
    DOMAIN,
    GW,
    NVRS,
    UP,
    Gateways,
    by_id,
    free_port,
    summary,
)

PLATFORM_CASES = (
    "A-PLIVE-01",
    "A-PLIVE-02",
    "A-PLIVE-03",
    "A-PPTZ-01",
    "B-PREC-01",
    "B-PRECQ-01",
    "B-PPLAY-01",
    "C-PALARM-01",
    "C-PGUARD-01",
    "D-PBOOT-01",
    "D-PDL-01",
    "D-PINFO-01",
)
DEVICE_CASES = ("A-REG-08", "C-ALARM-04")
_MOVES = {
    "left": ptz_move(pan=-1),
    "right": ptz_move(pan=1),
    "up": ptz_move(tilt=1),
    "down": ptz_move(tilt=-1),
    "zoom-in": ptz_move(zoom=1),
    "zoom-out": ptz_move(zoom=-1),
    "stop": ptz_stop(),
}


def select(*ids: str) -> tuple[str, ...]:
    return (" or ".join(ids),)


# -- the operator on its own -------------------------------------------------------------------
def test_action_text_and_json() -> None:
    a = Action("ptz", "34020000001320000001", {"direction": "left"}, case="A-PPTZ-01")
    assert a.text == "PTZ on channel 34020000001320000001: left"
    data = a.to_json()
    assert data["action"] == "ptz" and data["params"] == {"direction": "left"}
    assert data["case"] == "A-PPTZ-01" and data["text"] == a.text
    # A parameter the instruction names but the case left out still gives a readable text.
    assert "34020000001320000001" in Action("playback-start", "34020000001320000001").text
    live = Action("live-start", "34020000001320000001", {"transport": "tcp-active"})
    assert live.text == (
        "open the live view of channel 34020000001320000001, media over TCP with the platform "
        "connecting (TCP active)"
    )
    with pytest.raises(ValueError, match="unknown operator action"):
        Action("dance", "x")


async def test_prompt_operator_prints_the_instruction() -> None:
    out = io.StringIO()
    await PromptOperator(out)(Action("live-start", "34020000001320000001", case="A-PLIVE-01"))
    assert "A-PLIVE-01: please open the live view of channel 34020000001320000001" in (
        out.getvalue()
    )


async def test_hook_operator_gets_the_action_as_json(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    command = (
        f'{sys.executable} -c "import sys, os; d = sys.stdin.read(); '
        f"open({str(seen)!r}, 'w').write(d + '|' + os.environ['GB28181_ACTION_NAME'])\""
    )
    await HookOperator(command, 10.0)(Action("teleboot", "34020000001180000101", case="X"))
    data, _, name = seen.read_text().rpartition("|")
    assert name == "teleboot"
    assert json.loads(data)["target"] == "34020000001180000101"


async def test_a_hook_leaving_a_child_behind_is_done_when_it_exits(tmp_path: Path) -> None:
    """A hook that starts something in the background (a player) and exits 0 is done at once;
    a hook that overruns is stopped with everything it started."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await HookOperator("sleep 3 &", 10.0)(Action("live-start", "x"))
    assert loop.time() - started < 2.0
    pid_file = tmp_path / "pid"
    with pytest.raises(OperatorError, match="did not finish"):
        await HookOperator(f"sleep 30 & echo $! > {pid_file}; wait", 0.5)(Action("alarm", "x"))
    pid = int(pid_file.read_text())
    await asyncio.sleep(0.1)
    assert _state(pid) in ("gone", "Z"), "the hook's background child still runs"


def _state(pid: int) -> str:
    """A process's state letter (Z: killed, waiting to be reaped), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return "gone"


async def test_failing_or_slow_hook_is_an_operator_error() -> None:
    with pytest.raises(OperatorError, match=r"exit status 3\): no such camera"):
        await HookOperator("echo no such camera; exit 3", 10.0)(Action("alarm", "x"))
    with pytest.raises(OperatorError, match="did not finish alarm"):
        await HookOperator("sleep 5", 0.2)(Action("alarm", "x"))


def test_options_and_cli_name_the_operator() -> None:
    assert make_operator(Options(target_role="device")) is None
    assert isinstance(
        make_operator(Options(target_role="device", operator="prompt")), PromptOperator
    )
    with pytest.raises(ValueError, match="needs a command"):
        Options(target_role="device", operator="hook")
    with pytest.raises(ValueError, match="cascade is for a platform"):
        Options(target_role="gateway", cascade=True)
    out = io.StringIO()
    for clash in (["--operator", "none", "--operator-hook", "true"], ["--operator-hook", " "]):
        code = cli_main(["run", "--target-role", "device", "--target-id", DEVICE, *clash], out=out)
        assert code == 2
    hooked = Options(target_role="device", operator="hook", operator_hook="curl -u me:secret x")
    assert hooked.public()["operator_hook"] == "********"


def test_list_marks_operator_cases() -> None:
    out = io.StringIO()
    assert cli_main(["list", "-k", "A-PLIVE or A-REG-08"], out=out) == 0
    lines = [line for line in out.getvalue().splitlines() if "[operator]" in line]
    assert len(lines) == 4  # A-PLIVE-01..03 and A-REG-08


async def test_without_operator_the_cases_are_skipped_and_timeouts_grow() -> None:
    registry = Registry()
    ran: list[str] = []

    @registry.case("X-OP-01", "needs someone", grade="A", clause_2016="9.1", clause_2022="9.1",
                   roles=("device",), operator=2)  # fmt: skip
    async def needs_someone(ctx: Context) -> None:
        """Steps: ask. Pass: always."""
        await ctx.ask("unregister", "x")
        ran.append(ctx.steps[-1].text)

    class NoHarness:
        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

    options = Options(target_role="device", target_id=DEVICE, case_timeout=1.0)
    run = await run_suite(options, registry=registry, harness_factory=lambda o: NoHarness())
    assert [(r.verdict, r.reason) for r in run.results] == [("skip", NO_OPERATOR)]
    asked: list[Action] = []

    async def operator(action: Action) -> None:
        await asyncio.sleep(1.2)  # longer than case_timeout, within case + 2 x operator
        asked.append(action)

    options.operator_timeout = 1.0
    run = await run_suite(
        options, registry=registry, harness_factory=lambda o: NoHarness(), operator=operator
    )
    assert [r.verdict for r in run.results] == ["pass"], summary(run)
    assert [a.case for a in asked] == ["X-OP-01"]
    assert ran == [
        "asked the operator to make device x unregister (e.g. turn GB/T 28181 access off)"
    ]


def test_cli_runs_the_hook_for_each_action(tmp_path: Path) -> None:
    """``--operator-hook`` from the command line reaches the cases: the hook sees the action."""
    registry = Registry()

    @registry.case("X-OP-02", "asks twice", grade="A", clause_2016="9.1", clause_2022="9.1",
                   roles=("device",), operator=2)  # fmt: skip
    async def asks_twice(ctx: Context) -> None:
        """Steps: ask for an alarm, then a TeleBoot. Pass: the hook ran."""
        await ctx.ask("alarm", DEVICE)
        await ctx.ask("teleboot", DEVICE)

    class NoHarness:
        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

    log = tmp_path / "actions"
    out = io.StringIO()
    code = cli_main(
        ["run", "--target-role", "device", "--target-id", DEVICE, "--operator-hook",
         f'echo "$GB28181_ACTION_NAME $GB28181_ACTION_TARGET" >> {log}'],
        registry=registry,
        harness_factory=lambda o: NoHarness(),
        out=out,
    )  # fmt: skip
    assert code == 0, out.getvalue()
    assert log.read_text().splitlines() == [f"alarm {DEVICE}", f"teleboot {DEVICE}"]
    code = cli_main(
        ["run", "--target-role", "device", "--target-id", DEVICE, "--operator-hook", "exit 7"],
        registry=registry,
        harness_factory=lambda o: NoHarness(),
        out=out,
    )  # fmt: skip
    assert code == 1
    assert "error X-OP-02" in out.getvalue() and "exit status 7" in out.getvalue()


# -- platform mode: the gateway, driven from a city platform above it --------------------------
class UpperOperator:
    """Does each action through a city platform (SimPlatform) the gateway registered to, as
    a user of that platform would; ``wrong`` maps an action to a wrong PTZ direction, and
    ``ignore`` lists actions it does not do (a platform that never closes a view)."""

    def __init__(self, upper: SimPlatform, gw: Gateway, **kw: Any) -> None:
        self.upper = upper
        self.gw = gw
        self.calls: dict[str, PlatformCall] = {}
        self.wrong: dict[str, str] = kw.get("wrong", {})
        self.ignore: set[str] = set(kw.get("ignore", ()))
        self.transport: str | None = kw.get("transport")  # whatever the case asks
        self.release_stop: bool = kw.get("release_stop", False)  # stop after each move
        self.done: list[str] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def _known(self, item_id: str) -> None:
        """Until the gateway has synced the device (a person would wait for it to show)."""
        for _ in range(200):
            if self.gw.downlink.device(item_id) is not None:
                return
            await asyncio.sleep(0.05)

    async def __call__(self, action: Action) -> None:
        name, target, p = action.name, action.target, action.params
        self.done.append(name)
        if name in self.ignore:
            return
        up = self.upper
        await self._known(target)
        if name == "live-start":
            # As a user sets a camera's stream transport in the platform: the gateway's leg to
            # the device, and the city platform's own offer, both use it.
            transport = self.transport or p.get("transport", "udp")
            self.gw.media.cfg.device_transports[target] = transport
            self.calls[target] = await up.invite(GW, target, kind="Play", transport=transport)
        elif name in ("live-stop", "playback-stop"):
            await self.calls.pop(target).bye()
        elif name == "ptz":
            move = _MOVES[self.wrong.get(p["direction"], p["direction"])]
            await up.ptz(GW, target, move.encode())
            if self.release_stop:  # a client's button: move on press, stop on release
                task = asyncio.ensure_future(up.ptz(GW, target, ptz_stop().encode()))
                self.tasks.add(task)
        elif name in ("record-start", "record-stop"):
            cmd = "Record" if name == "record-start" else "StopRecord"
            await up.control(GW, DeviceControl(sn=0, device_id=target, record_cmd=cmd))
        elif name == "record-search":
            await up.record_info(GW, target, p["start"], p["end"])
        elif name in ("playback-start", "download"):
            kind = "Playback" if name == "playback-start" else "Download"
            start, end = (_epoch(p["start"]), _epoch(p["end"]))
            call = await up.invite(GW, target, kind=kind, start=start, stop=end, download_speed=4)
            self.calls[target] = call
            if kind == "Download":  # a user's client ends a download at its end of file
                task = asyncio.ensure_future(self._bye_at_end(call))
                self.tasks.add(task)
        elif name == "playback-pause":
            await self.calls[target].pause()
        elif name == "playback-resume":
            await self.calls[target].play("now")
        elif name == "playback-scale":
            await self.calls[target].play(scale=float(p["scale"]))
        elif name in ("device-info", "device-status"):
            query = up.device_info if name == "device-info" else up.device_status
            await query(GW, target)
        elif name in ("guard-set", "guard-reset"):
            cmd = "SetGuard" if name == "guard-set" else "ResetGuard"
            await up.control(GW, DeviceControl(sn=0, device_id=target, guard_cmd=cmd))
        elif name == "alarm-reset":
            await up.control(GW, DeviceControl(sn=0, device_id=target, alarm_cmd="ResetAlarm"))
        elif name == "teleboot":
            await up.control(GW, DeviceControl(sn=0, device_id=target, tele_boot="Boot"))
        else:
            raise AssertionError(f"no way to do {name}")

    async def _bye_at_end(self, call: PlatformCall) -> None:
        for _ in range(600):
            if 121 in call.media_status or call.ended.is_set():
                break
            await asyncio.sleep(0.05)
        await call.bye(timeout=5.0)

    async def close(self) -> None:
        for call in self.calls.values():
            with contextlib.suppress(Exception):
                await call.bye(timeout=2.0)
        for task in self.tasks:
            task.cancel()


def _epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text).timestamp())


RunPlatform = Callable[..., Awaitable[tuple[RunResult, UpperOperator]]]


@pytest.fixture
def run_platform(gateways: Gateways) -> RunPlatform:
    """The suite in platform mode against a gateway registered to a city platform of the
    test's, which is the operator."""

    async def run(*ids: str, **kw: Any) -> tuple[RunResult, UpperOperator]:
        port = free_port()
        ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
        await ep.start("127.0.0.1", port)
        upper = SimPlatform(ep, platform_id=UP, domain=UP[:10]).start()
        try:
            gw = await gateways.start(port)
            for _ in range(200):
                lower = upper.lowers.get(GW)
                if lower is not None and lower.registered:
                    break
                await asyncio.sleep(0.05)
            operator = UpperOperator(upper, gw, **kw)
            options = Options(
                target_role="platform",
                target_port=gw.port,
                target_id=GW,
                target_domain=DOMAIN,
                suite_device_ids=NVRS[:1],
                register_timeout=20,
                case_timeout=20,
                operator_timeout=kw.get("operator_timeout", 10.0),
                select=select(*ids),
            )
            try:
                result = await run_suite(
                    options, harness_factory=gateways.harness(gw), operator=operator
                )
            finally:
                await operator.close()
            return result, operator
        finally:
            await upper.close()
            await ep.close()

    return run


@pytest.mark.timeout(120)
async def test_gateway_acting_as_a_platform_passes_every_platform_acting_case(
    run_platform: RunPlatform,
) -> None:
    # Its PTZ buttons stop on release: each move is followed by a stop.
    run, operator = await run_platform(*PLATFORM_CASES, release_stop=True)
    assert not run.run_error, run.run_error
    assert run.ok, summary(run)
    results = by_id(run)
    assert {r.info.id for r in run.results} == set(PLATFORM_CASES)
    assert all(r.verdict == "pass" for r in run.results), summary(run)
    for n, transport in enumerate(("udp", "tcp-passive", "tcp-active"), start=1):
        live = results[f"A-PLIVE-0{n}"]
        assert live.media["transport"] == transport
        assert live.media["ssrc"].startswith("0" + DOMAIN[3:8]) and live.media["packets_sent"] > 0
    assert results["B-PPLAY-01"].media["ssrc"].startswith("1")
    assert operator.done.count("ptz") == 7
    assert operator.done.count("playback-scale") == 2
    assert any("PTZCmd A50F01" in s.text for s in results["A-PPTZ-01"].steps)


@pytest.mark.timeout(60)
async def test_a_platform_turning_the_wrong_way_never_closing_or_ignoring_tcp_fails(
    run_platform: RunPlatform,
) -> None:
    run, _ = await run_platform(
        "A-PPTZ-01",
        "A-PLIVE-01",
        "A-PLIVE-02",
        wrong={"up": "down"},
        ignore={"live-stop"},
        transport="udp",
        operator_timeout=2.0,
    )
    results = by_id(run)
    ptz = results["A-PPTZ-01"]
    assert ptz.verdict == "fail"
    assert "PTZ up: direction" in ptz.reason
    assert ptz.expected == "(0, 1, 0)" and ptz.seen == "(0, -1, 0)"
    live = results["A-PLIVE-01"]
    assert live.verdict == "fail"
    assert "waiting for the platform's BYE (closing the live view)" in live.reason
    tcp = results["A-PLIVE-02"]
    assert tcp.verdict == "fail" and "the media transport the platform offered" in tcp.reason
    assert tcp.expected == "'tcp-passive'" and tcp.seen == "'udp'"


# -- device mode: a simulated device, driven by hand ---------------------------------------
class DeviceOperator:
    """Makes a SimDevice unregister, register and raise alarms (with ``priority``)."""

    def __init__(self, dev: SimDevice, priority: int = 2) -> None:
        self.dev = dev
        self.priority = priority

    async def __call__(self, action: Action) -> None:
        dev = self.dev
        if action.name == "unregister":
            dev.paused = True
            await dev.unregister()
        elif action.name == "register":
            await dev.register()
            dev.paused = False
        elif action.name == "alarm":
            await dev.send_alarm(dev.channel_id(1), priority=self.priority, method=5)
        else:
            raise AssertionError(action.name)


async def _run_device(ep: Endpoint, priority: int, *ids: str) -> RunResult:
    port = free_port()
    dev = SimDevice(ep, DEVICE, Peer("udp", "127.0.0.1", port), channel_count=2)
    hub = dev.install()
    dev.start_keepalive(0.5)
    options = Options(
        target_role="device",
        target_id=DEVICE,
        local_port=port,
        register_timeout=10,
        case_timeout=10,
        operator_timeout=5,
        select=select(*ids),
    )
    try:
        return await run_suite(options, operator=DeviceOperator(dev, priority))
    finally:
        await hub.close()


@pytest.mark.timeout(60)
async def test_device_unregisters_and_reports_alarms(device_endpoint: Endpoint) -> None:
    run = await _run_device(device_endpoint, 2, *DEVICE_CASES)
    assert not run.run_error, run.run_error
    assert [(r.info.id, r.verdict) for r in run.results] == [
        ("A-REG-08", "pass"),
        ("C-ALARM-04", "pass"),
    ], summary(run)
    steps = [s.text for s in by_id(run)["A-REG-08"].steps]
    assert "REGISTER Expires 0: 401 -> 200" in steps


@pytest.mark.timeout(30)
async def test_an_alarm_of_priority_nine_fails(device_endpoint: Endpoint) -> None:
    run = await _run_device(device_endpoint, 9, "C-ALARM-04")
    result = run.results[0]
    assert result.verdict == "fail"
    assert "AlarmPriority 9, expected 1-4" in result.reason


# -- cascade ------------------------------------------------------------------------------
def test_cascade_makes_the_gateway_cases_apply_to_a_platform() -> None:
    cases = {c.id: c for c in load_cases()}
    plain = Options(target_role="platform")
    cascading = Options(target_role="platform", cascade=True)
    forward = cases["E-FWD-01"]
    assert "--cascade" in forward.not_applicable(plain)
    assert forward.not_applicable(cascading) == ""
    assert cases["A-REG-01"].not_applicable(cascading) == ""
    assert cases["A-REG-08"].not_applicable(cascading) != ""  # a device's own act


@pytest.mark.timeout(60)
async def test_a_cascading_platform_is_judged_upward(gateways: Gateways) -> None:
    upper = free_port()
    gw = await gateways.start(upper)
    options = Options(
        target_role="platform",
        cascade=True,
        target_port=gw.port,
        target_id=GW,
        target_domain=DOMAIN,
        local_port=upper,
        suite_platform_id=UP,
        suite_domain=UP[:10],
        suite_device_ids=NVRS[:1],
        register_timeout=20,
        case_timeout=20,
        select=select("A-REG-01", "A-KA-01", "E-FWD-01", "A-CAT-03"),
    )
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert [(r.info.id, r.verdict) for r in run.results] == [
        ("A-CAT-03", "pass"),
        ("A-KA-01", "pass"),
        ("A-REG-01", "pass"),
        ("E-FWD-01", "pass"),
    ], summary(run)
