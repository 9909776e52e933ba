"""Device side, the device acting on its own: unregistration and alarm reports.

The suite is the platform a device target registers to. A device unregisters when someone
turns its GB/T 28181 access off, and reports an alarm when an alarm input fires; the suite
cannot make either happen over the wire, so these cases ask the run's operator
(:mod:`conformance.suite.operator`) and judge what arrives. Without an operator they are
skipped.
"""

from __future__ import annotations

from conformance.suite.case import case
from conformance.suite.cases.common import GB_TIME, clock_problem, fail_problems, parse_gb_time
from conformance.suite.context import Context
from gateway.manscdp.gbid import is_gb_id
from gateway.manscdp.messages import AlarmNotify
from gateway.sip.message import Request, Response

BOTH = ("2016", "2022")
DEVICE = ("device",)
ACK_WAIT = 5.0  # seconds for the device to answer the platform's Response/Alarm


def _expires(req: Request) -> int | None:
    contacts = req.contacts
    if req.contact_star:
        return 0
    if contacts:
        param = contacts[0].param("expires")
        if param is not None and param.isdigit():
            return int(param)
    return req.expires


@case(
    "A-REG-08",
    "Device side: unregistration, and registration again [operator]",
    grade="A",
    clause_2016="9.1.2.2",
    clause_2022="9.1.2.2",
    roles=DEVICE,
    editions=BOTH,
    operator=2,
)
async def device_unregisters(ctx: Context) -> None:
    """Steps: the operator makes the device unregister (turns its GB/T 28181 access off),
    then register again.

    Pass: a REGISTER with ``Expires: 0`` (or ``;expires=0`` on its Contact) from the device's
    ID (From and To) comes and is accepted (200) after digest authentication: the accepted
    REGISTER carries ``Authorization`` with the device's ID as username. The suite's platform
    then counts the device unregistered. A new registration (Expires > 0) follows the second
    request and is accepted."""
    h = ctx.harness
    platform = h.need_platform()
    target = h.lower_id
    ctx.check(h.registered(), "the device is not registered at the start of the case")
    before = len(platform.register_answers)

    def answers_since() -> list[tuple[Request, Response]]:
        return [
            (r, s)
            for _, r, s in list(platform.register_answers)[before:]
            if r.from_.uri.user == target
        ]

    def unregistered() -> bool:
        return any(_expires(r) == 0 and s.status == 200 for r, s in answers_since())

    await ctx.ask("unregister", target)
    await ctx.wait_for(unregistered, ctx.operator_timeout, "an accepted REGISTER with Expires 0")
    flow = [(r, s) for r, s in answers_since() if _expires(r) == 0]
    accepted = next(r for r, s in flow if s.status == 200)
    ctx.step("REGISTER Expires 0: " + " -> ".join(str(s.status) for _, s in flow))
    problems = []
    if accepted.to.uri.user != target:
        problems.append(f"To names {accepted.to.uri.user}, expected {target}")
    auth = accepted.auth_params("Authorization")
    if auth is None:
        problems.append("the accepted un-REGISTER has no Authorization (digest)")
    else:
        username = auth[1].get("username")
        if username != target:
            problems.append(f"digest username {username}, expected {target}")
    fail_problems(ctx, "the un-REGISTER", problems)
    ctx.check(not h.registered(), "the suite's platform still counts the device registered")
    mark = len(platform.register_answers)
    await ctx.ask("register", target)

    def registered_again() -> bool:
        return h.registered() and any(
            r.from_.uri.user == target and (_expires(r) or 0) > 0 and s.status == 200
            for _, r, s in list(platform.register_answers)[mark:]
        )

    await ctx.wait_for(registered_again, ctx.operator_timeout, "the device's registration again")
    ctx.step("the device registered again")


def alarm_problems(msg: AlarmNotify, edition: str) -> list[str]:
    """A ``Notify/Alarm`` (§9.4, A.2.5): 20-digit DeviceID, AlarmPriority 1–4, AlarmMethod
    1–7, AlarmTime in the GB format and about now, a SN; 2022 Info/AlarmType when present is
    a number."""
    out = []
    if not is_gb_id(msg.device_id or ""):
        out.append(f"DeviceID {msg.device_id!r} is not a 20-digit ID")
    if msg.sn is None or msg.sn < 0:
        out.append(f"SN {msg.sn!r}")
    if msg.alarm_priority is None or not 1 <= int(msg.alarm_priority) <= 4:
        out.append(f"AlarmPriority {msg.alarm_priority!r}, expected 1-4")
    method = str(msg.alarm_method) if msg.alarm_method is not None else ""
    if not method.isdigit() or not 1 <= int(method) <= 7:
        out.append(f"AlarmMethod {msg.alarm_method!r}, expected one of 1-7")
    when = msg.alarm_time or ""
    if not GB_TIME.match(when):
        out.append(f"AlarmTime {msg.alarm_time!r} is not YYYY-MM-DDThh:mm:ss")
    else:
        parsed = parse_gb_time(when)
        problem = clock_problem(parsed) if parsed is not None else "unreadable"
        if problem:
            out.append(f"AlarmTime {when}: {problem}")
    alarm_type = msg.info.alarm_type if msg.info is not None else None
    if edition == "2022" and alarm_type is not None and not str(alarm_type).isdigit():
        out.append(f"Info/AlarmType {alarm_type!r} is not a number")
    return out


@case(
    "C-ALARM-04",
    "Device side: an alarm is reported and the acknowledgement taken [operator]",
    grade="C",
    clause_2016="9.4, A.2.5",
    clause_2022="9.4, A.2.5",
    roles=DEVICE,
    editions=BOTH,
    operator=1,
)
async def device_reports_alarm(ctx: Context) -> None:
    """Steps: the operator triggers an alarm at the device (an alarm input, motion
    detection); the suite's platform answers the ``Notify/Alarm`` with 200 and then sends
    ``Response/Alarm`` (Result OK, the alarm's SN).

    Pass: a ``Notify/Alarm`` comes from the device (by MESSAGE, or by NOTIFY in an alarm
    subscription) with a 20-digit DeviceID of the device or of an item of its catalog,
    AlarmPriority 1–4, AlarmMethod 1–7, AlarmTime in the GB format within the clock tolerance
    of now; the device answers the platform's ``Response/Alarm`` with 200."""
    h = ctx.harness
    platform = h.need_platform()
    target = h.lower_id
    before = len(platform.alarms)
    await ctx.ask("alarm", target)
    await ctx.wait_for(
        lambda: len(platform.alarms) > before, ctx.operator_timeout, "the device's Notify/Alarm"
    )
    msg = platform.alarms[before]
    ctx.step(
        f"Notify/Alarm {msg.device_id} priority {msg.alarm_priority} method "
        f"{msg.alarm_method} time {msg.alarm_time} SN {msg.sn}"
    )
    problems = alarm_problems(msg, ctx.options.edition)
    known = {i.device_id for i in h.catalog_items()} | {target}
    if msg.device_id not in known:
        problems.append(f"DeviceID {msg.device_id} is neither the device nor in its catalog")
    fail_problems(ctx, "the device's alarm", problems)
    # The suite's platform logs the device's answer to its Response/Alarm as an event line.
    mark = f"alarm {msg.device_id} sn={msg.sn} acknowledged: "

    def acknowledged() -> str | None:
        line = next((e for e in reversed(h.platform_events) if mark in e), None)
        return line.rpartition(": ")[2] if line is not None else None

    await ctx.wait_for(
        lambda: acknowledged() is not None, ACK_WAIT, "the device's answer to Response/Alarm"
    )
    ctx.expect_equal(acknowledged(), "200", "the device's answer to the platform's Response/Alarm")
    ctx.step("Response/Alarm answered 200")
