"""The gateway's state and counters as Prometheus metrics, and the event-loop lag monitor.

:class:`GatewayCollector` reads the gateway's parts afresh on every scrape (nothing is copied
into prometheus-client's own objects between scrapes) and is registered in a
``CollectorRegistry`` of its own per API server, so two gateways in one process (the tests)
never share metrics. What the floors below count as plain names in :class:`~gateway.metrics.
Metrics` is turned into labelled families here (``sip.rx.request.REGISTER`` becomes
``gb_sip_requests_total{direction="rx",method="REGISTER"}``); every counter also appears as
``gb_events_total{name="..."}``, so nothing counted is invisible.

Names follow Prometheus's conventions: the ``gb_`` prefix, ``_total`` for counters, base units
(``_seconds``, ``_bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.api.context import ApiContext
from gateway.events import CatalogChange
from gateway.manscdp import CatalogItem, item_kind
from gateway.media import StreamStats
from gateway.metrics import SECONDS_BUCKETS, Histogram, Metrics

log = structlog.get_logger("gateway.api.metrics")

LAG_INTERVAL = 0.5
"""How often the loop-lag monitor wakes (seconds)."""
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
RELAY_STATS_TIMEOUT = 2.0
"""A scrape waits this long at most for the relay workers' per-stream figures."""

# Counters turned into labelled families: (name prefix, family, its label).
PARSE_ERRORS: dict[str, str] = {
    "sip.rx.parse_error": "sip_message",
    "sip.rx.bad_request": "sip_request",
    "sip.rx.bad_response": "sip_response",
    "sip.rx.bad_ack_dropped": "sip_ack",
    "sip.tcp.framing_error": "sip_tcp_framing",
    "sip.tcp.truncated": "sip_tcp_truncated",
    "message.bad_body": "manscdp_message",
    "notify.bad_body": "manscdp_notify",
    "query.bad_sum_num": "manscdp_sum_num",
    "relay.rtp.invalid": "rtp",
    "relay.tcp.framing_lost": "rtp_tcp_framing",
}
"""Counters of input the gateway could not read, by the ``kind`` label they get."""

HISTOGRAMS: dict[str, tuple[str, str]] = {
    "sync.seconds": ("gb_catalog_sync_seconds", "Catalog sync duration (query to applied)."),
    "store.write_seconds": ("gb_store_write_seconds", "SQLite store batch write duration."),
    "loop.lag_seconds": ("gb_event_loop_lag_seconds", "Event-loop lag, one check a half second."),
    "preview.first_frame": (
        "gb_preview_first_frame_seconds",
        "Live preview: seconds from the WHEP POST to the first frame handed to the viewer.",
    ),
}


class LoopLag:
    """Measures how late the event loop wakes a sleeper: the time every task waits behind
    whatever holds the loop. Wakes every ``interval`` seconds; ``last`` is the latest lag,
    ``peak`` the largest since the last scrape read it (:meth:`take_peak`)."""

    def __init__(self, metrics: Metrics, interval: float = LAG_INTERVAL) -> None:
        self.metrics = metrics
        self.interval = interval
        self.last = 0.0
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            self.note(max(0.0, loop.time() - start - self.interval))

    def note(self, lag: float) -> None:
        self.last = lag
        self.peak = max(self.peak, lag)
        self.metrics.observe("loop.lag_seconds", lag, LAG_BUCKETS)

    def take_peak(self) -> float:
        peak, self.peak = self.peak, self.last
        return peak


RECOUNT_EVERY = 600.0
"""Seconds after which the channel counts are taken afresh from the catalog (a safeguard: the
counts follow every change event in between)."""


def _channel_state(item: CatalogItem | None) -> tuple[int, int]:
    """(is a channel, is an online channel) of a stored catalog item."""
    if item is None or item_kind(item.device_id) != "channel":
        return 0, 0
    return 1, 1 if (item.status or "").upper() in ("ON", "ONLINE") else 0


class ChannelCounts:
    """Channels in the catalog and how many are online, without walking 200,000 items on every
    scrape: counted once (at the first scrape, after the catalog is loaded), then kept up to
    date from the catalog's change events (every change after loading is one, with the item
    before and after), and counted afresh every :data:`RECOUNT_EVERY` seconds."""

    def __init__(self, ctx: ApiContext, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self.total = 0
        self.online = 0
        self._counted_at: float | None = None
        ctx.events.subscribe(CatalogChange, self._change)

    def close(self) -> None:
        self.ctx.events.unsubscribe(CatalogChange, self._change)

    def _change(self, event: CatalogChange) -> None:
        if self._counted_at is None:
            return  # not counted yet: the first count will see this change
        was, was_on = _channel_state(event.before)
        now, now_on = _channel_state(event.after)
        self.total += now - was
        self.online += now_on - was_on

    def counts(self) -> tuple[int, int]:
        now = self.clock()
        if self._counted_at is None or now - self._counted_at >= RECOUNT_EVERY:
            total = online = 0
            for _, item in self.ctx.catalog:
                is_channel, is_online = _channel_state(item)
                total += is_channel
                online += is_online
            self.total, self.online, self._counted_at = total, online, now
        return self.total, self.online


def _bucket_bound(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def histogram_family(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=())
    family.add_metric(
        [], [(_bucket_bound(b), float(n)) for b, n in hist.cumulative()], sum_value=hist.total
    )
    return family


class GatewayCollector(Collector):
    """Everything ``/metrics`` shows, read from ``ctx`` when scraped. ``relay`` holds the
    per-stream figures the route fetched (asynchronously) just before the scrape."""

    def __init__(self, ctx: ApiContext, lag: LoopLag) -> None:
        self.ctx = ctx
        self.lag = lag
        self.relay: list[StreamStats] = []
        self.channels = ChannelCounts(ctx)

    async def refresh(self) -> None:
        """Fetch the relay's per-stream figures (from its workers, maybe) for the next scrape;
        a stream that ends meanwhile is skipped."""
        legs = list(self.ctx.media.legs)
        relay = self.ctx.media.relay

        async def one(key: str) -> StreamStats | None:
            try:
                return await relay.stats(key)
            except Exception:
                return None

        try:
            got = await asyncio.wait_for(
                asyncio.gather(*(one(k) for k in legs)), RELAY_STATS_TIMEOUT
            )
        except TimeoutError:
            log.warning("metrics.relay_stats_timeout", streams=len(legs))
            got = []
        self.relay = [s for s in got if s is not None]

    def collect(self) -> Iterator[Metric]:
        yield from self._devices()
        yield from self._channels()
        counters = self.ctx.metrics.snapshot()
        yield from self._sip(counters)
        yield from self._security(counters)
        yield from self._sync(counters)
        yield from self._subscriptions()
        yield from self._sessions()
        yield from self._previews(counters)
        yield from self._uppers()
        yield from self._store(counters)
        yield from self._loop()
        yield from self._histograms()
        events = CounterMetricFamily(
            "gb_events", "Every counter the gateway keeps, by name.", labels=["name"]
        )
        for name, value in counters.items():
            events.add_metric([name], float(value))
        yield events

    # -- devices and channels --------------------------------------------------------------
    def _devices(self) -> Iterable[Metric]:
        ctx = self.ctx
        known = 0
        online_ids: set[str] = set()
        # This node's registrar only, never ``ctx.devices`` (every node's in a cluster): each
        # node exports the devices it holds, so summing the nodes counts each device once.
        for dev in ctx.registrar.values():
            known += 1
            if dev.online:
                online_ids.add(dev.device_id)
        yield GaugeMetricFamily(
            "gb_devices_registered", "Devices known to the registrar.", value=known
        )
        yield GaugeMetricFamily(
            "gb_devices_online", "Devices registered now.", value=len(online_ids)
        )
        directory = ctx.directory
        yield GaugeMetricFamily(
            "gb_device_accounts", "Device accounts in the directory.", value=len(directory.accounts)
        )
        total = GaugeMetricFamily(
            "gb_unit_devices", "Device accounts of each unit.", labels=["unit", "name"]
        )
        online = GaugeMetricFamily(
            "gb_unit_devices_online",
            "Devices of each unit registered now.",
            labels=["unit", "name"],
        )
        for unit in list(directory.units.values()):
            members = directory.members(unit.id)
            total.add_metric([unit.id, unit.name], len(members))
            online.add_metric([unit.id, unit.name], len(members & online_ids))
        yield total
        yield online

    def _channels(self) -> Iterable[Metric]:
        total, on = self.channels.counts()
        yield GaugeMetricFamily("gb_channels", "Channels in the catalog.", value=total)
        yield GaugeMetricFamily("gb_channels_online", "Channels whose status is ON.", value=on)

    # -- SIP ---------------------------------------------------------------------------------
    def _sip(self, counters: dict[str, int]) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "gb_sip_requests",
            "SIP requests received and sent (new transactions sent; received ones with their "
            "retransmissions), by method.",
            labels=["direction", "method"],
        )
        responses = CounterMetricFamily(
            "gb_sip_responses",
            "SIP responses received (matched to a transaction) and sent (retransmissions "
            "included), by the request's method and the status.",
            labels=["direction", "method", "status"],
        )
        timeouts = CounterMetricFamily(
            "gb_sip_transaction_timeouts",
            "Client transactions that got no final response in time, by method.",
            labels=["method"],
        )
        parse = CounterMetricFamily(
            "gb_parse_errors", "Input that could not be read, by kind.", labels=["kind"]
        )
        for name, kind in PARSE_ERRORS.items():
            parse.add_metric([kind], float(counters.get(name, 0)))
        for name, value in counters.items():
            if name.startswith("sip.rx.request.") or name.startswith("sip.tx.request."):
                requests.add_metric([name[4:6], name[15:]], float(value))
            elif name.startswith("sip.rx.response.") or name.startswith("sip.tx.response."):
                method, _, status = name[16:].rpartition(".")
                responses.add_metric([name[4:6], method, status], float(value))
            elif name.startswith("sip.tx.timeout."):
                timeouts.add_metric([name[15:]], float(value))
        yield requests
        yield responses
        yield timeouts
        yield parse
        yield CounterMetricFamily(
            "gb_sip_server_unanswered",
            "Requests the gateway failed to answer in time (answered 500/408 by the guard).",
            value=float(counters.get("sip.rx.unanswered", 0)),
        )

    def _security(self, counters: dict[str, int]) -> Iterable[Metric]:
        digest = CounterMetricFamily(
            "gb_digest_failures",
            "REGISTER digest answers that failed, by reason.",
            labels=["reason"],
        )
        lockouts = CounterMetricFamily(
            "gb_lockouts", "Lock-outs started after repeated wrong passwords.", labels=["kind"]
        )
        refused = CounterMetricFamily(
            "gb_lockout_refusals",
            "REGISTERs refused while their address or device was locked out.",
            labels=["kind"],
        )
        for name, value in counters.items():
            if name.startswith("register.auth.") and name != "register.auth.ok":
                digest.add_metric([name[14:]], float(value))
            elif name.startswith("register.locked_out."):
                lockouts.add_metric([name[20:]], float(value))
            elif name.startswith("register.refused_locked."):
                refused.add_metric([name[24:]], float(value))
        bad = counters.get("register.bad_credentials", 0)
        if bad:
            digest.add_metric(["bad_credentials"], float(bad))
        yield digest
        yield lockouts
        yield refused

    # -- catalog sync and subscriptions ----------------------------------------------------
    def _sync(self, counters: dict[str, int]) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "gb_catalog_syncs", "Catalog syncs by how they ended.", labels=["result"]
        )
        for result in ("complete", "partial", "failed", "interrupted"):
            family.add_metric([result], float(counters.get(f"sync.{result}", 0)))
        yield family

    def _subscriptions(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "gb_subscriptions",
            "Subscriptions held: the gateway's to devices (side=device) and uppers' to the "
            "gateway (side=upper), by kind.",
            labels=["side", "kind"],
        )
        counts: defaultdict[tuple[str, str], int] = defaultdict(int)
        subs = getattr(self.ctx.sync.subscriptions, "_subs", {})
        for sub in list(subs.values()):
            if getattr(sub, "active", False):
                counts[("device", str(sub.kind))] += 1
        for session in list(self.ctx.uplink.sessions.values()):
            for sub in list(session.subs.values()):
                counts[("upper", str(sub.kind))] += 1
        for (side, kind), n in sorted(counts.items()):
            family.add_metric([side, kind], n)
        yield family

    # -- media -------------------------------------------------------------------------------
    def _sessions(self) -> Iterable[Metric]:
        media = self.ctx.media
        legs = GaugeMetricFamily(
            "gb_sessions",
            "Media sessions (legs: the gateway's INVITEs) by kind and transport.",
            labels=["kind", "transport"],
        )
        outputs = GaugeMetricFamily(
            "gb_session_outputs",
            "Receivers of media sessions (uppers' INVITEs, local sessions) by transport.",
            labels=["transport"],
        )
        by_leg: defaultdict[tuple[str, str], int] = defaultdict(int)
        by_out: defaultdict[str, int] = defaultdict(int)
        for leg in list(media.legs.values()):
            by_leg[(leg.kind, leg.transport)] += 1
            for out in leg.outputs.values():
                by_out[out.transport] += 1
        for (kind, transport), n in sorted(by_leg.items()):
            legs.add_metric([kind, transport], n)
        for transport, n in sorted(by_out.items()):
            outputs.add_metric([transport], n)
        yield legs
        yield outputs
        packets = bytes_ = lost = 0
        out_packets = out_bytes = out_dropped = 0
        for stats in self.relay:
            packets += stats.input.packets
            bytes_ += stats.input.bytes
            lost += max(0, stats.input.lost)
            for o in stats.outputs:
                out_packets += o.packets
                out_bytes += o.bytes
                out_dropped += o.dropped
        doc = "over the media sessions open now (a gauge: an ended session leaves the sum)"
        yield GaugeMetricFamily(
            "gb_relay_received_packets", f"RTP packets received {doc}.", value=packets
        )
        yield GaugeMetricFamily(
            "gb_relay_received_bytes", f"RTP bytes received {doc}.", value=bytes_
        )
        yield GaugeMetricFamily(
            "gb_relay_lost_packets", f"RTP packets lost (RFC 3550 A.3) {doc}.", value=lost
        )
        yield GaugeMetricFamily(
            "gb_relay_sent_packets", f"RTP packets sent {doc}.", value=out_packets
        )
        yield GaugeMetricFamily("gb_relay_sent_bytes", f"RTP bytes sent {doc}.", value=out_bytes)
        yield GaugeMetricFamily(
            "gb_relay_dropped_packets", f"RTP packets dropped on output {doc}.", value=out_dropped
        )

    def _previews(self, counters: dict[str, int]) -> Iterable[Metric]:
        """Live preview (``gateway.preview``): open now, and the ``preview.*`` counters as
        families (``preview.refused.503`` -> ``gb_preview_refused_total{status="503"}``)."""
        yield GaugeMetricFamily(
            "gb_previews_active", "Live previews open now.", value=self.ctx.previews.active
        )
        yield CounterMetricFamily(
            "gb_preview_started",
            "Live previews opened (answered 201).",
            value=float(counters.get("preview.started", 0)),
        )
        refused = CounterMetricFamily(
            "gb_preview_refused", "Live previews refused, by HTTP status.", labels=["status"]
        )
        ended = CounterMetricFamily(
            "gb_preview_ended",
            "Live previews ended, by reason (deleted, ice_failed, closed, device_offline, "
            "leg_ended, max_seconds, stopping, error).",
            labels=["reason"],
        )
        for name, value in counters.items():
            if name.startswith("preview.refused."):
                refused.add_metric([name[16:]], float(value))
            elif name.startswith("preview.ended."):
                ended.add_metric([name[14:]], float(value))
        yield refused
        yield ended
        yield CounterMetricFamily(
            "gb_preview_sent_frames",
            "Video frames handed to preview viewers (each viewer counted).",
            value=float(counters.get("preview.frames_sent", 0)),
        )
        yield CounterMetricFamily(
            "gb_preview_sent_bytes",
            "Bytes of media handed to preview viewers (each viewer counted).",
            value=float(counters.get("preview.bytes_sent", 0)),
        )

    # -- uppers, store, loop -----------------------------------------------------------------
    def _uppers(self) -> Iterable[Metric]:
        registered = GaugeMetricFamily(
            "gb_upper_registered", "1 while registered at the upper, else 0.", labels=["upper"]
        )
        state = GaugeMetricFamily(
            "gb_upper_state",
            "1 for the upper's registration state (standby: another cluster node serves it).",
            labels=["upper", "state"],
        )
        for uid in list(self.ctx.uplink.platforms):
            now = self.ctx.uplink.state_of(uid)
            registered.add_metric([uid], 1 if now == "registered" else 0)
            for s in ("registered", "registering", "offline", "disabled", "standby"):
                state.add_metric([uid, s], 1 if s == now else 0)
        yield registered
        yield state

    def _store(self, counters: dict[str, int]) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "gb_store_write_failures",
            "Store batch writes that failed (retried later).",
            value=float(counters.get("store.write_failed", 0)),
        )
        yield GaugeMetricFamily(
            "gb_store_healthy",
            "1 while the store answers.",
            value=1 if self.ctx.store.healthy() else 0,
        )

    def _loop(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "gb_event_loop_lag_last_seconds",
            "How late the event loop woke its lag monitor, at the latest check.",
            value=self.lag.last,
        )
        yield GaugeMetricFamily(
            "gb_event_loop_lag_max_seconds",
            "The largest event-loop lag seen since the previous scrape.",
            value=self.lag.take_peak(),
        )

    def _histograms(self) -> Iterable[Metric]:
        hists = self.ctx.metrics.histograms()
        for key, (name, doc) in HISTOGRAMS.items():
            hist = hists.pop(key, None)
            if hist is None:
                hist = Histogram(LAG_BUCKETS if key == "loop.lag_seconds" else SECONDS_BUCKETS)
            yield histogram_family(name, doc, hist)
        for key, hist in sorted(hists.items()):
            name = "gb_" + "".join(c if c.isalnum() else "_" for c in key)
            yield histogram_family(name, f"Histogram {key}.", hist)


def make_registry(ctx: ApiContext, lag: LoopLag) -> tuple[CollectorRegistry, GatewayCollector]:
    """A registry of this API server's own (no process-wide state) holding its collector."""
    registry = CollectorRegistry(auto_describe=False)
    collector = GatewayCollector(ctx, lag)
    registry.register(collector)
    return registry, collector
