"""``gb28181-sim``: simulated GB/T 28181 peers on the command line.

``gb28181-sim device --server HOST:PORT`` plays N devices (IPC/NVR) on one socket: they register
with digest, keep alive, answer every query from a generated catalog, obey controls and accept
subscriptions, and one line is printed for each thing they see, until Ctrl-C or ``--duration``.

``gb28181-sim platform --port PORT`` plays an upper (city) platform: lower platforms (the gateway's
uplink) and devices register to it with digest and keep alive; it can query each one's catalog
(``--catalog-after``) and subscribe to it (``--subscribe``), and prints registrations, keepalives,
offline lowers, NOTIFYs and alarms as they come.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TextIO

import structlog

from conformance.argtypes import count as _count
from conformance.argtypes import gb_id as _gb_id
from conformance.argtypes import host_port as _host_port
from conformance.argtypes import non_negative_seconds as _non_negative
from conformance.argtypes import positive as _positive
from conformance.argtypes import seconds as _interval
from conformance.peers.device import DeviceHub, SimDevice
from conformance.peers.platform import Lower, SimPlatform
from gateway.metrics import Metrics
from gateway.sip.endpoint import Endpoint
from gateway.sip.transport import Peer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gb28181-sim",
        description="Simulated GB/T 28181 peers for testing a platform or gateway.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser(
        "device",
        help="simulated IPC/NVR devices that register to a platform and answer it",
        description=(
            "Register N simulated devices to a platform (e.g. the gateway), keep them alive and "
            "answer its queries, controls and subscriptions; print one line per event."
        ),
    )
    d.add_argument("--server", required=True, type=_host_port, metavar="HOST:PORT")
    d.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    d.add_argument("--count", type=_positive, default=1, help="number of devices (default 1)")
    d.add_argument("--channels", type=_count, default=4, help="channels per device (default 4)")
    d.add_argument(
        "--id",
        type=_gb_id,
        default="34020000001180000001",
        help="first device ID; the next devices count up the serial",
    )
    d.add_argument("--server-id", type=_gb_id, default="34020000002000000001")
    d.add_argument("--domain", help="SIP domain (default: first 10 digits of --server-id)")
    d.add_argument("--password", default="12345678")
    d.add_argument("--keepalive", type=float, default=60.0, metavar="SECONDS")
    d.add_argument("--expires", type=int, default=3600, metavar="SECONDS")
    d.add_argument("--groups", action="store_true", help="a business group and two virtual orgs")
    d.add_argument("--gb-version", choices=("2.0", "3.0"), help="send X-GB-Ver (3.0: 2022 items)")
    d.add_argument("--items-per-message", type=_positive, help="default: 1 on UDP, 100 on TCP")
    d.add_argument("--bind", type=_host_port, default=("0.0.0.0", 0), metavar="HOST:PORT")
    d.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")

    u = sub.add_parser(
        "platform",
        help="a simulated upper (city) platform that lower platforms and devices register to",
        description=(
            "Run an upper platform: accept REGISTER with digest, answer keepalives, mark silent "
            "lowers offline, optionally query and subscribe to each lower's catalog, and print "
            "one line per event (registrations, keepalives, offline, NOTIFYs, alarms)."
        ),
    )
    u.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    u.add_argument("--port", type=int, default=5061, help="UDP and TCP port (default 5061)")
    u.add_argument("--id", type=_gb_id, default="34010000002000000001", help="platform ID")
    u.add_argument("--domain", help="SIP domain and realm (default: first 10 digits of --id)")
    u.add_argument("--password", default="12345678")
    u.add_argument("--no-qop", action="store_true", help='challenge without qop="auth"')
    u.add_argument(
        "--keepalive-interval",
        type=_interval,
        default=60.0,
        metavar="SECONDS",
        help="expected keepalive period; offline after 3 missed (default 60)",
    )
    u.add_argument(
        "--catalog-after",
        type=_non_negative,
        metavar="SECONDS",
        help="query each lower's catalog this long after it registers",
    )
    u.add_argument("--subscribe", action="store_true", help="subscribe to each lower's catalog")
    u.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    return p


def device_ids(first: str, count: int) -> list[str]:
    """``count`` IDs from ``first`` up, counting the 6-digit serial."""
    serial = int(first[14:])
    if serial + count - 1 > 999_999:
        raise ValueError(f"{count} devices from {first} overflow the 6-digit serial")
    return [f"{first[:14]}{serial + i:06d}" for i in range(count)]


def _stamp() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, device_id: str, event: str, detail: str) -> None:
        print(f"{_stamp()} {device_id} {event} {detail}".rstrip(), file=self.out, flush=True)


class _LinePrinter:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, line: str) -> None:
        print(f"{_stamp()} {line}", file=self.out, flush=True)


def _on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, add: bool) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            if add:
                loop.add_signal_handler(sig, stop.set)
            else:
                loop.remove_signal_handler(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            pass


async def run_devices(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Unix
            pass
    host, port = args.server
    server = Peer(args.transport, host, port)
    try:
        ids = device_ids(args.id, args.count)
    except ValueError as exc:
        print(f"gb28181-sim: {exc}", file=sys.stderr)
        return 2
    endpoint = Endpoint(metrics=Metrics(), user_agent="gb28181-sim")
    await endpoint.start(*args.bind)
    hub = DeviceHub(endpoint, on_event=_Printer(out))
    for device_id in ids:
        hub.add(
            SimDevice(
                endpoint,
                device_id,
                server,
                server_id=args.server_id,
                domain=args.domain or args.server_id[:10],
                password=args.password,
                expires=args.expires,
                gb_version=args.gb_version,
                channel_count=args.channels,
                with_groups=args.groups,
                items_per_message=args.items_per_message,
            )
        )
    print(
        f"gb28181-sim: {len(ids)} devices x {args.channels} channels on "
        f"{args.bind[0]}:{endpoint.port} -> {server}",
        file=out,
        flush=True,
    )
    registered = 0

    async def start() -> None:
        nonlocal registered
        statuses = await hub.register_all()
        registered = sum(1 for s in statuses.values() if s == 200)
        print(f"gb28181-sim: {registered}/{len(ids)} registered", file=out, flush=True)
        hub.start_keepalive(args.keepalive)

    work = loop.create_task(start())
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except TimeoutError:
        pass
    finally:
        work.cancel()
        hub.stop()
        try:
            await asyncio.wait_for(hub.unregister_all(), 5.0)
        except TimeoutError:
            pass
        await endpoint.close()
        for sig in signals:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover
                pass
    print("gb28181-sim: stopped", file=out, flush=True)
    return 0 if registered else 1


async def run_platform(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _on_signals(loop, stop, True)
    endpoint = Endpoint(metrics=Metrics(), user_agent="gb28181-sim platform")
    try:
        await endpoint.start(args.host, args.port)
    except OSError as exc:
        _on_signals(loop, stop, False)
        print(f"gb28181-sim: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    printer = _LinePrinter(out)
    platform = SimPlatform(
        endpoint,
        platform_id=args.id,
        domain=args.domain or args.id[:10],
        password=args.password,
        qop=not args.no_qop,
        keepalive_interval=args.keepalive_interval,
        on_event=printer,
    )

    async def catalog_later(lower_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            result = await platform.catalog(lower_id)
        except LookupError:
            printer(f"{lower_id} catalog not queried: no longer registered")
            return
        printer(
            f"{lower_id} catalog items={len(result.items)} sum_num={result.sum_num}"
            f" messages={len(result.responses)} status={result.status}"
            + (" partial" if result.partial else "")
        )

    async def subscribe(lower_id: str) -> None:
        try:
            await platform.subscribe(lower_id, "Catalog")
        except LookupError:
            pass

    def registered(lower: Lower) -> None:
        if args.subscribe:
            platform.spawn(subscribe(lower.lower_id))
        if args.catalog_after is not None:
            platform.spawn(catalog_later(lower.lower_id, args.catalog_after))

    platform.on_registered = registered
    platform.start()
    print(
        f"gb28181-sim: platform {platform.platform_id} domain {platform.domain} on "
        f"{args.host}:{endpoint.port} (udp+tcp, qop={'auth' if platform.qop else 'none'})",
        file=out,
        flush=True,
    )
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except TimeoutError:
        pass
    finally:
        platform.stop()
        await endpoint.close()
        _on_signals(loop, stop, False)
    online = sum(1 for lower in platform.lowers.values() if lower.online)
    print(
        f"gb28181-sim: stopped ({len(platform.lowers)} lowers seen, {online} online)",
        file=out,
        flush=True,
    )
    return 0


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging()
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - not on Linux
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.command == "platform":
            return runner.run(run_platform(args))
        return runner.run(run_devices(args))


if __name__ == "__main__":
    sys.exit(main())
