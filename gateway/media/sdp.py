"""SDP as GB/T 28181 uses it: one media line, plus the GB fields ``y=`` (SSRC) and ``f=``.

RFC 4566 with the rules of GB/T 28181-2016 Annex F / 2022 Annex G (reference §6.2–§6.7): ``s=``
names the session (Play, Playback, Download, Talk), ``u=`` the recording, ``t=`` the period in
UNIX seconds, ``m=`` RTP/AVP (UDP) or TCP/RTP/AVP with ``a=setup``/``a=connection`` (RFC 4145),
``a=downloadspeed``/``a=filesize``. Parsing is lenient in what real devices get wrong: LF-only
line ends, ``y=``/``f=`` at session or media level, blank lines, a missing ``c=`` at one level,
any case in attribute names. Whatever is not understood is kept and written back out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.settings import MediaTransport

Transport = MediaTransport
"""How a leg carries RTP (one definition, in the settings the media section validates)."""


class SdpError(ValueError):
    """The body is not an SDP this gateway can use; ``reason`` goes into a SIP reason phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Sdp:
    """One GB media offer or answer."""

    origin_user: str = ""
    origin_host: str = "0.0.0.0"
    session: str = "Play"
    uri: str | None = None  # u=
    host: str = "0.0.0.0"  # c=
    start: int = 0  # t=
    stop: int = 0
    media: str = "video"  # m= type
    port: int = 0
    proto: str = "RTP/AVP"
    formats: list[int] = field(default_factory=lambda: [96])
    rtpmap: dict[int, str] = field(default_factory=lambda: {96: "PS/90000"})
    direction: str | None = None  # recvonly / sendonly / sendrecv / inactive
    setup: str | None = None  # active / passive / actpass
    connection_new: bool = False
    ssrc: str | None = None  # y=
    media_info: str | None = None  # f=
    download_speed: int | None = None
    file_size: int | None = None
    stream_number: int | None = None  # [2022] a=streamnumber
    extra: list[str] = field(default_factory=list)  # other a= values, kept in order

    @property
    def tcp(self) -> bool:
        return self.proto.upper().startswith("TCP")

    @property
    def transport(self) -> Transport:
        """The transport from the point of view of this SDP's author. A TCP offer without
        ``a=setup`` is taken as ``passive`` (GB 2022 Annex D: the receiver listens)."""
        if not self.tcp:
            return "udp"
        return "tcp-active" if (self.setup or "").lower() == "active" else "tcp-passive"

    @property
    def ssrc_int(self) -> int | None:
        """``y=`` as the RTP header value (its decimal digits; reference §6.4)."""
        if self.ssrc is None or not self.ssrc.isdigit():
            return None
        value = int(self.ssrc)
        return value if value < 2**32 else None

    @property
    def history(self) -> bool:
        return self.session.lower() in ("playback", "download")

    def to_bytes(self) -> bytes:
        lines = [
            "v=0",
            f"o={self.origin_user or '-'} 0 0 IN IP4 {self.origin_host}",
            f"s={self.session}",
        ]
        if self.uri is not None:
            lines.append(f"u={self.uri}")
        lines.append(f"c=IN IP4 {self.host}")
        lines.append(f"t={self.start} {self.stop}")
        lines.append(f"m={self.media} {self.port} {self.proto} {' '.join(map(str, self.formats))}")
        if self.direction:
            lines.append(f"a={self.direction}")
        for pt in self.formats:
            name = self.rtpmap.get(pt)
            if name:
                lines.append(f"a=rtpmap:{pt} {name}")
        if self.tcp:
            if self.setup:
                lines.append(f"a=setup:{self.setup}")
            lines.append("a=connection:new")
        if self.download_speed is not None:
            lines.append(f"a=downloadspeed:{self.download_speed}")
        if self.file_size is not None:
            lines.append(f"a=filesize:{self.file_size}")
        if self.stream_number is not None:
            lines.append(f"a=streamnumber:{self.stream_number}")
        lines.extend(f"a={a}" for a in self.extra)
        if self.ssrc is not None:
            lines.append(f"y={self.ssrc}")
        if self.media_info is not None:
            lines.append(f"f={self.media_info}")
        return ("\r\n".join(lines) + "\r\n").encode()


def _int(value: str, what: str) -> int:
    value = value.strip()
    if not value.lstrip("-").isdigit():
        raise SdpError(f"bad {what}: {value[:40]!r}")
    return int(value)


def parse_sdp(body: bytes) -> Sdp:
    """Parse an offer or answer; :class:`SdpError` says what is wrong."""
    if not body.strip():
        raise SdpError("no SDP body")
    if len(body) > 16384:
        raise SdpError("SDP body too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("gb18030", errors="replace")
    sdp = Sdp(formats=[], rtpmap={})
    seen_media = False
    session_host: str | None = None
    media_host: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise SdpError(f"bad SDP line: {line[:40]!r}")
        kind, value = line[0].lower(), line[2:].strip()
        if kind == "o":
            parts = value.split()
            if parts:
                sdp.origin_user = parts[0]
            if len(parts) >= 6:
                sdp.origin_host = parts[5]
        elif kind == "s":
            sdp.session = value
        elif kind == "u":
            sdp.uri = value
        elif kind == "c":
            parts = value.split()
            if len(parts) < 3:
                raise SdpError(f"bad c= line: {value[:40]!r}")
            host = parts[2].split("/")[0]
            if seen_media:
                media_host = host
            else:
                session_host = host
        elif kind == "t":
            parts = value.split()
            if len(parts) != 2:
                raise SdpError(f"bad t= line: {value[:40]!r}")
            sdp.start, sdp.stop = _int(parts[0], "t= start"), _int(parts[1], "t= stop")
        elif kind == "m":
            if seen_media:
                # GB sessions carry one stream; a second m= (some talk offers) is ignored.
                continue
            parts = value.split()
            if len(parts) < 3:
                raise SdpError(f"bad m= line: {value[:40]!r}")
            seen_media = True
            sdp.media = parts[0].lower()
            sdp.port = _int(parts[1].split("/")[0], "m= port")
            if not 0 <= sdp.port <= 65535:
                raise SdpError(f"m= port out of range: {sdp.port}")
            sdp.proto = parts[2]
            sdp.formats = [int(p) for p in parts[3:] if p.isdigit()]
        elif kind == "a":
            _attribute(sdp, value)
        elif kind == "y":
            sdp.ssrc = value
        elif kind == "f":
            sdp.media_info = value
    if not seen_media:
        raise SdpError("no m= line")
    chosen = media_host or session_host
    if chosen is None:
        raise SdpError("no c= line")
    sdp.host = chosen
    if sdp.proto.upper() not in ("RTP/AVP", "TCP/RTP/AVP", "RTP/AVP/TCP"):
        raise SdpError(f"unsupported transport {sdp.proto!r}")
    if sdp.proto.upper() == "RTP/AVP/TCP":
        sdp.proto = "TCP/RTP/AVP"
    return sdp


def _attribute(sdp: Sdp, value: str) -> None:
    name, _, rest = value.partition(":")
    low = name.strip().lower()
    rest = rest.strip()
    if low in ("recvonly", "sendonly", "sendrecv", "inactive"):
        sdp.direction = low
    elif low == "rtpmap":
        pt, _, codec = rest.partition(" ")
        if pt.strip().isdigit():
            sdp.rtpmap[int(pt)] = codec.strip()
    elif low == "setup":
        sdp.setup = rest.lower()
    elif low == "connection":
        sdp.connection_new = rest.lower() == "new"
    elif low == "downloadspeed" and rest.isdigit():
        sdp.download_speed = int(rest)
    elif low == "filesize" and rest.isdigit():
        sdp.file_size = int(rest)
    elif low == "streamnumber" and rest.isdigit():
        sdp.stream_number = int(rest)
    else:
        sdp.extra.append(value)


def answer_setup(offer: Sdp) -> str | None:
    """The ``a=setup`` an answer gives to ``offer`` (RFC 4145 §4.1): the opposite role."""
    if not offer.tcp:
        return None
    return "passive" if offer.transport == "tcp-active" else "active"


def offer_setup(transport: Transport) -> str | None:
    """The ``a=setup`` an offer carries for a leg where *we* play ``transport``."""
    if transport == "udp":
        return None
    return "active" if transport == "tcp-active" else "passive"


def settled_transport(offered: Transport, answer: Sdp) -> Transport:
    """The transport role *we* play once ``answer`` came back to our offer of ``offered``.

    The answer decides (RFC 3264 §6: the answerer picks from what was offered; RFC 4145 §4.1:
    the answer to ``active`` is ``passive`` and the other way round). Real devices break both:
    some answer ``RTP/AVP`` to a ``TCP/RTP/AVP`` offer and send UDP, some answer ``active`` to
    ``active``. Whatever role the answer leaves is ours: an answer of ``active`` means the far
    end connects, so we listen; ``passive`` means it listens, so we connect. A TCP answer
    without ``a=setup`` (or with ``actpass``, which an answer may not use) keeps the offered
    roles; to a UDP offer it is taken as ``passive`` (GB/T 28181-2022 Annex D).
    """
    if not answer.tcp:
        return "udp"
    setup = (answer.setup or "").lower()
    if setup == "active":
        return "tcp-passive"
    if setup == "passive":
        return "tcp-active"
    return offered if offered != "udp" else "tcp-active"
