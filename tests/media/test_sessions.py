from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conformance.peers.platform import RequestFailed
from gateway.media import (
    DOWNLOAD,
    PLAY,
    Leg,
    LegStats,
    MediaError,
    PortsExhausted,
    SessionTable,
    StreamStats,
    Transport,
    is_ready,
)
from gateway.metrics import Metrics
from gateway.settings import MediaSection
from tests.conftest import wait_for
from tests.media.rig import FRAMES, device_session

pytestmark = pytest.mark.timeout(60)

DOMAIN = "3402000000"


class FakeRelay:
    """The :class:`~gateway.media.relay.Relay` interface over dictionaries: streams, outputs,
    a pool of ``ports`` ports."""

    def __init__(self, ports: int = 10) -> None:
        self.ports = ports
        self.streams: dict[str, set[str]] = {}
        self.last_packet_at: float | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.streams.clear()

    def _take(self) -> int:
        if self.ports_free() == 0:
            raise PortsExhausted("no port")
        return 40000 + 2 * (len(self.streams) + sum(map(len, self.streams.values())))

    async def open_stream(
        self,
        stream_id: str,
        transport: Transport,
        *,
        idle_timeout: float,
        remote: tuple[str, int] | None = None,
    ) -> int:
        port = self._take()
        self.streams[stream_id] = set()
        return port

    async def connect_stream(self, stream_id: str, remote: tuple[str, int]) -> None:
        pass

    async def settle_input(self, stream_id: str, transport: Transport) -> None:
        pass

    async def holds_port(self, port: int) -> bool:
        return False

    async def add_output(
        self,
        stream_id: str,
        output_id: str,
        transport: Transport,
        *,
        remote: tuple[str, int] | None,
        ssrc: int,
    ) -> int:
        port = self._take()
        self.streams[stream_id].add(output_id)
        return port

    async def remove_output(self, stream_id: str, output_id: str) -> None:
        self.streams.get(stream_id, set()).discard(output_id)

    async def close_stream(self, stream_id: str) -> None:
        self.streams.pop(stream_id, None)

    async def stats(self, stream_id: str) -> StreamStats:
        leg = LegStats(0, 0, 0, 0, 0.0, self.last_packet_at, None, None, 0)
        return StreamStats(stream_id, leg, [], 0)

    def ports_free(self) -> int:
        return self.ports - len(self.streams) - sum(map(len, self.streams.values()))


class Table:
    """A session table over a fake relay; the dialogs are strings and BYEs are recorded."""

    def __init__(self, ports: int = 10, **media: Any) -> None:
        self.relay = FakeRelay(ports)
        self.byes: list[str] = []
        self.metrics = Metrics()
        self.table: SessionTable[str] = SessionTable(
            media=MediaSection(**media),
            domain=DOMAIN,
            relay=self.relay,
            metrics=self.metrics,
            hang_up=self.hang_up,
        )

    async def hang_up(self, dialog: str) -> None:
        self.byes.append(dialog)

    def leg(self, kind: str = PLAY, channel: str = "34020000001310000001") -> Leg[str]:
        leg = self.table.add_leg(kind, channel, "udp", device_id="34020000001180000001")

        async def answer(leg: Leg[str]) -> None:
            leg.dialog = f"dialog-{leg.key}"
            self.table.bind_leg(leg, f"call-{leg.key}")

        self.table.start_leg(leg, answer)
        return leg

    async def at_rest(self) -> None:
        t = self.table
        await wait_for(
            lambda: (
                not t.legs
                and not t.legs_by_call
                and not t.outputs_by_call
                and t.ssrcs.in_use() == 0
                and not self.relay.streams
            ),
            5,
            "table empty, SSRCs and relay streams freed",
        )


# -- over a fake relay -------------------------------------------------------------------------
async def test_a_live_leg_is_shared_and_ends_with_its_last_output() -> None:
    t = Table()
    leg = t.leg()
    first = await t.table.join(leg, "udp", ("127.0.0.1", 9000), "0200000001", history=False)
    assert is_ready(leg) and t.table.live_leg(leg.source_id) is leg
    assert leg.ssrc[0] == "0" and leg.ssrc[1:6] == DOMAIN[3:8]
    second = await t.table.join(
        t.table.live_leg(leg.source_id) or leg, "tcp-passive", None, None, history=False
    )
    assert second.ssrc[0] == "0" and second.owned_ssrc and second.remote is None
    assert set(leg.outputs) == {first.output_id, second.output_id}
    assert t.relay.streams[leg.key] == {first.output_id, second.output_id}
    t.table.end_output(first, "BYE from the receiver", bye=False)
    assert not leg.ended
    await wait_for(lambda: t.relay.streams[leg.key] == {second.output_id}, 5, "output removed")
    second.dialog = "upper-dialog"
    t.table.end_output(second, "BYE from the receiver", bye=True)
    assert leg.ended and leg.end_reason == "no receiver left"
    assert t.table.live_leg(leg.source_id) is None
    await t.at_rest()
    # The receiver's BYE came in (no BYE back), the device leg is BYEd in its own dialog.
    assert sorted(t.byes) == sorted(["upper-dialog", f"dialog-{leg.key}"])


async def test_ending_a_leg_byes_every_output_and_frees_everything() -> None:
    t = Table()
    leg = t.leg(DOWNLOAD)
    out = await t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=True)
    assert out.ssrc[0] == "1" and leg.ssrc[0] == "1"  # history SSRCs
    out.dialog = "upper-dialog"
    t.table.bind_output(out, "upper-call")
    assert t.table.legs_by_call[f"call-{leg.key}"] is leg
    assert t.table.outputs_by_call["upper-call"] is out
    assert t.table.live_leg(leg.source_id) is None  # only live legs are shared
    task = t.table.end_leg(leg, "BYE from the sender", bye=False)
    assert task is not None and t.table.end_leg(leg, "again") is None
    await task
    await t.at_rest()
    assert t.byes == ["upper-dialog"]
    assert t.metrics.get("media.leg.ended") == 1 and t.metrics.get("media.output.ended") == 1


async def test_a_failed_set_up_fails_every_waiter_and_ends_the_leg() -> None:
    t = Table()
    leg = t.table.add_leg(PLAY, "34020000001310000001", "udp")

    async def refuse(leg: Leg[str]) -> None:
        raise MediaError(486, "Busy Here (device refused: 486 Busy Here)")

    t.table.start_leg(leg, refuse)
    with pytest.raises(MediaError) as info:
        await t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=False)
    assert info.value.status == 486 and "device refused" in info.value.reason
    assert leg.ended and leg.end_reason.startswith("setup failed")
    await t.at_rest()
    assert t.byes == []


async def test_no_port_free_is_486_and_gives_the_ssrc_back() -> None:
    t = Table(ports=1)  # the leg's stream takes the only port
    leg = t.leg()
    with pytest.raises(MediaError) as info:
        await t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=False)
    assert info.value.status == 486 and "port" in info.value.reason
    await t.at_rest()


async def test_idle_before_the_answer_is_checked_again_after_it() -> None:
    t = Table(rtp_timeout=0.05)
    leg = t.table.add_leg(PLAY, "34020000001310000001", "udp")
    answered = asyncio.Event()

    async def slow(leg: Leg[str]) -> None:
        t.table.on_relay_event(leg.key, None, "idle")  # the stream idles before the answer
        await answered.wait()

    t.table.start_leg(leg, slow)
    joined = asyncio.ensure_future(
        t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=False)
    )
    await wait_for(lambda: leg.idle_early, 5, "idle reported early")
    assert not leg.ended  # the INVITE timeout governs until the answer
    answered.set()
    await joined
    # No packet since: one rtp_timeout after the answer the leg ends.
    await wait_for(lambda: leg.ended, 5, "leg ended for no RTP")
    assert leg.end_reason == "no RTP"
    assert t.metrics.get("media.relay.idle") == 1
    await t.at_rest()


async def test_relay_events_end_an_output_or_the_leg() -> None:
    t = Table()
    leg = t.leg()
    first = await t.table.join(leg, "tcp-passive", None, None, history=False)
    second = await t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=False)
    first.dialog = "first-dialog"
    t.table.on_relay_event(leg.key, first.output_id, "closed")  # its TCP connection closed
    assert first.ended and not leg.ended
    t.table.on_relay_event(leg.key, None, "idle")
    assert second.ended and leg.ended and leg.end_reason == "no RTP"
    t.table.on_relay_event("unknown", None, "idle")  # a stream already gone: ignored
    await t.at_rest()
    assert sorted(t.byes) == sorted(["first-dialog", f"dialog-{leg.key}"])


async def test_device_and_upper_offline_end_their_sessions_without_bye() -> None:
    t = Table()
    leg = t.leg()
    out = await t.table.join(leg, "udp", ("127.0.0.1", 9000), None, history=False)
    out.upper_id, out.dialog = "34010000002000000001", "upper-dialog"
    t.table.bind_output(out, "upper-call")
    other = t.leg(channel="34020000001310000002")
    kept = await t.table.join(other, "udp", ("127.0.0.1", 9002), None, history=False)
    t.table.end_upper("34010000002000000001", "upper offline (keepalive)")
    assert out.ended and leg.ended and not other.ended  # the leg ended with its last output
    t.table.end_device("34020000001180000001", "device offline (unregistered)")
    assert kept.ended and other.ended
    await t.at_rest()
    # Nobody offline is BYEd: only the device leg that lost its last receiver to the upper.
    assert t.byes == [f"dialog-{leg.key}"]


async def test_close_ends_every_leg_and_the_snapshot_shows_them() -> None:
    t = Table(advertised_host="192.0.2.1")
    assert t.table.advertised_host() == "192.0.2.1"
    leg = t.leg()
    out = await t.table.join(leg, "udp", ("127.0.0.1", 9000), "0200000001", history=False)
    [snap] = t.table.snapshot()
    assert snap["key"] == leg.key and snap["kind"] == PLAY and snap["ready"] is True
    assert [o["id"] for o in snap["outputs"]] == [out.output_id]
    await t.table.close()
    assert not t.table.legs and t.byes == [f"dialog-{leg.key}"]


def test_device_transport_per_channel_then_device_then_default() -> None:
    t = Table(
        device_transport="tcp-passive",
        device_transports={"34020000001310000001": "udp", "34020000001180000002": "tcp-active"},
    )
    assert t.table.device_transport("34020000001180000001", "34020000001310000001") == "udp"
    assert t.table.device_transport("34020000001180000002", "34020000001310000009") == (
        "tcp-active"
    )
    assert t.table.device_transport("34020000001180000003", "34020000001310000009") == (
        "tcp-passive"
    )
    assert Table(host="0.0.0.0").table.advertised_host() == ""
    assert Table(host="10.0.0.5").table.advertised_host() == "10.0.0.5"


# -- end to end ---------------------------------------------------------------------------------
async def test_two_uppers_sessions_share_one_device_invite(rig_factory) -> None:
    rig = await rig_factory(live_frames=None)  # an endless live stream
    first = await rig.invite()
    second = await rig.invite(transport="tcp-passive")
    assert len(rig.nvr.invites) == 1  # the device is INVITEd once (Annex L)
    assert first.answer.port != second.answer.port
    await first.receiver.wait_frames(10)
    await second.receiver.wait_frames(10)
    assert first.receiver.ssrcs == {int(first.offered_ssrc)}
    assert second.receiver.ssrcs == {int(second.offered_ssrc)}
    # The first viewer leaves: the second keeps receiving, the device is not BYEd.
    await first.bye()
    before = second.receiver.decoded
    await second.receiver.wait_frames(before + 10)
    assert not device_session(rig).ended
    await second.bye()
    await rig.at_rest()
    assert device_session(rig).ended


async def test_port_pool_empty_is_486(rig_factory) -> None:
    # Two even ports: one for the device leg, one for the first upper; the next viewer of
    # another channel finds none.
    rig = await rig_factory(media={"port_min": 47300, "port_max": 47303}, live_frames=None)
    call = await rig.invite()
    with pytest.raises(RequestFailed) as info:
        await rig.invite(channel=rig.nvr.channel_id(2))
    assert info.value.status == 486 and "port" in info.value.reason
    await call.bye()
    await rig.at_rest()


async def test_no_rtp_ends_both_legs(rig_factory) -> None:
    rig = await rig_factory(media_mute=True, media={"rtp_timeout": 1.0})
    call = await rig.invite()
    await asyncio.wait_for(call.ended.wait(), 8)
    assert call.ended_by == "lower"
    await rig.at_rest()
    assert device_session(rig).ended
    assert rig.gw.metrics.get("media.relay.idle") >= 1


async def test_stream_stopping_ends_both_legs(rig_factory) -> None:
    rig = await rig_factory(live_frames=FRAMES, media={"rtp_timeout": 1.0})
    call = await rig.invite()
    assert await call.receiver.wait_frames(FRAMES) >= FRAMES
    await asyncio.wait_for(call.ended.wait(), 8)
    await rig.at_rest()


# -- the scaled-out relay ----------------------------------------------------------------------
async def test_relay_in_worker_processes(rig_factory) -> None:
    rig = await rig_factory(media={"workers": 2}, live_frames=None)
    first = await rig.invite()
    second = await rig.invite(channel=rig.nvr.channel_id(2), transport="tcp-passive")
    assert await first.receiver.wait_frames(FRAMES) >= FRAMES
    assert await second.receiver.wait_frames(FRAMES) >= FRAMES
    assert first.receiver.ssrcs == {int(first.offered_ssrc)}
    pids = rig.media.relay.worker_pids()  # type: ignore[attr-defined]
    assert len(pids) == 2
    await first.bye()
    await second.bye()
    await rig.at_rest()
