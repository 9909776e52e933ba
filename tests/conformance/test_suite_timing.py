"""The suite judges a target configured as it will run (issue 15), with short timings here:

* the target's heartbeat period is learned from its keepalives (or given), and a wait on the
  target's own timers may outlast the case timeout;
* A-REG-04 grants a short lifetime and fails a target that keeps to the lifetime it asked for,
  saying what it did;
* cases are independent: a case that lets a registration lapse is followed by one that passes
  (the runner waits for the registration to come back), and one whose damage cannot be undone
  marks the later cases "not run", naming it, in every report;
* progress: plain lines off a terminal, a live line on one.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.suite import progress as progress_module
from conformance.suite.case import Registry
from conformance.suite.cli import main
from conformance.suite.context import Context
from conformance.suite.options import Options
from conformance.suite.progress import Progress
from conformance.suite.report import html_report, results_dict, summary_table
from conformance.suite.runner import RunResult, run_suite
from conformance.suite.timing import DEFAULT_KEEPALIVE_INTERVAL, KeepaliveTiming
from gateway.sip import Endpoint, Peer, Response
from tests.conformance.test_suite_cases import (
    DEVICE,
    Gateways,
    by_id,
    free_port,
    gateway_options,
    summary,
)


# -- timing, pure ---------------------------------------------------------------------------------
def test_keepalive_timing_option_then_learned_then_default() -> None:
    arrivals = [10.0, 10.5, 11.0, 11.5, 11.52, 12.0]  # one burst gap (0.02) is not a period
    assert KeepaliveTiming.of(2.0, arrivals).source == "option"
    learned = KeepaliveTiming.of(None, arrivals)
    assert learned.source == "learned"
    assert learned.interval == pytest.approx(0.5, abs=0.05)
    assert learned.wait() == pytest.approx(3 * learned.interval + 2.0)
    assert "learned from" in learned.describe()
    nothing = KeepaliveTiming.of(None, [5.0])
    assert (nothing.source, nothing.interval) == ("default", DEFAULT_KEEPALIVE_INTERVAL)
    # The shipped 60 s heartbeat: 3 periods and a tenth of one.
    assert nothing.wait() == pytest.approx(186.0)


def test_new_options_are_checked() -> None:
    with pytest.raises(ValueError, match="keepalive_interval"):
        Options(target_role="device", keepalive_interval=0)
    with pytest.raises(ValueError, match="grant_expires"):
        Options(target_role="device", grant_expires=0)


# -- a device target ----------------------------------------------------------------------------


class KeepsItsOwnLifetime(SimDevice):
    """A device that refreshes by the lifetime it asked for, whatever the registrar granted
    (RFC 3261 §10.2.4 says the granted one binds it)."""

    def _registered(self, resp: Response, requested: int) -> None:
        super()._registered(resp, requested)
        if resp.status == 200 and requested > 0:
            self._refresh_at = time.monotonic() + requested * 0.8


async def run_against(
    ep: Endpoint,
    *,
    registry: Registry | None = None,
    device_class: type[SimDevice] = SimDevice,
    heartbeat: float = 0.3,
    **options: Any,
) -> tuple[RunResult, SimDevice]:
    """The suite in device mode against a simulated IPC keeping alive every ``heartbeat`` s."""
    port = free_port()
    dev = device_class(ep, DEVICE, Peer("udp", "127.0.0.1", port), channel_count=1)
    hub = dev.install()
    dev.start_keepalive(heartbeat)
    settings: dict[str, Any] = {
        "target_role": "device",
        "target_id": DEVICE,
        "local_port": port,
        "register_timeout": 10,
        "case_timeout": 10,
    }
    settings.update(options)
    try:
        return await run_suite(Options(**settings), registry=registry), dev
    finally:
        dev.stop()
        await hub.close()
        hub.remove(dev)


def timing_registry(seen: list[KeepaliveTiming]) -> Registry:
    reg = Registry()

    @reg.case("T-TIME-01", "Timing", grade="A", clause_2016="9.6", clause_2022="9.6",
              roles=("device",))  # fmt: skip
    async def learn(ctx: Context) -> None:
        """Wait for a few keepalives, then note the timing the suite has."""
        h = ctx.harness
        await ctx.wait_for(
            lambda: len(h.keepalives_from(h.lower_id)) >= 4, 5.0, "keepalives", extend=True
        )
        seen.append(ctx.keepalive_timing())

    @reg.case("T-TIME-02", "Longer than the case timeout", grade="A", clause_2016="9.6",
              clause_2022="9.6", roles=("device",))  # fmt: skip
    async def outlasts(ctx: Context) -> None:
        """A wait on the target's timers (``extend``) may outlast the case timeout."""
        h = ctx.harness
        count = len(h.keepalives_from(h.lower_id))
        await ctx.wait_for(lambda: len(h.keepalives_from(h.lower_id)) >= count + 6, 10.0,
                           "six more keepalives", extend=True)  # fmt: skip

    return reg


@pytest.mark.timeout(60)
async def test_the_keepalive_interval_is_learned_from_the_traffic(
    device_endpoint: Endpoint,
) -> None:
    seen: list[KeepaliveTiming] = []
    run, _ = await run_against(
        device_endpoint, registry=timing_registry(seen), heartbeat=0.3, case_timeout=1.0
    )
    assert [r.verdict for r in run.results] == ["pass", "pass"], summary(run)
    (timing,) = seen
    assert timing.source == "learned"
    assert 0.2 <= timing.interval <= 0.6  # 0.3 s apart, on a loaded machine
    # Six keepalives 0.3 s apart take longer than the 1 s case timeout: the wait extended it.
    assert by_id(run)["T-TIME-02"].duration > 1.0

    seen.clear()
    run, _ = await run_against(
        device_endpoint, registry=timing_registry(seen), heartbeat=0.3, case_timeout=5.0,
        keepalive_interval=7.0, select=("T-TIME-01",),
    )  # fmt: skip
    assert seen[0].source == "option" and seen[0].interval == 7.0


@pytest.mark.timeout(60)
async def test_a_device_that_refreshes_by_the_lifetime_it_asked_fails_a_reg_04(
    device_endpoint: Endpoint,
) -> None:
    run, _ = await run_against(
        device_endpoint, device_class=KeepsItsOwnLifetime, heartbeat=0.3, grant_expires=2,
        select=("A-REG-04",),
    )  # fmt: skip
    result = by_id(run)["A-REG-04"]
    assert result.verdict == "fail", summary(run)
    assert "did not refresh before the granted 2 s ran out" in result.reason
    # What it did: asked an hour, kept alive, and only registered again once refused (404).
    assert result.seen is not None and "asked 3600 s" in result.seen
    assert "keepalives" in result.seen and "404" in result.seen
    # The run put its registration back for whatever would come next.
    assert not run.unrestored


@pytest.mark.timeout(60)
async def test_a_device_that_refreshes_by_the_granted_lifetime_passes_a_reg_04(
    device_endpoint: Endpoint,
) -> None:
    run, _ = await run_against(
        device_endpoint, heartbeat=0.3, grant_expires=2, select=("A-REG-04",)
    )
    assert by_id(run)["A-REG-04"].verdict == "pass", summary(run)


# -- independence -------------------------------------------------------------------------------
def lapse_registry() -> Registry:
    reg = Registry()

    @reg.case("T-IND-01", "Lets the registration lapse and fails", grade="A",
              clause_2016="9.1", clause_2022="9.1", roles=("device", "gateway"))  # fmt: skip
    async def lapse(ctx: Context) -> None:
        """The suite's platform forgets the target, and the case fails."""
        ctx.harness.need_platform().restart()
        ctx.fail("a failure that leaves the target unregistered")

    @reg.case("T-IND-02", "Needs the registration", grade="A", clause_2016="9.5",
              clause_2022="9.5", roles=("device", "gateway"))  # fmt: skip
    async def needs(ctx: Context) -> None:
        """Reads the target's catalog through the registration."""
        h = ctx.harness
        ctx.check(h.registered(), "the target is registered")
        res = await h.catalog(timeout=5.0, idle=0.5)
        ctx.check(bool(res.items), "the target's catalog", seen=res.items)

    @reg.case("T-IND-03", "Needs it too", grade="A", clause_2016="9.5",
              clause_2022="9.5", roles=("device", "gateway"))  # fmt: skip
    async def needs_too(ctx: Context) -> None:
        """Reads the target's catalog again."""
        await needs(ctx)

    return reg


@pytest.mark.timeout(60)
async def test_a_case_that_lapses_a_registration_is_followed_by_one_that_passes(
    device_endpoint: Endpoint, tmp_path: Path
) -> None:
    run, _ = await run_against(
        device_endpoint, registry=lapse_registry(), heartbeat=0.3, report_dir=str(tmp_path)
    )
    verdicts = {r.info.id: r.verdict for r in run.results}
    assert verdicts == {"T-IND-01": "fail", "T-IND-02": "pass", "T-IND-03": "pass"}, summary(run)
    first = by_id(run)["T-IND-01"]
    assert f"the target {DEVICE} is not registered to the suite's platform" in first.aftermath
    assert "restored after" in first.aftermath
    assert [n.case_id for n in run.state_log if n.problems] == ["T-IND-01"]
    assert not run.unrestored
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert data["state_log"][0]["after"] == "T-IND-01" and data["state_log"][0]["restored"]


class StaysAway(SimDevice):
    """A device that, once forgotten (a keepalive answered 404), never registers again."""

    gone = False

    def _emit(self, event: str, detail: str = "") -> None:
        super()._emit(event, detail)
        if event == "keepalive-404":
            self.gone = True

    async def register(self, expires: int | None = None, *, max_challenges: int = 2) -> Response:
        if self.gone:
            raise OSError("this device stays away")
        return await super().register(expires, max_challenges=max_challenges)


@pytest.mark.timeout(60)
async def test_a_state_that_cannot_be_restored_marks_later_cases_not_run(
    device_endpoint: Endpoint, tmp_path: Path
) -> None:
    run, _ = await run_against(
        device_endpoint, registry=lapse_registry(), device_class=StaysAway, heartbeat=0.3,
        register_timeout=2.0, keepalive_interval=0.3, report_dir=str(tmp_path),
    )  # fmt: skip
    results = by_id(run)
    assert results["T-IND-01"].verdict == "fail"
    assert "NOT restored" in results["T-IND-01"].aftermath
    for later in ("T-IND-02", "T-IND-03"):
        r = results[later]
        assert (r.verdict, r.blocked_by) == ("error", "T-IND-01"), summary(run)
        assert r.reason.startswith("not run: ")
        assert f"the target {DEVICE} is not registered" in r.reason and "since T-IND-01" in r.reason
        assert "LookupError" not in r.reason
    (note,) = run.unrestored
    assert note.case_id == "T-IND-01" and not note.restored
    text = summary_table(run)
    assert "after T-IND-01:" in text and "NOT restored" in text
    assert "2 later cases were not run: the state T-IND-01 left could not be restored" in text
    data = results_dict(run)
    assert data["state_log"][0]["restored"] is False
    assert [c["blocked_by"] for c in data["cases"]] == ["", "T-IND-01", "T-IND-01"]
    assert 'id="state"' in html_report(run) and "not-restored" in html_report(run)
    junit = (tmp_path / "junit.xml").read_text(encoding="utf-8")
    assert 'type="NotRun"' in junit


class ComesBackLate(SimDevice):
    """A device that, once forgotten, registers again only ``LATE`` seconds later: after the
    runner's restore has given up (4.3 s here), within the one more wait the blocked cases
    share."""

    LATE = 6.0
    gone_at: float | None = None

    def _emit(self, event: str, detail: str = "") -> None:
        super()._emit(event, detail)
        if event == "keepalive-404" and self.gone_at is None:
            self.gone_at = time.monotonic()

    async def register(self, expires: int | None = None, *, max_challenges: int = 2) -> Response:
        if self.gone_at is not None and time.monotonic() < self.gone_at + self.LATE:
            raise OSError("not yet")
        return await super().register(expires, max_challenges=max_challenges)


@pytest.mark.timeout(60)
async def test_a_target_that_comes_back_late_runs_the_next_cases(device_endpoint: Endpoint) -> None:
    run, _ = await run_against(
        device_endpoint, registry=lapse_registry(), device_class=ComesBackLate, heartbeat=0.3,
        register_timeout=2.0, keepalive_interval=0.3,
    )  # fmt: skip
    results = by_id(run)
    assert "NOT restored" in results["T-IND-01"].aftermath
    assert results["T-IND-02"].verdict == "pass", summary(run)
    assert results["T-IND-03"].verdict == "pass", summary(run)


@pytest.mark.timeout(90)
async def test_below_a_gateway_a_lapsed_uplink_registration_is_restored(
    gateways: Gateways,
) -> None:
    """The issue's run: the suite's upper forgets the gateway; the next case still passes
    (the gateway hears it at its next keepalive, 0.5 s here, and registers again)."""
    upper = free_port()
    gw = await gateways.start(upper)
    options = gateway_options(gw, upper)
    run = await run_suite(options, registry=lapse_registry(), harness_factory=gateways.harness(gw))
    verdicts = {r.info.id: r.verdict for r in run.results}
    assert verdicts == {"T-IND-01": "fail", "T-IND-02": "pass", "T-IND-03": "pass"}, summary(run)
    assert "restored after" in by_id(run)["T-IND-01"].aftermath


# -- progress -----------------------------------------------------------------------------------
def waiting_registry() -> Registry:
    reg = Registry()

    @reg.case("T-PROG-01", "Waits a while", grade="A", clause_2016="9.6", clause_2022="9.6",
              roles=("device",))  # fmt: skip
    async def waits(ctx: Context) -> None:
        """Waits for something that comes after 0.6 s."""
        end = time.monotonic() + 0.6
        await ctx.wait_for(lambda: time.monotonic() >= end, 5.0, "the thing to come")

    return reg


class FakeHarness:
    def __init__(self, options: Options) -> None:
        self.options = options

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.timeout(20)
def test_progress_plain_lines_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_AFTER", 0.2)
    monkeypatch.setattr(progress_module, "TICK", 0.05)
    out, err = io.StringIO(), io.StringIO()
    code = main(
        ["run", "--target-role", "device", "--target-id", DEVICE],
        registry=waiting_registry(),
        harness_factory=FakeHarness,
        out=out,
        err=err,
    )
    assert code == 0, out.getvalue()
    lines = err.getvalue().splitlines()
    assert "[1/1] T-PROG-01: waiting for the thing to come (up to 5 s)" in lines
    done = [line for line in lines if line.startswith("[1/1] T-PROG-01: done waiting for")]
    assert len(done) == 1 and done[0].endswith(" s")
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()
    assert "pass  T-PROG-01" in out.getvalue()  # the result lines stay on stdout


@pytest.mark.timeout(20)
def test_progress_live_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "TICK", 0.05)
    monkeypatch.setenv("COLUMNS", "200")
    err = Terminal()
    code = main(
        ["run", "--target-role", "device", "--target-id", DEVICE],
        registry=waiting_registry(),
        harness_factory=FakeHarness,
        out=io.StringIO(),
        err=err,
    )
    assert code == 0
    text = err.getvalue()
    assert (
        "\r\x1b[K[1/1] T-PROG-01 · 0 s of up to 5 s waiting for the thing to come · Waits a while"
        in text
    )
    assert text.endswith("\r\x1b[K")  # the line is taken away at the end


def test_progress_line_says_the_case_what_it_waits_for_and_how_long() -> None:
    now = [100.0]
    p = Progress(io.StringIO(), live=True, clock=lambda: now[0], width=200)
    p.total = 72
    p.begin_case(6, "A-KA-01", "Device side: keepalive")
    now[0] = 103.0
    assert p.line() == "[ 6/72] A-KA-01 · 3 s · Device side: keepalive"
    with p.wait("a keepalive from 34020000002000000001\x1b[2J", 186.0):
        now[0] = 115.4
        assert p.line() == (
            "[ 6/72] A-KA-01 · 12 s of up to 186 s waiting for a keepalive from "
            "34020000002000000001 [2J · Device side: keepalive"
        )
    p.end_case()
    assert p.line() == ""
