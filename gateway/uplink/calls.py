"""Calls from the uppers: the gateway as a back-to-back user agent between uppers and devices.

GB/T 28181-2022 §9.2 (live view), §9.8–§9.9 (playback, download, MANSRTSP over INFO), §9.12
(voice broadcast, the upper's part), Annex H (``X-RoutePath``), Annex K (media keep-alive);
reference §6 and §7.4.

An upper INVITEs one of the channels shared with it; the gateway INVITEs the device that owns
the channel (or joins the channel's running live leg) and answers the upper with a relay output
(:class:`Calls`). In-dialog requests follow: BYE ends a side, CANCEL stops a set-up, ACK is
absorbed, INFO carries MANSRTSP to the device, and a device's MediaStatus (end of file) goes to
the upper in its own dialog. The session table itself (:mod:`gateway.media.sessions`) is
bookkeeping; this module is the signalling around it.

The gateway's one INVITE route is here. An INVITE from a registered device is its request for
the audio of a voice broadcast and goes to the device side
(:class:`~gateway.downlink.broadcast.VoiceBroadcast`), which calls back into
:class:`UpperAudio` to INVITE the upper for that audio.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from gateway.downlink import Downlink, PendingBroadcast, VoiceBroadcast
from gateway.events import DeviceOffline, EventBus, MediaStatusReceived, UpperOffline
from gateway.manscdp import BroadcastNotify, BroadcastResponse, Decoded, MediaStatus
from gateway.media import (
    DOWNLOAD,
    OPPOSITE,
    PLAY,
    PLAYBACK,
    SDP_TYPE,
    Leg,
    LocalSession,
    MediaError,
    Output,
    Sdp,
    SdpError,
    SessionTable,
    Transport,
    answer_setup,
    offer_setup,
    parse_sdp,
)
from gateway.metrics import Metrics
from gateway.model import Device, DeviceDirectory
from gateway.settings import Identity, MediaSection
from gateway.sip import (
    Dialog,
    Endpoint,
    InviteFailed,
    OutgoingInvite,
    Peer,
    Request,
    Response,
    ServerContext,
    SipError,
    build_request,
    parse_uri,
)
from gateway.tasks import TaskSet
from gateway.uplink.service import Uplink, UpperSession

log = structlog.get_logger("gateway.uplink.calls")

_KINDS = {"play": PLAY, "playback": PLAYBACK, "download": DOWNLOAD}
MANSCDP_TYPE = "Application/MANSCDP+xml"


@dataclass(slots=True)
class _Pending:
    """An INVITE being set up; ``upper_id`` when an upper sent it."""

    task: asyncio.Task[None]
    upper_id: str | None


class Relayed(Protocol):
    """INVITEs for devices another node holds (:class:`gateway.uplink.RelayedCalls`): the
    holding node sets up the device leg and the relay; this node keeps the upper's dialog."""

    def holder(self, device_id: str) -> str | None: ...

    def __contains__(self, call_id: object) -> bool: ...

    async def invite(
        self,
        s: UpperSession,
        req: Request,
        ctx: ServerContext,
        node: str,
        channel: str,
        kind: str,
        offer: Sdp,
        upper_channel: str,
    ) -> Response: ...

    def on_bye(self, req: Request, ctx: ServerContext) -> Response | None: ...

    def end_upper(self, upper_id: str, reason: str) -> None: ...

    def node_lost(self, node: str) -> None: ...

    def on_info(
        self, req: Request, ctx: ServerContext
    ) -> Response | Awaitable[Response] | None: ...

    def media_status(self, leg: Leg[Dialog], notify_type: int | None) -> None: ...

    async def close(self) -> None: ...


class UpperAudio:
    """The upper's part of a voice broadcast: the INVITE for its audio. Implements
    :class:`~gateway.downlink.broadcast.AudioSource` for the device side."""

    def __init__(
        self,
        *,
        identity: Identity,
        settings: MediaSection,
        endpoint: Endpoint,
        uplink: Uplink,
        media: SessionTable[Dialog],
    ) -> None:
        self.gw = identity
        self.cfg = settings
        self.endpoint = endpoint
        self.uplink = uplink
        self.media = media

    def audio_transport(self, upper_id: str) -> Transport | None:
        s = self.uplink.sessions.get(upper_id)
        if s is None or not s.link.online:
            return None
        return "tcp-passive" if s.reliable else "udp"

    async def invite_for_audio(
        self, leg: Leg[Dialog], target: PendingBroadcast, device_offer: Sdp
    ) -> None:
        s = self.uplink.sessions.get(target.upper_id)
        if s is None:
            raise MediaError(480, "Temporarily Unavailable (upper platform offline)")
        peer = s.link.peer
        host = self.media.advertised_host() or self.endpoint.local_host(peer)
        sdp = Sdp(
            origin_user=target.target_id,
            origin_host=host,
            session="Play",
            host=host,
            media=device_offer.media,
            port=leg.port,
            proto="RTP/AVP" if leg.transport == "udp" else "TCP/RTP/AVP",
            formats=device_offer.formats or [8],
            rtpmap=device_offer.rtpmap or {8: "PCMA/8000"},
            direction="recvonly",
            setup=offer_setup(leg.transport),
            ssrc=leg.ssrc,
        )
        up = s.upper
        where = f"{peer.host}:{peer.port}"
        req = build_request(
            "INVITE",
            f"sip:{target.source_id}@{where}",
            from_uri=f"sip:{target.target_id}@{self.gw.domain}",
            to_uri=f"sip:{target.source_id}@{up.domain}",
            contact=self.endpoint.contact_uri(self.gw.id, peer),
            headers=[("Subject", f"{target.source_id}:{leg.ssrc},{target.target_id}:0")],
            body=sdp.to_bytes(),
            content_type=SDP_TYPE,
        )
        # After Content-Type, where the gateway has always written it.
        if up.gb_version == "2022":
            req.add_header("X-GB-Ver", "3.0")
        self.media.bind_leg(leg, req.call_id)
        invite = OutgoingInvite(self.endpoint, req, peer)
        try:
            resp = await invite.send(self.cfg.invite_timeout)
        except InviteFailed as exc:
            if exc.status == 408:
                raise MediaError(408, "Request Timeout (the upper did not answer)") from None
            raise MediaError(
                486, f"Busy Here (upper refused: {exc.status} {exc.reason})"[:120]
            ) from None
        leg.dialog = invite.dialog
        try:
            leg.answer = parse_sdp(resp.body)
        except SdpError as exc:
            self.media.spawn(invite.bye())
            leg.dialog = None
            raise MediaError(502, f"Bad Gateway (upper answer: {exc.reason})") from None
        # The upper's answer settles the transport (and connects, when that is ours to do);
        # a MediaError here ends the leg with a BYE to the upper.
        await self.media.use_answer(leg, leg.answer, offered_host=host)


class Calls:
    """INVITE, BYE, CANCEL, ACK and INFO for media, and the upper's part of voice broadcast."""

    def __init__(
        self,
        *,
        identity: Identity,
        settings: MediaSection,
        endpoint: Endpoint,
        devices: DeviceDirectory,
        downlink: Downlink,
        uplink: Uplink,
        media: SessionTable[Dialog],
        broadcast: VoiceBroadcast,
        events: EventBus,
        metrics: Metrics,
    ) -> None:
        self.cfg = settings
        self.gw = identity
        self.endpoint = endpoint
        self.devices = devices
        self.downlink = downlink
        self.uplink = uplink
        self.media = media
        self.broadcast = broadcast
        self.events = events
        self.metrics = metrics
        self._pending: dict[str, _Pending] = {}  # INVITEs not yet answered, by Call-ID
        # In a cluster: INVITEs for devices another node holds (set by the composition root).
        self.relayed: Relayed | None = None
        self._tasks = TaskSet(log, "calls.task_failed")
        self._closing = False

    async def close(self) -> None:
        """Refuse new INVITEs (503) and stop those being set up; the session table ends the
        running sessions when it closes, after this."""
        self._closing = True
        for pending in list(self._pending.values()):
            pending.task.cancel()
        self._tasks.cancel_all()
        if self.relayed is not None:
            await self.relayed.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    def _fail(self, req: Request, status: int, reason: str, **context: Any) -> Response:
        self.metrics.inc(f"media.invite.refused.{status}")
        log.info("invite.refused", call_id=req.call_id, status=status, reason=reason, **context)
        return self.endpoint.answer(req, status, reason)

    def media_host(self, peer: Peer) -> str:
        """The address written into SDP for a peer: configured, or the one facing it."""
        return self.media.advertised_host() or self.endpoint.local_host(peer)

    # -- INVITE -----------------------------------------------------------------------------
    def on_invite(self, req: Request, ctx: ServerContext) -> Response | None:
        if self._closing:
            return self.endpoint.answer(req, 503, "Service Unavailable (shutting down)")
        if req.to.tag:
            return self._reinvite(req, ctx)
        call_id = req.call_id
        if (
            call_id in self._pending
            or call_id in self.media.outputs_by_call
            or (self.relayed is not None and call_id in self.relayed)
        ):
            return self._fail(req, 400, "Bad Request (Call-ID already in use)")
        upper = self.uplink.upper_for(req, ctx)
        if upper is not None:
            if not upper.link.online:
                return self._fail(req, 403, "Forbidden (upper platform not registered)")
            self._answer_later(req, ctx, self._upper_invite(upper, req, ctx), upper.upper.id)
            return None
        dev = self.downlink.sender(req, ctx.peer)
        if dev is not None:
            self._answer_later(req, ctx, self.broadcast.on_invite(dev, req, ctx), None)
            return None
        standby = self.uplink.standby_refusal(req, ctx, "INVITE")
        if standby is not None:
            return standby
        self.metrics.inc("media.invite.refused.403")
        log.info("invite.refused", peer=str(ctx.peer), sender=req.from_.uri.user, status=403)
        return self.endpoint.answer(
            req, 403, "Forbidden (not an upper platform or registered device)"
        )

    def _answer_later(
        self,
        req: Request,
        ctx: ServerContext,
        coro: Coroutine[Any, Any, Response],
        upper_id: str | None,
    ) -> None:
        """Run an INVITE's set-up in a task that sends its own final response the moment it is
        ready: a CANCEL either stops the task before that, or comes too late to undo it (the
        endpoint answers 487 only while the INVITE is unanswered)."""
        call_id = req.call_id

        async def run() -> None:
            try:
                resp = await coro
            except asyncio.CancelledError:
                # After a CANCEL the endpoint has answered 487 already and this is dropped;
                # cancelled for another reason (the upper went offline, shutdown) it is sent.
                ctx.respond(self.endpoint.answer(req, 487, "Request Terminated"))
                raise
            except Exception:
                self.metrics.inc("media.invite.error")
                log.exception("invite.error", call_id=call_id)
                resp = self.endpoint.answer(req, 500, "Server Internal Error")
            ctx.respond(resp)

        task = asyncio.ensure_future(run())
        self._pending[call_id] = _Pending(task, upper_id)

        def done(t: asyncio.Task[None]) -> None:
            pending = self._pending.get(call_id)
            if pending is not None and pending.task is t:
                del self._pending[call_id]
            if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                # Cancelled before it ever ran (a CANCEL or the stop in the INVITE's own turn):
                # the set-up never started. Closed, it is not reported as never awaited.
                coro.close()
                ctx.respond(self.endpoint.answer(req, 487, "Request Terminated"))
            if not t.cancelled() and t.exception() is not None:
                log.warning("invite.task_failed", call_id=call_id, error=str(t.exception()))

        task.add_done_callback(done)

    def _reinvite(self, req: Request, ctx: ServerContext) -> Response:
        """A re-INVITE in a known session: the media cannot change, so it is refused."""
        out = self.media.outputs_by_call.get(req.call_id)
        if (
            out is None
            or out.dialog is None
            or not self._in_dialog(out.dialog, out.upper_id, req, ctx.peer)
            or not out.dialog.accepts(req)
        ):
            return self.endpoint.answer(req, 481, "Call/Transaction Does Not Exist")
        return self.endpoint.answer(
            req, 488, "Not Acceptable Here (re-INVITE: media cannot change)"
        )

    async def _upper_invite(self, s: UpperSession, req: Request, ctx: ServerContext) -> Response:
        upper_channel = req.request_uri.user or req.to.uri.user or ""
        found = s.view.resolve(upper_channel)
        if found is None:
            return self._fail(
                req, 404, "Not Found (channel not shared with this platform)", upper=s.upper.id
            )
        owner, channel = found
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            return self._fail(req, 488, f"Not Acceptable Here ({exc.reason})", upper=s.upper.id)
        kind = _KINDS.get(offer.session.strip().lower())
        if kind is None:
            return self._fail(req, 488, f"Not Acceptable Here (s={offer.session[:20]})")
        if offer.ssrc is not None and offer.ssrc_int is None:
            return self._fail(req, 400, f"Bad Request (y={offer.ssrc[:12]} is not an SSRC)")
        if offer.ssrc is None and not self.cfg.generate_ssrc:
            return self._fail(req, 400, "Bad Request (no y= SSRC offered)")
        dev = self.devices.get(owner)
        if dev is None or not dev.online:
            return self._fail(req, 480, "Temporarily Unavailable (device offline)", channel=channel)
        relayed = self.relayed
        if relayed is not None and (node := relayed.holder(owner)) is not None:
            # Another node holds the device: its relay sends straight to the upper.
            return await relayed.invite(s, req, ctx, node, channel, kind, offer, upper_channel)
        out_transport = OPPOSITE[offer.transport]
        try:
            out = await self._attach(
                channel, dev, kind, offer, out_transport, (offer.host, offer.port), offer.ssrc
            )
        except MediaError as exc:
            return self._fail(req, exc.status, exc.reason, channel=channel, upper=s.upper.id)
        leg = out.leg
        local_tag = self.endpoint.tag()
        out.upper_id = s.upper.id
        out.target_id = upper_channel
        out.dialog = Dialog.as_uas(req, local_tag, ctx.peer)
        self.media.bind_output(out, req.call_id)
        self.metrics.inc(f"media.invite.ok.{kind}")
        log.info(
            "invite.answered",
            upper=s.upper.id,
            channel=channel,
            kind=kind,
            call_id=req.call_id,
            ssrc=out.ssrc,
            transport=out.transport,
            shared=len(leg.outputs) > 1,
        )
        # For tcp-active the relay is already connecting to the upper's listening port.
        return self.answer_invite(
            s,
            req,
            ctx,
            offer,
            local_tag,
            host=self.media_host(ctx.peer),
            port=out.port,
            ssrc=out.ssrc,
            device_answer=leg.answer or Sdp(),
            below=leg.answer_headers.get("x-routepath") or leg.device_id or channel,
        )

    def answer_invite(
        self,
        s: UpperSession,
        req: Request,
        ctx: ServerContext,
        offer: Sdp,
        local_tag: str,
        *,
        host: str,
        port: int,
        ssrc: str,
        device_answer: Sdp,
        below: str,
    ) -> Response:
        """The 200 to an upper's INVITE: our SDP answer with the relay output's address (this
        node's, or the node's that holds the device) and what the device answered."""
        upper_channel = req.request_uri.user or req.to.uri.user or ""
        answer = Sdp(
            origin_user=upper_channel,
            origin_host=host,
            session=offer.session,
            host=host,
            start=offer.start,
            stop=offer.stop,
            media=offer.media,
            port=port,
            proto=offer.proto,
            formats=device_answer.formats or [96],
            rtpmap=device_answer.rtpmap or {96: "PS/90000"},
            direction="sendonly",
            setup=answer_setup(offer),
            ssrc=ssrc,
            media_info=device_answer.media_info,
            file_size=device_answer.file_size,
        )
        headers = [
            ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, ctx.peer)}>"),
            ("Content-Type", SDP_TYPE),
        ]
        if s.upper.gb_version == "2022":
            headers.append(("X-RoutePath", f"{self.gw.id}-{below}"))
        return self.endpoint.answer(
            req, 200, "OK", to_tag=local_tag, headers=headers, body=answer.to_bytes()
        )

    async def _attach(
        self,
        channel: str,
        dev: Device,
        kind: str,
        offer: Sdp,
        transport: Transport,
        remote: tuple[str, int] | None,
        want_ssrc: str | None,
    ) -> Output[Dialog]:
        """Join the running live leg of ``channel``, or INVITE the device for a new leg, and
        add an output to it (Annex L: one device INVITE per live stream)."""
        leg = self.media.live_leg(channel) if kind == PLAY else None
        if leg is None:
            leg = self.media.add_leg(
                kind,
                channel,
                self.media.device_transport(dev.device_id, channel),
                device_id=dev.device_id,
            )

            self.media.start_leg(leg, lambda new: self._invite_device(new, dev, offer))
        return await self.media.join(leg, transport, remote, want_ssrc, history=kind != PLAY)

    async def _invite_device(self, leg: Leg[Dialog], dev: Device, offer: Sdp) -> None:
        peer = self.downlink.peer(dev)
        channel = leg.source_id
        uri = None
        if offer.uri is not None:
            # u=<channel>:<type>: the upper names the channel by its own ID.
            _, sep, rtype = offer.uri.partition(":")
            uri = (
                f"{channel}:{rtype or '0'}"
                if sep and not offer.uri.startswith("http")
                else (offer.uri)
            )
        sdp = Sdp(
            origin_user=self.gw.id,
            origin_host=self.media_host(peer),
            session=leg.kind,
            uri=uri if leg.kind != PLAY else None,
            host=self.media_host(peer),
            start=offer.start if leg.kind != PLAY else 0,
            stop=offer.stop if leg.kind != PLAY else 0,
            media="video",
            port=leg.port,
            proto="RTP/AVP" if leg.transport == "udp" else "TCP/RTP/AVP",
            formats=[96, 98, 97],
            rtpmap={96: "PS/90000", 98: "H264/90000", 97: "MPEG4/90000"},
            direction="recvonly",
            setup=offer_setup(leg.transport),
            ssrc=leg.ssrc,
            download_speed=offer.download_speed if leg.kind == DOWNLOAD else None,
            stream_number=offer.stream_number,
        )
        hostport = f"{dev.host}:{dev.port}"
        req = build_request(
            "INVITE",
            f"sip:{channel}@{hostport}",
            from_uri=f"sip:{self.gw.id}@{self.gw.domain}",
            to_uri=f"sip:{channel}@{hostport}",
            contact=self.endpoint.contact_uri(self.gw.id, peer),
            headers=[("Subject", f"{channel}:{leg.ssrc},{self.gw.id}:0")],
            body=sdp.to_bytes(),
            content_type=SDP_TYPE,
        )
        # After Content-Type, where the gateway has always written it.
        if dev.gb_version.startswith("3"):
            req.add_header("X-GB-Ver", "3.0")
        self.media.bind_leg(leg, req.call_id)
        invite = OutgoingInvite(self.endpoint, req, peer)
        self.metrics.inc("media.device_invite.sent")
        log.info(
            "invite.device",
            device_id=dev.device_id,
            channel=channel,
            kind=leg.kind,
            call_id=req.call_id,
            ssrc=leg.ssrc,
            transport=leg.transport,
        )
        try:
            resp = await invite.send(self.cfg.invite_timeout)
        except InviteFailed as exc:
            self.metrics.inc(f"media.device_invite.failed.{exc.status}")
            if exc.status == 408:
                raise MediaError(408, "Request Timeout (the device did not answer)") from None
            raise MediaError(
                486, f"Busy Here (device refused: {exc.status} {exc.reason})"[:120]
            ) from None
        leg.dialog = invite.dialog
        leg.answer_headers = {
            "x-routepath": resp.get_header("X-RoutePath") or "",
        }
        if not leg.answer_headers["x-routepath"]:
            del leg.answer_headers["x-routepath"]
        try:
            leg.answer = parse_sdp(resp.body)
        except SdpError as exc:
            self.media.spawn(invite.bye())
            leg.dialog = None
            raise MediaError(502, f"Bad Gateway (device answer: {exc.reason})") from None
        # The answer settles the transport: what the device answered is taken when the relay
        # can (UDP for TCP, the passive role for a conflicting a=setup:active); a leg that
        # cannot carry media raises MediaError, so the device gets BYE and the upper no 200.
        await self.media.use_answer(leg, leg.answer, offered_host=sdp.host)
        self.metrics.inc("media.device_invite.ok")

    # -- in-dialog requests -----------------------------------------------------------------
    def _in_dialog(
        self, dialog: Dialog | None, upper_id: str | None, req: Request, peer: Peer
    ) -> bool:
        """Is ``req`` from the other end of ``dialog``? RFC 3261 §12.2.2 matches by Call-ID
        and both tags. It must also come from the host the dialog was set up with or, when the
        other end is an upper, from any address that upper is known by: a platform with
        several NICs, or a cluster, sends its BYE from another host than its INVITE
        (:meth:`UpperSession.hosts`, and the host of its INVITE's Contact)."""
        if dialog is None or not dialog.matches(req, dialog.peer):
            return False
        if peer.host == dialog.peer.host:
            return True
        s = self.uplink.sessions.get(upper_id) if upper_id is not None else None
        if s is None:
            return False
        hosts = s.hosts()
        try:
            hosts.add(parse_uri(dialog.target).host)
        except SipError:
            pass
        if peer.host not in hosts:
            return False
        self.metrics.inc("media.in_dialog.other_host")
        log.info(
            "media.in_dialog_other_host",
            call_id=req.call_id,
            method=req.method,
            upper=upper_id,
            peer=str(peer),
            dialog_host=dialog.peer.host,
        )
        return True

    def on_bye(self, req: Request, ctx: ServerContext) -> Response:
        """A BYE ends a session only when it comes from the other end of its dialog
        (:meth:`_in_dialog`): anyone else gets 481."""
        call_id = req.call_id
        out = self.media.outputs_by_call.get(call_id)
        if out is not None and self._in_dialog(out.dialog, out.upper_id, req, ctx.peer):
            self._note_bye_cseq(out.dialog, out.upper_id, req)
            self.media.end_output(out, "BYE from the receiver", bye=False)
            return self.endpoint.answer(req, 200, "OK")
        if self.relayed is not None and (done := self.relayed.on_bye(req, ctx)) is not None:
            return done
        leg = self.media.legs_by_call.get(call_id)
        # A leg's upper_id is set only when its far end is an upper (broadcast audio, where the
        # gateway INVITEs the upper); a device leg has none, so only the device's host matches.
        if leg is not None and self._in_dialog(leg.dialog, leg.upper_id, req, ctx.peer):
            self.media.end_leg(leg, "BYE from the sender", bye=False)
            return self.endpoint.answer(req, 200, "OK")
        self.metrics.inc("media.bye.unknown")
        log.info("media.bye_unknown", call_id=call_id, peer=str(ctx.peer))
        return self.endpoint.answer(req, 481, "Call/Transaction Does Not Exist")

    def _note_bye_cseq(self, dialog: Dialog | None, upper_id: str | None, req: Request) -> None:
        """A BYE whose CSeq is not above the dialog's last (some uppers reuse the INVITE's).
        RFC 3261 §12.2.2 answers a lower one 500 and leaves an equal one undefined; the BYE
        still ends the session: it comes from the other end of the dialog (Call-ID, both tags,
        a known host), and refusing it would only leave media flowing to a receiver that has
        hung up."""
        if dialog is None or req.cseq.seq > dialog.remote_cseq:
            return
        s = self.uplink.sessions.get(upper_id) if upper_id is not None else None
        if s is not None:
            s.quirks.note("bye_cseq_not_above", cseq=req.cseq.seq, last=dialog.remote_cseq)

    def on_cancel(self, req: Request, ctx: ServerContext) -> None:
        """The endpoint has answered 487 already; stop the work behind the INVITE."""
        pending = self._pending.get(req.call_id)
        if pending is not None and not pending.task.done():
            log.info("invite.cancelled", call_id=req.call_id)
            self.metrics.inc("media.invite.cancelled")
            pending.task.cancel()

    def on_ack(self, req: Request, ctx: ServerContext) -> None:
        """ACKs are hop by hop (RFC 3261 §13.2.2.4): absorbed; the endpoint matched them."""
        return None

    def on_device_offline(self, event: DeviceOffline) -> None:
        self.media.end_device(event.device_id, f"device offline ({event.reason})")

    def on_upper_offline(self, event: UpperOffline) -> None:
        for pending in [p for p in self._pending.values() if p.upper_id == event.upper_id]:
            pending.task.cancel()
        self.media.end_upper(event.upper_id, f"upper offline ({event.reason})")
        if self.relayed is not None:
            self.relayed.end_upper(event.upper_id, f"upper offline ({event.reason})")

    # -- playback control and end of file ---------------------------------------------------
    def on_info(self, req: Request, ctx: ServerContext) -> Response | Any:
        """MANSRTSP in an upper's playback or download dialog goes to the device in the leg's
        dialog (GB/T 28181-2022 §9.8.2, Annex B); the device's answer comes back."""
        out = self.media.outputs_by_call.get(req.call_id)
        if out is None and self.relayed is not None:
            relayed = self.relayed.on_info(req, ctx)
            if relayed is not None:
                return relayed
        if (
            out is None
            or out.dialog is None
            or not self._in_dialog(out.dialog, out.upper_id, req, ctx.peer)
        ):
            leg = self.media.legs_by_call.get(req.call_id)
            # As in on_bye: leg.upper_id is None for a device leg (set for broadcast audio).
            if leg is not None and self._in_dialog(leg.dialog, leg.upper_id, req, ctx.peer):
                return self.endpoint.answer(
                    req, 200, "OK"
                )  # a device's INFO: nothing to do with it
            return self.endpoint.answer(req, 481, "Call/Transaction Does Not Exist")
        if not out.dialog.accepts(req):
            return self.endpoint.answer(req, 500, "Server Internal Error (out-of-order CSeq)")
        leg = out.leg
        if leg.kind not in (PLAYBACK, DOWNLOAD):
            return self.endpoint.answer(
                req, 488, "Not Acceptable Here (MANSRTSP controls playback only)"
            )
        if "mansrtsp" not in (req.content_type or "").lower():
            return self.endpoint.answer(
                req, 415, "Unsupported Media Type (expected Application/MANSRTSP)"
            )
        if leg.dialog is None:
            return self.endpoint.answer(
                req, 491, "Request Pending (the device has not answered yet)"
            )
        return self._forward_info(req, leg, leg.dialog)

    async def _forward_info(self, req: Request, leg: Leg[Dialog], dialog: Dialog) -> Response:
        fwd = dialog.request("INFO", body=req.body, content_type=req.content_type or "")
        try:
            resp = await self.endpoint.request(fwd, dialog.peer)
        except SipError:
            self.metrics.inc("media.info.timeout")
            return self.endpoint.answer(
                req, 408, "Request Timeout (the device did not answer the INFO)"
            )
        if resp.status == 481:
            # The device has lost the dialog: the session is over on both legs.
            self.media.end_leg(leg, "the device lost the dialog (481 to INFO)", bye=False)
        self.metrics.inc("media.info.forwarded")
        headers = []
        ctype = resp.content_type
        if resp.body and ctype:
            headers.append(("Content-Type", ctype))
        return self.endpoint.answer(req, resp.status, resp.reason, headers=headers, body=resp.body)

    def on_media_status(self, event: MediaStatusReceived) -> None:
        """MediaStatus 121 inside a device leg's dialog: tell each receiver in its own dialog
        (reference §7.4); the receiver then ends the session with BYE."""
        leg = self.media.legs_by_call.get(event.call_id)
        if leg is None:
            return
        if self.relayed is not None:
            self.relayed.media_status(leg, event.notify_type)
        for out in list(leg.outputs.values()):
            if out.dialog is not None and out.upper_id is not None:
                self.spawn(self._send_media_status(out, event.notify_type))

    async def _send_media_status(self, out: Output[Dialog], notify_type: int | None) -> None:
        s = self.uplink.sessions.get(out.upper_id or "")
        if s is None or out.dialog is None:
            return
        msg = MediaStatus(
            sn=self.uplink.next_sn(), device_id=out.target_id, notify_type=notify_type
        )
        req = out.dialog.request(
            "MESSAGE", body=self.uplink.encode_for(s, msg), content_type=MANSCDP_TYPE
        )
        try:
            await self.endpoint.request(req, out.dialog.peer)
            self.metrics.inc("media.media_status.forwarded")
        except SipError as exc:
            log.info("media.media_status_failed", upper=out.upper_id, error=str(exc))

    # -- voice broadcast, the upper's part --------------------------------------------------
    def on_broadcast(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        """``Notify/Broadcast`` from an upper (reference §6.8): forward it to the device of the
        target channel, relay its ``Response``, and expect the device's INVITE for audio."""
        s = self.uplink.upper_for(req, ctx)
        if s is None:
            return self.endpoint.answer(
                req, 403, "Forbidden (not an upper platform of this gateway)"
            )
        msg = decoded.message
        assert isinstance(msg, BroadcastNotify)
        found = s.view.resolve(msg.target_id or "")
        if found is None:
            return self._fail(req, 404, "Not Found (broadcast target not shared)")
        owner, local = found
        self.broadcast.expect(
            local,
            upper_id=s.upper.id,
            source_id=msg.source_id or s.upper.id,
            target_id=msg.target_id or "",
        )
        self.spawn(self._forward_broadcast(s, msg, owner, local))
        return self.endpoint.answer(req, 200, "OK")

    async def _forward_broadcast(
        self, s: UpperSession, msg: BroadcastNotify, owner: str, local: str
    ) -> None:
        result = await self.broadcast.notify_device(owner, local)
        up = BroadcastResponse(sn=msg.sn, device_id=msg.target_id or "", result=result)
        await self.uplink.send(s, up)

    # -- local sessions ---------------------------------------------------------------------
    async def start_local(
        self,
        channel_id: str,
        remote: tuple[str, int] | None,
        *,
        transport: Transport = "udp",
        ssrc: str | None = None,
    ) -> LocalSession:
        """Start (or join) the live stream of ``channel_id`` and send it to ``remote`` (for
        ``tcp-passive``, whoever connects to the returned port). For the HTTP API and console.
        Raises :class:`MediaError` with the status an INVITE would have got."""
        owner = self.downlink.device(channel_id)
        if owner is None:
            raise MediaError(404, "Not Found (no such channel)")
        if not owner.online:
            raise MediaError(480, "Temporarily Unavailable (device offline)")
        if self.relayed is not None and (node := self.relayed.holder(owner.device_id)):
            # Local sessions are not relayed across nodes: the device's node serves them.
            raise MediaError(503, f"Service Unavailable (the device is held by node {node})"[:120])
        if transport != "tcp-passive" and remote is None:
            raise MediaError(400, "Bad Request (a remote address is needed)")
        offer = Sdp(session=PLAY)
        out = await self._attach(channel_id, owner, PLAY, offer, transport, remote, ssrc)
        out.target_id = channel_id
        self.media.local[out.output_id] = out
        log.info(
            "media.local_started",
            channel=channel_id,
            output=out.output_id,
            remote=remote,
            transport=transport,
        )
        return LocalSession(out.output_id, channel_id, out.port, out.ssrc, transport)

    def stop_local(self, output_id: str) -> bool:
        out = self.media.local.get(output_id)
        if out is None:
            return False
        self.media.end_output(out, "stopped locally", bye=False)
        return True
