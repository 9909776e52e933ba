"""INVITE dialogs: the state both ends keep, and the UAC side of an INVITE (RFC 3261 §12–§15).

A :class:`Dialog` holds what in-dialog requests need (Call-ID, both tags, the remote target,
the local CSeq) and builds them. :class:`OutgoingInvite` runs one INVITE as a UAC: it ACKs the
2xx itself (and every retransmission of it, §13.2.2.4), can be withdrawn with CANCEL (§9.1), and
a 2xx that crosses the CANCEL is ACKed and then ended with BYE, so no half-open call is left at
the far end. GB devices sit behind NAT: in-dialog requests go to the address the dialog was set
up with (the registered one, or the address the INVITE came from), not to the Contact's host;
the Contact only gives the Request-URI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.sip.builder import compose
from gateway.sip.endpoint import Endpoint
from gateway.sip.errors import ParseError, SipError, TransactionTimeout
from gateway.sip.message import Request, Response
from gateway.sip.transport import Peer
from gateway.sip.uri import SipUri

log = structlog.get_logger("gateway.sip.dialog")


@dataclass(slots=True)
class Dialog:
    """One side of an established dialog. ``local``/``remote`` are the From/To values (without
    tags) this side writes; ``target`` is the remote Contact URI (the Request-URI)."""

    call_id: str
    local_tag: str
    remote_tag: str
    local: str
    remote: str
    target: str
    peer: Peer
    local_cseq: int
    invite_cseq: int = 0
    remote_cseq: int = 0
    remote_method: str = ""  # the method of the request that set ``remote_cseq``

    @classmethod
    def as_uac(cls, invite: Request, answer: Response, peer: Peer) -> Dialog:
        """The dialog a 2xx to our INVITE creates (§12.1.2)."""
        target = invite.uri
        try:
            contacts = answer.contacts if answer.get_header("Contact") else []
        except ParseError:
            contacts = []  # a broken Contact: the Request-URI still reaches the far end
        if contacts:
            target = str(contacts[0].uri)
        try:
            remote_tag = answer.to.tag or ""
        except ParseError:
            remote_tag = ""
        return cls(
            call_id=invite.call_id,
            local_tag=invite.from_.tag or "",
            remote_tag=remote_tag,
            local=_without_tag(invite.get_header("From") or ""),
            remote=_without_tag(invite.get_header("To") or ""),
            target=target,
            peer=peer,
            local_cseq=invite.cseq.seq,
            invite_cseq=invite.cseq.seq,
        )

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str, peer: Peer, local_cseq: int = 1) -> Dialog:
        """The dialog our 2xx to an incoming INVITE creates (§12.1.1)."""
        target = f"sip:{invite.from_.uri.user}@{peer.host}:{peer.port}"
        try:
            contacts = invite.contacts
        except ParseError:
            contacts = []
        if contacts:
            target = str(contacts[0].uri)
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_.tag or "",
            local=_without_tag(invite.get_header("To") or ""),
            remote=_without_tag(invite.get_header("From") or ""),
            target=target,
            peer=peer,
            local_cseq=local_cseq,
            invite_cseq=invite.cseq.seq,
            remote_cseq=invite.cseq.seq,
            remote_method=invite.method,
        )

    def request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        contact: str | SipUri | None = None,
    ) -> Request:
        """A new in-dialog request (§12.2.1.1): the next local CSeq, both tags. ``contact``
        (a URI) goes right after CSeq, before ``headers``."""
        self.local_cseq += 1
        return self._build(method, self.local_cseq, body, content_type, headers, contact)

    def ack(self) -> Request:
        """The ACK for the 2xx to the INVITE that made this dialog (CSeq of the INVITE)."""
        return self._build("ACK", self.invite_cseq, b"", None, (), None)

    def _build(
        self,
        method: str,
        cseq: int,
        body: bytes,
        content_type: str | None,
        headers: Iterable[tuple[str, str]],
        contact: str | SipUri | None,
    ) -> Request:
        # One writer of From/To/Call-ID/CSeq for in- and out-of-dialog requests alike; an
        # empty remote tag (a SUBSCRIBE before its 2xx) leaves the To without one.
        return compose(
            method,
            self.target,
            from_=self.local,
            from_tag=self.local_tag,
            to=self.remote,
            to_tag=self.remote_tag,
            call_id=self.call_id,
            cseq=cseq,
            contact=contact,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def matches(self, req: Request, peer: Peer) -> bool:
        """Is ``req`` from the other end of this dialog: its Call-ID, both tags the right way
        round (§12.2.2), from the host the dialog was set up with?"""
        try:
            from_tag, to_tag = req.from_.tag or "", req.to.tag or ""
        except ParseError:
            return False
        return (
            req.call_id == self.call_id
            and from_tag == self.remote_tag
            and to_tag == self.local_tag
            and peer.host == self.peer.host
        )

    def accepts(self, req: Request) -> bool:
        """Is ``req`` a new in-dialog request in order (§12.2.2)? Updates the remote CSeq.

        §12.2.2 refuses (500) a CSeq lower than the last; a higher one is in order. An equal
        one is taken only as the first request after the INVITE, numbered like it (a platform
        that numbers its BYE or INFO like its INVITE): it cannot be a copy of the INVITE, whose
        retransmissions the transaction layer absorbs. Any other equal one (a second request
        under a number already used in the dialog) is refused."""
        if req.method == "ACK":
            return True
        seq = req.cseq.seq
        if self.remote_cseq and seq <= self.remote_cseq:
            first_after_invite = (
                seq == self.invite_cseq == self.remote_cseq
                and self.remote_method == "INVITE"
                and req.method != "INVITE"
            )
            if not first_after_invite:
                return False
        self.remote_cseq = seq
        self.remote_method = req.method
        return True


def _without_tag(value: str) -> str:
    """A From/To value with its ``tag`` parameter removed."""
    head, sep, rest = value.partition(">")
    if not sep:
        head, rest = value, ""
    params = [p for p in rest.split(";") if p.strip() and not p.strip().lower().startswith("tag=")]
    out = head + sep
    if params:
        out += ";" + ";".join(p.strip() for p in params)
    return out


class InviteFailed(SipError):
    """The INVITE got no 2xx: ``status`` is the final response's (408 when none came)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


class OutgoingInvite:
    """One INVITE sent as a UAC. ``await send()`` returns the 2xx (already ACKed) and sets
    :attr:`dialog`, or raises :class:`InviteFailed`. :meth:`cancel` withdraws it."""

    def __init__(
        self,
        endpoint: Endpoint,
        request: Request,
        peer: Peer,
        *,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.request = request
        self.peer = peer
        self.on_provisional = on_provisional
        self.dialog: Dialog | None = None
        self.answer: Response | None = None
        self.cancelled = False
        self._provisional = asyncio.Event()
        self._task: asyncio.Task[Response] | None = None
        self._bg: set[asyncio.Future[Any]] = set()

    async def send(self, timeout: float) -> Response:
        """Wait ``timeout`` seconds for the final answer. When none came, the INVITE is
        CANCELled (RFC 3261 timer C) and a 2xx still arriving is ACKed and BYEd."""
        self._task = asyncio.ensure_future(
            self.endpoint.request(
                self.request,
                self.peer,
                on_provisional=self._provisional_received,
                on_2xx_retransmission=self._ack_again,
            )
        )
        try:
            resp = await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.add_done_callback(self._late_answer)
            self.cancel()
            raise InviteFailed(408, "Request Timeout (no answer)") from None
        except TransactionTimeout:
            raise InviteFailed(408, "Request Timeout (no answer)") from None
        except asyncio.CancelledError:
            if self._task.done() and not self._task.cancelled():
                self._late_answer(self._task)
            else:
                self._task.add_done_callback(self._late_answer)
                self.cancel()
            raise
        except SipError as exc:
            raise InviteFailed(503, f"Service Unavailable ({exc})") from None
        if resp.status >= 300:
            raise InviteFailed(resp.status, resp.reason)
        self.answer = resp
        self.dialog = Dialog.as_uac(self.request, resp, self.peer)
        self.endpoint.send_stateless(self.dialog.ack(), self.peer)
        if self.cancelled:
            # The 2xx crossed our CANCEL: the call is up at the far end, so end it.
            await self.bye()
            raise InviteFailed(487, "Request Terminated")
        return resp

    def _provisional_received(self, resp: Response) -> None:
        self._provisional.set()
        if self.on_provisional is not None:
            self.on_provisional(resp)

    def _ack_again(self, resp: Response) -> None:
        if self.dialog is not None:
            self.endpoint.send_stateless(self.dialog.ack(), self.peer)

    def _late_answer(self, task: asyncio.Future[Response]) -> None:
        """The caller gave up; a 2xx that still arrives is ACKed and BYEd."""
        if task.cancelled() or task.exception() is not None:
            return
        resp = task.result()
        if 200 <= resp.status < 300 and self.dialog is None:
            self.dialog = Dialog.as_uac(self.request, resp, self.peer)
            self.endpoint.send_stateless(self.dialog.ack(), self.peer)
            self._background(self.bye())

    def cancel(self) -> None:
        """Withdraw the INVITE (§9.1). A CANCEL may only follow a provisional response; when
        none has come yet it is sent as soon as one does."""
        if self.cancelled or self.dialog is not None:
            return
        self.cancelled = True
        self._background(self._send_cancel())

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _send_cancel(self) -> None:
        try:
            await asyncio.wait_for(self._provisional.wait(), self.endpoint.timers.timeout)
        except TimeoutError:
            return
        inv = self.request
        req = Request(
            "CANCEL",
            inv.uri,
            [
                ("Via", inv.get_header("Via") or ""),
                ("From", inv.get_header("From") or ""),
                ("To", inv.get_header("To") or ""),
                ("Call-ID", inv.call_id),
                ("CSeq", f"{inv.cseq.seq} CANCEL"),
            ],
        )
        try:
            await self.endpoint.request(req, self.peer, keep_via=True)
        except SipError as exc:
            log.info("invite.cancel_failed", call_id=inv.call_id, error=str(exc))

    async def bye(self, timeout: float | None = None) -> Response | None:
        """End the dialog this INVITE made; ``None`` when the BYE got no answer."""
        if self.dialog is None:
            return None
        return await send_bye(self.endpoint, self.dialog, timeout)


async def send_bye(
    endpoint: Endpoint, dialog: Dialog, timeout: float | None = None
) -> Response | None:
    try:
        return await endpoint.request(dialog.request("BYE"), dialog.peer, timeout=timeout)
    except SipError as exc:
        log.info("dialog.bye_failed", call_id=dialog.call_id, error=str(exc))
        return None
