"""The upper platform's side at the city plan's size: 200,000 channels behind one gateway.

Run: ``.venv/bin/python bench/uplink.py`` (defaults: 2,000 NVRs × 100 channels, 1,000 go offline).

1. The gateway runs as a subprocess with two upper platforms configured, one over TCP and one
   over UDP (both ``share = "all"``, ``id_policy = "keep"``). Both uppers are simulated
   (``conformance.peers.platform.SimPlatform``) in this process, on their own endpoints.
2. The simulated NVRs (``bench/catalog.py --simulate``) register and sync from a second
   process; the run waits until all channels are in the gateway's store and both uppers have
   the gateway registered.
3. Each upper queries the whole catalog: the time from the query to the last part, the number
   of items and messages, and the largest message (UDP: must stay under 1,300 bytes).
4. The TCP upper subscribes to the catalog; then the simulator unregisters ``--offline``
   devices at once (SIGUSR1). Latency per device = its OFF NOTIFY's arrival at the upper −
   the moment its unregistration was sent (both read CLOCK_MONOTONIC on this machine). Also
   the time until every channel of those devices was reported OFF.

Targets: the full catalog over TCP in under 60 s; the OFF NOTIFYs for all 1,000 offline
devices within 5 s. Prints one JSON object; progress on stderr. Bounded by ``--budget``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from catalog import device_ids, stored_counts  # noqa: E402
from register import GATEWAY_ID, Gateway, log  # noqa: E402

from conformance.peers.platform import SimPlatform  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.sip import Endpoint, TimerConfig  # noqa: E402

UPPER_TCP = "34010000002000000001"
UPPER_UDP = "34010000002000000002"


def upper_lines(upper_id: str, port: int, transport: str) -> list[str]:
    return [
        "[[uplink.platforms]]",
        f'id = "{upper_id}"',
        f'domain = "{upper_id[:10]}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        f'transport = "{transport}"',
        'password = "12345678"',
        "keepalive_interval = 30",
        "retry_interval = 2",
    ]


async def upper(upper_id: str) -> tuple[Endpoint, SimPlatform]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(), max_connections_per_ip=100)
    await ep.start("127.0.0.1", 0)
    return ep, SimPlatform(ep, platform_id=upper_id, domain=upper_id[:10]).start()


async def wait_until(what: str, check: Any, deadline: float, every: float = 0.5) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        await asyncio.sleep(every)


async def full_catalog(p: SimPlatform, budget: float) -> dict[str, Any]:
    res = await p.catalog(GATEWAY_ID, timeout=budget, idle=30.0)
    return {
        "seconds": round(res.elapsed, 2),
        "items": len(res.items),
        "sum_num": res.sum_num,
        "partial": res.partial,
        "messages": len(res.raw),
        "largest_message_bytes": max((len(r) for r in res.raw), default=0),
        "items_per_second": round(len(res.items) / res.elapsed) if res.elapsed else None,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gb-uplink-bench-"))
    deadline = time.monotonic() + args.budget
    tcp_ep, tcp_up = await upper(UPPER_TCP)
    udp_ep, udp_up = await upper(UPPER_UDP)
    gw = Gateway(
        workdir,
        downlink=[],
        extra=[
            *upper_lines(UPPER_TCP, tcp_ep.port, "tcp"),
            *upper_lines(UPPER_UDP, udp_ep.port, "udp"),
        ],
    )
    sim: subprocess.Popen[str] | None = None
    expected = args.devices * args.channels
    try:
        gw.start()
        sim = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "catalog.py"),
                "--simulate",
                "--port",
                str(gw.port),
                "--devices",
                str(args.devices),
                "--channels",
                str(args.channels),
                "--transport",
                "tcp",
                "--items-per-message",
                "100",
                "--budget",
                str(args.budget),
                "--offline-on-signal",
                str(args.offline),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert sim.stdout is not None
        loop = asyncio.get_running_loop()
        if (await loop.run_in_executor(None, sim.stdout.readline)).strip() != "READY":
            raise RuntimeError("simulator did not start")
        db = workdir / "gateway.db"
        started = time.monotonic()
        await wait_until(
            f"{expected} channels stored",
            lambda: stored_counts(db)[0] >= expected,
            deadline,
        )
        log(f"{expected} channels stored in {time.monotonic() - started:.1f} s")
        for p in (tcp_up, udp_up):
            await wait_until(
                "the gateway registered upward",
                lambda p=p: GATEWAY_ID in p.lowers and p.lowers[GATEWAY_ID].online,
                deadline,
            )
        total_items = expected + args.devices + 1  # channels, NVRs, the gateway itself
        remaining = deadline - time.monotonic()
        log("catalog query over TCP")
        tcp_catalog = await full_catalog(tcp_up, remaining)
        log(f"TCP: {tcp_catalog}")
        log("catalog query over UDP")
        udp_catalog = await full_catalog(udp_up, deadline - time.monotonic())
        log(f"UDP: {udp_catalog}")

        sub = await tcp_up.subscribe(GATEWAY_ID, "Catalog", expires=3600)
        if not sub.active:
            raise RuntimeError(f"catalog subscription refused: {sub.status}")
        await asyncio.sleep(2.0)  # the initial report (nothing is offline yet)
        tcp_up.catalog_events.clear()
        tcp_up.notify_times.clear()
        victims = device_ids(args.devices)[: args.offline]
        victim_set = set(victims)
        channel_set = {f"{d[:10]}131{i * 1000 + n:07d}" for i, d in enumerate(victims)
                       for n in range(1, args.channels + 1)}  # fmt: skip
        sim.send_signal(signal.SIGUSR1)
        sent: dict[str, float] = {}
        while not sent:  # skip anything else the simulator printed
            line = await loop.run_in_executor(None, sim.stdout.readline)
            if not line:
                raise RuntimeError("simulator ended before reporting")
            if line.startswith('{"offline_sent"'):
                sent = json.loads(line)["offline_sent"]
        first_sent = min(sent.values())

        def arrivals() -> tuple[dict[str, float], float | None]:
            devices: dict[str, float] = {}
            channels_off = 0
            last_channel = None
            for (event, item), t in zip(tcp_up.catalog_events, tcp_up.notify_times, strict=True):
                if event != "OFF":
                    continue
                if item in victim_set and item not in devices:
                    devices[item] = t
                elif item in channel_set:
                    channels_off += 1
                    last_channel = t
            done = last_channel if channels_off >= len(channel_set) else None
            return devices, done

        await wait_until(
            "every offline device and channel reported",
            lambda: len(arrivals()[0]) >= len(victims) and arrivals()[1] is not None,
            min(deadline, time.monotonic() + 120),
            every=0.25,
        )
        devices, channels_done = arrivals()
        latencies = [devices[d] - sent[d] for d in victims]
        rss_mb = round(gw.rss() / 2**20, 1)
    finally:
        if sim is not None and sim.poll() is None:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(timeout=15)
            except subprocess.TimeoutExpired:
                sim.kill()
        gw.stop()
        await tcp_ep.close()
        await udp_ep.close()
    return {
        "benchmark": "uplink",
        "command": " ".join(["bench/uplink.py", *args.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "channels_stored": expected,
        "catalog_items_expected": total_items,
        "catalog_over_tcp": tcp_catalog,
        "catalog_over_udp": udp_catalog,
        "devices_offline": len(victims),
        "offline_notify_latency_seconds": {
            "max": round(max(latencies), 3),
            "p50": round(percentile(latencies, 0.5), 3),
            "p99": round(percentile(latencies, 0.99), 3),
        },
        "all_devices_reported_after_seconds": round(max(devices.values()) - first_sent, 3),
        "all_their_channels_reported_after_seconds": (
            round(channels_done - first_sent, 3) if channels_done is not None else None
        ),
        "gateway_rss_mb": rss_mb,
        "targets": {"catalog_over_tcp_seconds": 60, "offline_notify_seconds": 5},
        "warnings_logged": gw.warnings_logged(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=2000)
    p.add_argument("--channels", type=int, default=100)
    p.add_argument("--offline", type=int, default=1000, help="devices that go offline at once")
    p.add_argument("--budget", type=float, default=900.0, help="seconds the whole run may take")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    args.argv = raw
    from gateway.app import install_event_loop_policy

    install_event_loop_policy()
    result = asyncio.run(drive(args))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    ok = not result["catalog_over_tcp"]["partial"] and not result["catalog_over_udp"]["partial"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
