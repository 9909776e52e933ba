"""The route table: one line per method and MANSCDP command, duplicates refused, dispatch."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.cli import main
from gateway.manscdp import CatalogQuery, Keepalive, encode
from gateway.metrics import Metrics
from gateway.routes import ANY, DuplicateRoute, MessageDispatcher, RouteTable, sniff_cmd_type
from gateway.settings import Config
from gateway.sip import Endpoint, Peer, Request, Response, ServerContext, make_response
from gateway.store import MemoryStore

GW = "34020000002000000001"
DEV = "34020000001320000001"
PEER = Peer("udp", "127.0.0.1", 5070)


def message(body: bytes) -> Request:
    return Request(
        "MESSAGE",
        f"sip:{GW}@3402000000",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"),
            ("From", f"<sip:{DEV}@3402000000>;tag=a"),
            ("To", f"<sip:{GW}@3402000000>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ],
        body,
    )


def ctx(req: Request) -> ServerContext:
    return ServerContext(None, PEER, None, req)  # type: ignore[arg-type]


def ok(req: Request, *_: object) -> Response:
    return make_response(req, 200)


def test_a_duplicate_route_is_refused_naming_both_handlers() -> None:
    t = RouteTable()
    t.sip("INVITE", ok)
    with pytest.raises(DuplicateRoute, match="INVITE is answered by both"):
        t.sip("invite", ok)
    t.message("Query", "Catalog", ok)
    with pytest.raises(DuplicateRoute, match=r"(?i)MESSAGE Query/Catalog is answered by both"):
        t.message("query", "CATALOG", ok)
    t.message("Query", ANY, ok)  # the rest of the root is another line
    with pytest.raises(ValueError, match="message"):
        t.sip("MESSAGE", ok)


def test_a_duplicate_endpoint_handler_is_refused() -> None:
    ep = Endpoint(metrics=Metrics())
    ep.route("INVITE", ok)
    with pytest.raises(ValueError, match="INVITE has a handler"):
        ep.route("INVITE", ok)


def test_the_gateway_table_answers_every_flow_once() -> None:
    gw = Gateway(Config(), store=MemoryStore())
    rows = gw.routes.describe()
    methods = {m for m, _, _ in rows}
    assert methods == {
        "REGISTER", "MESSAGE", "SUBSCRIBE", "NOTIFY", "INVITE", "ACK", "BYE", "CANCEL", "INFO",
        "OPTIONS",
    }  # fmt: skip
    owners = {(m, c): h for m, c, h in rows}
    assert owners[("REGISTER", "")].endswith("Registrar.on_register")
    assert owners[("MESSAGE", "Notify/Keepalive (before XML parse)")].endswith("on_keepalive")
    assert owners[("MESSAGE", "Query/*")].endswith("Uplink.on_query")
    assert owners[("INVITE", "")].endswith("Calls.on_invite")
    assert len(rows) == len(set(owners))


def test_dispatch_by_root_and_cmd_type() -> None:
    seen: list[str] = []
    t = RouteTable()
    t.raw_message("Notify", "Keepalive", lambda r, c, user: seen.append(f"raw {user}") or ok(r))
    t.message("Query", "Catalog", lambda d, r, c: seen.append(d.message.CMD) or ok(r))
    t.message("Query", ANY, lambda d, r, c: seen.append("any " + d.message.CMD) or ok(r))
    d = MessageDispatcher(t, metrics=Metrics(), tag=lambda: "t")
    keepalive = encode(Keepalive(sn=1, device_id=DEV, status="OK"))
    assert d.on_message(message(keepalive), ctx(message(keepalive))).status == 200
    catalog = encode(CatalogQuery(sn=2, device_id=DEV))
    assert d.on_message(message(catalog), ctx(message(catalog))).status == 200
    info = catalog.replace(b"Catalog", b"DeviceInfo")
    assert d.on_message(message(info), ctx(message(info))).status == 200
    assert seen == [f"raw {DEV}", "Catalog", "any DeviceInfo"]


def test_unrouted_and_broken_bodies_are_answered_and_counted() -> None:
    metrics = Metrics()
    d = MessageDispatcher(RouteTable(), metrics=metrics, tag=lambda: "t")
    body = encode(CatalogQuery(sn=2, device_id=DEV))
    resp = d.on_message(message(body), ctx(message(body)))
    assert (resp.status, resp.reason) == (501, "Not Implemented (Query Catalog)")
    broken = b"<?xml version='1.0'?><Query><CmdType>Catalog</CmdType><SN>1"
    resp = d.on_message(message(broken), ctx(message(broken)))
    assert resp.status == 400 and resp.reason.startswith("Bad Request (MANSCDP")
    assert metrics.get("message.unsupported") == 1 and metrics.get("message.bad_body") == 1


def test_sniff_cmd_type() -> None:
    assert sniff_cmd_type(b"<Notify><CmdType> Keepalive </CmdType>") == "Keepalive"
    assert sniff_cmd_type(b"<Notify><cmdtype>Keepalive</CMDTYPE>") == "Keepalive"
    assert sniff_cmd_type(b"<Notify><CmdType>\xb1\xa3</CmdType>") is None
    assert sniff_cmd_type(b"<Notify>") is None


def test_cli_prints_the_table_and_the_event_subscribers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    handlers = {(r["method"], r["command"]): r["handler"] for r in out["routes"]}
    assert handlers[("SUBSCRIBE", "")] == "gateway.uplink.service.Uplink.on_subscribe"
    events = [(e["event"], e["handler"].rsplit(".", 2)[-2]) for e in out["events"]]
    # The catalog sync hears a device come online before the uplink tells the uppers.
    assert events.index(("DeviceOnline", "CatalogSync")) < events.index(("DeviceOnline", "Uplink"))
    assert main(["routes"]) == 0
    assert "Query/*" in capsys.readouterr().out


async def test_options_is_answered_200_with_allow_and_accept(
    start_gateway: Any, raw_udp: Any
) -> None:
    # RFC 3261 §11.2: OPTIONS gets what an INVITE would, 200 here, with Allow and Accept; a
    # platform or a load balancer uses it to see that the node is up without registering.
    gw = await start_gateway()
    raw_udp.send(
        (
            f"OPTIONS sip:{gw.config.gateway.id}@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{raw_udp.port};branch=z9hG4bKopt1\r\n"
            "From: <sip:34020000002000000099@3402000000>;tag=o1\r\n"
            f"To: <sip:{gw.config.gateway.id}@3402000000>\r\n"
            "Call-ID: options-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode(),
        gw.port,
    )
    answer = (await raw_udp.recv()).decode()
    assert answer.startswith("SIP/2.0 200 OK\r\n"), answer
    headers = {
        line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip()
        for line in answer.split("\r\n")[1:]
        if ":" in line
    }
    allowed = {m.strip() for m in headers["allow"].split(",")}
    assert {"REGISTER", "MESSAGE", "INVITE", "BYE", "SUBSCRIBE", "OPTIONS"} <= allowed
    assert "application/sdp" in headers["accept"]
    assert "tag=" in headers["to"]
