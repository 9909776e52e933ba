"""Subscriptions an upper platform makes to the gateway, as plain bookkeeping.

RFC 6665 §4.2 (the notifier's side) with GB/T 28181-2022 §9.11 and 2016 §9.11: an upper
subscribes to ``Catalog``, ``Alarm`` or ``MobilePosition`` with a MANSCDP Query body; the
gateway grants a duration (600 s when the SUBSCRIBE names none, at most a day) and ends the
dialog at expiry. The dialog itself (Call-ID, tags, NOTIFY CSeqs, the remote target, expiry and
Subscription-State) is a :class:`gateway.sip.subscription.Notifier`; an
:class:`InboundSubscription` adds what the uplink keeps around it. Nothing here sends, sleeps
or reads a clock: the time is passed in, so the rules are tested with plain calls. The NOTIFYs
themselves go out from :mod:`gateway.uplink.notifier`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.manscdp import CatalogItem, Message
from gateway.sip import Notifier, Peer, Request

# What an upper may subscribe to here (2022 §9.11: catalog, alarm and mobile position).
KINDS = ("Catalog", "Alarm", "MobilePosition")
# RFC 6665 §4.2.1.1: the notifier picks a duration when the subscriber names none; a day at
# most keeps a subscription of an upper that vanished from living for ever.
DEFAULT_EXPIRES = 600
MAX_EXPIRES = 86400


def granted_expires(asked: int | None) -> int:
    """Seconds granted for a SUBSCRIBE whose ``Expires`` is ``asked`` (``None``: absent);
    0 ends the subscription (RFC 6665 §4.2.1.3)."""
    return DEFAULT_EXPIRES if asked is None else min(asked, MAX_EXPIRES)


@dataclass(slots=True)
class InboundSubscription:
    """A subscription an upper made to the gateway (we are the notifier): what it is for
    (``kind``, the DeviceID ``target`` its Query names, the ``query`` itself), its RFC 6665
    dialog (``notifier``), and the uplink's timer and NOTIFY queue around it."""

    kind: str
    target: str
    query: Message
    notifier: Notifier
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    queue: list[tuple[str, CatalogItem]] = field(default_factory=list, repr=False)
    flushing: bool = False
    # NOTIFYs of one dialog go one at a time, so their CSeqs arrive in order (RFC 3261
    # §12.2.2) and nothing follows the terminating one.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def accept(
        cls,
        subscribe: Request,
        query: Message,
        *,
        peer: Peer,
        local_uri: str,
        remote_uri: str,
        expires_at: float,
    ) -> InboundSubscription:
        """The subscription our 200 to ``subscribe`` (whose body is ``query``) creates: its
        dialog's From/To are ``local_uri``/``remote_uri`` (the gateway and the upper as
        configured, whatever the SUBSCRIBE wrote), its Event the SUBSCRIBE's (the CmdType when
        it sent none). ``peer`` is the upper's link as it was then: NOTIFYs are routed by
        :class:`~gateway.uplink.sending.Sender` over the link as it is when they go.
        Raises :class:`~gateway.sip.errors.ParseError` when the SUBSCRIBE's From, CSeq or
        Contact is unreadable."""
        notifier = Notifier.accept(
            subscribe,
            peer,
            expires_at=expires_at,
            local_uri=local_uri,
            remote_uri=remote_uri,
            event=subscribe.get_header("Event") or query.CMD,
        )
        return cls(kind=query.CMD, target=query.device_id, query=query, notifier=notifier)

    @property
    def call_id(self) -> str:
        return self.notifier.call_id

    @property
    def local_tag(self) -> str:
        """Our tag in the dialog (the To tag of our 200s, the From tag of our NOTIFYs)."""
        return self.notifier.local_tag

    @property
    def ended(self) -> bool:
        """Has the subscription ended (unsubscribed, expired, dropped)? Only its terminating
        NOTIFY may still go out."""
        return self.notifier.terminated
