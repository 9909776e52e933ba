"""``/metrics`` (Prometheus text) and ``/readyz``, scraped over HTTP from a running gateway with
simulated devices."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api._prom import ChannelCounts
from gateway.events import DeviceOnline, EventBus
from gateway.media import Leg, LegStats, Output, StreamStats
from gateway.media._relay_types import OutputStats  # not on the package's face
from gateway.metrics import Histogram, Metrics
from gateway.sip import Endpoint, Peer, TimerConfig, TransactionTimeout, build_request
from tests.api.conftest import Api
from tests.conftest import RawUdp, sim, wait_for
from tests.gateway_process import GatewayProcess

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"
OP_TOKEN = "operator-token-for-the-log-test"
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(api: Api, client: Any = None) -> Samples:
    resp = await (client or api.anonymous).get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def test_a_device_registering_and_keeping_alive_is_counted(
    api: Api, device_endpoint: Endpoint
) -> None:
    before = await scrape(api)
    assert value(before, "gb_devices_online") == 0
    dev = sim(device_endpoint, api.gw, DEVICE, channel_count=3)
    dev.install()  # it answers the gateway's queries
    assert (await dev.register()).status == 200
    assert (await dev.keepalive()).status == 200
    # The catalog sync the registration starts ends with its three channels stored.
    await wait_for(lambda: api.gw.metrics.get("sync.complete") == 1, what="the catalog sync")
    s = await scrape(api)
    assert value(s, "gb_devices_online") == 1
    assert value(s, "gb_devices_registered") == 1
    assert value(s, "gb_channels") == 3 and value(s, "gb_channels_online") == 3
    # REGISTER → 401 → REGISTER → 200, one MESSAGE keepalive answered 200.
    # (A busy machine's device may retransmit a REGISTER: each copy is a request received.)
    retransmitted = api.gw.metrics.get("sip.rx.retransmission")
    assert (
        2
        <= value(s, "gb_sip_requests_total", direction="rx", method="REGISTER")
        <= 2 + (retransmitted)
    )
    assert value(s, "gb_sip_responses_total", direction="tx", method="REGISTER", status="401") == 1
    assert value(s, "gb_sip_responses_total", direction="tx", method="REGISTER", status="200") == 1
    assert value(s, "gb_sip_requests_total", direction="rx", method="MESSAGE") >= 1
    assert value(s, "gb_sip_responses_total", direction="tx", method="MESSAGE", status="200") >= 1
    # The gateway's own queries (DeviceInfo, Catalog) went out and were answered 200.
    assert value(s, "gb_sip_requests_total", direction="tx", method="MESSAGE") >= 2
    assert value(s, "gb_sip_responses_total", direction="rx", method="MESSAGE", status="200") >= 2
    assert value(s, "gb_events_total", name="register.ok") == 1
    assert value(s, "gb_events_total", name="keepalive.ok") == 1
    assert value(s, "gb_catalog_syncs_total", result="complete") == 1
    assert value(s, "gb_catalog_sync_seconds_count") == 1
    assert value(s, "gb_catalog_sync_seconds_bucket", le="+Inf") == 1
    assert value(s, "gb_subscriptions", side="device", kind="Catalog") in (0, 1)
    assert value(s, "gb_parse_errors_total", kind="sip_message") == 0
    # The store wrote the device (timed), and nothing failed.
    await wait_for(lambda: "store.write_seconds" in api.gw.metrics.histograms())
    s = await scrape(api)
    assert value(s, "gb_store_write_seconds_count") >= 1
    assert value(s, "gb_store_write_failures_total") == 0
    assert value(s, "gb_store_healthy") == 1
    # The loop-lag monitor runs with the server.
    await wait_for(lambda: "loop.lag_seconds" in api.gw.metrics.histograms())
    s = await scrape(api)
    assert value(s, "gb_event_loop_lag_seconds_count") >= 1
    assert ("gb_event_loop_lag_last_seconds", ()) in s
    # Offline: its channels go OFF (counted from the catalog's change events, which agree with
    # a count of the catalog made afresh).
    assert (await dev.unregister()).status == 200
    s = await scrape(api)
    assert value(s, "gb_devices_online") == 0 and value(s, "gb_devices_registered") == 1
    assert value(s, "gb_channels") == 3 and value(s, "gb_channels_online") == 0
    assert api.gw.api is not None
    fresh = ChannelCounts(api.gw.api.ctx)
    assert fresh.counts() == (3, 0)
    fresh.close()


async def test_per_unit_online_devices(api: Api, device_endpoint: Endpoint) -> None:
    directory = api.gw.directory
    school = directory.add_unit("No. 3 Middle School")
    bank = directory.add_unit("Bank")
    directory.add_account(DEVICE, password="pw-of-the-school-1", unit_id=school.id)
    directory.add_account(OTHER, password="pw-of-the-school-2", unit_id=school.id)
    s = await scrape(api)
    assert value(s, "gb_unit_devices", unit=school.id, name=school.name) == 2
    assert value(s, "gb_unit_devices_online", unit=school.id, name=school.name) == 0
    assert value(s, "gb_unit_devices", unit=bank.id, name="Bank") == 0
    dev = sim(device_endpoint, api.gw, DEVICE, password="pw-of-the-school-1")
    assert (await dev.register()).status == 200
    s = await scrape(api)
    assert value(s, "gb_unit_devices_online", unit=school.id, name=school.name) == 1
    assert value(s, "gb_device_accounts") == 2
    assert (await dev.unregister()).status == 200
    s = await scrape(api)
    assert value(s, "gb_unit_devices_online", unit=school.id, name=school.name) == 0


async def test_digest_failures_and_made_up_methods_are_counted_boundedly(
    api: Api, device_endpoint: Endpoint, raw_udp: RawUdp
) -> None:
    wrong = sim(device_endpoint, api.gw, DEVICE, password="not-the-password")
    assert (await wrong.register()).status in (401, 403)
    port = api.gw.port
    for i in range(3):
        raw_udp.send(
            (
                f"FROBNICATE{i} sip:{DEVICE}@127.0.0.1 SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{raw_udp.port};branch=z9hG4bKfrob{i}\r\n"
                f"From: <sip:{OTHER}@3402000000>;tag=f{i}\r\nTo: <sip:{DEVICE}@3402000000>\r\n"
                f"Call-ID: frob{i}\r\nCSeq: 1 FROBNICATE{i}\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            port,
        )
        assert b" 405 " in (await raw_udp.recv())[:20]
    raw_udp.send(b"NOT SIP AT ALL\r\n\r\n", port)
    await wait_for(lambda: api.gw.metrics.get("sip.rx.parse_error") == 1)
    s = await scrape(api)
    assert value(s, "gb_digest_failures_total", reason="bad_password") >= 1
    # Three made-up methods are one label value, not three.
    assert value(s, "gb_sip_requests_total", direction="rx", method="other") == 3
    assert value(s, "gb_sip_responses_total", direction="tx", method="other", status="405") == 3
    assert not any(dict(labels).get("method", "").startswith("FROB") for _, labels in s)
    assert value(s, "gb_parse_errors_total", kind="sip_message") == 1


async def test_metrics_token_when_not_public(start_api: Any) -> None:
    api = await start_api(http={"metrics_public": False})
    assert (await api.anonymous.get("/metrics")).status_code == 401
    s = await scrape(api, api.viewer)
    assert ("gb_devices_online", ()) in s


async def test_two_gateways_in_one_process_keep_their_own_metrics(
    start_api: Any, device_endpoint: Endpoint
) -> None:
    one = await start_api()
    two = await start_api(sip={"port": 0}, store={"backend": "memory"})
    assert (await sim(device_endpoint, one.gw, DEVICE).register()).status == 200
    assert value(await scrape(one), "gb_devices_online") == 1
    assert value(await scrape(two), "gb_devices_online") == 0


async def test_readyz_reports_uppers_lag_and_the_store(start_api: Any) -> None:
    api = await start_api(
        uplink={
            "platforms": [
                {
                    "id": "34010000002000000001",
                    "domain": "3401000000",
                    "host": "127.0.0.1",
                    "port": 9,  # nobody there: the registration keeps trying
                    "password": "upper-pass",
                }
            ]
        }
    )
    # Nobody listens on port 9: the REGISTER fails (ICMP unreachable) and the upper is
    # "offline" (backing off) as soon as that failure is seen.
    for _ in range(200):
        ready = await api.anonymous.get("/readyz")
        body = ready.json()
        if body["uppers"][0]["state"] == "offline":
            break
        assert body["uppers"] == [{"id": "34010000002000000001", "state": "registering"}]
        await asyncio.sleep(0.05)
    assert ready.status_code == 200 and body["ready"] is True and body["store"] is True
    assert body["uppers"] == [{"id": "34010000002000000001", "state": "offline"}]
    assert body["loop_lag_seconds"] >= 0
    s = await scrape(api)
    assert value(s, "gb_upper_registered", upper="34010000002000000001") == 0
    assert value(s, "gb_upper_state", upper="34010000002000000001", state="offline") == 1
    assert value(s, "gb_upper_state", upper="34010000002000000001", state="registering") == 0
    # A store that stopped answering makes the gateway unready.
    store = api.gw.store
    store.healthy = lambda: False  # type: ignore[method-assign]
    not_ready = await api.anonymous.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["store"] is False


async def test_the_loop_lag_monitor_sees_a_blocked_loop(api: Api) -> None:
    assert api.gw.api is not None
    lag = api.gw.api.lag
    # Hold the loop, as a slow handler would, for longer than the monitor's period: its wake
    # is then late by at least the rest (1.0 - 0.5 s).
    time.sleep(1.0)
    await wait_for(lambda: lag.peak >= 0.4, what="the lag seen")
    s = await scrape(api)
    assert value(s, "gb_event_loop_lag_max_seconds") >= 0.4


def test_histogram_buckets_are_cumulative_and_bounded() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 1e9):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 5)]
    assert h.count == 5 and len(h.counts) == 3
    m = Metrics()
    m.observe("x.seconds", 0.2)
    assert m.histograms()["x.seconds"].count == 1


def test_the_bus_forgets_an_unsubscribed_callback_even_during_a_publish() -> None:
    bus = EventBus()
    heard: list[str] = []

    def first(e: DeviceOnline) -> None:
        heard.append("first")
        bus.unsubscribe(DeviceOnline, first)

    def second(e: DeviceOnline) -> None:
        heard.append("second")

    bus.subscribe(DeviceOnline, first)
    bus.subscribe(DeviceOnline, second)
    event = DeviceOnline(DEVICE, "udp", "127.0.0.1", 5060, False)
    bus.publish(event)
    assert heard == ["first", "second"]
    bus.publish(event)
    assert heard == ["first", "second", "second"]
    bus.unsubscribe(DeviceOnline, second)
    bus.unsubscribe(DeviceOnline, second)  # twice: ignored
    assert bus.subscribers(DeviceOnline) == 0


@pytest.mark.timeout(30)
async def test_scrape_of_many_counters_stays_valid(api: Api) -> None:
    for i in range(2000):
        api.gw.metrics.inc(f"hostile.name.{i}")
    s = await scrape(api)
    assert value(s, "gb_events_total", name="hostile.name.1999") == 1


@pytest.mark.timeout(60)
async def test_json_logs_hold_the_apis_and_uvicorns_lines(tmp_path: Path) -> None:
    """With ``[log] format = "json"`` every line the process writes is a JSON object: the API's
    own (``http.started``, ``api.audit``) and uvicorn's (a bad HTTP request), which would
    otherwise come out as plain text from Python's last-resort handler."""
    gw = await GatewayProcess.start(
        tmp_path,
        http={"port": 0, "tokens": [{"name": "op", "role": "operator", "token": OP_TOKEN}]},
    )
    try:
        started = await gw.wait_event("http.started")
        port = int(started["port"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            headers = {"Authorization": f"Bearer {OP_TOKEN}"}
            assert (await c.post("/api/v1/auth/logout", headers=headers)).status_code < 500
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT HTTP \x01\x02\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await gw.wait_event("api.audit")
        uvicorn_line = await gw.wait_event("http.uvicorn")
        assert uvicorn_line["logger"].startswith("uvicorn") and uvicorn_line["level"] == "warning"
    finally:
        await gw.stop()
    lines = [line for line in gw.raw if line.strip()]
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, not_json[:5]


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


async def test_sessions_by_kind_and_transport_and_relay_figures(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session table's legs and outputs, and the relay's figures for each open stream
    (asked of the relay at each scrape)."""
    media = api.gw.media
    play: Leg[Any] = Leg("s1", "Play", "34020000001320000011", transport="udp")
    play.outputs["o1"] = Output("o1", play, "0100000001", False, "udp", ("127.0.0.1", 9))
    play.outputs["o2"] = Output("o2", play, "0100000002", False, "tcp-active", None)
    back: Leg[Any] = Leg("s2", "Playback", "34020000001320000012", transport="tcp-passive")
    monkeypatch.setitem(media.legs, "s1", play)
    monkeypatch.setitem(media.legs, "s2", back)
    figures = {
        "s1": (1000, 1_200_000, 7, [(990, 1_100_000, 3)]),
        "s2": (10, 12_000, 0, []),
    }

    async def stats(stream_id: str) -> StreamStats:
        if stream_id not in figures:
            raise KeyError(stream_id)
        packets, size, lost, outs = figures[stream_id]
        return StreamStats(
            stream_id,
            LegStats(packets, size, lost, 0, 0.0, None, None, None, 0),
            [OutputStats(f"o{i}", p, b, d, True) for i, (p, b, d) in enumerate(outs)],
            5000,
        )

    monkeypatch.setattr(media.relay, "stats", stats)
    s = await scrape(api)
    assert value(s, "gb_sessions", kind="Play", transport="udp") == 1
    assert value(s, "gb_sessions", kind="Playback", transport="tcp-passive") == 1
    assert value(s, "gb_session_outputs", transport="udp") == 1
    assert value(s, "gb_session_outputs", transport="tcp-active") == 1
    assert value(s, "gb_relay_received_packets") == 1010
    assert value(s, "gb_relay_received_bytes") == 1_212_000
    assert value(s, "gb_relay_lost_packets") == 7
    assert value(s, "gb_relay_sent_packets") == 990
    assert value(s, "gb_relay_dropped_packets") == 3
    # A stream that ended between the table's read and the relay's answer is skipped.
    del figures["s2"]
    s = await scrape(api)
    assert value(s, "gb_relay_received_packets") == 1000


async def test_a_request_nobody_answers_is_counted_as_timed_out(raw_udp: RawUdp) -> None:
    metrics = Metrics()
    ep = Endpoint(metrics=metrics, timers=TimerConfig(t1=0.01, t2=0.04, t4=0.05))
    await ep.start("127.0.0.1", 0)
    try:
        uri = f"sip:{DEVICE}@127.0.0.1:{raw_udp.port}"
        req = build_request("MESSAGE", uri, from_uri=f"sip:{OTHER}@3402000000", to_uri=uri)
        with pytest.raises(TransactionTimeout):
            await ep.request(req, Peer("udp", "127.0.0.1", raw_udp.port))
    finally:
        await ep.close()
    assert metrics.get("sip.tx.request.MESSAGE") == 1
    assert metrics.get("sip.tx.timeout.MESSAGE") == 1


async def test_the_grafana_dashboard_uses_only_metrics_the_gateway_serves(api: Api) -> None:
    text = (await api.anonymous.get("/metrics")).text
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    served = {
        f + suffix for f in families for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "gb28181-gateway.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert len(exprs) > 20
    used = {name for e in exprs for name in re.findall(r"\bgb_[a-z_]+", e)}
    assert used - served == set()
    for wanted in ("gb_unit_devices_online", "gb_catalog_sync_seconds_bucket"):
        assert wanted in used


async def test_scrapes_within_the_interval_reuse_one_rendering(start_api: Any) -> None:
    """However often /metrics is asked, the gateway renders it at most once per
    http.metrics_min_interval; scrapes meanwhile get the same text."""
    api = await start_api(http={"metrics_min_interval": 60})
    assert api.gw.api is not None
    _registry, collector = api.gw.api.ctx.extras["prometheus"]
    renders = 0
    real = collector.refresh

    async def counted() -> None:
        nonlocal renders
        renders += 1
        await real()

    collector.refresh = counted
    texts = await asyncio.gather(*(api.anonymous.get("/metrics") for _ in range(5)))
    texts += [await api.anonymous.get("/metrics") for _ in range(5)]
    assert {t.status_code for t in texts} == {200}
    assert len({t.text for t in texts}) == 1
    assert renders == 1
    assert api.gw.metrics.get("api.metrics.reused") >= 5
