"""Platform side, the platform acting: what a platform sends down when its user asks.

The suite is the devices below a platform target. The national self-test tool has the tester
work the platform's client (open a live view, turn a camera, play a recording back) while it
watches what reaches the device; these cases do the same through the run's operator
(:mod:`conformance.suite.operator`): each asks for an action, waits ``operator_timeout`` for
its effect at the suite's device, and judges every field the standard fixes. Without an
operator they are skipped.

The channel acted on is the first channel of the first suite device; the device is that NVR.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from conformance.peers.device import SimDevice
from conformance.peers.media_session import MediaSession, parse_subject
from conformance.suite.case import case
from conformance.suite.cases.common import (
    GB_TIME,
    fail_problems,
    offer_problems,
    ssrc_problems,
    until,
)
from conformance.suite.context import Context
from gateway.manscdp.errors import DecodeError
from gateway.manscdp.messages import (
    DeviceControl,
    DeviceInfoQuery,
    DeviceStatusQuery,
    Message,
    RecordInfoQuery,
)
from gateway.manscdp.ptz import decode_ptz

BOTH = ("2016", "2022")
PLATFORM = ("platform",)
ANSWER_WAIT = 5.0  # seconds for the platform to answer our Response MESSAGEs
# Long enough that a person can pause, resume and change speed before the file ends.
LONG_PLAYBACK_FRAMES = 25 * 600

T = TypeVar("T")


def _acted_on(ctx: Context) -> tuple[SimDevice, str]:
    h = ctx.harness
    if not h.devices:
        ctx.skip("the suite has no device below the target")
    dev: SimDevice = h.devices[0]
    return dev, dev.channel_id(1)


async def _next(
    ctx: Context, items: Sequence[T], start: int, want: Callable[[T], bool], what: str
) -> T:
    """The first item of ``items`` after index ``start`` that ``want`` accepts, waiting
    ``operator_timeout`` for it (the list grows as the device hears things)."""
    found: list[T] = []

    def seen() -> bool:
        found[:] = [x for x in items[start:] if want(x)]
        return bool(found)

    await ctx.wait_for(seen, ctx.operator_timeout, what)
    return found[0]


async def _answered(ctx: Context, dev: SimDevice, cmd: str, sn: int) -> None:
    """Every Response MESSAGE the device sent for (``cmd``, ``sn``) got a 200 from the target."""

    def done() -> bool:
        parts = [s for c, n, s in dev.answer_statuses if (c, n) == (cmd, sn)]
        return bool(parts) and all(parts)

    if not await until(done, ANSWER_WAIT):
        statuses = [s for c, n, s in dev.answer_statuses if (c, n) == (cmd, sn)]
        ctx.fail(
            f"the device's Response/{cmd} (SN {sn}) was not answered",
            expected="200 to each part",
            seen=statuses or "no Response sent",
        )
    bad = [s for c, n, s in dev.answer_statuses if (c, n) == (cmd, sn) and s != 200]
    ctx.check(not bad, f"the platform refused the device's Response/{cmd}", seen=bad)


def _control_problems(msg: DeviceControl, target: str) -> list[str]:
    out = []
    if msg.device_id != target:
        out.append(f"DeviceID {msg.device_id}, expected {target}")
    if msg.sn is None or msg.sn < 0:
        out.append(f"SN {msg.sn}")
    return out


# -- live view ----------------------------------------------------------------------------
def _invite_for(channel: str) -> Callable[[Any], bool]:
    return lambda req: (req.request_uri.user or "") == channel


def _session(dev: SimDevice, call_id: str) -> MediaSession | None:
    return dev.media_sessions.get(call_id)


def _subject_problems(value: str | None, channel: str, history: bool) -> list[str]:
    """Subject (2016 §9.2.2, 2022 Annex L): ``sender:serial,receiver:serial``, the sender the
    channel, the sender serial starting 0 for live and 1 for history."""
    parsed = parse_subject(value)
    if parsed is None:
        return [f"Subject {value!r} is not 'sender:serial,receiver:serial'"]
    (sender, serial), (receiver, _) = parsed
    out = []
    if sender != channel:
        out.append(f"Subject names sender {sender}, expected the channel {channel}")
    if not receiver:
        out.append("Subject names no receiver")
    if serial and serial[0] != ("1" if history else "0"):
        kind = "history" if history else "live"
        out.append(f"Subject sender serial {serial} should start {int(history)} for {kind}")
    return out


async def _media_invite(
    ctx: Context, dev: SimDevice, channel: str, before: int, kind: str
) -> MediaSession:
    """Wait for the platform's INVITE for ``channel`` and judge it; then for its ACK."""
    req = await _next(
        ctx, dev.invites, before, _invite_for(channel), f"the platform's INVITE for {channel}"
    )
    session = _session(dev, req.call_id)
    ctx.check(
        session is not None,
        "the device could not take the platform's INVITE",
        seen=req.start_line(),
    )
    assert session is not None
    offer = session.offer
    history = kind != "Play"
    ctx.step(
        f"INVITE {channel}: s={offer.session} {offer.proto} setup={offer.setup or '-'} "
        f"y={offer.ssrc or '-'} u={offer.uri or '-'} t={offer.start} {offer.stop}"
    )
    ctx.record_media(kind=kind, transport=offer.transport, ssrc=offer.ssrc or "")
    problems = offer_problems(offer, kind)
    problems += _subject_problems(req.get_header("Subject"), channel, history)
    problems += ssrc_problems(offer.ssrc, history=history, domain=ctx.options.target_domain or None)
    if history:
        if not offer.uri or offer.uri.split(":")[0] != channel:
            problems.append(f"u={offer.uri}: expected {channel}:<parameter>")
        if offer.start and offer.stop and offer.start >= offer.stop:
            problems.append(f"t={offer.start} {offer.stop}: start is not before end")
    fail_problems(ctx, f"the platform's {kind} INVITE", problems)
    await ctx.wait_for(
        lambda: session.acked or session.ended, ANSWER_WAIT, f"the ACK of the {kind} 200 OK"
    )
    ctx.check(session.acked, f"the {kind} dialog ended before the platform ACKed it")
    return session


async def _ended_by_platform(ctx: Context, session: MediaSession, what: str) -> None:
    await ctx.wait_for(lambda: session.ended, ctx.operator_timeout, f"the platform's BYE ({what})")
    ctx.expect_equal(session.ended_by, "remote", f"who ended the {session.kind} session")
    ctx.step(f"BYE from the platform ended the {session.kind} session")


# The platform's side of the media: RTP over UDP, TCP where the platform listens
# (``a=setup:passive``: the device connects), TCP where the platform connects.
_LIVE_TRANSPORTS = ("udp", "tcp-passive", "tcp-active")
_TRANSPORT_TEXT = {
    "udp": "RTP over UDP",
    "tcp-passive": "RTP over TCP, the platform listening (a=setup:passive)",
    "tcp-active": "RTP over TCP, the platform connecting (a=setup:active)",
}


def _live_case(n: int, transport: str) -> Callable[[Context], Any]:
    async def live_view(ctx: Context) -> None:
        if transport not in ctx.options.media_transports:
            ctx.skip(f"{transport} is not among the run's media transports")
        dev, _ = _acted_on(ctx)
        channel = dev.channel_id((n - 1) % max(1, dev.channel_count) + 1)
        before = len(dev.invites)
        await ctx.ask("live-start", channel, device=dev.device_id, transport=transport)
        session = await _media_invite(ctx, dev, channel, before, "Play")
        ctx.expect_equal(
            session.offer.transport, transport, "the media transport the platform offered"
        )
        sender = session.sender
        if sender is not None:
            await until(lambda: sender.packets_sent > 0 or session.ended, ANSWER_WAIT)
            ctx.record_media(packets_sent=sender.packets_sent, frames_sent=sender.frames_sent)
            ctx.step(f"the device sent {sender.packets_sent} RTP packets ({session.role})")
            ctx.check(
                sender.packets_sent > 0,
                f"no RTP could be sent ({_TRANSPORT_TEXT[transport]}: no connection?)",
            )
        await ctx.ask("live-stop", channel, device=dev.device_id)
        await _ended_by_platform(ctx, session, "closing the live view")

    live_view.__doc__ = f"""Steps: the operator opens the live view of suite channel {n} in the
        platform with {_TRANSPORT_TEXT[transport]}; the device answers the INVITE and streams;
        the operator closes the view.

        Pass: the INVITE's Request-URI is the channel; ``Subject`` is
        ``channel:0…,receiver:…``; the SDP has ``s=Play``, a ``c=`` address, ``m=video`` with
        ``a=recvonly`` and ``a=rtpmap:… PS/90000``, the asked transport, and ``y=`` with 10
        digits, first 0, digits 2–6 the digits 4–8 of the target's domain (§6.4); the
        platform ACKs the 200 and the RTP goes out (over TCP: the connection is made);
        closing sends BYE in that dialog."""
    live_view.__qualname__ = live_view.__name__ = f"platform_live_{transport.replace('-', '_')}"
    return live_view


for _n, _t in enumerate(_LIVE_TRANSPORTS, start=1):
    case(
        f"A-PLIVE-0{_n}",
        f"Platform side: live view opened and closed by the platform, {_t} [operator]",
        grade="A",
        clause_2016="9.2, Annexes F, L",
        clause_2022="9.2, Annexes D, G, L",
        roles=PLATFORM,
        editions=BOTH,
        media=True,
        operator=2,
    )(_live_case(_n, _t))


# -- PTZ ---------------------------------------------------------------------------------
_DIRECTIONS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("left", (-1, 0, 0)),
    ("right", (1, 0, 0)),
    ("up", (0, 1, 0)),
    ("down", (0, -1, 0)),
    ("zoom-in", (0, 0, 1)),
    ("zoom-out", (0, 0, -1)),
    ("stop", (0, 0, 0)),
)


def _is_stop(msg: DeviceControl) -> bool:
    """A PTZCmd whose instruction byte stops pan, tilt and zoom (a malformed one is not)."""
    try:
        return decode_ptz(msg.ptz_cmd or "").kind == "stop"
    except DecodeError:
        return False


@case(
    "A-PPTZ-01",
    "Platform side: PTZ in six directions, zoom and stop from the platform [operator]",
    grade="A",
    clause_2016="9.3, A.3",
    clause_2022="9.3, A.3",
    roles=PLATFORM,
    editions=BOTH,
    operator=len(_DIRECTIONS),
)
async def platform_turns_camera(ctx: Context) -> None:
    """Steps: the operator turns the suite device's first channel left, right, up and down,
    zooms in and out, and stops it, one at a time.

    Pass: each time a ``Control/DeviceControl`` with ``PTZCmd`` reaches the device for that
    channel (DeviceID = the channel's 20-digit ID); the PTZCmd is 8 bytes with A5, the check
    nibble and the checksum of bytes 1–7 right (A.3.1); its direction bits are the asked
    direction only (A.3.2), and ``stop`` is the all-zero command."""
    dev, channel = _acted_on(ctx)
    for name, (pan, tilt, zoom) in _DIRECTIONS:
        before = len(dev.controls)
        await ctx.ask("ptz", channel, direction=name, device=dev.device_id)
        # A client sends a move on press and a stop on release: the stop that ends the last
        # move may come after the next ask, so a move is looked for among non-stop commands.
        stop = name == "stop"

        def wanted(m: DeviceControl, stop: bool = stop) -> bool:
            return m.ptz_cmd is not None and _is_stop(m) == stop

        msg = await _next(ctx, dev.controls, before, wanted, f"a PTZCmd ({name}) for {channel}")
        fail_problems(ctx, f"the PTZ {name} command", _control_problems(msg, channel))
        text = msg.ptz_cmd or ""
        try:
            cmd = decode_ptz(text)
        except DecodeError as exc:
            ctx.fail(f"the PTZ {name} command is malformed: {exc}", seen=text)
        ctx.step(f"{name}: PTZCmd {text} (pan {cmd.pan}, tilt {cmd.tilt}, zoom {cmd.zoom})")
        if name == "stop":
            ctx.check(cmd.kind == "stop", "the stop command is not A5 0F 01 00 …", seen=text)
        else:
            seen = (cmd.pan, cmd.tilt, cmd.zoom)
            ctx.expect_equal(seen, (pan, tilt, zoom), f"PTZ {name}: direction (pan, tilt, zoom)")


# -- record control and search -------------------------------------------------------------
async def _control_cmd(
    ctx: Context,
    dev: SimDevice,
    action: str,
    target: str,
    field: str,
    value: str,
    owner_ok: bool = False,
) -> DeviceControl:
    """Ask for ``action``, wait for a DeviceControl carrying ``field``, check its value (any
    case), its DeviceID (``target``, or with ``owner_ok`` any ID of the device) and that the
    platform answered the device's Response."""
    before = len(dev.controls)
    await ctx.ask(action, target, device=dev.device_id)
    msg = await _next(
        ctx,
        dev.controls,
        before,
        lambda m: getattr(m, field) is not None,
        f"a DeviceControl with {value.split()[0]} for {target}",
    )
    seen = str(getattr(msg, field))
    ctx.step(f"{action}: DeviceControl {msg.device_id} {field}={seen} SN {msg.sn}")
    problems = [] if seen.lower() == value.lower() else [f"{field} {seen!r}, expected {value!r}"]
    if owner_ok and dev.owns(msg.device_id):
        problems += _control_problems(msg, msg.device_id)
    else:
        problems += _control_problems(msg, target)
    fail_problems(ctx, f"the platform's {action} command", problems)
    await _answered(ctx, dev, "DeviceControl", msg.sn)
    return msg


@case(
    "B-PREC-01",
    "Platform side: record control, start and stop, from the platform [operator]",
    grade="B",
    clause_2016="9.3, A.2.3",
    clause_2022="9.3, A.2.3",
    roles=PLATFORM,
    editions=BOTH,
    operator=2,
)
async def platform_record_control(ctx: Context) -> None:
    """Steps: the operator starts, then stops, manual recording of the suite device's first
    channel.

    Pass: a ``DeviceControl`` with ``RecordCmd`` ``Record``, then one with ``StopRecord``,
    reaches the device for that channel; the platform answers each of the device's
    ``Response/DeviceControl`` MESSAGEs with 200."""
    dev, channel = _acted_on(ctx)
    await _control_cmd(ctx, dev, "record-start", channel, "record_cmd", "Record")
    await _control_cmd(ctx, dev, "record-stop", channel, "record_cmd", "StopRecord")


def _window() -> tuple[str, str]:
    """The last hour (the suite's devices have recordings in any window)."""
    end = datetime.now().replace(microsecond=0)
    fmt = "%Y-%m-%dT%H:%M:%S"
    return (end - timedelta(hours=1)).strftime(fmt), end.strftime(fmt)


async def _query(
    ctx: Context, dev: SimDevice, before: int, kind: type[Message], target: str, what: str
) -> Message:
    msg = await _next(
        ctx,
        dev.queries,
        before,
        lambda q: isinstance(q, kind) and q.device_id == target,
        f"a {what} query for {target}",
    )
    ctx.step(f"{what} query for {msg.device_id}, SN {msg.sn}")
    ctx.check(msg.sn is not None and msg.sn >= 0, f"the {what} query has no SN", seen=msg.sn)
    return msg


@case(
    "B-PRECQ-01",
    "Platform side: record search (RecordInfo) from the platform [operator]",
    grade="B",
    clause_2016="9.7, A.2.4",
    clause_2022="9.7, A.2.4",
    roles=PLATFORM,
    editions=BOTH,
    operator=1,
)
async def platform_record_search(ctx: Context) -> None:
    """Steps: the operator searches the recordings of the suite device's first channel over
    the last hour; the device answers with its record files in several MESSAGEs.

    Pass: a ``Query/RecordInfo`` for the channel reaches the device with ``StartTime`` and
    ``EndTime`` in the GB time format (``YYYY-MM-DDThh:mm:ss``), the start before the end;
    the platform answers every part of the device's answer with 200."""
    dev, channel = _acted_on(ctx)
    start, end = _window()
    before = len(dev.queries)
    await ctx.ask("record-search", channel, start=start, end=end, device=dev.device_id)
    q = await _query(ctx, dev, before, RecordInfoQuery, channel, "RecordInfo")
    assert isinstance(q, RecordInfoQuery)
    problems = []
    for name, value in (("StartTime", q.start_time), ("EndTime", q.end_time)):
        if value is None or not GB_TIME.match(value):
            problems.append(f"{name} {value!r} is not YYYY-MM-DDThh:mm:ss")
    if not problems and (q.start_time or "") >= (q.end_time or ""):
        problems.append(f"StartTime {q.start_time} is not before EndTime {q.end_time}")
    fail_problems(ctx, "the RecordInfo query", problems)
    ctx.step(f"window {q.start_time} to {q.end_time}")
    await _answered(ctx, dev, "RecordInfo", q.sn)


# -- playback and download -----------------------------------------------------------------
async def _next_info(
    ctx: Context, session: MediaSession, before: int, method: str, what: str
) -> Any:
    rtsp = await _next(
        ctx, session.infos, before, lambda r: r.method == method, f"a MANSRTSP {method} ({what})"
    )
    ctx.step(f"INFO {method} CSeq {rtsp.cseq}" + (f" Scale {rtsp.scale}" if rtsp.scale else ""))
    return rtsp


@case(
    "B-PPLAY-01",
    "Platform side: playback with pause, resume, fast and slow from the platform [operator]",
    grade="B",
    clause_2016="9.8, Annex B",
    clause_2022="9.8, Annex B",
    roles=PLATFORM,
    editions=BOTH,
    media=True,
    operator=6,
)
async def platform_plays_back(ctx: Context) -> None:
    """Steps: the operator plays back the suite device's first channel over the last hour,
    pauses, resumes, plays at double speed, then at half speed, and stops.

    Pass: the INVITE has ``s=Playback``, ``u=<channel>:…``, ``t=`` with the start before the
    end, ``y=`` with first digit 1 and the target's domain digits, a Subject naming the
    channel; the platform ACKs; pausing sends an in-dialog INFO
    (``Application/MANSRTSP``) ``PAUSE``, resuming a ``PLAY``, the speed a ``PLAY`` with
    ``Scale: 2``, the slow one a ``PLAY`` with ``Scale: 0.5``, with CSeq increasing; stopping
    sends BYE in the dialog."""
    dev, channel = _acted_on(ctx)
    start, end = _window()
    kept = dev.playback_frames
    dev.playback_frames = max(kept, LONG_PLAYBACK_FRAMES)  # no end of file while people act
    try:
        before = len(dev.invites)
        await ctx.ask("playback-start", channel, start=start, end=end, device=dev.device_id)
        session = await _media_invite(ctx, dev, channel, before, "Playback")
    finally:
        dev.playback_frames = kept
    cseqs = []
    for action, method, extra in (
        ("playback-pause", "PAUSE", {}),
        ("playback-resume", "PLAY", {}),
        ("playback-scale", "PLAY", {"scale": 2}),
        ("playback-scale", "PLAY", {"scale": 0.5}),
    ):
        mark = len(session.infos)
        await ctx.ask(action, channel, device=dev.device_id, **extra)
        rtsp = await _next_info(ctx, session, mark, method, action)
        cseqs.append(rtsp.cseq)
        if extra:
            scale = float(extra["scale"])
            ctx.check(
                rtsp.scale is not None and abs(rtsp.scale - scale) < 1e-6,
                f"the speed change carries no Scale: {scale:g}",
                seen=rtsp.scale,
            )
    ctx.check(
        all(a < b for a, b in itertools.pairwise(cseqs)),
        "MANSRTSP CSeq must increase in the session",
        seen=cseqs,
    )
    await ctx.ask("playback-stop", channel, device=dev.device_id)
    await _ended_by_platform(ctx, session, "stopping the playback")


@case(
    "D-PDL-01",
    "Platform side: download of a recording from the platform [operator]",
    grade="D",
    clause_2016="9.9, Annex F",
    clause_2022="9.9, Annex G",
    roles=PLATFORM,
    editions=BOTH,
    media=True,
    operator=1,
)
async def platform_downloads(ctx: Context) -> None:
    """Steps: the operator downloads a recording of the suite device's first channel; the
    device sends the file (at the asked ``downloadspeed``) and then ``MediaStatus`` 121.

    Pass: the INVITE has ``s=Download``, ``u=<channel>:…``, ``t=`` start before end, ``y=``
    with first digit 1 and the target's domain digits, and ``a=downloadspeed`` (when present)
    a positive integer; the platform ACKs, answers the MediaStatus MESSAGE with 200 and then
    ends the session with BYE (reference §6.7)."""
    dev, channel = _acted_on(ctx)
    start, end = _window()
    before = len(dev.invites)
    await ctx.ask("download", channel, start=start, end=end, device=dev.device_id)
    session = await _media_invite(ctx, dev, channel, before, "Download")
    speed = session.offer.download_speed
    ctx.check(speed is None or speed > 0, "a=downloadspeed must be a positive integer", seen=speed)
    ctx.step(f"downloadspeed {speed or '(none: 1)'}")
    await ctx.wait_for(
        lambda: bool(session.media_status_answers) or session.ended,
        ctx.operator_timeout,
        "the end of the file (MediaStatus 121)",
    )
    ctx.check(
        session.media_status_answers[:1] == [200],
        "the platform did not answer MediaStatus 121 with 200",
        seen=session.media_status_answers or f"the session ended first ({session.ended_by})",
    )
    await _ended_by_platform(ctx, session, "after MediaStatus 121")


# -- device-level commands and queries -----------------------------------------------------
@case(
    "C-PGUARD-01",
    "Platform side: arm and disarm (GuardCmd) from the platform [operator]",
    grade="C",
    clause_2016="9.3, A.2.3",
    clause_2022="9.3, A.2.3",
    roles=PLATFORM,
    editions=BOTH,
    operator=2,
)
async def platform_guard(ctx: Context) -> None:
    """Steps: the operator arms, then disarms, the first suite device.

    Pass: a ``DeviceControl`` with ``GuardCmd`` ``SetGuard``, then ``ResetGuard``, reaches
    the device (DeviceID the device's or one of its alarm inputs' IDs); the platform answers
    each ``Response/DeviceControl`` with 200."""
    dev, _ = _acted_on(ctx)
    target = dev.device_id
    await _control_cmd(ctx, dev, "guard-set", target, "guard_cmd", "SetGuard", owner_ok=True)
    await _control_cmd(ctx, dev, "guard-reset", target, "guard_cmd", "ResetGuard", owner_ok=True)


@case(
    "C-PALARM-01",
    "Platform side: alarm reset (AlarmCmd) from the platform [operator]",
    grade="C",
    clause_2016="9.3, A.2.3",
    clause_2022="9.3, A.2.3",
    roles=PLATFORM,
    editions=BOTH,
    operator=1,
)
async def platform_alarm_reset(ctx: Context) -> None:
    """Steps: the operator resets the alarm of the first suite device.

    Pass: a ``DeviceControl`` with ``AlarmCmd`` ``ResetAlarm`` reaches the device (DeviceID
    the device's or one of its channels'); the platform answers the device's
    ``Response/DeviceControl`` with 200."""
    dev, _ = _acted_on(ctx)
    await _control_cmd(
        ctx, dev, "alarm-reset", dev.device_id, "alarm_cmd", "ResetAlarm", owner_ok=True
    )


@case(
    "D-PINFO-01",
    "Platform side: DeviceInfo and DeviceStatus queried by the platform [operator]",
    grade="D",
    clause_2016="9.5, A.2.4",
    clause_2022="9.5, A.2.4",
    roles=PLATFORM,
    editions=BOTH,
    operator=2,
)
async def platform_device_queries(ctx: Context) -> None:
    """Steps: the operator queries the first suite device's information, then its status.

    Pass: a ``Query/DeviceInfo``, then a ``Query/DeviceStatus``, with the device's ID reaches
    the device; the platform answers each ``Response`` MESSAGE with 200."""
    dev, _ = _acted_on(ctx)
    for action, kind, what in (
        ("device-info", DeviceInfoQuery, "DeviceInfo"),
        ("device-status", DeviceStatusQuery, "DeviceStatus"),
    ):
        before = len(dev.queries)
        await ctx.ask(action, dev.device_id, device=dev.device_id)
        q = await _query(ctx, dev, before, kind, dev.device_id, what)
        await _answered(ctx, dev, what, q.sn)


@case(
    "D-PBOOT-01",
    "Platform side: remote reboot (TeleBoot) from the platform [operator]",
    grade="D",
    clause_2016="9.3, A.2.3",
    clause_2022="9.3, A.2.3",
    roles=PLATFORM,
    editions=BOTH,
    operator=1,
)
async def platform_teleboot(ctx: Context) -> None:
    """Steps: the operator reboots the first suite device from the platform; the device
    restarts and registers again.

    Pass: a ``DeviceControl`` with ``TeleBoot`` ``Boot`` and the device's ID reaches the
    device (it has no Response, A.2.3); the device's new registration is accepted (200)."""
    dev, _ = _acted_on(ctx)
    before, boots = len(dev.controls), dev.reboots
    await ctx.ask("teleboot", dev.device_id, device=dev.device_id)
    msg = await _next(
        ctx,
        dev.controls,
        before,
        lambda m: m.tele_boot is not None,
        f"a TeleBoot for {dev.device_id}",
    )
    ctx.step(f"TeleBoot {msg.tele_boot} to {msg.device_id}")
    problems = _control_problems(msg, dev.device_id)
    if (msg.tele_boot or "").lower() != "boot":
        problems.append(f"TeleBoot {msg.tele_boot!r}, expected 'Boot'")
    fail_problems(ctx, "the platform's TeleBoot", problems)
    answers = len(dev.responses)
    await ctx.wait_for(
        lambda: dev.reboots > boots and len(dev.responses) > answers,
        ctx.operator_timeout,
        "the device's registration after the reboot",
    )
    await ctx.wait_for(lambda: dev.registered, ANSWER_WAIT, "the registration to be accepted")
    ctx.step("the device registered again after the reboot")
