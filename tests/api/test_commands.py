"""Commands and live sessions through HTTP against a simulated NVR: PTZ and presets (the PTZCmd
bytes the NVR receives), record search, DeviceInfo/DeviceStatus, re-sync, TeleBoot, the errors
(offline 409, silent 504, refused 502), and a live session to a UDP port of the test's own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from gateway.manscdp import CatalogQuery
from tests.api.conftest import Api
from tests.conftest import sim, wait_for

pytestmark = pytest.mark.timeout(60)

NVR = "34020000001180000001"
FAST = {"response_timeout": 1.5, "idle_timeout": 0.5}
MEDIA = {
    "host": "127.0.0.1",
    "port_min": 47400,
    "port_max": 47499,
    "rtp_timeout": 3.0,
    "invite_timeout": 3.0,
}


async def started(start_api: Any, device_endpoint: Any, **kw: Any) -> tuple[Api, SimDevice]:
    api: Api = await start_api(downlink=FAST, media=MEDIA)
    dev = sim(device_endpoint, api.gw, NVR, channel_count=2, **kw)
    dev.install()
    assert (await dev.register()).status == 200
    registered = api.gw.registrar.devices[NVR]
    await wait_for(lambda: registered.synced_at > 0, 20, "catalog sync")
    return api, dev


def url(path: str) -> str:
    return f"/api/v1/devices/{NVR}{path}"


async def test_ptz_and_presets_reach_the_nvr_as_ptzcmd_bytes(start_api, device_endpoint) -> None:
    api, dev = await started(start_api, device_endpoint)
    cam = dev.channel_id(1)
    r = await api.operator.post(url(f"/channels/{cam}/ptz"), json={"command": "left", "speed": 100})
    assert r.status_code == 202, r.text
    # A5 0F 01 | 02 (pan left) | 64 (pan speed 100) 00 00 | checksum 0x1B (Appendix A.3).
    assert dev.ptz_commands == ["A50F01026400001B"]
    assert dev.controls[-1].device_id == cam
    r = await api.operator.post(
        url(f"/channels/{cam}/ptz"), json={"command": "zoomin", "speed": 255}
    )
    assert r.status_code == 202
    assert dev.ptz_commands[-1] == "A50F01100000F0B5"  # zoom in, zoom speed 15 (high nibble)
    r = await api.operator.post(url(f"/channels/{cam}/ptz"), json={"command": "stop"})
    assert r.status_code == 202 and dev.ptz_commands[-1] == "A50F0100000000B5"
    r = await api.operator.post(url(f"/channels/{cam}/preset"), json={"action": "goto", "index": 3})
    assert r.status_code == 202 and dev.ptz_commands[-1] == "A50F01820003003A"
    assert r.json() == {"ptz_cmd": "A50F01820003003A"}

    bad = await api.operator.post(url(f"/channels/{cam}/ptz"), json={"command": "spin"})
    assert bad.status_code == 422 and bad.json()["field"] == "command"
    slow = await api.operator.post(url(f"/channels/{cam}/ptz"), json={"command": "up", "speed": 0})
    assert slow.status_code == 422 and slow.json()["field"] == "speed"
    index = await api.operator.post(url(f"/channels/{cam}/preset"), json={"action": "set"})
    assert index.status_code == 422 and index.json()["field"] == "index"
    viewer = await api.viewer.post(url(f"/channels/{cam}/ptz"), json={"command": "left"})
    assert viewer.status_code == 403
    other = await api.operator.post(
        url("/channels/34020000001310099999/ptz"), json={"command": "left"}
    )
    assert other.status_code == 404
    assert len(dev.ptz_commands) == 4  # nothing refused went out
    await api.gw.store.flush()
    audit = api.gw.store.load_audit(limit=20)
    ptz = [e for e in audit if e.action.endswith("/ptz") and e.outcome == "202"]
    assert len(ptz) == 3 and {e.detail for e in ptz} == {"left 100", "zoomin 255", "stop 128"}
    assert all(e.who == "operator-token" and e.role == "operator" for e in ptz)


async def test_records_info_status_sync_and_teleboot(start_api, device_endpoint) -> None:
    api, dev = await started(start_api, device_endpoint)
    cam = dev.channel_id(2)
    now = time.time()
    r = await api.operator.get(
        url(f"/channels/{cam}/records"), params={"start": now - 3600, "end": now}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == dev.record_count == len(body["items"])
    first = body["items"][0]
    assert first["start"] and first["end"] and first["start"] <= first["end"]
    asked = [q for q in dev.queries if q.CMD == "RecordInfo"][-1]
    assert asked.device_id == cam and asked.type == "all"
    iso = await api.operator.get(
        url(f"/channels/{cam}/records"),
        params={"start": "2026-12-01T08:00:00", "end": "2026-12-01T09:00:00"},
    )
    assert iso.status_code == 200
    asked = [q for q in dev.queries if q.CMD == "RecordInfo"][-1]
    assert (asked.start_time, asked.end_time) == ("2026-12-01T08:00:00", "2026-12-01T09:00:00")
    wrong = await api.operator.get(
        url(f"/channels/{cam}/records"), params={"start": "yesterday", "end": now}
    )
    assert wrong.status_code == 422 and wrong.json()["field"] == "start"
    backwards = await api.operator.get(
        url(f"/channels/{cam}/records"), params={"start": now, "end": now - 10}
    )
    assert backwards.status_code == 422 and backwards.json()["field"] == "end"

    info = await api.operator.post(url("/info"))
    assert info.status_code == 200
    assert info.json()["manufacturer"] == "SimVision" and info.json()["model"] == dev.model
    status = await api.operator.post(url("/status"))
    assert status.status_code == 200 and status.json()["online"] == "ONLINE"

    catalogs = sum(1 for q in dev.queries if isinstance(q, CatalogQuery))
    assert (await api.operator.post(url("/sync"))).status_code == 202
    await wait_for(
        lambda: sum(1 for q in dev.queries if isinstance(q, CatalogQuery)) > catalogs,
        10,
        "a catalog query",
    )
    assert (await api.operator.post(url("/teleboot"))).status_code == 202
    await wait_for(lambda: dev.reboots == 1, 10, "the reboot")
    assert any(c.tele_boot == "Boot" for c in dev.controls)


async def test_offline_silent_and_unknown_devices(start_api, device_endpoint) -> None:
    api, dev = await started(start_api, device_endpoint)
    dev.mute = True  # registered, answers nothing
    silent = await api.operator.post(url("/info"))
    assert silent.status_code == 504 and "did not answer" in silent.json()["error"]
    dev.mute = False
    dev.wrong_ptz_checksum = True  # its own checksum rule: refuses ours with a SIP 400
    cam = dev.channel_id(1)
    refused = await api.operator.post(url(f"/channels/{cam}/ptz"), json={"command": "left"})
    assert refused.status_code == 502 and "400" in refused.json()["error"]
    dev.wrong_ptz_checksum = False
    await dev.unregister()
    await wait_for(lambda: not api.gw.registrar.devices[NVR].online, 5, "offline")
    for call in (
        api.operator.post(url("/info")),
        api.operator.post(url("/status")),
        api.operator.post(url("/sync")),
        api.operator.post(url("/teleboot")),
        api.operator.post(url(f"/channels/{dev.channel_id(1)}/ptz"), json={"command": "up"}),
        api.operator.get(
            url(f"/channels/{dev.channel_id(1)}/records"), params={"start": 0, "end": 10}
        ),
        api.operator.post(
            "/api/v1/sessions",
            json={"channel_id": dev.channel_id(1), "host": "127.0.0.1", "port": 9},
        ),
    ):
        r = await call
        assert r.status_code == 409, r.text
        assert "offline" in r.json()["error"]
    unknown = await api.operator.post("/api/v1/devices/34020000001180000099/info")
    assert unknown.status_code == 404


class Rtp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.packets.append(data)


async def test_live_session_to_a_udp_port(start_api, device_endpoint) -> None:
    api, dev = await started(start_api, device_endpoint, live_frames=None)
    loop = asyncio.get_running_loop()
    transport, rtp = await loop.create_datagram_endpoint(Rtp, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        cam = dev.channel_id(1)
        r = await api.operator.post(
            "/api/v1/sessions", json={"channel_id": cam, "host": "127.0.0.1", "port": port}
        )
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["id"].startswith("o") and session["channel_id"] == cam
        assert session["device_id"] == NVR and session["kind"] == "Play"
        assert [(o["host"], o["port"], o["local"]) for o in session["outputs"]] == [
            ("127.0.0.1", port, True)
        ]
        await wait_for(lambda: len(rtp.packets) >= 20, 10, "RTP at the test's port")
        assert all(p[0] >> 6 == 2 for p in rtp.packets)  # RTP version 2 (RFC 3550 §5.1)
        assert {int.from_bytes(p[8:12], "big") for p in rtp.packets} == {
            int(session["outputs"][0]["ssrc"]) & 0xFFFFFFFF
        }
        listed = (await api.viewer.get("/api/v1/sessions")).json()
        assert listed["total"] == 1
        leg = listed["items"][0]
        assert leg["id"] == session["session_id"] and leg["bytes"] > 0
        assert leg["device_leg"]["ssrc"] and leg["device_leg"]["transport"] == "udp"
        assert leg["packets_lost"] == 0 and leg["started_at"] > 0
        stats = (await api.viewer.get("/api/v1/stats")).json()
        assert stats["sessions"] == {"active": 1}
        assert (await api.viewer.delete(f"/api/v1/sessions/{session['id']}")).status_code == 403
        gone = await api.operator.delete(f"/api/v1/sessions/{session['id']}")
        assert gone.status_code == 204
        await wait_for(lambda: not api.gw.media.legs, 5, "the leg to end")
        assert (await api.viewer.get("/api/v1/sessions")).json() == {"total": 0, "items": []}
        again = await api.operator.delete(f"/api/v1/sessions/{session['id']}")
        assert again.status_code == 404
        await wait_for(lambda: all(s.ended for s in dev.media_sessions.values()), 5, "BYE")
        bad = await api.operator.post(
            "/api/v1/sessions", json={"channel_id": cam, "host": "example.org", "port": port}
        )
        assert bad.status_code == 422 and bad.json()["field"] == "host"
        nochan = await api.operator.post(
            "/api/v1/sessions",
            json={"channel_id": "34020000001310099999", "host": "127.0.0.1", "port": port},
        )
        assert nochan.status_code == 404 and nochan.json()["field"] == "channel_id"
    finally:
        transport.close()
        await dev.close_media()


async def test_sessions_are_paged_and_their_figures_asked_at_once(
    start_api, device_endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /sessions`` takes offset/limit (at most 500) with the total, like every list; the
    page's relay figures are asked concurrently, and a relay that does not answer in time
    leaves the session listed with zeros instead of holding the request."""
    from gateway.api import sessions

    api, dev = await started(start_api, device_endpoint, live_frames=None)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Rtp, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        ids = []
        for n in (1, 2):
            r = await api.operator.post(
                "/api/v1/sessions",
                json={"channel_id": dev.channel_id(n), "host": "127.0.0.1", "port": port},
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["session_id"])
        relay = api.gw.media.relay
        in_flight = peak = 0
        release = asyncio.Event()

        async def slow_stats(key: str) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await release.wait()  # never set: only the timeout ends it
            finally:
                in_flight -= 1

        monkeypatch.setattr(relay, "stats", slow_stats)
        monkeypatch.setattr(sessions, "STATS_TIMEOUT", 0.2)
        listed = (await api.viewer.get("/api/v1/sessions")).json()
        assert listed["total"] == 2 and [s["id"] for s in listed["items"]] == ids
        assert peak == 2  # both asked at once
        assert all(s["bytes"] == 0 and s["bitrate_bps"] == 0 for s in listed["items"])
        second = await api.viewer.get("/api/v1/sessions", params={"offset": 1, "limit": 1})
        assert second.json()["total"] == 2
        assert [s["id"] for s in second.json()["items"]] == ids[1:]
        too_many = await api.viewer.get("/api/v1/sessions", params={"limit": 501})
        assert too_many.status_code == 422 and too_many.json()["field"] == "limit"
    finally:
        transport.close()
        await dev.close_media()


@pytest.mark.timeout(60)
async def test_hostile_inputs_get_4xx_never_500(start_api, device_endpoint) -> None:
    api, dev = await started(start_api, device_endpoint)
    cam = dev.channel_id(1)
    records = url(f"/channels/{cam}/records")
    for start in (
        "1e309",
        "nan",
        "-1",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "2026-13-01",
        "\x00",
        "1" * 40,
    ):
        r = await api.operator.get(records, params={"start": start, "end": "10"})
        assert r.status_code == 422 and r.json()["field"] == "start", (start, r.text)
    reads = [
        ("/api/v1/tree", {"parent": "../../etc"}),
        ("/api/v1/tree", {"parent": "\u202e%00"}),
        ("/api/v1/tree", {"parent": "x" * 65}),
        ("/api/v1/tree", {"parent": cam, "device": "nobody"}),
        ("/api/v1/devices", {"q": "\x00\x1f\n"}),
        ("/api/v1/devices", {"offset": -1}),
        ("/api/v1/devices", {"limit": 0}),
        ("/api/v1/devices", {"online": "maybe"}),
        ("/api/v1/channels", {"q": "\x1f"}),
        ("/api/v1/channels", {"q": "x" * 65}),
        ("/api/v1/alarms", {"limit": "many"}),
        ("/api/v1/stats/history", {"hours": "-1"}),
        ("/api/v1/devices/%00", {}),
    ]
    for path, params in reads:
        r = await api.viewer.get(path, params=params)
        assert r.status_code in (200, 404, 422), (path, params, r.text)
        assert "error" in r.json() or "items" in r.json()
    writes = [
        ("/api/v1/sessions", {"channel_id": cam, "host": "127.0.0.1", "port": 0}),
        ("/api/v1/sessions", {"channel_id": cam, "host": "::1", "port": 70000}),
        ("/api/v1/sessions", {"channel_id": cam, "host": "127.0.0.1", "port": 9, "x": 1}),
        (
            "/api/v1/sessions",
            {"channel_id": cam, "host": "127.0.0.1", "port": 9, "transport": "sctp"},
        ),
        (url(f"/channels/{cam}/ptz"), {"command": "left", "speed": 256}),
        (url(f"/channels/{cam}/ptz"), ["left"]),
        (url(f"/channels/{cam}/preset"), {"action": "goto", "index": 256}),
    ]
    for path, body in writes:
        r = await api.operator.post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
    assert dev.ptz_commands == [] and not api.gw.media.legs
    assert api.gw.metrics.get("api.error") == 0
