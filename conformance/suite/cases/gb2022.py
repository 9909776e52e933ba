"""What GB/T 28181-2022 added: protocol version header, registration redirect, presets, home
position, drag zoom, the 2022 catalog fields, the catalog subscription's initial report, TCP
media reconnection.

GB/T 28181-2022 Annex I (``X-GB-Ver``), §9.1.2.3 (redirect), §9.3 and A.3 (presets, home
position, drag zoom), A.2 (catalog fields), Annex N (catalog subscription), Annex D (RTP
over TCP: the client retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import re
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from conformance.suite.case import case
from conformance.suite.cases.common import (
    control,
    end_call,
    fail_problems,
    frames,
    invite,
    item_2022_problems,
    list_num_problem,
    query_one,
    short,
    sip_body,
    until,
)
from conformance.suite.context import Context
from conformance.suite.harness import is_video_channel
from conformance.suite.progress import waiting
from gateway.manscdp.messages import (
    CatalogNotify,
    DeviceControl,
    HomePosition,
    HomePositionQuery,
    HomePositionResponse,
    PresetQuery,
    PresetQueryResponse,
    PtzCmdParams,
    ZoomBox,
)
from gateway.manscdp.ptz import preset_call, preset_delete, preset_set
from gateway.media.sdp import Sdp

V2022 = ("2022",)
TARGET_DEVICE = ("device", "gateway")
VERSION = re.compile(r"^\d+\.\d+$")
CATALOG_EVENTS = ("ON", "OFF", "VLOST", "DEFECT", "ADD", "DEL", "UPDATE")


def _channel(ctx: Context) -> str:
    channel = ctx.harness.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    return str(channel)


@case(
    "N-VER-01",
    "Device side: X-GB-Ver 3.0 on REGISTER",
    grade="2022",
    clause_2016="",
    clause_2022="Annex I",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def version_on_register(ctx: Context) -> None:
    """Steps: the REGISTERs the target sent to the suite's platform since the run began.

    Pass: every REGISTER carries ``X-GB-Ver`` (name case-insensitive) with the value ``3.0``
    (m.n; 3.0 = GB/T 28181-2022)."""
    h = ctx.harness
    regs = h.registers_from(h.lower_id)
    ctx.check(bool(regs), "no REGISTER from the target was seen")
    values = [r[1].get_header("X-GB-Ver") for r in regs]
    ctx.step(f"{len(regs)} REGISTERs, X-GB-Ver {sorted({str(v) for v in values})}")
    ctx.check(all(v is not None for v in values), "a REGISTER has no X-GB-Ver",
              seen=values)  # fmt: skip
    ctx.check(all((v or "").strip() == "3.0" for v in values),
              "X-GB-Ver of a 2022 target is 3.0", expected="3.0", seen=values)  # fmt: skip


@case(
    "N-VER-02",
    "Platform side: X-GB-Ver on REGISTER responses",
    grade="2022",
    clause_2016="",
    clause_2022="Annex I",
    roles=("platform", "gateway"),
    editions=V2022,
)
async def version_on_responses(ctx: Context) -> None:
    """Steps: the suite devices' REGISTERs carried ``X-GB-Ver: 3.0``; their answers are read.

    Pass: the 401 and the 200 each carry ``X-GB-Ver`` with an m.n value (Annex I: all
    responses to REGISTER)."""
    h = ctx.harness
    dev = h.devices[0]
    answers = list(dev.responses)
    values = [r.get_header("X-GB-Ver") for r in answers]
    ctx.step(f"answers {[r.status for r in answers]}: X-GB-Ver {values}")
    ctx.check(len(answers) >= 2, "the registration's 401 and 200 were seen", seen=len(answers))
    for r, v in zip(answers, values, strict=True):
        ctx.check(v is not None and bool(VERSION.match(v.strip())),
                  f"the {r.status} to REGISTER has no X-GB-Ver m.n", seen=v)  # fmt: skip


@case(
    "N-REDIR-01",
    "Device side: registration redirect (302)",
    grade="2022",
    clause_2016="",
    clause_2022="9.1.2.3",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def redirect(ctx: Context) -> None:
    """Steps: the suite's platform forgets the target and answers its next REGISTER with
    ``302`` whose Contact names a second suite platform (another ID, another port); later the
    second platform refuses the target (keepalive 404, registration 403).

    Pass: the target registers at the second platform (digest, 200) with its ID in the
    Request-URI and keeps alive there; once refused there it comes back to the first platform
    (2022 §9.1.2.3: start over at the redirect server). Each wait is up to 3 of the target's
    heartbeat periods and a margin; the way back home adds the register timeout (a retry
    time)."""
    h = ctx.harness
    platform = h.need_platform()
    o = ctx.options
    other_id = o.suite_platform_id[:-1] + str((int(o.suite_platform_id[-1]) + 1) % 10)
    other = await h.extra_platform(other_id, "redirected")
    timing = ctx.keepalive_timing()
    limit = timing.wait()
    try:
        host, port = o.local_host, other.endpoint.port
        platform.redirect_to = (host, port)
        platform.redirect_server_id = other_id
        platform.restart()
        ctx.step(f"first platform forgot the target; its next REGISTER is sent to {host}:{port}")

        def there() -> bool:
            lower = other.lowers.get(h.lower_id)
            return lower is not None and lower.registered

        await ctx.wait_for(there, limit, "the target to register at the server the 302 named",
                           extend=True)  # fmt: skip
        reg = next(r for _, r, a in other.register_answers if a.status == 200)
        ctx.expect_equal(reg.request_uri.user, other_id, "Request-URI user at the new server")
        ctx.step("registered at the second platform")
        await ctx.wait_for(lambda: other.lowers[h.lower_id].keepalives > 0, limit,
                           "a keepalive at the second platform", extend=True)  # fmt: skip
    finally:
        platform.redirect_to = platform.redirect_server_id = None
        other.refuse_keepalives = True
        other.password = o.password + "-changed"
        # Its next keepalive there is refused, its REGISTER there too; then it may wait its
        # retry time (at most the register timeout) before it starts over at home.
        home = limit + o.register_timeout
        ctx.allow(home)
        with waiting("the target to come back to the first platform", home):
            back = await until(h.registered, home)
        await h.close_extra(other)
    ctx.check(back, "refused at the server it was sent to, the target did not come back to the "
              "redirect server (2022 §9.1.2.3)")  # fmt: skip
    ctx.step("refused at the second platform; back at the first")


@case(
    "N-PRESET-01",
    "Device side: presets set, called, queried and deleted",
    grade="2022",
    clause_2016="A.3, A.2",
    clause_2022="9.3, A.3, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def presets(ctx: Context) -> None:
    """Steps: to the first video channel: set preset 77 (PTZCmd 81 with ``PTZCmdParams``
    ``PresetName``), ``PresetQuery``, call preset 77 (82), delete it (83), ``PresetQuery``.

    Pass: every control is answered 200; the first query lists preset 77 with its name, the
    second does not; each answer has our SN, the channel's ID, ``SumNum`` equal to the
    ``PresetList Num``. Below a gateway: the device got the three commands unchanged."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    name = "测试预置位"

    async def listed() -> list[Any]:
        answer, res = await query_one(ctx, PresetQuery(sn=0, device_id=channel), "PresetQuery")
        assert isinstance(answer, PresetQueryResponse)
        problem = list_num_problem(sip_body(res.raw[0]), "PresetList") if res.raw else None
        ctx.check(problem is None, "PresetQuery answer", seen=problem)
        if answer.sum_num is not None:
            ctx.expect_equal(answer.sum_num, len(answer.items), "SumNum of PresetQuery")
        return list(answer.items)

    commands = []
    cmd = preset_set(77).encode()
    commands.append(cmd)
    await control(ctx, DeviceControl(sn=0, device_id=channel, ptz_cmd=cmd,
                                     ptz_cmd_params=PtzCmdParams(preset_name=name)),
                  "set preset 77")  # fmt: skip
    items = await listed()
    found = [p for p in items if p.preset_id == 77]
    ctx.step(f"presets after set: {[p.preset_id for p in items]}")
    ctx.check(bool(found), "preset 77 is not listed after it was set")
    ctx.expect_equal(found[0].preset_name, name, "PresetName of preset 77")
    for label, value in (("call", preset_call(77)), ("delete", preset_delete(77))):
        cmd = value.encode()
        commands.append(cmd)
        await control(ctx, DeviceControl(sn=0, device_id=channel, ptz_cmd=cmd),
                      f"{label} preset 77")  # fmt: skip
    items = await listed()
    ctx.step(f"presets after delete: {[p.preset_id for p in items]}")
    ctx.check(all(p.preset_id != 77 for p in items), "preset 77 is still listed after delete")
    if below is not None:
        got = [c.upper() for c in below[0].ptz_commands[-3:]]
        ctx.expect_equal(got, commands, "preset commands at the device")


@case(
    "N-HOME-01",
    "Device side: home position set and queried",
    grade="2022",
    clause_2016="A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def home_position(ctx: Context) -> None:
    """Steps: ``DeviceControl`` ``HomePosition`` (Enabled 1, ResetTime 60, PresetIndex 1) to
    the first video channel, ``HomePositionQuery``, then Enabled 0 again.

    Pass: each control gets 200 and ``Response/DeviceControl Result OK`` with our SN; the query
    answers our SN and the channel's ID with the HomePosition that was set. Below a gateway:
    the device holds that home position."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    home = HomePosition(enabled=1, reset_time=60, preset_index=1)
    try:
        await control(ctx, DeviceControl(sn=0, device_id=channel, home_position=home),
                      "HomePosition")  # fmt: skip
        if below is not None:
            ctx.expect_equal(below[0].home_position, home, "home position at the device")
        answer, _ = await query_one(ctx, HomePositionQuery(sn=0, device_id=channel),
                                    "HomePositionQuery")  # fmt: skip
        assert isinstance(answer, HomePositionResponse)
        ctx.step(f"HomePositionQuery: {answer.home_position}")
        ctx.expect_equal(answer.home_position, home, "HomePosition after setting it")
    finally:
        off = HomePosition(enabled=0, reset_time=60, preset_index=1)
        await control(ctx, DeviceControl(sn=0, device_id=channel, home_position=off),
                      "HomePosition off")  # fmt: skip


@case(
    "N-DRAG-01",
    "Device side: drag zoom in and out",
    grade="2022",
    clause_2016="A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def drag_zoom(ctx: Context) -> None:
    """Steps: ``DeviceControl`` ``DragZoomIn`` then ``DragZoomOut`` (window 1920x1080, box
    centre 960,540, box 320x180) to the first video channel.

    Pass: each is answered 200 (no application answer). Below a gateway: the device got both
    boxes unchanged for its channel."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    box = ZoomBox(length=1920, width=1080, mid_point_x=960, mid_point_y=540, length_x=320,
                  length_y=180)  # fmt: skip
    for label, msg in (
        ("DragZoomIn", DeviceControl(sn=0, device_id=channel, drag_zoom_in=box)),
        ("DragZoomOut", DeviceControl(sn=0, device_id=channel, drag_zoom_out=box)),
    ):
        before = len(below[0].controls) if below else 0
        await control(ctx, msg, label)
        ctx.step(f"{label}: 200")
        if below is not None:
            dev, local = below
            ok = await until(lambda d=dev, b=before: len(d.controls) > b, 5.0)
            ctx.check(ok, f"{label} did not reach the device")
            last = dev.controls[-1]
            got = last.drag_zoom_in if label == "DragZoomIn" else last.drag_zoom_out
            ctx.expect_equal((last.device_id, got), (local, box), f"{label} at the device")


@case(
    "N-CAT-01",
    "Device side: the 2022 catalog fields",
    grade="2022",
    clause_2016="",
    clause_2022="A.2",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def catalog_2022(ctx: Context) -> None:
    """Steps: the suite's platform reads the catalog.

    Pass: camera items (types 131/132) carry none of the fields 2022 removed (Owner, SafetyWay,
    CertNum, Certifiable, ErrCode, EndTime, Info/PositionType, Info/UseType), an
    ``Info/GrassrootsCode`` of 6 digits (mandatory), and valid 2022 values where present
    (PointType, MAC, StreamNumberList, SupplyLightType); virtual organisations carry
    ``BusinessGroupID`` at item level, not in ``Info``."""
    h = ctx.harness
    res = await h.catalog()
    ctx.check(res.ok, "the catalog answer did not complete", seen=f"{len(res.items)} items")
    cameras = [i for i in res.items if is_video_channel(i.device_id)]
    ctx.step(f"{len(cameras)} camera items of {len(res.items)}")
    ctx.check(bool(cameras), "no camera item in the catalog")
    problems = [p for item in cameras for p in item_2022_problems(item)]
    for item in res.items:
        if item.device_id[10:13] == "216" and item.info and item.info.business_group_id:
            problems.append(f"item {item.device_id}: BusinessGroupID inside Info (2016 place)")
    fail_problems(ctx, "2022 catalog fields", problems)


@case(
    "N-SUB-01",
    "Device side: catalog subscription, its initial report and its end",
    grade="2022",
    clause_2016="9.11, Annex P",
    clause_2022="9.11, Annex N",
    roles=TARGET_DEVICE,
    editions=V2022,
)
async def catalog_subscription(ctx: Context) -> None:
    """Steps: a device target's catalog is read again (what is not ON now); below a gateway,
    the last suite device unregisters instead, so that something is offline. The suite's
    platform SUBSCRIBEs to the target's catalog (``Event: Catalog;id=n``, Expires 600) and
    collects the NOTIFYs; (below a gateway the device registers again); the subscription is
    ended with Expires 0.

    Pass: 200 with a To tag and the granted Expires (at most 600); every NOTIFY is in the dialog
    with our Event (id included), ``Subscription-State: active`` with an expires, a
    ``Notify/Catalog`` body whose SumNum equals its items (Annex N) and item Events from the
    standard's list. The initial report (Annex N: the subscriber takes everything in scope as
    online, the notifier at once reports what is not):

    * device: when the catalog lists items whose Status is not ON (``ONLINE`` counts as ON;
      groups without a Status are left out), NOTIFYs naming exactly those items, each with
      Event OFF, VLOST or DEFECT, arrive within 5 s of the 200 (0.5 s more is watched for
      extra items); when every item is ON, nothing is owed, and no NOTIFY in 2 s may report
      an item offline.
    * gateway: the initial report lists the offline device and its channels OFF within 5 s;
      the device coming back is reported ON.

    The un-SUBSCRIBE gets 200."""
    h = ctx.harness
    platform = h.need_platform()
    gateway = h.role == "gateway"
    dev = h.devices[-1] if gateway else None
    not_on: dict[str, str] = {}
    if not gateway:
        not_on = await _not_online(ctx)
    mark = len(platform.notifies)
    async with contextlib.AsyncExitStack() as stack:
        if dev is not None:
            await stack.enter_async_context(h.manual(dev))
            await dev.unregister()
            ctx.step(f"{dev.device_id} unregistered before subscribing")
        sub = await platform.subscribe(h.lower_id, "Catalog", expires=600, timeout=10.0)
        subscribed = time.monotonic()
        ctx.step(f"SUBSCRIBE Catalog ({sub.event}): {sub.status}, expires {sub.expires}")
        try:
            ctx.expect_equal(sub.status, 200, "the catalog SUBSCRIBE")
            ctx.check(bool(sub.remote_tag), "the 200 to SUBSCRIBE has no To tag (no dialog)")
            granted = sub.responses[0].get_header("Expires") if sub.responses else None
            ctx.check(granted is not None, "the 200 to SUBSCRIBE carries Expires (RFC 6665)")
            ctx.check(0 < sub.expires <= 600, "the granted Expires", expected="1..600",
                      seen=sub.expires)  # fmt: skip
            if dev is not None:
                wanted = {dev.device_id, *dev.channel_ids()}

                def offs() -> set[str]:
                    return {e[1] for e in _events(platform, sub, mark) if e[0] == "OFF"}

                ok = await until(lambda: wanted <= offs(), INITIAL_REPORT_WAIT)
                ctx.check(ok, "the initial report does not list the offline device and its "
                          "channels OFF (Annex N)", seen=sorted(offs()))  # fmt: skip
                await dev.register()
                ok = await until(
                    lambda: any(e == ("ON", dev.device_id) for e in _events(platform, sub, mark)),
                    5.0,
                )
                ctx.check(ok, f"{dev.device_id} coming back was not reported ON")
            else:
                await _judge_initial_report(ctx, platform, sub, mark, not_on, subscribed)
            problems = _notify_problems(platform, sub, mark)
            fail_problems(ctx, "catalog NOTIFYs", problems)
            ctx.step(f"{len(_dialog_notifies(platform, sub, mark))} NOTIFYs checked")
        finally:
            await platform.unsubscribe(sub, timeout=10.0)
        ctx.expect_equal(sub.status, 200, "the un-SUBSCRIBE (Expires: 0)")


INITIAL_REPORT_WAIT = 5.0
"""Seconds after the SUBSCRIBE's 200 within which the initial report must have arrived (Annex N:
"immediately"; room for a loaded target)."""
EXTRA_WAIT = 0.5  # seconds watched after the last owed item, for items that are not owed
QUIET_WAIT = 2.0  # seconds a target with nothing to report is watched for false reports
ONLINE = frozenset({"ON", "ONLINE"})  # catalog Status values that mean online
NOT_ONLINE_EVENTS = frozenset({"OFF", "VLOST", "DEFECT"})  # what an initial report may say


async def _not_online(ctx: Context) -> dict[str, str]:
    """A device target's catalog, read again: its items whose Status is not ON, by ID. Skips
    when no item has a Status (nothing to judge the initial report against)."""
    h = ctx.harness
    res = await h.catalog()
    items = h.catalog_items()  # the fresh read, or the last one if this one came back empty
    with_status = [(i.device_id, i.status.strip().upper()) for i in items if i.status is not None]
    if not with_status:
        ctx.skip(f"the target's catalog ({len(items)} items) gives no item a Status: the initial "
                 "report cannot be judged")  # fmt: skip
    not_on = {item_id: status for item_id, status in with_status if status not in ONLINE}
    listed = ", ".join(f"{k} {v}" for k, v in sorted(not_on.items())) or "none"
    ctx.step(
        f"catalog read again ({len(res.items)} items answered): {len(with_status)} items with a "
        f"Status, not ON: {listed}"
    )
    return not_on


async def _judge_initial_report(
    ctx: Context, platform: Any, sub: Any, mark: int, not_on: dict[str, str], subscribed: float
) -> None:
    """A device target's initial report (Annex N): exactly the items not ON, promptly; or,
    when all are ON, no NOTIFY reporting an item offline."""
    if not not_on:
        await asyncio.sleep(QUIET_WAIT)
        false = [(e, d) for e, d in _events(platform, sub, mark) if e in NOT_ONLINE_EVENTS]
        ctx.check(not false, "a NOTIFY reports items offline that the catalog lists ON (Annex "
                  "N: with every item ON there is nothing to report)", expected="no OFF/VLOST/"
                  "DEFECT item", seen=short(false))  # fmt: skip
        count = len(_dialog_notifies(platform, sub, mark))
        ctx.step(f"every item is ON: nothing to report (Annex N); {count} NOTIFYs in "
                 f"{QUIET_WAIT:g} s, none reporting an item offline")  # fmt: skip
        return
    owed = set(not_on)

    def reported() -> set[str]:
        return {d for e, d in _events(platform, sub, mark) if e in NOT_ONLINE_EVENTS}

    complete = await until(lambda: owed <= reported(), INITIAL_REPORT_WAIT)
    after = time.monotonic() - subscribed
    notifies = _dialog_notifies(platform, sub, mark)
    if not notifies:
        ctx.fail(
            f"no initial NOTIFY within {INITIAL_REPORT_WAIT:g} s of the 200, although the catalog"
            f" lists items that are not ON ({len(owed)}; Annex N: the notifier reports offline"
            " and abnormal items at once)",
            expected=sorted(owed),
            seen="no NOTIFY",
        )
    ctx.check(complete, f"the initial report lacks items the catalog lists not ON (within "
              f"{INITIAL_REPORT_WAIT:g} s of the 200)", expected=sorted(owed),
              seen=sorted(reported()))  # fmt: skip
    await asyncio.sleep(EXTRA_WAIT)
    events = _events(platform, sub, mark)
    notifies = _dialog_notifies(platform, sub, mark)
    problems = [
        f"{d} reported {e or 'without an Event'}, its Status is {not_on[d]}"
        for e, d in events
        if d in owed and e not in NOT_ONLINE_EVENTS
    ]
    extra = sorted({f"{d} ({e or '-'})" for e, d in events if d not in owed})
    if extra:
        problems.append(
            f"items the catalog lists ON (or does not list) are named: {short(extra)} (the "
            "initial report names only the items that are not ON)"
        )
    fail_problems(ctx, "the initial report", problems)
    ctx.step(
        f"initial report complete {after:.2f} s after the 200: {len(owed)} item(s) in "
        f"{len(notifies)} NOTIFY(s) ("
        + ", ".join(f"{d} {e}" for e, d in events[:8])
        + (", ..." if len(events) > 8 else "")
        + ")"
    )


def _dialog_notifies(platform: Any, sub: Any, mark: int) -> list[Any]:
    return [n for n in platform.notifies[mark:] if n[0].call_id == sub.call_id]


def _events(platform: Any, sub: Any, mark: int) -> list[tuple[str, str]]:
    out = []
    for req, msg in platform.notifies[mark:]:
        if req.call_id == sub.call_id and isinstance(msg, CatalogNotify):
            out += [(i.event or "", i.device_id) for i in msg.items]
    return out


def _notify_problems(platform: Any, sub: Any, mark: int) -> list[str]:
    out = []
    for req, msg in platform.notifies[mark:]:
        if req.call_id != sub.call_id:
            continue
        if req.get_header("Event") != sub.event:
            out.append(f"Event {req.get_header('Event')!r}, the SUBSCRIBE's was {sub.event!r}")
        state = req.get_header("Subscription-State") or ""
        kind = state.split(";")[0].strip().lower()
        if kind == "active" and "expires=" not in state:
            out.append(f"Subscription-State {state!r} has no expires")
        elif kind not in ("active", "terminated", "pending"):
            out.append(f"Subscription-State {state!r}")
        if req.from_.tag != sub.remote_tag:
            out.append("a NOTIFY's From tag is not the dialog's")
        if msg is None:
            if kind != "terminated":
                out.append("a NOTIFY without a body")
            continue
        if not isinstance(msg, CatalogNotify):
            out.append(f"a NOTIFY body is {msg.ROOT}/{msg.CMD}, expected Notify/Catalog")
            continue
        if msg.sum_num != len(msg.items):
            out.append(f"SumNum {msg.sum_num} with {len(msg.items)} items (Annex N: equal)")
        bad = [i.event for i in msg.items if (i.event or "") not in CATALOG_EVENTS]
        if bad:
            out.append(f"item Events {bad}")
    return out


class _Relay(asyncio.Protocol):
    """One connection of the late listener: bytes go on to our real receiver."""

    def __init__(self, target: tuple[str, int], accepted: list[float]) -> None:
        self.target = target
        self.accepted = accepted
        self.out: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.accepted.append(time.monotonic())
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(asyncio.Protocol, *self.target))
        task.add_done_callback(self._connected)

    def _connected(self, task: Any) -> None:
        if task.cancelled() or task.exception() is not None:
            if self.transport is not None:
                self.transport.close()
            return
        self.out = task.result()[0]
        for data in self.pending:
            self.out.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.out is not None:
            self.out.close()


REFUSED_ATTEMPTS = 3
"""Connection attempts the suite refuses before it listens: the first and two retries, so that
only a client that retries at least 3 times (2022 Annex D) gets through."""
MIN_RETRY_GAP = 0.9
"""Seconds: Annex D asks for at least 1 s between attempts; 0.1 s is left for the client's timers
and for our capture."""
FIRST_ATTEMPT_WAIT = 5.0  # seconds after the 200 for the first connection attempt
NEXT_ATTEMPT_WAIT = 5.0  # seconds after an attempt for the next one
UNMEASURED_REFUSAL = 2.5  # seconds nothing listens when attempts cannot be timed
SO_ATTACH_FILTER = 26  # Linux, <asm-generic/socket.h>
_SYN, _ACK = 0x02, 0x10


def _syn_filter(port: int, v6: bool) -> list[tuple[int, int, int, int]]:
    """A classic BPF program passing the first 128 bytes of TCP segments to ``port`` with SYN
    and without ACK. An IPv4 raw socket's packets start at the IP header, an IPv6 one's at the
    TCP header."""
    return [
        (0x01, 0, 0, 0) if v6 else (0xB1, 0, 0, 0),  # X = 0 | X = 4 * (IHL)
        (0x48, 0, 0, 2),  # A = destination port
        (0x15, 0, 4, port),  # A == port, else drop
        (0x50, 0, 0, 13),  # A = flags
        (0x54, 0, 0, _SYN | _ACK),
        (0x15, 0, 1, _SYN),  # SYN without ACK, else drop
        (0x06, 0, 0, 128),  # keep 128 bytes
        (0x06, 0, 0, 0),  # drop
    ]


class _SynWatch:
    """Times the TCP connection attempts to one local port, the refused ones too: a raw socket
    (Linux, CAP_NET_RAW) gets a copy of every SYN before TCP answers it with a RST or a SYN-ACK;
    a BPF filter lets only SYNs to that port through. ``attempts`` holds one arrival time per
    attempt (a SYN the client's kernel retransmits, same port and sequence, is not a new one);
    ``on_attempt(n)`` is called as the n-th arrives."""

    def __init__(self, sock: socket.socket, port: int, on_attempt: Callable[[int], None]) -> None:
        self.sock = sock
        self.port = port
        self.on_attempt = on_attempt
        self.attempts: list[float] = []
        self._seen: set[tuple[str, int, int]] = set()
        self._v4 = sock.family == socket.AF_INET
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @classmethod
    def open(cls, host: str, port: int, on_attempt: Callable[[int], None]) -> _SynWatch | None:
        """A watch on ``port``, or None where SYNs cannot be seen (not Linux, no CAP_NET_RAW)."""
        if not sys.platform.startswith("linux"):
            return None
        v6 = ":" in host
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except OSError:
            return None
        try:
            program = _syn_filter(port, v6)
            code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
            fprog = struct.pack("HP", len(program), ctypes.addressof(code))
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            sock.setblocking(False)
            return cls(sock, port, on_attempt)
        except OSError:
            sock.close()
            return None

    def _readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # pragma: no cover - the socket went away
                return
            now = time.monotonic()
            at = (data[0] & 0x0F) * 4 if self._v4 and data else 0
            if len(data) < at + 14:
                continue
            sport, dport, seq = struct.unpack_from("!HHI", data, at)
            if dport != self.port or data[at + 13] & (_SYN | _ACK) != _SYN:
                continue  # what came before the filter was attached
            key = (str(addr[0]), sport, seq)
            if key in self._seen:
                continue
            self._seen.add(key)
            self.attempts.append(now)
            self.on_attempt(len(self.attempts))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


@case(
    "N-TCP-01",
    "Device side: the TCP media client retries a refused connection",
    grade="2022",
    clause_2016="Annex L",
    clause_2022="Annex D",
    roles=TARGET_DEVICE,
    editions=V2022,
    media=True,
)
async def tcp_retry(ctx: Context) -> None:
    """Steps: the suite INVITEs the first video channel for live view over TCP with
    ``a=setup:passive`` (the target connects), announcing a port it has bound but does not
    listen on, so the target's connection attempts are refused (RST). A raw socket times every
    attempt (its SYN); the suite listens as soon as it has refused 3 attempts, so the 4th is
    accepted (and relayed to our receiver).

    Pass (2022 Annex D: when the first connection fails the client retries, at least 1 s apart,
    at least 3 times): a first attempt within 5 s of the 200, the next one within 5 s of each
    refusal until one is accepted (so at least 3 retries), no two attempts less than 0.9 s apart
    (1 s, less timer and capture jitter), and live video decodes over the accepted connection.
    The steps and the media figures give each attempt's time, the retries and their spacing.

    Timing SYNs needs Linux and CAP_NET_RAW (run as root). Without them count and spacing are
    not measured: nothing listens for 2.5 s after the 200, then the suite listens; the case
    fails when the target does not connect within 5 s more or no video decodes, and is
    otherwise skipped, saying that count and spacing were not measured."""
    if "tcp-passive" not in ctx.options.media_transports:
        ctx.skip("tcp-passive media is not among the run's media transports")
    channel = _channel(ctx)
    host = ctx.options.local_host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    late_port = int(sock.getsockname()[1])
    accepted: list[float] = []
    listening: list[float] = []  # when the suite began to listen

    def listen_now() -> None:
        if not listening:
            sock.listen(8)  # at once: the next attempt must find a listener
            listening.append(time.monotonic())

    def on_attempt(n: int) -> None:
        if n >= REFUSED_ATTEMPTS:
            listen_now()

    def hook(offer: Sdp) -> Sdp:
        return replace(offer, port=late_port)

    watch = _SynWatch.open(host, late_port, on_attempt)
    server: asyncio.Server | None = None
    try:
        call = await invite(ctx, channel, transport="tcp-passive", offer_hook=hook)
        answered = time.monotonic()
        try:
            ctx.step(f"INVITE with m= port {late_port}, bound but not listening (attempts are "
                     "refused): 200")  # fmt: skip
            target = (host, call.receiver.local_port)
            server = await asyncio.get_running_loop().create_server(
                lambda: _Relay(target, accepted), sock=sock, start_serving=False
            )
            if watch is None:
                await _unmeasured_retry(ctx, server, listen_now, accepted, answered)
            else:
                await _measured_retries(ctx, server, watch, listening, accepted, answered)
            n = await frames(ctx, call, 10, "live view over the retried TCP connection")
            ctx.record_media(frames_decoded=n, ssrc=call.ssrc, transport="tcp-passive")
        finally:
            await end_call(call)
        if watch is None:  # what was seen held, but the case could not judge what it claims
            ctx.skip(
                "the target reconnected and video decoded, but the number and spacing of its "
                "retries could not be measured (timing SYNs needs CAP_NET_RAW)"
            )
    finally:
        if watch is not None:
            watch.close()
        if server is not None:
            server.close()
        else:
            sock.close()


async def _measured_retries(
    ctx: Context,
    server: asyncio.Server,
    watch: _SynWatch,
    listening: list[float],
    accepted: list[float],
    answered: float,
) -> None:
    """Refuse the first attempts, accept the next; judge count and spacing (Annex D)."""
    stepped = 0
    while True:
        if listening and not server.is_serving():
            await server.start_serving()
        times = watch.attempts
        for t in times[stepped:]:
            stepped += 1
            what = "refused" if not listening or t < listening[0] else "made while we listen"
            ctx.step(f"connection attempt {stepped} at {_offset(t - answered)} s: {what}")
            if stepped == REFUSED_ATTEMPTS and listening:
                ctx.step(f"{stepped} attempts refused: listening from now on")
        if accepted:
            break
        limit = times[-1] + NEXT_ATTEMPT_WAIT if times else answered + FIRST_ATTEMPT_WAIT
        if time.monotonic() >= limit:
            break
        await asyncio.sleep(0.01)
    times = list(watch.attempts)
    if accepted and listening:  # up to the first attempt that found us listening
        times = [t for t in times if t < listening[0]] + [t for t in times if t >= listening[0]][:1]
    offsets = [round(t - answered, 2) + 0.0 for t in times]  # + 0.0: no -0.0
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    refused = len([t for t in times if not listening or t < listening[0]])
    retries = max(0, len(times) - 1)
    ctx.record_media(
        retries_measured=True,
        connect_attempts=len(times),
        refused_attempts=refused,
        retries=retries,
        attempt_offsets=offsets,
        retry_gaps=gaps,
        min_retry_gap=min(gaps) if gaps else None,
        connected_after=round(accepted[0] - answered, 2) if accepted else None,
    )
    if not times:
        ctx.fail(
            f"the target never tried to connect to our a=setup:passive port within "
            f"{FIRST_ATTEMPT_WAIT:g} s of the 200",
            expected="a connection attempt, then at least 3 retries (Annex D)",
            seen="no SYN",
        )
    spacing = f", {', '.join(f'{g:.2f}' for g in gaps)} s apart" if gaps else ""
    ctx.step(f"{_retries(retries)}{spacing} (Annex D: at least 3, at least 1 s apart)")
    problems = []
    fast = [g for g in gaps if g < MIN_RETRY_GAP]
    if fast:
        problems.append(f"retries came {short(fast)} s after the previous attempt (Annex D: at "
                        "least 1 s apart)")  # fmt: skip
    if not accepted:
        if retries == 0:
            problems.append("the target did not retry after its first connection attempt was "
                            f"refused (nothing in {NEXT_ATTEMPT_WAIT:g} s)")  # fmt: skip
        else:
            problems.append(f"the target gave up after {_retries(retries)} (nothing in "
                            f"{NEXT_ATTEMPT_WAIT:g} s after its last refused attempt)")  # fmt: skip
    if problems:
        ctx.fail(
            "TCP connection retries: " + "; ".join(problems),
            expected="at least 3 retries, at least 1 s apart (Annex D)",
            seen=f"attempts at {offsets} s from the 200",
        )
    ctx.step(f"attempt {len(times)} accepted: connected {accepted[0] - answered:.2f} s after "
             "the 200")  # fmt: skip


def _retries(n: int) -> str:
    return f"{n} retry" if n == 1 else f"{n} retries"


def _offset(seconds: float) -> str:
    """A time from the 200, signed ("+1.00"; an attempt may come before we saw the 200)."""
    return f"{round(seconds, 2) + 0.0:+.2f}"


async def _unmeasured_retry(
    ctx: Context,
    server: asyncio.Server,
    listen_now: Callable[[], None],
    accepted: list[float],
    answered: float,
) -> None:
    """No SYN can be seen here: refuse for a while, then listen, and judge the connection only."""
    ctx.step("connection attempts cannot be timed (a raw socket needs Linux and CAP_NET_RAW): "
             "the number and spacing of retries are not measured")  # fmt: skip
    await asyncio.sleep(max(0.0, answered + UNMEASURED_REFUSAL - time.monotonic()))
    listen_now()
    await server.start_serving()
    ctx.step(f"listening {time.monotonic() - answered:.1f} s after the 200")
    got = await until(lambda: bool(accepted), NEXT_ATTEMPT_WAIT)
    ctx.record_media(
        retries_measured=False,
        connected_after=round(accepted[0] - answered, 2) if accepted else None,
    )
    ctx.check(got, f"the target did not connect again after {UNMEASURED_REFUSAL:g} s of refused "
              f"attempts, nor in {NEXT_ATTEMPT_WAIT:g} s more (Annex D: retry at least 3 times, "
              "at least 1 s apart)")  # fmt: skip
    ctx.step(f"connected {accepted[0] - answered:.2f} s after the 200")
