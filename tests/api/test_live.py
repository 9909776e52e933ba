"""``GET /api/v1/events``: live updates as Server-Sent Events, read over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.api import live
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    DeviceOffline,
    DeviceOnline,
    EventBus,
)
from gateway.model import Alarm
from gateway.sip import Endpoint
from tests.api.conftest import TOKENS, Api
from tests.conftest import sim, wait_for

DEVICE = "34020000001320000001"
KINDS = (DeviceOnline, DeviceOffline, CatalogChange, AlarmReceived)


async def read_events(resp: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """``(event, data)`` per message; ``("comment", text)`` per comment line."""
    event, data = "message", ""
    async for line in resp.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "" and data:
            yield event, json.loads(data)
            event, data = "message", ""


async def next_of(events: AsyncIterator[tuple[str, Any]], kind: str, timeout: float = 5.0) -> Any:
    async def find() -> Any:
        async for event, data in events:
            if event == kind:
                return data
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(find(), timeout)


def subscribers(bus: EventBus) -> int:
    return sum(bus.subscribers(k) for k in KINDS)


async def test_a_device_going_online_and_offline_arrives(
    start_api: Any, device_endpoint: Endpoint
) -> None:
    api: Api = await start_api(http={"sse_interval": 0.1})
    # EventSource sends no headers: the token comes in the query.
    url = f"/api/v1/events?access_token={TOKENS['viewer']}"
    async with api.anonymous.stream("GET", url) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = read_events(resp)
        assert await next_of(events, "sessions") == {"active": 0}
        dev = sim(device_endpoint, api.gw, DEVICE)
        assert (await dev.register()).status == 200
        got = await next_of(events, "devices")
        assert got == {"changes": [{"id": DEVICE, "online": True}], "dropped": 0}
        assert (await dev.unregister()).status == 200
        got = await next_of(events, "devices")
        assert got == {"changes": [{"id": DEVICE, "online": False}], "dropped": 0}
        alarm = Alarm(DEVICE, DEVICE, priority=1, method=2, description="door")
        api.gw.events.publish(AlarmReceived(alarm))
        items = (await next_of(events, "alarm"))["items"]
        assert items == [
            {
                "id": None,
                "device_id": DEVICE,
                "channel_id": DEVICE,
                "priority": 1,
                "method": 2,
                "type": None,
                "time": "",
                "description": "door",
                "received_at": 0.0,
            }
        ]
        api.gw.events.publish(CatalogChange(DEVICE, "34020000001320000009", "ADD", None, None))
        assert (await next_of(events, "catalog")) == {"devices": [DEVICE], "dropped": 0}


async def test_no_token_no_stream(api: Api) -> None:
    resp = await api.anonymous.get("/api/v1/events")
    assert resp.status_code == 401
    assert resp.json()["error"] == "missing or invalid bearer token"
    bad = await api.anonymous.get("/api/v1/events?access_token=wrong-token-0123456789")
    assert bad.status_code == 401


@pytest.mark.timeout(60)
async def test_a_storm_of_changes_arrives_coalesced(start_api: Any) -> None:
    """2,000 events over about a second arrive as a few messages holding the newest state of
    each device. What is checked is what coalescing guarantees whatever the machine's load: a
    burst (published without yielding) is never split across messages, the two events per
    device in a burst make one change, no device twice in a message, and at most one message
    per interval while changes came (from the measured time, plus the one before and after)."""
    interval = 0.25
    api: Api = await start_api(http={"sse_interval": interval})
    bus = api.gw.events
    devices = [f"3402000000132{n:07d}" for n in range(200)]
    last = "34020000001329999999"
    final: dict[str, bool] = {}
    messages: list[dict[str, Any]] = []
    async with api.viewer.stream("GET", "/api/v1/events") as resp:
        events = read_events(resp)
        await next_of(events, "sessions")
        started = time.monotonic()
        # 10 bursts of 100 devices, each device flipped twice per burst (the second state is
        # the one that counts), a burst every 0.1 s; each device is in every other burst.
        for burst in range(10):
            for i in range(100):
                n = (burst * 100 + i) % 200
                dev = devices[n]
                online = (burst // 2 + n) % 2 == 0  # each device flips on every visit
                final[dev] = online
                for state in (not online, online):
                    if state:
                        bus.publish(DeviceOnline(dev, "udp", "127.0.0.1", 5060, False))
                    else:
                        bus.publish(DeviceOffline(dev, "expired"))
            if burst == 9:  # the last burst says it is the last (its message ends the wait)
                final[last] = True
                bus.publish(DeviceOnline(last, "udp", "127.0.0.1", 5060, False))
            await asyncio.sleep(0.1)
        publishing = time.monotonic() - started
        seen: dict[str, bool] = {}

        async def collect() -> None:
            async for event, data in events:
                if event == "devices":
                    messages.append(data)
                    for change in data["changes"]:
                        seen[change["id"]] = change["online"]
                    if last in seen:
                        return

        await asyncio.wait_for(collect(), 10)
    sizes = [len(m["changes"]) for m in messages]
    assert all(100 <= n <= 201 for n in sizes), sizes  # whole bursts, one change per device
    assert all(len({c["id"] for c in m["changes"]}) == len(m["changes"]) for m in messages)
    assert sum(sizes) <= 1001  # 2,000 events: each burst's pair per device made one change
    assert len(messages) <= publishing / interval + 2, (len(messages), publishing)
    assert all(m["dropped"] == 0 for m in messages)
    assert seen == final


async def test_more_changes_than_a_message_holds_are_counted_as_dropped(start_api: Any) -> None:
    api: Api = await start_api(http={"sse_interval": 0.5})
    async with api.viewer.stream("GET", "/api/v1/events") as resp:
        events = read_events(resp)
        await next_of(events, "sessions")
        for n in range(1200):  # all within one interval
            api.gw.events.publish(DeviceOffline(f"3402000000132{n:07d}", "expired"))
        got = await next_of(events, "devices")
    assert len(got["changes"]) == live.MAX_CHANGES == 500
    assert got["dropped"] == 700


async def test_the_bus_forgets_a_stream_when_its_client_goes(api: Api) -> None:
    bus = api.gw.events
    before = subscribers(bus)
    for _ in range(3):
        async with api.viewer.stream("GET", "/api/v1/events") as resp:
            await next_of(read_events(resp), "sessions")
            assert subscribers(bus) == before + len(KINDS)
        await wait_for(lambda: subscribers(bus) == before, what="the stream's subscriptions gone")
    hub = api.gw.api.ctx.extras["live"] if api.gw.api is not None else None
    assert hub is not None and not hub.clients


async def test_streams_are_limited_and_a_freed_place_is_reusable(start_api: Any) -> None:
    api: Api = await start_api(http={"sse_max_connections": 2})
    bus = api.gw.events
    before = subscribers(bus)
    async with (
        api.viewer.stream("GET", "/api/v1/events") as one,
        api.viewer.stream("GET", "/api/v1/events") as two,
    ):
        await next_of(read_events(one), "sessions")
        await next_of(read_events(two), "sessions")
        third = await api.viewer.get("/api/v1/events")
        assert third.status_code == 503
        assert third.json() == {"error": "too many live streams (at most 2)", "field": None}
        assert subscribers(bus) == before + 2 * len(KINDS)
    await wait_for(lambda: subscribers(bus) == before, what="both streams gone")
    async with api.viewer.stream("GET", "/api/v1/events") as again:
        assert again.status_code == 200
        await next_of(read_events(again), "sessions")
    assert api.gw.metrics.get("api.live.refused") == 1


async def test_a_quiet_stream_gets_pings(start_api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "HEARTBEAT", 0.2)
    api: Api = await start_api(http={"sse_interval": 0.05})
    async with api.viewer.stream("GET", "/api/v1/events") as resp:
        events = read_events(resp)
        await next_of(events, "sessions")
        assert await next_of(events, "comment") == "ping"


@pytest.mark.timeout(60)
async def test_the_gateway_stops_with_a_stream_open(start_api: Any) -> None:
    api: Api = await start_api()
    bus = api.gw.events
    before = subscribers(bus)
    async with api.viewer.stream("GET", "/api/v1/events") as resp:
        await next_of(read_events(resp), "sessions")
        assert subscribers(bus) == before + len(KINDS)
        await api.gw.close()
        assert subscribers(bus) == before


@pytest.mark.timeout(30)
async def test_a_stream_ends_when_its_token_is_deleted(start_api: Any) -> None:
    api: Api = await start_api(http={"sse_interval": 0.1})
    made = await api.admin.post("/api/v1/tokens", json={"name": "wall", "role": "viewer"})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    before = subscribers(api.gw.events)
    async with api.anonymous.stream("GET", f"/api/v1/events?access_token={token}") as resp:
        assert resp.status_code == 200
        events = read_events(resp)
        assert await next_of(events, "sessions") == {"active": 0}
        assert (await api.admin.delete("/api/v1/tokens/wall")).status_code == 204

        async def drained() -> None:
            async for _ in events:
                pass

        await asyncio.wait_for(drained(), 10.0)  # the server ended the stream
    await wait_for(
        lambda: subscribers(api.gw.events) == before, what="the stream's subscriptions gone"
    )
    assert api.gw.api is not None and not live.hub_of(api.gw.api.ctx).clients
