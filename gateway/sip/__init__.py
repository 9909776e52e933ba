"""SIP, and nothing GB-specific (floor 1): the codec, URIs, digest, transactions, dialogs and
RFC 6665 subscriptions, the one request builder, the sans-I/O core (:class:`SipCore`) and the
thin asyncio adapter around it (:class:`Endpoint`, with its transports)."""

from gateway.sip.builder import (
    MAGIC_COOKIE,
    HeaderValueError,
    RequestSequence,
    build_request,
    compose,
    new_branch,
    new_call_id,
    new_tag,
    random_token,
)
from gateway.sip.core import SipCore
from gateway.sip.counters import Counters
from gateway.sip.dialog import Dialog, InviteFailed, OutgoingInvite, send_bye
from gateway.sip.digest import Credentials, DigestClient, DigestServer, Verdict
from gateway.sip.endpoint import Endpoint, Handler, HandlerResult, ServerContext
from gateway.sip.errors import ParseError, SipError, TransactionTimeout, TransportError
from gateway.sip.message import Message, Request, Response, make_response, parse, warning_value
from gateway.sip.overload import LoadGuard
from gateway.sip.peer import Peer
from gateway.sip.subscription import (
    Notifier,
    Subscriber,
    SubscriptionState,
    active_state,
    parse_subscription_state,
    terminated_state,
)
from gateway.sip.transaction import TimerConfig
from gateway.sip.uri import (
    NameAddr,
    SipUri,
    find_param,
    is_digits,
    parse_name_addr,
    parse_params,
    parse_uri,
)

__all__ = [
    "MAGIC_COOKIE",
    "Counters",
    "Credentials",
    "Dialog",
    "DigestClient",
    "DigestServer",
    "Endpoint",
    "Handler",
    "HandlerResult",
    "HeaderValueError",
    "InviteFailed",
    "LoadGuard",
    "Message",
    "NameAddr",
    "Notifier",
    "OutgoingInvite",
    "ParseError",
    "Peer",
    "Request",
    "RequestSequence",
    "Response",
    "ServerContext",
    "SipCore",
    "SipError",
    "SipUri",
    "Subscriber",
    "SubscriptionState",
    "TimerConfig",
    "TransactionTimeout",
    "TransportError",
    "Verdict",
    "active_state",
    "build_request",
    "compose",
    "find_param",
    "is_digits",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse",
    "parse_name_addr",
    "parse_params",
    "parse_subscription_state",
    "parse_uri",
    "random_token",
    "send_bye",
    "terminated_state",
    "warning_value",
]
