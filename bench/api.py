"""The HTTP API's read side on 200,000 channels: p50/p99/max per endpoint.

Run: ``PYTHONPATH=. .venv/bin/python bench/api.py`` (defaults: 2,000 devices × 100 channels,
200 units of 10 devices, every third device offline, 200 timed requests per endpoint).

A gateway is built in this process (fresh SQLite store in a temporary directory, SIP and
HTTP on loopback with OS-picked ports). The devices are put into the registrar as if they had
registered (``Device`` records, saved to the store) and their catalogs are applied with
``Catalog.apply_sync``, the call a catalog sync makes with a device's answer, so every per-item
path (validation, normalisation, the store, the change events the API's views listen to) runs;
only SIP is skipped. Units and accounts go through the directory. Each device reports a
civil region, a business group (215) and a virtual organisation (216) above its channels.

The requests go through real HTTP (httpx, keep-alive, one connection) on loopback, one at a
time. Each endpoint is asked once before the timing (``cold_ms``) and then ``--requests``
times. ``views_full_build_ms`` is the one-off cost of building every device's view from
nothing (what the first sample of the stats sampler pays after a start). Prints one JSON
object: per endpoint ``p50_ms``, ``p99_ms``, ``max_ms``, ``cold_ms`` and the answer's total.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402

from gateway.api._views import Views  # noqa: E402
from gateway.app import Gateway, configure_logging, install_event_loop_policy  # noqa: E402
from gateway.manscdp import CatalogItem  # noqa: E402
from gateway.model import Device  # noqa: E402
from gateway.settings import config_from_dict  # noqa: E402

TOKEN = "bench-viewer-token-0123456789"
CIVIL = "34020000"


def device_id(n: int) -> str:
    return f"{CIVIL}00118{n:07d}"


def items_for(owner: str, n: int, channels: int) -> list[CatalogItem]:
    """A civil region, a business group, a virtual organisation and the channels under it."""
    region = CIVIL[:6]
    bg = f"{CIVIL}00215{n:07d}"
    vo = f"{CIVIL}00216{n:07d}"
    out = [
        CatalogItem(device_id=region, name="市辖区", parent_id=owner),
        CatalogItem(device_id=bg, name=f"业务分组{n}", parent_id=region),
        CatalogItem(device_id=vo, name=f"一号楼{n}", parent_id=bg, business_group_id=bg),
    ]
    for c in range(1, channels + 1):
        cid = f"{CIVIL}00131{n:04d}{c:03d}"
        out.append(
            CatalogItem(
                device_id=cid,
                name=f"Camera {n}-{c} 通道{c}",
                manufacturer="SimVision",
                model="SV-IPC2T47",
                parent_id=f"{owner}/{vo}",
                status="ON" if n % 3 else "OFF",
                civil_code=CIVIL,
            )
        )
    return out


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


UPPER = "34010000002000000001"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    config = config_from_dict(
        {
            "sip": {"host": "127.0.0.1", "port": 0},
            "store": {"backend": "sqlite", "path": str(tmp / "gw.db")},
            "log": {"level": "warning"},
            "http": {
                "port": 0,
                "tokens": [{"name": "bench", "role": "viewer", "token": TOKEN}],
            },
            "media": {"port_min": 40000, "port_max": 40100},
            # One upper sharing everything (nobody listens there: its registration keeps
            # trying, which does not matter to what the API answers about it).
            "uplink": {
                "platforms": [
                    {
                        "id": UPPER,
                        "domain": UPPER[:10],
                        "host": "127.0.0.1",
                        "port": 9,
                        "password": "bench-upper",
                        "retry_interval": 3600,
                    }
                ]
            },
        }
    )
    configure_logging(config)
    gw = Gateway(config)
    await gw.start()
    assert gw.api is not None
    t0 = time.perf_counter()
    directory = gw.directory
    units = [directory.add_unit(f"单位{u:04d}", kind="school") for u in range(args.units)]
    now = time.time()
    for n in range(1, args.devices + 1):
        did = device_id(n)
        unit = units[(n - 1) % len(units)] if n <= args.devices - args.unassigned else None
        directory.add_account(did, name=f"NVR {n}", unit_id=unit.id if unit else None)
        dev = Device(
            did,
            host="127.0.0.1",
            port=15000 + n % 40000,
            registered_at=now,
            expires_at=now + 3600,
            last_seen=now,
            online=bool(n % 3),
            name=f"NVR {n}",
            manufacturer="SimVision",
        )
        gw.registrar.devices[did] = dev
        gw.store.save_device(dev)
        gw.catalog.apply_sync(did, items_for(did, n, args.channels), partial=False)
    await gw.store.flush()
    load_seconds = time.perf_counter() - t0
    # What a start costs once: every device's view built from nothing, in one go (what a
    # request needing them all pays if it comes first) and spread over the loop by warm()
    # (what the stats sampler does a second after start), with the longest stall it caused.
    views = Views.of(gw.api.ctx)
    views._views.clear()
    views.version += 1
    start = time.perf_counter()
    views.unit_totals()
    views_build_ms = (time.perf_counter() - start) * 1000
    views._views.clear()
    views.version += 1
    stalls: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0)
            now_ = time.perf_counter()
            stalls.append((now_ - last) * 1000)
            last = now_

    tick = asyncio.ensure_future(ticker())
    start = time.perf_counter()
    await views.warm()
    warm_ms = (time.perf_counter() - start) * 1000
    done.set()
    await tick
    channels = args.devices * args.channels
    mid = args.devices // 2
    probe_unit = units[0].id
    paths = {
        "devices_page1": "/api/v1/devices?limit=50",
        "devices_q_name": "/api/v1/devices?q=NVR%20123",
        "devices_offline": "/api/v1/devices?online=false",
        "channels_q_prefix": f"/api/v1/channels?q={CIVIL}00131{mid:04d}",
        "channels_page_deep": f"/api/v1/channels?offset={channels - 100}&limit=50",
        "channels_q_name": "/api/v1/channels?q=camera%201234-",
        "tree_root": "/api/v1/tree",
        "tree_unit": f"/api/v1/tree?parent={probe_unit}",
        "tree_device": f"/api/v1/tree?parent={device_id(mid)}",
        "tree_vo_100_channels": (
            f"/api/v1/tree?parent={CIVIL}00216{mid:07d}&device={device_id(mid)}&limit=100"
        ),
        "device_detail": f"/api/v1/devices/{device_id(mid)}",
        "stats": "/api/v1/stats",
        "units_page1": "/api/v1/units?limit=50",
        "uppers": "/api/v1/uppers",
        "upper_detail": f"/api/v1/uppers/{UPPER}",
    }
    results: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gw.api.port}", headers=headers, timeout=60
    ) as client:
        for name, path in paths.items():
            start = time.perf_counter()
            first = await client.get(path)
            cold = (time.perf_counter() - start) * 1000
            first.raise_for_status()
            body = first.json()
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                r = await client.get(path)
                times.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
            results[name] = {
                "path": path,
                "total": body.get("total", body.get("channels")),
                "cold_ms": round(cold, 2),
                "p50_ms": round(percentile(times, 50), 2),
                "p99_ms": round(percentile(times, 99), 2),
                "max_ms": round(max(times), 2),
            }
        # Churn: a device goes offline between requests (its 100 channels change), then the
        # device list and the tree root are asked again.
        churn: list[float] = []
        for n in range(1, min(args.requests, args.devices) + 1):
            gw.catalog.set_device_status(device_id(n), "OFF" if n % 2 else "ON")
            start = time.perf_counter()
            (await client.get("/api/v1/tree")).raise_for_status()
            churn.append((time.perf_counter() - start) * 1000)
        results["tree_root_after_a_device_changed"] = {
            "p50_ms": round(percentile(churn, 50), 2),
            "p99_ms": round(percentile(churn, 99), 2),
            "max_ms": round(max(churn), 2),
        }
        # The same for an upper's description: its channel counts walk the catalog once per
        # change (kept between changes).
        churn = []
        for n in range(1, min(args.requests // 4, args.devices) + 1):
            gw.catalog.set_device_status(device_id(n), "ON" if n % 2 else "OFF")
            start = time.perf_counter()
            (await client.get(f"/api/v1/uppers/{UPPER}")).raise_for_status()
            churn.append((time.perf_counter() - start) * 1000)
        results["upper_detail_after_a_device_changed"] = {
            "p50_ms": round(percentile(churn, 50), 2),
            "p99_ms": round(percentile(churn, 99), 2),
            "max_ms": round(max(churn), 2),
        }
    await gw.close()
    return {
        "devices": args.devices,
        "channels": channels,
        "units": args.units,
        "requests_per_endpoint": args.requests,
        "load_seconds": round(load_seconds, 1),
        "views_full_build_ms": round(views_build_ms, 1),
        "views_warm_ms": round(warm_ms, 1),
        "views_warm_longest_stall_ms": round(max(stalls, default=0.0), 2),
        "python": platform.python_version(),
        "endpoints": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--unassigned", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    install_event_loop_policy()  # the loop production runs on (uvloop on Linux)
    print(json.dumps(asyncio.run(run(args)), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
