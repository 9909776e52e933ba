"""MESSAGE from devices: one table from MANSCDP CmdType to handler (GB/T 28181-2022 §9.3–9.6).

For now only ``Notify/Keepalive`` is handled, recognised by a byte scan of the body without an
XML parse (the keepalive is the hottest message a platform receives). The full MANSCDP codec and
the other CmdTypes arrive with the downlink issue; until then any other CmdType gets an honest
501 with the CmdType in the reason phrase.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.message import Request, Response, make_response

log = structlog.get_logger("gateway.downlink.messages")

CmdHandler = Callable[[Request, ServerContext, str | None], Response]


def sniff_cmd_type(body: bytes) -> str | None:
    """The text of the first ``<CmdType>`` element, matched case-insensitively, or ``None``.

    Works on GB2312/GBK/UTF-8 bodies alike: the tag and the CmdType values are ASCII.
    """
    head = body[:512]
    low = head.lower()
    start = low.find(b"<cmdtype>")
    if start < 0:
        return None
    start += 9
    end = low.find(b"</cmdtype>", start)
    if end < 0 or end - start > 64:
        return None
    try:
        return head[start:end].decode("ascii").strip() or None
    except UnicodeDecodeError:
        return None


class MessageRouter:
    def __init__(self, *, endpoint: Endpoint, metrics: Metrics) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self._table: dict[str, CmdHandler] = {}

    def install(self) -> None:
        self.endpoint.route("MESSAGE", self.on_message)

    def handle(self, cmd_type: str, handler: CmdHandler) -> None:
        self._table[cmd_type.lower()] = handler

    def on_message(self, req: Request, ctx: ServerContext) -> Response:
        cmd = sniff_cmd_type(req.body)
        if cmd is None:
            self.metrics.inc("message.bad_body")
            log.warning("message.bad_body", peer=str(ctx.peer), size=len(req.body))
            return make_response(
                req, 400, "Bad Request (no MANSCDP CmdType)", to_tag=self.endpoint.tag()
            )
        handler = self._table.get(cmd.lower())
        if handler is None:
            self.metrics.inc("message.unsupported")
            log.info("message.unsupported", peer=str(ctx.peer), cmd_type=cmd)
            return make_response(
                req, 501, f"Not Implemented (CmdType {cmd[:32]})", to_tag=self.endpoint.tag()
            )
        return handler(req, ctx, req.from_.uri.user)
