"""SIP, and nothing GB-specific: codec, URIs, digest, transactions, the sans-I/O core
(``core.SipCore``), transports and the asyncio endpoint around them."""

from gateway.sip.core import SipCore
from gateway.sip.counters import Counters
from gateway.sip.errors import ParseError, SipError, TransactionTimeout, TransportError
from gateway.sip.message import Message, Request, Response, make_response, parse
from gateway.sip.peer import Peer
from gateway.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

__all__ = [
    "Counters",
    "Message",
    "NameAddr",
    "ParseError",
    "Peer",
    "Request",
    "Response",
    "SipCore",
    "SipError",
    "SipUri",
    "TransactionTimeout",
    "TransportError",
    "make_response",
    "parse",
    "parse_name_addr",
    "parse_uri",
]
