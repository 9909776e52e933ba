"""Exceptions raised by the SIP layer."""

from __future__ import annotations


class SipError(Exception):
    """Base class of every error the SIP layer raises."""


class ParseError(SipError):
    """Bytes or a header value that are not valid SIP (RFC 3261 §25), or exceed our limits.

    ``reason`` is short and fit for a SIP reason phrase ("Bad Via", "Message Too Large"): a
    fixed text naming the problem, never peer data. ``detail`` says more, for the log (and a
    Warning header), never for the Reason-Phrase. ``status`` is the answer a request refused for
    this gets: 400, or 505 for a SIP version other than 2.0 (RFC 3261 §21.5.7), 513 for a
    message over the size limit (§21.5.9).
    """

    def __init__(self, reason: str, detail: str = "", *, status: int = 400) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status


class TransactionTimeout(SipError):
    """A client transaction ended by Timer B or F without a final response (RFC 3261 §17.1)."""


class TransportError(SipError):
    """The message could not be handed to the network (connection refused, reset, closed)."""
