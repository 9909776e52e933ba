"""``/metrics`` (Prometheus text) and ``/readyz``, scraped over HTTP from a running gateway with
simulated devices."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.events import DeviceOnline, EventBus
from gateway.metrics import Histogram, Metrics
from gateway.sip import Endpoint
from tests.api.conftest import Api
from tests.conftest import RawUdp, sim, wait_for

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"

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
    assert value(s, "gb_sip_requests_total", direction="rx", method="REGISTER") == 2
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
    ready = await api.anonymous.get("/readyz")
    body = ready.json()
    assert ready.status_code == 200 and body["ready"] is True and body["store"] is True
    assert body["uppers"] == [{"id": "34010000002000000001", "state": "registering"}]
    assert body["loop_lag_seconds"] >= 0
    s = await scrape(api)
    assert value(s, "gb_upper_registered", upper="34010000002000000001") == 0
    assert value(s, "gb_upper_state", upper="34010000002000000001", state="registering") == 1
    # A store that stopped answering makes the gateway unready.
    store = api.gw.store
    store.healthy = lambda: False  # type: ignore[method-assign]
    not_ready = await api.anonymous.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.json()["store"] is False


async def test_the_loop_lag_monitor_sees_a_blocked_loop(api: Api) -> None:
    assert api.gw.api is not None
    lag = api.gw.api.lag
    await asyncio.sleep(0.05)
    time.sleep(0.6)  # hold the loop, as a slow handler would
    await wait_for(lambda: lag.last >= 0.3, what="the lag seen")
    s = await scrape(api)
    assert value(s, "gb_event_loop_lag_max_seconds") >= 0.3


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
