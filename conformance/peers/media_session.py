"""What the simulated peers share about media sessions (GB/T 28181-2022 §9.2, §9.8, §9.12,
Annexes D, G, L; reference §6).

SSRC strings (``y=``, §6.4), the Subject header (§6.9), which transport role the answerer of an
offer plays (§6.5: the answer takes the opposite ``a=setup``), and the records a
:class:`~conformance.peers.device.SimDevice` keeps for each INVITE it answers
(:class:`MediaSession`) and each broadcast INVITE it sends (:class:`BroadcastSession`). The media
library (:mod:`conformance.media`, PyAV underneath) is imported only when a session starts, so a
peer that never streams never loads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conformance.peers.mansrtsp import RtspRequest
from gateway.media.sdp import Sdp
from gateway.sip.dialog import Dialog
from gateway.sip.message import Request

if TYPE_CHECKING:
    from conformance.media.clip import Frame
    from conformance.media.stream import MediaReceiver, MediaSender

SDP_TYPE = "application/sdp"
KINDS = ("Play", "Playback", "Download")
TRANSPORTS = ("udp", "tcp-passive", "tcp-active")
PCMA_PT = 8
PCMA_BYTES = 160  # 20 ms of 8 kHz G.711
DISCARD_PORT = 9  # RFC 4145 §4: the port an active-only TCP endpoint writes in m=

_OPPOSITE = {"udp": "udp", "tcp-passive": "tcp-active", "tcp-active": "tcp-passive"}


def answer_role(offer: Sdp) -> str:
    """The transport role of whoever answers ``offer``: UDP stays UDP; an offerer that listens
    (``a=setup:passive``) is connected to (``tcp-active``), and the other way round."""
    return _OPPOSITE[offer.transport]


def kind_of(session: str) -> str | None:
    """``s=`` as one of :data:`KINDS` (any case), or None."""
    for kind in KINDS:
        if session.strip().lower() == kind.lower():
            return kind
    return None


def make_ssrc(domain: str, serial: int, *, history: bool) -> str:
    """``y=`` (reference §6.4): 0 live / 1 history, digits 4–8 of the domain, a 4-digit serial."""
    digits = "".join(ch for ch in domain if ch.isdigit()).ljust(8, "0")
    return f"{1 if history else 0}{digits[3:8]}{serial % 10_000:04d}"


def valid_ssrc(value: str | None) -> bool:
    return value is not None and value.isdigit() and 0 < len(value) <= 10 and int(value) < 2**32


def subject(sender: str, sender_serial: str, receiver: str, receiver_serial: str = "0") -> str:
    """``Subject: <sender>:<serial>,<receiver>:<serial>`` (2022 Annex L; reference §6.9)."""
    return f"{sender}:{sender_serial},{receiver}:{receiver_serial}"


def parse_subject(value: str | None) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """((sender ID, serial), (receiver ID, serial)), or None when the header is not of that form."""
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2:
        return None
    out = []
    for part in parts:
        ident, _, serial = part.partition(":")
        if not ident.strip():
            return None
        out.append((ident.strip(), serial.strip()))
    return out[0], out[1]


def video_clip() -> tuple[Frame, ...]:
    """The H.264 clip every simulated camera sends (50 frames, 2 s at 25 fps, GOP 25)."""
    from conformance.media.clip import h264_clip

    return h264_clip()


def ps_size(frames: Sequence[Frame], count: int) -> int:
    """Bytes of PS that ``count`` frames of ``frames`` (looped) make: a download's
    ``a=filesize`` (reference §6.7), exact for what the receiver stores."""
    from conformance.media.ps import ps_pack

    sizes = [len(ps_pack(frame, 0)) for frame in frames]
    return sum(sizes[i % len(sizes)] for i in range(count))


def pcma_frames(count: int = 50) -> tuple[Frame, ...]:
    """Audio "frames" for a broadcast sender: 160 bytes (20 ms of A-law silence-ish) each."""
    from conformance.media.clip import Frame

    return tuple(
        Frame(bytes([0xD5 ^ (i & 0x0F)]) * PCMA_BYTES, key=True, index=i) for i in range(count)
    )


def new_sender(frames: Sequence[Frame], **kw: Any) -> MediaSender:
    from conformance.media.stream import MediaSender

    return MediaSender(frames, **kw)


def new_receiver(**kw: Any) -> MediaReceiver:
    from conformance.media.stream import MediaReceiver

    return MediaReceiver(**kw)


def start_sender(sender: MediaSender, role: str, remote: Sdp) -> None:
    """Start sending once the ACK is in: to the far end's ``c=``:``m=`` unless we listen."""
    sender.start(None if role == "tcp-passive" else (remote.host, remote.port))


async def close_quietly(thing: MediaSender | MediaReceiver | None) -> None:
    if thing is None:
        return
    try:
        await thing.close()
    except (OSError, RuntimeError, asyncio.CancelledError):  # pragma: no cover - best effort
        pass


@dataclass(slots=True, eq=False)
class MediaSession:
    """One INVITE a simulated device received for a channel: live (``Play``), ``Playback`` or
    ``Download``. ``ssrc`` is the ``y=`` answered; ``rtp_ssrc`` what the RTP header carries
    (they differ only with the device's ``wrong_ssrc`` switch)."""

    call_id: str
    channel_id: str
    kind: str
    offer: Sdp
    invite: Request
    subject: str | None = None
    answer: Sdp | None = None
    ssrc: str | None = None
    rtp_ssrc: int | None = None
    role: str = "udp"  # the device's transport role: udp / tcp-active / tcp-passive
    sender: MediaSender | None = None
    dialog: Dialog | None = None
    status: int = 0  # final status answered (0: none yet)
    answered: bool = False
    acked: bool = False
    cancelled: bool = False
    torn_down: bool = False  # MANSRTSP TEARDOWN
    replaced: bool = False  # a new INVITE with the same Subject sender serial took over
    ended: bool = False
    ended_by: str | None = None  # "remote" (BYE received), "device" (our BYE), "cancel"
    file_size: int | None = None
    media_status_sent: list[int] = field(default_factory=list)  # NotifyType sent in-dialog
    media_status_answers: list[int] = field(default_factory=list)  # their SIP status
    infos: list[RtspRequest] = field(default_factory=list)
    end_reached: asyncio.Event = field(default_factory=asyncio.Event)  # the file ran out
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set with ``ended``

    @property
    def history(self) -> bool:
        return self.kind != "Play"


@dataclass(slots=True, eq=False)
class BroadcastSession:
    """One voice broadcast (reference §6.8) as the device sees it: the Notify it got, the INVITE
    it sent to the source, and the audio that arrived."""

    call_id: str
    source_id: str
    target_id: str
    offer: Sdp
    receiver: MediaReceiver
    transport: str
    status: int = 0  # final status of our INVITE (0: none yet)
    reason: str = ""
    answer: Sdp | None = None
    response: Any = None  # the 2xx Response
    dialog: Dialog | None = None
    ended: bool = False
    ended_by: str | None = None

    @property
    def packets(self) -> int:
        return self.receiver.packets
