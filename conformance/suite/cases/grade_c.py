"""Grade C of the self-test: arming and disarming, alarm notification, alarm reset.

GB/T 28181-2016 and -2022 §9.3 (GuardCmd, AlarmCmd), §9.4 (alarm events: Notify/Alarm, the
platform's Response/Alarm), §9.11 (alarm subscription).
"""

from __future__ import annotations

from datetime import datetime

from conformance.suite.case import case
from conformance.suite.cases.common import GB_TIME, control, parse_gb_time, until
from conformance.suite.context import Context
from gateway.manscdp.messages import AlarmInfo, AlarmNotify, AlarmSelector, DeviceControl

BOTH = ("2016", "2022")
TARGET_DEVICE = ("device", "gateway")
TARGET_PLATFORM = ("platform", "gateway")


def _channel(ctx: Context) -> str:
    channel = ctx.harness.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    return str(channel)


@case(
    "C-GUARD-01",
    "Device side: arm and disarm (GuardCmd)",
    grade="C",
    clause_2016="9.3, A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def guard(ctx: Context) -> None:
    """Steps: ``Control/DeviceControl`` with ``GuardCmd SetGuard`` to the first video channel,
    then ``GuardCmd ResetGuard``.

    Pass: both are answered 200 and then ``Response/DeviceControl`` with our SN, the channel's
    ID and ``Result OK``. Below a gateway: the device was armed, then disarmed."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    for cmd, armed in (("SetGuard", True), ("ResetGuard", False)):
        await control(ctx, DeviceControl(sn=0, device_id=channel, guard_cmd=cmd), cmd)
        ctx.step(f"GuardCmd {cmd}: Result OK")
        if below is not None:
            ctx.expect_equal(below[0].guard, armed, f"armed at the device after {cmd}")


def _alarm_problems(seen: AlarmNotify, sent: AlarmNotify, upper_id: str) -> list[str]:
    out = []
    if seen.device_id != upper_id:
        out.append(f"DeviceID {seen.device_id}, expected {upper_id}")
    for name in ("alarm_priority", "alarm_method", "alarm_description"):
        if getattr(seen, name) != getattr(sent, name):
            out.append(f"{name} {getattr(seen, name)!r} (sent {getattr(sent, name)!r})")
    a = sent.info.alarm_type if sent.info else None
    b = seen.info.alarm_type if seen.info else None
    if a != b:
        out.append(f"Info/AlarmType {b!r} (sent {a!r})")
    return out


@case(
    "C-ALARM-01",
    "Platform side: an alarm is acknowledged (and passed up by a gateway)",
    grade="C",
    clause_2016="9.4",
    clause_2022="9.4",
    roles=TARGET_PLATFORM,
    editions=BOTH,
)
async def alarm_acknowledged(ctx: Context) -> None:
    """Steps: the first suite device sends ``Notify/Alarm`` (priority 1, method 5 video,
    AlarmType 2 motion, AlarmTime now) for its first channel by MESSAGE.

    Pass: 200 to the MESSAGE, then ``Response/Alarm`` from the target with the alarm's SN, the
    channel's ID and ``Result OK`` (§9.4). Below a gateway: the upper receives the alarm with
    the channel's ID and the same priority, method, time, description and type."""
    h = ctx.harness
    dev = h.devices[0]
    channel = dev.channel_id(1)
    platform = h.platform if h.role == "gateway" else None
    upper_before = len(platform.alarms) if platform is not None else 0
    answered = len(dev.alarm_responses)
    sent_at = datetime.now().replace(microsecond=0)
    resp = await dev.send_alarm(channel, priority=1, method=5, alarm_type=2,
                                description="移动侦测报警")  # fmt: skip
    sn = dev.sn
    sent = AlarmNotify(sn=sn, device_id=channel, alarm_priority=1, alarm_method=5,
                       alarm_description="移动侦测报警", info=AlarmInfo(alarm_type=2))  # fmt: skip
    ctx.step(f"Notify/Alarm SN {sn} for {channel}: {resp.status if resp else 'no answer'}")
    ctx.check(resp is not None and resp.status == 200, "the alarm MESSAGE was not answered 200",
              seen=resp.status if resp else "no final response")  # fmt: skip
    got = await until(lambda: len(dev.alarm_responses) > answered, 5.0)
    ctx.check(got, "no Response/Alarm from the platform within 5 s (§9.4)")
    ack = dev.alarm_responses[answered]
    ctx.expect_equal((ack.sn, ack.device_id, ack.result), (sn, channel, "OK"),
                     "Response/Alarm (SN, DeviceID, Result)")  # fmt: skip
    if platform is None:
        return
    ok = await until(lambda: len(platform.alarms) > upper_before, 5.0)
    ctx.check(ok, "the alarm did not reach the upper platform")
    seen = platform.alarms[upper_before]
    problems = _alarm_problems(seen, sent, channel)
    when = parse_gb_time(seen.alarm_time or "")
    if when is None or not GB_TIME.match(seen.alarm_time or ""):
        problems.append(f"AlarmTime {seen.alarm_time!r} is not yyyy-MM-ddTHH:mm:ss")
    elif abs((when - sent_at).total_seconds()) > 2:
        problems.append(f"AlarmTime {seen.alarm_time} is not the device's ({sent_at:%H:%M:%S})")
    ctx.check(not problems, "the alarm at the upper: " + "; ".join(problems))
    ctx.step(f"upper got the alarm for {seen.device_id}")


@case(
    "C-ALARM-02",
    "Device side: alarm subscription",
    grade="C",
    clause_2016="9.11",
    clause_2022="9.11",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def alarm_subscription(ctx: Context) -> None:
    """Steps: the suite's platform SUBSCRIBEs to the target's alarms (``Query/Alarm`` body,
    Expires 600); below a gateway a suite device then raises an alarm; finally the
    subscription is ended (Expires: 0 in the dialog).

    Pass: 200 to the SUBSCRIBE with a To tag (the dialog) and the granted Expires; below a
    gateway, a NOTIFY in that dialog (same Call-ID) carries the alarm with the channel's ID;
    the un-SUBSCRIBE gets 200."""
    h = ctx.harness
    platform = h.need_platform()
    sub = await platform.subscribe(h.lower_id, "Alarm", expires=600, timeout=10.0)
    ctx.step(f"SUBSCRIBE Alarm: {sub.status}, expires {sub.expires}")
    ctx.expect_equal(sub.status, 200, "the alarm SUBSCRIBE")
    try:
        ctx.check(bool(sub.remote_tag), "the 200 to SUBSCRIBE has no To tag (no dialog)")
        granted = sub.responses[0].get_header("Expires") if sub.responses else None
        ctx.check(granted is not None, "the 200 to SUBSCRIBE carries Expires (RFC 6665)")
        ctx.check(0 < sub.expires <= 600, "the granted Expires", expected="1..600",
                  seen=sub.expires)  # fmt: skip
        if h.role == "gateway":
            dev = h.devices[0]
            channel = dev.channel_id(1)
            before = sub.notifies
            await dev.send_alarm(channel, priority=2, method=5, alarm_type=2)
            ok = await until(lambda: sub.notifies > before, 5.0)
            ctx.check(ok, "no NOTIFY in the alarm subscription after a device's alarm")
            req, msg = next((r, m) for r, m in reversed(platform.notifies)
                            if r.call_id == sub.call_id)  # fmt: skip
            ctx.expect_equal(req.get_header("Event"), sub.event, "Event of the NOTIFY")
            state = (req.get_header("Subscription-State") or "").split(";")[0].strip().lower()
            ctx.expect_equal(state, "active", "Subscription-State of the NOTIFY")
            ctx.check(isinstance(msg, AlarmNotify), "the NOTIFY body is not Notify/Alarm",
                      seen=type(msg).__name__)  # fmt: skip
            assert isinstance(msg, AlarmNotify)
            ctx.expect_equal(msg.device_id, channel, "DeviceID of the alarm NOTIFY")
            ctx.step(f"NOTIFY with the alarm of {channel}")
    finally:
        await platform.unsubscribe(sub, timeout=10.0)
    ctx.expect_equal(sub.status, 200, "the un-SUBSCRIBE (Expires: 0)")


@case(
    "C-ALARM-03",
    "Device side: alarm reset (AlarmCmd)",
    grade="C",
    clause_2016="9.3, A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def alarm_reset(ctx: Context) -> None:
    """Steps: ``Control/DeviceControl`` with ``AlarmCmd ResetAlarm`` (in 2022 with ``Info``
    AlarmMethod 2, AlarmType 1) to the first video channel.

    Pass: 200, then ``Response/DeviceControl`` with our SN, the channel's ID and
    ``Result OK``. Below a gateway: the device got the reset (and its Info) for its channel."""
    h = ctx.harness
    channel = _channel(ctx)
    info = AlarmSelector(alarm_method="2", alarm_type="1") if h.edition_2022 else None
    below = h.device_for(channel) if h.role == "gateway" else None
    msg = DeviceControl(sn=0, device_id=channel, alarm_cmd="ResetAlarm", info=info)
    await control(ctx, msg, "AlarmCmd ResetAlarm")
    ctx.step("AlarmCmd ResetAlarm: Result OK")
    if below is not None:
        last = below[0].controls[-1]
        ctx.expect_equal((last.device_id, last.alarm_cmd), (below[1], "ResetAlarm"),
                         "the reset at the device")  # fmt: skip
        if info is not None:
            ctx.expect_equal(last.info, info, "Info of the reset at the device")
