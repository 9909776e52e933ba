"""Preview sessions: one WebRTC peer connection per viewer, one feed per previewed channel.

WHEP (RFC 9725) gives the offer and takes the answer; this module does the rest. A preview
joins its channel's feed (:mod:`gateway.preview.feed`): the first viewer of a channel starts a
local session on the channel's shared live leg (``Calls.start_local``: one device INVITE per
channel, GB/T 28181-2016 Annex L), the last one to leave stops it (the leg itself ends only when
no upper uses it either). The answer is non-trickle (RFC 9725 §4.1 allows it; all host
candidates are in it) and offers H.264 only (RFC 6184, packetization-mode 1, the profiles aiortc
declares), sent from the camera's own access units without decoding or encoding.

ICE (RFC 8445) host candidates come from aioice's address list. ``preview.ice_addresses``
replaces that list by patching ``aioice.ice.get_host_addresses``: the patch is process-global
(every aiortc connection of the process, a test's own client too, gathers on those addresses);
it is installed by :meth:`Previews.start` and removed by :meth:`Previews.close`.
``preview.announce_host`` rewrites the host candidates' address in the answer (1:1 NAT).

A picture-loss report from the browser (RTCP PLI or FIR) cannot be answered by an encoder
here: the device is asked for a key frame instead (DeviceControl ``IFameCmd``), at most once
per ``KEY_REQUEST_INTERVAL`` a channel; so is a feed that joins a stream an upper already takes.

A preview ends on :meth:`Previews.end` (``deleted``), an ICE or DTLS failure or no connection
within ``CONNECT_TIMEOUT`` of the answer (``ice_failed``), the peer connection closing
(``closed``), its device going offline (``device_offline``), its leg ending otherwise
(``leg_ended``), ``preview.max_seconds`` (``max_seconds``), the gateway stopping (``stopping``)
or its RTP sender stopping while the connection stays up (``error``).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
import structlog
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as rtc_sdp
from aiortc.codecs import CODECS
from aiortc.exceptions import OperationError
from aiortc.rtcpeerconnection import filter_preferred_codecs, find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from gateway.downlink import Downlink, QueryError
from gateway.manscdp import DeviceControl
from gateway.media import (
    MediaError,
    ParameterSets,
    SessionTable,
    bind_udp,
    is_ready,
    receiver_for,
)
from gateway.metrics import Metrics
from gateway.preview.feed import (
    PASSTHROUGH_AUDIO,
    Feed,
    FeedSocket,
    ParamSets,
    UnitReceiver,
    Viewer,
)
from gateway.preview.tracks import AudioPassthrough, VideoPassthrough
from gateway.settings import PreviewSection
from gateway.tasks import TaskSet
from gateway.uplink import Calls

log = structlog.get_logger("gateway.preview")

REASONS = (
    "deleted",
    "ice_failed",
    "closed",
    "device_offline",
    "leg_ended",
    "max_seconds",
    "stopping",
    "error",
)
RETRY_AFTER = 5  # seconds a client refused for the session limit is told to wait
KEY_REQUEST_INTERVAL = 2.0  # seconds between two key-frame requests to one channel's device
CONNECT_TIMEOUT = 10.0  # seconds an answered preview has to get ICE and DTLS up
MAX_REMOTE_CANDIDATES = 16  # an offer's candidates kept per m-section (aioice checks them all)
NO_PICTURE_TYPES = ("133", "134", "135", "136", "137")  # GB/T 28181-2016 Appendix D
MAX_OWNERS_TRACKED = 4096  # owners whose open rate is remembered; the idlest are forgotten
H265_MESSAGE = (
    "the channel's video is H.265, which a browser cannot be assumed to take over WebRTC; "
    "preview needs an H.264 channel"
)


class PreviewError(Exception):
    """A preview could not be opened: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def depacketiser(encoding: str) -> tuple[UnitReceiver, ParamSets] | None:
    """The receiver for the answered rtpmap encoding and a parameter-set keeper, or None for
    an encoding the gateway cannot take apart."""
    receiver = receiver_for(encoding)
    if receiver is None:
        return None
    return receiver, ParameterSets()


def h264_capabilities() -> list[RTCRtpCodecCapability]:
    """aiortc's H.264 (packetization-mode 1) and RTX: the only video the answer may hold."""
    caps = RTCRtpSender.getCapabilities("video").codecs
    h264 = [
        c
        for c in caps
        if c.mimeType.lower() == "video/h264"
        and str(c.parameters.get("packetization-mode", "0")) == "1"
    ]
    return h264 + [c for c in caps if c.mimeType.lower() == "video/rtx"]


def offer_codecs(offer: rtc_sdp.SessionDescription, kind: str) -> list[str]:
    """The codec names (upper case) of the first ``kind`` m-line of the offer."""
    for media in offer.media:
        if media.kind == kind:
            return [c.name.upper() for c in media.rtp.codecs]
    return []


def screen_candidates(offer: str, limit: int = MAX_REMOTE_CANDIDATES) -> tuple[str, int]:
    """``offer`` with its remote candidates screened, and how many were dropped for the limit.

    * A candidate named by an mDNS ``.local`` name (RFC 8839 §5.1 allows an FQDN; browsers hide
      their addresses so, draft-ietf-mmusic-mdns-ice-candidates) is dropped: such a name
      resolves only on the browser's own link, which the gateway is seldom on, and aioice's
      resolver is bound to the first event loop of its thread. The browser's checks still
      reach the gateway's candidates and are answered as peer-reflexive (RFC 8445 §7.3.1.3).
    * At most ``limit`` candidates are kept per m-section (the first ones: a browser lists its
      best first, RFC 8445 §5.1.2): aioice sends connectivity checks to every pair (RFC 8445
      §6.1.2), so an offer listing hundreds of arbitrary hosts would make each session a STUN
      sender to all of them.
    """
    kept: list[str] = []
    in_section = 0
    dropped = 0
    changed = False
    for line in offer.splitlines():
        if line.startswith("m="):
            in_section = 0
        elif line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 4 and fields[4].lower().endswith(".local"):
                changed = True
                continue
            if in_section >= limit:
                dropped += 1
                changed = True
                continue
            in_section += 1
        kept.append(line)
    if not changed:
        return offer, 0
    return "\r\n".join(kept) + "\r\n", dropped


def announce(answer: str, host: str) -> str:
    """``answer`` with ``host`` as the address of every host candidate and of ``c=``
    (RFC 8839 §5.1: the candidate's connection-address is its 5th field)."""
    lines = []
    for line in answer.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) >= 8 and fields[6] == "typ" and fields[7] == "host":
                fields[4] = host
                line = " ".join(fields)
        elif line.startswith("c=IN IP4 ") or line.startswith("c=IN IP6 "):
            line = f"c=IN {'IP6' if ':' in host else 'IP4'} {host}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@dataclass(eq=False)
class Session:
    """One preview: a peer connection fed by a viewer of a channel's feed."""

    id: str
    channel_id: str
    owner: str
    started_at: float
    opened: float  # monotonic, for the first-frame time
    viewer: Viewer
    feed: Feed
    pc: RTCPeerConnection | None = None
    state: str = "connecting"
    frames_sent: int = 0
    bytes_sent: int = 0
    first_frame_ms: float | None = None
    end_reason: str = ""
    timer: asyncio.TimerHandle | None = None
    connect_timer: asyncio.TimerHandle | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel_id": self.channel_id,
            "owner": self.owner,
            "started_at": self.started_at,
            "state": self.state,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "first_frame_ms": self.first_frame_ms,
        }


class Previews:
    """Every preview of the gateway."""

    def __init__(
        self,
        *,
        settings: PreviewSection,
        calls: Calls,
        media: SessionTable[Any],
        downlink: Downlink,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = settings
        self.calls = calls
        self.media = media
        self.downlink = downlink
        self.metrics = metrics
        self.clock = clock
        self.feeds: dict[str, Feed] = {}  # channel -> its feed
        self._by_output: dict[str, Feed] = {}  # local session (output) -> feed
        self._sessions: dict[str, Session] = {}
        self._opening = 0  # open() calls between the limit check and a session or a refusal
        self._opening_by: dict[str, int] = {}  # the same, per owner
        self._buckets: dict[str, tuple[float, float]] = {}  # owner -> (tokens, monotonic at)
        self._closing = False
        self._tasks = TaskSet(log, "preview.task_failed")
        self._saved_host_addresses: Any = None
        self._patch: Callable[[bool, bool], list[str]] | None = None
        self.connect_timeout = CONNECT_TIMEOUT  # tests shorten it

    # -- life -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Hear of local sessions ending; restrict ICE host addresses when configured."""
        self._closing = False
        if self._on_local_ended not in self.media.local_ended:
            self.media.local_ended.append(self._on_local_ended)
        if self.cfg.ice_addresses:
            self._patch_host_addresses(tuple(self.cfg.ice_addresses))

    async def close(self) -> None:
        """End every preview (reason ``stopping``) and free the legs."""
        self._closing = True
        ends = [self._end(s, "stopping") for s in list(self._sessions.values())]
        await asyncio.gather(*ends, return_exceptions=True)
        for feed in list(self.feeds.values()):
            self._stop_feed(feed)
        if self._on_local_ended in self.media.local_ended:
            self.media.local_ended.remove(self._on_local_ended)
        self._tasks.cancel_all()
        self._unpatch_host_addresses()

    def _patch_host_addresses(self, addresses: tuple[str, ...]) -> None:
        """aioice gathers host candidates from ``aioice.ice.get_host_addresses`` (and never
        from 127.0.0.1): give it the configured addresses instead. Process-global."""

        def configured(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in addresses if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        if self._patch is None:
            self._saved_host_addresses = aioice.ice.get_host_addresses
        self._patch = configured
        aioice.ice.get_host_addresses = configured

    def _unpatch_host_addresses(self) -> None:
        """Put aioice's own function back, unless another patch has replaced ours since."""
        if self._patch is not None and aioice.ice.get_host_addresses is self._patch:
            aioice.ice.get_host_addresses = self._saved_host_addresses
        self._patch = None
        self._saved_host_addresses = None

    @property
    def active(self) -> int:
        return len(self._sessions)

    # -- opening ----------------------------------------------------------------------------
    async def open(self, channel_id: str, offer: str, *, owner: str) -> tuple[str, str]:
        """Open a preview of ``channel_id`` for the SDP ``offer``; returns (session id, SDP
        answer). Raises :class:`PreviewError`."""
        try:
            try:
                return await self._open(channel_id, offer, owner)
            except (PreviewError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a bug here must answer, not hang the request
                self.metrics.inc("preview.error")
                log.exception("preview.open_failed", channel=channel_id[:40], owner=owner)
                raise PreviewError(500, f"internal error ({type(exc).__name__})") from None
        except PreviewError as exc:
            self.metrics.inc(f"preview.refused.{exc.status}")
            log.info(
                "preview.refused",
                channel=channel_id[:40],
                owner=owner,
                status=exc.status,
                why=exc.message[:200],
            )
            raise

    async def _open(self, channel_id: str, offer_sdp: str, owner: str) -> tuple[str, str]:
        if not self.cfg.enabled:
            raise PreviewError(503, "preview is disabled ([preview] enabled = false)")
        if self._closing:
            raise PreviewError(503, "the gateway is stopping", retry_after=RETRY_AFTER)
        if len(self._sessions) + self._opening >= self.cfg.max_sessions:
            raise PreviewError(
                503,
                f"the preview limit ({self.cfg.max_sessions}) is reached",
                retry_after=RETRY_AFTER,
            )
        self._check_owner(owner)
        self._check_channel(channel_id)
        offer_sdp, dropped = screen_candidates(offer_sdp)
        if dropped:
            self.metrics.inc("preview.offer.candidates_dropped", dropped)
            log.info("preview.offer_candidates_dropped", owner=owner, dropped=dropped)
        offer = parse_offer(offer_sdp)
        self._opening += 1
        self._opening_by[owner] = self._opening_by.get(owner, 0) + 1
        started = time.monotonic()
        viewer = Viewer(self.cfg.max_viewer_lag_frames, self.cfg.gop_cache_bytes)
        feed: Feed | None = None
        session: Session | None = None
        try:
            feed = await self._join(channel_id, viewer)
            if feed.video_codec == "h265":
                raise PreviewError(415, H265_MESSAGE)
            if feed.video_codec != "h264":
                raise PreviewError(
                    415, f"the channel's video is {feed.video_codec}; preview sends H.264 only"
                )
            session = Session(
                id=secrets.token_urlsafe(16),
                channel_id=channel_id,
                owner=owner,
                started_at=self.clock(),
                opened=started,
                viewer=viewer,
                feed=feed,
            )
            answer = await self._answer(session, offer_sdp, offer)
        except BaseException:
            self._opening -= 1
            self._opened_by(owner)
            if session is not None and session.pc is not None:
                self._tasks.spawn(session.pc.close())
            viewer.close()
            if feed is not None:
                self._leave(feed, viewer)
            raise
        self._opening -= 1
        self._opened_by(owner)
        if self._closing or feed.ended:
            viewer.close()
            self._leave(feed, viewer)
            assert session.pc is not None
            self._tasks.spawn(session.pc.close())
            raise PreviewError(503, "the channel's stream ended", retry_after=RETRY_AFTER)
        self._sessions[session.id] = session
        loop = asyncio.get_running_loop()
        # ICE fails by itself only once it knows the peer's last candidate (RFC 8838 §4): a
        # peer that sends no end-of-candidates and never connects must not hold the leg.
        session.connect_timer = loop.call_later(
            self.connect_timeout, self._connect_overdue, session.id
        )
        if self.cfg.max_seconds > 0:
            session.timer = loop.call_later(
                self.cfg.max_seconds, self._end_soon, session.id, "max_seconds"
            )
        self.metrics.inc("preview.started")
        log.info(
            "preview.started",
            session=session.id[:8],
            channel=channel_id,
            owner=owner,
            viewers=len(feed.viewers),
            warm=bool(viewer.video),
        )
        return session.id, answer

    def _check_channel(self, channel_id: str) -> None:
        """404 before anything is asked of a device for an ID that is not a video channel: not
        a catalog item of a registered device (a device ID itself is allowed: an IPC is often
        its own channel), or a GB/T 28181-2016 Appendix D type code (ID digits 11-13) with no
        picture: 133-137 (display, alarm input/output, voice input/output) or 2xx (platforms,
        business groups 215, virtual organisations 216). Other codes and non-standard IDs are
        left to the device to accept or refuse."""
        if channel_id not in self.downlink.devices and (
            self.downlink.catalog.get(channel_id) is None
            or self.downlink.device(channel_id) is None
        ):
            raise PreviewError(404, "no such channel")
        if len(channel_id) == 20 and channel_id.isdigit():
            code = channel_id[10:13]
            if code in NO_PICTURE_TYPES or code.startswith("2"):
                raise PreviewError(
                    404, f"{channel_id} is not a video channel (GB/T 28181 type code {code})"
                )

    def _check_owner(self, owner: str) -> None:
        """One owner's share: ``max_sessions_per_owner`` open at once (503) and
        ``opens_per_minute`` (a token bucket, 429), so one viewer cannot take every preview
        nor make the gateway INVITE and set up ICE/DTLS without pause."""
        limit = self.cfg.max_sessions_per_owner
        held = sum(1 for s in self._sessions.values() if s.owner == owner)
        if held + self._opening_by.get(owner, 0) >= limit:
            raise PreviewError(
                503,
                f"the per-viewer preview limit ({limit}) is reached: close a preview first",
                retry_after=RETRY_AFTER,
            )
        rate = self.cfg.opens_per_minute / 60.0  # tokens a second
        burst = float(self.cfg.opens_per_minute)
        now = time.monotonic()
        tokens, at = self._buckets.pop(owner, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if len(self._buckets) >= MAX_OWNERS_TRACKED:
            self._forget_owners(now, rate, burst)
        if tokens < 1.0:
            self._buckets[owner] = (tokens, now)
            raise PreviewError(
                429,
                f"too many previews opened ({self.cfg.opens_per_minute} a minute per viewer)",
                retry_after=max(1, int((1.0 - tokens) / rate + 0.999)),
            )
        self._buckets[owner] = (tokens - 1.0, now)

    def _forget_owners(self, now: float, rate: float, burst: float) -> None:
        """Keep the owner table bounded: drop owners whose bucket has refilled (they are as
        new), then, if still full, the ones that opened least recently (dicts keep insertion
        order and an owner is re-inserted at each open)."""
        for owner, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate >= burst:
                del self._buckets[owner]
        while len(self._buckets) >= MAX_OWNERS_TRACKED:
            del self._buckets[next(iter(self._buckets))]

    def _opened_by(self, owner: str) -> None:
        left = self._opening_by.get(owner, 0) - 1
        if left > 0:
            self._opening_by[owner] = left
        else:
            self._opening_by.pop(owner, None)

    async def _join(self, channel_id: str, viewer: Viewer) -> Feed:
        """Add ``viewer`` to the channel's feed (starting it if needed) once the feed has
        seen its first key frame; within ``first_frame_timeout``."""
        feed = self.feeds.get(channel_id)
        if feed is None or feed.ended:
            feed = Feed(channel_id, gop_cache_bytes=self.cfg.gop_cache_bytes, metrics=self.metrics)
            feed.key_wanted = functools.partial(self._key_frame_wanted, feed)
            self.feeds[channel_id] = feed
            feed.starter = self._tasks.spawn(self._start_feed(feed))
        feed.add(viewer)
        try:
            await self._wait_keyed(feed)
        except BaseException:
            # The viewer is the open()'s own: it leaves the feed here (open() has no feed to
            # leave yet), and a feed left by its last viewer stops, its starting task too.
            viewer.close()
            self._leave(feed, viewer)
            raise
        return feed

    async def _wait_keyed(self, feed: Feed) -> None:
        """Until the feed has seen its first key frame; within ``first_frame_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.first_frame_timeout
        try:
            await asyncio.wait_for(asyncio.shield(feed.started), deadline - loop.time())
            await asyncio.wait_for(asyncio.shield(feed.keyed), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise PreviewError(
                503,
                f"no key frame from the channel within {self.cfg.first_frame_timeout:g} s",
                retry_after=RETRY_AFTER,
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the request itself is cancelled (client gone, server stopping)
            if feed.ended:  # the feed ended under us (its leg went, the gateway stops)
                raise PreviewError(
                    503, "the channel's stream ended", retry_after=RETRY_AFTER
                ) from None
            raise

    async def _start_feed(self, feed: Feed) -> None:
        """Bind the feed's socket, start the local session, pick the depacketiser."""
        loop = asyncio.get_running_loop()
        try:
            # The relay's large kernel buffer: a busy loop must not lose the channel's frames
            # for every viewer at once (bench/preview.py saw receive-buffer errors without it).
            transport, _ = await loop.create_datagram_endpoint(
                lambda: FeedSocket(feed), sock=bind_udp("127.0.0.1", 0, receive=True)
            )
            feed.transport = transport
            if feed.ended:
                transport.close()
                return
            port = int(transport.get_extra_info("sockname")[1])
            # PS until the device's answer says otherwise (GB/T 28181-2016 §6.1.2: PS is the
            # norm): the first packets, with the first key frame, may come before the answer
            # is read here.
            self._depacketise(feed, "PS")
            leg = self.media.live_leg(feed.channel_id)
            warm = leg is not None and is_ready(leg)
            local = await self.calls.start_local(feed.channel_id, ("127.0.0.1", port))
            if feed.ended:  # every viewer left while the device was INVITEd
                self.calls.stop_local(local.output_id)
                return
            feed.output_id = local.output_id
            feed.source_port = local.port
            self._by_output[local.output_id] = feed
            out = self.media.local.get(local.output_id)
            answer = out.leg.answer if out is not None else None
            encoding = ""
            if answer is not None and answer.rtpmap:
                pt = answer.formats[0] if answer.formats else next(iter(answer.rtpmap))
                encoding = answer.rtpmap.get(pt, "").partition("/")[0]
            if encoding.upper() not in ("", "PS", "MP2P"):
                self._depacketise(feed, encoding)
            log.info(
                "preview.feed_started",
                channel=feed.channel_id,
                output=local.output_id,
                encoding=feed.encoding,
                port=port,
            )
            feed.started.set_result(None)
            if warm:
                # An upper's stream already flows: the feed joins it mid-GOP, so the device is
                # asked for a key frame rather than the viewer waiting for the next one.
                self._key_frame_wanted(feed)
        except MediaError as exc:
            self._fail_feed(feed, _media_refusal(exc))
        except PreviewError as exc:
            self._fail_feed(feed, exc)
        except OSError as exc:
            self.metrics.inc("preview.feed.error")
            log.warning("preview.feed_socket_failed", channel=feed.channel_id, error=str(exc))
            self._fail_feed(feed, PreviewError(503, "no local port for the stream"))
        except asyncio.CancelledError:
            self._fail_feed(feed, PreviewError(503, "the gateway is stopping"))
            raise
        except Exception as exc:
            self.metrics.inc("preview.feed.error")
            log.exception("preview.feed_failed", channel=feed.channel_id)
            self._fail_feed(feed, PreviewError(500, f"internal error ({type(exc).__name__})"))

    @staticmethod
    def _depacketise(feed: Feed, encoding: str) -> None:
        if encoding.upper() in ("H265", "HEVC"):  # RFC 7798's rtpmap name (HEVC: some devices)
            raise PreviewError(415, H265_MESSAGE)
        made = depacketiser(encoding)
        if made is None:
            raise PreviewError(415, f"the device sends {encoding[:20]!r}, not PS or H.264")
        feed.use(made[0], made[1], encoding)

    def _fail_feed(self, feed: Feed, exc: PreviewError) -> None:
        if not feed.started.done():
            feed.started.set_exception(exc)
            feed.started.exception()  # retrieved: the waiters may all be gone
        self._stop_feed(feed)

    async def _answer(
        self, session: Session, offer_sdp: str, offer: rtc_sdp.SessionDescription
    ) -> str:
        """The peer connection and its non-trickle answer."""
        servers = [
            RTCIceServer(
                urls=list(s.urls), username=s.username or None, credential=s.credential or None
            )
            for s in self.cfg.ice_servers
        ]
        # Always a list: None would make aiortc use Google's public STUN server.
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        session.pc = pc
        video = pc.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences(h264_capabilities())
        track = VideoPassthrough(session.viewer, lambda n: self._sent(session, n))
        track.on("ended", lambda: self._track_ended(session))
        video.sender.replaceTrack(track)
        # aiortc's sender answers a PLI or FIR (RFC 4585 §6.3.1, RFC 5104 §4.3.1) by asking its
        # encoder for a key frame, which a passthrough track has not: ask the device instead.
        setattr(video.sender, "_send_keyframe", lambda: self._key_frame_wanted(session.feed))  # noqa: B010
        audio_codec = session.feed.audio_codec
        if audio_codec in PASSTHROUGH_AUDIO and audio_codec.upper() in offer_codecs(offer, "audio"):
            audio = pc.addTransceiver("audio", direction="sendonly")
            audio.setCodecPreferences(
                [
                    c
                    for c in RTCRtpSender.getCapabilities("audio").codecs
                    if c.mimeType.lower() == f"audio/{audio_codec}"
                ]
            )
            audio.sender.replaceTrack(
                AudioPassthrough(session.viewer, lambda n: self._sent_audio(session, n))
            )

        pc.on("connectionstatechange", lambda: self._state_changed(session))
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except OperationError:
            raise PreviewError(415, "the offer has no codec the gateway can answer") from None
        except Exception as exc:  # the offer is the client's: whatever aiortc refuses is a 400
            raise PreviewError(400, f"the offer cannot be used: {str(exc)[:120]}") from None
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # gathers every candidate: non-trickle
        text = pc.localDescription.sdp
        if self.cfg.announce_host:
            text = announce(text, self.cfg.announce_host)
        return text

    def _sent(self, session: Session, size: int) -> None:
        """A frame went to the session's RTP sender."""
        if session.frames_sent == 0:
            elapsed = time.monotonic() - session.opened
            session.first_frame_ms = round(elapsed * 1000, 1)
            self.metrics.observe("preview.first_frame", elapsed)
        session.frames_sent += 1
        session.bytes_sent += size
        self.metrics.inc("preview.frames_sent")
        self.metrics.inc("preview.bytes_sent", size)

    def _sent_audio(self, session: Session, size: int) -> None:
        """An audio chunk went to the session's RTP sender: its bytes count as media sent
        (``preview.bytes_sent``); ``preview.frames_sent`` counts video frames only."""
        session.bytes_sent += size
        self.metrics.inc("preview.bytes_sent", size)

    def _key_frame_wanted(self, feed: Feed) -> None:
        """A viewer lost pictures: ask the device for a key frame (GB/T 28181-2016 §9.3.2,
        DeviceControl ``IFameCmd``), at most once per ``KEY_REQUEST_INTERVAL`` a channel."""
        now = time.monotonic()
        if feed.ended or now - feed.key_asked_at < KEY_REQUEST_INTERVAL:
            self.metrics.inc("preview.key_request.limited")
            return
        feed.key_asked_at = now
        self._tasks.spawn(self._ask_key_frame(feed.channel_id))

    async def _ask_key_frame(self, channel_id: str) -> None:
        self.metrics.inc("preview.key_request.sent")
        try:
            await self.downlink.control(
                channel_id, DeviceControl(sn=0, device_id=channel_id, iframe_cmd="Send")
            )
        except QueryError as exc:
            self.metrics.inc("preview.key_request.failed")
            log.info("preview.key_request_failed", channel=channel_id, error=str(exc)[:200])

    def _track_ended(self, session: Session) -> None:
        """aiortc stops a track when its sender's loop ends: the connection went (its state
        tells, and ends the session with its own reason) or the loop failed (aiortc logged
        it): a session still open a moment later ends as ``error``."""
        if not session.end_reason:
            asyncio.get_running_loop().call_later(1.0, self._end_if_open, session, "error")

    def _end_if_open(self, session: Session, reason: str) -> None:
        if not session.end_reason and self._sessions.get(session.id) is session:
            log.warning("preview.sender_stopped", session=session.id[:8])
            self._end_soon(session.id, reason)

    def _connect_overdue(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None and session.state == "connecting":
            self.metrics.inc("preview.connect_timeout")
            self._end_soon(session_id, "ice_failed")

    def _state_changed(self, session: Session) -> None:
        pc = session.pc
        if pc is None or session.end_reason:
            return
        state = pc.connectionState
        if state == "connected":
            session.state = "connected"
        elif state == "failed":
            self._end_soon(session.id, "ice_failed")
        elif state == "closed":
            self._end_soon(session.id, "closed")

    # -- ending -----------------------------------------------------------------------------
    async def end(self, session_id: str, reason: str = "deleted") -> bool:
        """End one preview; False when there is no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return False
        await self._end(session, reason)
        return True

    def _end_soon(self, session_id: str, reason: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            self._tasks.spawn(self._end(session, reason))

    async def _end(self, session: Session, reason: str) -> None:
        if session.end_reason:
            return
        session.end_reason = reason
        session.state = "ended"
        self._sessions.pop(session.id, None)
        for timer in (session.timer, session.connect_timer):
            if timer is not None:
                timer.cancel()
        session.viewer.close()
        self._leave(session.feed, session.viewer)
        self.metrics.inc(f"preview.ended.{reason}")
        log.info(
            "preview.ended",
            session=session.id[:8],
            channel=session.channel_id,
            reason=reason,
            frames=session.frames_sent,
            bytes=session.bytes_sent,
            skips=session.viewer.skips,
        )
        if session.pc is not None:
            try:
                await session.pc.close()
            except Exception:
                self.metrics.inc("preview.close_error")
                log.exception("preview.close_failed", session=session.id[:8])

    def _leave(self, feed: Feed, viewer: Viewer) -> None:
        """``viewer`` leaves ``feed``; the feed stops with its last viewer."""
        if feed.remove(viewer) and not feed.ended:
            self._stop_feed(feed)

    def _stop_feed(self, feed: Feed) -> None:
        if self.feeds.get(feed.channel_id) is feed:
            del self.feeds[feed.channel_id]
        output_id = feed.output_id
        was_ended = feed.ended
        feed.close()
        starter = feed.starter
        if starter is not None and not starter.done() and starter is not asyncio.current_task():
            # Still binding or INVITEing: cancelled, ``SessionTable.join`` ends the output it
            # may have added and the leg if nobody else waits for it (CANCEL/BYE to the device).
            starter.cancel()
        if output_id is not None:
            self._by_output.pop(output_id, None)
            if not was_ended:
                self.calls.stop_local(output_id)
        if not was_ended:
            log.info(
                "preview.feed_stopped",
                channel=feed.channel_id,
                output=output_id,
                units=feed.units,
                key_frames=feed.key_frames,
            )

    def _on_local_ended(self, output_id: str, reason: str) -> None:
        """``SessionTable.local_ended``: a local session ended, whoever ended it."""
        feed = self._by_output.pop(output_id, None)
        if feed is None:
            return  # not ours, or stopped by us
        why = "device_offline" if reason.startswith("device offline") else "leg_ended"
        log.info("preview.feed_lost", channel=feed.channel_id, output=output_id, reason=reason)
        feed.output_id = None  # gone already: nothing to stop
        for session in [s for s in self._sessions.values() if s.feed is feed]:
            self._tasks.spawn(self._end(session, why))
        self._stop_feed(feed)

    # -- inspection -------------------------------------------------------------------------
    def session(self, session_id: str) -> dict[str, Any] | None:
        session = self._sessions.get(session_id)
        return None if session is None else session.view()

    def sessions(self) -> list[dict[str, Any]]:
        """The open previews, for the API."""
        return [s.view() for s in self._sessions.values()]


def parse_offer(text: str) -> rtc_sdp.SessionDescription:
    """The offer, parsed and checked before anything is asked of the device: 400 for what is
    not SDP, has no video m-line or lacks ICE credentials or a DTLS fingerprint (RFC 8839
    §5.4, RFC 8842 §5); 415 when its video has no H.264 the gateway can send."""
    if not text.lstrip().startswith("v="):
        raise PreviewError(400, "the offer is not SDP")
    try:
        offer = rtc_sdp.SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises whatever the text makes it hit
        raise PreviewError(400, f"the offer is not valid SDP ({type(exc).__name__})") from None
    videos = [m for m in offer.media if m.kind == "video"]
    if not videos:
        raise PreviewError(400, "the offer has no video m-line")
    for media in offer.media:
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise PreviewError(400, "the offer has no ICE username fragment or password")
        if media.dtls is None or not media.dtls.fingerprints:
            raise PreviewError(400, "the offer has no DTLS fingerprint")
    sendable = filter_preferred_codecs(
        find_common_codecs(CODECS["video"], videos[0].rtp.codecs), h264_capabilities()
    )
    if not sendable:
        raise PreviewError(
            415, "the offer has no H.264 (packetization-mode 1, baseline) the gateway can send"
        )
    return offer


def _media_refusal(exc: MediaError) -> PreviewError:
    """The session table's INVITE status as the preview's HTTP one."""
    if exc.status == 404:
        return PreviewError(404, "no such channel")
    if exc.status == 480:
        return PreviewError(409, "the channel's device is offline")
    return PreviewError(
        503, f"the device did not give the stream: {exc.reason}"[:200], retry_after=RETRY_AFTER
    )
