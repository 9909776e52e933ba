"""The simulated upper platform, driven by a bare lower platform written here (a plain Endpoint
and a DigestClient). Nothing here uses the gateway's uplink.

The lower stub registers (answering 401 or 407), keeps alive, answers Catalog queries in parts
(``parts``, with ``drop`` to leave some out), DeviceInfo and controls, accepts SUBSCRIBEs with a
tag of its own and sends NOTIFYs in that dialog, and sends alarms.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from conformance.cli import main
from conformance.peers.platform import SimPlatform
from gateway.manscdp import (
    AlarmNotify,
    AlarmQuery,
    AlarmResponse,
    CatalogItem,
    CatalogNotify,
    CatalogQuery,
    CatalogResponse,
    DeviceControl,
    DeviceControlResponse,
    DeviceInfoQuery,
    DeviceInfoResponse,
    Keepalive,
    Message,
    decode,
    encode,
)
from gateway.metrics import Metrics
from gateway.sip import (
    DigestClient,
    Endpoint,
    Peer,
    Request,
    Response,
    ServerContext,
    TimerConfig,
    TransactionTimeout,
    make_response,
)
from tests.conftest import wait_for

UPPER_ID = "34010000002000000001"
UPPER_DOMAIN = "3401000000"
LOWER = "34020000002000000001"
TIMERS = TimerConfig(t1=0.05, t2=0.2, t4=0.25)
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


def channel(n: int) -> str:
    return f"3402000000131{n:07d}"


def item(n: int) -> CatalogItem:
    return CatalogItem(
        device_id=channel(n), name=f"通道{n}", manufacturer="Sim", model="IPC",
        civil_code="340200", address=f"路{n}号", parental=0, parent_id=LOWER,
        register_way=1, secrecy=0, status="ON",
    )  # fmt: skip


class LowerStub:
    """A lower platform reduced to what the tests need."""

    def __init__(self, ep: Endpoint, upper_port: int, password: str = "12345678") -> None:
        self.ep = ep
        self.upper = Peer("udp", "127.0.0.1", upper_port)
        self.password = password
        self.call_id = ep.call_id()
        self.from_tag = ep.tag()
        self.sub_tag = ep.tag()  # our tag in every subscription dialog
        self.cseq = 0
        self.sn = 0
        self.responses: list[Response] = []
        self.sent: list[Request] = []  # REGISTERs
        self.received: list[tuple[Request, Message]] = []  # MESSAGEs
        self.subscribes: list[Request] = []
        self.parts: list[list[CatalogItem]] = [[item(1), item(2)], [item(2), item(3), item(4)]]
        self.parts.append([item(5)])
        self.sum_num = 5
        self.drop: set[int] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        ep.route("MESSAGE", self.on_message)
        ep.route("SUBSCRIBE", self.on_subscribe)

    # -- registration and keepalive -----------------------------------------------------
    async def register(self, expires: int = 3600, gb_ver: str | None = "3.0") -> Response:
        client = DigestClient(LOWER, self.password)
        uri = f"sip:{UPPER_ID}@{UPPER_DOMAIN}"
        auth: tuple[str, str] | None = None
        resp = None
        for _ in range(3):
            self.cseq += 1
            headers = [
                ("From", f"<sip:{LOWER}@3402000000>;tag={self.from_tag}"),
                ("To", f"<sip:{LOWER}@3402000000>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self.cseq} REGISTER"),
                ("Contact", f"<{self.ep.contact_uri(LOWER, self.upper)}>"),
                ("Expires", str(expires)),
            ]
            if gb_ver:
                headers.append(("X-GB-Ver", gb_ver))
            if auth:
                headers.append(auth)
            req = Request("REGISTER", uri, headers)
            self.sent.append(req)
            resp = await self.ep.request(req, self.upper)
            self.responses.append(resp)
            if resp.status == 401:
                challenge, answer = "WWW-Authenticate", "Authorization"
            elif resp.status == 407:
                challenge, answer = "Proxy-Authenticate", "Proxy-Authorization"
            else:
                return resp
            params = resp.auth_params(challenge)
            assert params is not None
            auth = (answer, client.authorization(params[1], "REGISTER", uri))
        assert resp is not None
        return resp

    def message(self, msg: Message) -> Request:
        return Request(
            "MESSAGE",
            f"sip:{UPPER_ID}@{UPPER_DOMAIN}",
            [
                ("From", f"<sip:{LOWER}@3402000000>;tag={self.ep.tag()}"),
                ("To", f"<sip:{UPPER_ID}@{UPPER_DOMAIN}>"),
                ("Call-ID", self.ep.call_id()),
                ("CSeq", "1 MESSAGE"),
                ("Content-Type", "Application/MANSCDP+xml"),
            ],
            encode(msg),
        )

    async def send(self, msg: Message, timeout: float | None = None) -> Response:
        return await self.ep.request(self.message(msg), self.upper, timeout=timeout)

    async def keepalive(self, timeout: float | None = None) -> Response:
        self.sn += 1
        return await self.send(Keepalive(sn=self.sn, device_id=LOWER, status="OK"), timeout)

    # -- answering the upper ---------------------------------------------------------------
    def on_message(self, req: Request, ctx: ServerContext) -> Response:
        msg = decode(req.body).message
        self.received.append((req, msg))
        answers: list[Message] = []
        if isinstance(msg, CatalogQuery):
            answers = [
                CatalogResponse(
                    sn=msg.sn, device_id=msg.device_id, sum_num=self.sum_num, items=tuple(p)
                )
                for i, p in enumerate(self.parts)
                if i not in self.drop
            ]
        elif isinstance(msg, DeviceInfoQuery):
            answers = [
                DeviceInfoResponse(sn=msg.sn, device_id=msg.device_id, result="OK", channel=5)
            ]
        elif isinstance(msg, DeviceControl) and msg.expects_response:
            answers = [DeviceControlResponse(sn=msg.sn, device_id=msg.device_id, result="OK")]
        if answers:
            self.spawn(self.send_serially(answers))
        return make_response(req, 200, to_tag=self.ep.tag())

    async def send_serially(self, answers: list[Message]) -> None:
        for answer in answers:  # each after the previous one's 200 (2022 Annex M)
            await self.send(answer)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_subscribe(self, req: Request, ctx: ServerContext) -> Response:
        self.subscribes.append(req)
        headers = [
            ("Contact", f"<{self.ep.contact_uri(LOWER, ctx.peer)}>"),
            ("Expires", req.get_header("Expires") or "600"),
        ]
        return make_response(req, 200, to_tag=self.sub_tag, headers=headers)

    async def notify(
        self, msg: Message, call_id: str | None = None, state: str = "active;expires=590"
    ) -> Response:
        """A NOTIFY in the dialog of the last SUBSCRIBE (or a made-up Call-ID)."""
        sub = self.subscribes[-1]
        self.cseq += 1
        req = Request(
            "NOTIFY",
            str(sub.contacts[0].uri),
            [
                ("From", f"<{sub.to.uri}>;tag={self.sub_tag}"),
                ("To", str(sub.from_)),
                ("Call-ID", call_id or sub.call_id),
                ("CSeq", f"{self.cseq} NOTIFY"),
                ("Event", sub.get_header("Event") or ""),
                ("Subscription-State", state),
                ("Content-Type", "Application/MANSCDP+xml"),
            ],
            encode(msg),
        )
        return await self.ep.request(req, self.upper)

    def got(self, cls: type[Message]) -> list[tuple[Request, Message]]:
        return [(r, m) for r, m in self.received if isinstance(m, cls)]

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def _endpoint() -> Endpoint:
    ep = Endpoint(metrics=Metrics(), timers=TIMERS)
    await ep.start("127.0.0.1", 0)
    return ep


@pytest.fixture
async def make_upper() -> AsyncIterator[Callable[..., Awaitable[SimPlatform]]]:
    made: list[SimPlatform] = []

    async def make(**kw: Any) -> SimPlatform:
        platform = SimPlatform(await _endpoint(), **kw).start()
        made.append(platform)
        return platform

    yield make
    for platform in made:
        platform.stop()
        await platform.endpoint.close()


@pytest.fixture
async def upper(make_upper: Callable[..., Awaitable[SimPlatform]]) -> SimPlatform:
    return await make_upper()


@pytest.fixture
async def lower(upper: SimPlatform) -> AsyncIterator[LowerStub]:
    stub = LowerStub(await _endpoint(), upper.endpoint.port)
    yield stub
    stub.stop()
    await stub.ep.close()


async def registered(upper: SimPlatform, lower: LowerStub) -> None:
    assert (await lower.register()).status == 200
    assert upper.lowers[LOWER].registered


# -- registration -------------------------------------------------------------------------------


@pytest.mark.parametrize("qop", [True, False])
async def test_register_digest_expires_date_and_version(
    upper: SimPlatform, lower: LowerStub, qop: bool
) -> None:
    upper.qop = qop
    resp = await lower.register(expires=30)
    assert [r.status for r in lower.responses] == [401, 200]
    challenge = lower.responses[0].get_header("WWW-Authenticate") or ""
    assert ('qop="auth"' in challenge) == qop and f'realm="{UPPER_DOMAIN}"' in challenge
    assert ("qop=auth" in (lower.sent[-1].get_header("Authorization") or "")) == qop
    assert resp.get_header("Expires") == "60"  # clamped up to the floor
    assert DATE.match(resp.get_header("Date") or "")
    assert resp.get_header("X-GB-Ver") == "3.0"
    assert lower.responses[0].get_header("X-GB-Ver") == "3.0"
    state = upper.lowers[LOWER]
    assert state.registered and state.online and state.registrations == 1
    assert state.gb_version == "3.0" and state.peer.port == lower.ep.port
    assert state.contact == f"sip:{LOWER}@127.0.0.1:{lower.ep.port}"
    resp = await lower.register(expires=100_000, gb_ver=None)
    assert resp.get_header("Expires") == "86400" and resp.get_header("X-GB-Ver") is None
    assert state.registrations == 2 and state.gb_version is None
    resp = await lower.register(expires=0)
    assert resp.status == 200 and resp.get_header("Expires") == "0"
    assert not state.registered and not state.online
    assert any(f"{LOWER} unregistered" in e for e in upper.events)


async def test_wrong_password_403_and_per_lower_password(
    upper: SimPlatform, lower: LowerStub
) -> None:
    lower.password = "wrong"
    resp = await lower.register()
    assert (resp.status, resp.reason) == (403, "Forbidden (wrong password)")
    assert LOWER not in upper.lowers
    upper.passwords[LOWER] = "only-for-this-lower"
    lower.password = "12345678"  # the platform-wide one no longer fits this lower
    assert (await lower.register()).status == 403
    lower.password = "only-for-this-lower"
    assert (await lower.register()).status == 200


async def test_407_challenge(upper: SimPlatform, lower: LowerStub) -> None:
    upper.challenge_407 = True
    assert (await lower.register()).status == 200
    assert [r.status for r in lower.responses] == [407, 200]
    assert lower.responses[0].get_header("Proxy-Authenticate") is not None
    assert lower.responses[0].get_header("WWW-Authenticate") is None
    assert lower.sent[-1].get_header("Proxy-Authorization") is not None
    # An Authorization (401-style) answer is not what a 407 platform reads: challenged again.
    upper.challenge_407 = False
    assert (await lower.register()).status == 200
    assert [r.status for r in lower.responses[2:]] == [401, 200]


async def test_redirect_302_then_register_at_target(
    make_upper: Callable[..., Awaitable[SimPlatform]], upper: SimPlatform, lower: LowerStub
) -> None:
    other = await make_upper()
    upper.redirect_to = ("127.0.0.1", other.endpoint.port)
    resp = await lower.register()
    assert (resp.status, resp.reason) == (302, "Moved Temporarily")
    contact = resp.contacts[0].uri
    target = (UPPER_ID, "127.0.0.1", other.endpoint.port)
    assert (contact.user, contact.host, contact.port) == target
    assert upper.redirect_to is None and LOWER not in upper.lowers
    lower.upper = Peer("udp", contact.host, contact.port)
    assert (await lower.register()).status == 200
    assert [r.status for r in lower.responses] == [302, 401, 200]
    assert other.lowers[LOWER].registered and LOWER not in upper.lowers


# -- keepalive and liveness ---------------------------------------------------------------------


async def test_keepalive_200_404_after_restart_refuse_and_drop(
    upper: SimPlatform, lower: LowerStub
) -> None:
    assert (await lower.keepalive()).status == 404  # never registered
    await registered(upper, lower)
    assert (await lower.keepalive()).status == 200
    assert upper.lowers[LOWER].keepalives == 1 and upper.lowers[LOWER].last_keepalive
    upper.restart()
    assert upper.lowers == {}
    assert (await lower.keepalive()).status == 404
    await registered(upper, lower)
    upper.refuse_keepalives = True
    assert (await lower.keepalive()).status == 404
    upper.refuse_keepalives, upper.drop_keepalives = False, True
    with pytest.raises(TransactionTimeout):
        await lower.keepalive(timeout=0.3)
    assert any("keepalive dropped" in e for e in upper.events)


async def test_offline_after_missed_keepalives(
    make_upper: Callable[..., Awaitable[SimPlatform]],
) -> None:
    upper = await make_upper(keepalive_interval=0.3)  # offline after 3 × 0.3 s of silence
    stub = LowerStub(await _endpoint(), upper.endpoint.port)
    try:
        await registered(upper, stub)
        state = upper.lowers[LOWER]
        for _ in range(5):  # kept alive for longer than the limit: stays online
            assert (await stub.keepalive()).status == 200
            await asyncio.sleep(0.1)
        assert state.online
        await wait_for(lambda: not state.online, 4, "offline")
        assert state.registered  # the registration itself has not expired
        assert any(f"{LOWER} offline: no keepalive" in e for e in upper.events)
        assert (await stub.keepalive()).status == 200 and state.online
    finally:
        await stub.ep.close()


# -- queries ------------------------------------------------------------------------------------


async def test_catalog_in_three_parts_assembled_with_raw_sizes(
    upper: SimPlatform, lower: LowerStub
) -> None:
    await registered(upper, lower)
    result = await upper.catalog(LOWER)
    assert not result.partial and result.ok and result.status == 200
    assert result.sum_num == 5 and len(result.responses) == 3
    assert [i.device_id for i in result.items] == [channel(n) for n in range(1, 6)]
    assert result.transport == "udp" and len(result.raw) == 3
    for raw in result.raw:
        # The bytes as sent: the top Via carries no received= stamp of ours.
        assert raw.startswith(b"MESSAGE sip:") and b"received=" not in raw.split(b"\r\n")[1]
        assert b"<SumNum>5</SumNum>" in raw
    # RFC 3261 §18.1.1: over 1300 bytes needs TCP. The stub's three-item part breaks it.
    assert [len(raw) > 1300 for raw in result.raw] == [False, True, False]
    ((req, query),) = lower.got(CatalogQuery)
    assert req.uri == f"sip:{LOWER}@127.0.0.1:{lower.ep.port}"
    assert req.from_.uri.user == UPPER_ID and req.from_.uri.host == UPPER_DOMAIN
    assert req.get_header("Content-Type") == "Application/MANSCDP+xml"
    assert query.sn == result.request.sn and query.device_id == LOWER
    assert req.body.startswith(b'<?xml version="1.0" encoding="GB2312"?>')


async def test_partial_answer_and_stray_response(upper: SimPlatform, lower: LowerStub) -> None:
    await registered(upper, lower)
    lower.drop = {1}  # items 3 and 4 never come
    result = await upper.catalog(LOWER, idle=0.3)
    assert result.partial and not result.ok and result.status == 200
    assert len(result.responses) == 2 and result.sum_num == 5
    assert {i.device_id for i in result.items} == {channel(1), channel(2), channel(5)}
    assert result.elapsed >= 0.3
    stray = CatalogResponse(sn=99999, device_id=LOWER, sum_num=0)
    assert (await lower.send(stray)).status == 200
    assert [m.sn for m in upper.stray] == [99999]


async def test_single_answers_controls_and_ptz(upper: SimPlatform, lower: LowerStub) -> None:
    await registered(upper, lower)
    info = await upper.device_info(LOWER)
    assert info.ok and isinstance(info.responses[0], DeviceInfoResponse)
    assert info.responses[0].channel == 5
    record = DeviceControl(sn=0, device_id=channel(1), record_cmd="Record")
    answer = await upper.control(LOWER, record)
    assert isinstance(answer, DeviceControlResponse) and answer.result == "OK"
    assert await upper.ptz(LOWER, channel(2), "A50F0101808000B6") is None
    req, ptz = lower.got(DeviceControl)[-1]
    assert req.uri == f"sip:{channel(2)}@127.0.0.1:{lower.ep.port}"
    assert isinstance(ptz, DeviceControl) and ptz.ptz_cmd == "A50F0101808000B6"
    sns = [m.sn for _, m in lower.received]
    assert sns == sorted(set(sns))  # the platform's own SN counter
    with pytest.raises(LookupError):
        await upper.catalog("34020000002000000099")


# -- subscriptions, NOTIFY, alarms --------------------------------------------------------------


async def test_subscribe_refresh_unsubscribe_dialog(upper: SimPlatform, lower: LowerStub) -> None:
    await registered(upper, lower)
    sub = await upper.subscribe(LOWER, "Catalog", expires=600)
    assert sub.active and sub.status == 200 and sub.remote_tag == lower.sub_tag
    first = lower.subscribes[0]
    assert re.fullmatch(r"Catalog;id=\d+", first.get_header("Event") or "")
    assert first.to.tag is None and first.from_.tag == sub.local_tag
    assert first.get_header("Expires") == "600" and str(first.cseq) == "1 SUBSCRIBE"
    assert first.contacts[0].uri.user == UPPER_ID
    body = decode(first.body).message
    assert isinstance(body, CatalogQuery) and body.device_id == LOWER

    await upper.refresh(sub, expires=300)
    await upper.unsubscribe(sub)
    refresh, end = lower.subscribes[1:]
    for req, seq, expires in ((refresh, 2, "300"), (end, 3, "0")):
        assert req.call_id == first.call_id and req.cseq.seq == seq
        assert req.to.tag == lower.sub_tag and req.from_.tag == sub.local_tag
        assert req.get_header("Event") == first.get_header("Event")
        assert req.get_header("Expires") == expires
        assert req.uri == f"sip:{LOWER}@127.0.0.1:{lower.ep.port}"  # the 200's Contact
    assert not sub.active

    alarm = await upper.subscribe(LOWER, "Alarm")
    req = lower.subscribes[-1]
    assert req.get_header("Event") == "presence" and req.call_id != first.call_id
    assert isinstance(decode(req.body).message, AlarmQuery) and alarm.active


async def test_notify_recorded_and_unknown_dialog_481(upper: SimPlatform, lower: LowerStub) -> None:
    await registered(upper, lower)
    sub = await upper.subscribe(LOWER)
    change = CatalogNotify(
        sn=7,
        device_id=LOWER,
        sum_num=2,
        items=(CatalogItem(device_id=channel(9), event="OFF"), replace(item(8), event="ADD")),
    )
    assert (await lower.notify(change)).status == 200
    assert upper.catalog_events == [("OFF", channel(9)), ("ADD", channel(8))]
    assert len(upper.notify_times) == 2 and upper.notify_times[0] == upper.notify_times[1]
    assert sub.notifies == 1 and isinstance(upper.notifies[0][1], CatalogNotify)
    assert (await lower.notify(change, call_id="no-such-dialog")).status == 481
    assert (await lower.notify(change, state="terminated;reason=timeout")).status == 200
    assert not sub.active and len(upper.catalog_events) == 4


async def test_alarm_message_answered_with_response_alarm(
    upper: SimPlatform, lower: LowerStub
) -> None:
    await registered(upper, lower)
    alarm = AlarmNotify(
        sn=41, device_id=channel(3), alarm_priority=1, alarm_method=5,
        alarm_time="2024-05-20T07:38:35", alarm_description="Motion",
    )  # fmt: skip
    assert (await lower.send(alarm)).status == 200
    await wait_for(lambda: bool(lower.got(AlarmResponse)), 3, "Response/Alarm")
    ((req, answer),) = lower.got(AlarmResponse)
    assert isinstance(answer, AlarmResponse)
    assert (answer.sn, answer.device_id, answer.result) == (41, channel(3), "OK")
    assert req.from_.uri.user == UPPER_ID and req.uri.startswith(f"sip:{LOWER}@")
    assert [a.sn for a in upper.alarms] == [41]
    await wait_for(lambda: any("acknowledged: 200" in e for e in upper.events), 2, "ack")


# -- the command line ---------------------------------------------------------------------------


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "platform" in out and "device" in out
    with pytest.raises(SystemExit) as info:
        main(["platform", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--port", "--no-qop", "--keepalive-interval", "--catalog-after", "--subscribe"):
        assert option in out


async def test_cli_platform_run() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conformance.cli", "platform", "--host", "127.0.0.1",
        "--port", "0", "--keepalive-interval", "0.2", "--catalog-after", "0.1",
        "--subscribe", "--duration", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    stub: LowerStub | None = None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 8)).decode()
        found = re.search(r"on 127\.0\.0\.1:(\d+)", first)
        assert found, first
        stub = LowerStub(await _endpoint(), int(found.group(1)))
        assert (await stub.register()).status == 200
        assert (await stub.keepalive()).status == 200
        await wait_for(lambda: bool(stub and stub.subscribes and stub.got(CatalogQuery)), 5)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if stub is not None:
            stub.stop()
            await stub.ep.close()
    text = first + out.decode()
    assert proc.returncode == 0, err.decode()
    assert f"{LOWER} registered from udp:127.0.0.1:" in text
    assert f"{LOWER} keepalive #1" in text
    assert f"{LOWER} catalog items=5 sum_num=5 messages=3 status=200" in text
    assert f"{LOWER} Catalog subscribe {LOWER} event=Catalog;id=1" in text
    assert f"{LOWER} offline: no keepalive" in text
    assert "gb28181-sim: stopped (1 lowers seen, 0 online)" in text


# -- quirks of real platforms (issue 15): what each switch does on the wire ---------------------


async def test_bare_register_ok_has_no_to_tag_and_no_contact(
    upper: SimPlatform, lower: LowerStub
) -> None:
    upper.bare_register_ok = True
    resp = await lower.register(expires=600)
    assert resp.status == 200 and resp.to.tag is None and resp.get_header("Contact") is None
    assert resp.get_header("Expires") == "600" and DATE.match(resp.get_header("Date") or "")
    assert lower.responses[0].to.tag  # the 401 still has one
    assert upper.lowers[LOWER].registered


async def test_refuse_new_call_id_while_the_old_registration_holds(
    upper: SimPlatform, lower: LowerStub
) -> None:
    upper.refuse_new_call_id = True
    await registered(upper, lower)
    held = lower.call_id
    lower.call_id = lower.ep.call_id()
    resp = await lower.register()
    assert (resp.status, resp.reason) == (
        500,
        "Server Internal Error (registration held under another Call-ID)",
    )
    assert upper.lowers[LOWER].call_id == held
    lower.call_id = held  # the held one refreshes
    assert (await lower.register()).status == 200
    assert (await lower.register(expires=0)).status == 200  # unregistered: any Call-ID again
    lower.call_id = lower.ep.call_id()
    assert (await lower.register()).status == 200


@pytest.mark.parametrize(("low", "high", "refused"), [(2, 0, [(1, 5)]), (0, 2, [(3, 5)])])
async def test_catalog_messages_outside_the_counts_get_500(
    upper: SimPlatform, lower: LowerStub, low: int, high: int, refused: list[tuple[int, int]]
) -> None:
    """The stub answers in parts of 2, 3 and 1 items."""
    upper.min_catalog_items, upper.max_catalog_items = low, high
    await registered(upper, lower)
    result = await upper.catalog(LOWER, idle=0.3)
    assert result.partial and upper.refused_catalogs == refused
    kept = [len(m.items) for m in result.responses]  # type: ignore[attr-defined]
    assert all(n != refused[0][0] for n in kept)
    # A message whose SumNum is below the minimum is exempt.
    upper.refused_catalogs.clear()
    lower.parts, lower.sum_num = [[item(1)]], 1
    assert not (await upper.catalog(LOWER)).partial
    assert upper.refused_catalogs == []


async def test_no_max_forwards_and_info_cseq_are_taken_off_the_wire(
    upper: SimPlatform, lower: LowerStub
) -> None:
    upper.no_max_forwards = True
    await registered(upper, lower)
    assert (await upper.device_info(LOWER)).ok
    req, _ = lower.received[-1]
    assert req.max_forwards is None and req.get_header("Max-Forwards") is None
    upper.no_max_forwards = False
    assert (await upper.device_info(LOWER)).ok
    assert lower.received[-1][0].max_forwards == 70


async def test_requests_over_udp_to_a_lower_registered_over_tcp(
    upper: SimPlatform, lower: LowerStub
) -> None:
    upper.requests_over_udp = True
    lower.upper = Peer("tcp", "127.0.0.1", upper.endpoint.port)
    await registered(upper, lower)
    state = upper.lowers[LOWER]
    assert state.peer.transport == "tcp" and state.contact.endswith(";transport=tcp")
    assert upper.peer_of(state) == Peer("udp", "127.0.0.1", lower.ep.port)
    result = await upper.device_info(LOWER)
    assert result.ok
    req, _ = lower.received[-1]
    assert req.top_via.transport == "UDP" and "transport" not in req.uri
    upper.requests_over_udp = False
    assert upper.peer_of(state) == state.peer
