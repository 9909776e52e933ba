"""A simulated GB/T 28181 device (IPC/NVR): the device side of every downlink test and benchmark.

A :class:`SimDevice` registers with digest (GB/T 28181-2022 §9.1; reference §2), keeps alive
(§9.6), re-registers when a keepalive gets 404 and after a remote reboot (``TeleBoot``), answers
every query from a catalog it makes on demand (reference §3; :mod:`conformance.peers.catalog_gen`),
obeys controls (§4), accepts subscriptions and sends NOTIFYs (RFC 6665; reference §5), and sends
alarms and positions. A new catalog subscription gets at once the initial report of 2022 Annex N:
the items in its scope that are not ON (none at all when every item is ON).

Multi-part answers follow 2022 Annex M: the query's MESSAGE gets its 200 at once, then the
``Response`` MESSAGEs go from the device to its server one at a time, each only after the
previous one got its final response.

Many devices share one :class:`~gateway.sip.endpoint.Endpoint` (one socket) through a
:class:`DeviceHub`, which owns the endpoint's MESSAGE and SUBSCRIBE routes and hands each request
to the device it is addressed to (Request-URI user, then To user, then the body's DeviceID; a
channel ID finds the device that owns it). A device costs a few hundred bytes and no task unless
its own keepalive loop is started; :meth:`DeviceHub.start_keepalive` runs one loop for them all.

Media (reference §6): an INVITE to a channel is answered with the device's own SDP and, once
the ACK is in, an H.264 clip in PS over RTP goes to the offer's address (UDP, or TCP in either
role, Annex D): looped for live view, ``t=``-long for playback and download, which end with an
in-dialog ``MediaStatus`` 121. MANSRTSP INFOs (Annex B) pause, resume, seek and change speed.
A ``Notify/Broadcast`` to one of its voice outputs (type 137, ``audio_outputs``) makes the device
INVITE the source for audio (§9.12). Every session is kept in ``media_sessions`` /
``broadcast_sessions`` for tests to read.

Misbehaviour switches (attributes, all off by default) let tests make the device break rules:
``charset_lie``, ``drop_parts``, ``response_delay``, ``garbage``, ``wrong_sum_num``,
``no_keepalive``, ``mute``, ``wrong_ptz_checksum``, ``no_initial_report``,
``no_position_reports``, ``reports_after_end``; field quirks of real devices (issue 15)
``content_length_chars``, ``no_refresh``, ``drop_pipelined``, ``subscribe_mute``,
``ptz_response``, ``no_parent_id``, ``ascii_names``, ``register_to_domain``,
``address_request_uri``, ``unsolicited_sn1``, ``pipeline_messages``; for media
``invite_delay``, ``invite_refuse``, ``invite_mute``, ``wrong_ssrc``, ``media_mute``,
``tcp_retries``, ``tcp_retry_interval``, ``answer_transport``, ``echo_offer_address``,
``long_y``, ``ok_without_to_tag``, ``payload_type`` — see :class:`SimDevice`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import islice
from typing import Any

import structlog

from conformance.peers.catalog_gen import (
    BLOCK,
    TIME_FORMAT,
    channel_item,
    channel_number,
    default_channel_base,
    generate_records,
    group_ids,
    group_items,
    parse_time,
    select_records,
    sub_id,
)
from conformance.peers.catalog_gen import channel_id as make_channel_id
from conformance.peers.mansrtsp import CONTENT_TYPE as MANSRTSP
from conformance.peers.mansrtsp import RtspError, RtspRequest, parse_request
from conformance.peers.mansrtsp import answer as rtsp_answer
from conformance.peers.media_session import (
    DISCARD_PORT,
    SDP_TYPE,
    TRANSPORTS,
    BroadcastSession,
    MediaSession,
    answer_role,
    close_quietly,
    kind_of,
    make_ssrc,
    new_receiver,
    new_sender,
    parse_subject,
    ps_size,
    start_sender,
    subject,
    valid_ssrc,
    video_clip,
)
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.messages import (
    AlarmInfo,
    AlarmNotify,
    AlarmQuery,
    AlarmResponse,
    BasicParam,
    BroadcastNotify,
    BroadcastResponse,
    CatalogItem,
    CatalogNotify,
    CatalogQuery,
    CatalogResponse,
    ConfigDownloadQuery,
    ConfigDownloadResponse,
    CruisePoint,
    CruiseTrack,
    CruiseTrackListQuery,
    CruiseTrackListResponse,
    CruiseTrackQuery,
    CruiseTrackResponse,
    Decoded,
    DeviceConfig,
    DeviceConfigResponse,
    DeviceControl,
    DeviceControlResponse,
    DeviceInfoQuery,
    DeviceInfoResponse,
    DeviceStatusQuery,
    DeviceStatusResponse,
    HomePosition,
    HomePositionQuery,
    HomePositionResponse,
    MediaStatus,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PositionItem,
    Preset,
    PresetQuery,
    PresetQueryResponse,
    PtzPositionQuery,
    PtzPositionResponse,
    RecordInfoQuery,
    RecordInfoResponse,
    RecordItem,
    SDCard,
    SDCardStatusQuery,
    SDCardStatusResponse,
    VideoParamOpt,
    decode,
    encode,
)
from gateway.manscdp.ptz import decode_ptz
from gateway.manscdp.schema import Block
from gateway.media.sdp import Sdp, SdpError, answer_setup, offer_setup, parse_sdp
from gateway.sip.dialog import Dialog, InviteFailed, OutgoingInvite, send_bye
from gateway.sip.digest import DigestClient
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.errors import ParseError, TransactionTimeout, TransportError
from gateway.sip.message import REASONS, Request, Response, make_response, parse
from gateway.sip.transport import Peer

log = structlog.get_logger("conformance.device")

MANSCDP = "Application/MANSCDP+xml"
# Body CmdTypes a SUBSCRIBE may carry (reference §5.1; PTZPosition is 2022).
SUBSCRIBABLE = frozenset({"Catalog", "Alarm", "MobilePosition", "PTZPosition"})
DEFAULT_PRESETS: tuple[Preset, ...] = (
    Preset(preset_id=1, preset_name="大门"),
    Preset(preset_id=2, preset_name="停车场"),
)
NOT_XML = b"this is not XML <Response>\r\n"
_PTZ_RAW = re.compile(rb"<PTZCmd\s*>(.*?)</PTZCmd\s*>", re.DOTALL | re.IGNORECASE)
_SEND_ERRORS = (TransactionTimeout, TransportError, OSError)
MAX_REDIRECTS = 3  # 302s followed in one registration
UDP_LIMIT = 1300  # RFC 3261 §18.1.1: a larger request goes over TCP when the MTU is unknown
VIA_ALLOWANCE = 120  # the Via, Max-Forwards and Content-Length the endpoint adds
VOICE_OUTPUT = 137  # catalog type of a voice output channel (reference §6.8)
VIDEO_TYPES = frozenset({"131", "132"})  # camera, network camera: what an INVITE may name

EventSink = Callable[[str, str, str], None]
"""Called with (device ID, event name, detail) for everything a device does or sees."""


def keepalive_body(device_id: str, sn: int, status: str = "OK", extra: str = "") -> bytes:
    """A Notify/Keepalive body (reference §2.8); ``extra`` is raw XML put before the end tag."""
    return (
        '<?xml version="1.0" encoding="GB2312"?>\r\n'
        "<Notify>\r\n"
        "<CmdType>Keepalive</CmdType>\r\n"
        f"<SN>{sn}</SN>\r\n"
        f"<DeviceID>{device_id}</DeviceID>\r\n"
        f"<Status>{status}</Status>\r\n"
        f"{extra}"
        "</Notify>\r\n"
    ).encode("gb2312")


ONLINE_STATUSES = frozenset({"ON", "ONLINE"})  # catalog Status values that mean online
ABNORMAL_EVENTS = frozenset({"VLOST", "DEFECT"})  # catalog events of a faulty, reachable item


def is_online(status: str | None) -> bool:
    """A catalog item's Status says online (``ON``; ``ONLINE`` seen in practice), or says
    nothing (groups, organisations)."""
    return status is None or status.strip().upper() in ONLINE_STATUSES


def offline_event(status: str | None) -> str:
    """The catalog Event that reports an item with this Status as not online (Annex N)."""
    value = (status or "").strip().upper()
    return value if value in ABNORMAL_EVENTS else "OFF"


def _wrong_sum_problem(text: str) -> str | None:
    """The ``wrong_ptz_checksum`` device's check: byte 8 must be the sum of bytes 2–7 (the
    ``A5`` start byte left out, unlike Appendix A.3). None when the command passes it."""
    s = text.strip()
    try:
        b = bytes.fromhex(s)
    except ValueError:
        return "PTZCmd is not hexadecimal"
    if len(b) != 8:
        return f"PTZCmd must be 8 bytes, got {len(b)}"
    wanted = sum(b[1:7]) & 0xFF
    if b[7] != wanted:
        return f"checksum 0x{b[7]:02X} expected 0x{wanted:02X}"
    return None


def _with_true_sum(text: str) -> str:
    """``text`` with byte 8 replaced by the Appendix A.3 checksum (sum of bytes 1–7)."""
    try:
        b = bytearray(bytes.fromhex(text.strip()))
    except ValueError:
        return text
    if len(b) != 8:
        return text
    b[7] = sum(b[:7]) & 0xFF
    return b.hex().upper()


def _now_text() -> str:
    return datetime.now().strftime(TIME_FORMAT)


def _reason(text: str) -> str:
    return " ".join(text.split())[:120]


def char_count(body: bytes) -> int:
    """How many characters ``body`` holds in the charset it is written in (UTF-8 when it
    decodes as such, else GB 18030): what a device with ``content_length_chars`` declares."""
    try:
        return len(body.decode("utf-8"))
    except UnicodeDecodeError:
        return len(body.decode("gb18030", errors="replace"))


class _CharCountedRequest(Request):
    """A request whose Content-Length counts the body's characters (``content_length_chars``);
    the body bytes all follow, as the field quirk sends them."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        data = super().to_bytes()
        n, chars = len(self.body), char_count(self.body)
        if chars == n:
            return data
        head, sep, body = data.partition(b"\r\n\r\n")
        head = head.replace(f"Content-Length: {n}".encode(), f"Content-Length: {chars}".encode())
        return head + sep + body


def _host_port(peer: Peer) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}"


def _block(tag: str, text: str = "", *children: Block, num: bool = False) -> Block:
    attrib = (("Num", str(len(children))),) if num else ()
    return Block(tag=tag, text=text, children=children, attrib=attrib)


def _leaves(**values: object) -> tuple[Block, ...]:
    return tuple(Block(tag=k, text=str(v)) for k, v in values.items())


# ConfigDownload blocks for the 2022 ConfigTypes (reference §3.7, §4.5), as (field, block).
_STREAM_0 = _leaves(
    StreamNumber=0, VideoFormat=2, Resolution=6, FrameRate=25, BitRateType=1, VideoBitRate=4096
)
_STREAM_1 = _leaves(
    StreamNumber=1, VideoFormat=2, Resolution=5, FrameRate=25, BitRateType=1, VideoBitRate=1024
)
_OSD = _leaves(
    Length=1920, Width=1080, TimeX=10, TimeY=10, TimeEnable=1, TimeType=0, TextEnable=1, SumNum=1
)
_CONFIG_BLOCKS: dict[str, tuple[str, Block]] = {
    "videoparamattribute": (
        "video_param_attribute",
        _block(
            "VideoParamAttribute",
            "",
            _block("Item", "", *_STREAM_0),
            _block("Item", "", *_STREAM_1),
            num=True,
        ),
    ),
    "videorecordplan": (
        "video_record_plan",
        _block("VideoRecordPlan", "", *_leaves(RecordEnable=1, RecordScheduleSumNum=0)),
    ),
    "videoalarmrecord": (
        "video_alarm_record",
        _block("VideoAlarmRecord", "", *_leaves(RecordEnable=1, RecordTime=30, PreRecordTime=5)),
    ),
    "picturemask": ("picture_mask", _block("PictureMask", "", *_leaves(On=0, SumNum=0))),
    "framemirror": ("frame_mirror", _block("FrameMirror", "0")),
    "alarmreport": (
        "alarm_report",
        _block("AlarmReport", "", *_leaves(MotionDetection=1, FieldDetection=0)),
    ),
    "osdconfig": (
        "osd_config",
        _block("OSDConfig", "", *_OSD, _block("Item", "", *_leaves(Text="通道1", X=10, Y=1000))),
    ),
    "snapshotconfig": ("snap_shot", _block("SnapShot", "", *_leaves(SnapNum=1, Interval=1))),
}


@dataclass(slots=True)
class Subscription:
    """One SUBSCRIBE dialog this device is the notifier of (RFC 6665 §4.2; reference §5.1)."""

    kind: str  # the body's CmdType: Catalog, Alarm, MobilePosition, PTZPosition
    query: Message  # the SUBSCRIBE body
    event: str  # the Event header as received, copied into every NOTIFY
    call_id: str
    local_tag: str  # our tag (To of the SUBSCRIBE's 200, From of our NOTIFYs)
    remote_tag: str
    local_uri: str  # the SUBSCRIBE's To URI
    remote_uri: str  # the subscriber's From URI
    target: str  # Request-URI of NOTIFYs: the subscriber's Contact, else its From URI
    peer: Peer  # where NOTIFYs go: the SUBSCRIBE's source address (works behind NAT, on TCP)
    expires_at: float  # time.monotonic()
    remote_cseq: int
    cseq: int = 0  # our NOTIFY CSeq space

    def remaining(self) -> int:
        return max(0, int(self.expires_at - time.monotonic()))


@dataclass(slots=True)
class SimDevice:
    """A simulated IPC/NVR. Plain attributes configure it; the lists record what it saw.

    Misbehaviour switches (default off):

    * ``charset_lie``: declare GB2312 in the prolog but encode the body as UTF-8.
    * ``charset``: how bodies are encoded normally (``GB2312``, ``GB18030`` or ``UTF-8``).
    * ``drop_parts``: 0-based indices of Catalog/RecordInfo response MESSAGEs silently not sent.
    * ``response_delay``: seconds to wait before sending any Response MESSAGE.
    * ``garbage``: answer queries and controls with one MESSAGE whose body is not XML.
    * ``wrong_sum_num``: report this SumNum in Catalog/RecordInfo answers instead of the truth.
    * ``no_keepalive``: keepalive loops send no keepalives (registration is still refreshed).
    * ``mute``: answer 200 to queries but never send the Response MESSAGEs.
    * ``wrong_ptz_checksum``: check the PTZCmd checksum (byte 8) with a wrong sum, bytes 2–7
      without the ``A5`` start byte (a firmware bug): correctly summed commands are refused with
      ``400``, commands carrying that wrong sum are obeyed.
    * ``ptz_checksum_unchecked``: never check the PTZCmd checksum: every command is obeyed,
      whatever byte 8 says.
    * ``no_initial_report``: a new catalog subscription gets no initial NOTIFY, although items
      in its scope are not ON (2022 Annex N asks for one; see :meth:`set_status`).
    * ``no_position_reports``: a MobilePosition subscription is accepted but no position is
      sent in it while the switch is on (a mobile device reports every ``Interval`` seconds,
      §9.11).
    * ``reports_after_end``: position NOTIFYs go on after the subscription ended.

    Field quirks of real devices (issue 15; default off):

    * ``content_length_chars``: every MESSAGE and NOTIFY the device sends carries a
      Content-Length that counts the body's *characters* (the body decoded in the charset it
      is written in), not its bytes: smaller than the body whenever it holds Chinese text. The
      body bytes are all sent (over UDP the datagram holds them all; over TCP the stream does,
      so the receiver's framing cuts the message short and reads its tail as the next one).
    * ``no_refresh``: registers once and never refreshes: the keepalive loop never registers
      again before the registration runs out; keepalives go on. A non-2xx to a keepalive still
      counts as a missed one and a 404 makes it register at once, as without the switch.
    * ``drop_pipelined``: over TCP, a request that arrives in the same read as an earlier
      message on its connection (two messages in one segment) is dropped unread: no answer,
      nothing recorded but ``pipelined_dropped``. Set it before :meth:`install`.
    * ``subscribe_mute``: a SUBSCRIBE gets no response at all, not even the endpoint's 500 when
      nothing answers in time (it is recorded in ``subscribes``, then ignored: retransmissions
      are absorbed by the transaction layer).
    * ``ptz_response``: a DeviceControl carrying a ``PTZCmd`` (no application answer in the
      standard) gets, after its 200, a ``Response/DeviceControl`` with the control's SN and
      ``Result`` OK, as for a RecordCmd.
    * ``no_parent_id``: channel items carry no ``ParentID`` (and no business group).
    * ``ascii_names``: every name the device sends is ASCII (``IPC-<serial>`` for the device,
      ``Camera <n>`` and ``Road <n>`` for channels, which carry no ``Info``; presets
      ``Preset <n>``; groups of ``with_groups`` keep theirs), so with ``charset="UTF-8"``
      every body is plain ASCII under ``encoding="UTF-8"``.
    * ``register_to_domain``: the REGISTER's Request-URI is ``sip:<domain>`` (no user), and the
      digest ``uri`` matches it.
    * ``address_request_uri``: MESSAGEs the device sends go to ``sip:<server host>:<port>``
      (no user part) instead of ``sip:<server ID>@<domain>``.
    * ``unsolicited_sn1``: right after each successful REGISTER, the device sends a
      ``Response/DeviceInfo`` and a ``Response/Catalog`` (its whole catalog) with ``SN`` 1,
      nobody having asked.
    * ``pipeline_messages``: over TCP, the Response MESSAGEs of one answer go two at a time,
      written in one segment (both are requests of their own transaction), instead of one
      after another's final response.

    Registration follows a ``302`` (2022 §9.1.2.3; reference §2.5) to the server its Contact
    names; a registration refused there, or one that gets no answer, starts over at the server
    the device was configured with (``redirect_home``).

    Media (reference §6; sessions in ``media_sessions`` by Call-ID):

    * ``clip``: the H.264 frames streamed (:class:`~conformance.media.clip.Frame` objects; None,
      the default: the 320x240 ``video_clip()``), e.g. a bigger clip for a bitrate bench.
    * ``live_frames``: live streams stop after this many frames (None: loop for ever).
    * ``playback_frames``: the most frames a playback/download sends (``t=`` span × ``fps``
      otherwise); then ``MediaStatus`` 121 goes in the dialog and the device waits for the BYE.
    * ``audio_outputs``: voice output channels (type 137) in the catalog, for broadcasts;
      ``broadcast_transport`` (``udp``, ``tcp-passive`` = we listen, ``tcp-active``) for their
      audio leg.

    Media misbehaviour switches (default off):

    * ``invite_delay``: seconds between the 100 Trying and the answer (time for a CANCEL).
    * ``invite_refuse``: answer every INVITE with this status (e.g. 486).
    * ``invite_mute``: never answer an INVITE (the caller's timeout gives it 408).
    * ``wrong_ssrc``: echo ``y=`` in the answer but put another SSRC in the RTP; with
      ``"answer"`` the answer's ``y=`` names that other SSRC too.
    * ``media_mute``: answer and accept the ACK, but send no RTP.
    * ``tcp_retries`` / ``tcp_retry_interval``: as the TCP client of a stream (the offer says
      ``a=setup:passive``), retry a refused connect this many times, this many seconds apart.
      The defaults, 3 and 1.0, are 2022 Annex D's minimum; 0 retries (give up at once), fewer,
      or a shorter interval break it.
    * ``answer_transport``: play this role whatever the offer asked, and answer so: ``udp``
      answers ``RTP/AVP`` to a TCP offer and sends UDP; ``tcp-active`` answers
      ``a=setup:active`` (and connects) even to an ``active`` offer, against RFC 4145 §4.1.
    * ``echo_offer_address``: the answer's ``c=``/``m=`` repeat the offer's own address.
    * ``long_y``: the answer's ``y=`` is 20 digits: the SSRC's 10, then ten zeros (the RTP
      still carries the SSRC).
    * ``ok_without_to_tag``: the INVITE's 200 has no To tag, and its Contact is the caller's
      own (copied from the INVITE). The device's dialog is found by Call-ID all the same.
    * ``payload_type``: the RTP payload type of the stream (96 by default); 33 also answers
      ``a=rtpmap:33 MP2T/90000``, as devices sending MPEG-TS do (the bytes stay the clip's).
    """

    endpoint: Endpoint
    device_id: str
    server: Peer
    server_id: str = "34020000002000000001"
    domain: str = "3402000000"
    password: str = "12345678"
    expires: int = 3600
    gb_version: str | None = None  # X-GB-Ver to send; "3.0" also selects 2022 catalog fields
    user_agent: str = "gb28181-sim IP Camera"
    call_id: str = field(default_factory=lambda: os.urandom(8).hex())
    from_tag: str = field(default_factory=lambda: os.urandom(4).hex())
    cseq: int = 0
    last_challenge: dict[str, str] | None = None
    responses: list[Response] = field(default_factory=list)  # every REGISTER's final response

    # -- what the device is -----------------------------------------------------------------
    channel_count: int = 1
    channel_base: int | None = None  # channel serials start here (default: from device serial)
    with_groups: bool = False  # one business group (215) and two virtual organisations (216)
    catalog_extra_items: list[CatalogItem] = field(default_factory=list)
    name: str | None = None  # DeviceName / BasicParam Name (default "NVR-<serial>")
    manufacturer: str = "SimVision"
    model: str = "SV-NVR7608"
    channel_model: str = "SV-IPC2T47"
    firmware: str = "V4.30.085"
    records: list[RecordItem] | None = None  # RecordInfo answers; None = generate them
    record_count: int = 3  # files generated between a query's StartTime and EndTime
    presets: tuple[Preset, ...] = DEFAULT_PRESETS
    basic_param: BasicParam | None = None  # set from the other fields when None
    position: tuple[float, float] = (116.3974, 39.9087)  # longitude, latitude

    # -- how it talks -----------------------------------------------------------------------
    items_per_message: int | None = None  # None: 1 over UDP, 100 over TCP
    # Send an answer MESSAGE larger than UDP_LIMIT bytes over TCP even when registered over UDP
    # (RFC 3261 §18.1.1; 2022 Annex M). Off: the whole datagram goes, as most devices do.
    large_over_tcp: bool = False
    reboot_delay: float = 0.5  # seconds between TeleBoot and the new REGISTER
    subscription_expires: int = 600  # when a SUBSCRIBE has no Expires
    keepalive_fail_limit: int = 3  # unanswered keepalives before registering again
    request_timeout: float | None = None  # for our requests; None = transaction timers

    # -- misbehaviour switches (see the class docstring) ----------------------------------
    charset: str = "GB2312"
    charset_lie: bool = False
    drop_parts: AbstractSet[int] = frozenset()
    response_delay: float = 0.0
    garbage: bool = False
    wrong_sum_num: int | None = None
    no_keepalive: bool = False
    mute: bool = False
    wrong_ptz_checksum: bool = False
    ptz_checksum_unchecked: bool = False
    no_initial_report: bool = False
    no_position_reports: bool = False
    reports_after_end: bool = False
    content_length_chars: bool = False
    no_refresh: bool = False
    drop_pipelined: bool = False
    subscribe_mute: bool = False
    ptz_response: bool = False
    no_parent_id: bool = False
    ascii_names: bool = False
    register_to_domain: bool = False
    address_request_uri: bool = False
    unsolicited_sn1: bool = False
    pipeline_messages: bool = False

    # -- media (reference §6) ---------------------------------------------------------------
    fps: int = 25
    clip: Sequence[Any] | None = None  # the frames streamed (None: ``video_clip()``)
    live_frames: int | None = None
    playback_frames: int = 50
    audio_outputs: int = 0
    broadcast_transport: str = "udp"
    invite_timeout: float = 10.0  # for the broadcast INVITE we send
    invite_delay: float = 0.0
    invite_refuse: int | None = None
    invite_mute: bool = False
    wrong_ssrc: bool | str = False
    media_mute: bool = False
    tcp_retries: int = 3
    tcp_retry_interval: float = 1.0
    answer_transport: str | None = None
    echo_offer_address: bool = False
    long_y: bool = False
    ok_without_to_tag: bool = False
    payload_type: int = 96

    # -- what it saw ------------------------------------------------------------------------
    queries: list[Message] = field(default_factory=list)
    controls: list[DeviceControl] = field(default_factory=list)
    ptz_commands: list[str] = field(default_factory=list)  # PTZCmd text exactly as received
    configs: list[DeviceConfig] = field(default_factory=list)
    subscribes: list[Request] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by Call-ID
    alarm_responses: list[AlarmResponse] = field(default_factory=list)
    server_responses: list[Message] = field(default_factory=list)  # every Response MESSAGE
    # Every Response MESSAGE this device sent: (CmdType, SN, final status; 0 when none came).
    answer_statuses: list[tuple[str, int, int]] = field(default_factory=list)
    invites: list[Request] = field(default_factory=list)  # every INVITE, answered or not
    media_sessions: dict[str, MediaSession] = field(default_factory=dict)  # by Call-ID
    broadcasts: list[BroadcastNotify] = field(default_factory=list)
    broadcast_sessions: dict[str, BroadcastSession] = field(default_factory=dict)  # by Call-ID

    # -- state ------------------------------------------------------------------------------
    paused: bool = False  # keepalive loops leave the device alone (a test drives it by hand)
    sn: int = 0
    registered: bool = False
    reboots: int = 0
    redirects: int = 0  # 302s followed
    redirect_home: tuple[Peer, str] | None = None  # (server, server_id) before a 302 moved us
    missed_keepalives: int = 0
    recording: bool = False
    guard: bool = False
    pipelined_dropped: int = 0  # requests dropped by drop_pipelined
    ptz_position: tuple[float, float, float] = (0.0, 0.0, 1.0)  # pan, tilt, zoom
    home_position: HomePosition | None = None
    hub: DeviceHub | None = field(default=None, repr=False)
    _refresh_at: float = field(default=0.0, init=False, repr=False)
    _beating: bool = field(default=False, init=False, repr=False)
    _overrides: dict[str, CatalogItem | None] = field(default_factory=dict, init=False, repr=False)
    _keepalive_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _ssrc_serial: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = (
                f"IPC-{self.device_id[-6:]}" if self.ascii_names else f"NVR-{self.device_id[-6:]}"
            )
        if self.ascii_names and self.presets is DEFAULT_PRESETS:
            self.presets = tuple(
                replace(p, preset_name=f"Preset {p.preset_id}") for p in DEFAULT_PRESETS
            )
        if self.basic_param is None:
            self.basic_param = BasicParam(
                name=self.name, expiration=self.expires, heart_beat_interval=60, heart_beat_count=3
            )

    # -- addressing -------------------------------------------------------------------------
    @property
    def aor(self) -> str:
        return f"sip:{self.device_id}@{self.domain}"

    @property
    def server_uri(self) -> str:
        return f"sip:{self.server_id}@{self.domain}"

    @property
    def register_uri(self) -> str:
        """The REGISTER's Request-URI (and digest ``uri``): ``sip:<domain>`` with
        ``register_to_domain``."""
        return f"sip:{self.domain}" if self.register_to_domain else self.server_uri

    @property
    def gb2022(self) -> bool:
        return (self.gb_version or "").startswith("3")

    @property
    def civil_code(self) -> str:
        return self.device_id[:6]

    @property
    def base(self) -> int:
        return (
            default_channel_base(self.device_id) if self.channel_base is None else self.channel_base
        )

    @property
    def per_message(self) -> int:
        if self.items_per_message is not None:
            return max(1, self.items_per_message)
        return 100 if self.server.reliable else 1

    def _next_sn(self) -> int:
        self.sn += 1
        return self.sn

    def _emit(self, event: str, detail: str = "") -> None:
        hub = self.hub
        if hub is not None and hub.on_event is not None:
            hub.on_event(self.device_id, event, detail)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.hub is not None:
            self.hub.spawn(coro)
        else:  # pragma: no cover - requests only reach installed devices
            coro.close()

    # -- registration and keepalive (reference §2) ---------------------------------------
    def build_register(self, expires: int, authorization: str | None = None) -> Request:
        self.cseq += 1
        headers = [
            ("From", f"<{self.aor}>;tag={self.from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.cseq} REGISTER"),
            ("Contact", f"<{self.endpoint.contact_uri(self.device_id, self.server)}>"),
            ("Max-Forwards", "70"),
            ("User-Agent", self.user_agent),
            ("Expires", str(expires)),
        ]
        if self.gb_version:
            headers.append(("X-GB-Ver", self.gb_version))
        if authorization:
            headers.append(("Authorization", authorization))
        return Request("REGISTER", self.register_uri, headers)

    async def register(self, expires: int | None = None, *, max_challenges: int = 2) -> Response:
        """REGISTER, answering up to ``max_challenges`` 401s and following a ``302`` to the
        server its Contact names; return the last response."""
        exp = self.expires if expires is None else expires
        try:
            for _ in range(MAX_REDIRECTS + 1):
                resp = await self._register_here(exp, max_challenges)
                if resp.status not in (301, 302) or exp == 0 or not self._follow(resp):
                    break
        except _SEND_ERRORS:
            self._go_home()
            raise
        if resp.status != 200:
            self._go_home()
        self._registered(resp, exp)
        return resp

    async def _register_here(self, expires: int, max_challenges: int) -> Response:
        client = DigestClient(self.device_id, self.password)
        authorization: str | None = None
        for _ in range(max_challenges + 1):
            req = self.build_register(expires, authorization)
            resp = await self.endpoint.request(req, self.server)
            self.responses.append(resp)
            if resp.status != 401:
                break
            challenge = resp.auth_params("WWW-Authenticate")
            if challenge is None:
                break
            self.last_challenge = challenge[1]
            authorization = client.authorization(challenge[1], "REGISTER", self.register_uri)
        return resp

    def _follow(self, resp: Response) -> bool:
        """Move to the server a 302's Contact names (2022 §9.1.2.3); False if it names none."""
        contacts = resp.contacts
        if not contacts:
            return False
        uri = contacts[0].uri
        if not uri.host:
            return False
        transport = (uri.param("transport") or self.server.transport).lower()
        if transport not in ("udp", "tcp"):
            transport = self.server.transport
        if self.redirect_home is None:
            self.redirect_home = (self.server, self.server_id)
        self.server = Peer(transport, uri.host, uri.port or 5060)
        self.server_id = uri.user or self.server_id
        # A registration at another server is a new one: new Call-ID and tag, CSeq from 1.
        self.call_id = os.urandom(8).hex()
        self.from_tag = os.urandom(4).hex()
        self.cseq = 0
        self.redirects += 1
        self._emit("redirected", f"to {_host_port(self.server)} server_id={self.server_id}")
        return True

    def _go_home(self) -> None:
        """After a failure at the server a 302 sent us to, start over where we began."""
        if self.redirect_home is None:
            return
        self.server, self.server_id = self.redirect_home
        self.redirect_home = None
        self.call_id = os.urandom(8).hex()
        self.from_tag = os.urandom(4).hex()
        self.cseq = 0
        self._emit("redirect-home", f"back to {_host_port(self.server)}")

    def _registered(self, resp: Response, requested: int) -> None:
        if resp.status != 200:
            self.registered = False
            self._emit("register-failed", f"status={resp.status} {resp.reason}")
            return
        try:
            granted = resp.expires
        except ParseError:
            granted = None
        granted = requested if granted is None else granted
        self.registered = requested > 0 and granted > 0
        self.missed_keepalives = 0
        if self.registered:
            self._refresh_at = time.monotonic() + granted * 0.8
            self._emit("registered", f"expires={granted} call_id={self.call_id}")
            if self.unsolicited_sn1 and self.hub is not None:
                self._spawn(self._send_unsolicited())
        else:
            self._emit("unregistered")

    async def _send_unsolicited(self) -> None:
        """``unsolicited_sn1``: DeviceInfo and the catalog, SN 1, nobody having asked."""
        info = DeviceInfoQuery(sn=1, device_id=self.device_id)
        await self._send_parts(info, self._answer_device_info(info), False)
        catalog = CatalogQuery(sn=1, device_id=self.device_id)
        await self._send_parts(catalog, self._answer_catalog(catalog), True)

    async def unregister(self) -> Response:
        return await self.register(0)

    def build_message(self, body: bytes) -> Request:
        """An out-of-dialog MESSAGE from this device to its server (reference §3.1)."""
        uri = self.server_uri
        if self.address_request_uri:
            uri = f"sip:{_host_port(self.server)}"
        return self._request_class()(
            "MESSAGE",
            uri,
            [
                ("From", f"<{self.aor}>;tag={os.urandom(4).hex()}"),
                ("To", f"<{self.server_uri}>"),
                ("Call-ID", os.urandom(8).hex()),
                ("CSeq", "20 MESSAGE"),
                ("Content-Type", MANSCDP),
                ("Max-Forwards", "70"),
                ("User-Agent", self.user_agent),
            ],
            body,
        )

    def _request_class(self) -> type[Request]:
        return _CharCountedRequest if self.content_length_chars else Request

    async def keepalive(self, status: str = "OK", extra: str = "") -> Response:
        """Send one Notify/Keepalive and return the server's answer (nothing else happens)."""
        body = keepalive_body(self.device_id, self._next_sn(), status, extra)
        return await self.endpoint.request(
            self.build_message(body), self.server, timeout=self.request_timeout
        )

    async def heartbeat(self) -> Response | None:
        """One step of a keepalive loop: register when not registered or when the registration
        is due for refresh, else send a keepalive; a 404 (the server forgot us) registers again
        at once; ``keepalive_fail_limit`` unanswered keepalives make the next step register.
        Never raises for network trouble; a step while the previous one still waits for its
        answer does nothing (no pile-up while the server is away)."""
        if self._beating or self.paused:
            return None
        self._beating = True
        try:
            return await self._heartbeat()
        finally:
            self._beating = False

    async def _heartbeat(self) -> Response | None:
        try:
            due = time.monotonic() >= self._refresh_at and not self.no_refresh
            if not self.registered or due:
                return await self.register()
            if self.no_keepalive:
                return None
            resp = await self.keepalive()
            if resp.status == 404:
                self._emit("keepalive-404", "registering again")
                return await self.register()
        except _SEND_ERRORS as exc:
            self.missed_keepalives += 1
            if self.missed_keepalives >= self.keepalive_fail_limit:
                self.registered = False
            self._emit("keepalive-failed", type(exc).__name__)
            return None
        if resp.status >= 300:
            self.missed_keepalives += 1
            if self.missed_keepalives >= self.keepalive_fail_limit:
                self.registered = False
        else:
            self.missed_keepalives = 0
        return resp

    def start_keepalive(self, interval: float = 60.0) -> None:
        """Run :meth:`heartbeat` every ``interval`` seconds in a task of this device's own (for
        thousands of devices use :meth:`DeviceHub.start_keepalive` instead)."""
        self.stop()
        self._keepalive_task = asyncio.get_running_loop().create_task(self._beat(interval))

    async def _beat(self, interval: float) -> None:
        while True:
            await self.heartbeat()
            await asyncio.sleep(interval)

    def stop(self) -> None:
        """Stop this device's own keepalive loop."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None

    async def reboot(self, delay: float | None = None) -> Response | None:
        """What a remote reboot does: wait, forget subscriptions, register with a new Call-ID."""
        await asyncio.sleep(self.reboot_delay if delay is None else delay)
        self.call_id = os.urandom(8).hex()
        self.from_tag = os.urandom(4).hex()
        self.cseq = 0
        self.registered = False
        self.subscriptions.clear()
        self.reboots += 1
        self._emit("rebooted", f"call_id={self.call_id}")
        try:
            return await self.register()
        except _SEND_ERRORS as exc:
            self._emit("register-failed", type(exc).__name__)
            return None

    def install(self) -> DeviceHub:
        """Route the endpoint's requests to this device: through the hub already serving the
        endpoint, or a new one."""
        if self.hub is None:
            hub = _HUBS.get(self.endpoint)
            if hub is None:
                hub = DeviceHub(self.endpoint)
            hub.add(self)
        assert self.hub is not None
        return self.hub

    # -- the catalog (reference §1.4, §3.2), made on demand ------------------------------
    def channel_id(self, n: int) -> str:
        """The ID of channel ``n`` (1-based)."""
        return make_channel_id(self.device_id, self.base, n)

    def channel_ids(self) -> Iterator[str]:
        for n in range(1, self.channel_count + 1):
            yield self.channel_id(n)

    def group_ids(self) -> tuple[str, str, str]:
        """(business group, virtual organisation 1, virtual organisation 2)."""
        return group_ids(self.device_id, self.base)

    def channel_item(self, n: int) -> CatalogItem:
        parent = self.device_id
        if self.with_groups:
            _, vo1, vo2 = self.group_ids()
            parent = f"{self.device_id}/{vo1 if n % 2 else vo2}"
        item = channel_item(
            self.device_id,
            self.channel_id(n),
            n,
            parent_id=parent,
            civil_code=self.civil_code,
            manufacturer=self.manufacturer,
            model=self.channel_model,
            gb2022=self.gb2022,
        )
        if self.ascii_names:
            item = replace(item, name=f"Camera {n}", address=f"Road {n}", info=None)
        if self.no_parent_id:
            item = replace(item, parent_id=None, business_group_id=None)
        return item

    def _base_items(self) -> Iterator[CatalogItem]:
        if self.with_groups:
            yield from group_items(self.device_id, self.base, self.civil_code, self.gb2022)
        for n in range(1, self.channel_count + 1):
            yield self.channel_item(n)
        for n in range(1, self.audio_outputs + 1):
            yield self.audio_output_item(n)
        yield from self.catalog_extra_items

    def catalog_items(self) -> Iterator[CatalogItem]:
        """Every item, groups first, with the changes :meth:`notify_catalog` applied."""
        overrides = self._overrides
        for item in self._base_items():
            if overrides and item.device_id in overrides:
                changed = overrides[item.device_id]
                if changed is not None:
                    yield changed
            else:
                yield item

    def catalog_size(self) -> int:
        if self._overrides:
            return sum(1 for _ in self.catalog_items())
        return (
            self.channel_count
            + 3 * self.with_groups
            + self.audio_outputs
            + len(self.catalog_extra_items)
        )

    def item(self, item_id: str) -> CatalogItem | None:
        """The current catalog item with this ID, or None."""
        if item_id in self._overrides:
            return self._overrides[item_id]
        n = channel_number(self.device_id, self.base, self.channel_count, item_id)
        if n is not None:
            return self.channel_item(n)
        if self.with_groups and item_id in self.group_ids():
            for it in group_items(self.device_id, self.base, self.civil_code, self.gb2022):
                if it.device_id == item_id:
                    return it
        n = self._audio_output_number(item_id)
        if n is not None:
            return self.audio_output_item(n)
        for it in self.catalog_extra_items:
            if it.device_id == item_id:
                return it
        return None

    def owns(self, item_id: str) -> bool:
        """Whether requests for ``item_id`` are this device's to answer."""
        return (
            item_id == self.device_id
            or channel_number(self.device_id, self.base, self.channel_count, item_id) is not None
            or (self.with_groups and item_id in self.group_ids())
            or self._audio_output_number(item_id) is not None
            or any(it.device_id == item_id for it in self.catalog_extra_items)
        )

    def audio_output_id(self, n: int) -> str:
        """The ID of voice output ``n`` (1-based; type 137, same serials as the channels)."""
        return sub_id(self.device_id, VOICE_OUTPUT, self.base + n)

    def audio_output_ids(self) -> list[str]:
        return [self.audio_output_id(n) for n in range(1, self.audio_outputs + 1)]

    def _audio_output_number(self, item_id: str) -> int | None:
        if not self.audio_outputs or len(item_id) != 20 or item_id[10:13] != f"{VOICE_OUTPUT}":
            return None
        if item_id[:10] != self.device_id[:10] or not item_id[13:].isdigit():
            return None
        n = int(item_id[13:]) - self.base
        return n if 1 <= n <= self.audio_outputs else None

    def audio_output_item(self, n: int) -> CatalogItem:
        """A voice output (reference §6.8): its ParentID is the device that owns it."""
        return CatalogItem(
            device_id=self.audio_output_id(n),
            name=f"语音输出{n}",
            manufacturer=self.manufacturer,
            model=self.channel_model,
            owner=None if self.gb2022 else "Owner",
            civil_code=self.civil_code,
            address=f"北京路{n}号",
            parental=0,
            parent_id=self.device_id,
            safety_way=None if self.gb2022 else 0,
            register_way=1,
            secrecy=0,
            status="ON",
        )

    def _name_of(self, item_id: str) -> str:
        item = self.item(item_id) if item_id != self.device_id else None
        return (item.name if item is not None else None) or self.name or item_id

    # -- incoming MESSAGE --------------------------------------------------------------------
    def on_message(
        self, req: Request, ctx: ServerContext, decoded: Decoded | DecodeError
    ) -> Response:
        """Answer a MESSAGE addressed to this device; application answers follow later."""
        tag = self.endpoint.tag()
        if isinstance(decoded, DecodeError):
            return make_response(req, 400, _reason(f"Bad MANSCDP: {decoded}"), to_tag=tag)
        msg = decoded.message
        if msg.ROOT == "Response":
            self.server_responses.append(msg)
            if isinstance(msg, AlarmResponse):
                self.alarm_responses.append(msg)
            result = getattr(msg, "result", None)
            self._emit("response", f"{msg.CMD} sn={msg.sn} result={result}")
        elif msg.ROOT == "Query":
            self._on_query(msg)
        elif isinstance(msg, DeviceControl):
            if msg.ptz_cmd is not None and self.wrong_ptz_checksum:
                problem = _wrong_sum_problem(msg.ptz_cmd)
                if problem is not None:
                    self._emit("control-refused", f"{msg.device_id} PTZCmd={msg.ptz_cmd} {problem}")
                    return make_response(req, 400, _reason(f"Bad PTZCmd ({problem})"), to_tag=tag)
            self._on_control(msg, req.body)
        elif isinstance(msg, DeviceConfig):
            self._on_config(msg)
        elif isinstance(msg, BroadcastNotify):
            self.broadcasts.append(msg)
            self._spawn(self._broadcast(msg))
        return make_response(req, 200, to_tag=tag)

    def _on_query(self, msg: Message) -> None:
        self.queries.append(msg)
        entry = _ANSWERS.get(type(msg))
        if entry is None:
            self._emit("query", f"{msg.CMD} sn={msg.sn} (not answered)")
            return
        answer, split = entry
        self._spawn(self._send_parts(msg, answer(self, msg), split))

    async def _send_parts(self, request: Message, parts: Iterable[Message], split: bool) -> int:
        """Send the answer MESSAGEs serially (2022 Annex M): each after the previous one's final
        response. Returns how many were sent."""
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        label = f"{request.CMD} sn={request.sn}"
        if self.mute:
            self._emit("answered", f"{label} messages=0 (mute)")
            return 0
        if self.garbage:
            await self._send(self.build_message(NOT_XML))
            self._emit("answered", f"{label} messages=1 (garbage)")
            return 1
        sent = total = 0
        pair: list[tuple[Message, Request]] = []
        together = 2 if self.pipeline_messages and self.server.reliable else 1
        for i, part in enumerate(parts):
            total += 1
            if split and i in self.drop_parts:
                continue
            req = self.build_message(self.encode(part))
            if together > 1:  # pipeline_messages: two written in the same turn
                pair.append((part, req))
                if len(pair) == together:
                    sent += await self._send_together(pair)
                    pair = []
                continue
            peer = None
            large = len(req.to_bytes()) + VIA_ALLOWANCE > UDP_LIMIT
            if self.large_over_tcp and not self.server.reliable and large:
                peer = Peer("tcp", self.server.host, self.server.port)
            resp = await self._send(req, peer)
            self.answer_statuses.append((part.CMD, part.sn, resp.status if resp else 0))
            sent += 1
        if pair:
            sent += await self._send_together(pair)
        self._emit("answered", f"{label} messages={sent}/{total}")
        return sent

    async def _send_together(self, pair: list[tuple[Message, Request]]) -> int:
        resps = await asyncio.gather(*(self._send(req) for _, req in pair))
        for (part, _), resp in zip(pair, resps, strict=True):
            self.answer_statuses.append((part.CMD, part.sn, resp.status if resp else 0))
        return len(pair)

    async def _send(self, req: Request, peer: Peer | None = None) -> Response | None:
        try:
            return await self.endpoint.request(
                req, peer or self.server, timeout=self.request_timeout
            )
        except _SEND_ERRORS as exc:
            log.info("sim.send_failed", device_id=self.device_id, method=req.method, error=str(exc))
            self._emit("send-failed", f"{req.method} {type(exc).__name__}")
            return None

    def encode(self, msg: Message) -> bytes:
        """A body as this device writes it (charset, 2016/2022 spelling, ``charset_lie``)."""
        if self.charset_lie:
            return encode(msg, "UTF-8", declare="GB2312", gb2022=self.gb2022)
        return encode(msg, self.charset, gb2022=self.gb2022)

    # -- query answers (reference §3.2-§3.9) -----------------------------------------------
    def _answer_catalog(self, q: CatalogQuery) -> Iterator[CatalogResponse]:
        if (
            q.device_id != self.device_id
            and channel_number(self.device_id, self.base, self.channel_count, q.device_id)
            is not None
        ):
            one = self.item(q.device_id)
            return self._catalog_parts(q, iter([one] if one else []), 1 if one else 0)
        return self._catalog_parts(q, self.catalog_items(), self.catalog_size())

    def _catalog_parts(
        self, q: CatalogQuery, items: Iterator[CatalogItem], total: int
    ) -> Iterator[CatalogResponse]:
        reported = total if self.wrong_sum_num is None else self.wrong_sum_num
        per = self.per_message
        chunk = tuple(islice(items, per))
        if not chunk:
            yield CatalogResponse(sn=q.sn, device_id=q.device_id, sum_num=reported)
        while chunk:
            yield CatalogResponse(sn=q.sn, device_id=q.device_id, sum_num=reported, items=chunk)
            chunk = tuple(islice(items, per))

    def _answer_record_info(self, q: RecordInfoQuery) -> Iterator[RecordInfoResponse]:
        start, end = parse_time(q.start_time), parse_time(q.end_time)
        name = self._name_of(q.device_id)
        if self.records is not None:
            found = list(select_records(self.records, start, end, q.type))
        else:
            if start is None or end is None:
                today = datetime.now().replace(hour=0, minute=0, second=0, microsecond=0)
                start, end = today, today.replace(hour=23, minute=59, second=59)
            kind = q.type if q.type and q.type.lower() != "all" else "time"
            found = list(generate_records(q.device_id, name, start, end, self.record_count, kind))
        reported = len(found) if self.wrong_sum_num is None else self.wrong_sum_num
        per = self.per_message
        if not found:
            yield RecordInfoResponse(sn=q.sn, device_id=q.device_id, name=name, sum_num=reported)
        for i in range(0, len(found), per):
            yield RecordInfoResponse(
                sn=q.sn,
                device_id=q.device_id,
                name=name,
                sum_num=reported,
                items=tuple(found[i : i + per]),
            )

    def _answer_device_info(self, q: DeviceInfoQuery) -> list[Message]:
        assert self.basic_param is not None
        return [
            DeviceInfoResponse(
                sn=q.sn,
                device_id=q.device_id,
                device_name=self.basic_param.name or self.name,
                result="OK",
                manufacturer=self.manufacturer,
                model=self.model,
                firmware=self.firmware,
                channel=self.channel_count,
            )
        ]

    def _answer_device_status(self, q: DeviceStatusQuery) -> list[Message]:
        return [
            DeviceStatusResponse(
                sn=q.sn,
                device_id=q.device_id,
                result="OK",
                online="ONLINE",
                status="OK",
                encode="ON",
                record="ON" if self.recording else "OFF",
                device_time=_now_text(),
            )
        ]

    def _answer_config_download(self, q: ConfigDownloadQuery) -> list[Message]:
        """One Response per requested ConfigType (reference §3.7)."""
        types = [t.strip() for t in (q.config_type or "BasicParam").split("/") if t.strip()]
        return [self._config_response(q, t) for t in types]

    def _config_response(self, q: ConfigDownloadQuery, config_type: str) -> Message:
        ok = ConfigDownloadResponse(sn=q.sn, device_id=q.device_id, result="OK")
        low = config_type.lower()
        if low == "basicparam":
            return replace(ok, basic_param=self.basic_param)
        if low == "videoparamopt":
            return replace(
                ok, video_param_opt=VideoParamOpt(download_speed="1/2/4", resolution="5/6")
            )
        if low in _CONFIG_BLOCKS:
            attr, blk = _CONFIG_BLOCKS[low]
            changes: dict[str, Any] = {attr: blk}
            return replace(ok, **changes)
        return replace(ok, result="ERROR")  # SVAC and unknown types: not supported

    def _answer_preset(self, q: PresetQuery) -> list[Message]:
        return [
            PresetQueryResponse(
                sn=q.sn, device_id=q.device_id, sum_num=len(self.presets), items=self.presets
            )
        ]

    def _answer_home_position(self, q: HomePositionQuery) -> list[Message]:
        home = self.home_position or HomePosition(enabled=0, reset_time=60, preset_index=1)
        return [
            HomePositionResponse(sn=q.sn, device_id=q.device_id, result="OK", home_position=home)
        ]

    def _answer_cruise_list(self, q: CruiseTrackListQuery) -> list[Message]:
        tracks = (CruiseTrack(number=0, name="巡航路线1"), CruiseTrack(number=1, name="巡航路线2"))
        return [
            CruiseTrackListResponse(
                sn=q.sn, device_id=q.device_id, result="OK", sum_num=len(tracks), items=tracks
            )
        ]

    def _answer_cruise(self, q: CruiseTrackQuery) -> list[Message]:
        number = q.number or 0
        points = tuple(
            CruisePoint(preset_index=p.preset_id, stay_time=10, speed=5) for p in self.presets
        )
        return [
            CruiseTrackResponse(
                sn=q.sn,
                device_id=q.device_id,
                result="OK",
                number=number,
                name=f"巡航路线{number + 1}",
                sum_num=len(points),
                items=points,
            )
        ]

    def _answer_ptz_position(self, q: PtzPositionQuery) -> list[Message]:
        pan, tilt, zoom = self.ptz_position
        return [
            PtzPositionResponse(
                sn=q.sn,
                device_id=q.device_id,
                result="OK",
                pan=pan,
                tilt=tilt,
                zoom=zoom,
                horizontal_field_angle=round(90.0 / max(zoom, 1.0), 2),
                vertical_field_angle=round(50.0 / max(zoom, 1.0), 2),
                max_view_distance=60.0,
            )
        ]

    def _answer_sd_card(self, q: SDCardStatusQuery) -> list[Message]:
        card = SDCard(
            id=1,
            hdd_name="SD1",
            status="ok",
            format_progress=100,
            capacity=61440.0,
            free_space=20480.0,
        )
        return [
            SDCardStatusResponse(
                sn=q.sn, device_id=q.device_id, result="OK", sum_num=1, items=(card,)
            )
        ]

    def _answer_mobile_position(self, q: MobilePositionQuery) -> list[Message]:
        return [self._position(q.device_id, q.sn, None, None, 0.0, 0.0, 0.0, "2016")]

    def _answer_alarm_query(self, q: AlarmQuery) -> list[Message]:
        return []  # no alarm history kept: only the 200

    # -- controls (reference §4) ------------------------------------------------------------
    def _on_control(self, msg: DeviceControl, body: bytes) -> None:
        self.controls.append(msg)
        details = list(msg.commands)
        if msg.ptz_cmd is not None:
            found = _PTZ_RAW.search(body)
            raw = found.group(1).decode("latin-1") if found else msg.ptz_cmd
            self.ptz_commands.append(raw)
            details.append(f"PTZCmd={raw}")
            self._apply_ptz(msg)
        precise = msg.ptz_precise_ctrl
        if precise is not None:
            pan, tilt, zoom = self.ptz_position
            self.ptz_position = (
                pan if precise.pan is None else precise.pan,
                tilt if precise.tilt is None else precise.tilt,
                zoom if precise.zoom is None else precise.zoom,
            )
        if msg.home_position is not None:
            self.home_position = msg.home_position
        if msg.record_cmd is not None:
            self.recording = msg.record_cmd.lower() == "record"
        if msg.guard_cmd is not None:
            self.guard = msg.guard_cmd.lower() == "setguard"
        self._emit("control", f"{msg.device_id} " + " ".join(details))
        if msg.tele_boot is not None:
            self._spawn(self.reboot())
        if msg.expects_response or (self.ptz_response and msg.ptz_cmd is not None):
            answer = DeviceControlResponse(sn=msg.sn, device_id=msg.device_id, result="OK")
            self._spawn(self._send_parts(msg, [answer], False))

    def _apply_ptz(self, msg: DeviceControl) -> None:
        """Keep the preset list in step with set/delete preset commands."""
        text = msg.ptz_cmd or ""
        if self.wrong_ptz_checksum or self.ptz_checksum_unchecked:
            text = _with_true_sum(text)  # it passed our (wrong or missing) check: obey it
        try:
            cmd = decode_ptz(text)
        except (DecodeError, ValueError):
            return
        if cmd.kind == "preset_set":
            label = msg.ptz_cmd_params.preset_name if msg.ptz_cmd_params else None
            kept = tuple(p for p in self.presets if p.preset_id != cmd.preset)
            new = Preset(preset_id=cmd.preset, preset_name=label or f"预置点{cmd.preset}")
            self.presets = tuple(sorted((*kept, new), key=lambda p: p.preset_id or 0))
        elif cmd.kind == "preset_delete":
            self.presets = tuple(p for p in self.presets if p.preset_id != cmd.preset)

    def _on_config(self, msg: DeviceConfig) -> None:
        """DeviceConfig (reference §4.5): BasicParam is applied and shows in ConfigDownload."""
        self.configs.append(msg)
        if msg.basic_param is not None:
            changes = {
                f.name: getattr(msg.basic_param, f.name)
                for f in dataclasses.fields(msg.basic_param)
                if f.name != "extra" and getattr(msg.basic_param, f.name) is not None
            }
            assert self.basic_param is not None
            self.basic_param = replace(self.basic_param, **changes)
        self._emit("config", f"{msg.device_id} sn={msg.sn}")
        answer = DeviceConfigResponse(sn=msg.sn, device_id=msg.device_id, result="OK")
        self._spawn(self._send_parts(msg, [answer], False))

    # -- subscriptions (RFC 6665; reference §5) ----------------------------------------------
    def on_subscribe(
        self, req: Request, ctx: ServerContext, decoded: Decoded | DecodeError | None
    ) -> Response | None:
        """Accept a Catalog/Alarm/MobilePosition/PTZPosition SUBSCRIBE, refresh or end one."""
        self.subscribes.append(req)
        if self.subscribe_mute:
            self._emit("subscribe-ignored", f"call_id={req.call_id}")
            ctx.ignore()  # not even the endpoint's own 500 when the timeout comes
            return None
        expires = req.expires
        if expires is None:
            expires = self.subscription_expires
        to_tag = req.to.tag
        contact = ("Contact", f"<{self.endpoint.contact_uri(self.device_id, ctx.peer)}>")
        if to_tag:  # in the dialog: refresh or unsubscribe (RFC 6665 §4.1.2.2-3)
            sub = self.subscriptions.get(req.call_id)
            if sub is None or sub.local_tag != to_tag:
                return make_response(req, 481, "Subscription Does Not Exist")
            sub.remote_cseq = req.cseq.seq
            if expires == 0:
                del self.subscriptions[req.call_id]
                self._emit("unsubscribe", f"{sub.kind} call_id={sub.call_id}")
            else:
                sub.expires_at = time.monotonic() + expires
                self._emit("subscribe-refresh", f"{sub.kind} expires={expires}")
            return make_response(req, 200, headers=[contact, ("Expires", str(expires))])
        if decoded is None:
            return make_response(req, 400, "Missing Body", to_tag=self.endpoint.tag())
        if isinstance(decoded, DecodeError):
            return make_response(
                req, 400, _reason(f"Bad MANSCDP: {decoded}"), to_tag=self.endpoint.tag()
            )
        query = decoded.message
        if query.ROOT != "Query" or query.CMD not in SUBSCRIBABLE:
            return make_response(req, 489, "Bad Event", to_tag=self.endpoint.tag())
        local_tag = self.endpoint.tag()
        contacts = req.contacts
        new: Subscription | None = None
        if expires > 0:
            new = self.subscriptions[req.call_id] = Subscription(
                kind=query.CMD,
                query=query,
                event=req.get_header("Event") or query.CMD,
                call_id=req.call_id,
                local_tag=local_tag,
                remote_tag=req.from_.tag or "",
                local_uri=str(req.to.uri),
                remote_uri=str(req.from_.uri),
                target=str(contacts[0].uri if contacts else req.from_.uri),
                peer=ctx.peer,
                expires_at=time.monotonic() + expires,
                remote_cseq=req.cseq.seq,
            )
        self._emit("subscribe", f"{query.CMD} expires={expires} event={req.get_header('Event')}")
        headers = [contact, ("Expires", str(expires))]
        body = b""
        if query.CMD == "Catalog":
            body = self.encode(CatalogResponse(sn=query.sn, device_id=query.device_id, result="OK"))
            headers.append(("Content-Type", MANSCDP))
            if new is not None and not self.no_initial_report:
                # A task: it runs once the endpoint has sent this 200.
                self._spawn(self._initial_report(new))
        elif query.CMD == "MobilePosition" and new is not None:
            self._spawn(self._report_positions(new))
        return make_response(req, 200, to_tag=local_tag, headers=headers, body=body)

    async def _report_positions(self, sub: Subscription) -> None:
        """§9.11: while a MobilePosition subscription holds (not ended, not expired), a NOTIFY
        every ``Interval`` seconds (5 when the body names none; at least 0.2), the device
        moving a little each time; 2022 list form when the device speaks 2022, else the 2016
        flat form. ``no_position_reports`` holds them back while it is set."""
        interval = max(0.2, float(getattr(sub.query, "interval", None) or 5))
        form = "2022" if self.gb2022 else "2016"
        lon, lat = self.position
        n = 0
        while self.reports_after_end or (
            self.subscriptions.get(sub.call_id) is sub and sub.remaining() > 0
        ):
            if not self.no_position_reports:
                msg = self._position(
                    self.device_id, self._next_sn(), lon + n * 0.0002, lat + n * 0.0001,
                    12.5, 270.0, 45.0, form,
                )  # fmt: skip
                await self.notify(sub, self.encode(msg))
            n += 1
            await asyncio.sleep(interval)

    async def _initial_report(self, sub: Subscription) -> None:
        """2022 Annex N: once a catalog subscription succeeds the subscriber takes everything
        in its scope as online, so the notifier at once reports the items that are not: Event
        ``OFF`` for an item whose Status is OFF (or anything else but ON), ``VLOST`` / ``DEFECT``
        for an item whose Status says so. Nothing is sent when every item is ON."""
        items = [
            CatalogItem(device_id=item.device_id, event=offline_event(item.status))
            for item in self.catalog_items()
            if self._in_scope(item, sub.query.device_id) and not is_online(item.status)
        ]
        if not items or self.subscriptions.get(sub.call_id) is not sub:
            return
        out = await self._notify_items(sub, items)
        self._emit("notify", f"Catalog initial report items={len(items)} messages={len(out)}")

    def _in_scope(self, item: CatalogItem, scope: str) -> bool:
        """Whether a subscription to ``scope`` (the SUBSCRIBE body's DeviceID) covers ``item``:
        the device, or anything that is not ours (a system or region code), covers all; one of
        our items covers itself and what names it as parent or business group."""
        if scope == self.device_id or not self.owns(scope):
            return True
        return item.device_id == scope or scope in item.parent_ids or item.group_id == scope

    def set_status(self, item_id: str, status: str) -> None:
        """Give an item of ours another catalog ``Status`` without notifying anyone (it was so
        before anyone subscribed): queries report it, and the next catalog subscription's
        initial report names it unless it is ON (2022 Annex N)."""
        current = self.item(item_id)
        if current is None:
            raise KeyError(f"{item_id} is not an item of {self.device_id}")
        self._overrides[item_id] = replace(current, status=status.upper())

    def subscription(self, kind: str) -> Subscription | None:
        """The newest unexpired subscription whose body CmdType is ``kind``."""
        found = None
        for call_id, sub in list(self.subscriptions.items()):
            if sub.remaining() <= 0:
                del self.subscriptions[call_id]
            elif sub.kind.lower() == kind.lower():
                found = sub
        return found

    def _require(self, kind: str) -> Subscription:
        sub = self.subscription(kind)
        if sub is None:
            raise LookupError(f"{self.device_id} has no {kind} subscription")
        return sub

    async def notify(self, sub: Subscription, body: bytes) -> Response | None:
        """A NOTIFY inside ``sub``'s dialog (reference §5.1)."""
        sub.cseq += 1
        to = f"<{sub.remote_uri}>" + (f";tag={sub.remote_tag}" if sub.remote_tag else "")
        req = self._request_class()(
            "NOTIFY",
            sub.target,
            [
                ("From", f"<{sub.local_uri}>;tag={sub.local_tag}"),
                ("To", to),
                ("Call-ID", sub.call_id),
                ("CSeq", f"{sub.cseq} NOTIFY"),
                ("Contact", f"<{self.endpoint.contact_uri(self.device_id, sub.peer)}>"),
                ("Event", sub.event),
                ("Subscription-State", f"active;expires={sub.remaining()}"),
                ("Content-Type", MANSCDP),
                ("Max-Forwards", "70"),
                ("User-Agent", self.user_agent),
            ],
            body,
        )
        return await self._send(req, sub.peer)

    async def notify_catalog(
        self, changes: Sequence[tuple[str, CatalogItem | str]], *, apply: bool = True
    ) -> list[Response | None]:
        """Send catalog changes in the Catalog subscription's dialog (reference §5.2), split by
        ``items_per_message`` and sent serially, ``SumNum`` = ``Num`` in each NOTIFY. ON, OFF,
        VLOST, DEFECT and DEL items carry only DeviceID and Event; ADD and UPDATE the full item
        (give a CatalogItem, or the ID of one of ours). With ``apply`` the device's catalog
        changes too (ON/OFF status, DEL, ADD, UPDATE), so later queries agree."""
        sub = self._require("Catalog")
        items = [self._change(event.upper(), what, apply) for event, what in changes]
        out = await self._notify_items(sub, items)
        self._emit("notify", f"Catalog items={len(items)} messages={len(out)}")
        return out

    async def _notify_items(
        self, sub: Subscription, items: Sequence[CatalogItem]
    ) -> list[Response | None]:
        """``items`` in NOTIFYs of ``items_per_message`` each, sent serially, ``SumNum`` =
        ``Num`` in each (Annex N)."""
        out: list[Response | None] = []
        per = self.per_message
        for i in range(0, len(items), per):
            chunk = tuple(items[i : i + per])
            body = CatalogNotify(
                sn=self._next_sn(), device_id=self.device_id, sum_num=len(chunk), items=chunk
            )
            out.append(await self.notify(sub, self.encode(body)))
        return out

    def _change(self, event: str, what: CatalogItem | str, apply: bool) -> CatalogItem:
        given = what if isinstance(what, CatalogItem) else None
        item_id = what.device_id if isinstance(what, CatalogItem) else what
        if event in ("ADD", "UPDATE"):
            if given is None and self._overrides.get(item_id, 0) is None:
                del self._overrides[item_id]  # re-adding a deleted item of ours
            full = given or self.item(item_id)
            if full is None:
                raise ValueError(f"{event} {item_id}: not an item of ours; pass a CatalogItem")
            full = replace(full, event=None)
            if apply:
                if event == "ADD" and not self.owns(item_id):
                    self.catalog_extra_items.append(full)
                else:
                    self._overrides[item_id] = full
            return replace(full, event=event)
        if apply:
            if event in ("ON", "OFF"):
                current = self.item(item_id)
                if current is not None:
                    self._overrides[item_id] = replace(current, status=event)
            elif event == "DEL":
                self._overrides[item_id] = None
        return CatalogItem(device_id=item_id, event=event)

    # -- alarms and positions (reference §5.3, §5.4) ---------------------------------------
    async def send_alarm(
        self,
        channel_id: str | None = None,
        priority: int = 1,
        method: int = 5,
        alarm_type: int | None = 2,
        description: str = "移动侦测报警",
        via: str = "message",
        *,
        longitude: float | None = None,
        latitude: float | None = None,
    ) -> Response | None:
        """A Notify/Alarm: by MESSAGE to the server (its ``Response/Alarm`` lands in
        ``alarm_responses``) or, with ``via="notify"``, in the Alarm subscription's dialog."""
        source = channel_id or (self.channel_id(1) if self.channel_count else self.device_id)
        msg = AlarmNotify(
            sn=self._next_sn(),
            device_id=source,
            alarm_priority=priority,
            alarm_method=method,
            alarm_time=_now_text(),
            alarm_description=description,
            longitude=longitude,
            latitude=latitude,
            info=AlarmInfo(alarm_type=alarm_type) if alarm_type is not None else None,
        )
        self._emit("alarm", f"{source} via={via} sn={msg.sn}")
        if via == "notify":
            return await self.notify(self._require("Alarm"), self.encode(msg))
        return await self._send(self.build_message(self.encode(msg)))

    def _position(
        self,
        device_id: str,
        sn: int,
        longitude: float | None,
        latitude: float | None,
        speed: float,
        direction: float,
        altitude: float,
        form: str,
    ) -> MobilePositionNotify:
        lon = self.position[0] if longitude is None else longitude
        lat = self.position[1] if latitude is None else latitude
        now = _now_text()
        if form == "2022":
            item = PositionItem(
                device_id=device_id,
                capture_time=now,
                longitude=lon,
                latitude=lat,
                speed=speed,
                direction=direction,
                altitude=altitude,
                height=0.0,
            )
            return MobilePositionNotify(
                sn=sn, device_id=device_id, time=now, sum_num=1, items=(item,)
            )
        return MobilePositionNotify(
            sn=sn,
            device_id=device_id,
            time=now,
            longitude=lon,
            latitude=lat,
            speed=speed,
            direction=direction,
            altitude=altitude,
        )

    async def send_position(
        self,
        longitude: float | None = None,
        latitude: float | None = None,
        *,
        speed: float = 0.0,
        direction: float = 0.0,
        altitude: float = 0.0,
        device_id: str | None = None,
        form: str = "2016",
        via: str = "auto",
    ) -> Response | None:
        """A Notify/MobilePosition, 2016 flat or 2022 list ``form``: NOTIFY in the
        MobilePosition dialog when there is one (``via="auto"``), else a MESSAGE."""
        if longitude is not None and latitude is not None:
            self.position = (longitude, latitude)
        msg = self._position(
            device_id or self.device_id,
            self._next_sn(),
            longitude,
            latitude,
            speed,
            direction,
            altitude,
            form,
        )
        sub = self.subscription("MobilePosition") if via != "message" else None
        if via == "notify" and sub is None:
            raise LookupError(f"{self.device_id} has no MobilePosition subscription")
        if sub is not None:
            return await self.notify(sub, self.encode(msg))
        return await self._send(self.build_message(self.encode(msg)))

    # -- media sessions (reference §6.2–§6.7) ------------------------------------------------
    def on_invite(self, req: Request, ctx: ServerContext) -> Response | Awaitable[Response] | None:
        """An INVITE for one of our video channels: 404 for anything else, 488 for an SDP we
        cannot serve, else (after ``invite_delay``) 200 with our SDP; media starts at the ACK."""
        self.invites.append(req)
        tag = self.endpoint.tag()
        channel = req.request_uri.user or req.to.uri.user or ""

        def refuse(status: int, reason: str) -> Response:
            self._emit("invite-refused", f"{channel} {status} {reason}")
            return make_response(req, status, _reason(reason), to_tag=tag)

        if not self._is_video_channel(channel):
            return refuse(404, f"Not Found (no video channel {channel} here)")
        if req.to.tag:
            return refuse(488, "Not Acceptable Here (re-INVITE not supported)")
        try:
            offer = parse_sdp(req.body)
        except SdpError as exc:
            return refuse(488, f"Not Acceptable Here (bad SDP: {exc.reason})")
        kind = kind_of(offer.session)
        if kind is None:
            return refuse(488, f"Not Acceptable Here (s={offer.session} not supported)")
        if offer.media != "video":
            return refuse(488, f"Not Acceptable Here (m={offer.media}: a channel sends video)")
        if offer.port == 0 and offer.transport != "tcp-active":
            return refuse(488, "Not Acceptable Here (no receive port in m=)")
        if offer.ssrc is not None and not valid_ssrc(offer.ssrc):
            return refuse(488, f"Not Acceptable Here (bad y={offer.ssrc[:12]})")
        session = MediaSession(
            call_id=req.call_id,
            channel_id=channel,
            kind=kind,
            offer=offer,
            invite=req,
            subject=req.get_header("Subject"),
            role=self.answer_transport or answer_role(offer),
        )
        self.media_sessions[req.call_id] = session
        self._track(req.call_id)
        self._emit(
            "invite",
            f"{channel} s={kind} {offer.proto} setup={offer.setup or '-'} y={offer.ssrc or '-'}"
            f" to {offer.host}:{offer.port} call_id={req.call_id}",
        )
        if self.invite_mute:
            return None  # never answered: the caller times out (408), or CANCELs
        if self.invite_refuse:
            status = self.invite_refuse
            session.status = status
            self._finish(session, "refused")
            return refuse(status, f"{REASONS.get(status, 'Refused')} (invite_refuse)")
        self._replace_same_subject(session)
        return self._answer_invite(session, ctx, tag)

    def _is_video_channel(self, item_id: str) -> bool:
        return (
            len(item_id) == 20
            and item_id[10:13] in VIDEO_TYPES
            and item_id != self.device_id
            and self.item(item_id) is not None
        )

    def _replace_same_subject(self, session: MediaSession) -> None:
        """Reference §6.9: a new INVITE naming the stream (sender ID and serial) we already
        send drops the old one."""
        mine = parse_subject(session.subject)
        if mine is None or mine[0][1] in ("", "0"):
            return
        for old in self.media_sessions.values():
            if old is session or old.ended or not old.answered:
                continue
            theirs = parse_subject(old.subject)
            if theirs is not None and theirs[0] == mine[0]:
                old.replaced = True
                self._finish(old, "device")
                if old.dialog is not None:
                    self._spawn(send_bye(self.endpoint, old.dialog, self.request_timeout))

    async def _answer_invite(self, session: MediaSession, ctx: ServerContext, tag: str) -> Response:
        req, offer = session.invite, session.offer
        host = self.endpoint.local_host(ctx.peer)
        # An offer without y= leaves the SSRC to us (reference §6.4, foreign-domain streams).
        ssrc = offer.ssrc if offer.ssrc is not None else self._new_ssrc(session.history)
        rtp_ssrc = int(ssrc)
        if self.wrong_ssrc:
            rtp_ssrc = (rtp_ssrc + 1) % 2**32
            if self.wrong_ssrc == "answer":
                ssrc = f"{rtp_ssrc:010d}"
        session.ssrc, session.rtp_ssrc = ssrc, rtp_ssrc
        frames, loop, limit, size = self._media_plan(session)
        if session.kind == "Download":
            session.file_size = size
        sender = new_sender(
            frames,
            ssrc=rtp_ssrc,
            transport=session.role,
            local_host=host,
            fps=float(self.fps),
            loop=loop,
            limit=limit,
            on_end=lambda: self._media_ended(session),
            retries=self.tcp_retries,
            retry_interval=self.tcp_retry_interval,
            payload_type=self.payload_type,
        )
        session.sender = sender
        try:
            port = await sender.bind()
            if self.invite_delay > 0 and not session.cancelled:
                try:  # a CANCEL (which ends the session) cuts the wait short
                    await asyncio.wait_for(session.done.wait(), self.invite_delay)
                except TimeoutError:
                    pass
        except BaseException:
            self._finish(session, "error")
            raise
        if session.cancelled:  # the endpoint has answered 487 already; this goes nowhere
            return make_response(req, 487, to_tag=tag)
        if session.kind == "Download" and offer.download_speed:
            sender.set_scale(float(min(max(offer.download_speed, 1), 8)))
        proto, setup = offer.proto, answer_setup(offer)
        if self.answer_transport is not None:
            proto = "RTP/AVP" if session.role == "udp" else "TCP/RTP/AVP"
            setup = {"tcp-active": "active", "tcp-passive": "passive"}.get(session.role)
        answer = Sdp(
            origin_user=session.channel_id,
            origin_host=host,
            session=session.kind,
            uri=offer.uri,
            host=offer.host if self.echo_offer_address else host,
            start=offer.start,
            stop=offer.stop,
            media="video",
            port=offer.port if self.echo_offer_address else port or DISCARD_PORT,
            proto=proto,
            formats=[self.payload_type],
            rtpmap={self.payload_type: "MP2T/90000" if self.payload_type == 33 else "PS/90000"},
            direction="sendonly",
            setup=setup,
            connection_new=proto != "RTP/AVP",
            ssrc=ssrc + "0" * 10 if self.long_y else ssrc,
            media_info=f"v/2/5/{self.fps}/1/2048a///",
            file_size=session.file_size,
        )
        session.answer = answer
        # ok_without_to_tag: no tag was given, so none is the dialog's (RFC 2543 style).
        session.dialog = Dialog.as_uas(req, "" if self.ok_without_to_tag else tag, ctx.peer)
        session.answered = True
        session.status = 200
        self._emit(
            "answered",
            f"{session.channel_id} {session.kind} port={answer.port} y={ssrc}"
            f" role={session.role} call_id={session.call_id}",
        )
        contact = f"<{self.endpoint.contact_uri(session.channel_id, ctx.peer)}>"
        if self.ok_without_to_tag:
            contact = req.get_header("Contact") or contact
        return make_response(
            req,
            200,
            to_tag=None if self.ok_without_to_tag else tag,
            headers=[
                ("Contact", contact),
                ("Content-Type", SDP_TYPE),
                ("User-Agent", self.user_agent),
            ],
            body=answer.to_bytes(),
        )

    def _new_ssrc(self, history: bool) -> str:
        self._ssrc_serial += 1
        return make_ssrc(self.domain, self._ssrc_serial, history=history)

    def _media_plan(self, session: MediaSession) -> tuple[Sequence[Any], bool, int | None, int]:
        """(frames, loop, limit, bytes) of what the session will send: the clip looped for
        live view; ``t=`` × fps frames (at most ``playback_frames``) for history."""
        clip = self.clip or video_clip()
        if session.kind == "Play":
            return clip, True, self.live_frames, 0
        span = session.offer.stop - session.offer.start
        count = self.playback_frames if span <= 0 else min(self.playback_frames, span * self.fps)
        count = max(1, count)
        size = ps_size(clip, count)
        if count <= len(clip):
            return clip[:count], False, None, size
        return clip, True, count, size

    def on_ack(self, req: Request, ctx: ServerContext) -> None:
        """The ACK for our 200: the media starts (not with ``media_mute``)."""
        session = self.media_sessions.get(req.call_id)
        if session is None or not session.answered or session.acked:
            return
        session.acked = True
        self._emit("ack", f"{session.channel_id} call_id={session.call_id}")
        if session.ended or session.torn_down or self.media_mute or session.sender is None:
            return
        try:
            start_sender(session.sender, session.role, session.offer)
        except (RuntimeError, ValueError) as exc:
            self._emit("media-failed", f"{session.channel_id} {exc}")

    def on_cancel(self, req: Request, ctx: ServerContext) -> None:
        """CANCEL of an INVITE not answered yet (the endpoint sends the 487)."""
        session = self.media_sessions.get(req.call_id)
        if session is None or session.answered or session.ended:
            return
        session.cancelled = True
        session.status = 487
        self._finish(session, "cancel")

    def on_bye(self, req: Request, ctx: ServerContext) -> Response:
        """BYE from the other side of a media or broadcast dialog: stop, 200."""
        session = self.media_sessions.get(req.call_id)
        if session is not None and session.dialog is not None and not session.ended:
            if (req.to.tag or "") != session.dialog.local_tag:
                return make_response(req, 481, "Call/Transaction Does Not Exist (wrong tag)")
            self._finish(session, "remote")
            return make_response(req, 200)
        broadcast = self.broadcast_sessions.get(req.call_id)
        if broadcast is not None and broadcast.dialog is not None and not broadcast.ended:
            self._finish_broadcast(broadcast, "remote")
            return make_response(req, 200)
        return make_response(req, 481, "Call/Transaction Does Not Exist")

    def on_info(self, req: Request, ctx: ServerContext) -> Response:
        """MANSRTSP playback control in the dialog (reference §6.6)."""
        session = self.media_sessions.get(req.call_id)
        if session is None or not session.answered or session.ended:
            return make_response(req, 481, "Call/Transaction Does Not Exist")
        if (req.content_type or "").partition(";")[0].strip() != MANSRTSP.lower():
            return make_response(req, 415, f"Unsupported Media Type (want {MANSRTSP})")
        try:
            rtsp = parse_request(req.body)
        except RtspError as exc:
            return make_response(req, 400, _reason(f"Bad Request ({exc.reason})"))
        session.infos.append(rtsp)
        problem = self._apply_rtsp(session, rtsp)
        self._emit("info", f"{session.channel_id} {rtsp.method} cseq={rtsp.cseq} {problem or ''}")
        status, reason = (551, f"Option not supported ({problem})") if problem else (200, "OK")
        answer = rtsp_answer(rtsp, status, reason)
        return make_response(req, 200, headers=[("Content-Type", MANSRTSP)], body=answer.to_bytes())

    def _apply_rtsp(self, session: MediaSession, rtsp: RtspRequest) -> str | None:
        """Act on one request; a problem the RTSP answer reports, or None."""
        sender = session.sender
        if sender is None or session.torn_down:
            return "stream stopped"
        if rtsp.method == "PAUSE":
            sender.pause()
        elif rtsp.method == "TEARDOWN":
            session.torn_down = True
            self._spawn(close_quietly(sender))
        else:  # PLAY
            if rtsp.scale is not None:
                try:
                    sender.set_scale(rtsp.scale)
                except ValueError:
                    return f"Scale {rtsp.scale}"
            if rtsp.range is not None and rtsp.range.start is not None:
                sender.seek(rtsp.range.start)
            if rtsp.range is not None or rtsp.scale is None:
                sender.resume()
        return None

    def _media_ended(self, session: MediaSession) -> None:
        """The sender ran out of frames: for history, ``MediaStatus`` 121, then wait for BYE."""
        session.end_reached.set()
        self._emit("media-end", f"{session.channel_id} {session.kind} call_id={session.call_id}")
        if session.kind != "Play" and not session.ended and not session.torn_down:
            self._spawn(self.send_media_status(session.call_id))

    async def send_media_status(self, call_id: str, notify_type: int = 121) -> Response | None:
        """An in-dialog ``Notify/MediaStatus`` (reference §6.6: same Call-ID and tags)."""
        session = self.media_sessions[call_id]
        dialog = session.dialog
        if dialog is None:
            raise LookupError(f"session {call_id} has no dialog")
        msg = MediaStatus(sn=self._next_sn(), device_id=session.channel_id, notify_type=notify_type)
        req = dialog.request(
            "MESSAGE",
            body=self.encode(msg),
            content_type=MANSCDP,
            headers=[("User-Agent", self.user_agent)],
        )
        session.media_status_sent.append(notify_type)
        resp = await self._send(req, dialog.peer)
        session.media_status_answers.append(resp.status if resp is not None else 0)
        return resp

    async def bye(self, call_id: str) -> Response | None:
        """End a media or broadcast session from the device's side (BYE in its dialog)."""
        session = self.media_sessions.get(call_id)
        dialog: Dialog | None
        if session is not None:
            dialog = session.dialog
            if dialog is None or session.ended:
                return None
            self._finish(session, "device")
        else:
            broadcast = self.broadcast_sessions.get(call_id)
            if broadcast is None:
                raise LookupError(f"{self.device_id} has no session {call_id}")
            dialog = broadcast.dialog
            if dialog is None or broadcast.ended:
                return None
            self._finish_broadcast(broadcast, "device")
        return await send_bye(self.endpoint, dialog, self.request_timeout)

    def _finish(self, session: MediaSession, by: str) -> None:
        if session.ended:
            return
        session.ended = True
        session.ended_by = by
        session.done.set()
        self._untrack(session.call_id)
        if session.sender is not None:
            self._spawn(close_quietly(session.sender))
        self._emit("session-ended", f"{session.channel_id} by={by} call_id={session.call_id}")

    def _finish_broadcast(self, session: BroadcastSession, by: str) -> None:
        if session.ended:
            return
        session.ended = True
        session.ended_by = by
        self._untrack(session.call_id)
        self._spawn(close_quietly(session.receiver))
        self._emit("broadcast-ended", f"{session.target_id} by={by} packets={session.packets}")

    def _track(self, call_id: str) -> None:
        if self.hub is not None:
            self.hub.calls[call_id] = self

    def _untrack(self, call_id: str) -> None:
        if self.hub is not None and self.hub.calls.get(call_id) is self:
            del self.hub.calls[call_id]

    async def close_media(self) -> None:
        """Close every sender and receiver (no BYEs): for the end of a test or a run."""
        things: list[Any] = []
        for session in self.media_sessions.values():
            if not session.ended:
                session.ended, session.ended_by = True, "closed"
                session.done.set()
                self._untrack(session.call_id)
            things.append(session.sender)
        for broadcast in self.broadcast_sessions.values():
            if not broadcast.ended:
                broadcast.ended, broadcast.ended_by = True, "closed"
                self._untrack(broadcast.call_id)
            things.append(broadcast.receiver)
        await asyncio.gather(*(close_quietly(t) for t in things))

    # -- voice broadcast (reference §6.8) ----------------------------------------------------
    async def _broadcast(self, msg: BroadcastNotify) -> None:
        """Answer a ``Notify/Broadcast`` with ``Response/Broadcast``; when the target is one of
        our voice outputs (or the device itself, meaning all of them), INVITE the source."""
        source, target = msg.source_id or "", msg.target_id or ""
        outputs = self.audio_output_ids()
        ok = bool(outputs) and bool(source) and (target in outputs or target == self.device_id)
        if self.response_delay:
            await asyncio.sleep(self.response_delay)
        answer = BroadcastResponse(
            sn=msg.sn, device_id=target or self.device_id, result="OK" if ok else "ERROR"
        )
        await self._send(self.build_message(self.encode(answer)))
        self._emit("broadcast", f"{source} -> {target}: {answer.result}")
        if ok:
            await self.invite_broadcast(source, target)

    async def invite_broadcast(
        self, source_id: str, target_id: str, *, transport: str | None = None
    ) -> BroadcastSession:
        """INVITE the broadcast source for audio (step 3 of reference §6.8): ``m=audio``,
        ``a=recvonly``, PCMA, on a receiver bound first; the 2xx is ACKed. The session is
        returned whatever the outcome (``status``, ``reason``)."""
        transport = transport or self.broadcast_transport
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, not {transport!r}")
        server = self.server
        host = self.endpoint.local_host(server)
        receiver = new_receiver(transport=transport, local_host=host, decode=False)
        port = await receiver.bind()
        serial = self._new_ssrc(False)
        offer = Sdp(
            origin_user=target_id,
            origin_host=host,
            session="Play",
            host=host,
            media="audio",
            port=port or DISCARD_PORT,
            proto="RTP/AVP" if transport == "udp" else "TCP/RTP/AVP",
            formats=[8],
            rtpmap={8: "PCMA/8000"},
            direction="recvonly",
            setup=offer_setup(transport),  # type: ignore[arg-type]
            connection_new=transport != "udp",
        )
        uri = f"sip:{source_id}@{_host_port(server)}"
        call_id = self.endpoint.call_id()
        req = Request(
            "INVITE",
            uri,
            [
                ("From", f"<sip:{target_id}@{self.domain}>;tag={self.endpoint.tag()}"),
                ("To", f"<{uri}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<{self.endpoint.contact_uri(target_id, server)}>"),
                ("Subject", subject(source_id, serial, target_id)),
                ("Content-Type", SDP_TYPE),
                ("User-Agent", self.user_agent),
            ],
            offer.to_bytes(),
        )
        session = BroadcastSession(call_id, source_id, target_id, offer, receiver, transport)
        self.broadcast_sessions[call_id] = session
        self._track(call_id)
        invite = OutgoingInvite(self.endpoint, req, server)
        try:
            resp = await invite.send(self.invite_timeout)
        except InviteFailed as exc:
            session.status, session.reason = exc.status, exc.reason
            self._finish_broadcast(session, "refused")
            return session
        session.status, session.reason, session.response = resp.status, resp.reason, resp
        session.dialog = invite.dialog
        try:
            answer = parse_sdp(resp.body)
        except SdpError as exc:
            session.reason = f"bad SDP answer: {exc.reason}"
            self._finish_broadcast(session, "device")
            await invite.bye(self.request_timeout)
            return session
        session.answer = answer
        if transport == "tcp-active":
            receiver.connect((answer.host, answer.port))
        self._emit("broadcast-up", f"{target_id} from {answer.host}:{answer.port} y={answer.ssrc}")
        return session


# One table from query class to answer: (method, whether the answer is a multi-part list that
# ``drop_parts`` applies to).
_ANSWERS: dict[type[Message], tuple[Callable[[SimDevice, Any], Iterable[Message]], bool]] = {
    CatalogQuery: (SimDevice._answer_catalog, True),
    RecordInfoQuery: (SimDevice._answer_record_info, True),
    DeviceInfoQuery: (SimDevice._answer_device_info, False),
    DeviceStatusQuery: (SimDevice._answer_device_status, False),
    ConfigDownloadQuery: (SimDevice._answer_config_download, False),
    PresetQuery: (SimDevice._answer_preset, False),
    HomePositionQuery: (SimDevice._answer_home_position, False),
    CruiseTrackListQuery: (SimDevice._answer_cruise_list, False),
    CruiseTrackQuery: (SimDevice._answer_cruise, False),
    PtzPositionQuery: (SimDevice._answer_ptz_position, False),
    SDCardStatusQuery: (SimDevice._answer_sd_card, False),
    MobilePositionQuery: (SimDevice._answer_mobile_position, False),
    AlarmQuery: (SimDevice._answer_alarm_query, False),
}


# The hub serving each endpoint, so that devices installed one by one share it.
_HUBS: weakref.WeakKeyDictionary[Endpoint, DeviceHub] = weakref.WeakKeyDictionary()


class _PipelineDropper:
    """Stands between the endpoint's transports and the endpoint for ``drop_pipelined``: a
    request that comes over TCP in the same read as an earlier message from that connection
    (delivered in the same turn of the loop) is dropped when it is for a device with the
    switch on."""

    def __init__(self, hub: DeviceHub, inner: Any) -> None:
        self.hub = hub
        self.inner = inner
        self._reading: set[Peer] = set()

    def message_received(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "tcp":
            if peer in self._reading:
                device = self._target(data)
                if device is not None and device.drop_pipelined:
                    device.pipelined_dropped += 1
                    device._emit("pipelined-dropped", f"from {peer}")
                    return
            else:
                self._reading.add(peer)
                asyncio.get_running_loop().call_soon(self._reading.discard, peer)
        self.inner.message_received(data, peer)

    def _target(self, data: bytes) -> SimDevice | None:
        try:
            msg = parse(data)
        except ParseError:
            return None
        return self.hub.resolve(msg) if isinstance(msg, Request) else None

    def connection_lost(self, peer: Peer) -> None:
        self.inner.connection_lost(peer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DeviceHub:
    """Many simulated devices on one endpoint: owns its MESSAGE and SUBSCRIBE routes and hands
    each request to the device it is addressed to; runs one keepalive loop for all.

    ``on_event(device_id, event, detail)`` is told everything the devices do (the CLI prints
    it). Devices' channel blocks are indexed at :meth:`add`; IDs added later (extra items,
    a changed ``channel_count``) are still found, by a scan."""

    def __init__(self, endpoint: Endpoint, *, on_event: EventSink | None = None) -> None:
        _HUBS[endpoint] = self
        self.endpoint = endpoint
        self.on_event = on_event
        self.devices: dict[str, SimDevice] = {}
        self._blocks: dict[tuple[str, int], SimDevice] = {}
        self.calls: dict[str, SimDevice] = {}  # Call-ID of a live media dialog -> its device
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._dropper: _PipelineDropper | None = None
        endpoint.route("MESSAGE", self._on_message)
        endpoint.route("SUBSCRIBE", self._on_subscribe)
        endpoint.route("INVITE", self._on_invite)
        endpoint.route("ACK", self._on_ack)
        endpoint.route("BYE", self._on_bye)
        endpoint.route("INFO", self._on_info)
        endpoint.route("CANCEL", self._on_cancel)

    def remove(self, device: SimDevice) -> None:
        """Take a device out of the hub (its keepalives stop; requests for it get 404)."""
        if self.devices.get(device.device_id) is not device:
            raise ValueError(f"{device.device_id} is not in the hub")
        device.stop()
        del self.devices[device.device_id]
        for key in [k for k, d in self._blocks.items() if d is device]:
            del self._blocks[key]
        for call_id in [c for c, d in self.calls.items() if d is device]:
            del self.calls[call_id]
        device.hub = None

    def add(self, device: SimDevice) -> SimDevice:
        if device.endpoint is not self.endpoint:
            raise ValueError(f"{device.device_id} uses another endpoint")
        if device.device_id in self.devices:
            raise ValueError(f"{device.device_id} is already in the hub")
        prefix, base = device.device_id[:10], device.base
        # Channels and voice outputs, or the two group serials.
        last = base + max(device.channel_count, device.audio_outputs, 2)
        blocks = [(prefix, b) for b in range(base // BLOCK, last // BLOCK + 1)]
        for key in blocks:
            other = self._blocks.get(key)
            if other is not None:
                raise ValueError(
                    f"channel IDs of {device.device_id} and {other.device_id} overlap; "
                    "give one of them another channel_base"
                )
        for key in blocks:
            self._blocks[key] = device
        self.devices[device.device_id] = device
        device.hub = self
        if device.drop_pipelined and self._dropper is None:
            transports = self.endpoint.transports
            self._dropper = _PipelineDropper(self, transports.listener)
            transports.listener = self._dropper
        return device

    def find(self, item_id: str) -> SimDevice | None:
        """The device that answers for ``item_id`` (its own ID, a channel, a group, an extra)."""
        device = self.devices.get(item_id)
        if device is not None:
            return device
        if len(item_id) == 20 and item_id.isascii() and item_id.isdigit():
            device = self._blocks.get((item_id[:10], int(item_id[13:]) // BLOCK))
            if device is not None and device.owns(item_id):
                return device
        for device in self.devices.values():
            if device.owns(item_id):
                return device
        return None

    def resolve(self, req: Request, body_device_id: str | None = None) -> SimDevice | None:
        """Request-URI user, then To user, then the body's DeviceID."""
        for user in (req.request_uri.user, req.to.uri.user, body_device_id):
            if user:
                device = self.find(user)
                if device is not None:
                    return device
        return None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sim.task_failed", exc_info=task.exception())

    def _not_found(self, req: Request) -> Response:
        return make_response(
            req, 404, "Not Found (no such device here)", to_tag=self.endpoint.tag()
        )

    def _on_message(self, req: Request, ctx: ServerContext) -> Response:
        decoded: Decoded | DecodeError
        try:
            decoded = decode(req.body)
        except DecodeError as exc:
            decoded = exc
        body_id = decoded.message.device_id if isinstance(decoded, Decoded) else None
        device = self.resolve(req, body_id)
        if device is None:
            return self._not_found(req)
        return device.on_message(req, ctx, decoded)

    def _on_subscribe(self, req: Request, ctx: ServerContext) -> Response | None:
        decoded: Decoded | DecodeError | None = None
        if req.body.strip():
            try:
                decoded = decode(req.body)
            except DecodeError as exc:
                decoded = exc
        body_id = decoded.message.device_id if isinstance(decoded, Decoded) else None
        device = self.resolve(req, body_id)
        if device is None:
            return self._not_found(req)
        return device.on_subscribe(req, ctx, decoded)

    # -- media dialogs: INVITE by Request-URI, the rest by Call-ID -------------------------
    def _on_invite(self, req: Request, ctx: ServerContext) -> Response | Awaitable[Response] | None:
        device = self.resolve(req)
        if device is None:
            return make_response(
                req, 404, "Not Found (no such channel here)", to_tag=self.endpoint.tag()
            )
        return device.on_invite(req, ctx)

    def _on_ack(self, req: Request, ctx: ServerContext) -> None:
        device = self.calls.get(req.call_id)
        if device is not None:
            device.on_ack(req, ctx)

    def _on_cancel(self, req: Request, ctx: ServerContext) -> None:
        device = self.calls.get(req.call_id)
        if device is not None:
            device.on_cancel(req, ctx)

    def _on_bye(self, req: Request, ctx: ServerContext) -> Response:
        device = self.calls.get(req.call_id)
        if device is None:
            return make_response(req, 481, "Call/Transaction Does Not Exist")
        return device.on_bye(req, ctx)

    def _on_info(self, req: Request, ctx: ServerContext) -> Response:
        device = self.calls.get(req.call_id)
        if device is None:
            return make_response(req, 481, "Call/Transaction Does Not Exist")
        return device.on_info(req, ctx)

    # -- many devices at once ---------------------------------------------------------------
    async def register_all(self, concurrency: int = 64) -> dict[str, int]:
        """Register every device, ``concurrency`` at a time; device ID → final status (0 when
        no answer came)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(device: SimDevice) -> int:
            async with gate:
                try:
                    return (await device.register()).status
                except _SEND_ERRORS as exc:
                    device._emit("register-failed", type(exc).__name__)
                    return 0

        devices = list(self.devices.values())
        statuses = await asyncio.gather(*(one(d) for d in devices))
        return {d.device_id: s for d, s in zip(devices, statuses, strict=True)}

    async def unregister_all(self, concurrency: int = 64) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(device: SimDevice) -> None:
            if not device.registered:
                return
            async with gate:
                try:
                    await device.unregister()
                except _SEND_ERRORS:
                    pass

        await asyncio.gather(*(one(d) for d in list(self.devices.values())))

    def start_keepalive(self, interval: float = 60.0) -> None:
        """One loop for every device: each gets a :meth:`SimDevice.heartbeat` per ``interval``,
        spread evenly over the interval so thousands do not arrive at once."""
        self.stop_keepalive()
        self._keepalive_task = asyncio.get_running_loop().create_task(self._keepalive(interval))

    async def _keepalive(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            devices = list(self.devices.values())
            gap = interval / max(1, len(devices))
            for i, device in enumerate(devices):
                delay = start + i * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.spawn(device.heartbeat())
            rest = start + interval - loop.time()
            await asyncio.sleep(max(rest, 0.0))

    def stop_keepalive(self) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None

    def stop(self) -> None:
        """Stop the keepalive loops and every pending answer, NOTIFY or reboot."""
        self.stop_keepalive()
        for device in self.devices.values():
            device.stop()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """:meth:`stop`, and close every media socket of every device (no BYEs are sent)."""
        self.stop()
        await asyncio.gather(*(d.close_media() for d in self.devices.values()))
