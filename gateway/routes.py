"""The route table: who answers each SIP method and each MANSCDP (root, CmdType).

One table, built in one place (:func:`gateway.app.Gateway` calls :func:`build_routes`), reads
like the standard's table of contents: ``REGISTER`` → the registrar (GB/T 28181-2022 §9.1),
``MESSAGE Notify/Keepalive`` → the registrar's keepalive (§9.6), ``MESSAGE Query/*`` from an
upper → the uplink's answers (§9.5), and so on. A route given twice is a start-up error
(:class:`DuplicateRoute`), never a silent overwrite. ``gb28181-gateway routes`` prints the table.

A MESSAGE is dispatched here too (:class:`MessageDispatcher`): ``Notify/Keepalive`` is recognised
by a byte scan of the body, without an XML parse, since it is the hottest message a platform
receives; every other body is decoded once by the MANSCDP codec and dispatched on (root,
CmdType), falling back to a handler for the whole root. A body that cannot be decoded gets 400
with a short reason; a command nobody handles gets 501 naming it. Either way it is logged with
the peer and counted, and the loop goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.manscdp import Decoded, DecodeError, UnknownCommand, decode
from gateway.metrics import Metrics
from gateway.sip import Handler, Request, Response, ServerContext, make_response, warning_value

log = structlog.get_logger("gateway.routes")

RawMessageHandler = Callable[[Request, ServerContext, "str | None"], Response]
"""A MESSAGE handler that takes the raw request, before any XML parse (the keepalive); the third
argument is the sender's user part (its device ID)."""
MessageHandler = Callable[[Decoded, Request, ServerContext], Response]
"""A MESSAGE handler for a decoded MANSCDP body."""

ANY = "*"


class DuplicateRoute(Exception):
    """Two handlers were given for one route: the gateway refuses to start."""


@dataclass(frozen=True, slots=True)
class Route:
    """One line of the table. ``root``/``cmd_type`` are set for MESSAGE routes only; a
    ``cmd_type`` of ``*`` takes every command of its root that has no line of its own."""

    method: str
    root: str
    cmd_type: str
    handler: Callable[..., Any]
    raw: bool = False  # a MESSAGE route served before any XML parse

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.root.lower(), self.cmd_type.lower())

    @property
    def owner(self) -> str:
        """The handler's name as a reader looks for it: ``Registrar.on_register``."""
        return handler_name(self.handler)


def handler_name(handler: Callable[..., Any]) -> str:
    func = getattr(handler, "__func__", handler)
    name = getattr(func, "__qualname__", None) or repr(handler)
    module = getattr(func, "__module__", "") or ""
    return f"{module}.{name}" if module else name


class RouteTable:
    """The routes, in the order they were added. Build it, then hand it to the endpoint with
    :meth:`sip_handlers`; MESSAGE routes go to a :class:`MessageDispatcher`."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str, str], Route] = {}

    def _add(self, route: Route) -> None:
        old = self._routes.get(route.key)
        if old is not None:
            what = f"{route.method} {route.root}/{route.cmd_type}" if route.root else route.method
            raise DuplicateRoute(f"{what} is answered by both {old.owner} and {route.owner}")
        self._routes[route.key] = route

    def sip(self, method: str, handler: Handler) -> None:
        """``method`` (any but MESSAGE) is answered by ``handler``."""
        method = method.upper()
        if method == "MESSAGE":
            raise ValueError("MESSAGE is routed by MANSCDP root and CmdType: use message()")
        self._add(Route(method, "", "", handler))

    def message(self, root: str, cmd_type: str, handler: MessageHandler) -> None:
        """A decoded MANSCDP ``root``/``cmd_type`` (``*``: the rest of the root)."""
        self._add(Route("MESSAGE", root, cmd_type, handler))

    def raw_message(self, root: str, cmd_type: str, handler: RawMessageHandler) -> None:
        """``root``/``cmd_type`` answered from the raw request, before any XML parse."""
        if cmd_type == ANY:
            raise ValueError("a raw MESSAGE route names its CmdType")
        self._add(Route("MESSAGE", root, cmd_type, handler, raw=True))

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    def answer_options(self) -> Handler:
        """A handler for OPTIONS (RFC 3261 §11.2): 200 with what the gateway would accept, the
        methods of this table in ``Allow`` and the bodies it reads in ``Accept``. Platforms and
        load balancers use it to see that a node is up, without registering."""

        def on_options(req: Request, ctx: ServerContext) -> Response:
            methods = sorted({r.method for r in self} | {"OPTIONS"})
            headers = [
                ("Allow", ", ".join(methods)),
                ("Accept", "application/sdp, Application/MANSCDP+xml"),
                ("Accept-Language", "en, zh"),
            ]
            return ctx.endpoint.answer(req, 200, "OK", headers=headers)

        return on_options

    def sip_handlers(self, dispatcher: MessageDispatcher | None) -> dict[str, Handler]:
        """Method → handler for the endpoint; MESSAGE goes to ``dispatcher``."""
        out: dict[str, Handler] = {r.method: r.handler for r in self if r.method != "MESSAGE"}
        if dispatcher is not None:
            out["MESSAGE"] = dispatcher.on_message
        return out

    def describe(self) -> list[tuple[str, str, str]]:
        """(method, MANSCDP root/CmdType or empty, handler name) per route, sorted."""
        rows = []
        for r in self:
            what = f"{r.root}/{r.cmd_type}" if r.root else ""
            if r.raw:
                what += " (before XML parse)"
            rows.append((r.method, what, r.owner))
        return sorted(rows, key=lambda row: (row[0] != "MESSAGE", row[0], row[1].lower()))


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


class MessageDispatcher:
    """Serves MESSAGE from the table's MESSAGE routes (GB/T 28181-2022 §9: MANSCDP over SIP)."""

    def __init__(self, table: RouteTable, *, metrics: Metrics, tag: Callable[[], str]) -> None:
        self.metrics = metrics
        self._tag = tag
        self._raw: dict[str, RawMessageHandler] = {}
        self._typed: dict[tuple[str, str], MessageHandler] = {}
        self._by_root: dict[str, MessageHandler] = {}
        for r in table:
            if r.method != "MESSAGE":
                continue
            root, cmd = r.root.lower(), r.cmd_type.lower()
            if r.raw:
                # The byte scan finds the CmdType, not the root: one raw route per CmdType.
                if cmd in self._raw:
                    raise DuplicateRoute(f"two raw MESSAGE routes for CmdType {r.cmd_type}")
                self._raw[cmd] = r.handler
            elif cmd == ANY:
                self._by_root[root] = r.handler
            else:
                self._typed[(root, cmd)] = r.handler

    def _reply(self, req: Request, status: int, reason: str) -> Response:
        return make_response(req, status, _reason(reason), to_tag=self._tag())

    def on_message(self, req: Request, ctx: ServerContext) -> Response:
        if self._raw:
            cmd = sniff_cmd_type(req.body)
            if cmd is not None:
                raw = self._raw.get(cmd.lower())
                if raw is not None:
                    return raw(req, ctx, req.from_.uri.user)
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
            # A fixed phrase; the parser's words go to the log and a Warning (RFC 3261 §20.43).
            warning = ("Warning", warning_value("gateway", exc.reason))
            return make_response(
                req, 400, "Bad Request (MANSCDP body)", to_tag=self._tag(), headers=[warning]
            )
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
