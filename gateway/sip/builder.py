"""Making requests: the one place that writes From, To, Call-ID and CSeq (RFC 3261 §8.1.1).

:func:`build_request` makes an out-of-dialog request (§8.1.1): a fresh From tag and Call-ID
unless the caller keeps its own, no To tag (§8.1.1.2), the CSeq it is given. A
:class:`RequestSequence` keeps one Call-ID and From tag across requests whose CSeq grows, as
REGISTER refreshes must (§10.2.4). In-dialog requests (:class:`gateway.sip.dialog.Dialog`) are
written by the same :func:`compose`. Via, Max-Forwards and User-Agent are the endpoint's
(it adds them when sending). Every value is checked: none can carry CR or LF (which would end the
header and let a caller's string inject one of its own, §7.3.1), header names and the method
are tokens (§25.1), a CSeq number is below 2**31 (§8.1.1.5).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.sip.errors import SipError
from gateway.sip.message import Request
from gateway.sip.uri import SipUri

MAGIC_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31

# RFC 3261 §25.1 token characters (method and header names).
_TOKEN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")
# Tags, branches and Call-IDs must be unique, not secret (RFC 3261 §19.3): a PRNG seeded once
# from the OS is enough and spares a system call per message. Kept here, on the sans-I/O floor,
# so the endpoint and the request builder draw from one generator.
_rng = random.Random(os.urandom(16))


def random_token(nbytes: int = 8) -> str:
    """``nbytes`` random bytes as lower-case hex."""
    return f"{_rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def new_tag() -> str:
    """A From/To tag (RFC 3261 §19.3: at least 32 bits of randomness)."""
    return random_token(6)


def new_call_id() -> str:
    """A Call-ID unique in space and time (RFC 3261 §8.1.1.4)."""
    return random_token(12)


def new_branch() -> str:
    """A Via branch with the RFC 3261 magic cookie (§8.1.1.7)."""
    return MAGIC_COOKIE + random_token(8)


class HeaderValueError(SipError, ValueError):
    """A value given to the builder that cannot go on the wire as it is (a control character
    such as CR/LF, a name that is not a token, a CSeq out of range)."""


def check_value(value: str, what: str) -> str:
    """``value`` when it can stand in a header (or the start line) as written: no CR or LF
    (either would end the line, §7.3.1, and let the rest pass for a header of its own) and no
    NUL. Raises :class:`HeaderValueError` otherwise.

    Other control characters are let through: values a dialog copies from a peer's request
    (its From, its tag) are echoed as the peer wrote them, and they cannot break the framing.
    """
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderValueError(f"{what}: CR, LF or NUL in {value[:60]!r}")
    return value


def check_token(value: str, what: str) -> str:
    """``value`` when it is a non-empty RFC 3261 token (a method, a header name)."""
    if not value or not _TOKEN.issuperset(value):
        raise HeaderValueError(f"{what}: not a token: {value[:60]!r}")
    return value


def _check_cseq(seq: int) -> int:
    if not 0 <= seq <= MAX_CSEQ:
        raise HeaderValueError(f"CSeq: {seq} is out of range")
    return seq


def _addr(uri: str | SipUri) -> str:
    """A From/To/Contact value for a bare URI: in angle brackets, so that parameters after it
    (the tag) belong to the header, not the URI (§20.10)."""
    return f"<{check_value(str(uri), 'URI')}>"


def compose(
    method: str,
    uri: str | SipUri,
    *,
    from_: str,
    from_tag: str,
    to: str,
    to_tag: str,
    call_id: str,
    cseq: int,
    contact: str | SipUri | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request with its headers in the order every caller writes them: From, To, Call-ID,
    CSeq, Contact (when given), ``headers`` in their order, Content-Type (when given).

    ``from_`` and ``to`` are the header values without their tags, as written (a name-addr);
    an empty ``to_tag`` leaves the To without one. ``contact`` is a URI (put in ``<>``).
    """
    check_token(method, "method")
    items = [
        ("From", f"{check_value(from_, 'From')};tag={check_value(from_tag, 'From tag')}"),
        (
            "To",
            f"{check_value(to, 'To')};tag={check_value(to_tag, 'To tag')}"
            if to_tag
            else check_value(to, "To"),
        ),
        ("Call-ID", check_value(call_id, "Call-ID")),
        ("CSeq", f"{_check_cseq(cseq)} {method}"),
    ]
    if contact is not None:
        items.append(("Contact", _addr(contact)))
    for name, value in headers:
        items.append((check_token(name, "header name"), check_value(value, name)))
    if content_type is not None:
        items.append(("Content-Type", check_value(content_type, "Content-Type")))
    return Request(method, check_value(str(uri), "Request-URI"), items, body)


def build_request(
    method: str,
    uri: str | SipUri,
    *,
    from_uri: str | SipUri,
    to_uri: str | SipUri,
    from_tag: str | None = None,
    call_id: str | None = None,
    cseq: int = 1,
    contact: str | SipUri | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """An out-of-dialog request (RFC 3261 §8.1.1) to ``uri``.

    From is ``<from_uri>`` with ``from_tag`` (fresh when not given, §8.1.1.3), To is
    ``<to_uri>`` without a tag (§8.1.1.2), the Call-ID is fresh unless given (§8.1.1.4), CSeq
    is ``cseq method`` (§8.1.1.5). ``contact`` is a URI; ``headers`` (Expires, Event, Subject,
    Accept...) follow it in their order, then Content-Type when ``content_type`` is given.
    The endpoint adds Via, Max-Forwards and User-Agent when it sends the request.
    """
    return compose(
        method,
        uri,
        from_=_addr(from_uri),
        from_tag=new_tag() if from_tag is None else from_tag,
        to=_addr(to_uri),
        to_tag="",
        call_id=new_call_id() if call_id is None else call_id,
        cseq=cseq,
        contact=contact,
        headers=headers,
        body=body,
        content_type=content_type,
    )


@dataclass(slots=True)
class RequestSequence:
    """Out-of-dialog requests that share a Call-ID and From tag, each with the next CSeq: a
    UA's registrations (RFC 3261 §10.2: one Call-ID for the REGISTERs to a registrar, the
    CSeq incremented by one each time, §10.2.4)."""

    call_id: str = field(default_factory=new_call_id)
    from_tag: str = field(default_factory=new_tag)
    cseq: int = 0

    def request(
        self,
        method: str,
        uri: str | SipUri,
        *,
        from_uri: str | SipUri,
        to_uri: str | SipUri,
        contact: str | SipUri | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The next request of the sequence (its CSeq one higher than the last)."""
        self.cseq += 1
        return build_request(
            method,
            uri,
            from_uri=from_uri,
            to_uri=to_uri,
            from_tag=self.from_tag,
            call_id=self.call_id,
            cseq=self.cseq,
            contact=contact,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def restart(self) -> None:
        """Start a new sequence: a fresh Call-ID, CSeq from 1 again (the From tag is kept)."""
        self.call_id = new_call_id()
        self.cseq = 0
