"""Exceptions raised by the SIP layer."""

from __future__ import annotations


class SipError(Exception):
    """Base class of every error the SIP layer raises."""


class ParseError(SipError):
    """Bytes or a header value that are not valid SIP (RFC 3261 §25), or exceed our limits.

    ``reason`` is short and fit for a SIP reason phrase ("Bad Via", "Message Too Large").
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TransactionTimeout(SipError):
    """A client transaction ended by Timer B or F without a final response (RFC 3261 §17.1)."""


class TransportError(SipError):
    """The message could not be handed to the network (connection refused, reset, closed)."""
