"""The simulated device, driven by a bare platform written here (a second plain Endpoint).

The platform is a registrar stub (200, optionally after a digest challenge), collects every
MESSAGE and NOTIFY, answers alarms with Response/Alarm, and sends queries, controls and
SUBSCRIBEs. Nothing here uses the gateway's downlink.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest

from conformance.cli import device_ids, main
from conformance.peers.device import NOT_XML, DeviceHub, SimDevice
from gateway.manscdp import (
    AlarmNotify,
    AlarmQuery,
    AlarmResponse,
    BasicParam,
    CatalogItem,
    CatalogNotify,
    CatalogQuery,
    CatalogResponse,
    ConfigDownloadQuery,
    ConfigDownloadResponse,
    CruiseTrackListQuery,
    CruiseTrackQuery,
    Decoded,
    DecodeError,
    DeviceConfig,
    DeviceControl,
    DeviceInfoQuery,
    DeviceStatusQuery,
    HomePositionQuery,
    Message,
    MobilePositionNotify,
    MobilePositionQuery,
    PresetQuery,
    PtzPositionQuery,
    RecordInfoQuery,
    RecordItem,
    SDCardStatusQuery,
    decode,
    encode,
    ptz,
)
from gateway.metrics import Metrics
from gateway.sip import (
    Endpoint,
    Peer,
    Request,
    Response,
    ServerContext,
    TimerConfig,
    TransactionTimeout,
    make_response,
)
from gateway.sip.digest import compute_response
from tests.conftest import wait_for

SERVER_ID = "34020000002000000001"
DOMAIN = "3402000000"
NVR = "34020000001180000001"


class Platform:
    """A platform stub: registrar, MESSAGE/NOTIFY collector, query sender."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.challenge: str | None = None  # None: no digest; "": without qop; "auth": with qop
        self.answer_delay = 0.0  # before each 200 to a MESSAGE
        self.peers: dict[str, Peer] = {}  # device ID -> REGISTER source
        self.known: set[str] = set()
        self.registers: list[Request] = []
        self.authorized: list[str] = []
        self.messages: list[tuple[Request, Decoded | None]] = []
        self.notifies: list[tuple[Request, Decoded | None]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._sn = itertools.count(100)
        self._tasks: set[asyncio.Task[Any]] = set()
        ep.route("REGISTER", self.on_register)
        ep.route("MESSAGE", self.on_message)
        ep.route("NOTIFY", self.on_notify)

    # -- what the platform answers ----------------------------------------------------------
    def on_register(self, req: Request, ctx: ServerContext) -> Response:
        self.registers.append(req)
        device_id = req.from_.uri.user or ""
        if self.challenge is not None:
            auth = req.auth_params("Authorization")
            if auth is None:
                qop = ',qop="auth"' if self.challenge else ""
                challenge = f'Digest realm="{DOMAIN}",nonce="n0nce{len(self.registers)}"{qop}'
                return make_response(
                    req, 401, to_tag=self.ep.tag(), headers=[("WWW-Authenticate", challenge)]
                )
            p = auth[1]
            expected = compute_response(
                username=p["username"], realm=p["realm"], password="12345678",
                method="REGISTER", uri=p["uri"], nonce=p["nonce"],
                qop=p.get("qop"), nc=p.get("nc"), cnonce=p.get("cnonce"),
            )  # fmt: skip
            if p["response"] != expected or bool(p.get("qop")) != bool(self.challenge):
                return make_response(req, 403, to_tag=self.ep.tag())
            self.authorized.append(device_id)
        expires = req.expires if req.expires is not None else 3600
        if expires:
            self.known.add(device_id)
            self.peers[device_id] = ctx.peer
        else:
            self.known.discard(device_id)
        return make_response(req, 200, to_tag=self.ep.tag(), headers=[("Expires", str(expires))])

    async def on_message(self, req: Request, ctx: ServerContext) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            decoded = _decode(req.body)
            self.messages.append((req, decoded))
            sender = req.from_.uri.user or ""
            msg = decoded.message if decoded else None
            if msg is not None and msg.CMD == "Keepalive" and sender not in self.known:
                return make_response(req, 404, to_tag=self.ep.tag())
            if isinstance(msg, AlarmNotify):
                answer = AlarmResponse(sn=msg.sn, device_id=msg.device_id, result="OK")
                self._spawn(self.send(sender, answer, device=sender))
            if self.answer_delay:
                await asyncio.sleep(self.answer_delay)
            return make_response(req, 200, to_tag=self.ep.tag())
        finally:
            self.in_flight -= 1

    def on_notify(self, req: Request, ctx: ServerContext) -> Response:
        self.notifies.append((req, _decode(req.body)))
        return make_response(req, 200, to_tag=self.ep.tag())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what the platform sends ------------------------------------------------------------
    def request(
        self, method: str, target: str, body: bytes, device: str | None = None, **hdrs: str
    ) -> tuple[Request, Peer]:
        peer = self.peers[device or target]
        to_tag = hdrs.pop("to_tag", "")
        headers = [
            ("From", f"<sip:{SERVER_ID}@{DOMAIN}>;tag={hdrs.pop('from_tag', 'ptag')}"),
            ("To", f"<sip:{target}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else "")),
            ("Call-ID", hdrs.pop("call_id", self.ep.call_id())),
            ("CSeq", f"{hdrs.pop('cseq', '1')} {method}"),
            ("Content-Type", "Application/MANSCDP+xml"),
        ]  # fmt: skip
        headers += [(k.replace("_", "-").title(), v) for k, v in hdrs.items()]
        return Request(method, f"sip:{target}@{peer.host}:{peer.port}", headers, body), peer

    async def send(self, target: str, msg: Message | bytes, device: str | None = None) -> Response:
        body = msg if isinstance(msg, bytes) else encode(msg)
        req, peer = self.request("MESSAGE", target, body, device)
        return await self.ep.request(req, peer)

    def sn(self) -> int:
        return next(self._sn)

    def answers(self, cmd: str, sn: int) -> list[Message]:
        return [
            d.message
            for _, d in self.messages
            if d is not None and cmd == d.message.CMD and d.message.sn == sn
        ]

    async def ask(
        self, target: str, msg: Message, parts: int = 1, device: str | None = None
    ) -> list[Message]:
        """Send a query or control; wait for ``parts`` answers with its SN."""
        resp = await self.send(target, msg, device)
        assert resp.status == 200 and resp.body == b""
        await wait_for(lambda: len(self.answers(msg.CMD, msg.sn)) >= parts, 5, msg.CMD)
        return self.answers(msg.CMD, msg.sn)


def _decode(body: bytes) -> Decoded | None:
    try:
        return decode(body)
    except DecodeError:
        return None


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    yield Platform(ep)
    await ep.close()


def make(ep: Endpoint, plat: Platform, device_id: str = NVR, transport: str = "udp", **kw: Any):
    dev = SimDevice(ep, device_id, Peer(transport, "127.0.0.1", plat.ep.port), **kw)
    dev.install()
    return dev


async def registered(ep: Endpoint, plat: Platform, **kw: Any) -> SimDevice:
    dev = make(ep, plat, **kw)
    assert (await dev.register()).status == 200
    return dev


# -- registration and keepalive -------------------------------------------------------------


@pytest.mark.parametrize("qop", ["", "auth"])
async def test_digest_registration_keepalive_and_404_reregister(
    device_endpoint: Endpoint, platform: Platform, qop: str
) -> None:
    platform.challenge = qop
    dev = make(device_endpoint, platform)
    assert (await dev.register()).status == 200
    assert [r.status for r in dev.responses] == [401, 200]
    assert platform.authorized == [NVR] and dev.registered
    assert ("qop=auth" in (platform.registers[-1].get_header("Authorization") or "")) == bool(qop)
    resp = await dev.heartbeat()
    assert resp is not None and resp.status == 200
    assert platform.answers("Keepalive", dev.sn)
    # The platform forgets the device: the keepalive gets 404, the device registers again.
    platform.known.clear()
    resp = await dev.heartbeat()
    assert resp is not None and resp.status == 200 and NVR in platform.known
    assert [r.status for r in dev.responses] == [401, 200, 401, 200]
    assert platform.registers[-1].call_id == platform.registers[0].call_id
    assert (await dev.unregister()).status == 200
    assert not dev.registered and NVR not in platform.known


async def test_hub_keepalive_loop_and_teleboot(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    hub = DeviceHub(device_endpoint)
    devs = [
        hub.add(SimDevice(device_endpoint, did, Peer("udp", "127.0.0.1", platform.ep.port)))
        for did in device_ids(NVR, 3)
    ]
    devs[2].no_keepalive = True
    hub.start_keepalive(0.15)  # the loop registers first, then keeps alive

    def beats(did: str) -> int:
        return sum(1 for r, d in platform.messages if d and d.message.device_id == did)

    await wait_for(lambda: beats(devs[0].device_id) >= 2 and beats(devs[1].device_id) >= 2)
    assert devs[2].registered and beats(devs[2].device_id) == 0
    # TeleBoot: no Response, re-registration with a new Call-ID after reboot_delay.
    dev = devs[0]
    dev.reboot_delay = 0.05
    old = dev.call_id
    boot = DeviceControl(sn=platform.sn(), device_id=dev.device_id, tele_boot="Boot")
    assert (await platform.send(dev.device_id, boot)).status == 200
    await wait_for(lambda: dev.reboots == 1 and dev.registered)
    calls = [r.call_id for r in platform.registers if r.from_.uri.user == dev.device_id]
    assert calls[-1] == dev.call_id != old
    hub.stop()
    assert not platform.answers("DeviceControl", boot.sn)


# -- catalog ----------------------------------------------------------------------------------


async def test_catalog_udp_one_item_per_message_serially_with_groups(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(device_endpoint, platform, channel_count=4, with_groups=True)
    platform.answer_delay = 0.02  # parallel sending would show as several in flight
    parts = await platform.ask(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR), 7)
    assert platform.max_in_flight == 1
    assert all(isinstance(p, CatalogResponse) and p.sum_num == 7 for p in parts)
    items = [i for p in parts for i in p.items]  # type: ignore[attr-defined]
    assert all(len(p.items) == 1 for p in parts)  # type: ignore[attr-defined]
    bg, vo1, vo2 = dev.group_ids()
    assert [i.device_id for i in items[:3]] == [bg, vo1, vo2]
    assert bg[10:13] == "215" and vo1[10:13] == vo2[10:13] == "216"
    assert items[0].parent_id == NVR
    assert items[1].group_id == bg and items[1].parent_id is None
    assert items[2].group_id == bg and items[2].parent_id == vo1
    channels = items[3:]
    assert [c.device_id for c in channels] == list(dev.channel_ids())
    for n, ch in enumerate(channels, 1):
        assert ch.device_id[:10] == NVR[:10] and ch.device_id[10:13] == "131"
        assert ch.name == f"通道{n}" and ch.address == f"北京路{n}号"
        assert ch.parent_id == f"{NVR}/{vo1 if n % 2 else vo2}"
        assert ch.status == "ON" and ch.owner == "Owner" and ch.info is not None
    req = next(r for r, d in platform.messages if d and d.message.CMD == "Catalog")
    assert req.uri == f"sip:{SERVER_ID}@{DOMAIN}"
    assert req.from_.uri.user == NVR and req.to.uri.user == SERVER_ID


async def test_catalog_tcp_batches_of_100_and_2022_items(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(
        device_endpoint, platform, transport="tcp", channel_count=150, gb_version="3.0"
    )
    assert platform.peers[NVR].transport == "tcp"
    parts = await platform.ask(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR), 2)
    assert [len(p.items) for p in parts] == [100, 50]  # type: ignore[attr-defined]
    assert {p.sum_num for p in parts} == {150}  # type: ignore[attr-defined]
    first = parts[0].items[0]  # type: ignore[attr-defined]
    assert first.owner is None and first.info.grassroots_code == "340200"
    dev.channel_count = 100
    parts = await platform.ask(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR))
    await asyncio.sleep(0.05)
    assert len(platform.answers("Catalog", parts[0].sn)) == 1
    assert len(parts[0].items) == 100  # type: ignore[attr-defined]


async def test_drop_parts_wrong_sum_num_garbage_and_charsets(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(device_endpoint, platform, channel_count=5)
    events: list[tuple[str, str, str]] = []
    assert dev.hub is not None
    dev.hub.on_event = lambda *e: events.append(e)
    dev.drop_parts = {1, 3}
    dev.wrong_sum_num = 9
    q = CatalogQuery(sn=platform.sn(), device_id=NVR)
    parts = await platform.ask(NVR, q, 3)
    await wait_for(lambda: any(e[1] == "answered" for e in events))
    assert ("answered" in events[-1]) and "messages=3/5" in events[-1][2]
    assert len(platform.answers("Catalog", q.sn)) == 3
    assert [p.items[0].device_id for p in parts] == [  # type: ignore[attr-defined]
        dev.channel_id(n) for n in (1, 3, 5)
    ]
    assert {p.sum_num for p in parts} == {9}  # type: ignore[attr-defined]
    raw = [r.body for r, d in platform.messages if d and d.message.CMD == "Catalog"]
    assert b"<SumNum>9</SumNum>" in raw[0]
    assert "通道1".encode("gb2312") in raw[0]
    assert platform.messages[-1][1].charset == "GB18030"  # type: ignore[union-attr]

    dev.drop_parts, dev.wrong_sum_num, dev.charset_lie = frozenset(), None, True
    q = CatalogQuery(sn=platform.sn(), device_id=NVR)
    await platform.ask(NVR, q, 5)
    req, decoded = next(
        (r, d) for r, d in platform.messages if d and d.message.key == (NVR, "Catalog", q.sn)
    )
    assert req.body.startswith(b'<?xml version="1.0" encoding="GB2312"?>')
    assert "通道1".encode() in req.body and decoded is not None
    assert decoded.charset == "UTF-8" and decoded.declared == "GB2312"

    dev.garbage = True
    before = len(platform.messages)
    assert (await platform.send(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR))).status == 200
    await wait_for(lambda: len(platform.messages) > before)
    req, decoded = platform.messages[-1]
    assert decoded is None and req.body == NOT_XML


# -- controls and queries -----------------------------------------------------------------------


async def test_ptz_recorded_exactly_and_record_cmd_answered(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(device_endpoint, platform, channel_count=4)
    ch2 = dev.channel_id(2)
    ptz_sn = platform.sn()
    body = (
        '<?xml version="1.0" encoding="GB2312"?>\r\n<Control>\r\n<CmdType>DeviceControl</CmdType>'
        f"\r\n<SN>{ptz_sn}</SN>\r\n<DeviceID>{ch2}</DeviceID>\r\n"
        "<PTZCmd>a50f0101808000b6</PTZCmd>\r\n"
        "<Info><ControlPriority>5</ControlPriority></Info>\r\n</Control>\r\n"
    ).encode()
    assert (await platform.send(ch2, body, device=NVR)).status == 200
    assert dev.ptz_commands == ["a50f0101808000b6"]
    assert dev.controls[0].device_id == ch2 and dev.controls[0].ptz_cmd == "a50f0101808000b6"
    record = DeviceControl(sn=platform.sn(), device_id=ch2, record_cmd="Record")
    (answer,) = await platform.ask(ch2, record, device=NVR)
    assert answer.ROOT == "Response" and answer.result == "OK"  # type: ignore[attr-defined]
    assert answer.device_id == ch2
    assert not platform.answers("DeviceControl", ptz_sn)
    (status,) = await platform.ask(NVR, DeviceStatusQuery(sn=platform.sn(), device_id=NVR))
    assert status.record == "ON" and status.online == "ONLINE"  # type: ignore[attr-defined]
    # A set-preset PTZ command shows in PresetQuery.
    preset = DeviceControl(sn=platform.sn(), device_id=ch2, ptz_cmd=ptz.preset_set(7).encode())
    assert (await platform.send(ch2, preset, device=NVR)).status == 200
    (presets,) = await platform.ask(ch2, PresetQuery(sn=platform.sn(), device_id=ch2), device=NVR)
    assert [p.preset_id for p in presets.items] == [1, 2, 7]  # type: ignore[attr-defined]
    assert presets.sum_num == 3  # type: ignore[attr-defined]


async def test_queries_answered(device_endpoint: Endpoint, platform: Platform) -> None:
    dev = await registered(device_endpoint, platform, channel_count=4, gb_version="3.0")
    ch1 = dev.channel_id(1)
    (info,) = await platform.ask(NVR, DeviceInfoQuery(sn=platform.sn(), device_id=NVR))
    assert info.channel == 4 and info.result == "OK"  # type: ignore[attr-defined]

    q = RecordInfoQuery(
        sn=platform.sn(), device_id=ch1, start_time="2024-05-20T00:00:00",
        end_time="2024-05-20T06:00:00", type="alarm",
    )  # fmt: skip
    parts = await platform.ask(ch1, q, 3, device=NVR)
    recs = [r for p in parts for r in p.items]  # type: ignore[attr-defined]
    assert {p.sum_num for p in parts} == {3}  # type: ignore[attr-defined]
    assert [r.start_time for r in recs] == [
        "2024-05-20T00:00:00", "2024-05-20T02:00:00", "2024-05-20T04:00:00"
    ]  # fmt: skip
    assert {r.type for r in recs} == {"alarm"} and {r.device_id for r in recs} == {ch1}
    assert parts[0].name == "通道1"  # type: ignore[attr-defined]
    dev.records = [
        RecordItem(device_id=ch1, start_time="2024-05-20T08:00:00",
                   end_time="2024-05-20T08:59:59", type="time"),
        RecordItem(device_id=ch1, start_time="2024-05-20T09:00:00",
                   end_time="2024-05-20T09:10:00", type="alarm"),
    ]  # fmt: skip
    q = RecordInfoQuery(sn=platform.sn(), device_id=ch1, start_time="2024-05-20T00:00:00",
                        end_time="2024-05-20T23:59:59", type="time")  # fmt: skip
    (only,) = await platform.ask(ch1, q, device=NVR)
    assert only.sum_num == 1 and only.items[0].type == "time"  # type: ignore[attr-defined]

    cfg = DeviceConfig(
        sn=platform.sn(),
        device_id=NVR,
        basic_param=BasicParam(name="大门录像机", heart_beat_interval=30),
    )
    (done,) = await platform.ask(NVR, cfg)
    assert done.result == "OK"  # type: ignore[attr-defined]
    types = "BasicParam/VideoParamOpt/SVACEncodeConfig/OSDConfig"
    q = ConfigDownloadQuery(sn=platform.sn(), device_id=NVR, config_type=types)
    answers = await platform.ask(NVR, q, 4)
    assert all(isinstance(a, ConfigDownloadResponse) for a in answers)
    by_kind = {
        ("basic" if a.basic_param else "opt" if a.video_param_opt else "osd" if a.osd_config
         else "error"): a
        for a in answers  # type: ignore[attr-defined]
    }  # fmt: skip
    basic = by_kind["basic"].basic_param  # type: ignore[attr-defined]
    assert basic.name == "大门录像机" and basic.heart_beat_interval == 30
    assert basic.heart_beat_count == 3 and basic.expiration == 3600
    assert by_kind["error"].result == "ERROR"  # type: ignore[attr-defined]
    assert by_kind["osd"].osd_config.get("TimeEnable") == "1"  # type: ignore[attr-defined]

    for query in (
        HomePositionQuery(sn=platform.sn(), device_id=ch1),
        CruiseTrackListQuery(sn=platform.sn(), device_id=ch1),
        CruiseTrackQuery(sn=platform.sn(), device_id=ch1, number=0),
        PtzPositionQuery(sn=platform.sn(), device_id=ch1),
        SDCardStatusQuery(sn=platform.sn(), device_id=NVR),
    ):
        (answer,) = await platform.ask(query.device_id, query, device=NVR)
        assert answer.ROOT == "Response" and answer.result == "OK"  # type: ignore[attr-defined]
    (pos,) = await platform.ask(NVR, MobilePositionQuery(sn=platform.sn(), device_id=NVR))
    assert isinstance(pos, MobilePositionNotify) and pos.longitude == dev.position[0]


# -- subscriptions, alarms, positions -------------------------------------------------------------


async def subscribe(
    platform: Platform, query: Message, event: str, expires: int = 600, **hdrs: str
) -> Response:
    req, peer = platform.request(
        "SUBSCRIBE",
        NVR,
        encode(query),
        call_id=hdrs.pop("call_id", f"sub-{query.CMD}"),
        event=event,
        expires=str(expires),
        contact=f"<sip:{SERVER_ID}@127.0.0.1:{platform.ep.port}>",
        **hdrs,
    )
    return await platform.ep.request(req, peer)


async def test_catalog_subscription_notify_refresh_and_end(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(device_endpoint, platform, channel_count=4)
    with pytest.raises(LookupError):
        await dev.notify_catalog([("OFF", dev.channel_id(1))])
    resp = await subscribe(platform, CatalogQuery(sn=4230, device_id=NVR), "Catalog;id=4417")
    assert resp.status == 200 and resp.get_header("Expires") == "600"
    assert resp.contacts and resp.contacts[0].uri.user == NVR
    ok = decode(resp.body).message
    assert isinstance(ok, CatalogResponse) and ok.result == "OK" and ok.sn == 4230
    dev_tag = resp.to.tag
    assert dev_tag

    new = CatalogItem(device_id=f"{NVR[:10]}1310999999", name="新通道", parent_id=NVR, status="ON")
    await dev.notify_catalog([("OFF", dev.channel_id(1)), ("ADD", new)])
    assert len(platform.notifies) == 2  # UDP: one item per NOTIFY, sent serially
    for cseq, (req, decoded) in enumerate(platform.notifies, 1):
        assert req.get_header("Event") == "Catalog;id=4417"
        state = req.get_header("Subscription-State") or ""
        assert state.startswith("active;expires=") and 590 <= int(state.split("=")[1]) <= 600
        assert req.call_id == "sub-Catalog" and req.cseq.seq == cseq
        assert req.from_.tag == dev_tag and req.to.tag == "ptag"
        assert req.uri == f"sip:{SERVER_ID}@127.0.0.1:{platform.ep.port}"
        assert decoded is not None and isinstance(decoded.message, CatalogNotify)
        assert decoded.message.sum_num == len(decoded.message.items) == 1
    off = platform.notifies[0][1].message.items[0]  # type: ignore[union-attr, attr-defined]
    add = platform.notifies[1][1].message.items[0]  # type: ignore[union-attr, attr-defined]
    assert (off.device_id, off.event, off.name) == (dev.channel_id(1), "OFF", None)
    assert (add.device_id, add.event, add.name) == (new.device_id, "ADD", "新通道")
    # The changes show in the next catalog, and the new ID is routed to this device.
    parts = await platform.ask(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR), 5)
    items = {i.device_id: i for p in parts for i in p.items}  # type: ignore[attr-defined]
    assert items[dev.channel_id(1)].status == "OFF" and new.device_id in items
    assert dev.hub is not None and dev.hub.find(new.device_id) is dev

    refresh = await subscribe(
        platform, CatalogQuery(sn=4231, device_id=NVR), "Catalog;id=4417", 300,
        call_id="sub-Catalog", to_tag=dev_tag, cseq="2",
    )  # fmt: skip
    assert refresh.status == 200 and refresh.get_header("Expires") == "300"
    sub = dev.subscription("Catalog")
    assert sub is not None and 290 <= sub.remaining() <= 300 and len(dev.subscribes) == 2
    stray = await subscribe(
        platform, CatalogQuery(sn=4232, device_id=NVR), "Catalog", call_id="x", to_tag="nope"
    )
    assert stray.status == 481
    end = await subscribe(
        platform, CatalogQuery(sn=4233, device_id=NVR), "Catalog;id=4417", 0,
        call_id="sub-Catalog", to_tag=dev_tag, cseq="3",
    )  # fmt: skip
    assert end.status == 200 and dev.subscription("Catalog") is None


async def test_alarms_and_positions(device_endpoint: Endpoint, platform: Platform) -> None:
    dev = await registered(device_endpoint, platform, channel_count=2)
    resp = await dev.send_alarm(description="越界侦测", alarm_type=5)
    assert resp is not None and resp.status == 200
    await wait_for(lambda: len(dev.alarm_responses) == 1, 3, "Response/Alarm")
    alarm = platform.answers("Alarm", dev.sn)[0]
    assert isinstance(alarm, AlarmNotify) and alarm.device_id == dev.channel_id(1)
    assert alarm.alarm_priority == 1 and alarm.alarm_method == 5
    assert alarm.info is not None and alarm.info.alarm_type == 5
    assert dev.alarm_responses[0].sn == alarm.sn and dev.alarm_responses[0].result == "OK"
    assert dev.server_responses == dev.alarm_responses

    resp = await subscribe(platform, AlarmQuery(sn=1, device_id=NVR), "presence")
    assert resp.status == 200 and resp.body == b""
    await dev.send_alarm(channel_id=dev.channel_id(2), via="notify")
    req, decoded = platform.notifies[-1]
    assert req.get_header("Event") == "presence" and decoded is not None
    assert isinstance(decoded.message, AlarmNotify)
    assert decoded.message.device_id == dev.channel_id(2)

    await dev.send_position(117.2272, 31.8206, speed=32.5)  # no subscription: a MESSAGE
    flat = platform.messages[-1][1]
    assert flat is not None and isinstance(flat.message, MobilePositionNotify)
    assert (flat.message.longitude, flat.message.speed) == (117.2272, 32.5)
    resp = await subscribe(
        platform, MobilePositionQuery(sn=2, device_id=NVR, interval=5), "presence"
    )
    assert resp.status == 200
    await dev.send_position(117.5, 31.9, form="2022")
    req, decoded = platform.notifies[-1]
    assert decoded is not None and isinstance(decoded.message, MobilePositionNotify)
    assert decoded.message.sum_num == 1 and decoded.message.items[0].longitude == 117.5


# -- many devices ---------------------------------------------------------------------------------


async def test_hub_of_200_devices_answers_catalog_for_each(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    hub = DeviceHub(device_endpoint)
    server = Peer("udp", "127.0.0.1", platform.ep.port)
    devs = [
        hub.add(SimDevice(device_endpoint, did, server, channel_count=2))
        for did in device_ids(NVR, 200)
    ]
    statuses = await hub.register_all()
    assert set(statuses.values()) == {200}
    queries = [CatalogQuery(sn=platform.sn(), device_id=d.device_id) for d in devs]
    sent = await asyncio.gather(*(platform.send(q.device_id, q) for q in queries))
    assert {r.status for r in sent} == {200}
    await wait_for(
        lambda: sum(1 for _, d in platform.messages if d and d.message.CMD == "Catalog") == 400,
        10,
        "400 catalog parts",
    )
    seen: set[str] = set()
    for dev, q in zip(devs, queries, strict=True):
        parts = platform.answers("Catalog", q.sn)
        ids = {i.device_id for p in parts for i in p.items}  # type: ignore[attr-defined]
        assert ids == set(dev.channel_ids()) and all(p.device_id == dev.device_id for p in parts)
        seen |= ids
    assert len(seen) == 400  # channel IDs unique across devices
    # A request addressed to a channel reaches the device that owns it.
    target = devs[150]
    ch = target.channel_id(2)
    assert hub.find(ch) is target and hub.find(f"{NVR[:10]}1319999999") is None
    (rec,) = await platform.ask(
        ch, DeviceInfoQuery(sn=platform.sn(), device_id=ch), device=target.device_id
    )
    assert rec.device_id == ch and target.queries[-1].device_id == ch
    with pytest.raises(ValueError, match="overlap"):
        hub.add(SimDevice(device_endpoint, f"{NVR[:13]}0010001", server))


# -- the command line ---------------------------------------------------------------------------


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "device" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["device", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--server" in out and "--channels" in out and "--duration" in out


async def test_cli_device_run(platform: Platform) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conformance.cli", "device",
        "--server", f"127.0.0.1:{platform.ep.port}", "--count", "2", "--channels", "3",
        "--keepalive", "0.5", "--bind", "127.0.0.1:0", "--duration", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    second = device_ids(NVR, 2)[1]
    try:
        await wait_for(lambda: {NVR, second} <= platform.known, 8, "CLI registration")
        q = CatalogQuery(sn=platform.sn(), device_id=NVR)
        await platform.ask(NVR, q, 3)
        move = ptz.ptz_move(pan=1, pan_speed=0x80, tilt_speed=0x80).encode()
        ch = f"{NVR[:10]}1310001001"
        ctl = DeviceControl(sn=platform.sn(), device_id=ch, ptz_cmd=move)
        assert (await platform.send(ch, ctl, device=NVR)).status == 200
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert f"{NVR} registered" in text and f"{second} registered" in text
    assert "2/2 registered" in text
    assert f"{NVR} answered Catalog sn={q.sn} messages=3/3" in text
    assert f"{NVR} control {ch} PTZCmd PTZCmd={move}" in text
    assert text.rstrip().endswith("gb28181-sim: stopped")
    assert platform.known == set()  # both unregistered on the way out


# -- field quirks of real devices (issue 15): what each switch puts on the wire ----------------


async def test_quirk_switches_on_the_wire(device_endpoint: Endpoint, platform: Platform) -> None:
    dev = await registered(
        device_endpoint,
        platform,
        channel_count=2,
        name="大门",
        charset="UTF-8",
        content_length_chars=True,
        ptz_response=True,
        no_parent_id=True,
        subscribe_mute=True,
        address_request_uri=True,
    )
    # content_length_chars: the Content-Length counts characters; every byte is sent (over
    # UDP the parser takes the datagram whole, seeing the count add up).
    (info,) = await platform.ask(NVR, DeviceInfoQuery(sn=platform.sn(), device_id=NVR))
    assert info.device_name == "大门"  # type: ignore[attr-defined]
    req = next(r for r, d in platform.messages if d is not None and d.message.CMD == "DeviceInfo")
    assert req.declared_length == len(req.body.decode()) == len(req.body) - 4
    # address_request_uri: sip:host:port, no user.
    assert req.request_uri.user is None and req.request_uri.port == platform.ep.port
    # no_parent_id: channels carry no ParentID.
    (part, *_) = await platform.ask(NVR, CatalogQuery(sn=platform.sn(), device_id=NVR), parts=2)
    assert all(i.parent_id is None for i in part.items)  # type: ignore[attr-defined]
    # ptz_response: a PTZCmd is answered with a Response/DeviceControl carrying its SN.
    cam = dev.channel_id(1)
    control = DeviceControl(sn=platform.sn(), device_id=cam, ptz_cmd=ptz.ptz_stop().encode())
    (answer,) = await platform.ask(cam, control, device=NVR)
    assert answer.ROOT == "Response" and answer.result == "OK"  # type: ignore[attr-defined]
    # subscribe_mute: no response at all.
    sub, peer = platform.request(
        "SUBSCRIBE", NVR, encode(CatalogQuery(sn=platform.sn(), device_id=NVR)), Event="Catalog"
    )
    with pytest.raises(TransactionTimeout):
        await platform.ep.request(sub, peer, timeout=0.5)
    assert len(dev.subscribes) == 1 and not dev.subscriptions


async def test_ascii_names_no_refresh_and_unsolicited_sn1(
    device_endpoint: Endpoint, platform: Platform
) -> None:
    dev = await registered(
        device_endpoint,
        platform,
        charset="UTF-8",
        ascii_names=True,
        unsolicited_sn1=True,
        no_refresh=True,
        register_to_domain=True,
    )
    assert platform.registers[-1].request_uri.user is None
    await wait_for(lambda: len(platform.answers("Catalog", 1)) == 1, 5, "unsolicited catalog")
    (info,) = platform.answers("DeviceInfo", 1)
    assert info.device_name == f"IPC-{NVR[-6:]}"  # type: ignore[attr-defined]
    bodies = [r.body for r, _ in platform.messages]
    assert all(b.isascii() and b'encoding="UTF-8"' in b for b in bodies)
    # no_refresh: with the registration due, the heartbeat still only keeps alive.
    dev._refresh_at = 0.0
    registers = len(platform.registers)
    resp = await dev.heartbeat()
    assert resp is not None and resp.status == 200 and len(platform.registers) == registers
