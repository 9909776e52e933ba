"""SIP, and nothing GB-specific: codec, URIs, digest, transactions, transports, endpoint."""

from gateway.sip.errors import ParseError, SipError, TransactionTimeout, TransportError
from gateway.sip.message import Message, Request, Response, make_response, parse
from gateway.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

__all__ = [
    "Message",
    "NameAddr",
    "ParseError",
    "Request",
    "Response",
    "SipError",
    "SipUri",
    "TransactionTimeout",
    "TransportError",
    "make_response",
    "parse",
    "parse_name_addr",
    "parse_uri",
]
