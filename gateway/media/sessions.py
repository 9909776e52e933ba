"""The media session table: which relay stream feeds whom, and when it all ends.

GB/T 28181-2022 §9.2 (live view), §9.8–§9.9 (playback, download), §9.12 (voice broadcast),
Annex K (media keep-alive); reference §6 and §7.4. The social units' networks are not reachable
from the city network, so media always passes through the relay.

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

This module is bookkeeping only. The SIP flows that fill the table live with the side that owns
them (:mod:`gateway.uplink.calls`: upper→device INVITE, playback, download, MANSRTSP;
:mod:`gateway.downlink.broadcast`: the device side of a voice broadcast). The table knows a
leg's or output's signalling only as an opaque value ``D`` (their dialog); when teardown must
say BYE it hands that value back through the ``hang_up`` callable it was built with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import structlog

from gateway.media.relay import PortsExhausted, Relay, RelayError, Transport
from gateway.media.sdp import Sdp, settled_transport
from gateway.media.ssrc import SsrcExhausted, SsrcPool
from gateway.metrics import Metrics
from gateway.settings import MediaSection
from gateway.tasks import TaskSet

log = structlog.get_logger("gateway.media.sessions")

PLAY, PLAYBACK, DOWNLOAD, BROADCAST = "Play", "Playback", "Download", "Broadcast"
OPPOSITE: dict[Transport, Transport] = {
    "udp": "udp",
    "tcp-passive": "tcp-active",
    "tcp-active": "tcp-passive",
}
"""The transport role that answers an offered one (RFC 4145 ``a=setup``: active meets passive)."""
SDP_TYPE = "application/sdp"

D = TypeVar("D")


class MediaError(Exception):
    """A session could not be set up; ``status``/``reason`` answer the INVITE."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(slots=True, eq=False)
class Leg(Generic[D]):
    """The gateway's INVITE and the relay stream fed by it."""

    key: str
    kind: str
    source_id: str  # the channel (or, for broadcast audio, the upper's SourceID) that sends
    device_id: str | None = None  # the device the leg goes to, if any
    upper_id: str | None = None  # the upper the leg goes to (broadcast audio)
    ssrc: str = ""  # the SSRC the gateway offered (from its pool)
    transport: Transport = "udp"
    port: int = 0
    call_id: str = ""  # the Call-ID of the gateway's INVITE, once sent
    dialog: D | None = None
    answer: Sdp | None = None
    answer_headers: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Output[D]] = field(default_factory=dict)
    waiters: int = 0
    opened: asyncio.Future[None] | None = None  # the relay stream is open
    ready: asyncio.Future[None] | None = None  # the far end answered
    setup: asyncio.Task[None] | None = None
    ended: bool = False
    end_reason: str = ""
    started_at: float = 0.0
    idle_early: bool = False


@dataclass(slots=True, eq=False)
class Output(Generic[D]):
    """A receiver of a leg's stream: an upper's session, a device's broadcast audio, or a
    local session."""

    output_id: str
    leg: Leg[D]
    ssrc: str
    owned_ssrc: bool
    transport: Transport
    remote: tuple[str, int] | None
    port: int = 0
    upper_id: str | None = None
    device_id: str | None = None
    target_id: str = ""  # the ID the receiver knows the source by
    dialog: D | None = None
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


class QuirkBook(Protocol):
    """Where a device's field quirks are counted (``gateway.downlink.DeviceQuirks``)."""

    def note(self, device_id: str, quirk: str, n: int = 1, **detail: object) -> int: ...


class SessionTable(Generic[D]):
    """Legs, outputs, live-leg sharing, SSRC/port allocation and teardown.

    ``hang_up(dialog)`` says BYE in a leg's or output's dialog when the table ends it with
    ``bye=True``; the flows fill ``dialog`` and ``call_id`` and index the latter with
    :meth:`bind_leg` / :meth:`bind_output`.
    """

    def __init__(
        self,
        *,
        media: MediaSection,
        domain: str,
        relay: Relay,
        metrics: Metrics,
        hang_up: Callable[[D], Coroutine[Any, Any, object]],
        clock: Callable[[], float] = time.time,
        quirks: QuirkBook | None = None,
    ) -> None:
        self.cfg = media
        self.relay = relay
        self.quirks = quirks
        self.metrics = metrics
        self.clock = clock
        self._hang_up = hang_up
        self.ssrcs = SsrcPool(domain)
        self.legs: dict[str, Leg[D]] = {}
        self.live: dict[str, Leg[D]] = {}  # channel -> its shared live leg
        self.legs_by_call: dict[str, Leg[D]] = {}
        self.outputs_by_call: dict[str, Output[D]] = {}
        self.local: dict[str, Output[D]] = {}
        # Told ``(output_id, reason)`` when a local session ends, whoever ended it (its leg
        # ended, its device went offline, it was stopped): the preview frees its viewers.
        self.local_ended: list[Callable[[str, str], None]] = []
        self._ids = itertools.count(1)
        self._tasks = TaskSet(log, "media.task_failed")

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.relay.start()

    async def close(self) -> None:
        """End every leg (BYE in its dialogs), then stop the relay."""
        ends = [self.end_leg(leg, "gateway stopping") for leg in list(self.legs.values())]
        await asyncio.gather(*(t for t in ends if t is not None), return_exceptions=True)
        self._tasks.cancel_all()
        await self.relay.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        return self._tasks.spawn(coro)

    # -- configuration ----------------------------------------------------------------------
    def advertised_host(self) -> str:
        """The address to write into SDP whatever the peer, or ``""`` when the address facing
        each peer must be used (the relay listens on every interface)."""
        if self.cfg.advertised_host:
            return self.cfg.advertised_host
        if self.cfg.host not in ("0.0.0.0", "::", ""):
            return self.cfg.host
        return ""

    def device_transport(self, device_id: str, channel_id: str) -> Transport:
        """The transport to INVITE a device's channel with: per channel, per device, default."""
        per = self.cfg.device_transports
        return per.get(channel_id) or per.get(device_id) or self.cfg.device_transport

    async def is_own_media_address(self, host: str, port: int, *, also: str = "") -> bool:
        """Is ``host:port`` one of the relay's own media ports in use? Sending or connecting
        there would loop into the relay itself. The port must be one the relay holds now; the
        host must be the relay's, the advertised one or ``also`` (the address our offer
        named), unspecified, or, when the relay listens on every interface, any address this
        machine holds (one a socket can be bound to)."""
        if not await self.relay.holds_port(port):
            return False
        if host and host in (self.cfg.host, self.cfg.advertised_host, also):
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False  # a name: not resolved here (that could block); the relay checks too
        if addr.is_unspecified:
            return True
        if self.cfg.host not in ("0.0.0.0", "::", ""):
            return False  # the relay is bound to one address, named above
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((str(addr), 0))
            except OSError:
                return False
        return True

    async def use_answer(self, leg: Leg[D], answer: Sdp, *, offered_host: str) -> None:
        """Settle the leg's transport from the far end's answer and connect when that leaves
        us the active role (RFC 3264 §6, RFC 4145 §4.1; :func:`settled_transport`).

        An answer that changes the transport (UDP for TCP, or ``a=setup:active`` answered to
        our ``active``) is taken: the relay takes the input again on the offered port number
        (kept for both protocols until now), which is where the far end sends or connects. An
        answer naming the gateway's own media address is refused: nobody is at that end.
        Raises :class:`MediaError` (502) when the leg cannot carry media: the flow BYEs the
        far end, and no 200 goes to a receiver."""
        role = settled_transport(leg.transport, answer)
        if role != leg.transport:
            self.metrics.inc("media.answer.transport_changed")
            if self.quirks is not None and leg.device_id:
                self.quirks.note(
                    leg.device_id,
                    "answer_transport",
                    offered=leg.transport,
                    answered=f"{answer.proto} setup={answer.setup or '-'}",
                )
            log.info(
                "media.answer_transport_changed",
                key=leg.key,
                device_id=leg.device_id,
                upper=leg.upper_id,
                offered=leg.transport,
                answered=f"{answer.proto} setup={answer.setup or '-'}",
                ours=role,
            )
        try:
            await self.relay.settle_input(leg.key, role)  # also when unchanged: frees the spare
        except (RelayError, OSError) as exc:
            self._refuse_answer(leg, f"cannot take {role} on port {leg.port}: {exc}")
            raise MediaError(
                502, f"Bad Gateway (the answer's transport {role} is not usable)"
            ) from None
        leg.transport = role
        if role != "tcp-active":
            return
        remote = (answer.host, answer.port)
        if answer.port == 0 or await self.is_own_media_address(*remote, also=offered_host):
            self._refuse_answer(leg, f"nobody to connect to at {remote[0]}:{remote[1]}")
            raise MediaError(502, "Bad Gateway (the answer names no address to connect to)")
        await self.relay.connect_stream(leg.key, remote)

    def _refuse_answer(self, leg: Leg[D], why: str) -> None:
        self.metrics.inc("media.answer.refused")
        log.warning(
            "media.answer_refused",
            key=leg.key,
            device_id=leg.device_id,
            upper=leg.upper_id,
            call_id=leg.call_id,
            reason=why[:200],
        )

    # -- legs -------------------------------------------------------------------------------
    def live_leg(self, channel: str) -> Leg[D] | None:
        """The live leg of ``channel`` a new viewer may share (Annex L), if one is running."""
        leg = self.live.get(channel)
        return None if leg is None or leg.ended else leg

    def add_leg(
        self,
        kind: str,
        source_id: str,
        transport: Transport,
        *,
        device_id: str | None = None,
        upper_id: str | None = None,
    ) -> Leg[D]:
        """A new leg in the table; a live one becomes the channel's shared leg."""
        loop = asyncio.get_running_loop()
        leg: Leg[D] = Leg(
            key=f"s{next(self._ids)}",
            kind=kind,
            source_id=source_id,
            device_id=device_id,
            upper_id=upper_id,
            transport=transport,
            opened=loop.create_future(),
            ready=loop.create_future(),
            started_at=self.clock(),
        )
        self.legs[leg.key] = leg
        if kind == PLAY:
            self.live[source_id] = leg
        return leg

    def bind_leg(self, leg: Leg[D], call_id: str) -> None:
        """Index the leg by the Call-ID of the gateway's INVITE (before it is sent: the answer
        and an early BYE find it)."""
        leg.call_id = call_id
        self.legs_by_call[call_id] = leg

    def bind_output(self, out: Output[D], call_id: str) -> None:
        """Index an output by the Call-ID of the INVITE it answered."""
        out.call_id = call_id
        self.outputs_by_call[call_id] = out

    async def open_leg(self, leg: Leg[D], *, history: bool) -> None:
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

    def start_leg(
        self, leg: Leg[D], connect: Callable[[Leg[D]], Coroutine[Any, Any, None]]
    ) -> None:
        """Open the leg's stream, then run ``connect(leg)`` (the flow's INVITE) in the
        background; the leg's ``opened``/``ready`` futures tell its waiters how it went."""
        leg.setup = self.spawn(self._set_up(leg, connect))

    async def _set_up(
        self, leg: Leg[D], connect: Callable[[Leg[D]], Coroutine[Any, Any, None]]
    ) -> None:
        assert leg.opened is not None and leg.ready is not None
        try:
            await self.open_leg(leg, history=leg.kind != PLAY)
            leg.opened.set_result(None)
            await connect(leg)
        except MediaError as exc:
            self.end_leg(leg, f"setup failed: {exc.reason}")
            _fail_leg(leg, exc)
            return
        except asyncio.CancelledError:
            _fail_leg(leg, MediaError(486, f"Busy Here (the stream ended: {leg.end_reason})"))
            raise
        except Exception as exc:
            self.metrics.inc("media.setup_error")
            log.exception("media.setup_error", key=leg.key, device_id=leg.device_id)
            self.end_leg(leg, f"setup failed: {type(exc).__name__}")
            _fail_leg(leg, MediaError(502, "Bad Gateway (the device's answer could not be used)"))
            return
        self.mark_ready(leg)

    def mark_ready(self, leg: Leg[D]) -> None:
        """The far end answered: release the waiters; an idle report that came before the
        answer is checked again one ``rtp_timeout`` later."""
        assert leg.ready is not None
        if not leg.ready.done():
            leg.ready.set_result(None)
        if leg.idle_early:
            self.spawn(self._check_idle(leg))

    async def join(
        self,
        leg: Leg[D],
        transport: Transport,
        remote: tuple[str, int] | None,
        want_ssrc: str | None,
        *,
        history: bool,
    ) -> Output[D]:
        """Add an output to ``leg`` once its stream is open and return it when the far end has
        answered; a leg left with neither outputs nor waiters ends."""
        leg.waiters += 1
        out: Output[D] | None = None
        try:
            assert leg.opened is not None and leg.ready is not None
            # The output exists before the device is INVITEd, so the first packets (and the
            # key frame they carry) reach the receiver.
            await asyncio.shield(leg.opened)
            out = await self.add_output(leg, transport, remote, want_ssrc, history=history)
            await asyncio.shield(leg.ready)
            if out.ended or leg.ended:
                raise MediaError(
                    486, f"Busy Here (the stream ended: {leg.end_reason or 'receiver lost'})"
                )
            return out
        except BaseException:
            if out is not None:
                self.end_output(out, "setup failed", bye=False, cascade=False)
            raise
        finally:
            leg.waiters -= 1
            if not leg.outputs and leg.waiters == 0 and not leg.ended:
                self.end_leg(leg, "no receiver left")

    async def _check_idle(self, leg: Leg[D]) -> None:
        """The relay reported the stream idle before the far end answered: look again one
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
            self.end_leg(leg, "no RTP")

    # -- outputs ----------------------------------------------------------------------------
    async def add_output(
        self,
        leg: Leg[D],
        transport: Transport,
        remote: tuple[str, int] | None,
        want_ssrc: str | None,
        *,
        history: bool,
        device_id: str | None = None,
    ) -> Output[D]:
        """A relay output of ``leg`` with ``want_ssrc`` or one from the pool."""
        if leg.ended:
            raise MediaError(486, f"Busy Here (the stream ended: {leg.end_reason})")
        if (
            transport != "tcp-passive"
            and remote is not None
            and await self.is_own_media_address(*remote)
        ):
            # The relay would feed itself: another stream's input, or a loop.
            self.metrics.inc("media.offer.own_address")
            log.warning("media.offer_own_address", key=leg.key, remote=f"{remote[0]}:{remote[1]}")
            raise MediaError(
                488, "Not Acceptable Here (the offer names the gateway's own media port)"
            )
        owned = want_ssrc is None
        try:
            ssrc = want_ssrc if want_ssrc is not None else self.ssrcs.take(history=history)
        except SsrcExhausted:
            raise MediaError(486, "Busy Here (no SSRC free)") from None
        out: Output[D] = Output(
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

    def _release(self, out: Output[D]) -> None:
        if out.owned_ssrc:
            self.ssrcs.release(out.ssrc)
            out.owned_ssrc = False

    # -- ending -----------------------------------------------------------------------------
    def end_leg(self, leg: Leg[D], reason: str, *, bye: bool = True) -> asyncio.Task[Any] | None:
        """End a leg and all its outputs (BYE in each output's dialog; in the leg's own when
        ``bye``). Returns the cleanup task."""
        if leg.ended:
            return None
        leg.ended = True
        leg.end_reason = reason
        self.legs.pop(leg.key, None)
        if self.live.get(leg.source_id) is leg:
            del self.live[leg.source_id]
        if leg.call_id:
            self.legs_by_call.pop(leg.call_id, None)
        for out in list(leg.outputs.values()):
            self.end_output(out, reason, bye=True, cascade=False)
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

    async def _close_leg(self, leg: Leg[D], dialog: D | None) -> None:
        if dialog is not None:
            await self._hang_up(dialog)
        try:
            await self.relay.close_stream(leg.key)
        except RelayError:
            pass

    def end_output(self, out: Output[D], reason: str, *, bye: bool, cascade: bool = True) -> None:
        """Remove one receiver (BYE in its dialog when ``bye``); with ``cascade`` the leg ends
        with its last output."""
        if out.ended:
            return
        out.ended = True
        leg = out.leg
        leg.outputs.pop(out.output_id, None)
        if out.call_id and self.outputs_by_call.get(out.call_id) is out:
            del self.outputs_by_call[out.call_id]
        was_local = self.local.pop(out.output_id, None) is not None
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
            self.spawn(self._hang_up(out.dialog))
        if was_local:
            for hear in list(self.local_ended):
                try:
                    hear(out.output_id, reason)
                except Exception:
                    log.exception("media.local_ended_listener_failed", output=out.output_id)
        if not leg.ended:
            self.spawn(self._remove_output(leg.key, out.output_id))
            if cascade and not leg.outputs and leg.waiters == 0:
                self.end_leg(leg, "no receiver left")

    async def _remove_output(self, key: str, output_id: str) -> None:
        try:
            await self.relay.remove_output(key, output_id)
        except RelayError:
            pass

    def end_device(self, device_id: str, reason: str) -> None:
        """A device went offline: its legs and its outputs end without BYE to it."""
        for leg in [x for x in self.legs.values() if x.device_id == device_id]:
            self.end_leg(leg, reason, bye=False)
        for out in [o for o in self.outputs_by_call.values() if o.device_id == device_id]:
            self.end_output(out, reason, bye=False)

    def end_upper(self, upper_id: str, reason: str) -> None:
        """An upper went offline: its outputs and legs end without BYE to it."""
        for out in [o for o in self.outputs_by_call.values() if o.upper_id == upper_id]:
            self.end_output(out, reason, bye=False)
        for leg in [x for x in self.legs.values() if x.upper_id == upper_id]:
            self.end_leg(leg, reason, bye=False)

    def on_relay_event(self, stream_id: str, output_id: str | None, event: str) -> None:
        """The relay saw no RTP for ``rtp_timeout`` (``idle``), an output's receiver refused
        RTP for as long (``unreachable``), or a TCP connection closed (``closed``)."""
        leg = self.legs.get(stream_id)
        if leg is None:
            return
        self.metrics.inc(f"media.relay.{event}")
        if event == "idle" and not is_ready(leg):
            # Counted from the stream's opening: the far end has not even answered yet. The
            # INVITE timeout governs until it does; then the stream gets its own check.
            leg.idle_early = True
            return
        if output_id is not None:
            out = leg.outputs.get(output_id)
            if out is not None:
                self.end_output(out, f"media {event}", bye=True)
            return
        self.end_leg(leg, "no RTP" if event == "idle" else f"media {event}", bye=True)

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
                    "ready": is_ready(leg),
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


def _fail_leg(leg: Leg[Any], exc: MediaError) -> None:
    """Fail whatever the leg's waiters still wait for; the exceptions count as retrieved
    (nobody may be waiting any more)."""
    for fut in (leg.opened, leg.ready):
        if fut is not None and not fut.done():
            fut.set_exception(exc)
            fut.exception()


def is_ready(leg: Leg[Any]) -> bool:
    """The leg's far end has answered and the stream is in use."""
    return leg.ready is not None and leg.ready.done() and leg.ready.exception() is None
