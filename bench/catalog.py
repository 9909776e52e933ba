"""Catalog sync at the city plan's size: 2,000 NVRs × 100 channels against one gateway.

Run: ``.venv/bin/python bench/catalog.py`` (defaults: 2,000 devices, 100 channels, TCP with
100 items per MESSAGE). ``--transport udp --items-per-message 1`` is the Hikvision-over-UDP case
(one MESSAGE, and one 200 OK, per channel).

The gateway runs as a subprocess on 127.0.0.1 with a fresh SQLite store and its default
downlink settings (sync on register, at most ``--max-syncs`` (128) syncs at once, catalog
subscription after each sync). The simulated NVRs (``conformance.peers.device``, one
``DeviceHub`` on one socket) run in a second process, so the gateway has a core of its own.
From the moment the simulator starts registering, the store is polled read-only until every
channel is there.

Figures:

* ``seconds_to_all_stored``: registration start → the last channel in SQLite.
* ``channels_per_second``: channels / that time.
* ``rss_per_channel_bytes``: (gateway RSS with everything stored − RSS before the devices came)
  / channels. The catalog lives in memory as well as in SQLite (the uplink answers from it).
* ``lost``: channels expected minus channels stored (must be 0), and devices whose stored count
  is not ``--channels``.

Prints one JSON object on stdout; progress goes to stderr. Bounded by ``--budget`` seconds; only
processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402
from register import DOMAIN, GATEWAY_ID, Gateway, log  # noqa: E402

FIRST_DEVICE = 1


def device_ids(count: int) -> list[str]:
    """NVR IDs (type 118) with serials 1..count; the simulator derives channel IDs from them."""
    return [f"{DOMAIN}118{n:07d}" for n in range(FIRST_DEVICE, FIRST_DEVICE + count)]


# ---------------------------------------------------------------------------------------------
# The simulator process


async def simulate(args: argparse.Namespace) -> None:
    from conformance.peers.device import DeviceHub, SimDevice
    from gateway.metrics import Metrics
    from gateway.sip.endpoint import Endpoint
    from gateway.sip.transaction import TimerConfig
    from gateway.sip.transport import Peer

    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(), max_connections_per_ip=100_000)
    await ep.start("127.0.0.1", 0)
    hub = DeviceHub(ep)
    server = Peer(args.transport, "127.0.0.1", args.port)
    # Every device shares the simulator's one socket (one TCP connection over TCP): the
    # gateway treats them as 2,000 devices behind one address, as behind a NAT.
    for i, device_id in enumerate(device_ids(args.devices)):
        hub.add(
            SimDevice(
                ep,
                device_id,
                server,
                server_id=GATEWAY_ID,
                domain=DOMAIN,
                channel_count=args.channels,
                items_per_message=args.items_per_message,
                channel_base=(i % 10_000) * 1_000,
            )
        )
    log(f"simulator: {args.devices} devices ready, registering over {args.transport}")
    print("READY", flush=True)
    started = time.monotonic()
    statuses = await hub.register_all(concurrency=args.concurrency)
    ok = sum(1 for s in statuses.values() if s == 200)
    log(f"simulator: {ok}/{len(statuses)} registered in {time.monotonic() - started:.1f} s")
    hub.start_keepalive(60.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if args.offline_on_signal:
        # bench/uplink.py: SIGUSR1 unregisters the first N devices at once and prints, as one
        # JSON line, when each unregistration was sent (CLOCK_MONOTONIC, shared by processes).
        victims = list(hub.devices.values())[: args.offline_on_signal]

        async def go_offline() -> None:
            hub.stop_keepalive()
            sent: dict[str, float] = {}

            async def one(dev: SimDevice) -> None:
                sent[dev.device_id] = time.monotonic()
                await dev.unregister()

            await asyncio.gather(*(one(d) for d in victims), return_exceptions=True)
            print(json.dumps({"offline_sent": sent}), flush=True)

        loop.add_signal_handler(signal.SIGUSR1, lambda: hub.spawn(go_offline()))
    try:
        await asyncio.wait_for(stop.wait(), args.budget)
    except TimeoutError:
        pass
    hub.stop()
    await ep.close()


def run_simulator(args: argparse.Namespace) -> int:
    from gateway.app import configure_logging, install_event_loop_policy
    from gateway.settings import config_from_dict

    # Logs to stderr, warnings only: stdout carries the READY line and the reports.
    configure_logging(config_from_dict({"log": {"level": "warning"}}))
    install_event_loop_policy()
    asyncio.run(simulate(args))
    return 0


# ---------------------------------------------------------------------------------------------
# The driver


def stored_counts(db: Path) -> tuple[int, int]:
    """(channels stored, devices whose channel count is not complete), read-only."""
    if not db.exists():
        return 0, -1
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        total = con.execute("SELECT count(*) FROM channels WHERE kind = 'channel'").fetchone()[0]
        return int(total), -1
    except sqlite3.OperationalError:
        return 0, -1
    finally:
        con.close()


def incomplete_devices(db: Path, channels: int) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute(
            "SELECT owner_id, count(*) FROM channels WHERE kind = 'channel' GROUP BY owner_id"
        ).fetchall()
    finally:
        con.close()
    return sum(1 for _, n in rows if n != channels)


def drive(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gb-catalog-bench-"))
    gw = Gateway(workdir, downlink=[f"max_concurrent_syncs = {args.max_syncs}"])
    gw.start()
    sim: subprocess.Popen[str] | None = None
    deadline = time.monotonic() + args.budget
    expected = args.devices * args.channels
    try:
        gw.wait_idle()
        rss_before = gw.rss()
        cpu_before = gw.cpu()
        sim_cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--simulate",
            "--port",
            str(gw.port),
            "--devices",
            str(args.devices),
            "--channels",
            str(args.channels),
            "--transport",
            args.transport,
            "--items-per-message",
            str(args.items_per_message),
            "--concurrency",
            str(args.concurrency),
            "--budget",
            str(args.budget),
        ]
        sim = subprocess.Popen(sim_cmd, stdout=subprocess.PIPE, text=True)
        sim_ps = psutil.Process(sim.pid)
        assert sim.stdout is not None
        if sim.stdout.readline().strip() != "READY":
            raise RuntimeError("simulator did not start")
        started = time.monotonic()
        db = workdir / "gateway.db"
        stored, last_log, peak_rss = 0, started, rss_before
        progress: list[tuple[float, int]] = []
        while stored < expected and time.monotonic() < deadline:
            time.sleep(0.25)
            stored, _ = stored_counts(db)
            peak_rss = max(peak_rss, gw.rss())
            now = time.monotonic()
            progress.append((round(now - started, 2), stored))
            if now - last_log >= 5:
                log(f"{stored}/{expected} channels stored after {now - started:.1f} s")
                last_log = now
            if sim.poll() is not None:
                raise RuntimeError(f"simulator exited with {sim.returncode}")
        elapsed = time.monotonic() - started
        rss_after = gw.rss()
        cpu_used = gw.cpu() - cpu_before
        sim_cpu = sim_ps.cpu_times().user + sim_ps.cpu_times().system
        incomplete = incomplete_devices(db, args.channels)
        warnings = gw.warnings_logged()
    finally:
        if sim is not None and sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(timeout=15)
            except subprocess.TimeoutExpired:
                sim.kill()
        gw.stop()
    return {
        "benchmark": "catalog sync",
        "command": " ".join(["bench/catalog.py", *args.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "devices": args.devices,
        "channels_per_device": args.channels,
        "transport": args.transport,
        "items_per_message": args.items_per_message,
        "channels_expected": expected,
        "channels_stored": stored,
        "lost": expected - stored,
        "incomplete_devices": incomplete,
        "seconds_to_all_stored": round(elapsed, 2) if stored >= expected else None,
        "channels_per_second": round(stored / elapsed) if elapsed > 0 else None,
        "gateway_rss_before_mb": round(rss_before / 2**20, 1),
        "gateway_rss_after_mb": round(rss_after / 2**20, 1),
        "gateway_rss_peak_mb": round(peak_rss / 2**20, 1),
        "rss_per_channel_bytes": round((rss_after - rss_before) / max(stored, 1)),
        "gateway_cpu_seconds": round(cpu_used, 1),
        "simulator_cpu_seconds": round(sim_cpu, 1),
        "warnings_logged": warnings,
        "targets": {"channels_per_second": 5000, "rss_per_channel_bytes": 1536, "lost": 0},
        "progress_tail": progress[-5:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--transport", choices=("udp", "tcp"), default="tcp")
    p.add_argument("--items-per-message", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=64, help="registrations in flight")
    p.add_argument(
        "--max-syncs", type=int, default=64, help="the gateway's downlink.max_concurrent_syncs"
    )
    p.add_argument("--budget", type=float, default=600.0, help="seconds the whole run may take")
    p.add_argument("--simulate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--offline-on-signal", type=int, default=0, help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    args.argv = raw
    if args.items_per_message is None:
        args.items_per_message = 100 if args.transport == "tcp" else 1
    if args.simulate:
        return run_simulator(args)
    result = drive(args)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["lost"] == 0 and not result["incomplete_devices"] else 1


if __name__ == "__main__":
    sys.exit(main())
