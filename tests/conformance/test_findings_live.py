"""Findings from real runs: the suite reports the quirks a simulated peer is switched to show,
and none for a peer that shows none."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conformance.peers.platform import SimPlatform
from conformance.suite.operator import Action
from conformance.suite.options import Options
from conformance.suite.runner import RunResult, run_suite
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint
from gateway.sip.transaction import TimerConfig

PLATFORM_ID = "34020000002000000001"
DOMAIN = "3402000000"
NVR = "34020000001180000101"
PASSWORD = "12345678"


@pytest.fixture
async def target_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


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
async def test_a_platform_without_quirks_shows_none(target_endpoint: Endpoint) -> None:
    run = await run_against_platform(target_endpoint, "tcp")
    assert not run.run_error, run.run_error
    verdicts = {r.info.id: r.verdict for r in run.results}
    assert verdicts["R-QRK-02"] == "pass", verdicts
    assert quirks(run) == set()


@pytest.mark.timeout(60)
async def test_the_quirks_of_a_city_platform_are_findings(target_endpoint: Endpoint) -> None:
    run = await run_against_platform(
        target_endpoint,
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
