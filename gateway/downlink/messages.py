"""MESSAGE from devices: one table from MANSCDP (root, CmdType) to handler (GB/T 28181-2022 §9).

``Notify/Keepalive`` is recognised by a byte scan of the body, without an XML parse: it is the
hottest message a platform receives. Every other body is decoded once by the MANSCDP codec and
dispatched on (root, CmdType), falling back to a handler for the whole root (every ``Response``
goes to the query collector). A body that cannot be decoded gets 400 with the reason in the
reason phrase; a command nobody handles gets 501 naming it. Either way it is logged with the
peer and counted, and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from gateway.manscdp.errors import DecodeError
from gateway.manscdp.messages import Decoded, UnknownCommand, decode
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint, ServerContext
from gateway.sip.message import Request, Response, make_response

log = structlog.get_logger("gateway.downlink.messages")

CmdHandler = Callable[[Request, ServerContext, str | None], Response]
TypedHandler = Callable[[Decoded, Request, ServerContext], Response]


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


def _reason(text: str) -> str:
    """A reason phrase must be one line of printable text."""
    return "".join(c if c.isprintable() else "?" for c in text)[:100]


class MessageRouter:
    def __init__(self, *, endpoint: Endpoint, metrics: Metrics) -> None:
        self.endpoint = endpoint
        self.metrics = metrics
        self._fast: dict[str, CmdHandler] = {}
        self._typed: dict[tuple[str, str], TypedHandler] = {}
        self._by_root: dict[str, TypedHandler] = {}

    def install(self) -> None:
        self.endpoint.route("MESSAGE", self.on_message)

    def handle(self, cmd_type: str, handler: CmdHandler) -> None:
        """A handler that gets the raw request, before any XML parse (the keepalive)."""
        self._fast[cmd_type.lower()] = handler

    def handle_typed(self, root: str, cmd_type: str | None, handler: TypedHandler) -> None:
        """A handler for decoded messages: one (root, CmdType), or a whole root when
        ``cmd_type`` is ``None``."""
        if cmd_type is None:
            self._by_root[root.lower()] = handler
        else:
            self._typed[(root.lower(), cmd_type.lower())] = handler

    def _reply(self, req: Request, status: int, reason: str) -> Response:
        return make_response(req, status, _reason(reason), to_tag=self.endpoint.tag())

    def on_message(self, req: Request, ctx: ServerContext) -> Response:
        cmd = sniff_cmd_type(req.body)
        if cmd is not None:
            fast = self._fast.get(cmd.lower())
            if fast is not None:
                return fast(req, ctx, req.from_.uri.user)
        try:
            decoded = decode(req.body)
        except UnknownCommand as exc:
            self.metrics.inc("message.unsupported")
            log.info("message.unsupported", peer=str(ctx.peer), command=exc.reason)
            return self._reply(req, 501, f"Not Implemented ({exc.root} {exc.cmd_type})")
        except DecodeError as exc:
            self.metrics.inc("message.bad_body")
            log.warning(
                "message.bad_body", peer=str(ctx.peer), size=len(req.body), reason=exc.reason
            )
            return self._reply(req, 400, f"Bad Request (MANSCDP: {exc.reason})")
        if decoded.repairs:
            self.metrics.inc("message.repaired")
            log.info(
                "message.repaired",
                peer=str(ctx.peer),
                cmd_type=decoded.message.CMD,
                repairs=list(decoded.repairs),
            )
        msg = decoded.message
        root = msg.ROOT.lower()
        handler = self._typed.get((root, msg.CMD.lower())) or self._by_root.get(root)
        if handler is None:
            self.metrics.inc("message.unsupported")
            log.info("message.unsupported", peer=str(ctx.peer), command=f"{msg.ROOT}/{msg.CMD}")
            return self._reply(req, 501, f"Not Implemented ({msg.ROOT} {msg.CMD})")
        return handler(decoded, req, ctx)
