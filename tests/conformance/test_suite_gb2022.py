"""Two 2022 cases run for real, against conformant and misbehaving peers.

* N-SUB-01 (catalog subscription, 2022 Annex N) in device mode: a SimDevice with a channel
  offline sends the initial report at once and passes; one with every item ON owes nothing and
  passes; one with the ``no_initial_report`` switch fails, saying what was owed.
* N-TCP-01 (TCP media reconnection, 2022 Annex D): the suite refuses the target's first three
  connection attempts, timing each, and accepts the fourth. A SimDevice (3 retries 1 s apart)
  and the gateway (its relay's tcp-active output) pass with their attempts measured; a device
  that does not retry, gives up after one retry or retries every 0.2 s fails; where SYNs cannot
  be timed the case still judges the late connection and says that it measured nothing.

Set-up patterns copied from test_suite_cases.py (device mode against a SimDevice on its own
endpoint; gateway mode against an in-process gateway below the suite's upper platform).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.suite.cases import gb2022
from conformance.suite.options import Options
from conformance.suite.runner import CaseResult, RunResult, run_suite
from gateway.sip import Endpoint, Peer
from tests.conformance.test_suite_cases import (
    DEVICE,
    Gateways,
    free_port,
    gateway_options,
)


def result(run: RunResult, case_id: str) -> CaseResult:
    assert not run.run_error, run.run_error
    return next(r for r in run.results if r.info.id == case_id)


def steps(r: CaseResult) -> str:
    return "\n".join(s.text for s in r.steps)


def can_time_syns() -> bool:
    """Whether this host lets the suite time SYNs (Linux, CAP_NET_RAW)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError:
        return False
    return True


needs_raw = pytest.mark.skipif(
    not can_time_syns(), reason="timing SYNs needs a raw socket (CAP_NET_RAW)"
)


# -- device mode against a SimDevice ---------------------------------------------------------


RunDevice = Callable[..., Awaitable[tuple[RunResult, SimDevice]]]


@pytest.fixture
def run_device(device_endpoint: Endpoint) -> RunDevice:
    """Run the suite in device mode against a SimDevice (an IPC with two channels, a voice
    output and a custom tree) given ``switches``; ``offline`` channels (1-based) have Status
    OFF before anyone subscribes; ``select`` picks the cases."""

    async def run(
        *select: str, offline: tuple[int, ...] = (), case_timeout: float = 20.0, **switches: Any
    ) -> tuple[RunResult, SimDevice]:
        port = free_port()
        settings: dict[str, Any] = {
            "channel_count": 2,
            "with_groups": True,
            "gb_version": "3.0",
            "large_over_tcp": True,
            "audio_outputs": 1,
        }
        settings.update(switches)
        dev = SimDevice(device_endpoint, DEVICE, Peer("udp", "127.0.0.1", port), **settings)
        for n in offline:
            dev.set_status(dev.channel_id(n), "OFF")
        hub = dev.install()
        dev.start_keepalive(0.5)
        options = Options(
            target_role="device",
            target_id=DEVICE,
            local_port=port,
            register_timeout=10,
            case_timeout=case_timeout,
            edition="2022",
            select=tuple(select),
        )
        try:
            return await run_suite(options), dev
        finally:
            await hub.close()
            hub.remove(dev)  # the next run's device takes its place

    return run


def notifies_naming(r: CaseResult, item_id: str) -> list[str]:
    """The NOTIFYs the suite received during the case that name ``item_id``."""
    return [
        e.text
        for e in r.trace
        if e.direction == "received" and e.first_line.startswith("NOTIFY") and item_id in e.text
    ]


# -- N-SUB-01 --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
async def test_sub_initial_report_of_an_offline_channel_passes(run_device: RunDevice) -> None:
    run, dev = await run_device("N-SUB-01", offline=(2,))
    r = result(run, "N-SUB-01")
    assert r.verdict == "pass", (r.reason, steps(r))
    off = dev.channel_id(2)
    assert f"not ON: {off} OFF" in steps(r)
    assert "initial report complete" in steps(r) and f"{off} OFF" in steps(r)
    seen = notifies_naming(r, off)
    assert len(seen) == 1 and "<Event>OFF</Event>" in seen[0]
    assert "<SumNum>1</SumNum>" in seen[0] and 'Num="1"' in seen[0]
    assert not notifies_naming(r, dev.channel_id(1))  # ON: not reported


@pytest.mark.timeout(30)
async def test_sub_with_every_item_on_has_nothing_to_report(run_device: RunDevice) -> None:
    run, _ = await run_device("N-SUB-01")
    r = result(run, "N-SUB-01")
    assert r.verdict == "pass", (r.reason, steps(r))
    assert "not ON: none" in steps(r)
    assert "every item is ON: nothing to report (Annex N); 0 NOTIFYs" in steps(r)


@pytest.mark.timeout(30)
async def test_sub_without_initial_report_fails(run_device: RunDevice) -> None:
    run, dev = await run_device("N-SUB-01", offline=(1,), no_initial_report=True)
    r = result(run, "N-SUB-01")
    assert r.verdict == "fail"
    assert r.reason.startswith("no initial NOTIFY within 5 s of the 200, although the catalog")
    assert "Annex N" in r.reason
    assert r.expected is not None and dev.channel_id(1) in r.expected
    assert r.seen is not None and "no NOTIFY" in r.seen


# -- N-TCP-01 --------------------------------------------------------------------------------
@needs_raw
@pytest.mark.timeout(30)
async def test_tcp_retry_of_sim_device_is_measured_and_passes(run_device: RunDevice) -> None:
    run, _ = await run_device("N-TCP-01")
    r = result(run, "N-TCP-01")
    assert r.verdict == "pass", (r.reason, steps(r))
    m = r.media
    assert m["retries_measured"] is True
    assert (m["connect_attempts"], m["refused_attempts"], m["retries"]) == (4, 3, 3)
    assert len(m["retry_gaps"]) == 3 and all(0.9 <= g <= 1.5 for g in m["retry_gaps"])
    assert m["connected_after"] >= 2.9 and m["frames_decoded"] >= 10
    assert "3 retries" in steps(r) and "connection attempt 4" in steps(r)


@needs_raw
@pytest.mark.timeout(30)
async def test_tcp_client_that_does_not_retry_fails(run_device: RunDevice) -> None:
    run, _ = await run_device("N-TCP-01", tcp_retries=0)
    r = result(run, "N-TCP-01")
    assert r.verdict == "fail"
    assert "did not retry after its first connection attempt was refused" in r.reason
    assert r.expected == "'at least 3 retries, at least 1 s apart (Annex D)'"
    assert (r.media["connect_attempts"], r.media["retries"]) == (1, 0)


@needs_raw
@pytest.mark.timeout(30)
async def test_tcp_client_that_gives_up_after_one_retry_fails(run_device: RunDevice) -> None:
    run, _ = await run_device("N-TCP-01", tcp_retries=1)
    r = result(run, "N-TCP-01")
    assert r.verdict == "fail"
    assert "gave up after 1 retry" in r.reason
    assert r.media["connect_attempts"] == 2 and r.media["connected_after"] is None


@needs_raw
@pytest.mark.timeout(30)
async def test_tcp_client_that_retries_too_fast_fails(run_device: RunDevice) -> None:
    run, _ = await run_device("N-TCP-01", tcp_retry_interval=0.2)
    r = result(run, "N-TCP-01")
    assert r.verdict == "fail"
    assert "s after the previous attempt (Annex D: at least 1 s apart)" in r.reason
    assert r.media["retries"] == 3 and r.media["min_retry_gap"] < 0.5
    assert r.media["connected_after"] is not None  # the 4th attempt was accepted


@pytest.mark.timeout(30)
async def test_tcp_retry_without_syn_timing_judges_the_late_connection(
    run_device: RunDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gb2022._SynWatch, "open", classmethod(lambda cls, *a: None))
    run, _ = await run_device("N-TCP-01")
    r = result(run, "N-TCP-01")
    assert r.verdict == "skip", (r.reason, steps(r))
    assert "could not be measured" in r.reason
    assert r.media["retries_measured"] is False and r.media["connected_after"] >= 2.5
    assert "number and spacing of retries are not measured" in steps(r)
    run, _ = await run_device("N-TCP-01", tcp_retries=0)
    r = result(run, "N-TCP-01")
    assert r.verdict == "fail" and "did not connect again after 2.5 s" in r.reason


# -- gateway mode: the gateway's relay is the TCP client ---------------------------------------
@pytest.fixture
def gateway_run(gateways: Gateways) -> Callable[..., Awaitable[RunResult]]:
    """Run the suite in gateway mode (2022) against an in-process gateway."""

    async def run(*select: str) -> RunResult:
        upper = free_port()
        gw = await gateways.start(upper)
        options = gateway_options(gw, upper, edition="2022", select=tuple(select))
        return await run_suite(options, harness_factory=gateways.harness(gw))

    return run


@needs_raw
@pytest.mark.timeout(90)
async def test_gateway_passes_subscription_and_measured_tcp_retry(
    gateway_run: Callable[..., Awaitable[RunResult]],
) -> None:
    run = await gateway_run("N-SUB-01 or N-TCP-01")
    sub, tcp = result(run, "N-SUB-01"), result(run, "N-TCP-01")
    assert sub.verdict == "pass", (sub.reason, steps(sub))
    assert "unregistered before subscribing" in steps(sub)
    assert tcp.verdict == "pass", (tcp.reason, steps(tcp))
    m = tcp.media
    assert m["retries_measured"] is True and m["retries"] >= 3 and m["refused_attempts"] == 3
    assert m["min_retry_gap"] >= 0.9 and m["frames_decoded"] >= 10
