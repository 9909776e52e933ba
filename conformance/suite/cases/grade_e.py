"""Grade E of the self-test: online-state logic and forwarding across levels.

GB/T 28181-2016 and -2022 §9.6 (keepalive: offline after the timeout count, registration
again), §9.1 (registration after the server lost the device), and cascade forwarding
(reference §7.2, §7.5: queries and controls forwarded down, answers relayed up with the
upper's SN).
"""

from __future__ import annotations

import time
from typing import Any

from conformance.suite.case import case
from conformance.suite.cases.common import control, fail_problems, query_one, until
from conformance.suite.context import Context
from conformance.suite.timing import DEFAULT_KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, margin
from gateway.manscdp.messages import (
    BasicParam,
    ConfigDownloadQuery,
    ConfigDownloadResponse,
    DeviceConfig,
    DeviceConfigResponse,
    DeviceControl,
    PresetQuery,
    PresetQueryResponse,
)

BOTH = ("2016", "2022")


def offline_wait(ctx: Context, dev: Any) -> float:
    """How long a target may take to call a silent suite device offline: the heartbeat count
    × period the device declares (its BasicParam; ``--keepalive-interval`` replaces the period)
    and a margin (GB/T 28181 §9.6)."""
    param = getattr(dev, "basic_param", None)
    count = getattr(param, "heart_beat_count", None) or KEEPALIVE_COUNT
    period = ctx.options.keepalive_interval or getattr(param, "heart_beat_interval", None)
    period = float(period or DEFAULT_KEEPALIVE_INTERVAL)
    return count * period + margin(period)


@case(
    "E-ONL-01",
    "Gateway: a silent device goes offline upward, and online again after registering",
    grade="E",
    clause_2016="9.6",
    clause_2022="9.6",
    roles=("gateway",),
    editions=BOTH,
)
async def offline_after_missed_keepalives(ctx: Context) -> None:
    """Steps: the suite's platform subscribes to the gateway's catalog; the last suite device
    stops sending keepalives; once the gateway reports it offline the device resumes (its
    next keepalive, refused, makes it register again).

    Pass: within the heartbeat count × period the device declares (its BasicParam: 3 × 60 s;
    ``--keepalive-interval`` gives the period instead) and a margin, the gateway NOTIFYs the
    device ``OFF`` (it counted the missed keepalives); the device's next keepalive is refused
    (404: it must register again); after it registers the gateway NOTIFYs it ``ON``."""
    h = ctx.harness
    platform = h.need_platform()
    dev = h.devices[-1]
    sub = await platform.subscribe(h.lower_id, "Catalog", expires=600, timeout=10.0)
    ctx.expect_equal(sub.status, 200, "the catalog SUBSCRIBE")
    mark = len(platform.catalog_events)
    try:
        limit = offline_wait(ctx, dev)
        dev.no_keepalive = True
        t0 = time.monotonic()
        ctx.step(f"{dev.device_id} stops keeping alive; the gateway may take {limit:g} s")
        await ctx.wait_for(lambda: ("OFF", dev.device_id) in platform.catalog_events[mark:],
                           limit, f"the gateway to report {dev.device_id} OFF",
                           extend=True)  # fmt: skip
        ctx.step(f"OFF after {time.monotonic() - t0:.1f} s of silence")
        t1 = time.monotonic()
        dev.no_keepalive = False
        await ctx.wait_for(
            lambda: any(e[0] > t1 and e[1] == dev.device_id and e[2] == "keepalive-404"
                        for e in h.device_events),
            5.0, "the offline device's keepalive to be refused",
        )  # fmt: skip
        ctx.step("its keepalive got 404; it registers again")
        await ctx.wait_for(
            lambda: ("ON", dev.device_id) in platform.catalog_events[mark:] and dev.registered,
            8.0, f"the gateway to report {dev.device_id} ON again",
        )  # fmt: skip
    finally:
        dev.no_keepalive = False
        await platform.unsubscribe(sub, timeout=10.0)


@case(
    "E-ONL-02",
    "Device side: registration again after the platform forgot it",
    grade="E",
    clause_2016="9.6, 9.1",
    clause_2022="9.6, 9.1",
    roles=("device", "gateway"),
    editions=BOTH,
)
async def register_again(ctx: Context) -> None:
    """Steps: the suite's platform forgets the target (as after its own restart); the
    target's next keepalive gets 404. The case waits up to 3 of the target's heartbeat periods
    and a margin for each keepalive (``--keepalive-interval``, else learned, else 60 s).

    Pass: the target registers again (401, then 200) after the refused keepalive and keeps
    alive afterwards (a keepalive answered 200)."""
    h = ctx.harness
    platform = h.need_platform()
    t0 = time.monotonic()
    platform.restart()
    timing = ctx.keepalive_timing()
    limit = timing.wait()
    ctx.step(f"platform forgot the target; waiting up to {limit:g} s ({timing.describe()})")

    def refused() -> float | None:
        return next((k[0] for k in h.keepalives_from(h.lower_id) if k[0] > t0 and k[4] == 404),
                    None)  # fmt: skip

    await ctx.wait_for(lambda: refused() is not None, limit, "a keepalive (to be refused)",
                       extend=True)  # fmt: skip
    t1 = refused()
    assert t1 is not None
    ctx.step(f"keepalive refused with 404 after {t1 - t0:.1f} s")
    await ctx.wait_for(
        lambda: any(e[0] > t1 and e[2].status == 200 for e in h.registers_from(h.lower_id)),
        max(10.0, ctx.options.register_timeout), "the target to register again", extend=True,
    )  # fmt: skip
    t2 = next(e[0] for e in h.registers_from(h.lower_id) if e[0] > t1 and e[2].status == 200)
    ctx.step(f"registered again {t2 - t1:.1f} s after the 404")
    await ctx.wait_for(
        lambda: any(k[0] > t2 and k[4] == 200 for k in h.keepalives_from(h.lower_id)),
        limit, "a keepalive after registering again", extend=True,
    )  # fmt: skip


@case(
    "E-FWD-01",
    "Gateway: queries forwarded down, answers relayed up with the upper's SN",
    grade="E",
    clause_2016="9.5, 9.7",
    clause_2022="9.5, 9.7",
    roles=("gateway",),
    editions=BOTH,
)
async def queries_forwarded(ctx: Context) -> None:
    """Steps: the upper asks the gateway ``ConfigDownload BasicParam`` for a suite device and
    ``PresetQuery`` for one of its channels.

    Pass: each answer comes back to the upper with the upper's SN and the queried ID, holding
    exactly what the device answered (its BasicParam, its preset list); the device received
    the queries from the gateway for its own IDs."""
    h = ctx.harness
    dev = h.devices[0]
    channel = dev.channel_id(1)
    before = len(dev.queries)
    cfg, _ = await query_one(
        ctx, ConfigDownloadQuery(sn=0, device_id=dev.device_id, config_type="BasicParam"),
        "ConfigDownload BasicParam",
    )  # fmt: skip
    assert isinstance(cfg, ConfigDownloadResponse)
    ctx.expect_equal(cfg.result, "OK", "Result of ConfigDownload")
    ctx.expect_equal(cfg.basic_param, dev.basic_param, "BasicParam relayed from the device")
    presets, _ = await query_one(ctx, PresetQuery(sn=0, device_id=channel), "PresetQuery")
    assert isinstance(presets, PresetQueryResponse)
    ctx.expect_equal(presets.items, dev.presets, "presets relayed from the device")
    ctx.expect_equal(presets.sum_num, len(dev.presets), "SumNum of the presets")
    got = [(q.CMD, q.device_id) for q in dev.queries[before:]]
    ctx.expect_equal(got, [("ConfigDownload", dev.device_id), ("PresetQuery", channel)],
                     "queries that reached the device")  # fmt: skip
    ctx.step("ConfigDownload and PresetQuery relayed with our SN")


@case(
    "E-FWD-02",
    "Gateway: controls and configuration forwarded down, answers relayed up",
    grade="E",
    clause_2016="9.3",
    clause_2022="9.3",
    roles=("gateway",),
    editions=BOTH,
)
async def controls_forwarded(ctx: Context) -> None:
    """Steps: the upper sends ``DeviceConfig`` (BasicParam HeartBeatInterval 30) to a suite
    device, then puts it back; and ``IFameCmd``/``IFrameCmd Send`` (key frame) to a channel.

    Pass: ``Response/DeviceConfig`` reaches the upper with its SN and ``Result OK``; the device
    applied the value; the key-frame command reaches the device for its channel."""
    h = ctx.harness
    platform = h.need_platform()
    dev = h.devices[0]
    channel = dev.channel_id(1)
    assert dev.basic_param is not None
    kept = dev.basic_param.heart_beat_interval
    for value in (30, kept):
        msg = DeviceConfig(sn=0, device_id=dev.device_id,
                           basic_param=BasicParam(heart_beat_interval=value))  # fmt: skip
        res = await platform.query(h.lower_id, msg, timeout=10.0, idle=10.0)
        ctx.expect_equal(res.status, 200, "the DeviceConfig MESSAGE")
        ctx.check(bool(res.responses), "no Response/DeviceConfig relayed")
        answer = res.responses[0]
        ctx.check(isinstance(answer, DeviceConfigResponse), "not a Response/DeviceConfig",
                  seen=type(answer).__name__)  # fmt: skip
        fail_problems(ctx, "Response/DeviceConfig", [
            p for p in (
                f"SN {answer.sn}" if answer.sn != res.request.sn else "",
                f"DeviceID {answer.device_id}" if answer.device_id != dev.device_id else "",
                f"Result {getattr(answer, 'result', None)}"
                if getattr(answer, "result", None) != "OK" else "",
            ) if p
        ])  # fmt: skip
        ctx.expect_equal(dev.basic_param.heart_beat_interval, value,
                         "HeartBeatInterval at the device")  # fmt: skip
    ctx.step("DeviceConfig relayed both ways")
    before = len(dev.controls)
    await control(ctx, DeviceControl(sn=0, device_id=channel, iframe_cmd="Send"), "IFrameCmd")
    ok = await until(lambda: len(dev.controls) > before, 5.0)
    ctx.check(ok, "the key-frame command did not reach the device")
    last = dev.controls[-1]
    ctx.expect_equal((last.device_id, last.iframe_cmd), (channel, "Send"),
                     "the key-frame command at the device")  # fmt: skip
