"""The composition root: builds every part from the configuration, wires them, starts and stops.

This is the only module that knows how the gateway is put together.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from gateway import logs
from gateway.api import ApiContext, ApiServer
from gateway.catalog import Catalog
from gateway.cluster import Bus, Cluster, ClusterDevices, FloatingAddresses, NodeInfo, Replica
from gateway.directory import ACCOUNT_ADDED, ACCOUNT_REVOKED, POLICY_CHANGED, Directory
from gateway.downlink import (
    CatalogSync,
    DeviceQuirks,
    Downlink,
    Registrar,
    RemoteDevices,
    Subscriptions,
    VoiceBroadcast,
)
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    DeviceOffline,
    DeviceOnline,
    EventBus,
    MediaStatusReceived,
    MobilePositionReceived,
    UpperOffline,
)
from gateway.media import SessionTable, make_relay
from gateway.metrics import Metrics
from gateway.model import DeviceDirectory
from gateway.preview import Previews
from gateway.routes import ANY, MessageDispatcher, RouteTable
from gateway.settings import Config
from gateway.sip import Dialog, Endpoint, LoadGuard, Peer, SipUri, TimerConfig, send_bye
from gateway.store import Store, StoreUnavailable
from gateway.uplink import Calls, RelayedCalls, Uplink, UpperAudio

log = structlog.get_logger("gateway.app")


def configure_logging(config: Config) -> logs.RateLimit:
    """structlog for the gateway process (``gateway.logs``): level filter, rate limit per event
    name, excerpts of every value, console or JSON lines on stderr."""
    c = config.log
    return logs.configure(
        level=c.level,
        json=c.format == "json",
        burst=c.burst,
        window=c.window,
        max_chars=c.max_value_chars,
        exempt=logs.AUDIT if c.unlimited is None else frozenset(c.unlimited),
    )


def open_store(config: Config, metrics: Metrics | None = None) -> Store:
    if config.store.backend == "memory":
        from gateway.store import MemoryStore

        return MemoryStore()
    if config.store.backend == "redis":
        from gateway.store import RedisStore

        s = config.store
        return RedisStore(
            s.url,
            prefix=s.prefix,
            node_id=config.cluster.effective_node_id(),
            flush_interval=s.flush_interval,
            max_queued_writes=s.max_queued_writes,
            metrics=metrics,
        )
    from gateway.store import SqliteStore

    return SqliteStore(
        config.store.path, flush_interval=config.store.flush_interval, metrics=metrics
    )


def open_cluster(config: Config, metrics: Metrics | None = None) -> Cluster:
    """This node's part in a cluster: active iff the store is Redis (``[store] backend =
    "redis"``; its ``url`` and ``prefix``), else the single-node form (every lease held)."""
    url = config.store.url if config.store.backend == "redis" else None
    return Cluster(
        url=url,
        prefix=config.store.prefix,
        node_id=config.cluster.effective_node_id(),
        lease_seconds=config.cluster.lease_seconds,
        info={"floating_host": config.cluster.floating_host},
        metrics=metrics,
    )


class Gateway:
    """Everything running together: built at once (nothing opens a socket until :meth:`start`),
    then ``await start()`` and ``await close()``."""

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
        self.store = store if store is not None else open_store(config, self.metrics)
        self.cluster = open_cluster(config, self.metrics)
        identity = config.gateway
        sip = config.sip
        over = config.overload
        self.load_guard = LoadGuard(
            enabled=over.enabled,
            queue_delay=over.queue_delay,
            loop_lag=over.loop_lag,
            retry_after_min=over.retry_after_min,
            retry_after_max=over.retry_after_max,
        )
        self.endpoint = Endpoint(
            metrics=self.metrics,
            timers=TimerConfig(t1=sip.t1, t2=sip.t2, t4=sip.t4),
            advertised_host=sip.advertised_host,
            user_agent=sip.user_agent,
            serves=self._serves,
            tcp_idle_timeout=sip.tcp_idle_timeout,
            tcp_message_timeout=sip.tcp_message_timeout,
            max_connections_per_ip=sip.max_connections_per_ip,
            max_connections=sip.max_connections,
            tcp_buffer_budget=sip.tcp_buffer_budget,
            tcp_min_body_rate=sip.tcp_min_body_rate,
            fd_reserve=config.media.port_max - config.media.port_min + 1,
            load_guard=self.load_guard,
        )
        self.endpoint.core.known_sender = self._known_sender
        # The field quirks seen per device (gateway.downlink.quirks), one book for every part.
        self.quirks = DeviceQuirks(self.metrics)
        self.catalog = Catalog(
            store=self.store,
            quirks=self.quirks,
            events=self.events,
            metrics=self.metrics,
            gateway_id=identity.id,
            clock=clock,
        )
        # Units and device accounts: seeded from [auth] at first start, then kept in the store.
        self.directory = Directory(config.auth, identity, self.store, clock)
        self.registrar = Registrar(
            identity=identity,
            auth=config.auth,
            settings=config.registrar,
            keepalive=config.keepalive,
            endpoint=self.endpoint,
            store=self.store,
            events=self.events,
            metrics=self.metrics,
            clock=clock,
            busy=lambda: self.load_guard.behind or self.load_guard.share < 1.0,
            quirks=self.quirks,
            credentials=self.directory.password,
        )
        # In a cluster (the Redis backend): the bus to the other nodes, the replica of what they
        # hold, and one directory of every node's devices for the parts that serve requests.
        self.bus: Bus | None = None
        self.replica: Replica | None = None
        self.devices: DeviceDirectory = self.registrar
        if config.store.backend == "redis":
            self.bus = Bus(
                url=config.store.url,
                prefix=config.store.prefix,
                node_id=config.cluster.effective_node_id(),
                metrics=self.metrics,
                request_timeout=config.cluster.request_timeout,
            )
            self.replica = Replica(
                bus=self.bus,
                local=self.registrar,
                catalog=self.catalog,
                events=self.events,
                metrics=self.metrics,
                release=self.registrar.release,
            )
            self.devices = ClusterDevices(self.registrar, self.replica)
        self.downlink = Downlink(
            identity=identity,
            settings=config.downlink,
            endpoint=self.endpoint,
            devices=self.devices,
            store=self.store,
            catalog=self.catalog,
            events=self.events,
            metrics=self.metrics,
            clock=clock,
            quirks=self.quirks,
            # Only while the socket queue is behind right now: a part may be waiting in it.
            busy=lambda: self.load_guard.behind,
        )
        self.subscriptions = Subscriptions(
            identity=identity,
            settings=config.downlink,
            endpoint=self.endpoint,
            downlink=self.downlink,
            catalog=self.catalog,
            metrics=self.metrics,
            clock=clock,
        )
        self.sync = CatalogSync(
            settings=config.downlink,
            downlink=self.downlink,
            subscriptions=self.subscriptions,
            catalog=self.catalog,
            events=self.events,
            metrics=self.metrics,
            clock=clock,
            busy=lambda: self.load_guard.share < 1.0,
        )
        self.uplink = Uplink(
            identity=identity,
            settings=config.uplink,
            endpoint=self.endpoint,
            catalog=self.catalog,
            devices=self.devices,
            downlink=self.downlink,
            store=self.store,
            events=self.events,
            metrics=self.metrics,
            clock=clock,
            directory=self.directory,
            cluster=self.cluster,
        )
        media = config.media
        relay = make_relay(
            workers=media.workers,
            host=media.host,
            port_min=media.port_min,
            port_max=media.port_max,
            on_event=self._relay_event,
            metrics=self.metrics,
        )
        endpoint = self.endpoint

        async def hang_up(dialog: Dialog) -> None:
            await send_bye(endpoint, dialog, timeout=endpoint.timers.timeout)

        self.media: SessionTable[Dialog] = SessionTable(
            media=media,
            domain=identity.domain,
            relay=relay,
            metrics=self.metrics,
            hang_up=hang_up,
            clock=clock,
            quirks=self.quirks,
        )
        # The device side of a voice broadcast reaches the upper's part only through this
        # AudioSource: the downlink never imports the uplink.
        self.broadcast = VoiceBroadcast(
            gateway_id=identity.id,
            endpoint=self.endpoint,
            downlink=self.downlink,
            media=self.media,
            upper=UpperAudio(
                identity=identity,
                settings=media,
                endpoint=self.endpoint,
                uplink=self.uplink,
                media=self.media,
            ),
            metrics=self.metrics,
            clock=clock,
        )
        self.calls = Calls(
            identity=identity,
            settings=media,
            endpoint=self.endpoint,
            devices=self.devices,
            downlink=self.downlink,
            uplink=self.uplink,
            media=self.media,
            broadcast=self.broadcast,
            events=self.events,
            metrics=self.metrics,
        )
        if self.uplink.takeover is not None:
            self.uplink.takeover.dialogs_of = self._upper_dialogs
        # A dead node's floating SIP address, taken over with its devices (in a cluster).
        self.floating = FloatingAddresses(
            self.cluster,
            self.endpoint,
            own_host=config.cluster.floating_host,
            on_taken=self._adopt_devices,
        )
        if self.bus is not None and self.replica is not None:
            remote = RemoteDevices(bus=self.bus, replica=self.replica, downlink=self.downlink)
            remote.schedule_sync = self.sync.schedule
            self.downlink.elsewhere = remote
            self.calls.relayed = RelayedCalls(
                bus=self.bus,
                replica=self.replica,
                calls=self.calls,
                endpoint=self.endpoint,
                media=self.media,
                metrics=self.metrics,
            )
            if self.cluster.membership is not None:
                # A node's membership ran out: its devices go offline here (until a survivor
                # adopts them), and the calls relayed through it end on the upper's side.
                self.cluster.membership.on_node_lost(self._node_lost)
        self.previews = Previews(
            settings=config.preview,
            calls=self.calls,
            media=self.media,
            downlink=self.downlink,
            metrics=self.metrics,
            clock=clock,
        )
        self.routes = build_routes(self)
        self.api: ApiServer | None = None
        if config.http.enabled:
            self.api = ApiServer(
                ApiContext(
                    config=config,
                    store=self.store,
                    metrics=self.metrics,
                    events=self.events,
                    endpoint=self.endpoint,
                    registrar=self.registrar,
                    catalog=self.catalog,
                    downlink=self.downlink,
                    sync=self.sync,
                    uplink=self.uplink,
                    media=self.media,
                    calls=self.calls,
                    quirks=self.quirks,
                    directory=self.directory,
                    previews=self.previews,
                    clock=clock,
                    devices=self.devices if isinstance(self.devices, ClusterDevices) else None,
                    extras={"cluster": self.cluster_state},
                )
            )
        self._log_roller: asyncio.Future[None] | None = None
        self._wire()

    def _wire(self) -> None:
        """Connect the parts: the route table to the endpoint, events to their subscribers (in
        this order: each subscriber runs in the publisher's turn), lost TCP connections to the
        parts that keep state on them."""
        dispatcher = MessageDispatcher(self.routes, metrics=self.metrics, tag=self.endpoint.tag)
        for method, handler in self.routes.sip_handlers(dispatcher).items():
            self.endpoint.route(method, handler)
        for event_type, subscriber in self.event_subscribers():
            self.events.subscribe(event_type, subscriber)
        self.endpoint.on_connection_lost(self.registrar.on_connection_lost)
        self.endpoint.on_connection_lost(self.uplink.connection_lost)
        self.directory.listeners.append(self._directory_changed)

    def _directory_changed(self, what: str, device_ids: Iterable[str]) -> None:
        """An account disabled, removed or re-passworded, or unknown devices now rejected:
        bindings made with credentials no longer valid stop being served. A new account for a
        device registered with the default password (unknown devices accepted) revokes that
        binding when the account is disabled or has another password."""
        if what == ACCOUNT_REVOKED:
            for device_id in device_ids:
                self.registrar.revoke(device_id, "account revoked")
        elif what == ACCOUNT_ADDED:
            default = self.directory.auth.password
            for device_id in device_ids:
                dev = self.registrar.devices.get(device_id)
                if dev is None or not dev.online:
                    continue
                if self.directory.password(device_id) != default:
                    self.registrar.revoke(device_id, "account added")
        elif what == POLICY_CHANGED:
            self.registrar.revoke_unauthorised("unknown devices rejected")

    def event_subscribers(self) -> list[tuple[type[Any], Callable[[Any], None]]]:
        """Who hears each event the parts publish (``gb28181-gateway routes`` prints these)."""
        return [
            (DeviceOnline, self.sync.on_online),
            (DeviceOffline, self.sync.on_offline),
            (CatalogChange, self.uplink.on_catalog_change),
            (DeviceOnline, self.uplink.on_device_online),
            (DeviceOffline, self.uplink.on_device_offline),
            (AlarmReceived, self.uplink.on_alarm),
            (MobilePositionReceived, self.uplink.on_position),
            (DeviceOffline, self.calls.on_device_offline),
            (UpperOffline, self.calls.on_upper_offline),
            (MediaStatusReceived, self.calls.on_media_status),
        ]

    def _upper_dialogs(self, upper_id: str) -> list[Dialog]:
        """The live media dialogs with an upper (kept in Redis for the next holder of it)."""
        return [
            out.dialog
            for out in list(self.media.outputs_by_call.values())
            if out.upper_id == upper_id and out.dialog is not None
        ]

    def cluster_state(self) -> dict[str, Any] | None:
        """This node's view of the cluster for ``/readyz``; ``None`` on a single node."""
        if not self.cluster.active:
            return None
        alive = self.cluster.membership.alive() if self.cluster.membership is not None else {}
        return {
            "node": self.cluster.node_id,
            "redis": self.cluster.healthy(),
            "bus": self.bus.healthy if self.bus is not None else None,
            "nodes": sorted(alive),
            "uppers_held": sorted(
                uid for uid in self.uplink.platforms if self.uplink.state_of(uid) != "standby"
            ),
        }

    def _node_lost(self, node_id: str, info: NodeInfo) -> None:
        if self.replica is not None:
            self.replica.node_lost(node_id)
        if self.calls.relayed is not None:
            self.calls.relayed.node_lost(node_id)

    async def _adopt_devices(self, node_id: str, info: NodeInfo) -> None:
        """This node took over ``node_id``'s floating address: the devices that registered
        through it (read fresh from the shared store, whose ``devnode`` names the dead node)
        are served here from now on, and saved so ``devnode`` names this node. The devices the
        other live nodes hold stay theirs."""
        reload = getattr(self.store, "reload", None)
        if reload is not None:
            await reload()
        device_nodes = getattr(self.store, "device_nodes", None)
        owners: dict[str, str] = device_nodes() if device_nodes is not None else {}
        adopted = [dev for dev in self.store.load_devices() if owners.get(dev.device_id) == node_id]
        self.registrar.adopt(adopted)
        for dev in adopted:
            try:
                self.store.save_device(dev)
            except StoreUnavailable as exc:
                # Redis gone too long: ``devnode`` still names the dead node until this node
                # saves the device again (its next registration or state change).
                log.warning("cluster.adopt_not_saved", device=dev.device_id, error=str(exc))
        # Said as registrations: the other nodes' replicas move them here, the uplink sends ON,
        # and the catalog of each is synced here (their items were the dead node's).
        for dev in adopted:
            if dev.online:
                self.events.publish(
                    DeviceOnline(dev.device_id, dev.transport, dev.host, dev.port, False)
                )
        log.info("cluster.devices_adopted", dead_node=node_id, devices=len(adopted))

    def _known_sender(self, user: str, peer: Peer) -> bool:
        """Under overload, new requests from these are served, not shed: a device registered
        from that host (its keepalives, its answers to our queries, its refreshes) and a
        configured upper."""
        dev = self.registrar.get(user)
        if dev is not None and dev.online and dev.host == peer.host:
            return True
        return self.uplink.is_upper_host(peer.host)

    def _serves(self, uri: SipUri) -> bool:
        """Requests may name the gateway by ID, by domain, or by address alone, or (from an
        upper platform) one of the items it shares, by the ID that upper knows it by."""
        user = uri.user
        if not user or user in (self.config.gateway.id, self.config.gateway.domain):
            return True
        if self.catalog.owner_of(user) is not None:
            return True
        if user in self.devices:
            return True
        return self.uplink.knows(user)

    async def start(self) -> None:
        cfg = self.config
        await self.store.start()
        if self.bus is not None:
            await self.bus.start()
        self.directory.load()
        # The catalog first: devices found expired while loading turn their channels OFF.
        self.catalog.load()
        if self.replica is not None:
            # A shared store (RedisStore.device_nodes) says which node holds which device: the
            # registrar takes only this node's; the others' are the replica's.
            device_nodes = getattr(self.store, "device_nodes", None)
            if callable(device_nodes):
                self.replica.seed(device_nodes())
            self.registrar.load(self.replica.held_elsewhere)
        else:
            self.registrar.load()
        await self.media.start()
        await self.endpoint.start(cfg.sip.host, cfg.sip.port)
        await self.registrar.start()
        if self.replica is not None:
            # Before the uplink: an upper registered here is served every node's catalog.
            await self.replica.start()
        self.sync.start()
        if self.cluster.membership is not None:
            self.cluster.membership.info.update(
                sip_host=cfg.sip.advertised_host or cfg.sip.host, sip_port=self.endpoint.port
            )
        self.cluster.start()
        self.floating.start()
        self.uplink.start()
        await self.previews.start()
        if self.api is not None:
            await self.api.start()
        self._log_roller = asyncio.ensure_future(self._roll_logs())
        log.info(
            "gateway.started",
            id=cfg.gateway.id,
            domain=cfg.gateway.domain,
            host=cfg.sip.host,
            port=self.endpoint.port,
            store=cfg.store.backend,
            http_port=self.api.port if self.api is not None else None,
            node=self.cluster.node_id if self.cluster.active else None,
        )

    @property
    def port(self) -> int:
        return self.endpoint.port

    def _relay_event(self, stream_id: str, output_id: str | None, event: str) -> None:
        self.media.on_relay_event(stream_id, output_id, event)

    async def _roll_logs(self) -> None:
        """Write the ``log.suppressed`` summaries of ended rate-limit windows even while nothing
        else is logged (otherwise the next line logged would bring them)."""
        while True:
            await asyncio.sleep(self.config.log.window)
            logs.roll_suppressed()

    async def close(self) -> None:
        if self._log_roller is not None:
            self._log_roller.cancel()
        if self.api is not None:
            await self.api.close()
        await self.previews.close()
        await self.calls.close()
        await self.media.close()
        await self.uplink.close()
        self.floating.close()
        await self.cluster.close()
        await self.sync.close()
        await self.subscriptions.close()
        await self.downlink.close()
        await self.registrar.close()
        await self.endpoint.close()
        if self.replica is not None:
            await self.replica.close()
        if self.bus is not None:
            await self.bus.close()
        await self.store.close()
        logs.flush_suppressed()  # what the rate limit dropped is reported before the last line
        log.info("gateway.stopped", metrics=self.metrics.snapshot())


def build_routes(gw: Gateway) -> RouteTable:
    """The gateway's one route table: every SIP method and MANSCDP command it answers, and who
    answers it. Clauses are GB/T 28181-2022's."""
    t = RouteTable()
    # §9.1 registration, §9.6 keepalive (recognised before any XML parse: the hottest message).
    t.sip("REGISTER", gw.registrar.on_register)
    t.raw_message("Notify", "Keepalive", gw.registrar.on_keepalive)
    # §9.5 queries and their answers; §9.3 controls (from an upper, forwarded down).
    t.message("Query", ANY, gw.uplink.on_query)
    t.message("Control", ANY, gw.uplink.on_control)
    t.message("Response", ANY, gw.downlink.on_response)
    # What devices report unasked: §9.4 alarms, §9.11 positions, §9.9 media status, the catalog
    # a device sends as it changes, and the 2022 notifications.
    t.message("Notify", "Alarm", gw.downlink.on_alarm)
    t.message("Notify", "MobilePosition", gw.downlink.on_position)
    t.message("Notify", "MediaStatus", gw.downlink.on_media_status)
    t.message("Notify", "Catalog", gw.downlink.on_catalog_message)
    for cmd in ("DeviceUpgradeResult", "UploadSnapShotFinished", "VideoUploadNotify"):
        t.message("Notify", cmd, gw.downlink.on_notification)
    t.message("Notify", "PTZPosition", gw.downlink.on_notification)
    # §9.12 voice broadcast, from an upper.
    t.message("Notify", "Broadcast", gw.calls.on_broadcast)
    # §9.11 subscriptions: SUBSCRIBE from uppers, NOTIFY from the devices we subscribe to.
    t.sip("SUBSCRIBE", gw.uplink.on_subscribe)
    t.sip("NOTIFY", gw.subscriptions.on_notify)
    # §9.2 live view, §9.8 playback and download, MANSRTSP over INFO.
    t.sip("INVITE", gw.calls.on_invite)
    t.sip("ACK", gw.calls.on_ack)
    t.sip("BYE", gw.calls.on_bye)
    t.sip("CANCEL", gw.calls.on_cancel)
    t.sip("INFO", gw.calls.on_info)
    # RFC 3261 §11: what the gateway accepts, for a peer or a load balancer asking.
    t.sip("OPTIONS", t.answer_options())
    return t


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
    """Run until SIGINT or SIGTERM, then stop cleanly. The handlers are installed before the
    gateway starts: a signal that arrives while it starts (or at once after "gateway.started")
    stops it when it has started, rather than killing the process or raising
    ``KeyboardInterrupt`` through the loop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - not on Linux
            pass
    gateway = Gateway(config)
    await gateway.start()
    tune_gc()
    try:
        await stop.wait()
    finally:
        await gateway.close()
