"""Event subscriptions (RFC 6665) on the dialog of RFC 3261 §12, both sides, sans-I/O.

A :class:`Subscriber` (RFC 6665 §4.1) makes the SUBSCRIBEs of one subscription (initial,
refresh, and the un-SUBSCRIBE with ``Expires: 0``, §4.1.2.1–§4.1.2.3) in one dialog, takes the
remote tag from the first 2xx, and tells which NOTIFYs belong to it: same Call-ID, our tag in
their To, the notifier's in their From and a matching Event (§8.2.1); a NOTIFY may come before
the 2xx and then creates the dialog itself (§4.1.2.4). A :class:`Notifier` (§4.2) holds the
dialog a SUBSCRIBE's 200 creates, matches refreshes to it, and makes in-dialog NOTIFYs with a
growing CSeq and the ``Subscription-State`` (§8.2.3) of the subscription. Neither sends
anything: requests are built and messages matched; the caller owns sockets and timers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.sip.builder import new_call_id, new_tag
from gateway.sip.dialog import Dialog, _without_tag
from gateway.sip.errors import ParseError
from gateway.sip.message import Request, Response
from gateway.sip.transport import Peer
from gateway.sip.uri import SipUri, find_param, is_digits, parse_params


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    """A ``Subscription-State`` value (RFC 6665 §8.2.3): the state in lower case (``active``,
    ``pending``, ``terminated`` or an extension), its ``expires`` and ``reason`` when given."""

    state: str
    expires: int | None = None
    reason: str | None = None

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"


def parse_subscription_state(value: str) -> SubscriptionState:
    """Read a ``Subscription-State``. Never raises: a subscriber answers every NOTIFY of its
    dialog 200 (an error ends the subscription, §4.2.2), so parameters it cannot read are
    ignored rather than refused."""
    head, _, rest = value.strip().partition(";")
    try:
        params = parse_params(rest)
    except ParseError:
        params = ()
    expires_text = find_param(params, "expires")
    expires = int(expires_text) if expires_text and is_digits(expires_text) else None
    return SubscriptionState(head.strip().lower(), expires, find_param(params, "reason"))


def active_state(expires: int) -> str:
    """``active;expires=N`` (§4.2.2: the time left of the subscription)."""
    return f"active;expires={max(0, expires)}"


def terminated_state(reason: str) -> str:
    """``terminated;reason=R`` (§4.2.2, reasons in §4.1.3: timeout, noresource, rejected...)."""
    return f"terminated;reason={reason}"


def event_matches(ours: str, theirs: str) -> bool:
    """Do two Event values name the same subscription (RFC 6665 §8.2.1)? The event type and
    the ``id`` parameter are compared byte by byte; an ``id`` on one side only never matches;
    other parameters do not count."""
    ours_type, _, ours_params = ours.partition(";")
    theirs_type, _, theirs_params = theirs.partition(";")
    if ours_type.strip() != theirs_type.strip():
        return False
    try:
        ours_id = find_param(parse_params(ours_params), "id")
        theirs_id = find_param(parse_params(theirs_params), "id")
    except ParseError:
        return False
    return ours_id == theirs_id


def _tags(req: Request) -> tuple[str, str] | None:
    """The From and To tags of ``req`` ("" when absent), ``None`` when either is unreadable."""
    try:
        return req.from_.tag or "", req.to.tag or ""
    except ParseError:
        return None


@dataclass(slots=True)
class Subscriber:
    """The subscriber's side of one subscription (RFC 6665 §4.1). ``dialog.remote_tag`` stays
    empty until the first 2xx (or NOTIFY, §4.1.2.4) gives it; until then the SUBSCRIBEs go
    without a To tag, as the initial one does (RFC 3261 §8.1.1.2)."""

    dialog: Dialog
    event: str

    @classmethod
    def create(
        cls,
        *,
        target: str | SipUri,
        local_uri: str | SipUri,
        remote_uri: str | SipUri,
        event: str,
        peer: Peer,
        call_id: str | None = None,
        local_tag: str | None = None,
    ) -> Subscriber:
        """A subscription not yet sent: ``target`` is the Request-URI of its SUBSCRIBEs,
        ``local_uri``/``remote_uri`` go in From/To, ``peer`` is where they go. The Call-ID and
        our tag are fresh unless given."""
        dialog = Dialog(
            call_id=new_call_id() if call_id is None else call_id,
            local_tag=new_tag() if local_tag is None else local_tag,
            remote_tag="",
            local=f"<{local_uri}>",
            remote=f"<{remote_uri}>",
            target=str(target),
            peer=peer,
            local_cseq=0,
        )
        return cls(dialog, event)

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    @property
    def confirmed(self) -> bool:
        """Has a 2xx (or a NOTIFY) made the dialog, giving the notifier's tag?"""
        return bool(self.dialog.remote_tag)

    def subscribe(
        self,
        expires: int,
        *,
        contact: str | SipUri | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The next SUBSCRIBE of this subscription (next CSeq): the initial one, a refresh
        (§4.1.2.2), or with ``expires`` 0 the un-SUBSCRIBE (§4.1.2.3). Headers: Contact, Event,
        Expires, ``headers``, then Content-Type when given."""
        return self.dialog.request(
            "SUBSCRIBE",
            contact=contact,
            headers=(("Event", self.event), ("Expires", str(expires)), *headers),
            body=body,
            content_type=content_type,
        )

    def confirm(self, resp: Response) -> int | None:
        """Take a 2xx to one of our SUBSCRIBEs (§4.1.2.1): the first gives the dialog its
        remote tag (RFC 3261 §12.1.2; later ones cannot change it). The Expires granted, or
        ``None`` when absent or unreadable (then the remote tag may be unset too)."""
        try:
            if not self.dialog.remote_tag:
                self.dialog.remote_tag = resp.to.tag or ""
            return resp.expires
        except ParseError:
            return None

    def matches(self, notify: Request) -> bool:
        """Is ``notify`` a NOTIFY of this subscription: its Call-ID, our tag in its To, the
        notifier's tag in its From (any tag before the dialog is confirmed, §4.1.2.4) and an
        Event that matches ours (§8.2.1)?"""
        if notify.method != "NOTIFY" or notify.call_id != self.dialog.call_id:
            return False
        tags = _tags(notify)
        if tags is None:
            return False
        from_tag, to_tag = tags
        if to_tag != self.dialog.local_tag or not from_tag:
            return False
        if self.dialog.remote_tag and from_tag != self.dialog.remote_tag:
            return False
        return event_matches(self.event, notify.get_header("Event") or "")

    def accept_notify(self, notify: Request) -> bool:
        """:meth:`matches`, in CSeq order (RFC 3261 §12.2.2). A NOTIFY that comes before the
        2xx creates the dialog: its From tag becomes the remote tag (§4.1.2.4)."""
        if not self.matches(notify) or not self.dialog.accepts(notify):
            return False
        if not self.dialog.remote_tag:
            tags = _tags(notify)
            self.dialog.remote_tag = tags[0] if tags is not None else ""
        return True

    def renewed(self) -> Subscriber:
        """The same subscription asked for afresh in a new dialog (after a 481 or a
        termination, §4.1.2.2, §4.1.3): a new Call-ID and tag, CSeq from 1 again, no remote
        tag; target, URIs, peer and Event kept."""
        dialog = replace(
            self.dialog,
            call_id=new_call_id(),
            local_tag=new_tag(),
            remote_tag="",
            local_cseq=0,
            invite_cseq=0,
            remote_cseq=0,
        )
        return Subscriber(dialog, self.event)

    def readdress(self, target: str | SipUri, remote_uri: str | SipUri, peer: Peer) -> None:
        """Send the next SUBSCRIBEs to ``target``/``peer`` with ``remote_uri`` in To: a device
        behind NAT is reached where it last registered from, which may change while the
        subscription lasts."""
        self.dialog.target = str(target)
        self.dialog.remote = f"<{remote_uri}>"
        self.dialog.peer = peer


@dataclass(slots=True)
class Notifier:
    """The notifier's side of one subscription (RFC 6665 §4.2): the dialog its 200 created,
    the Event of the subscription, when it expires (in the caller's clock)."""

    dialog: Dialog
    event: str
    expires_at: float = 0.0
    terminated: bool = False

    @classmethod
    def accept(
        cls,
        subscribe: Request,
        peer: Peer,
        *,
        expires_at: float,
        local_tag: str | None = None,
        local_uri: str | SipUri | None = None,
        remote_uri: str | SipUri | None = None,
        event: str | None = None,
    ) -> Notifier:
        """The dialog our 200 to ``subscribe`` creates (RFC 3261 §12.1.1; RFC 6665 §4.2.1):
        its Call-ID, the subscriber's tag, ours (``local_tag``, fresh unless given: it goes in
        the 200's To too), the subscriber's Contact as target (its From URI when it sent none).

        From/To of our NOTIFYs are the SUBSCRIBE's To/From without tags unless ``local_uri``/
        ``remote_uri`` say otherwise; ``event`` defaults to the SUBSCRIBE's Event.
        Raises :class:`ParseError` when the SUBSCRIBE's From, To, CSeq or Contact is unreadable.
        """
        contacts = subscribe.contacts
        target = contacts[0].uri if contacts else subscribe.from_.uri
        local = (
            f"<{local_uri}>"
            if local_uri is not None
            else _without_tag(subscribe.get_header("To") or "")
        )
        remote = (
            f"<{remote_uri}>"
            if remote_uri is not None
            else _without_tag(subscribe.get_header("From") or "")
        )
        dialog = Dialog(
            call_id=subscribe.call_id,
            local_tag=new_tag() if local_tag is None else local_tag,
            remote_tag=subscribe.from_.tag or "",
            local=local,
            remote=remote,
            target=str(target),
            peer=peer,
            local_cseq=0,
            remote_cseq=subscribe.cseq.seq,
        )
        if event is None:
            event = subscribe.get_header("Event") or ""
        return cls(dialog, event, expires_at)

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    @property
    def local_tag(self) -> str:
        return self.dialog.local_tag

    def matches(self, subscribe: Request) -> bool:
        """Is ``subscribe`` a refresh or un-SUBSCRIBE in this dialog (§4.2.1.2): its Call-ID,
        our tag in its To, the subscriber's in its From, a matching Event (§8.2.1)?"""
        if subscribe.method != "SUBSCRIBE" or subscribe.call_id != self.dialog.call_id:
            return False
        tags = _tags(subscribe)
        if tags is None or tags != (self.dialog.remote_tag, self.dialog.local_tag):
            return False
        return event_matches(self.event, subscribe.get_header("Event") or "")

    def remaining(self, now: float) -> int:
        """Whole seconds left of the subscription at ``now`` (0 once expired)."""
        return max(0, int(self.expires_at - now))

    def expired(self, now: float) -> bool:
        """Has the subscription run out at ``now`` (§4.2.2: the notifier ends it then)?"""
        return now >= self.expires_at

    def extend(self, now: float, granted: int) -> None:
        """A refresh granted ``granted`` seconds from ``now`` (§4.2.1.2)."""
        self.expires_at = now + granted

    def active(self, now: float) -> str:
        """The Subscription-State of an active subscription at ``now``."""
        return active_state(self.remaining(now))

    def terminate(self, reason: str) -> str:
        """End the subscription; the Subscription-State of its last NOTIFY (§4.2.2)."""
        self.terminated = True
        return terminated_state(reason)

    def notify(
        self,
        state: str,
        *,
        contact: str | SipUri | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The next NOTIFY of this dialog (the next CSeq, RFC 3261 §12.2.1.1) with
        Subscription-State ``state`` (:meth:`active` or :meth:`terminate`). Headers: Contact,
        Event, Subscription-State, ``headers``, then Content-Type when given."""
        return self.dialog.request(
            "NOTIFY",
            contact=contact,
            headers=(("Event", self.event), ("Subscription-State", state), *headers),
            body=body,
            content_type=content_type,
        )
