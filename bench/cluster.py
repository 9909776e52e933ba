"""Figures of the cluster on Redis (issue 18), one JSON object on stdout.

Run: ``.venv/bin/python bench/cluster.py`` (needs ``redis-server`` and ``sipp``).

* ``register``: the registration rate of one node on SQLite and one on Redis, same run, same
  ramp (``_cluster_store.measure_register``: the cost of sharing the store).
* ``memory``: Redis memory per device and per channel (``_cluster_store.measure_memory``).
* ``failover``: the upper's next query answered after the node holding its registration is
  killed, p50/max over ``--kills`` kills (``_cluster_failover.measure_failover``).
* ``catalog_sync``: a catalog of ``--sync-channels`` channels reaching every one of
  ``--nodes`` nodes (``_cluster_sync.measure_catalog_sync``).

The last two are written beside this file by the cluster's own parts; until they are there, the
part says ``{"not_built": true}``. Progress goes to stderr; every part is bounded; only the
processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from _cluster_store import measure_register, run_memory


def optional(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` when that module exists here, else None (a part not built yet)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    found = getattr(mod, name, None)
    return found if callable(found) else None


def part(result: dict[str, Any], key: str, run: Callable[[], Any]) -> None:
    started = time.monotonic()
    try:
        result[key] = run()
    except Exception as exc:  # the other parts still report
        result[key] = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(result[key], dict):
        result[key].setdefault("elapsed_s", round(time.monotonic() - started, 1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--register-rates", default="250,500,1000,1500,2000,3000,4000")
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--register-budget", type=float, default=400.0)
    p.add_argument("--devices", type=int, default=10_000, help="for the memory figure")
    p.add_argument("--channels", type=int, default=200_000, help="for the memory figure")
    p.add_argument("--per-nvr", type=int, default=500, help="channels of each NVR")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--sync-channels", type=int, default=200_000)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated parts not to run")
    args = p.parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "cluster",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    if "register" not in skip:
        sipp = shutil.which("sipp")
        if sipp is None:
            result["register"] = {"error": "sipp not found (Debian package sip-tester)"}
        else:
            rates = [int(r) for r in args.register_rates.split(",") if r]
            part(
                result,
                "register",
                lambda: measure_register(sipp, rates, args.step_seconds, args.register_budget),
            )
    if "memory" not in skip:
        part(result, "memory", lambda: run_memory(args.devices, args.channels, args.per_nvr))
    failover = optional("_cluster_failover", "measure_failover")
    if "failover" not in skip:
        if failover is None:
            result["failover"] = {"not_built": True}
        else:
            part(result, "failover", lambda: asyncio.run(failover(args.kills)))
    sync = optional("_cluster_sync", "measure_catalog_sync")
    if "catalog_sync" not in skip:
        if sync is None:
            result["catalog_sync"] = {"not_built": True}
        else:
            part(
                result,
                "catalog_sync",
                lambda: asyncio.run(sync(args.sync_channels, args.nodes)),
            )
    result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    failed = any(isinstance(v, dict) and "error" in v for v in result.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
