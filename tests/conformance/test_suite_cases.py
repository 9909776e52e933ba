"""The suite's own cases, run for real: they pass against a conformant gateway and a conformant
simulated device, and they fail, saying why, against peers that break the rules.

* ``gateway`` mode against an in-process :class:`~gateway.app.Gateway` (two simulated NVRs below
  it, the suite's upper platform above it on a port picked here): every applicable case passes.
* ``platform`` mode against the same gateway's downlink: every applicable case passes.
* ``device`` mode against a :class:`~conformance.peers.device.SimDevice` registering to the
  suite's platform: every applicable case passes.
* Each misbehaviour switch makes the matching case fail with a message naming the problem:
  ``wrong_ptz_checksum`` (the device checks PTZ checksums with a wrong sum and refuses correct
  commands), ``no_date`` (a platform target whose REGISTER 200 has no Date), ``wrong_ssrc``
  (RTP with another SSRC than ``y=``; ``"answer"``: ``y=`` not echoed either), ``drop_parts``
  (a catalog part never sent: a missing item, at the suite and through a gateway),
  ``no_keepalive``, ``charset_lie`` (GB2312 declared over UTF-8 bytes), ``wrong_sum_num``.

The gateway's uplink runs over TCP here; ``test_suite_udp_uplink.py`` runs the catalog cases
over a UDP uplink. Cases that need someone to act at the target are skipped here (no operator):
``test_suite_operator.py`` runs them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from conformance.suite.harness import Harness
from conformance.suite.operator import NO_OPERATOR
from conformance.suite.options import Options
from conformance.suite.runner import CaseResult, RunResult, run_suite
from gateway.app import Gateway
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer
from tests.conftest import make_config

GW = "34020000002000000001"
DOMAIN = "3402000000"
UP = "34010000002000000001"
NVRS = ("34020000001180000101", "34020000001180000102")
DEVICE = "34020000001320000001"
# Skipped although they apply: A-CAT-02 measures UDP datagrams, and the uplink here is TCP.
EXPECTED_SKIPS = {
    "gateway": {"A-CAT-02"},
    "platform": set(),
    "device": set(),
}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the suite's platform listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


def gateway_config(
    tmp_path: Path,
    upper_port: int | None,
    edition: str = "2022",
    uplink: str = "tcp",
    **more: dict[str, Any],
) -> Any:
    """The gateway under test; ``upper_port``: where the suite's upper platform listens (None:
    no uplink, for platform mode), reached over ``uplink``; ``more``: keys added per section."""
    uppers = [] if upper_port is None else [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": upper_port,
                    "transport": uplink,
                    "password": "12345678",
                    "keepalive_interval": 0.5,
                    "keepalive_timeout_count": 3,
                    "retry_interval": 0.3,
                    "gb_version": edition,
                }
    ]  # fmt: skip
    return make_config(
        tmp_path,
        gateway={"id": GW, "domain": DOMAIN, "name": "测试网关", "civil_code": "340200"},
        registrar={"min_expires": 1},  # A-REG-07 asks for a 2 s registration
        keepalive={
            "interval": 1.0,
            "timeout_count": 3,
            "check_interval": 0.2,
            **more.pop("keepalive", {}),
        },
        downlink={"response_timeout": 3.0, "idle_timeout": 0.5, **more.pop("downlink", {})},
        uplink={"platforms": uppers},
        media={
            "host": "127.0.0.1",
            "port_min": 47400,
            "port_max": 47599,
            "rtp_timeout": 3.0,
            "invite_timeout": 5.0,
        },
        **more,
    )


def gateway_options(gw: Gateway, upper: int, **kw: Any) -> Options:
    """A gateway-mode run against ``gw``, the suite's upper platform on port ``upper``, the
    two suite NVRs below; ``kw`` overrides."""
    settings: dict[str, Any] = {
        "target_role": "gateway",
        "target_port": gw.port,
        "target_id": GW,
        "target_domain": DOMAIN,
        "local_port": upper,
        "suite_platform_id": UP,
        "suite_domain": UP[:10],
        "suite_device_ids": NVRS,
        "register_timeout": 20,
        "case_timeout": 30,
        "grant_expires": 4,  # A-REG-04: the gateway refreshes in about 2.4 s, not 36
    }
    settings.update(kw)
    return Options(**settings)


def summary(run: RunResult) -> str:
    lines = [run.run_error] if run.run_error else []
    for r in run.results:
        if r.verdict in ("fail", "error"):
            lines.append(
                f"{r.info.id} {r.verdict}: {r.reason} (expected {r.expected}, seen {r.seen})"
            )
    return "\n".join(lines)


def by_id(run: RunResult) -> dict[str, CaseResult]:
    return {r.info.id: r for r in run.results}


def assert_all_applicable_pass(run: RunResult, role: str, minimum: int = 12) -> None:
    assert not run.run_error, run.run_error
    assert run.ok, summary(run)
    applicable = [
        r
        for r in run.results
        if not r.info.not_applicable(run.options)
        and not (r.info.operator and r.reason == NO_OPERATOR)
    ]
    skipped = {r.info.id: r.reason for r in applicable if r.verdict == "skip"}
    assert set(skipped) <= EXPECTED_SKIPS[role], skipped
    assert len(applicable) - len(skipped) >= minimum
    for r in applicable:
        if r.info.media and r.verdict == "pass" and "frames_decoded" in r.media:
            assert r.media["frames_decoded"] > 0, r.info.id


class Gateways:
    """Gateways under test, each closed once, with a deadline: while its uplink dials an upper
    that is gone, ``Gateway.close`` can wait for ever on Python 3.11 (the cancellation is lost
    in ``asyncio.wait_for`` around the TCP connect), so a run closes the gateway before the
    suite's upper platform goes away (:meth:`harness`)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Gateway] = []
        self.closed: set[int] = set()

    async def start(
        self,
        upper_port: int | None,
        edition: str = "2022",
        uplink: str = "tcp",
        **more: dict[str, Any],
    ) -> Gateway:
        gw = Gateway(gateway_config(self.tmp_path, upper_port, edition, uplink, **more))
        await gw.start()
        self.started.append(gw)
        return gw

    async def close(self, gw: Gateway) -> None:
        if id(gw) in self.closed:
            return
        self.closed.add(id(gw))
        await asyncio.wait_for(gw.close(), 15.0)

    def harness(self, gw: Gateway, **kw: Any) -> Callable[[Options], Harness]:
        """A harness factory whose harness closes ``gw`` before its own endpoints."""
        gateways = self

        class GatewayFirst(Harness):
            async def close(self) -> None:
                try:
                    await gateways.close(gw)
                finally:
                    await super().close()

        return lambda options: GatewayFirst(options, **kw)


# -- a conformant gateway, device and platform pass ------------------------------------------
# Serial: the whole suite's timing cases against 1 s keepalives; R-LARGE-01's spare device
# sends none, so its 500 catalog MESSAGEs must all arrive within the 3 s the gateway waits,
# which a machine loaded by the other tests of the run does not always give.
@pytest.mark.serial
@pytest.mark.timeout(120)
@pytest.mark.parametrize("edition", ["2022", "2016"])
async def test_gateway_passes_every_applicable_case(gateways: Gateways, edition: str) -> None:
    upper = free_port()
    gw = await gateways.start(upper, edition)
    options = gateway_options(
        gw,
        upper,
        edition=edition,
    )
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert_all_applicable_pass(run, "gateway")
    results = by_id(run)
    assert all(results[f"A-LIVE-0{n}"].verdict == "pass" for n in (1, 2, 3))
    assert results["A-LIVE-02"].media["transport"] == "tcp-passive"


@pytest.mark.timeout(60)
async def test_gateway_over_tcp_registration_keepalive_and_catalog(gateways: Gateways) -> None:
    """The suite's devices reach the gateway over TCP (one item per MESSAGE, and batched)."""
    upper = free_port()
    gw = await gateways.start(upper)
    options = gateway_options(
        gw,
        upper,
        transport="tcp",
        select=("A-REG or A-CAT or A-KA or A-DATE or R-LARGE or A-LIVE-01",),
    )
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert_all_applicable_pass(run, "gateway", minimum=8)
    assert by_id(run)["A-CAT-01"].verdict == "pass"


@pytest.mark.timeout(60)
async def test_gateway_downlink_passes_in_platform_mode(gateways: Gateways) -> None:
    gw = await gateways.start(None)
    options = Options(
        target_role="platform",
        target_port=gw.port,
        target_id=GW,
        target_domain=DOMAIN,
        suite_device_ids=NVRS[:1],
        register_timeout=20,
        case_timeout=30,
        edition="2022",
    )
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert_all_applicable_pass(run, "platform")
    assert by_id(run)["A-CAT-03"].verdict == "pass"


RunDevice = Callable[..., Awaitable[RunResult]]


@pytest.fixture
def run_device(device_endpoint: Endpoint) -> RunDevice:
    """Run the suite in device mode against a SimDevice (an IPC with two channels, a voice
    output and a custom tree, 6 catalog items; keeping alive every 0.5 s; sending large
    answers over TCP as RFC 3261 asks) given
    ``switches``; ``select`` picks the cases; ``suite``: more options of the run."""

    async def run(
        *select: str,
        edition: str = "2022",
        case_timeout: float = 20.0,
        suite: dict[str, Any] | None = None,
        **switches: Any,
    ) -> RunResult:
        port = free_port()
        settings: dict[str, Any] = {
            "channel_count": 2,
            "with_groups": True,
            "gb_version": "3.0" if edition == "2022" else None,
            "large_over_tcp": True,
            "playback_frames": 250,
            "audio_outputs": 1,
        }
        settings.update(switches)
        dev = SimDevice(device_endpoint, DEVICE, Peer("udp", "127.0.0.1", port), **settings)
        hub = dev.install()
        dev.start_keepalive(0.5)
        options = Options(
            target_role="device",
            target_id=DEVICE,
            local_port=port,
            register_timeout=10,
            case_timeout=case_timeout,
            edition=edition,
            select=tuple(select),
            grant_expires=4,  # A-REG-04: the device refreshes after 3.2 s
            **(suite or {}),
        )
        try:
            return await run_suite(options)
        finally:
            await hub.close()

    return run


@pytest.mark.timeout(90)
async def test_sim_device_passes_every_applicable_case(run_device: RunDevice) -> None:
    run = await run_device()
    assert_all_applicable_pass(run, "device")
    results = by_id(run)
    live = results["A-LIVE-01"].media
    assert live["frames_decoded"] >= 25 and live["ssrc"].startswith("0")
    assert results["D-BCAST-01"].media["audio_packets_sent"] >= 20


# -- the suite fails peers that break the rules --------------------------------------------
def verdicts(run: RunResult) -> dict[str, str]:
    assert not run.run_error, run.run_error
    return {r.info.id: r.verdict for r in run.results if not r.info.not_applicable(run.options)}


@pytest.mark.timeout(30)
async def test_wrong_ptz_checksum_fails_the_ptz_case(run_device: RunDevice) -> None:
    """The device sums PTZCmd bytes 2-7 instead of 1-7: it refuses every correct command."""
    run = await run_device("A-PTZ", wrong_ptz_checksum=True)
    assert verdicts(run) == {"A-PTZ-01": "fail", "A-PTZ-02": "pass"}
    failed = by_id(run)["A-PTZ-01"]
    assert "checksum" in failed.reason and "refused" in failed.reason
    assert failed.seen is not None and "400" in failed.seen and "checksum" in failed.seen


async def test_unchecked_ptz_checksum_fails_the_bad_checksum_case(run_device: RunDevice) -> None:
    """The device obeys a PTZCmd whatever its checksum says: A-PTZ-02 sees the preset appear."""
    run = await run_device("A-PTZ", ptz_checksum_unchecked=True)
    assert verdicts(run) == {"A-PTZ-01": "pass", "A-PTZ-02": "fail"}
    assert "wrong checksum was obeyed" in by_id(run)["A-PTZ-02"].reason


@pytest.mark.timeout(30)
async def test_missing_date_fails_the_time_sync_case(tmp_path: Path) -> None:
    """A platform target (the simulated platform, ``no_date``) whose REGISTER 200 has no
    Date: the suite's devices register to it."""
    ep = Endpoint(metrics=Metrics())
    await ep.start("127.0.0.1", 0)
    platform = SimPlatform(ep, platform_id=GW, domain=DOMAIN, no_date=True).start()
    try:
        options = Options(
            target_role="platform",
            target_port=ep.port,
            target_id=GW,
            target_domain=DOMAIN,
            suite_device_ids=NVRS[:1],
            register_timeout=10,
            case_timeout=10,
            select=("A-DATE or A-REG-02 or A-KA-02",),
        )
        run = await run_suite(options)
    finally:
        await platform.close()
        await ep.close()
    assert verdicts(run) == {"A-DATE-01": "fail", "A-REG-02": "pass", "A-KA-02": "pass"}
    assert "no Date header" in by_id(run)["A-DATE-01"].reason


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("switch", "message"),
    [(True, "RTP SSRC is not the answer's y="), ("answer", "was not echoed")],
)
async def test_wrong_ssrc_fails_live_view(run_device: RunDevice, switch: Any, message: str) -> None:
    run = await run_device("A-LIVE-01 or A-LIVE-03 or A-PTZ-01", wrong_ssrc=switch)
    assert verdicts(run) == {"A-LIVE-01": "fail", "A-LIVE-03": "fail", "A-PTZ-01": "pass"}
    failed = by_id(run)["A-LIVE-01"]
    assert message in failed.reason


@pytest.mark.timeout(30)
async def test_missing_catalog_item_fails_the_catalog_case(run_device: RunDevice) -> None:
    run = await run_device("A-CAT or N-CAT", drop_parts={2})
    assert verdicts(run)["A-CAT-01"] == "fail"
    assert verdicts(run)["A-CAT-02"] == "pass"
    reason = by_id(run)["A-CAT-01"].reason
    assert "SumNum says 6 items, 5 distinct items arrived" in reason and "missing" in reason


@pytest.mark.timeout(60)
async def test_missing_catalog_item_below_a_gateway_is_seen_from_above(
    gateways: Gateways,
) -> None:
    """A device below the gateway never sends one part of its catalog: the upper's catalog
    lacks that item, and the case names it."""
    upper = free_port()
    gw = await gateways.start(upper)
    options = gateway_options(
        gw,
        upper,
        suite_device_ids=NVRS[:1],
        register_timeout=5,
        case_timeout=15,
        select=("A-CAT-01 or A-KA-01",),
    )
    factory = gateways.harness(gw, device_settings={"drop_parts": {1}})
    run = await run_suite(options, harness_factory=factory)
    assert verdicts(run) == {"A-CAT-01": "fail", "A-KA-01": "pass"}
    reason = by_id(run)["A-CAT-01"].reason
    # Part 2 of the one-item-per-message answer: the second item of the first NVR.
    assert reason.startswith("items missing at the upper: 34020000002160101001")


@pytest.mark.timeout(30)
async def test_no_keepalive_fails_the_keepalive_case(run_device: RunDevice) -> None:
    # Told the period (nothing to learn it from): the case waits 3 × 0.5 s and a margin.
    run = await run_device(
        "A-KA or A-REG-01", case_timeout=4.0, suite={"keepalive_interval": 0.5}, no_keepalive=True
    )
    assert verdicts(run) == {"A-KA-01": "fail", "A-REG-01": "pass"}
    assert f"waiting for a keepalive from {DEVICE}" in by_id(run)["A-KA-01"].reason


@pytest.mark.timeout(30)
async def test_charset_lie_fails_the_charset_case(run_device: RunDevice) -> None:
    run = await run_device("R-CHARSET or A-CAT-01", charset_lie=True)
    assert verdicts(run) == {"R-CHARSET-01": "fail", "A-CAT-01": "pass"}
    assert 'declares encoding="GB2312" but the bytes are UTF-8' in by_id(run)["R-CHARSET-01"].reason


@pytest.mark.timeout(30)
async def test_wrong_sum_num_fails_catalog_and_record_search(run_device: RunDevice) -> None:
    run = await run_device("A-CAT-01 or B-REC", wrong_sum_num=7)
    assert verdicts(run) == {"A-CAT-01": "fail", "B-REC-02": "fail", "B-REC-01": "pass"}
    assert "SumNum says 7 items, 6 distinct items arrived" in by_id(run)["A-CAT-01"].reason
    assert "SumNum says 7 items, 3 distinct items arrived" in by_id(run)["B-REC-02"].reason
