"""Failover time of an upper platform's registration in a cluster (issue 18).

Three gateway processes on 127.0.0.2-4 share one redis-server (``tests/cluster/procrig.py``), with
a lease time of 2 s; a simulated upper (SimPlatform) in this process. Each round: find the node
the upper's registration comes from, SIGKILL it (its whole process group), and time from the
kill until the upper's next query (DeviceInfo about the gateway) is answered by the node that
took over; then start the killed node again (same address, same node ID) and go on.

``measure_failover(kills)`` returns ``{"kills", "lease_seconds", "p50_s", "max_s",
"min_s", "times_s", "same_call_id"}``; ``bench/cluster.py`` (the issue's figures) calls it.
Run alone: ``.venv/bin/python bench/_cluster_failover.py [--kills 10]`` prints the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.cluster.procrig import GW, ClusterRig  # noqa: E402

LEASE_SECONDS = 2.0


async def measure_failover(kills: int, lease_seconds: float = LEASE_SECONDS) -> dict[str, Any]:
    """Kill the upper's holder ``kills`` times (restarting it each time): the failover times."""
    times: list[float] = []
    same_call_id = True
    with tempfile.TemporaryDirectory(prefix="cluster-failover-") as folder:
        rig = ClusterRig(Path(folder), nodes=3, lease_seconds=lease_seconds)
        try:
            await rig.start()
            holder = await rig.holder()
            call_id = rig.upper.lowers[GW].call_id
            for n in range(kills):
                killed = time.monotonic()
                await holder.kill()
                survivor, elapsed = await rig.failover(holder, killed=killed)
                times.append(elapsed)
                same_call_id &= rig.upper.lowers[GW].call_id == call_id
                print(
                    f"kill {n + 1}: {holder.name} -> {survivor.name} in {elapsed:.3f} s",
                    file=sys.stderr,
                )
                await holder.start()
                holder = survivor
        finally:
            await rig.close()
    return {
        "kills": kills,
        "lease_seconds": lease_seconds,
        "p50_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "min_s": round(min(times), 3),
        "times_s": [round(t, 3) for t in times],
        "same_call_id": same_call_id,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=LEASE_SECONDS)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure_failover(args.kills, args.lease)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
