"""Grade D of the self-test: device information, device status, download, remote reboot.

GB/T 28181-2016 and -2022 §9.5 (DeviceInfo, DeviceStatus queries), §9.9 (download; SDP
``a=downloadspeed``, ``a=filesize``, MediaStatus 121), §9.3 (TeleBoot).
"""

from __future__ import annotations

import time

from conformance.suite.case import case
from conformance.suite.cases.common import (
    GB_TIME,
    answer_problems,
    control,
    end_call,
    epoch,
    fail_problems,
    invite,
    query_one,
    ssrc_problems,
    until,
)
from conformance.suite.context import Context
from gateway.manscdp.messages import (
    DeviceControl,
    DeviceInfoQuery,
    DeviceInfoResponse,
    DeviceStatusQuery,
    DeviceStatusResponse,
)

BOTH = ("2016", "2022")
TARGET_DEVICE = ("device", "gateway")


@case(
    "D-INFO-01",
    "Device side: DeviceInfo",
    grade="D",
    clause_2016="9.5, A.2",
    clause_2022="9.5, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_info(ctx: Context) -> None:
    """Steps: ``Query/DeviceInfo`` for the target's ID; below a gateway also for a suite
    device's ID (the gateway forwards it).

    Pass: 200, then ``Response/DeviceInfo`` with our SN, the queried ID, ``Result OK``, and
    ``Channel`` a number when present. Forwarded: DeviceName, Manufacturer, Model, Firmware
    and Channel are the device's own."""
    h = ctx.harness
    answer, _ = await query_one(ctx, DeviceInfoQuery(sn=0, device_id=h.lower_id), "DeviceInfo")
    assert isinstance(answer, DeviceInfoResponse)
    ctx.step(f"DeviceInfo: {answer.manufacturer} {answer.model} {answer.firmware}, "
             f"{answer.channel} channels")  # fmt: skip
    ctx.expect_equal(answer.result, "OK", "Result")
    if answer.channel is not None:
        ctx.check(answer.channel >= 0, "Channel is negative", seen=answer.channel)
    if h.role != "gateway":
        return
    dev = h.devices[0]
    fwd, _ = await query_one(ctx, DeviceInfoQuery(sn=0, device_id=dev.device_id),
                             "DeviceInfo of a device below")  # fmt: skip
    assert isinstance(fwd, DeviceInfoResponse)
    assert dev.basic_param is not None
    want = (dev.basic_param.name or dev.name, dev.manufacturer, dev.model, dev.firmware,
            dev.channel_count, "OK")  # fmt: skip
    seen = (fwd.device_name, fwd.manufacturer, fwd.model, fwd.firmware, fwd.channel, fwd.result)
    ctx.expect_equal(seen, want, "forwarded DeviceInfo (name, manufacturer, model, firmware, "
                     "channels, result)")  # fmt: skip


def _status_problems(answer: DeviceStatusResponse) -> list[str]:
    out = []
    if answer.result != "OK":
        out.append(f"Result {answer.result!r}")
    if answer.online not in ("ONLINE", "OFFLINE"):
        out.append(f"Online {answer.online!r} (ONLINE or OFFLINE)")
    if answer.status not in ("OK", "ERROR"):
        out.append(f"Status {answer.status!r} (OK or ERROR)")
    for name in ("encode", "record"):
        value = getattr(answer, name)
        if value is not None and value not in ("ON", "OFF"):
            out.append(f"{name.title()} {value!r} (ON or OFF)")
    if answer.device_time is not None and not GB_TIME.match(answer.device_time.strip()):
        out.append(f"DeviceTime {answer.device_time!r} is not yyyy-MM-ddTHH:mm:ss")
    for item in answer.alarm_status:
        if item.duty_status not in ("ONDUTY", "OFFDUTY", "ALARM"):
            out.append(f"DutyStatus {item.duty_status!r} of {item.device_id}")
    return out


@case(
    "D-STATUS-01",
    "Device side: DeviceStatus",
    grade="D",
    clause_2016="9.5, A.2",
    clause_2022="9.5, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def device_status(ctx: Context) -> None:
    """Steps: ``Query/DeviceStatus`` for the target's ID; below a gateway also for a suite
    device's ID.

    Pass: 200, then ``Response/DeviceStatus`` with our SN and the queried ID: Result OK,
    Online ONLINE/OFFLINE, Status OK/ERROR, Encode and Record ON/OFF and DeviceTime
    yyyy-MM-ddTHH:mm:ss when present, DutyStatus ONDUTY/OFFDUTY/ALARM. Forwarded: the device
    says ONLINE and its Record state."""
    h = ctx.harness
    answer, _ = await query_one(ctx, DeviceStatusQuery(sn=0, device_id=h.lower_id),
                                "DeviceStatus")  # fmt: skip
    assert isinstance(answer, DeviceStatusResponse)
    ctx.step(f"DeviceStatus: {answer.online} {answer.status} record={answer.record}")
    fail_problems(ctx, "DeviceStatus", _status_problems(answer))
    if h.role != "gateway":
        return
    dev = h.devices[0]
    fwd, _ = await query_one(ctx, DeviceStatusQuery(sn=0, device_id=dev.device_id),
                             "DeviceStatus of a device below")  # fmt: skip
    assert isinstance(fwd, DeviceStatusResponse)
    fail_problems(ctx, "forwarded DeviceStatus", _status_problems(fwd))
    ctx.expect_equal((fwd.online, fwd.record), ("ONLINE", "ON" if dev.recording else "OFF"),
                     "forwarded DeviceStatus (Online, Record)")  # fmt: skip


@case(
    "D-DL-01",
    "Device side: download of a recording",
    grade="D",
    clause_2016="9.9, Annex F",
    clause_2022="9.9, Annex G",
    roles=TARGET_DEVICE,
    editions=BOTH,
    media=True,
)
async def download(ctx: Context) -> None:
    """Steps: RecordInfo finds today's first record; the suite INVITEs it with
    ``s=Download``, ``a=downloadspeed:4``, a history ``y=``, over TCP when the run allows
    (the usual transport for downloads), receives the PS stream until the target says the
    file ended, then BYEs.

    Pass: 200 with ``s=Download`` and our ``y=`` (first digit 1) echoed, ``a=filesize`` a
    number when given; PS data arrives; an in-dialog ``MESSAGE`` ``Notify/MediaStatus``
    ``NotifyType 121`` ends the file (the Call-ID of our INVITE). Below a gateway: the device
    got the download speed, and the file size it announced is relayed."""
    from conformance.suite.cases.grade_b import record_search

    h = ctx.harness
    channel = h.first_channel()
    if channel is None:
        ctx.skip("the target lists no video channel")
    items, _ = await record_search(ctx, channel)
    if not items:
        ctx.skip("no record today to download")
    rec = items[0]
    transports = ctx.options.media_transports
    transport = "tcp-passive" if "tcp-passive" in transports else transports[0]
    below = h.device_for(channel) if h.role == "gateway" else None
    call = await invite(ctx, channel, kind="Download", start=epoch(rec.start_time or ""),
                        stop=epoch(rec.end_time or ""), download_speed=4,
                        transport=transport)  # fmt: skip
    try:
        answer = call.answer
        ctx.step(f"INVITE Download at 4x over {transport}: 200, y={call.ssrc}, "
                 f"filesize={answer.file_size if answer else None}")  # fmt: skip
        fail_problems(ctx, "the answer", answer_problems(call, "Download"))
        fail_problems(ctx, "the answer's y=", ssrc_problems(call.ssrc, history=True, domain=None))
        limit = max(5.0, ctx.options.case_timeout - 8)
        t0 = time.monotonic()
        ended = await until(lambda: 121 in call.media_status, limit)
        r = call.receiver
        ctx.record_media(frames_decoded=r.decoded, ps_frames=r.frames, bytes=r.bytes,
                         ssrc=call.ssrc, transport=transport, file_size=answer.file_size
                         if answer else None)  # fmt: skip
        ctx.check(r.frames > 0, "no PS data arrived", seen=f"{r.packets} RTP packets")
        ctx.check(ended, f"no MediaStatus 121 in the dialog within {limit:g} s "
                  f"({r.frames} PS frames came)")  # fmt: skip
        ctx.step(f"MediaStatus 121 after {time.monotonic() - t0:.1f} s, {r.frames} PS frames")
        if below is not None:
            session = list(below[0].media_sessions.values())[-1]
            ctx.expect_equal(session.offer.download_speed, 4, "a=downloadspeed at the device")
            if session.answer is not None and answer is not None:
                ctx.expect_equal(answer.file_size, session.answer.file_size,
                                 "a=filesize relayed from the device")  # fmt: skip
    finally:
        await end_call(call)


@case(
    "D-BOOT-01",
    "Device side: remote reboot (TeleBoot) and registration after it",
    grade="D",
    clause_2016="9.3, A.2",
    clause_2022="9.3, A.2",
    roles=TARGET_DEVICE,
    editions=BOTH,
)
async def teleboot(ctx: Context) -> None:
    """Steps: ``Control/DeviceControl`` with ``TeleBoot Boot`` to the target (device role) or,
    below a gateway, to the last suite device's ID; then the suite waits for the rebooted
    device to register again.

    Pass: 200 (TeleBoot has no application answer); a new registration follows within the
    register timeout (device role: a REGISTER of the target after the command, accepted).
    Below a gateway: the device received TeleBoot, registered again, and the upper sees it ON
    again."""
    h = ctx.harness
    if h.role == "gateway":
        dev = h.devices[-1]
        reboots = dev.reboots
        await control(ctx, DeviceControl(sn=0, device_id=dev.device_id, tele_boot="Boot"),
                      "TeleBoot")  # fmt: skip
        ok = await until(lambda: dev.reboots > reboots and dev.registered, 10.0)
        ctx.check(ok, "the device below did not get TeleBoot (or did not come back)")
        ctx.step(f"{dev.device_id} rebooted and registered again")
        from conformance.suite.cases.grade_a import _wait_status

        await _wait_status(ctx, dev.device_id, [dev.device_id, *dev.channel_ids()], "ON",
                           min(10.0, ctx.options.case_timeout / 3))  # fmt: skip
        return
    t0 = time.monotonic()
    await control(ctx, DeviceControl(sn=0, device_id=h.lower_id, tele_boot="Boot"), "TeleBoot")
    ctx.step("TeleBoot: 200; waiting for the device to register again")
    limit = min(ctx.options.register_timeout, ctx.options.case_timeout - 2)
    await ctx.wait_for(
        lambda: any(e[0] > t0 and e[2].status == 200 for e in h.registers_from(h.lower_id)),
        limit,
        "the rebooted device to register again",
    )
    await h.refresh_channels()


@case(
    "D-BCAST-01",
    "Device side: voice broadcast",
    grade="D",
    clause_2016="9.12",
    clause_2022="9.12",
    roles=TARGET_DEVICE,
    editions=BOTH,
    media=True,
)
async def voice_broadcast(ctx: Context) -> None:
    """Steps: the suite's platform sends ``Notify/Broadcast`` (SourceID = the platform,
    TargetID = the target's first voice output, type 137) and waits for the target's INVITE,
    which it answers ``a=sendonly`` with PCMA audio; then BYE.

    Pass: ``Response/Broadcast`` with our SN and ``Result OK``; an INVITE follows to the
    platform's ID with ``Subject: <source>:<serial>,<target>:<serial>`` and an SDP offer of
    ``m=audio`` ``a=recvonly``; our ACKed answer starts the audio. Below a gateway: the device's
    voice output receives the audio. Skipped when the catalog lists no voice output."""
    from conformance.peers.platform import RequestFailed
    from conformance.suite.cases.common import until

    h = ctx.harness
    outputs = [i.device_id for i in h.catalog_items() if i.device_id[10:13] == "137"]
    if not outputs:
        ctx.skip("the target's catalog lists no voice output (type 137)")
    target = outputs[0]
    platform = h.need_platform()
    try:
        call = await platform.broadcast(h.lower_id, target, transport="any", timeout=10.0)
    except RequestFailed as exc:
        ctx.fail(f"broadcast to {target} failed: {exc}")
    try:
        offer, req = call.offer, call.request
        subject = req.get_header("Subject") or ""
        ctx.step(f"INVITE from the target for {target}: {offer.media} {offer.proto}, "
                 f"Subject {subject}")  # fmt: skip
        problems = []
        if req.request_uri.user != ctx.options.suite_platform_id:
            problems.append(f"Request-URI {req.uri} does not name the source (the platform)")
        if offer.media != "audio":
            problems.append(f"m={offer.media}, expected audio")
        if offer.direction != "recvonly":
            problems.append(f"a={offer.direction}, expected a=recvonly")
        parts = [p.split(":") for p in subject.split(",")]
        if len(parts) != 2 or any(len(p) != 2 for p in parts):
            problems.append(f"Subject {subject!r} is not <source>:<serial>,<target>:<serial>")
        elif parts[0][0] != ctx.options.suite_platform_id:
            problems.append(f"Subject names {parts[0][0]} as the source")
        elif parts[1][0] != target:
            problems.append(f"Subject names {parts[1][0]} as the target, not {target}")
        fail_problems(ctx, "the broadcast INVITE", problems)
        acked = await until(lambda: call.acked, 5.0)
        ctx.check(acked, "our 200 OK to the broadcast INVITE was not ACKed")
        below = h.device_for(target) if h.role == "gateway" else None
        if below is not None:
            dev = below[0]
            ok = await until(
                lambda: any(s.packets >= 20 for s in dev.broadcast_sessions.values()), 5.0
            )
            ctx.check(ok, "the device's voice output received no audio through the gateway")
        else:
            ok = await until(lambda: call.packets_sent >= 20, 5.0)
            ctx.check(ok, "no audio flowed to the device after the ACK")
        ctx.record_media(audio_packets_sent=call.packets_sent, transport=call.transport)
    finally:
        await call.bye(timeout=5.0)
