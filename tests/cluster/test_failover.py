"""Three gateway processes on one redis-server (127.0.0.2-4), the simulated upper above them:
one node at a time registers; SIGKILL it and another takes the registration over (same lower
ID, same Call-ID, a higher CSeq) within the lease time and a round trip, answers the upper's
next query, and goes on with the upper's subscription."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conformance.peers.device import SimDevice
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.cluster.procrig import GW, HOSTS, ClusterRig
from tests.conftest import wait_for
from tests.redisrig import REDIS_SERVER

NVR = "34020000001180000001"


def _loopback_usable() -> bool:
    try:
        for host in HOSTS:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
    except OSError:
        return False
    return True


pytestmark = [
    pytest.mark.skipif(not Path(REDIS_SERVER).exists(), reason="redis-server is not installed"),
    pytest.mark.skipif(not _loopback_usable(), reason="127.0.0.2-4 cannot be bound here"),
]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[ClusterRig]:
    r = ClusterRig(tmp_path, nodes=3, lease_seconds=2.0)
    try:
        await r.start()
        yield r
    finally:
        await r.close()


@pytest.mark.timeout(120)
async def test_sigkill_of_the_holder_moves_the_registration(rig: ClusterRig) -> None:
    upper = rig.upper
    holder = await rig.holder()
    # Exactly one node registers: the others stand by (their lease attempts fail).
    for node in rig.nodes:
        assert node.proc is not None
        gained = node.proc.named("cluster.lease_gained")
        assert bool(gained) == (node is holder), node.name
    assert (await upper.device_info(GW)).ok
    before = upper.lowers[GW]
    call_id = before.call_id
    cseq_before = max(r.cseq.seq for r in upper.registers if r.call_id == call_id)
    sub = await upper.subscribe(GW, "Catalog", expires=600)
    assert sub.status == 200
    # The holder keeps the subscription in Redis within a third of a lease.
    await wait_for(lambda: bool(rig.redis.ping()) and _has_field(rig, "sub:Catalog"), 5, "sub kept")
    notifies = sub.notifies
    await holder.kill()
    survivor, elapsed = await rig.failover(holder)
    assert survivor is not holder
    # The upper sees one lower platform with one ID: the same registration, refreshed.
    assert list(upper.lowers) == [GW]
    after = upper.lowers[GW]
    assert after.call_id == call_id
    assert max(r.cseq.seq for r in upper.registers if r.call_id == call_id) > cseq_before
    # A generous bound (a busy machine): the lease (2 s) plus a round trip is the target,
    # bench/_cluster_failover.py measures it.
    assert elapsed < 15, elapsed
    # The subscription goes on: the new holder NOTIFYs in the same dialog, and takes the
    # upper's refresh (sent to the address it now registers from) as a refresh.
    assert survivor.proc is not None
    await wait_for(
        lambda: sub.notifies > notifies,
        10,
        f"a NOTIFY from the new holder; its log:\n{survivor.proc.text[-4000:]}",
    )
    sub.peer = sub.peer.__class__(sub.peer.transport, survivor.host, survivor.port)
    sub.remote_target = f"sip:{GW}@{survivor.host}:{survivor.port}"
    await upper.refresh(sub)
    assert sub.status == 200, sub.status
    # Exactly one holder again: the third node never registered.
    others = [n for n in rig.nodes if n not in (holder, survivor)]
    for node in others:
        assert node.proc is not None and not node.proc.named("cluster.upper_taken_over")


def _has_field(rig: ClusterRig, field: str) -> bool:
    with socket.create_connection((rig.redis.host, rig.redis.port), timeout=1) as s:
        s.sendall(f"HEXISTS gb:upst:{rig.upper_config()['id']} {field}\r\n".encode())
        return s.recv(16).startswith(b":1")


@pytest.mark.timeout(120)
async def test_sessions_of_the_dead_holder_are_ended_on_the_upper(rig: ClusterRig) -> None:
    """A live view through the holder; the holder is killed: the next holder ends the call on
    the upper's side with BYE (its media died with the node)."""
    upper = rig.upper
    holder = await rig.holder()
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    try:
        nvr = SimDevice(
            ep, NVR, Peer("udp", holder.host, holder.port), channel_count=1, live_frames=100_000
        )
        nvr.install()
        assert (await nvr.register()).status == 200
        channel = nvr.channel_id(1)
        deadline = time.monotonic() + 20
        while True:  # until the node has the device's catalog (its sync after REGISTER)
            result = await upper.catalog(GW, timeout=2.0, idle=0.5)
            if any(item.device_id == channel for item in result.items):
                break
            assert time.monotonic() < deadline, "the channel never reached the catalog"
        call = await upper.invite(GW, channel, timeout=5.0)
        assert call.status == 200
        # The holder keeps the dialog in Redis within a third of a lease.
        await wait_for(lambda: _has_field(rig, f"dlg:{call.call_id}"), 5, "dialog kept")
        await holder.kill()
        await rig.failover(holder)
        await asyncio.wait_for(call.ended.wait(), 10)
        assert call.ended_by == "lower"
        await wait_for(lambda: not _has_field(rig, f"dlg:{call.call_id}"), 5, "dialog dropped")
    finally:
        await ep.close()


@pytest.mark.timeout(120)
async def test_the_uppers_next_invite_works_after_the_holder_is_killed(rig: ClusterRig) -> None:
    """An NVR on a node that does not hold the upper; the holder is SIGKILLed: once another
    node registers in its place, the upper's next INVITE for the NVR's channel streams (through
    that node, relayed to the NVR's node when they differ)."""
    upper = rig.upper
    holder = await rig.holder()
    home = next(n for n in rig.nodes if n is not holder)
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    try:
        nvr = SimDevice(
            ep, NVR, Peer("udp", home.host, home.port), channel_count=1, live_frames=100_000
        )
        nvr.install()
        assert (await nvr.register()).status == 200
        nvr.start_keepalive(0.5)
        channel = nvr.channel_id(1)

        async def channel_listed(timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while True:  # the home node's sync, then the replica at the upper's node
                result = await upper.catalog(GW, timeout=2.0, idle=0.5)
                if any(item.device_id == channel for item in result.items):
                    return
                assert time.monotonic() < deadline, "the channel never reached the catalog"

        await channel_listed(20)
        await holder.kill()
        survivor, _ = await rig.failover(holder)
        assert survivor is not holder
        await channel_listed(10)
        call = await upper.invite(GW, channel, timeout=5.0)
        assert call.status == 200, call.status
        assert await call.receiver.wait_frames(10, timeout=15) >= 10
        bye = await call.bye(timeout=5.0)
        assert bye is not None and bye.status == 200
    finally:
        await ep.close()
