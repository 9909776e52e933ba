"""The cases of :mod:`conformance.suite.cases.more` run for real: mobile position (D-POS-01,
D-POS-02), the 2022 cruise, PTZ position and SD card queries (N-CRUISE-01, N-PTZPOS-01,
N-SD-01), precise PTZ (N-PPTZ-01) and the snapshot configuration (N-SNAP-01).

* ``device`` mode against a simulated device (which reports its position in a MobilePosition
  subscription every Interval seconds): every case passes, in 2022 and (the position cases)
  in 2016.
* ``gateway`` mode against an in-process :class:`~gateway.app.Gateway` with two simulated NVRs
  below it: every case passes.
* Misbehaving devices (:class:`Misbehaving`, one switch per case family) make their case fail
  with a message naming the problem; a device that says it lacks a feature (489, 501, Result
  ERROR) makes the case skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest

from conformance.peers.device import SimDevice
from conformance.suite.options import Options
from conformance.suite.runner import RunResult, run_suite
from gateway.manscdp import (
    Block,
    ConfigDownloadResponse,
    CruiseTrackListResponse,
    Decoded,
    DecodeError,
    Message,
    MobilePositionNotify,
    PtzPositionResponse,
    SDCard,
    SDCardStatusResponse,
)
from gateway.sip import Endpoint, Peer, Request, Response, ServerContext, make_response
from tests.conformance.test_suite_cases import (
    DEVICE,
    NVRS,
    Gateways,
    by_id,
    free_port,
    gateway_options,
    summary,
    verdicts,
)

MORE = ("D-POS-01", "D-POS-02", "N-CRUISE-01", "N-PPTZ-01", "N-PTZPOS-01", "N-SD-01", "N-SNAP-01")
SELECT = "D-POS or N-CRUISE or N-PTZPOS or N-PPTZ or N-SD-01 or N-SNAP"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class Misbehaving(SimDevice):
    """A simulated device with one misbehaviour per case family, chosen by ``breaks``:

    * ``latitude``: positions (subscription and one-shot answers) at Latitude 95.
    * ``notify_after_end``: keeps sending position NOTIFYs after the un-SUBSCRIBE.
    * ``no_reports``: accepts the MobilePosition subscription but never reports.
    * ``cruise_sum``: CruiseTrackList answers with SumNum one above the tracks listed.
    * ``pan``: PTZPosition answers Pan 400.
    * ``ignore_precise``: accepts PTZPreciseCtrl (200) but does not move.
    * ``free_space``: an SD card with more FreeSpace than Capacity.
    * ``snap_num``: the SnapShot configuration says SnapNum 0.
    * ``unsupported``: refuses the MobilePosition SUBSCRIBE (489) and SDCardStatus (501),
      answers PTZPosition with Result ERROR.
    """

    breaks: frozenset[str] = frozenset()

    def refuses(self, decoded: Decoded | DecodeError | None, cmd: str) -> bool:
        if "unsupported" not in self.breaks or not isinstance(decoded, Decoded):
            return False
        return cmd == decoded.message.CMD

    def on_subscribe(
        self, req: Request, ctx: ServerContext, decoded: Decoded | DecodeError | None
    ) -> Response:
        if self.refuses(decoded, "MobilePosition") and not req.to.tag:
            return make_response(req, 489, "Bad Event", to_tag=self.endpoint.tag())
        return super().on_subscribe(req, ctx, decoded)

    def on_message(
        self, req: Request, ctx: ServerContext, decoded: Decoded | DecodeError
    ) -> Response:
        if self.refuses(decoded, "SDCardStatus"):
            return make_response(req, 501, "Not Implemented", to_tag=self.endpoint.tag())
        position = self.ptz_position
        resp = super().on_message(req, ctx, decoded)
        if "ignore_precise" in self.breaks:
            self.ptz_position = position
        return resp

    def encode(self, msg: Message) -> bytes:
        b = self.breaks
        if isinstance(msg, MobilePositionNotify) and "latitude" in b:
            msg = replace(msg, latitude=95.0 if msg.latitude is not None else None,
                          items=tuple(replace(i, latitude=95.0) for i in msg.items))  # fmt: skip
        elif isinstance(msg, CruiseTrackListResponse) and "cruise_sum" in b:
            msg = replace(msg, sum_num=len(msg.items) + 1)
        elif isinstance(msg, PtzPositionResponse) and "pan" in b:
            msg = replace(msg, pan=400.0)
        elif isinstance(msg, PtzPositionResponse) and "unsupported" in b:
            msg = PtzPositionResponse(sn=msg.sn, device_id=msg.device_id, result="ERROR")
        elif isinstance(msg, SDCardStatusResponse) and "free_space" in b:
            card = SDCard(id=1, hdd_name="SD1", status="ok", format_progress=100,
                          capacity=1024.0, free_space=4096.0)  # fmt: skip
            msg = replace(msg, items=(card,))
        elif isinstance(msg, ConfigDownloadResponse) and msg.snap_shot and "snap_num" in b:
            block = Block(tag="SnapShot", children=(Block(tag="SnapNum", text="0"),
                                                    Block(tag="Interval", text="1")))  # fmt: skip
            msg = replace(msg, snap_shot=block)
        return super().encode(msg)


# -- running the suite --------------------------------------------------------------------------
RunDevice = Callable[..., Awaitable[RunResult]]


@pytest.fixture
async def run_device(device_endpoint: Endpoint) -> AsyncIterator[RunDevice]:
    """Run the suite in device mode against a reporting (or misbehaving) simulated IPC with
    two channels, selecting ``select`` (default: this module's cases)."""

    async def run(
        select: str = SELECT,
        *,
        edition: str = "2022",
        breaks: frozenset[str] = frozenset(),
        case_timeout: float = 20.0,
    ) -> RunResult:
        port = free_port()
        cls = Misbehaving if breaks else SimDevice
        dev = cls(device_endpoint, DEVICE, Peer("udp", "127.0.0.1", port), channel_count=2,
                  gb_version="3.0" if edition == "2022" else None)  # fmt: skip
        if isinstance(dev, Misbehaving):
            dev.breaks = breaks
            dev.reports_after_end = "notify_after_end" in breaks
            dev.no_position_reports = "no_reports" in breaks
        hub = dev.install()
        dev.start_keepalive(0.5)
        options = Options(
            target_role="device",
            target_id=DEVICE,
            local_port=port,
            register_timeout=10,
            case_timeout=case_timeout,
            edition=edition,
            select=(select,),
        )
        try:
            return await run_suite(options)
        finally:
            await hub.close()

    yield run


@pytest.mark.timeout(30)
async def test_reporting_device_passes_every_case_2022(run_device: RunDevice) -> None:
    run = await run_device()
    assert verdicts(run) == dict.fromkeys(MORE, "pass"), summary(run)
    steps = " ".join(s.text for s in by_id(run)["D-POS-01"].steps)
    assert "no NOTIFY in the 3 s after the un-SUBSCRIBE" in steps


@pytest.mark.timeout(30)
async def test_2016_flat_answer_passes_and_2022_cases_do_not_apply(run_device: RunDevice) -> None:
    """2016: the one-shot answer in the flat form passes; the 2022-only cases do not apply.
    (The flat NOTIFY form is judged in gateway mode: the gateway relays in that form.)"""
    run = await run_device(f"({SELECT}) and not D-POS-01", edition="2016")
    assert verdicts(run) == {"D-POS-02": "pass"}, summary(run)
    assert {r.info.id for r in run.results} == set(MORE) - {"D-POS-01"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("breaks", "select", "failed", "message"),
    [
        ("latitude", "D-POS", {"D-POS-01", "D-POS-02"}, "Latitude 95.0 outside -90..90"),
        ("notify_after_end", "D-POS-01", {"D-POS-01"},
         "a NOTIFY came after the subscription was ended"),
        ("no_reports", "D-POS-01", {"D-POS-01"}, "no NOTIFY within"),
        ("cruise_sum", "N-CRUISE", {"N-CRUISE-01"}, "SumNum 3 with 2 items in <CruiseTrackList>"),
        ("pan", "N-PTZPOS", {"N-PTZPOS-01"}, "Pan 400.0 outside 0..360"),
        ("ignore_precise", "N-PPTZ or N-PTZPOS", {"N-PPTZ-01"},
         "PTZPosition does not reflect PTZPreciseCtrl"),
        ("free_space", "N-SD-01", {"N-SD-01"}, "FreeSpace 4096.0 above Capacity 1024.0"),
        ("snap_num", "N-SNAP", {"N-SNAP-01"}, "SnapNum 0 (1..10)"),
    ],
)  # fmt: skip
async def test_misbehaviour_fails_its_case(
    run_device: RunDevice, breaks: str, select: str, failed: set[str], message: str
) -> None:
    run = await run_device(select, breaks=frozenset({breaks}))
    seen = verdicts(run)
    assert {k for k, v in seen.items() if v == "fail"} == failed, summary(run)
    assert all(v == "pass" for k, v in seen.items() if k not in failed), summary(run)
    for case_id in failed:
        assert message in by_id(run)[case_id].reason, by_id(run)[case_id].reason


@pytest.mark.timeout(30)
async def test_a_missing_feature_skips(run_device: RunDevice) -> None:
    """489 to the SUBSCRIBE, 501 to the query, Result ERROR: skipped, saying what came."""
    run = await run_device("D-POS-01 or N-SD-01 or N-PTZPOS", breaks=frozenset({"unsupported"}))
    assert verdicts(run) == dict.fromkeys(("D-POS-01", "N-PTZPOS-01", "N-SD-01"), "skip")
    reasons = {k: r.reason for k, r in by_id(run).items()}
    assert "489 Bad Event" in reasons["D-POS-01"]
    assert "501 Not Implemented" in reasons["N-SD-01"]
    assert "Result ERROR" in reasons["N-PTZPOS-01"]


# -- gateway mode -----------------------------------------------------------------------------
@pytest.mark.timeout(60)
async def test_gateway_passes_every_case(gateways: Gateways) -> None:
    """The cases against an in-process gateway (2022, uplink over TCP) with two suite NVRs
    below it: what the devices answer reaches the upper whole, and a position subscription
    carries only the device it names."""
    upper = free_port()
    gw = await gateways.start(upper)
    options = gateway_options(
        gw,
        upper,
        case_timeout=20,
        select=(SELECT,),
    )
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert verdicts(run) == dict.fromkeys(MORE, "pass"), summary(run)


@pytest.mark.timeout(60)
async def test_d_pos_01_through_a_gateway_that_subscribes_to_positions(
    gateways: Gateways,
) -> None:
    """The gateway holds position subscriptions to the devices below, which report by
    themselves: the case still judges what the moving device sent, and the gateway passes."""
    upper = free_port()
    gw = await gateways.start(upper, downlink={"mobile_position_subscription": True})
    options = gateway_options(gw, upper, select=("D-POS-01",))
    run = await run_suite(options, harness_factory=gateways.harness(gw))
    assert verdicts(run) == {"D-POS-01": "pass"}, summary(run)
    assert gw.metrics.get("subscribe.ok") >= 2 * len(NVRS)  # catalog and position, each NVR
