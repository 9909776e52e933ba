"""Subscriptions an upper platform makes to the gateway, as plain bookkeeping.

RFC 6665 §4.2 (the notifier's side) with GB/T 28181-2022 §9.11 and 2016 §9.11: an upper
subscribes to ``Catalog``, ``Alarm`` or ``MobilePosition`` with a MANSCDP Query body; the
gateway grants a duration (600 s when the SUBSCRIBE names none, at most a day), counts its
NOTIFY CSeqs and ends the dialog at expiry. Nothing here sends, sleeps or reads a clock: the
time is passed in, so the rules are tested with plain calls. The NOTIFYs themselves go out
from :mod:`gateway.uplink.notifier`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.manscdp import CatalogItem, Message

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
    """A subscription an upper made to the gateway (we are the notifier)."""

    kind: str
    call_id: str
    remote_tag: str
    local_tag: str
    remote_uri: str
    target: str
    event: str
    expires_at: float
    query: Message
    cseq: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    queue: list[tuple[str, CatalogItem]] = field(default_factory=list, repr=False)
    flushing: bool = False
    ended: bool = False
    # NOTIFYs of one dialog go one at a time, so their CSeqs arrive in order (RFC 3261
    # §12.2.2) and nothing follows the terminating one.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    def remaining(self, now: float) -> int:
        """Whole seconds left at ``now``, as ``Subscription-State: active;expires=`` says."""
        return max(0, int(self.expires_at - now))

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def refresh(self, now: float, granted: int) -> None:
        """A refreshing SUBSCRIBE granted ``granted`` seconds from ``now`` (RFC 6665 §4.2.1.2)."""
        self.expires_at = now + granted

    def next_cseq(self) -> int:
        """The CSeq of the next NOTIFY in this dialog: each request a number of its own, a retry
        over UDP after TCP failed included (RFC 3261 §12.2.1.1)."""
        self.cseq += 1
        return self.cseq
