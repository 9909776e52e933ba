"""Framing of SIP messages on a byte stream (RFC 3261 §18.3): cut at Content-Length.

Sans-I/O: feed bytes, get whole messages back. Also recognises the RFC 5626 §3.5.1 keep-alive:
a double CRLF "ping" (answered by the connection with a single CRLF "pong"); stray CRLFs between
messages are skipped. Content-Length is read by the parser's own rule
(:func:`~gateway.sip.message.content_length`: ``1*DIGIT``, leading zeros allowed, at most the
message size limit), so the framer and the parser never disagree on where a message ends.

When the framing cannot be trusted (two Content-Lengths, a bad one, a message over the limit) the
framer hands back a :class:`Refused` carrying the header block, so the connection can answer it
(400, 513) before it closes: nothing after it on the stream can be framed.
"""

from __future__ import annotations

from gateway.sip.errors import ParseError
from gateway.sip.message import MAX_HEADER_BLOCK, MAX_MESSAGE_SIZE, content_length

PING = b"\r\n\r\n"
PONG = b"\r\n"


class Ping:
    """A CRLFCRLF keep-alive was received: answer with :data:`PONG`."""

    __slots__ = ()


PING_EVENT = Ping()


class Refused:
    """The stream cannot be framed past this point: ``error`` says why, ``head`` is the header
    block of the message that broke it (empty when none was complete), for an answer. The
    framer takes nothing more; the connection should answer ``head`` and close."""

    __slots__ = ("error", "head")

    def __init__(self, head: bytes, error: ParseError) -> None:
        self.head = head
        self.error = error


class StreamFramer:
    __slots__ = ("_buf", "_max", "_refused", "_scanned", "_total")

    def __init__(self, max_message: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_message
        # How far the current header block was already searched for its end, so a message
        # arriving a byte at a time costs linear, not quadratic, time.
        self._scanned = 0
        # The current message's whole length once its header block is read, so a body
        # arriving a byte at a time does not have its header block read again for each.
        self._total = 0
        self._refused = False

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held back (non-zero at close means truncation)."""
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """Part of a message is held: its first byte has arrived, its end has not. CRLFs that
        may still grow into a ping do not count (the buffer then starts with CR or LF)."""
        buf = self._buf
        return bool(buf) and buf[0] not in (13, 10)

    @property
    def reading_body(self) -> bool:
        """The header block of the message now arriving has been read (its Content-Length is
        known): what is still to come is its body."""
        return self._total > 0

    def feed(self, data: bytes) -> list[bytes | Ping | Refused]:
        """Add bytes; return every message (and ping) now complete, in order, ending with a
        :class:`Refused` when the stream broke (over the size limit, a bad or a second
        Content-Length). After a :class:`Refused` the framer takes nothing more."""
        if self._refused:
            return []
        buf = self._buf
        buf += data
        out: list[bytes | Ping | Refused] = []
        while buf:
            total = self._total
            if total:
                if len(buf) < total:
                    break
                out.append(bytes(buf[:total]))
                del buf[:total]
                self._scanned = self._total = 0
                continue
            if buf[0] in (13, 10):
                if buf.startswith(PING):
                    out.append(PING_EVENT)
                    del buf[:4]
                    self._scanned = 0
                    continue
                # Wait to see whether a lone CRLF grows into a ping.
                if len(buf) < 4 and PING.startswith(bytes(buf)):
                    break
                del buf[:1]
                self._scanned = 0
                continue
            start = max(0, self._scanned - 3)
            crlf = buf.find(b"\r\n\r\n", start)
            lf = buf.find(b"\n\n", start)
            if lf >= 0 and (crlf < 0 or lf < crlf):
                head_end, body_start = lf, lf + 2
            elif crlf >= 0:
                head_end, body_start = crlf, crlf + 4
            else:
                if len(buf) > min(self._max, MAX_HEADER_BLOCK):
                    error = ParseError(
                        "Message Too Large", "header block exceeds the limit", status=513
                    )
                    return self._refuse(out, b"", error)
                self._scanned = len(buf)
                break
            head = bytes(buf[:body_start])
            try:
                length = _content_length(head[:head_end])
                if body_start + length > self._max:
                    raise ParseError(
                        "Message Too Large",
                        f"{body_start + length} bytes > {self._max}",
                        status=513,
                    )
            except ParseError as exc:
                return self._refuse(out, head, exc)
            self._total = body_start + length
        return out

    def _refuse(
        self, out: list[bytes | Ping | Refused], head: bytes, error: ParseError
    ) -> list[bytes | Ping | Refused]:
        self._refused = True
        self._buf = bytearray()
        self._scanned = self._total = 0
        out.append(Refused(head, error))
        return out


def _content_length(head: bytes) -> int:
    """The Content-Length of a header block; 0 when absent (RFC 3261 §18.3: on a stream that
    means no body). Raises :class:`ParseError` for a bad value or a second Content-Length."""
    found: bytes | None = None
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key == b"content-length" or key == b"l":
            if found is not None:
                raise ParseError("Duplicate Content-Length", "header given twice")
            found = value
    if found is None:
        return 0
    return content_length(found.decode("latin-1"))
