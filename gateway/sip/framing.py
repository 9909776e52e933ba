"""Framing of SIP messages on a byte stream (RFC 3261 §18.3): cut at Content-Length.

Sans-I/O: feed bytes, get whole messages back. Also recognises the RFC 5626 §3.5.1 keep-alive:
a double CRLF "ping" (answered by the connection with a single CRLF "pong"); stray CRLFs between
messages are skipped.
"""

from __future__ import annotations

from gateway.sip.errors import ParseError
from gateway.sip.message import MAX_HEADER_BLOCK, MAX_MESSAGE_SIZE

PING = b"\r\n\r\n"
PONG = b"\r\n"


class Ping:
    """A CRLFCRLF keep-alive was received: answer with :data:`PONG`."""

    __slots__ = ()


PING_EVENT = Ping()


class StreamFramer:
    __slots__ = ("_buf", "_max", "_scanned")

    def __init__(self, max_message: int = MAX_MESSAGE_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_message
        # How far the current header block was already searched for its end, so a message
        # arriving a byte at a time costs linear, not quadratic, time.
        self._scanned = 0

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

    def feed(self, data: bytes) -> list[bytes | Ping]:
        """Add bytes; return every message (and ping) now complete, in order.

        Raises :class:`ParseError` when a message would exceed the size limit or has a bad
        Content-Length; the stream cannot be resynchronised after that and should be closed.
        """
        buf = self._buf
        buf += data
        out: list[bytes | Ping] = []
        while buf:
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
                    raise ParseError("Message Too Large", "header block exceeds the limit")
                self._scanned = len(buf)
                break
            length = _content_length(bytes(buf[:head_end]))
            total = body_start + length
            if total > self._max:
                raise ParseError("Message Too Large", f"{total} bytes > {self._max}")
            self._scanned = head_end
            if len(buf) < total:
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scanned = 0
        return out


def _content_length(head: bytes) -> int:
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key == b"content-length" or key == b"l":
            text = value.strip()
            if not text.isdigit() or len(text) > 9:
                raise ParseError("Bad Content-Length", repr(text[:20]))
            return int(text)
    return 0  # RFC 3261 §18.3: absent on a stream means no body
