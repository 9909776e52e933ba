"""Media sessions: the gateway as a back-to-back user agent between uppers and devices.

GB/T 28181-2022 §9.2 (live view), §9.8–§9.9 (playback, download), §9.12 (voice broadcast),
Annex K (media keep-alive), Annex H (``X-RoutePath``); reference §6 and §7.4. The social units'
networks are not reachable from the city network, so media always passes through the relay.

A *leg* is the gateway's own INVITE (the UAC side): to a device for live view, playback and
download, or to an upper for the audio of a voice broadcast. Its relay stream takes the RTP in.
An *output* is an INVITE the gateway answered (the UAS side: an upper asking for video, or a
device asking for broadcast audio) or a local session; the relay sends the leg's packets to
each output with the output's SSRC. A live leg is shared: a second INVITE for a channel that is
already streaming adds an output and the device is INVITEd once (Annex L: one request per
source stream). Playback and download legs have exactly one output.

Ending (Annex K): an output's BYE removes it and the leg ends with its last output; the leg's
BYE, its device or upper going offline, or the relay seeing no RTP for ``media.rtp_timeout``
ends the leg and BYEs every output. Ports and SSRCs go back to their pools in every case.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.config import Config
from gateway.downlink.downlink import Downlink, QueryError
from gateway.downlink.messages import MessageRouter
from gateway.downlink.registrar import Registrar
from gateway.events import DeviceOffline, EventBus, MediaStatusReceived, UpperOffline
from gateway.manscdp.messages import BroadcastNotify, BroadcastResponse, Decoded, MediaStatus
from gateway.media.relay import PortsExhausted, Relay, RelayError, Transport
from gateway.media.sdp import Sdp, SdpError, answer_setup, offer_setup, parse_sdp
from gateway.media.ssrc import SsrcExhausted, SsrcPool
from gateway.metrics import Metrics
from gateway.model import Device
from gateway.sip.dialog import Dialog, InviteFailed, OutgoingInvite, send_bye
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import SipError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.transport import Peer
from gateway.tasks import TaskSet
from gateway.uplink.service import Uplink, UpperSession

log = structlog.get_logger("gateway.media.sessions")

PLAY, PLAYBACK, DOWNLOAD, BROADCAST = "Play", "Playback", "Download", "Broadcast"
_KINDS = {"play": PLAY, "playback": PLAYBACK, "download": DOWNLOAD}
_OPPOSITE: dict[Transport, Transport] = {
    "udp": "udp",
    "tcp-passive": "tcp-active",
    "tcp-active": "tcp-passive",
}
SDP_TYPE = "application/sdp"
MANSCDP_TYPE = "Application/MANSCDP+xml"


class MediaError(Exception):
    """A session could not be set up; ``status``/``reason`` answer the INVITE."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True, eq=False)
class Leg:
    """The gateway's INVITE and the relay stream fed by it."""

    key: str
    kind: str
    source_id: str  # the channel (or, for broadcast audio, the upper's SourceID) that sends
    device_id: str | None = None  # the device the leg goes to, if any
    upper_id: str | None = None  # the upper the leg goes to (broadcast audio)
    ssrc: str = ""  # the SSRC the gateway offered (from its pool)
    transport: Transport = "udp"
    port: int = 0
    dialog: Dialog | None = None
    invite: OutgoingInvite | None = None
    answer: Sdp | None = None
    answer_headers: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Output] = field(default_factory=dict)
    waiters: int = 0
    opened: asyncio.Future[None] | None = None  # the relay stream is open
    ready: asyncio.Future[None] | None = None  # the far end answered
    setup: asyncio.Task[None] | None = None
    ended: bool = False
    end_reason: str = ""
    started_at: float = 0.0
    idle_early: bool = False


@dataclass(slots=True, eq=False)
class Output:
    """A receiver of a leg's stream: an upper's session, a device's broadcast audio, or a
    local session."""

    output_id: str
    leg: Leg
    ssrc: str
    owned_ssrc: bool
    transport: Transport
    remote: tuple[str, int] | None
    port: int = 0
    upper_id: str | None = None
    device_id: str | None = None
    target_id: str = ""  # the ID the receiver knows the source by
    dialog: Dialog | None = None
    call_id: str = ""
    ended: bool = False


@dataclass(frozen=True, slots=True)
class LocalSession:
    """A live stream the gateway started itself towards ``remote``."""

    output_id: str
    channel_id: str
    port: int
    ssrc: str
    transport: Transport


@dataclass(slots=True)
class _Pending:
    """An INVITE being set up; ``upper_id`` when an upper sent it."""

    task: asyncio.Task[None]
    upper_id: str | None


@dataclass(slots=True)
class _PendingBroadcast:
    upper_id: str
    source_id: str  # the upper's SourceID (whom the device's INVITE is really for)
    target_id: str  # the output channel as the upper knows it
    local_target: str
    expires_at: float


class MediaSessions:
    def __init__(
        self,
        *,
        config: Config,
        endpoint: Endpoint,
        registrar: Registrar,
        downlink: Downlink,
        uplink: Uplink,
        relay: Relay,
        events: EventBus,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cfg = config.media
        self.gw = config.gateway
        self.endpoint = endpoint
        self.registrar = registrar
        self.downlink = downlink
        self.uplink = uplink
        self.relay = relay
        self.events = events
        self.metrics = metrics
        self.clock = clock
        self.ssrcs = SsrcPool(config.gateway.domain)
        self.legs: dict[str, Leg] = {}
        self.live: dict[str, Leg] = {}  # channel -> its shared live leg
        self.legs_by_call: dict[str, Leg] = {}
        self.outputs_by_call: dict[str, Output] = {}
        self.local: dict[str, Output] = {}
        self._pending: dict[str, _Pending] = {}  # INVITEs not yet answered, by Call-ID
        self._broadcasts: dict[str, _PendingBroadcast] = {}
        self._ids = itertools.count(1)
        self._tasks = TaskSet(log, "media.task_failed")
        self._closing = False

    # -- wiring -----------------------------------------------------------------------------
    def install(self, router: MessageRouter) -> None:
        self.endpoint.route("INVITE", self.on_invite)
        self.endpoint.route("BYE", self.on_bye)
        self.endpoint.route("CANCEL", self.on_cancel)
        self.endpoint.route("INFO", self.on_info)
        self.endpoint.route("ACK", self.on_ack)
        router.handle_typed("Notify", "Broadcast", self.on_broadcast)
        self.events.subscribe(DeviceOffline, self.on_device_offline)
        self.events.subscribe(UpperOffline, self.on_upper_offline)
        self.events.subscribe(MediaStatusReceived, self.on_media_status)

    async def start(self) -> None:
        await self.relay.start()

    async def close(self) -> None:
        self._closing = True
        for pending in list(self._pending.values()):
            pending.task.cancel()
        ends = [self._end_leg(leg, "gateway stopping") for leg in list(self.legs.values())]
        await asyncio.gather(*(t for t in ends if t is not None), return_exceptions=True)
        self._tasks.cancel_all()
        await self.relay.close()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    def _reply(
        self,
        req: Request,
        status: int,
        reason: str,
        *,
        to_tag: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        return make_response(
            req,
            status,
            reason,
            to_tag=to_tag or self.endpoint.tag(),
            headers=headers or (),
            body=body,
        )

    def _fail(self, req: Request, status: int, reason: str, **context: Any) -> Response:
        self.metrics.inc(f"media.invite.refused.{status}")
        log.info("invite.refused", call_id=req.call_id, status=status, reason=reason, **context)
        return self._reply(req, status, reason)

    def media_host(self, peer: Peer) -> str:
        """The address written into SDP for a peer: configured, or the one facing it."""
        if self.cfg.advertised_host:
            return self.cfg.advertised_host
        if self.cfg.host not in ("0.0.0.0", "::", ""):
            return self.cfg.host
        return self.endpoint.local_host(peer)

    def device_transport(self, device_id: str, channel_id: str) -> Transport:
        per = self.cfg.device_transports
        return per.get(channel_id) or per.get(device_id) or self.cfg.device_transport

    # -- INVITE -----------------------------------------------------------------------------
    def on_invite(self, req: Request, ctx: ServerContext) -> Response | None:
        if self._closing:
            return self._reply(req, 503, "Service Unavailable (shutting down)")
        if req.to.tag:
            return self._reinvite(req, ctx)
        call_id = req.call_id
        if call_id in self._pending or call_id in self.outputs_by_call:
            return self._fail(req, 400, "Bad Request (Call-ID already in use)")
        upper = self.uplink.upper_for(req, ctx)
        if upper is not None:
            if not upper.link.online:
                return self._fail(req, 403, "Forbidden (upper platform not registered)")
            self._answer_later(req, ctx, self._upper_invite(upper, req, ctx), upper.upper.id)
            return None
        dev = self.downlink._sender(req, ctx.peer)
        if dev is not None:
            self._answer_later(req, ctx, self._broadcast_invite(dev, req, ctx), None)
            return None
        self.metrics.inc("media.invite.refused.403")
        log.info("invite.refused", peer=str(ctx.peer), sender=req.from_.uri.user, status=403)
        return self._reply(req, 403, "Forbidden (not an upper platform or registered device)")

    def _answer_later(
        self, req: Request, ctx: ServerContext, coro: Any, upper_id: str | None
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
                ctx.respond(self._reply(req, 487, "Request Terminated"))
                raise
            except Exception:
                self.metrics.inc("media.invite.error")
                log.exception("invite.error", call_id=call_id)
                resp = self._reply(req, 500, "Server Internal Error")
            ctx.respond(resp)

        task = asyncio.ensure_future(run())
        self._pending[call_id] = _Pending(task, upper_id)

        def done(t: asyncio.Task[None]) -> None:
            pending = self._pending.get(call_id)
            if pending is not None and pending.task is t:
                del self._pending[call_id]
            if not t.cancelled() and t.exception() is not None:
                log.warning("invite.task_failed", call_id=call_id, error=str(t.exception()))

        task.add_done_callback(done)

    def _reinvite(self, req: Request, ctx: ServerContext) -> Response:
        """A re-INVITE in a known session: the media cannot change, so it is refused."""
        out = self.outputs_by_call.get(req.call_id)
        if (
            out is None
            or out.dialog is None
            or not out.dialog.matches(req, ctx.peer)
            or not out.dialog.accepts(req)
        ):
            return self._reply(req, 481, "Call/Transaction Does Not Exist")
        return self._reply(req, 488, "Not Acceptable Here (re-INVITE: media cannot change)")

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
        dev = self.registrar.devices.get(owner)
        if dev is None or not dev.online:
            return self._fail(req, 480, "Temporarily Unavailable (device offline)", channel=channel)
        out_transport = _OPPOSITE[offer.transport]
        try:
            out = await self._attach(
                channel,
                dev,
                kind,
                offer,
                out_transport,
                (offer.host, offer.port),
                offer.ssrc,
                call_id=req.call_id,
            )
        except MediaError as exc:
            return self._fail(req, exc.status, exc.reason, channel=channel, upper=s.upper.id)
        leg = out.leg
        local_tag = self.endpoint.tag()
        out.upper_id = s.upper.id
        out.target_id = upper_channel
        out.call_id = req.call_id
        out.dialog = Dialog.as_uas(req, local_tag, ctx.peer)
        self.outputs_by_call[req.call_id] = out
        dev_answer = leg.answer or Sdp()
        answer = Sdp(
            origin_user=upper_channel,
            origin_host=self.media_host(ctx.peer),
            session=offer.session,
            host=self.media_host(ctx.peer),
            start=offer.start,
            stop=offer.stop,
            media=offer.media,
            port=out.port,
            proto=offer.proto,
            formats=dev_answer.formats or [96],
            rtpmap=dev_answer.rtpmap or {96: "PS/90000"},
            direction="sendonly",
            setup=answer_setup(offer),
            ssrc=out.ssrc,
            media_info=dev_answer.media_info,
            file_size=dev_answer.file_size,
        )
        headers = [
            ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, ctx.peer)}>"),
            ("Content-Type", SDP_TYPE),
        ]
        if s.upper.gb_version == "2022":
            below = leg.answer_headers.get("x-routepath") or leg.device_id or channel
            headers.append(("X-RoutePath", f"{self.gw.id}-{below}"))
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
        if out.transport == "tcp-active" and out.remote is not None:
            pass  # the relay is already connecting to the upper's listening port
        return self._reply(
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
        *,
        call_id: str = "",
    ) -> Output:
        """Find or set up the device leg for ``channel`` and add an output to it."""
        leg = self.live.get(channel) if kind == PLAY else None
        if leg is None or leg.ended:
            leg = self._new_leg(channel, dev, kind, offer)
        leg.waiters += 1
        out: Output | None = None
        try:
            assert leg.opened is not None and leg.ready is not None
            # The output exists before the device is INVITEd, so the first packets (and the
            # key frame they carry) reach the receiver.
            await asyncio.shield(leg.opened)
            out = await self._add_output(leg, transport, remote, want_ssrc, history=kind != PLAY)
            await asyncio.shield(leg.ready)
            if out.ended or leg.ended:
                raise MediaError(
                    486, f"Busy Here (the stream ended: {leg.end_reason or 'receiver lost'})"
                )
            return out
        except BaseException:
            if out is not None:
                self._end_output(out, "setup failed", bye=False, cascade=False)
            raise
        finally:
            leg.waiters -= 1
            if not leg.outputs and leg.waiters == 0 and not leg.ended:
                self._end_leg(leg, "no receiver left")

    async def _add_output(
        self,
        leg: Leg,
        transport: Transport,
        remote: tuple[str, int] | None,
        want_ssrc: str | None,
        *,
        history: bool,
        device_id: str | None = None,
    ) -> Output:
        if leg.ended:
            raise MediaError(486, f"Busy Here (the stream ended: {leg.end_reason})")
        owned = want_ssrc is None
        try:
            ssrc = want_ssrc if want_ssrc is not None else self.ssrcs.take(history=history)
        except SsrcExhausted:
            raise MediaError(486, "Busy Here (no SSRC free)") from None
        out = Output(
            output_id=f"o{next(self._ids)}",
            leg=leg,
            ssrc=ssrc,
            owned_ssrc=owned,
            transport=transport,
            remote=remote if transport != "tcp-passive" else None,
            device_id=device_id,
        )
        try:
            out.port = await self.relay.add_output(
                leg.key, out.output_id, transport, remote=out.remote, ssrc=int(ssrc) & 0xFFFFFFFF
            )
        except PortsExhausted:
            self._release(out)
            raise MediaError(486, "Busy Here (no media port free)") from None
        except (RelayError, OSError) as exc:
            self._release(out)
            raise MediaError(500, f"Server Internal Error (relay: {exc})") from None
        except BaseException:  # cancelled while the relay worked: it may have made the output
            self._release(out)
            if not leg.ended:
                self.spawn(self._remove_output(leg.key, out.output_id))
            raise
        if leg.ended:  # ended while the relay worked
            self._release(out)
            raise MediaError(486, f"Busy Here (the stream ended: {leg.end_reason})")
        leg.outputs[out.output_id] = out
        return out

    def _release(self, out: Output) -> None:
        if out.owned_ssrc:
            self.ssrcs.release(out.ssrc)
            out.owned_ssrc = False

    def _new_leg(self, channel: str, dev: Device, kind: str, offer: Sdp) -> Leg:
        loop = asyncio.get_running_loop()
        leg = Leg(
            key=f"s{next(self._ids)}",
            kind=kind,
            source_id=channel,
            device_id=dev.device_id,
            transport=self.device_transport(dev.device_id, channel),
            opened=loop.create_future(),
            ready=loop.create_future(),
            started_at=self.clock(),
        )
        self.legs[leg.key] = leg
        if kind == PLAY:
            self.live[channel] = leg
        leg.setup = self.spawn(self._setup_device_leg(leg, dev, offer))
        return leg

    async def _setup_device_leg(self, leg: Leg, dev: Device, offer: Sdp) -> None:
        assert leg.opened is not None and leg.ready is not None
        try:
            await self._open_leg(leg, history=leg.kind != PLAY)
            leg.opened.set_result(None)
            await self._invite_device(leg, dev, offer)
        except MediaError as exc:
            self._end_leg(leg, f"setup failed: {exc.reason}")
            _fail_leg(leg, exc)
            return
        except asyncio.CancelledError:
            _fail_leg(leg, MediaError(486, f"Busy Here (the stream ended: {leg.end_reason})"))
            raise
        except Exception as exc:
            self.metrics.inc("media.setup_error")
            log.exception("media.setup_error", key=leg.key, device_id=leg.device_id)
            self._end_leg(leg, f"setup failed: {type(exc).__name__}")
            _fail_leg(leg, MediaError(502, "Bad Gateway (the device's answer could not be used)"))
            return
        if not leg.ready.done():
            leg.ready.set_result(None)
        if leg.idle_early:
            self.spawn(self._check_idle(leg))

    async def _check_idle(self, leg: Leg) -> None:
        """The relay reported the stream idle before the device answered: look again one
        ``rtp_timeout`` after the answer."""
        await asyncio.sleep(self.cfg.rtp_timeout)
        if leg.ended:
            return
        try:
            stats = await self.relay.stats(leg.key)
        except RelayError:
            return
        last = stats.input.last_packet_at
        if last is None or time.monotonic() - last >= self.cfg.rtp_timeout:
            self._end_leg(leg, "no RTP")

    async def _open_leg(self, leg: Leg, *, history: bool) -> None:
        """Take the leg's SSRC and open its relay stream."""
        try:
            leg.ssrc = self.ssrcs.take(history=history)
        except SsrcExhausted:
            raise MediaError(486, "Busy Here (no SSRC free)") from None
        try:
            leg.port = await self.relay.open_stream(
                leg.key, leg.transport, idle_timeout=self.cfg.rtp_timeout
            )
        except PortsExhausted:
            raise MediaError(486, "Busy Here (no media port free)") from None
        except (RelayError, OSError) as exc:
            raise MediaError(500, f"Server Internal Error (relay: {exc})") from None

    async def _invite_device(self, leg: Leg, dev: Device, offer: Sdp) -> None:
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
        req = Request(
            "INVITE",
            f"sip:{channel}@{hostport}",
            [
                ("From", f"<sip:{self.gw.id}@{self.gw.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<sip:{channel}@{hostport}>"),
                ("Call-ID", self.endpoint.call_id()),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, peer)}>"),
                ("Subject", f"{channel}:{leg.ssrc},{self.gw.id}:0"),
                ("Content-Type", SDP_TYPE),
            ],
            sdp.to_bytes(),
        )
        if dev.gb_version.startswith("3"):
            req.add_header("X-GB-Ver", "3.0")
        self.legs_by_call[req.call_id] = leg
        leg.invite = OutgoingInvite(self.endpoint, req, peer)
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
            resp = await leg.invite.send(self.cfg.invite_timeout)
        except InviteFailed as exc:
            self.metrics.inc(f"media.device_invite.failed.{exc.status}")
            if exc.status == 408:
                raise MediaError(408, "Request Timeout (the device did not answer)") from None
            raise MediaError(
                486, f"Busy Here (device refused: {exc.status} {exc.reason})"[:120]
            ) from None
        leg.dialog = leg.invite.dialog
        leg.answer_headers = {
            "x-routepath": resp.get_header("X-RoutePath") or "",
        }
        if not leg.answer_headers["x-routepath"]:
            del leg.answer_headers["x-routepath"]
        try:
            leg.answer = parse_sdp(resp.body)
        except SdpError as exc:
            self.spawn(leg.invite.bye())
            leg.dialog = None
            raise MediaError(502, f"Bad Gateway (device answer: {exc.reason})") from None
        if leg.transport == "tcp-active":
            await self.relay.connect_stream(leg.key, (leg.answer.host, leg.answer.port))
        self.metrics.inc("media.device_invite.ok")

    # -- ending -----------------------------------------------------------------------------
    def _end_leg(self, leg: Leg, reason: str, *, bye: bool = True) -> asyncio.Task[Any] | None:
        """End a leg and all its outputs. Returns the cleanup task."""
        if leg.ended:
            return None
        leg.ended = True
        leg.end_reason = reason
        self.legs.pop(leg.key, None)
        if self.live.get(leg.source_id) is leg:
            del self.live[leg.source_id]
        if leg.invite is not None:
            self.legs_by_call.pop(leg.invite.request.call_id, None)
        for out in list(leg.outputs.values()):
            self._end_output(out, reason, bye=True, cascade=False)
        if (
            leg.setup is not None
            and not leg.setup.done()
            and leg.setup is not asyncio.current_task()
        ):
            leg.setup.cancel()
        if leg.ssrc:
            self.ssrcs.release(leg.ssrc)
        self.metrics.inc("media.leg.ended")
        log.info(
            "media.leg_ended",
            key=leg.key,
            kind=leg.kind,
            source=leg.source_id,
            reason=reason,
            device_id=leg.device_id,
            upper=leg.upper_id,
        )
        dialog = leg.dialog if bye else None
        return self.spawn(self._close_leg(leg, dialog))

    async def _close_leg(self, leg: Leg, dialog: Dialog | None) -> None:
        if dialog is not None:
            await send_bye(self.endpoint, dialog, timeout=self.endpoint.timers.timeout)
        try:
            await self.relay.close_stream(leg.key)
        except RelayError:
            pass

    def _end_output(self, out: Output, reason: str, *, bye: bool, cascade: bool = True) -> None:
        if out.ended:
            return
        out.ended = True
        leg = out.leg
        leg.outputs.pop(out.output_id, None)
        if out.call_id and self.outputs_by_call.get(out.call_id) is out:
            del self.outputs_by_call[out.call_id]
        self.local.pop(out.output_id, None)
        self._release(out)
        self.metrics.inc("media.output.ended")
        log.info(
            "media.output_ended",
            key=leg.key,
            output=out.output_id,
            reason=reason,
            upper=out.upper_id,
            device_id=out.device_id,
            call_id=out.call_id,
        )
        if bye and out.dialog is not None:
            self.spawn(send_bye(self.endpoint, out.dialog, timeout=self.endpoint.timers.timeout))
        if not leg.ended:
            self.spawn(self._remove_output(leg.key, out.output_id))
            if cascade and not leg.outputs and leg.waiters == 0:
                self._end_leg(leg, "no receiver left")

    async def _remove_output(self, key: str, output_id: str) -> None:
        try:
            await self.relay.remove_output(key, output_id)
        except RelayError:
            pass

    def on_bye(self, req: Request, ctx: ServerContext) -> Response:
        """A BYE ends a session only when it comes from the other end of its dialog (Call-ID,
        both tags, the dialog's host; RFC 3261 §12.2.2): anyone else gets 481."""
        call_id = req.call_id
        out = self.outputs_by_call.get(call_id)
        if out is not None and out.dialog is not None and out.dialog.matches(req, ctx.peer):
            self._end_output(out, "BYE from the receiver", bye=False)
            return self._reply(req, 200, "OK")
        leg = self.legs_by_call.get(call_id)
        if leg is not None and leg.dialog is not None and leg.dialog.matches(req, ctx.peer):
            self._end_leg(leg, "BYE from the sender", bye=False)
            return self._reply(req, 200, "OK")
        self.metrics.inc("media.bye.unknown")
        log.info("media.bye_unknown", call_id=call_id, peer=str(ctx.peer))
        return self._reply(req, 481, "Call/Transaction Does Not Exist")

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
        for leg in [x for x in self.legs.values() if x.device_id == event.device_id]:
            self._end_leg(leg, f"device offline ({event.reason})", bye=False)
        for out in [o for o in self.outputs_by_call.values() if o.device_id == event.device_id]:
            self._end_output(out, f"device offline ({event.reason})", bye=False)

    def on_upper_offline(self, event: UpperOffline) -> None:
        for pending in [p for p in self._pending.values() if p.upper_id == event.upper_id]:
            pending.task.cancel()
        for out in [o for o in self.outputs_by_call.values() if o.upper_id == event.upper_id]:
            self._end_output(out, f"upper offline ({event.reason})", bye=False)
        for leg in [x for x in self.legs.values() if x.upper_id == event.upper_id]:
            self._end_leg(leg, f"upper offline ({event.reason})", bye=False)

    def on_relay_event(self, stream_id: str, output_id: str | None, event: str) -> None:
        """The relay saw no RTP for ``rtp_timeout`` (``idle``) or a TCP connection closed."""
        leg = self.legs.get(stream_id)
        if leg is None:
            return
        self.metrics.inc(f"media.relay.{event}")
        if event == "idle" and not _is_ready(leg):
            # Counted from the stream's opening: the device has not even answered yet. The
            # INVITE timeout governs until it does; then the stream gets its own check.
            leg.idle_early = True
            return
        if output_id is not None:
            out = leg.outputs.get(output_id)
            if out is not None:
                self._end_output(out, f"media {event}", bye=True)
            return
        self._end_leg(leg, "no RTP" if event == "idle" else f"media {event}", bye=True)

    # -- playback control and end of file ---------------------------------------------------
    def on_info(self, req: Request, ctx: ServerContext) -> Response | Any:
        out = self.outputs_by_call.get(req.call_id)
        if out is None or out.dialog is None or not out.dialog.matches(req, ctx.peer):
            leg = self.legs_by_call.get(req.call_id)
            if leg is not None and leg.dialog is not None and leg.dialog.matches(req, ctx.peer):
                return self._reply(req, 200, "OK")  # a device's INFO: nothing to do with it
            return self._reply(req, 481, "Call/Transaction Does Not Exist")
        if not out.dialog.accepts(req):
            return self._reply(req, 500, "Server Internal Error (out-of-order CSeq)")
        leg = out.leg
        if leg.kind not in (PLAYBACK, DOWNLOAD):
            return self._reply(req, 488, "Not Acceptable Here (MANSRTSP controls playback only)")
        if "mansrtsp" not in (req.content_type or "").lower():
            return self._reply(req, 415, "Unsupported Media Type (expected Application/MANSRTSP)")
        if leg.dialog is None:
            return self._reply(req, 491, "Request Pending (the device has not answered yet)")
        return self._forward_info(req, leg, leg.dialog)

    async def _forward_info(self, req: Request, leg: Leg, dialog: Dialog) -> Response:
        fwd = dialog.request("INFO", body=req.body, content_type=req.content_type or "")
        try:
            resp = await self.endpoint.request(fwd, dialog.peer)
        except SipError:
            self.metrics.inc("media.info.timeout")
            return self._reply(req, 408, "Request Timeout (the device did not answer the INFO)")
        if resp.status == 481:
            # The device has lost the dialog: the session is over on both legs.
            self._end_leg(leg, "the device lost the dialog (481 to INFO)", bye=False)
        self.metrics.inc("media.info.forwarded")
        headers = []
        ctype = resp.content_type
        if resp.body and ctype:
            headers.append(("Content-Type", ctype))
        return self._reply(req, resp.status, resp.reason, headers=headers, body=resp.body)

    def on_media_status(self, event: MediaStatusReceived) -> None:
        """MediaStatus 121 inside a device leg's dialog: tell each receiver in its own dialog
        (reference §7.4); the receiver then ends the session with BYE."""
        leg = self.legs_by_call.get(event.call_id)
        if leg is None:
            return
        for out in list(leg.outputs.values()):
            if out.dialog is not None and out.upper_id is not None:
                self.spawn(self._send_media_status(out, event.notify_type))

    async def _send_media_status(self, out: Output, notify_type: int | None) -> None:
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

    # -- voice broadcast --------------------------------------------------------------------
    def on_broadcast(self, decoded: Decoded, req: Request, ctx: ServerContext) -> Response:
        """``Notify/Broadcast`` from an upper (reference §6.8): forward it to the device of the
        target channel, relay its ``Response``, and expect the device's INVITE for audio."""
        s = self.uplink.upper_for(req, ctx)
        if s is None:
            return self._reply(req, 403, "Forbidden (not an upper platform of this gateway)")
        msg = decoded.message
        assert isinstance(msg, BroadcastNotify)
        found = s.view.resolve(msg.target_id or "")
        if found is None:
            return self._fail(req, 404, "Not Found (broadcast target not shared)")
        owner, local = found
        self._broadcasts[local] = _PendingBroadcast(
            upper_id=s.upper.id,
            source_id=msg.source_id or s.upper.id,
            target_id=msg.target_id or "",
            local_target=local,
            expires_at=self.clock() + 30.0,
        )
        self.spawn(self._forward_broadcast(s, msg, owner, local))
        return self._reply(req, 200, "OK")

    async def _forward_broadcast(
        self, s: UpperSession, msg: BroadcastNotify, owner: str, local: str
    ) -> None:
        down = BroadcastNotify(sn=0, device_id=local, source_id=self.gw.id, target_id=local)
        result = "ERROR"
        try:
            res = await self.downlink.query(owner, down)
            answer = res.response
            if isinstance(answer, BroadcastResponse) and answer.result:
                result = answer.result
        except QueryError as exc:
            log.info("broadcast.failed", target=local, error=str(exc))
            self.metrics.inc("media.broadcast.failed")
        if result != "OK":
            self._broadcasts.pop(local, None)
        up = BroadcastResponse(sn=msg.sn, device_id=msg.target_id or "", result=result)
        await self.uplink.send(s, up)

    def _find_broadcast(self, dev: Device, req: Request) -> _PendingBroadcast | None:
        now = self.clock()
        for key, old in list(self._broadcasts.items()):
            if old.expires_at < now:
                del self._broadcasts[key]
        candidates = [req.from_.uri.user or ""]
        subject = req.get_header("Subject") or ""
        for part in subject.split(","):
            candidates.append(part.split(":")[0].strip())
        for cand in candidates:
            pending = self._broadcasts.get(cand)
            if pending is not None and self.downlink.device(cand) is dev:
                return pending
        return None

    async def _broadcast_invite(self, dev: Device, req: Request, ctx: ServerContext) -> Response:
        """The device asks for the broadcast audio: INVITE the upper for it (we receive), then
        answer the device with the relay's sending side."""
        pending = self._find_broadcast(dev, req)
        if pending is None:
            return self._fail(req, 404, "Not Found (no voice broadcast pending for this device)")
        s = self.uplink.sessions.get(pending.upper_id)
        if s is None or not s.link.online:
            return self._fail(req, 480, "Temporarily Unavailable (upper platform offline)")
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            return self._fail(req, 488, f"Not Acceptable Here ({exc.reason})")
        del self._broadcasts[pending.local_target]
        loop = asyncio.get_running_loop()
        leg = Leg(
            key=f"s{next(self._ids)}",
            kind=BROADCAST,
            source_id=pending.source_id,
            upper_id=s.upper.id,
            transport="tcp-passive" if s.reliable else "udp",
            ready=loop.create_future(),
            started_at=self.clock(),
        )
        self.legs[leg.key] = leg
        leg.waiters += 1
        try:
            try:
                await self._open_leg(leg, history=False)
                # The device hears the audio under the SSRC of the gateway's own leg.
                out = await self._add_output(
                    leg,
                    _OPPOSITE[offer.transport],
                    (offer.host, offer.port),
                    leg.ssrc,
                    history=False,
                    device_id=dev.device_id,
                )
                await self._invite_upper(leg, s, pending, offer)
                assert leg.ready is not None
                leg.ready.set_result(None)
                if leg.idle_early:
                    self.spawn(self._check_idle(leg))
            except MediaError as exc:
                self._end_leg(leg, f"setup failed: {exc.reason}")
                return self._fail(req, exc.status, exc.reason)
        except asyncio.CancelledError:
            self._end_leg(leg, "cancelled")
            raise
        finally:
            leg.waiters -= 1
        local_tag = self.endpoint.tag()
        out.call_id = req.call_id
        out.target_id = pending.local_target
        out.dialog = Dialog.as_uas(req, local_tag, ctx.peer)
        self.outputs_by_call[req.call_id] = out
        up = leg.answer or Sdp()
        answer = Sdp(
            origin_user=self.gw.id,
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
            "broadcast.answered", device_id=dev.device_id, upper=s.upper.id, call_id=req.call_id
        )
        return self._reply(
            req,
            200,
            "OK",
            to_tag=local_tag,
            headers=[
                ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, ctx.peer)}>"),
                ("Content-Type", SDP_TYPE),
            ],
            body=answer.to_bytes(),
        )

    async def _invite_upper(
        self, leg: Leg, s: UpperSession, pending: _PendingBroadcast, device_offer: Sdp
    ) -> None:
        peer = s.link.peer
        sdp = Sdp(
            origin_user=pending.target_id,
            origin_host=self.media_host(peer),
            session="Play",
            host=self.media_host(peer),
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
        target = f"{peer.host}:{peer.port}"
        req = Request(
            "INVITE",
            f"sip:{pending.source_id}@{target}",
            [
                ("From", f"<sip:{pending.target_id}@{self.gw.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<sip:{pending.source_id}@{up.domain}>"),
                ("Call-ID", self.endpoint.call_id()),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<{self.endpoint.contact_uri(self.gw.id, peer)}>"),
                ("Subject", f"{pending.source_id}:{leg.ssrc},{pending.target_id}:0"),
                ("Content-Type", SDP_TYPE),
            ],
            sdp.to_bytes(),
        )
        if up.gb_version == "2022":
            req.add_header("X-GB-Ver", "3.0")
        self.legs_by_call[req.call_id] = leg
        leg.invite = OutgoingInvite(self.endpoint, req, peer)
        try:
            resp = await leg.invite.send(self.cfg.invite_timeout)
        except InviteFailed as exc:
            if exc.status == 408:
                raise MediaError(408, "Request Timeout (the upper did not answer)") from None
            raise MediaError(
                486, f"Busy Here (upper refused: {exc.status} {exc.reason})"[:120]
            ) from None
        leg.dialog = leg.invite.dialog
        try:
            leg.answer = parse_sdp(resp.body)
        except SdpError as exc:
            self.spawn(leg.invite.bye())
            leg.dialog = None
            raise MediaError(502, f"Bad Gateway (upper answer: {exc.reason})") from None
        if leg.transport == "tcp-active":
            await self.relay.connect_stream(leg.key, (leg.answer.host, leg.answer.port))

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
        if transport != "tcp-passive" and remote is None:
            raise MediaError(400, "Bad Request (a remote address is needed)")
        offer = Sdp(session=PLAY)
        out = await self._attach(channel_id, owner, PLAY, offer, transport, remote, ssrc)
        out.target_id = channel_id
        self.local[out.output_id] = out
        log.info(
            "media.local_started",
            channel=channel_id,
            output=out.output_id,
            remote=remote,
            transport=transport,
        )
        return LocalSession(out.output_id, channel_id, out.port, out.ssrc, transport)

    def stop_local(self, output_id: str) -> bool:
        out = self.local.get(output_id)
        if out is None:
            return False
        self._end_output(out, "stopped locally", bye=False)
        return True

    # -- inspection -------------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """The sessions, for the CLI, the HTTP API and tests."""
        out = []
        for leg in self.legs.values():
            out.append(
                {
                    "key": leg.key,
                    "kind": leg.kind,
                    "source": leg.source_id,
                    "device_id": leg.device_id,
                    "upper": leg.upper_id,
                    "ssrc": leg.ssrc,
                    "device_ssrc": leg.answer.ssrc if leg.answer is not None else None,
                    "transport": leg.transport,
                    "port": leg.port,
                    "ready": _is_ready(leg),
                    "outputs": [
                        {
                            "id": o.output_id,
                            "upper": o.upper_id,
                            "device_id": o.device_id,
                            "ssrc": o.ssrc,
                            "transport": o.transport,
                            "port": o.port,
                            "remote": o.remote,
                            "call_id": o.call_id,
                        }
                        for o in leg.outputs.values()
                    ],
                }
            )
        return out


def _fail_leg(leg: Leg, exc: MediaError) -> None:
    """Fail whatever the leg's waiters still wait for; the exceptions count as retrieved
    (nobody may be waiting any more)."""
    for fut in (leg.opened, leg.ready):
        if fut is not None and not fut.done():
            fut.set_exception(exc)
            fut.exception()


def _is_ready(leg: Leg) -> bool:
    return leg.ready is not None and leg.ready.done() and leg.ready.exception() is None
