"""The composition root: builds every part from the configuration, wires them, starts and stops.

This is the only module that knows how the gateway is put together.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable

import structlog

from gateway.catalog import Catalog
from gateway.downlink.broadcast import VoiceBroadcast
from gateway.downlink.downlink import Downlink
from gateway.downlink.messages import MessageRouter
from gateway.downlink.registrar import Registrar
from gateway.downlink.subscriptions import Subscriptions
from gateway.downlink.sync import CatalogSync
from gateway.events import EventBus
from gateway.media.relay import make_relay
from gateway.media.sessions import SessionTable
from gateway.metrics import Metrics
from gateway.settings import Config
from gateway.sip.dialog import Dialog, send_bye
from gateway.sip.endpoint import Endpoint
from gateway.sip.transaction import TimerConfig
from gateway.sip.uri import SipUri
from gateway.store import Store
from gateway.uplink.calls import Calls, UpperAudio
from gateway.uplink.service import Uplink

log = structlog.get_logger("gateway.app")


def configure_logging(config: Config) -> None:
    level = getattr(logging, config.log.level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if config.log.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def open_store(config: Config) -> Store:
    if config.store.backend == "memory":
        from gateway.store.memory import MemoryStore

        return MemoryStore()
    from gateway.store.sqlite import SqliteStore

    return SqliteStore(config.store.path, flush_interval=config.store.flush_interval)


class Gateway:
    """Everything running together. ``await start()``, then ``await close()``."""

    def __init__(
        self,
        config: Config,
        *,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.events = EventBus()
        self.store = store if store is not None else open_store(config)
        self.endpoint: Endpoint | None = None
        self.registrar: Registrar | None = None
        self.catalog = Catalog(
            store=self.store,
            events=self.events,
            metrics=self.metrics,
            gateway_id=config.gateway.id,
            clock=clock,
        )
        self.downlink: Downlink | None = None
        self.subscriptions: Subscriptions | None = None
        self.sync: CatalogSync | None = None
        self.uplink: Uplink | None = None
        self.media: SessionTable[Dialog] | None = None
        self.broadcast: VoiceBroadcast | None = None
        self.calls: Calls | None = None

    def _serves(self, uri: SipUri) -> bool:
        """Requests may name the gateway by ID, by domain, or by address alone, or (from an
        upper platform) one of the items it shares, by the ID that upper knows it by."""
        user = uri.user
        if not user or user in (self.config.gateway.id, self.config.gateway.domain):
            return True
        if self.catalog.owner_of(user) is not None:
            return True
        if self.registrar is not None and user in self.registrar.devices:
            return True
        return self.uplink is not None and self.uplink.knows(user)

    async def start(self) -> None:
        cfg = self.config
        sip = cfg.sip
        self.endpoint = Endpoint(
            metrics=self.metrics,
            timers=TimerConfig(t1=sip.t1, t2=sip.t2, t4=sip.t4),
            advertised_host=sip.advertised_host,
            user_agent=sip.user_agent,
            serves=self._serves,
            tcp_idle_timeout=sip.tcp_idle_timeout,
            max_connections_per_ip=sip.max_connections_per_ip,
        )
        self.registrar = Registrar(
            config=cfg,
            endpoint=self.endpoint,
            store=self.store,
            events=self.events,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.registrar.install()
        router = MessageRouter(endpoint=self.endpoint, metrics=self.metrics)
        router.handle("Keepalive", self.registrar.on_keepalive)
        router.install()
        self.downlink = Downlink(
            config=cfg,
            endpoint=self.endpoint,
            registrar=self.registrar,
            catalog=self.catalog,
            events=self.events,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.downlink.install(router)
        self.subscriptions = Subscriptions(
            config=cfg,
            endpoint=self.endpoint,
            downlink=self.downlink,
            catalog=self.catalog,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.subscriptions.install()
        self.sync = CatalogSync(
            config=cfg,
            downlink=self.downlink,
            subscriptions=self.subscriptions,
            catalog=self.catalog,
            events=self.events,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.sync.install()
        self.uplink = Uplink(
            config=cfg,
            endpoint=self.endpoint,
            catalog=self.catalog,
            registrar=self.registrar,
            downlink=self.downlink,
            store=self.store,
            events=self.events,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.uplink.install(router)
        media_cfg = cfg.media
        relay = make_relay(
            workers=media_cfg.workers,
            host=media_cfg.host,
            port_min=media_cfg.port_min,
            port_max=media_cfg.port_max,
            on_event=self._relay_event,
            metrics=self.metrics,
        )
        endpoint = self.endpoint

        async def hang_up(dialog: Dialog) -> None:
            await send_bye(endpoint, dialog, timeout=endpoint.timers.timeout)

        self.media = SessionTable(
            media=media_cfg,
            domain=cfg.gateway.domain,
            relay=relay,
            metrics=self.metrics,
            hang_up=hang_up,
            clock=self.clock,
        )
        # The device side of a voice broadcast reaches the upper's part only through this
        # AudioSource: the downlink never imports the uplink.
        self.broadcast = VoiceBroadcast(
            gateway_id=cfg.gateway.id,
            endpoint=self.endpoint,
            downlink=self.downlink,
            media=self.media,
            upper=UpperAudio(
                config=cfg, endpoint=self.endpoint, uplink=self.uplink, media=self.media
            ),
            metrics=self.metrics,
            clock=self.clock,
        )
        self.calls = Calls(
            config=cfg,
            endpoint=self.endpoint,
            devices=self.registrar,
            downlink=self.downlink,
            uplink=self.uplink,
            media=self.media,
            broadcast=self.broadcast,
            events=self.events,
            metrics=self.metrics,
        )
        self.calls.install(router)
        await self.store.start()
        # The catalog first: devices found expired while loading turn their channels OFF.
        self.catalog.load()
        self.registrar.load()
        await self.media.start()
        await self.endpoint.start(sip.host, sip.port)
        await self.registrar.start()
        self.sync.start()
        self.uplink.start()
        log.info(
            "gateway.started",
            id=cfg.gateway.id,
            domain=cfg.gateway.domain,
            host=sip.host,
            port=self.endpoint.port,
            store=cfg.store.backend,
        )

    @property
    def port(self) -> int:
        assert self.endpoint is not None
        return self.endpoint.port

    def _relay_event(self, stream_id: str, output_id: str | None, event: str) -> None:
        if self.media is not None:
            self.media.on_relay_event(stream_id, output_id, event)

    async def close(self) -> None:
        if self.calls is not None:
            await self.calls.close()
        if self.media is not None:
            await self.media.close()
        if self.uplink is not None:
            await self.uplink.close()
        if self.sync is not None:
            await self.sync.close()
        if self.subscriptions is not None:
            await self.subscriptions.close()
        if self.downlink is not None:
            await self.downlink.close()
        if self.registrar is not None:
            await self.registrar.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        await self.store.close()
        log.info("gateway.stopped", metrics=self.metrics.snapshot())


def install_event_loop_policy() -> None:
    """uvloop on Linux when installed; the default loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Collect young garbage less often and never rescan start-up objects.

    The signalling path allocates a few short-lived objects per message; with CPython's default
    thresholds (700, 10, 10) full collections keep walking every live registration and pending
    transaction, which halved keepalive throughput in ``bench/register.py``. Start-up objects are
    frozen out of collection entirely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(config: Config) -> None:
    gateway = Gateway(config)
    await gateway.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - not on Linux
            pass
    try:
        await stop.wait()
    finally:
        await gateway.close()
