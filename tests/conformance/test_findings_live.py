"""Findings from real runs: the suite reports the quirks a simulated peer is switched to show,
and none for a peer that shows none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.peers.platform import SimPlatform
from conformance.suite.operator import Action
from conformance.suite.options import Options
from conformance.suite.report import summary_table
from conformance.suite.runner import RunResult, run_suite
from gateway.sip.endpoint import Endpoint

PLATFORM_ID = "34020000002000000001"
DOMAIN = "3402000000"
NVR = "34020000001180000101"
PASSWORD = "12345678"


async def run_against_platform(ep: Endpoint, transport: str, **switches: object) -> RunResult:
    """The suite in platform mode (its NVR registers to the target) against a SimPlatform with
    ``switches``: R-QRK-02 (a new Call-ID) and D-PINFO-01, whose operator makes the target
    query the NVR."""
    target = SimPlatform(ep, platform_id=PLATFORM_ID, domain=DOMAIN, password=PASSWORD)
    for name, value in switches.items():
        setattr(target, name, value)
    target.start()

    async def operator(action: Action) -> None:
        if action.name == "device-info":
            await target.device_info(action.params.get("device", action.target), action.target)
        elif action.name == "device-status":
            await target.device_status(action.params.get("device", action.target), action.target)

    options = Options(
        target_role="platform",
        target_port=ep.port,
        target_id=PLATFORM_ID,
        target_domain=DOMAIN,
        password=PASSWORD,
        transport=transport,
        suite_device_ids=(NVR,),
        register_timeout=10,
        case_timeout=20,
        edition="2022",
        select=("R-QRK-02 or D-PINFO-01",),
    )
    try:
        return await run_suite(options, operator=operator)
    finally:
        await target.close()


def quirks(run: RunResult) -> set[str]:
    return {f.quirk for f in run.findings}


@pytest.mark.timeout(60)
async def test_a_platform_without_quirks_shows_none(device_endpoint: Endpoint) -> None:
    run = await run_against_platform(device_endpoint, "tcp")
    assert not run.run_error, run.run_error
    verdicts = {r.info.id: r.verdict for r in run.results}
    assert verdicts["R-QRK-02"] == "pass", verdicts
    assert quirks(run) == set()


@pytest.mark.timeout(60)
async def test_the_quirks_of_a_city_platform_are_findings(device_endpoint: Endpoint) -> None:
    run = await run_against_platform(
        device_endpoint,
        "tcp",
        bare_register_ok=True,
        no_max_forwards=True,
        refuse_new_call_id=True,
        requests_over_udp=True,
    )
    assert not run.run_error, run.run_error
    assert {
        "register-200-without-to-tag",
        "register-200-without-contact",
        "request-without-max-forwards",
        "register-500-new-call-id",
        "udp-request-to-tcp-registration",
    } <= quirks(run), [f.as_dict() for f in run.findings]
    by_quirk = {f.quirk: f for f in run.findings}
    # Findings are not verdicts: R-QRK-02 passes (the old Call-ID is still taken), and the
    # finding names the case that provoked it.
    assert {r.info.id: r.verdict for r in run.results}["R-QRK-02"] == "pass"
    assert by_quirk["register-500-new-call-id"].case == "R-QRK-02"
    assert by_quirk["register-500-new-call-id"].evidence


DEVICE = "34020000001320000001"


async def run_against_device(
    ep: Endpoint,
    *select: str,
    transport: str = "udp",
    report_dir: Path | None = None,
    **switches: object,
) -> RunResult:
    """The suite in device mode against a SimDevice (keepalive every 0.5 s, the suite grants
    4 s registrations) with ``switches``, running the cases ``select`` picks."""
    from conformance.peers.device import SimDevice
    from gateway.sip.transport import Peer
    from tests.conformance.test_suite_cases import free_port

    port = free_port()
    settings: dict[str, object] = {"channel_count": 2, "gb_version": "3.0", "audio_outputs": 0}
    settings.update(switches)
    dev = SimDevice(ep, DEVICE, Peer(transport, "127.0.0.1", port), **settings)  # type: ignore[arg-type]
    hub = dev.install()
    dev.start_keepalive(0.5)
    options = Options(
        target_role="device",
        target_id=DEVICE,
        local_port=port,
        transport=transport,
        register_timeout=10,
        case_timeout=20,
        edition="2022",
        grant_expires=4,
        keepalive_interval=0.5,
        select=select,
        report_dir=None if report_dir is None else str(report_dir),
    )
    try:
        return await run_suite(options)
    finally:
        await hub.close()


DEVICE_CASES = ("A-REG-04 or D-INFO-01 or A-CAT-01 or A-PTZ-01 or N-SUB-01 or A-LIVE-01",)


@pytest.mark.timeout(90)
async def test_a_device_without_quirks_shows_none(device_endpoint: Endpoint) -> None:
    run = await run_against_device(device_endpoint, *DEVICE_CASES)
    assert not run.run_error, run.run_error
    assert quirks(run) == set(), [f.as_dict() for f in run.findings]


@pytest.mark.timeout(90)
async def test_the_quirks_of_a_field_device_are_findings(
    device_endpoint: Endpoint, tmp_path: Path
) -> None:
    run = await run_against_device(
        device_endpoint,
        *DEVICE_CASES,
        content_length_chars=True,
        ptz_response=True,
        no_parent_id=True,
        subscribe_mute=True,
        long_y=True,
        ok_without_to_tag=True,
        register_to_domain=True,
        address_request_uri=True,
        unsolicited_sn1=True,
        no_refresh=True,
        report_dir=tmp_path,
    )
    assert not run.run_error, run.run_error
    assert {
        "content-length-in-characters",
        "ptz-control-response",
        "catalog-item-without-parentid",
        "subscribe-unanswered",
        "ssrc-not-10-digits",
        "invite-200-without-to-tag",
        "invite-200-with-callers-contact",
        "register-to-domain-uri",
        "request-uri-ip-port",
        "unsolicited-response",
        "register-never-refreshed",
    } <= quirks(run), [f.as_dict() for f in run.findings]
    assert all(f.side == "device" for f in run.findings)
    # The reports carry them, apart from the verdicts.
    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {f["quirk"] for f in data["findings"]} == quirks(run)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert 'id="findings"' in html and "content-length-in-characters" in html
    assert "register-never-refreshed" in summary_table(run)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("case", "switches", "quirk"),
    [
        ("A-LIVE-03", {"answer_transport": "tcp-active"}, "sdp-setup-ignores-offer"),
        ("A-LIVE-01", {"echo_offer_address": True}, "sdp-answer-copies-offer"),
        ("A-LIVE-02", {"answer_transport": "udp"}, "sdp-udp-answer-to-tcp-offer"),
    ],
)
async def test_media_answers_that_bend_the_offer_are_findings(
    device_endpoint: Endpoint, case: str, switches: dict[str, object], quirk: str
) -> None:
    run = await run_against_device(device_endpoint, case, **switches)
    assert not run.run_error, run.run_error
    assert quirk in quirks(run), [f.as_dict() for f in run.findings]
    (finding,) = [f for f in run.findings if f.quirk == quirk]
    assert finding.case == case


@pytest.mark.timeout(60)
@pytest.mark.parametrize("drops", [False, True])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_a_device_that_drops_pipelined_requests_is_found_by_r_qrk_01(
    device_endpoint: Endpoint, drops: bool, transport: str
) -> None:
    """Over TCP the two requests go on the device's own connection; a device registered over
    UDP gets them on a TCP connection the case opens to it."""
    run = await run_against_device(
        device_endpoint, "R-QRK-01", transport=transport, drop_pipelined=drops
    )
    # A finding, not a verdict: the case passes either way.
    assert {r.info.id: r.verdict for r in run.results}["R-QRK-01"] == "pass"
    assert quirks(run) == ({"drops-pipelined-request"} if drops else set())
