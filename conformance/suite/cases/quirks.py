"""Robustness probes for known quirks: provoke what the trace alone cannot show.

Most quirks of field equipment show in the messages of any run and are reported by
:mod:`conformance.suite.findings` as findings. Two need the suite to provoke them, and these
cases do that. What they see is a finding, not a verdict: a case passes whatever quirk it finds
(it fails only when the target stops working), so a run's pass/fail stays about the standard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from conformance.suite.case import case
from conformance.suite.cases.common import query_one, until
from conformance.suite.context import Context
from conformance.suite.findings import split_stream
from conformance.suite.trace import TraceEntry
from gateway.manscdp.messages import DeviceInfoQuery
from gateway.sip.transport import Peer

BOTH = ("2016", "2022")
PIPELINE_WAIT = 5.0  # seconds for the answers to two pipelined requests


def _device_info_request(
    ctx: Context, peer: Peer, call_id: str, sn: int, host: str, port: int
) -> bytes:
    o = ctx.options
    h = ctx.harness
    body = (
        '<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n<CmdType>DeviceInfo</CmdType>\r\n'
        f"<SN>{sn}</SN>\r\n<DeviceID>{h.lower_id}</DeviceID>\r\n</Query>\r\n"
    ).encode()
    branch = "z9hG4bK" + os.urandom(6).hex()
    lines = [
        f"MESSAGE sip:{h.lower_id}@{peer.host}:{peer.port} SIP/2.0",
        f"Via: SIP/2.0/TCP {host}:{port};rport;branch={branch}",
        f"From: <sip:{o.suite_platform_id}@{o.suite_domain}>;tag={os.urandom(4).hex()}",
        f"To: <sip:{h.lower_id}@{o.suite_domain}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 MESSAGE",
        "Max-Forwards: 70",
        "Content-Type: Application/MANSCDP+xml",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _answered(entries: list[TraceEntry], call_id: str) -> bool:
    needle = f"Call-ID: {call_id}".encode()
    return any(
        e.direction == "received" and e.data.startswith(b"SIP/2.0 ") and needle in e.data
        for e in entries
    )


@case(
    "R-QRK-01",
    "Two requests in one TCP segment: both are answered",
    grade="R",
    clause_2016="18.3 of RFC 3261",
    clause_2022="18.3 of RFC 3261",
    roles=("device", "gateway"),
    editions=BOTH,
)
async def pipelined_requests(ctx: Context) -> None:
    """Steps: the suite writes two DeviceInfo query MESSAGEs in one send (one TCP segment) to
    the target: over the TCP connection it registered on, or, when it talks to the suite over
    UDP, over a TCP connection the case opens to the address it registers from (a target that
    takes none is skipped, saying so); then it waits for their responses.

    Finding ``drops-pipelined-request`` when only the first is answered (RFC 3261 §18.3 cuts a
    stream at each Content-Length, so both should be). Pass unless neither is answered and the
    target no longer answers a normal query afterwards."""
    h = ctx.harness
    lower = h.platform.lowers.get(h.lower_id) if h.platform is not None else None
    peer = lower.peer if lower is not None else h.target_peer  # where the target registered from
    ids = [f"pipelined-{i}-{os.urandom(4).hex()}" for i in (1, 2)]
    sns = [9100 + int.from_bytes(os.urandom(2), "big") % 800 + i for i in (0, 1)]
    if peer.transport == "tcp":
        answered = await _over_the_registration(ctx, peer, ids, sns)
    else:
        answered = await _over_a_connection_of_its_own(ctx, peer, ids, sns)
    ctx.step(f"answered: first {answered[0]}, second {answered[1]}")
    if answered[0] and not answered[1]:
        ctx.finding(
            "drops-pipelined-request",
            "of two MESSAGEs written in one TCP segment only the first was answered",
        )
    if not any(answered):
        # Neither: either a target that is gone, or one that refuses raw writes; ask normally.
        await query_one(
            ctx, DeviceInfoQuery(sn=0, device_id=h.lower_id), "DeviceInfo after pipelined queries"
        )


async def _over_the_registration(
    ctx: Context, peer: Peer, ids: list[str], sns: list[int]
) -> list[bool]:
    platform = ctx.harness.platform
    host = platform.endpoint.local_host(peer)
    data = b"".join(
        _device_info_request(ctx, peer, cid, sn, host, ctx.options.local_port)
        for cid, sn in zip(ids, sns, strict=True)
    )
    ctx.step(f"sent two DeviceInfo queries (SN {sns[0]}, {sns[1]}) in one write")
    sent = platform.endpoint.transports.send(peer, data)
    ctx.check(sent, "the suite could not write to the target's TCP connection")
    await until(lambda: all(_answered(ctx.messages(), cid) for cid in ids), PIPELINE_WAIT)
    return [_answered(ctx.messages(), cid) for cid in ids]


async def _over_a_connection_of_its_own(
    ctx: Context, peer: Peer, ids: list[str], sns: list[int]
) -> list[bool]:
    tcp = Peer("tcp", peer.host, peer.port)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(peer.host, peer.port), PIPELINE_WAIT
        )
    except (OSError, TimeoutError):
        ctx.skip(f"the target talks to the suite over UDP and takes no TCP connection at {tcp}")
    try:
        host, port = writer.get_extra_info("sockname")[:2]
        data = b"".join(
            _device_info_request(ctx, tcp, cid, sn, host, port)
            for cid, sn in zip(ids, sns, strict=True)
        )
        ctx.step(
            f"opened a TCP connection to {tcp}; sent two DeviceInfo queries (SN {sns[0]}, "
            f"{sns[1]}) in one write"
        )
        ctx.trace.record("sent", tcp, data, "platform", "one write, on a connection of the case's")
        writer.write(data)
        await writer.drain()
        got = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PIPELINE_WAIT
        while not all(f"Call-ID: {cid}".encode() in got for cid in ids):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk
        for message in split_stream(got):
            ctx.trace.record("received", tcp, message, "platform")
        return [f"Call-ID: {cid}".encode() in got for cid in ids]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@case(
    "R-QRK-02",
    "A REGISTER with a new Call-ID while the old registration stands",
    grade="R",
    clause_2016="10.2.4 of RFC 3261",
    clause_2022="10.2.4 of RFC 3261",
    roles=("platform", "gateway"),
    editions=BOTH,
)
async def new_call_id(ctx: Context) -> None:
    """Steps: a spare suite device registers, then registers again with a new Call-ID (what a
    device does after it restarts), then unregisters.

    RFC 3261 §10.3 lets a registrar take a new Call-ID as a new binding that replaces the old
    one's contact. Finding ``register-500-new-call-id`` when the target answers 500 instead
    (the scan of the trace reports it). Pass unless the target then refuses the device with its
    original Call-ID as well."""
    h = ctx.harness
    dev = h.spare_device(11, install=True)
    try:
        first = await dev.register()
        ctx.step(f"registered: {first.status} {first.reason}")
        ctx.expect_equal(first.status, 200, "the spare device's first REGISTER")
        old = dev.call_id
        dev.call_id, dev.from_tag, dev.cseq = os.urandom(8).hex(), os.urandom(4).hex(), 0
        second = await dev.register()
        ctx.step(f"new Call-ID {dev.call_id}: {second.status} {second.reason}")
        if second.status != 200:
            dev.call_id = old
            again = await dev.register()
            ctx.step(f"old Call-ID again: {again.status} {again.reason}")
            ctx.expect_equal(again.status, 200, "a REGISTER with the registration's own Call-ID")
    finally:
        await asyncio.shield(h.drop_spare(dev))
