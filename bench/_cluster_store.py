"""The store's part of ``bench/cluster.py``: what sharing the model in Redis costs.

* ``measure_register``: the registration rate of one gateway process on SQLite and of one on
  Redis, in the same run, with ``bench/register.py``'s machinery (SIPp, the ramp, the
  "sustained" rule: < 0.1 % failed and >= 90 % of the target rate achieved). Both answer a
  REGISTER only once its binding is written (group commit), so the figure is the cost of the
  shared store on the registrar's path.
* ``measure_memory``: Redis's ``used_memory`` (``INFO memory``) before and after a
  :class:`~gateway.store.RedisStore` writes devices, then catalog channels as real NVRs report
  them (``conformance/peers/catalog_gen.py``'s 2016 items, with ``Info``); per device and per
  channel, and how long writing and reading back that catalog takes.

Each part starts its own ``redis-server`` (``tests/redisrig.py``) in a temporary folder on a
free loopback port and stops it by PID at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from register import (  # noqa: E402
    SCENARIOS,
    Budget,
    Gateway,
    Load,
    Sipp,
    best,
    device_ids,
    free_port,
    log,
    ramp,
    write_injection_csv,
)

from tests.redisrig import RedisServer  # noqa: E402

MB = 1024 * 1024


def _redis_config(gw: Gateway, url: str) -> None:
    """Point a ``register.Gateway`` at Redis instead of its SQLite file."""
    lines = gw.config_text.splitlines()
    at = lines.index('backend = "sqlite"')
    lines[at : at + 2] = ['backend = "redis"', f'url = "{url}"', 'prefix = "bench:"']
    lines += ["[cluster]", 'node_id = "bench"', ""]
    gw.config_text = "\n".join(lines)
    gw.config_path.write_text(gw.config_text, encoding="utf-8")


def measure_register(
    sipp_exe: str, rates: list[int], step_seconds: float, budget_s: float
) -> dict[str, Any]:
    """The best sustained registration rate of a ramp, on SQLite then on Redis."""
    out: dict[str, Any] = {"rates_tried": rates, "step_seconds": step_seconds}
    budget = Budget(budget_s)
    workdir = Path(tempfile.mkdtemp(prefix="gb28181-cluster-bench-"))
    server = RedisServer(workdir / "redis-server")
    try:
        server.start()
        for backend in ("sqlite", "redis"):
            where = workdir / backend
            where.mkdir()
            gw = Gateway(where)
            if backend == "redis":
                _redis_config(gw, server.url)
            try:
                gw.start()
                sipp = Sipp(sipp_exe, where, gw)
                sipp.last_end = time.monotonic() - 100  # nothing to wait out at the start
                first = [1]

                def fresh(calls: int, where: Path = where, first: list[int] = first) -> Path:
                    ids = device_ids(calls, first[0])
                    first[0] += calls
                    return write_injection_csv(where / f"ids-{first[0]}.csv", ids)

                load = Load(
                    "register", SCENARIOS / "register.xml", fresh, free_port(), target=0, grain=1
                )
                steps = ramp(load, sipp, gw, budget, rates, step_seconds)
                top = best(steps)
                out[backend] = {
                    "max_sustained_rate": top.target_rate if top else 0,
                    "achieved_rate": round(top.achieved_rate, 1) if top else 0.0,
                    "gateway_cpu_us_per_call": top.as_json()["gateway_cpu_us_per_call"]
                    if top
                    else None,
                    "mean_call_ms": top.as_json()["mean_call_ms"] if top else None,
                    "steps": [
                        {
                            k: s.as_json()[k]
                            for k in (
                                "target_rate",
                                "achieved_rate",
                                "failed",
                                "mean_call_ms",
                                "gateway_cpu_pct",
                                "sustained",
                            )
                        }
                        for s in steps
                    ],
                    "skipped": load.skipped,
                    "warnings_logged": gw.warnings_logged(),
                }
                log(f"{backend}: best sustained {out[backend]['max_sustained_rate']}/s")
            finally:
                gw.stop()
        sq, rd = out["sqlite"]["max_sustained_rate"], out["redis"]["max_sustained_rate"]
        out["redis_vs_sqlite"] = round(rd / sq, 3) if sq else None
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


async def measure_memory(devices: int, channels: int, per_nvr: int) -> dict[str, Any]:
    """Redis memory per device and per channel as the store writes them."""
    from conformance.peers.catalog_gen import channel_item
    from gateway.model import Device
    from gateway.store import RedisStore

    folder = Path(tempfile.mkdtemp(prefix="gb28181-redis-mem-"))
    server = RedisServer(folder)
    try:
        server.start()
        store = RedisStore(server.url, prefix="m:", node_id="bench", flush_interval=0.2)
        await store.start()
        r = store.redis

        async def used() -> int:
            info = await r.info("memory")
            return int(info["used_memory"])

        base = await used()
        now = time.time()
        for n in range(devices):
            store.save_device(
                Device(
                    f"34020000001320{n:06d}",
                    transport="udp",
                    host=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",
                    port=5060,
                    contact=f"sip:34020000001320{n:06d}@10.0.0.1:5060",
                    expires=3600,
                    registered_at=now,
                    expires_at=now + 3600,
                    last_seen=now,
                    online=True,
                    call_id=f"{n:08x}-call-id@10.0.0.1",
                    cseq=2,
                    user_agent="IP Camera",
                    gb_version="2.0",
                    name=f"camera {n}",
                    manufacturer="Hikvision",
                    model="DS-2CD",
                    firmware="V5.5.0",
                    channel_count=1,
                )
            )
        await store.flush()
        after_devices = await used()
        nvrs = max(1, channels // per_nvr)
        started = time.monotonic()
        for v in range(nvrs):
            nvr = f"34020000001180{v:06d}"
            for n in range(per_nvr):
                item = channel_item(
                    nvr,
                    f"3402000000131{v:04d}{n:03d}",
                    n,
                    parent_id=nvr,
                    civil_code="340200",
                    manufacturer="Hikvision",
                    model="DS-2CD3T46",
                    gb2022=False,
                )
                store.save_item(nvr, item, now)
        queued_s = time.monotonic() - started
        started = time.monotonic()
        await store.flush()
        write_s = time.monotonic() - started
        after_items = await used()
        await store.close()
        started = time.monotonic()
        again = RedisStore(server.url, prefix="m:", node_id="bench")
        await again.start()
        load_s = time.monotonic() - started
        loaded = len(again.load_items())
        await again.close()
        total = nvrs * per_nvr
        return {
            "devices": devices,
            "channels": total,
            "channels_per_nvr": per_nvr,
            "used_memory_base_mb": round(base / MB, 2),
            "bytes_per_device": round((after_devices - base) / devices) if devices else None,
            "bytes_per_channel": round((after_items - after_devices) / total),
            "used_memory_end_mb": round(after_items / MB, 1),
            "channels_200k_mb_estimate": round(
                200_000 * (after_items - after_devices) / total / MB
            ),
            "queue_channels_s": round(queued_s, 2),
            "write_channels_s": round(write_s, 2),
            "start_and_load_s": round(load_s, 2),
            "loaded_channels": loaded,
            "redis": (await _version(server)),
        }
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def _version(server: RedisServer) -> str:
    import redis.asyncio as aioredis

    r = aioredis.Redis(host=server.host, port=server.port)
    try:
        info = await r.info("server")
        return str(info.get("redis_version", "?"))
    finally:
        await r.aclose()


def run_memory(devices: int, channels: int, per_nvr: int) -> dict[str, Any]:
    return asyncio.run(measure_memory(devices, channels, per_nvr))
