"""MANSRTSP: the RTSP-like playback control carried in SIP INFO (GB/T 28181-2016/2022 Annex B;
reference §6.6).

A request is a request line (``PLAY``, ``PAUSE`` or ``TEARDOWN``, then ``RTSP/1.0``; some
equipment writes ``MANSRTSP/1.0``), a ``CSeq`` of its own (independent of the SIP CSeq) and, for
PLAY, ``Range: npt=<s>-`` (seek; ``npt=now-`` resumes) and/or ``Scale: <x>`` (speed; negative is
reverse); for PAUSE, ``PauseTime: now``. The answer is ``RTSP/1.0 <code> <reason>`` with the same
CSeq, carried in the body of the INFO's 200. Bytes in, values out: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CONTENT_TYPE = "Application/MANSRTSP"
METHODS = ("PLAY", "PAUSE", "TEARDOWN")
VERSIONS = ("RTSP/1.0", "MANSRTSP/1.0")
_MAX_BODY = 4096


class RtspError(ValueError):
    """The body is not MANSRTSP this peer understands; ``reason`` goes into a SIP reason phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Range:
    """``npt=<start>-[<end>]``; ``start`` None means ``now`` (resume where paused)."""

    start: float | None
    end: float | None = None

    @property
    def now(self) -> bool:
        return self.start is None

    def __str__(self) -> str:
        start = "now" if self.start is None else _npt(self.start)
        end = "" if self.end is None else _npt(self.end)
        return f"npt={start}-{end}"


@dataclass(frozen=True, slots=True)
class RtspRequest:
    method: str
    cseq: int
    range: Range | None = None
    scale: float | None = None
    pause_time: str | None = None
    headers: tuple[tuple[str, str], ...] = ()  # every header line as received, in order
    version: str = "RTSP/1.0"

    def header(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return None

    def to_bytes(self) -> bytes:
        lines = [f"{self.method} {self.version}", f"CSeq: {self.cseq}"]
        if self.range is not None:
            lines.append(f"Range: {self.range}")
        if self.scale is not None:
            lines.append(f"Scale: {float(self.scale)}")
        if self.pause_time is not None:
            lines.append(f"PauseTime: {self.pause_time}")
        return ("\r\n".join(lines) + "\r\n").encode("ascii")

    def __str__(self) -> str:
        return self.to_bytes().decode("ascii")


@dataclass(frozen=True, slots=True)
class RtspResponse:
    status: int
    reason: str
    cseq: int | None
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return None

    def to_bytes(self) -> bytes:
        lines = [f"RTSP/1.0 {self.status} {self.reason}"]
        if self.cseq is not None:
            lines.append(f"CSeq: {self.cseq}")
        lines.extend(f"{k}: {v}" for k, v in self.headers if k.lower() != "cseq")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _npt(value: float) -> str:
    """Seconds as Annex B writes them in a Range: ``100``, ``12.5``."""
    return str(int(value)) if float(value).is_integer() else str(value)


# -- building ---------------------------------------------------------------------------------


def play(
    cseq: int, range: str | float | Range | None = None, scale: float | None = None
) -> RtspRequest:
    """A PLAY: ``range`` as seconds (seek), ``"now"`` (resume) or ``npt=`` text; ``scale``."""
    return RtspRequest("PLAY", cseq, range=_as_range(range), scale=scale)


def pause(cseq: int) -> RtspRequest:
    return RtspRequest("PAUSE", cseq, pause_time="now")


def teardown(cseq: int) -> RtspRequest:
    return RtspRequest("TEARDOWN", cseq)


def _as_range(value: str | float | Range | None) -> Range | None:
    if value is None or isinstance(value, Range):
        return value
    if isinstance(value, int | float):
        return Range(float(value))
    text = value.strip()
    if text.lower() == "now":
        return Range(None)
    return parse_range(text if "=" in text else f"npt={text}")


def answer(
    request: RtspRequest | None,
    status: int = 200,
    reason: str = "OK",
    headers: Iterable[tuple[str, str]] = (),
) -> RtspResponse:
    """The answer to ``request`` (its CSeq; a PLAY's Range echoed, as Annex B shows)."""
    extra = list(headers)
    echo = request is not None and request.range is not None and status == 200
    if echo and not any(k.lower() == "range" for k, _ in extra):
        assert request is not None and request.range is not None
        extra.insert(0, ("Range", str(request.range)))
    return RtspResponse(status, reason, request.cseq if request is not None else None, tuple(extra))


# -- parsing ----------------------------------------------------------------------------------


def _lines(body: bytes) -> list[str]:
    if not body.strip():
        raise RtspError("empty MANSRTSP body")
    if len(body) > _MAX_BODY:
        raise RtspError("MANSRTSP body too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RtspError("MANSRTSP body is not text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _headers(lines: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise RtspError(f"bad MANSRTSP header line: {line[:40]!r}")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def _cseq(headers: tuple[tuple[str, str], ...], required: bool = True) -> int | None:
    for key, value in headers:
        if key.lower() == "cseq":
            if not value.isdigit():
                raise RtspError(f"bad CSeq: {value[:20]!r}")
            return int(value)
    if required:
        raise RtspError("no CSeq")
    return None


def _float(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise RtspError(f"bad {what}: {value[:20]!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RtspError(f"bad {what}: {value[:20]!r}")
    return number


def parse_range(value: str) -> Range:
    """``npt=100-``, ``npt=now-``, ``npt=600-120`` (reverse), ``npt=12.5-``."""
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "npt":
        raise RtspError(f"bad Range (npt only): {value[:30]!r}")
    start_text, dash, end_text = spec.strip().partition("-")
    if not dash:
        raise RtspError(f"bad Range: {value[:30]!r}")
    start_text, end_text = start_text.strip(), end_text.strip()
    start = None if start_text.lower() == "now" else _float(start_text, "Range start")
    end = _float(end_text, "Range end") if end_text else None
    if (start is not None and start < 0) or (end is not None and end < 0):
        raise RtspError(f"negative Range: {value[:30]!r}")
    return Range(start, end)


def parse_request(body: bytes) -> RtspRequest:
    """Parse an INFO body; :class:`RtspError` says what is wrong."""
    lines = _lines(body)
    parts = lines[0].split()
    if len(parts) != 2:
        raise RtspError(f"bad MANSRTSP request line: {lines[0][:40]!r}")
    method, version = parts[0].upper(), parts[1].upper()
    if version not in VERSIONS:
        raise RtspError(f"bad MANSRTSP version: {parts[1][:20]!r}")
    if method not in METHODS:
        raise RtspError(f"unknown MANSRTSP method: {parts[0][:20]!r}")
    headers = _headers(lines[1:])
    cseq = _cseq(headers)
    assert cseq is not None
    rng: Range | None = None
    scale: float | None = None
    pause_time: str | None = None
    for key, value in headers:
        low = key.lower()
        if low == "range":
            rng = parse_range(value)
        elif low == "scale":
            scale = _float(value, "Scale")
            if scale == 0:
                raise RtspError("Scale 0")
        elif low == "pausetime":
            pause_time = value
    return RtspRequest(method, cseq, rng, scale, pause_time, headers, parts[1])


def parse_response(body: bytes) -> RtspResponse:
    """Parse the body of an INFO's answer."""
    lines = _lines(body)
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0].upper() not in VERSIONS or not parts[1].isdigit():
        raise RtspError(f"bad MANSRTSP status line: {lines[0][:40]!r}")
    headers = _headers(lines[1:])
    return RtspResponse(
        int(parts[1]), parts[2] if len(parts) > 2 else "", _cseq(headers, False), headers
    )
