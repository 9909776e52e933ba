"""Voice broadcast, the device side (GB/T 28181-2022 §9.12; reference §6.8).

An upper sends ``Notify/Broadcast`` naming an audio output channel. The gateway forwards it to
the device that owns the channel (:meth:`VoiceBroadcast.notify_device`) and waits for that
device's INVITE for the audio (:meth:`VoiceBroadcast.on_invite`). When it comes, the gateway
INVITEs the upper, the audio's source, into a relay stream (a :data:`BROADCAST` leg) and
answers the device with the relay's sending side (the leg's one output).

What talks to the upper (its Broadcast MESSAGE, the INVITE to it) is the uplink's. This module
reaches it only through :class:`AudioSource`, which the composition root gives it: the downlink
never imports the uplink.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.downlink.downlink import Downlink, QueryError
from gateway.manscdp import BroadcastNotify, BroadcastResponse
from gateway.media import (
    BROADCAST,
    OPPOSITE,
    SDP_TYPE,
    Leg,
    MediaError,
    Sdp,
    SdpError,
    SessionTable,
    Transport,
    answer_setup,
    parse_sdp,
)
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.sip import Dialog, Endpoint, Peer, Request, Response, ServerContext

log = structlog.get_logger("gateway.downlink.broadcast")

EXPECT_INVITE_FOR = 30.0
"""Seconds a forwarded broadcast waits for the device's INVITE (§9.12 sets no figure)."""


class AudioSource(Protocol):
    """The upper side of a voice broadcast, as the device side needs it."""

    def audio_transport(self, upper_id: str) -> Transport | None:
        """How to take ``upper_id``'s audio in, or ``None`` while that upper is offline."""
        ...

    async def invite_for_audio(
        self, leg: Leg[Dialog], target: PendingBroadcast, device_offer: Sdp
    ) -> None:
        """INVITE the upper for the audio into ``leg``'s open relay stream, in the formats the
        device offered; fills ``leg.dialog`` and ``leg.answer``. Raises :class:`MediaError`."""
        ...


@dataclass(slots=True)
class PendingBroadcast:
    """A broadcast forwarded to a device, waiting for the device's INVITE."""

    upper_id: str
    source_id: str  # the upper's SourceID (whom the device's INVITE is really for)
    target_id: str  # the output channel as the upper knows it
    local_target: str
    expires_at: float


class VoiceBroadcast:
    def __init__(
        self,
        *,
        gateway_id: str,
        endpoint: Endpoint,
        downlink: Downlink,
        media: SessionTable[Dialog],
        upper: AudioSource,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.endpoint = endpoint
        self.downlink = downlink
        self.media = media
        self.upper = upper
        self.metrics = metrics
        self.clock = clock
        self._pending: dict[str, PendingBroadcast] = {}  # by the local output channel

    def _fail(self, req: Request, status: int, reason: str, **context: Any) -> Response:
        self.metrics.inc(f"media.invite.refused.{status}")
        log.info("invite.refused", call_id=req.call_id, status=status, reason=reason, **context)
        return self.endpoint.answer(req, status, reason)

    def media_host(self, peer: Peer) -> str:
        """The address written into SDP for a peer: configured, or the one facing it."""
        return self.media.advertised_host() or self.endpoint.local_host(peer)

    # -- the broadcast notification ---------------------------------------------------------
    def expect(self, local_target: str, *, upper_id: str, source_id: str, target_id: str) -> None:
        """An upper asked for a broadcast to ``local_target``: its device's INVITE is due."""
        self._pending[local_target] = PendingBroadcast(
            upper_id=upper_id,
            source_id=source_id,
            target_id=target_id,
            local_target=local_target,
            expires_at=self.clock() + EXPECT_INVITE_FOR,
        )

    async def notify_device(self, owner: str, local_target: str) -> str:
        """Forward the broadcast to the device ``owner`` (the gateway is the source it names)
        and return the device's ``Result``; anything but ``OK`` drops the expectation."""
        down = BroadcastNotify(
            sn=0, device_id=local_target, source_id=self.gateway_id, target_id=local_target
        )
        result = "ERROR"
        try:
            res = await self.downlink.query(owner, down)
            answer = res.response
            if isinstance(answer, BroadcastResponse) and answer.result:
                result = answer.result
        except QueryError as exc:
            log.info("broadcast.failed", target=local_target, error=str(exc))
            self.metrics.inc("media.broadcast.failed")
        if result != "OK":
            self._pending.pop(local_target, None)
        return result

    def _find(self, dev: Device, req: Request) -> PendingBroadcast | None:
        """The broadcast the device's INVITE answers: named in From or in the Subject, and
        expected of this very device."""
        now = self.clock()
        for key, old in list(self._pending.items()):
            if old.expires_at < now:
                del self._pending[key]
        candidates = [req.from_.uri.user or ""]
        subject = req.get_header("Subject") or ""
        for part in subject.split(","):
            candidates.append(part.split(":")[0].strip())
        for cand in candidates:
            pending = self._pending.get(cand)
            if pending is not None and self.downlink.device(cand) is dev:
                return pending
        return None

    # -- the device's INVITE for audio ------------------------------------------------------
    async def on_invite(self, dev: Device, req: Request, ctx: ServerContext) -> Response:
        """The device asks for the broadcast audio: INVITE the upper for it (we receive), then
        answer the device with the relay's sending side."""
        pending = self._find(dev, req)
        if pending is None:
            return self._fail(req, 404, "Not Found (no voice broadcast pending for this device)")
        transport = self.upper.audio_transport(pending.upper_id)
        if transport is None:
            return self._fail(req, 480, "Temporarily Unavailable (upper platform offline)")
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            return self._fail(req, 488, f"Not Acceptable Here ({exc.reason})")
        del self._pending[pending.local_target]
        leg = self.media.add_leg(BROADCAST, pending.source_id, transport, upper_id=pending.upper_id)
        leg.waiters += 1
        try:
            try:
                await self.media.open_leg(leg, history=False)
                # The device hears the audio under the SSRC of the gateway's own leg.
                out = await self.media.add_output(
                    leg,
                    OPPOSITE[offer.transport],
                    (offer.host, offer.port),
                    leg.ssrc,
                    history=False,
                    device_id=dev.device_id,
                )
                await self.upper.invite_for_audio(leg, pending, offer)
                self.media.mark_ready(leg)
            except MediaError as exc:
                self.media.end_leg(leg, f"setup failed: {exc.reason}")
                return self._fail(req, exc.status, exc.reason)
        except asyncio.CancelledError:
            self.media.end_leg(leg, "cancelled")
            raise
        finally:
            leg.waiters -= 1
        local_tag = self.endpoint.tag()
        out.target_id = pending.local_target
        out.dialog = Dialog.as_uas(req, local_tag, ctx.peer)
        self.media.bind_output(out, req.call_id)
        up = leg.answer or Sdp()
        answer = Sdp(
            origin_user=self.gateway_id,
            origin_host=self.media_host(ctx.peer),
            session=offer.session,
            host=self.media_host(ctx.peer),
            media=offer.media,
            port=out.port,
            proto=offer.proto,
            formats=up.formats or offer.formats or [8],
            rtpmap=up.rtpmap or offer.rtpmap or {8: "PCMA/8000"},
            direction="sendonly",
            setup=answer_setup(offer),
            ssrc=out.ssrc,
            media_info=up.media_info,
        )
        self.metrics.inc("media.broadcast.ok")
        log.info(
            "broadcast.answered",
            device_id=dev.device_id,
            upper=pending.upper_id,
            call_id=req.call_id,
        )
        return self.endpoint.answer(
            req,
            200,
            "OK",
            to_tag=local_tag,
            headers=[
                ("Contact", f"<{self.endpoint.contact_uri(self.gateway_id, ctx.peer)}>"),
                ("Content-Type", SDP_TYPE),
            ],
            body=answer.to_bytes(),
        )
