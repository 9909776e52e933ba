"""INVITEs for devices another node holds: the media relay runs where the device is.

Any node serves any request (issue 18). An upper's INVITE reaches the node it is registered at
(X); when another node (Y) holds the device of the channel, X keeps the upper's dialog and asks
Y over the bus (``calls.invite``: the channel, the kind, the upper's SDP offer and address). Y
INVITEs the device (or joins the channel's running live leg, Annex L) and adds a relay output
towards the upper's media address from the offer, so RTP takes one hop: device → Y → upper. Y
answers with its output's address, SSRC and the device's answer; X writes the SDP answer from
them and sends the 200 (:meth:`Calls.answer_invite`). The ends cross back the same way:

* the upper's BYE at X: X answers 200 and tells Y (``calls.bye``), which ends the output (and
  the leg with its last output: BYE to the device);
* the session ending at Y (the device's BYE, RTP stopped, the device offline): Y tells X
  (``calls.ended``), which says BYE to the upper in its dialog;
* the upper going offline at X, or the INVITE cancelled or timed out while Y sets it up: X tells
  Y (``calls.bye``), so nothing is left streaming;
* a node lost (:meth:`RelayedCalls.node_lost`): X says BYE to the upper for the sessions Y
  carried; Y ends the outputs it carried for X.

In a relayed playback or download, the upper's MANSRTSP INFO at X goes to Y (``calls.info``),
which sends it to the device in the leg's dialog and returns the device's answer; the device's
end of file (``MediaStatus`` 121) at Y goes to X (``calls.media_status``), which sends it to the
upper in its dialog. What crosses the bus is signalling only (a few hundred bytes per call).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.cluster import Bus, ClusterError, ClusterTimeout, Replica
from gateway.manscdp import MediaStatus
from gateway.media import (
    DOWNLOAD,
    OPPOSITE,
    PLAY,
    PLAYBACK,
    Leg,
    MediaError,
    Output,
    Sdp,
    SdpError,
    SessionTable,
    parse_sdp,
)
from gateway.metrics import Metrics
from gateway.sip import (
    Dialog,
    Endpoint,
    Peer,
    Request,
    Response,
    ServerContext,
    SipError,
    send_bye,
)
from gateway.tasks import TaskSet
from gateway.uplink.calls import MANSCDP_TYPE, Calls
from gateway.uplink.session import UpperSession

log = structlog.get_logger("gateway.uplink.relayed")

MARGIN = 2.0
"""Seconds the bus request waits beyond the device INVITE's own timeout."""
CALLED_OFF_KEPT = 1024
"""Calls ended before they were set up, remembered (the newest)."""


@dataclass(slots=True)
class _Upstream:
    """At the upper's node: a session whose relay runs on ``node``."""

    call_id: str
    node: str
    upper_id: str
    dialog: Dialog
    target: str  # the channel as the upper knows it


class RelayedCalls:
    """Both ends of relayed INVITEs; implements :class:`gateway.uplink.calls.Relayed`."""

    def __init__(
        self,
        *,
        bus: Bus,
        replica: Replica,
        calls: Calls,
        endpoint: Endpoint,
        media: SessionTable[Dialog],
        metrics: Metrics,
    ) -> None:
        self.bus = bus
        self.replica = replica
        self.calls = calls
        self.endpoint = endpoint
        self.media = media
        self.metrics = metrics
        self.upstream: dict[str, _Upstream] = {}  # at X, by Call-ID
        # At Y: the outputs carried for other nodes, by output ID and by (node, Call-ID).
        self.served: dict[str, tuple[str, str]] = {}
        self._by_call: dict[tuple[str, str], Output[Dialog]] = {}
        # Calls ended by their node while still being set up here (a CANCEL, a timeout).
        self._called_off: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks = TaskSet(log, "relayed.task_failed")
        bus.handle("calls.invite", self._serve_invite)
        bus.handle("calls.bye", self._serve_bye)
        bus.handle("calls.ended", self._serve_ended)
        bus.handle("calls.info", self._serve_info)
        bus.handle("calls.media_status", self._serve_media_status)
        media.local_ended.append(self._local_ended)

    def holder(self, device_id: str) -> str | None:
        return self.replica.holder(device_id)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self.upstream

    # -- at the upper's node --------------------------------------------------------------
    async def invite(
        self,
        s: UpperSession,
        req: Request,
        ctx: ServerContext,
        node: str,
        channel: str,
        kind: str,
        offer: Sdp,
        upper_channel: str,
    ) -> Response:
        call_id = req.call_id
        body = {
            "origin": self.bus.node_id,
            "call_id": call_id,
            "channel": channel,
            "target": upper_channel,
            "offer": req.body.decode("utf-8", "replace"),
            "upper_host": ctx.peer.host,
            "upper_port": ctx.peer.port,
        }
        wait = max(self.bus.request_timeout, self.calls.cfg.invite_timeout + MARGIN)
        try:
            reply = await self.bus.request(node, "calls.invite", body, wait)
        except asyncio.CancelledError:
            self._tell_bye(node, call_id, "INVITE cancelled")
            raise
        except ClusterError as exc:
            if isinstance(exc, ClusterTimeout):
                self._tell_bye(node, call_id, "INVITE timed out")
            status, reason = _status(exc)
            return self.calls._fail(req, status, reason, channel=channel, node=node)
        try:
            port, ssrc = int(reply["port"]), str(reply["ssrc"])
            host = str(reply["host"])
            raw = str(reply.get("answer") or "")
            device_answer = parse_sdp(raw.encode()) if raw else Sdp()
        except (KeyError, TypeError, ValueError, SdpError):
            self._tell_bye(node, call_id, "unreadable answer")
            return self.calls._fail(req, 502, "Bad Gateway (unreadable answer from node)")
        local_tag = self.endpoint.tag()
        dialog = Dialog.as_uas(req, local_tag, ctx.peer)
        self.upstream[call_id] = _Upstream(call_id, node, s.upper.id, dialog, upper_channel)
        self.metrics.inc(f"media.invite.relayed.{kind}")
        log.info(
            "invite.relayed",
            upper=s.upper.id,
            channel=channel,
            node=node,
            call_id=call_id,
            ssrc=ssrc,
            media=f"{host}:{port}",
        )
        return self.calls.answer_invite(
            s,
            req,
            ctx,
            offer,
            local_tag,
            host=host,
            port=port,
            ssrc=ssrc,
            device_answer=device_answer,
            below=str(reply.get("below") or channel),
        )

    def on_bye(self, req: Request, ctx: ServerContext) -> Response | None:
        up = self.upstream.get(req.call_id)
        if up is None or not self.calls._in_dialog(up.dialog, up.upper_id, req, ctx.peer):
            return None
        del self.upstream[req.call_id]
        self._tell_bye(up.node, up.call_id, "BYE from the receiver")
        self.metrics.inc("media.relayed.bye")
        return self.endpoint.answer(req, 200, "OK")

    def on_info(self, req: Request, ctx: ServerContext) -> Response | Awaitable[Response] | None:
        """MANSRTSP in a relayed session's dialog: to the device's node (None: not relayed)."""
        up = self.upstream.get(req.call_id)
        if up is None or not self.calls._in_dialog(up.dialog, up.upper_id, req, ctx.peer):
            return None
        if not up.dialog.accepts(req):
            return self.endpoint.answer(req, 500, "Server Internal Error (out-of-order CSeq)")
        if "mansrtsp" not in (req.content_type or "").lower():
            return self.endpoint.answer(
                req, 415, "Unsupported Media Type (expected Application/MANSRTSP)"
            )
        return self._info(up, req)

    async def _info(self, up: _Upstream, req: Request) -> Response:
        body = {
            "origin": self.bus.node_id,
            "call_id": up.call_id,
            "body": req.body.decode("latin-1"),
            "content_type": req.content_type or "",
        }
        try:
            reply = await self.bus.request(up.node, "calls.info", body)
            status, reason = int(reply["status"]), str(reply["reason"])
            answer = str(reply.get("body", "")).encode("latin-1")
            ctype = str(reply.get("content_type", ""))
        except (ClusterError, KeyError, TypeError, ValueError, UnicodeError):
            self.metrics.inc("media.info.timeout")
            return self.endpoint.answer(
                req, 408, "Request Timeout (the device's node did not answer the INFO)"
            )
        self.metrics.inc("media.info.relayed")
        headers = [("Content-Type", ctype)] if answer and ctype else []
        return self.endpoint.answer(req, status, reason, headers=headers, body=answer)

    def media_status(self, leg: Leg[Dialog], notify_type: int | None) -> None:
        """A device's MediaStatus in a leg carried for other nodes: to each such node."""
        for out in list(leg.outputs.values()):
            found = self.served.get(out.output_id)
            if found is not None:
                origin, call_id = found
                body = {"call_id": call_id, "notify_type": notify_type}
                self._tasks.spawn(self._quietly(origin, "calls.media_status", body))

    def end_upper(self, upper_id: str, reason: str) -> None:
        for up in [u for u in self.upstream.values() if u.upper_id == upper_id]:
            del self.upstream[up.call_id]
            self._tell_bye(up.node, up.call_id, reason)

    def node_lost(self, node: str) -> None:
        """``node`` is gone: the sessions it carried for our uppers end (BYE to each upper);
        those we carried for its uppers end too (nobody holds their dialogs any more)."""
        for up in [u for u in self.upstream.values() if u.node == node]:
            del self.upstream[up.call_id]
            self._hang_up(up, f"node {node} lost")
        for (origin, _), out in list(self._by_call.items()):
            if origin == node:
                self.media.end_output(out, f"node {node} lost", bye=False)

    async def close(self) -> None:
        """Stopping: each relayed session ends on both sides (BYE up, ``calls.bye`` across)."""
        ends: list[asyncio.Task[Any]] = []
        for up in list(self.upstream.values()):
            ends.append(self._tell_bye(up.node, up.call_id, "stopping"))
            ends.append(self._hang_up(up, "stopping"))
        self.upstream.clear()
        if ends:
            await asyncio.wait(ends, timeout=2.0)
        self._tasks.cancel_all()
        if self._local_ended in self.media.local_ended:
            self.media.local_ended.remove(self._local_ended)

    def _tell_bye(self, node: str, call_id: str, reason: str) -> asyncio.Task[Any]:
        body = {"origin": self.bus.node_id, "call_id": call_id, "reason": reason}
        return self._tasks.spawn(self._quietly(node, "calls.bye", body))

    def _hang_up(self, up: _Upstream, reason: str) -> asyncio.Task[Any]:
        log.info("media.relayed_ended", call_id=up.call_id, node=up.node, reason=reason)
        self.metrics.inc("media.relayed.ended")
        return self._tasks.spawn(
            send_bye(self.endpoint, up.dialog, timeout=self.endpoint.timers.timeout)
        )

    async def _quietly(self, node: str, kind: str, body: dict[str, Any]) -> None:
        try:
            await self.bus.request(node, kind, body)
        except ClusterError as exc:
            log.info("media.relayed_tell_failed", node=node, kind=kind, error=str(exc))

    async def _serve_ended(self, body: dict[str, Any]) -> dict[str, Any]:
        up = self.upstream.pop(str(body.get("call_id", "")), None)
        if up is not None:
            self._hang_up(up, str(body.get("reason", "ended")))
        return {}

    async def _serve_media_status(self, body: dict[str, Any]) -> dict[str, Any]:
        up = self.upstream.get(str(body.get("call_id", "")))
        notify_type = body.get("notify_type")
        if up is None:
            return {}
        s = self.calls.uplink.sessions.get(up.upper_id)
        if s is None:
            return {}
        msg = MediaStatus(
            sn=self.calls.uplink.next_sn(),
            device_id=up.target,
            notify_type=notify_type if isinstance(notify_type, int) else None,
        )
        req = up.dialog.request(
            "MESSAGE", body=self.calls.uplink.encode_for(s, msg), content_type=MANSCDP_TYPE
        )
        try:
            await self.endpoint.request(req, up.dialog.peer)
            self.metrics.inc("media.media_status.forwarded")
        except SipError as exc:
            log.info("media.media_status_failed", upper=up.upper_id, error=str(exc))
        return {}

    # -- at the device's node -------------------------------------------------------------
    async def _serve_invite(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            origin, call_id = str(body["origin"]), str(body["call_id"])
            channel, target = str(body["channel"]), str(body["target"])
            offer = parse_sdp(str(body["offer"]).encode())
            upper = Peer("udp", str(body["upper_host"]), int(body["upper_port"]))
        except (KeyError, TypeError, ValueError):
            raise ClusterError("400 Bad Request (incomplete relayed INVITE)", "media:400") from None
        except SdpError as exc:
            raise ClusterError(f"488 Not Acceptable Here ({exc.reason})", "media:488") from None
        if (origin, call_id) in self._by_call:
            raise ClusterError("400 Bad Request (Call-ID already in use)", "media:400")
        calls = self.calls
        dev = calls.downlink.device(channel)
        if dev is None or not dev.online or self.replica.holder(dev.device_id) is not None:
            raise ClusterError("480 Temporarily Unavailable (device offline)", "media:480")
        kind = offer.session.strip().lower()
        try:
            out = await calls._attach(
                channel,
                dev,
                {"play": PLAY, "playback": PLAYBACK, "download": DOWNLOAD}.get(kind, PLAY),
                offer,
                OPPOSITE[offer.transport],
                (offer.host, offer.port),
                offer.ssrc,
            )
        except MediaError as exc:
            raise ClusterError(f"{exc.status} {exc.reason}", f"media:{exc.status}") from None
        if self._called_off.pop((origin, call_id), "no") is None:
            self.media.end_output(out, "called off while being set up", bye=False)
            raise ClusterError("487 Request Terminated", "media:487")
        out.target_id = target
        self.media.local[out.output_id] = out  # its end, whoever ends it, is heard
        self.served[out.output_id] = (origin, call_id)
        self._by_call[(origin, call_id)] = out
        leg = out.leg
        self.metrics.inc("media.relayed.served")
        log.info(
            "invite.served_for_node",
            node=origin,
            call_id=call_id,
            channel=channel,
            output=out.output_id,
        )
        answer = leg.answer or Sdp()
        return {
            "host": calls.media_host(upper),
            "port": out.port,
            "ssrc": out.ssrc,
            "answer": answer.to_bytes().decode("utf-8", "replace") if leg.answer else "",
            "below": leg.answer_headers.get("x-routepath") or leg.device_id or channel,
        }

    async def _serve_bye(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (str(body.get("origin", "")), str(body.get("call_id", "")))
        out = self._by_call.pop(key, None)
        if out is not None:
            self.served.pop(out.output_id, None)
            reason = str(body.get("reason", "BYE"))[:80]
            self.media.end_output(out, f"{reason} (at node {key[0]})", bye=False)
        else:
            # Still being set up (its INVITE cancelled at the upper's node): ended once ready.
            self._called_off[key] = None
            while len(self._called_off) > CALLED_OFF_KEPT:
                self._called_off.popitem(last=False)
        return {}

    async def _serve_info(self, body: dict[str, Any]) -> dict[str, Any]:
        key = (str(body.get("origin", "")), str(body.get("call_id", "")))
        out = self._by_call.get(key)
        if out is None:
            return {"status": 481, "reason": "Call/Transaction Does Not Exist"}
        leg = out.leg
        if leg.kind not in (PLAYBACK, DOWNLOAD):
            return {
                "status": 488,
                "reason": "Not Acceptable Here (MANSRTSP controls playback only)",
            }
        dialog = leg.dialog
        if dialog is None:
            return {"status": 491, "reason": "Request Pending (the device has not answered yet)"}
        fwd = dialog.request(
            "INFO",
            body=str(body.get("body", "")).encode("latin-1"),
            content_type=str(body.get("content_type", "")),
        )
        try:
            resp = await self.endpoint.request(fwd, dialog.peer)
        except SipError:
            return {"status": 408, "reason": "Request Timeout (the device did not answer the INFO)"}
        if resp.status == 481:
            self.media.end_leg(leg, "the device lost the dialog (481 to INFO)", bye=False)
        return {
            "status": resp.status,
            "reason": resp.reason,
            "body": resp.body.decode("latin-1"),
            "content_type": resp.content_type or "",
        }

    def _local_ended(self, output_id: str, reason: str) -> None:
        found = self.served.pop(output_id, None)
        if found is None:
            return
        origin, call_id = found
        self._by_call.pop(found, None)
        body = {"call_id": call_id, "reason": reason[:80]}
        self._tasks.spawn(self._quietly(origin, "calls.ended", body))


def _status(exc: ClusterError) -> tuple[int, str]:
    """The SIP status for the upper from the holding node's refusal."""
    if exc.code.startswith("media:"):
        text = str(exc).split(": ", 1)[-1]  # after "calls.invite at node Y: "
        try:
            return int(exc.code[6:]), text.partition(" ")[2] or text
        except ValueError:
            pass
    if isinstance(exc, ClusterTimeout):
        return 504, "Server Time-out (the device's node did not answer)"
    return 502, "Bad Gateway (the device's node failed)"
