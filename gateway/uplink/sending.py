"""Requests to an upper platform: MESSAGEs, their size and transport, multi-part answers.

RFC 3261 §18.1.1 and GB/T 28181-2022 Annex M. To an upper reached over UDP, any MESSAGE or
NOTIFY larger than ``catalog_batch_udp_bytes`` goes over TCP to the same host and port (above
1300 bytes when the path MTU is unknown, a congestion-controlled transport). Nothing is ever
cut to fit: when TCP fails (refused, reset, or no final response within
``TCP_ANSWER_TIMEOUT``), the request goes over UDP whole (counted as ``uplink.udp_oversize``),
and TCP is not tried again for ``TCP_RETRY_AFTER`` seconds. Multi-part answers go out
serially, each after the previous one's 200, in the batches :mod:`gateway.uplink.batching`
decides. The choice of route is :func:`route`, pure; :class:`Sender` does the sending.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.manscdp import Message, encode
from gateway.metrics import Metrics
from gateway.settings import GatewaySection
from gateway.sip import (
    Endpoint,
    Peer,
    Request,
    Response,
    SipError,
    TransactionTimeout,
    TransportError,
    build_request,
)
from gateway.uplink.batching import BatchLimits, batches, item_size, udp_batches, udp_budget
from gateway.uplink.session import UpperSession

# After TCP to an upper reached over UDP failed, large requests go over UDP (whole) for this
# long before TCP is tried again: a firewall that drops SYNs must not cost each one a timeout.
TCP_RETRY_AFTER = 60.0
# How long a request sent over TCP to an upper reached over UDP waits for its final response
# before it goes over UDP instead. Without it the TCP attempt would wait for Timer F (64·T1,
# 32 s): an upper that accepts the connection but never reads it would hold every oversize
# MESSAGE and NOTIFY that long, after the query it answers has timed out upstairs. An upper
# answers a MESSAGE or NOTIFY 200 at once (Annex M); a few seconds leave room for a slow one.
#
# The fallback may duplicate: an upper that processed the TCP request but answered too late
# (or not at all) gets it again over UDP, as a new transaction it cannot match to the first
# (fresh Call-ID, or the dialog's next CSeq). That is the lesser harm, and the one chosen: what
# is too large for a datagram is a list (a part of a catalog or record answer, a catalog
# NOTIFY) whose items are named (DeviceID, a record's times), so a repeat states the same
# thing twice under the same SN, while giving up would lose the items for good (the upper
# learns of them only at its next full query). Reusing the Call-ID and CSeq would not let the
# upper drop the repeat either (RFC 3261 §8.2.2.2 merges requests only while the first
# transaction is pending, answering 482), and a NOTIFY's CSeq must grow in its dialog.
TCP_ANSWER_TIMEOUT = 4.0


class TcpFailed(Exception):
    """TCP to an upper reached over UDP failed for a request whose content the caller can send
    in smaller requests (raised instead of sending it whole over UDP)."""


class Route(enum.Enum):
    """How one request goes to an upper."""

    LINK = "link"  # over the link's own transport: TCP, or small enough for a datagram
    TCP = "tcp"  # too large for a datagram: over TCP to the upper's host and port
    UDP_OVERSIZE = "udp_oversize"  # too large, TCP failed lately: whole over UDP
    SPLIT = "split"  # too large, TCP failed lately: the caller sends it in smaller parts


def route(*, reliable: bool, size: int, limit: int, tcp_usable: bool, split: bool) -> Route:
    """The route of a request of ``size`` bytes to an upper whose link is ``reliable`` (TCP)
    or not, ``limit`` being ``catalog_batch_udp_bytes`` (RFC 3261 §18.1.1). ``split``: the
    caller can send the content in smaller requests."""
    if reliable or size <= limit:
        return Route.LINK
    if tcp_usable:
        return Route.TCP
    return Route.SPLIT if split else Route.UDP_OVERSIZE


def tcp_usable(s: UpperSession, now: float) -> bool:
    """May a large request to ``s`` try TCP at ``now`` (no failure in ``TCP_RETRY_AFTER``)?"""
    return now >= s.tcp_retry_at


class Sender:
    """Sends MESSAGEs and other requests to the uppers, with the fallback above."""

    def __init__(
        self,
        *,
        gateway: GatewaySection,
        endpoint: Endpoint,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.gw = gateway
        self.endpoint = endpoint
        self.metrics = metrics
        self.clock = clock

    def encode(self, s: UpperSession, msg: Message) -> bytes:
        return encode(msg, s.upper.charset, gb2022=s.upper.gb_version == "2022")

    def message(self, s: UpperSession, body: bytes) -> Request:
        """A MESSAGE with ``body`` to the upper (out of dialog, RFC 3261 §8.1.1; GB/T
        28181-2022 §9.3–§9.5): a fresh Call-ID and From tag each time, CSeq 1."""
        gw, up, peer = self.gw, s.upper, s.link.peer
        return build_request(
            "MESSAGE",
            f"sip:{up.id}@{peer.host}:{peer.port}",
            from_uri=f"sip:{gw.id}@{gw.domain}",
            to_uri=f"sip:{up.id}@{up.domain}",
            body=body,
            content_type="Application/MANSCDP+xml",
        )

    async def send(self, s: UpperSession, msg: Message, *, split: bool = False) -> bool:
        """One MESSAGE to the upper; True when it answered 2xx. ``split``: see
        :meth:`request`."""
        body = self.encode(s, msg)
        try:
            resp = await self.request(s, lambda: self.message(s, body), split=split)
        except (SipError, OSError) as exc:
            s.log.info("uplink.send_failed", cmd_type=msg.CMD, error=str(exc))
            self.metrics.inc("uplink.send_failed")
            return False
        if resp.status >= 300:
            s.log.info("uplink.send_refused", cmd_type=msg.CMD, status=resp.status)
            self.metrics.inc("uplink.send_refused")
            return False
        return True

    async def request(
        self, s: UpperSession, build: Callable[[], Request], *, split: bool = False
    ) -> Response:
        """Send ``build()`` to the upper; its final response. A request too large for the UDP
        link goes over TCP (:func:`route`); when TCP fails the request goes over UDP whole,
        logged and counted as ``uplink.udp_oversize``, and TCP is left alone for
        ``TCP_RETRY_AFTER`` seconds. With ``split`` the caller can send the content in smaller
        requests instead: :class:`TcpFailed` says so. ``build`` makes the request afresh for
        each attempt (fresh Call-ID, or the next CSeq). Nothing goes to an upper whose lease
        this node of a cluster does not hold (``s.fenced``): :class:`TransportError`."""
        if s.fenced:
            raise TransportError("not sent: another node of the cluster serves this upper")
        peer = s.link.peer
        req = build()
        size = self.wire_size(s, req)
        limit = s.upper.catalog_batch_udp_bytes
        how = route(
            reliable=peer.reliable,
            size=size,
            limit=limit,
            tcp_usable=tcp_usable(s, self.clock()),
            split=split,
        )
        if how is Route.LINK:
            return await self.endpoint.request(req, peer)
        if how is Route.TCP:
            tcp = Peer("tcp", peer.host, peer.port)
            try:
                resp = await self.endpoint.request(req, tcp, timeout=TCP_ANSWER_TIMEOUT)
            except (TransportError, TransactionTimeout, OSError) as exc:
                s.tcp_retry_at = self.clock() + TCP_RETRY_AFTER
                self.metrics.inc("uplink.tcp_failed")
                s.log.warning(
                    "uplink.tcp_failed",
                    peer=str(tcp),
                    method=req.method,
                    size=size,
                    error=str(exc),
                    retry_after=TCP_RETRY_AFTER,
                )
            else:
                self.metrics.inc("uplink.sent_over_tcp")
                return resp
            if split:
                raise TcpFailed
            req = build()
        elif how is Route.SPLIT:
            raise TcpFailed
        self.metrics.inc("uplink.udp_oversize")
        s.log.warning("uplink.udp_oversize", method=req.method, size=size, limit=limit)
        return await self.endpoint.request(req, peer)

    # -- sizes ------------------------------------------------------------------------------
    def added(self, s: UpperSession) -> int:
        """Bytes of the headers the endpoint adds to a request when sending it (Via with our
        address and branch, Max-Forwards, User-Agent); a TCP Via is as long as a UDP one."""
        return (
            len(f"Via: {self.endpoint.via(s.link.peer)}\r\n")
            + len("Max-Forwards: 70\r\n")
            + len(f"User-Agent: {self.endpoint.user_agent}\r\n")
        )

    def wire_size(self, s: UpperSession, req: Request) -> int:
        return len(req.to_bytes()) + self.added(s)

    def overhead(self, s: UpperSession) -> int:
        """Bytes of a MESSAGE to this upper without its body, as sent (with room for a long
        Content-Length)."""
        room = len("Content-Length: 100000\r\n") + 16
        return len(self.message(s, b"").to_bytes()) + self.added(s) + room

    # -- multi-part -------------------------------------------------------------------------
    async def send_batches(
        self,
        s: UpperSession,
        items: Sequence[Any],
        empty: Message,
        overhead: int,
        send: Callable[[Sequence[Any], bool], Awaitable[bool]],
    ) -> tuple[int, bool]:
        """Send ``items`` serially, batch by batch (:func:`~gateway.uplink.batching.batches`
        for messages whose envelope is ``empty`` and whose headers take ``overhead`` bytes),
        each with ``send(batch, split)``; a batch of several items whose TCP attempt failed
        goes again in messages for UDP. Stops at the first message not accepted. Returns how
        many messages went out and whether all did."""
        up = s.upper
        catalog = empty.CMD == "Catalog"  # answer parts and NOTIFYs alike
        limits = BatchLimits(
            reliable=s.reliable,
            tcp_items=up.catalog_batch_tcp_items,
            udp_budget=udp_budget(up.catalog_batch_udp_bytes, overhead, len(self.encode(s, empty))),
            min_items=up.catalog_min_items if catalog else 1,
            max_items=up.catalog_max_items if catalog else 0,
        )
        # With a minimum, a batch goes whole (over UDP if TCP fails), never re-split below it.
        splittable = 1 if limits.min_items <= 1 else 10**9
        gb2022 = up.gb_version == "2022"

        def size_of(item: Any) -> int:
            return item_size(item, charset=up.charset, gb2022=gb2022)

        def usable() -> bool:
            return tcp_usable(s, self.clock())

        sent = 0
        for batch in batches(items, limits, size_of, usable):
            try:
                if not await send(batch, len(batch) > splittable):
                    return sent, False
                sent += 1
            except TcpFailed:
                for part in udp_batches(
                    batch, limits.udp_budget, limits.tcp_items, size_of, usable
                ):
                    if not await send(part, False):
                        return sent, False
                    sent += 1
        return sent, True

    async def send_parts(
        self,
        s: UpperSession,
        make: Callable[[Sequence[Any], int], Message],
        items: Sequence[Any],
    ) -> int:
        """A multi-part answer: ``make(batch, total)`` builds each message; sent serially, each
        after the previous one's 200 (Annex M). Returns how many messages went out."""
        empty = make((), len(items))

        async def send(batch: Sequence[Any], split: bool) -> bool:
            return await self.send(s, make(batch, len(items)), split=split)

        sent, complete = await self.send_batches(s, items, empty, self.overhead(s), send)
        if not complete:
            s.log.warning("uplink.parts_abandoned", cmd_type=empty.CMD, sent=sent)
        return sent
