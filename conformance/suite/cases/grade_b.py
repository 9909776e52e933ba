"""Grade B of the self-test: record control, record search, playback control.

GB/T 28181-2016 and -2022 §9.3 (RecordCmd), §9.7 (RecordInfo; multi-response Annex N/M),
§9.8 (playback; MANSRTSP Annex B, SDP Annex F/G).
"""

from __future__ import annotations

from typing import Any

from conformance.peers.mansrtsp import RtspError, parse_response
from conformance.suite.case import case
from conformance.suite.cases.common import (
    GB_TIME,
    answer_problems,
    control,
    end_call,
    epoch,
    fail_problems,
    frames,
    invite,
    multi_problems,
    parse_gb_time,
    ssrc_problems,
    today_window,
    until,
)
from conformance.suite.context import Context
from gateway.manscdp.messages import DeviceControl, RecordItem

BOTH = ("2016", "2022")
TARGET_DEVICE = ("device", "gateway")
RECORD_TYPES = ("time", "alarm", "manual", "all")


def _channel(ctx: Context) -> str:
    channel = ctx.harness.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    return str(channel)


@case(
    "B-REC-01",
    "Device side: record control, start and stop",
    grade="B",
    clause_2016="9.3, A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def record_control(ctx: Context) -> None:
    """Steps: ``Control/DeviceControl`` with ``RecordCmd Record`` to the first video channel,
    then ``RecordCmd StopRecord``.

    Pass: each is answered 200 and then by ``Response/DeviceControl`` with our SN, the
    channel's ID and ``Result OK``. Below a gateway: the device got both commands for its
    channel and recorded in between."""
    h = ctx.harness
    channel = _channel(ctx)
    below = h.device_for(channel) if h.role == "gateway" else None
    for cmd, recording in (("Record", True), ("StopRecord", False)):
        await control(ctx, DeviceControl(sn=0, device_id=channel, record_cmd=cmd), cmd)
        ctx.step(f"RecordCmd {cmd}: Result OK")
        if below is not None:
            dev, local = below
            ctx.expect_equal(dev.recording, recording, f"recording at the device after {cmd}")
            last = dev.controls[-1]
            ctx.expect_equal((last.device_id, last.record_cmd), (local, cmd),
                             "the command the device got")  # fmt: skip


def record_item_problems(item: RecordItem, start: str, end: str) -> list[str]:
    """A RecordInfo item (reference §3.6): DeviceID, times in the GB format, inside the window,
    a known Type, Secrecy 0/1, FileSize not negative."""
    out = []
    where = f"record {item.device_id} {item.start_time}"
    if not item.device_id:
        out.append(f"{where}: no DeviceID")
    times = []
    for name, value in (("StartTime", item.start_time), ("EndTime", item.end_time)):
        if value is None or not GB_TIME.match(value.strip()):
            out.append(f"{where}: {name} {value!r} is not yyyy-MM-ddTHH:mm:ss")
        else:
            times.append(parse_gb_time(value.strip()))
    if len(times) == 2 and None not in times:
        s, e = times
        assert s is not None and e is not None
        if s > e:
            out.append(f"{where}: StartTime after EndTime")
        ws, we = parse_gb_time(start), parse_gb_time(end)
        if ws is not None and we is not None and (e < ws or s > we):
            out.append(f"{where}: outside the queried window {start}..{end}")
    if item.type is not None and item.type.strip().lower() not in RECORD_TYPES:
        out.append(f"{where}: Type {item.type!r}")
    if item.secrecy is not None and item.secrecy not in (0, 1):
        out.append(f"{where}: Secrecy {item.secrecy}")
    if item.file_size is not None and item.file_size < 0:
        out.append(f"{where}: FileSize {item.file_size}")
    return out


async def record_search(ctx: Context, channel: str) -> tuple[list[RecordItem], Any]:
    """RecordInfo for today on ``channel``; fails the case on a broken answer."""
    h = ctx.harness
    start, end = today_window()
    res = await h.need_platform().record_info(h.lower_id, channel, start, end, timeout=10.0,
                                              idle=2.0)  # fmt: skip
    ctx.step(
        f"RecordInfo {start}..{end}: {len(res.responses)} MESSAGEs, SumNum {res.sum_num}, "
        f"{len(res.items)} records"
    )
    fail_problems(ctx, "the RecordInfo answer", multi_problems(res, "RecordList", channel))
    problems = [p for item in res.items for p in record_item_problems(item, start, end)]
    fail_problems(ctx, "record items", problems)
    return list(res.items), res


@case(
    "B-REC-02",
    "Device side: record search (RecordInfo), answered in parts",
    grade="B",
    clause_2016="9.7, Annex N",
    clause_2022="9.7, Annex M",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def record_info(ctx: Context) -> None:
    """Steps: ``Query/RecordInfo`` for the first video channel, today 00:00:00 to 23:59:59,
    Type all; the suite collects every Response MESSAGE with our SN.

    Pass: every part has our SN, the channel's ID and the same SumNum, ``RecordList Num``
    equal to its items, no record twice, SumNum records in all; every record has a DeviceID,
    Start/EndTime as yyyy-MM-ddTHH:mm:ss inside the window, a known Type. Below a gateway: the
    records are exactly the device's, field by field."""
    h = ctx.harness
    channel = _channel(ctx)
    items, _ = await record_search(ctx, channel)
    below = h.device_for(channel) if h.role == "gateway" else None
    if below is None:
        return
    dev, local = below
    start, end = today_window()
    from conformance.peers.catalog_gen import generate_records, parse_time

    s, e = parse_time(start), parse_time(end)
    assert s is not None and e is not None
    name = dev.item(local).name if dev.item(local) else local  # type: ignore[union-attr]
    sent = list(generate_records(local, name or local, s, e, dev.record_count, "time"))
    key = [(r.start_time, r.end_time) for r in sent]
    got = {(r.start_time, r.end_time): r for r in items}
    ctx.expect_equal(sorted(got), sorted(key), "records at the upper (start, end)")
    for r in sent:
        seen = got[(r.start_time, r.end_time)]
        for field in ("name", "file_path", "address", "secrecy", "type", "file_size"):
            ctx.expect_equal(getattr(seen, field), getattr(r, field),
                             f"record {r.start_time}: {field}")  # fmt: skip
        ctx.expect_equal(seen.device_id, channel, f"record {r.start_time}: DeviceID")


@case(
    "B-PLAY-01",
    "Device side: playback with pause, resume, fast and slow",
    grade="B",
    clause_2016="9.8, Annex B",
    clause_2022="9.8, Annex B",
    roles=TARGET_DEVICE,
    editions=BOTH,
    media=True,
)
async def playback(ctx: Context) -> None:
    """Steps: RecordInfo finds today's first record; the suite INVITEs it (``s=Playback``,
    ``u=channel:0``, ``t=`` start and end as UNIX seconds, a history ``y=``), decodes the
    stream, then sends MANSRTSP INFOs in the dialog: PAUSE, PLAY ``Range: npt=now-`` (resume),
    PLAY ``Scale: 2.0`` (fast), PLAY ``Scale: 0.5`` (slow); then BYE.

    Pass: 200 with ``s=Playback`` and our ``y=`` (first digit 1) echoed; frames decode; each
    INFO gets 200 whose body is ``RTSP/1.0 200`` with our CSeq; while paused no frames come;
    after resuming they come again. Below a gateway: its INVITE to the device is a history one
    (``y=`` starting 1, Subject serial starting 1, ``t=`` and ``u=`` kept) and each INFO reaches
    the device."""
    h = ctx.harness
    channel = _channel(ctx)
    items, _ = await record_search(ctx, channel)
    if not items:
        ctx.skip("no record today to play back")
    rec = items[0]
    start, stop = epoch(rec.start_time or ""), epoch(rec.end_time or "")
    transport = ctx.options.media_transports[0]
    below = h.device_for(channel) if h.role == "gateway" else None
    before = len(below[0].invites) if below else 0
    call = await invite(ctx, channel, kind="Playback", start=start, stop=stop,
                        transport=transport)  # fmt: skip
    try:
        ctx.step(f"INVITE Playback {rec.start_time}..{rec.end_time}: 200, y={call.ssrc}")
        fail_problems(ctx, "the answer", answer_problems(call, "Playback"))
        fail_problems(ctx, "the answer's y=", ssrc_problems(call.ssrc, history=True, domain=None))
        got = await frames(ctx, call, 10, "playback")
        session = None
        if below is not None:
            from conformance.suite.cases.grade_a import _check_device_leg

            _check_device_leg(ctx, below[0], below[1], before, "Playback")
            session = list(below[0].media_sessions.values())[-1]
            ctx.expect_equal((session.offer.start, session.offer.stop), (start, stop),
                             "t= at the device")  # fmt: skip
            ctx.check(
                (session.offer.uri or "").startswith(f"{below[1]}:"),
                "u= at the device names the device's own channel",
                expected=f"{below[1]}:<type>",
                seen=session.offer.uri,
            )
        r = call.receiver

        async def rtsp(what: str, send: Any) -> None:
            status, body = await send()
            try:
                answer = parse_response(body.encode()) if body.strip() else None
            except RtspError:
                answer = None
            ctx.step(f"{what}: INFO {status}, {body.splitlines()[0] if body else '(no body)'}")
            ctx.expect_equal(status, 200, f"{what}: the INFO")
            ctx.check(answer is not None and answer.status == 200,
                      f"{what}: the MANSRTSP answer", expected="RTSP/1.0 200 OK",
                      seen=body[:60])  # fmt: skip
            assert answer is not None
            ctx.expect_equal(answer.cseq, call.rtsp_cseq, f"{what}: RTSP CSeq of the answer")

        await rtsp("PAUSE", call.pause)
        await until(lambda: False, 0.4)  # what was in flight arrives
        paused_at = r.frames
        await until(lambda: False, 0.6)
        ctx.check(r.frames - paused_at <= 1, "frames kept coming while paused",
                  seen=f"{r.frames - paused_at} frames in 0.6 s")  # fmt: skip
        if session is not None:
            ctx.check(bool(session.sender and session.sender.paused), "the device did not pause")
        await rtsp("PLAY npt=now- (resume)", lambda: call.play(range="now"))
        resumed = await until(lambda: r.frames > paused_at + 5, 5.0)
        ctx.check(resumed, "no frames after resuming", seen=r.frames - paused_at)
        for scale in (2.0, 0.5):
            await rtsp(f"PLAY Scale {scale}", lambda s=scale: call.play(scale=s))
            if session is not None and session.sender is not None:
                ok = await until(lambda s=scale: session.sender.scale == s, 3.0)
                ctx.check(ok, f"the device did not take Scale {scale}")
        ctx.record_media(frames_decoded=call.receiver.decoded, ssrc=call.ssrc,
                         transport=transport, first_frames=got)  # fmt: skip
        if session is not None:
            kinds = [i.method for i in session.infos]
            ctx.expect_equal(kinds, ["PAUSE", "PLAY", "PLAY", "PLAY"], "INFOs at the device")
    finally:
        await end_call(call)
