"""Gateway CPU per registration at a fixed rate, for several source trees in turn.

Run: ``.venv/bin/python bench/register_cost.py --tree /path/to/old/checkout --tree .``
(needs ``sipp``). For a before/after figure of the registration path measured in the same run:
each round starts each tree's gateway (``PYTHONPATH`` set to the tree, SQLite store, shedding
off where the tree has it), lets SIPp register ``--rate`` fresh devices a second for
``--seconds`` (``bench/sipp/register.xml``: REGISTER → 401 → REGISTER → 200), and divides the
gateway process's CPU seconds by the registrations that succeeded. Rounds alternate the trees,
so a machine that gets busier affects them alike; the minimum over rounds is the figure to
quote. Prints one JSON object; progress on stderr. Only processes started here are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from register import (  # noqa: E402  (a sibling script, not a package)
    SCENARIOS,
    Gateway,
    device_ids,
    log,
    read_rows,
    sipp_command,
    write_injection_csv,
)


def one_run(exe: str, tree: Path, rate: int, seconds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gb28181-regcost-"))
    os.environ["PYTHONPATH"] = str(tree)  # the gateway subprocess imports this tree
    gw = Gateway(work)
    if not (tree / "gateway" / "sip" / "overload.py").exists():
        # A tree from before shedding refuses an unknown section.
        gw.config_text = gw.config_text.replace("[overload]\nenabled = false\n", "")
        gw.config_path.write_text(gw.config_text, encoding="utf-8")
    calls = rate * seconds
    inf = write_injection_csv(work / "ids.csv", device_ids(calls, 1))
    stat = work / "stat.csv"
    try:
        gw.start()
        time.sleep(1.0)
        cpu0, t0 = gw.cpu(), time.monotonic()
        args = sipp_command(
            exe,
            gw.port,
            SCENARIOS / "register.xml",
            inf,
            local_port=0,
            calls=calls,
            rate=rate,
            limit=2 * rate,
            recv_timeout_ms=5000,
            timeout_s=seconds + 30,
            stat=stat,
        )
        subprocess.run(args, cwd=work, capture_output=True, timeout=seconds + 60)
        elapsed = time.monotonic() - t0
        cpu = gw.cpu() - cpu0
    finally:
        gw.stop()
    rows = read_rows(stat)
    ok = int(rows[-1].get("SuccessfulCall(C)", "0")) if rows else 0
    failed = int(rows[-1].get("FailedCall(C)", "0")) if rows else 0
    shutil.rmtree(work, ignore_errors=True)
    return {
        "successful": ok,
        "failed": failed,
        "gateway_cpu_pct": round(100 * cpu / elapsed, 1),
        "cpu_us_per_registration": round(1e6 * cpu / ok, 1) if ok else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--tree", action="append", required=True, help="a checkout (repeatable)")
    p.add_argument("--rate", type=int, default=1500, help="registrations per second")
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    exe = shutil.which("sipp")
    if exe is None:
        print(json.dumps({"error": "sipp not found (Debian package sip-tester)"}))
        return 2
    trees = [Path(t).resolve() for t in args.tree]
    runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in trees}
    for r in range(args.rounds):
        for tree in trees:
            run = one_run(exe, tree, args.rate, args.seconds)
            runs[str(tree)].append(run)
            log(f"round {r + 1} {tree}: {run}")
    out: dict[str, Any] = {"benchmark": "register_cost", "rate": args.rate, "trees": {}}
    for tree, rs in runs.items():
        costs = [x["cpu_us_per_registration"] for x in rs if x["cpu_us_per_registration"]]
        out["trees"][tree] = {"runs": rs, "min_us": min(costs) if costs else None}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
