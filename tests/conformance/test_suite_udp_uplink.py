"""The suite's catalog cases against a gateway whose uplink runs over UDP.

Over UDP a catalog item too large for a 1300-byte MESSAGE goes up over TCP, whole (RFC 3261
§18.1.1, 2022 Annex M), and small items still go in UDP batches: A-CAT-01 and N-CAT-01 see
every field as the devices sent it (2022's GrassrootsCode included), A-CAT-02 finds no catalog
MESSAGE over UDP above 1300 bytes, and R-LARGE-01 reads 500 channels completely.

The setup follows ``test_suite_cases.py``: an in-process :class:`~gateway.app.Gateway`, two
suite NVRs below it, the suite's upper platform above it on a port picked here.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from conformance.suite.harness import Harness
from conformance.suite.options import Options
from conformance.suite.runner import RunResult, run_suite
from gateway.app import Gateway
from tests.conftest import make_config

GW = "34020000002000000001"
DOMAIN = "3402000000"
UP = "34010000002000000001"
NVRS = ("34020000001180000101", "34020000001180000102")
SELECTED = {"A-CAT-01", "A-CAT-02", "A-CAT-03", "N-CAT-01", "R-LARGE-01"}
# R-LARGE-01 checks "over UDP, no MESSAGE above 1300 bytes" on every MESSAGE of the answer,
# the ones that came over TCP included (robustness.py measures ``res.raw`` without looking at
# the Via, as A-CAT-02 does), so a gateway that sends large ones over TCP as RFC 3261 §18.1.1
# asks fails there, and only there: the case's content checks (all 500 channels, every field as
# sent) come first. The trace check below does what the case means to.
CASE_DEFECTS = {"R-LARGE-01": "a catalog MESSAGE over UDP is too large"}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the suite's platform listens on both:
    the gateway's large MESSAGEs arrive over TCP)."""
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


def gateway_config(tmp_path: Path, upper_port: int) -> Any:
    upper = {
        "id": UP,
        "domain": UP[:10],
        "host": "127.0.0.1",
        "port": upper_port,
        "transport": "udp",
        "password": "12345678",
        "keepalive_interval": 0.5,
        "keepalive_timeout_count": 3,
        "retry_interval": 0.3,
        "gb_version": "2022",
    }
    return make_config(
        tmp_path,
        gateway={"id": GW, "domain": DOMAIN, "name": "测试网关", "civil_code": "340200"},
        keepalive={"interval": 1.0, "timeout_count": 3, "check_interval": 0.2},
        downlink={"response_timeout": 3.0, "idle_timeout": 0.5},
        uplink={"platforms": [upper]},
    )


def summary(run: RunResult) -> str:
    return "\n".join(
        f"{r.info.id} {r.verdict}: {r.reason} (expected {r.expected}, seen {r.seen})"
        for r in run.results
        if r.verdict != "pass"
    )


@pytest.mark.timeout(60)
async def test_catalog_cases_pass_over_a_udp_uplink(tmp_path: Path) -> None:
    upper = free_port()
    gw = Gateway(gateway_config(tmp_path, upper))
    await gw.start()
    closed = False

    async def close_gateway() -> None:
        # Before the suite's platform goes: the uplink must not be left dialling a lost upper
        # (see test_suite_cases.Gateways).
        nonlocal closed
        if not closed:
            closed = True
            await asyncio.wait_for(gw.close(), 15.0)

    class GatewayFirst(Harness):
        async def close(self) -> None:
            try:
                await close_gateway()
            finally:
                await super().close()

    options = Options(
        target_role="gateway",
        target_port=gw.port,
        target_id=GW,
        target_domain=DOMAIN,
        local_port=upper,
        suite_platform_id=UP,
        suite_domain=UP[:10],
        suite_device_ids=NVRS,
        register_timeout=10,
        case_timeout=20,
        edition="2022",
        select=("A-CAT or N-CAT or R-LARGE",),
    )
    try:
        run = await run_suite(options, harness_factory=lambda o: GatewayFirst(o))
    finally:
        await close_gateway()
    assert not run.run_error, run.run_error
    applicable = {r.info.id: r for r in run.results if not r.info.not_applicable(run.options)}
    assert set(applicable) >= SELECTED, sorted(applicable)
    failed = {
        k: r
        for k, r in applicable.items()
        if r.verdict != "pass" and not (k in CASE_DEFECTS and r.reason == CASE_DEFECTS[k])
    }
    assert not failed, summary(run)
    # What A-CAT-02 and R-LARGE-01 mean to see, from the suite's own trace: the catalog
    # Response MESSAGEs the upper received, none over 1300 bytes on UDP, the large ones on TCP.
    sizes: dict[str, list[int]] = {"udp": [], "tcp": []}
    for r in run.results:
        for e in r.trace:
            if (
                e.label == "platform"
                and e.direction == "received"
                and e.first_line.startswith("MESSAGE ")
                and b"<CmdType>Catalog</CmdType>" in e.data
                and b"<Response>" in e.data
            ):
                sizes[e.peer.partition(":")[0]].append(len(e.data))
    assert sizes["udp"] and max(sizes["udp"]) <= 1300, sizes["udp"]
    assert sizes["tcp"] and min(sizes["tcp"]) > 1300, sizes["tcp"]
    assert gw.metrics.get("uplink.sent_over_tcp") >= len(sizes["tcp"])
    assert gw.metrics.get("uplink.udp_oversize") == 0
    assert gw.metrics.get("uplink.tcp_failed") == 0
