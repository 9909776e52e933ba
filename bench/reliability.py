"""``make reliability``: the overload bench, a short soak, the fault tests and a minute of wire
fuzzing, run one after the other, and one summary of them.

Run: ``.venv/bin/python bench/reliability.py`` (``--quick`` for a shorter storm). Each part runs
as its own process (a bench script or pytest); its JSON (or pytest's JUnit XML) is read back.
The summary says, per part, whether it held, with the figures that decide it:

* load held: with shedding, goodput under 3x the sustainable rate at least 90 % of it, no false
  offline, every shed device registered within twice the Retry-After window;
* faults survived: every fault test passed;
* hostile inputs tried: messages the fuzzer sent, and what it found (nothing, to pass);
* soak: no false offline, every device online and every channel in the catalog after it, the
  upper's view equal to the store;
* lost: what any part reports lost (target: nothing).

Writes the whole of it as JSON to ``--out`` (``bench/out/reliability.json``) and prints the
summary on stdout. Exit status 1 when any part did not hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def log(msg: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_json(args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run a bench script; its JSON from stdout, or ``None`` and why."""
    log(" ".join(args))
    try:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, timeout=timeout, text=True
        )
    except subprocess.TimeoutExpired:
        return None, f"did not finish within {timeout:.0f} s"
    try:
        return json.loads(done.stdout), ""
    except ValueError:
        return None, f"exit {done.returncode}, no JSON; stderr ends: {done.stderr[-400:]}"


def faults(timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "faults.xml"
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability"]
        log("pytest tests/reliability")
        try:
            subprocess.run(
                [sys.executable, *args, f"--junitxml={xml}"],
                cwd=ROOT,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"held": False, "error": f"did not finish within {timeout:.0f} s"}
        if not xml.exists():
            return {"held": False, "error": "pytest wrote no report"}
        cases = []
        for case in ET.parse(xml).iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            cases.append(
                {
                    "test": f"{case.get('classname', '')}.{case.get('name', '')}",
                    "outcome": "failed" if failed else "skipped" if skipped else "passed",
                    "seconds": round(float(case.get("time", "0")), 1),
                }
            )
    passed = sum(1 for c in cases if c["outcome"] == "passed")
    return {
        "held": bool(cases) and passed == len(cases),
        "passed": passed,
        "tests": len(cases),
        "cases": cases,
    }


def overload_verdict(data: dict[str, Any] | None, why: str) -> dict[str, Any]:
    if data is None:
        return {"held": False, "error": why}
    shed = data.get("modes", {}).get("shed", {})
    ratio = shed.get("goodput_ratio_to_sustainable")
    held = (
        ratio is not None
        and ratio >= 0.9
        and shed.get("false_offlines") == 0
        and bool(shed.get("recovered_within_2x_window"))
        and shed.get("failed") == 0
    )
    return {
        "held": held,
        "sustainable_rate": data.get("sustainable", {}).get("rate"),
        "shed": {
            k: shed.get(k)
            for k in (
                "offered_rate",
                "goodput_in_storm_per_s",
                "goodput_ratio_to_sustainable",
                "answered_within_1s_share",
                "retransmissions",
                "failed",
                "recovery_s",
                "retry_after",
                "false_offlines",
            )
        },
        "noshed": {
            k: data.get("modes", {}).get("noshed", {}).get(k)
            for k in (
                "goodput_in_storm_per_s",
                "goodput_ratio_to_sustainable",
                "answered_within_1s_share",
                "retransmissions",
                "failed",
                "false_offlines",
            )
        },
    }


def fuzz_verdict(data: dict[str, Any] | None, why: str) -> dict[str, Any]:
    if data is None:
        return {"held": False, "error": why}
    fz = data.get("fuzzer", {})
    return {
        "held": not data.get("findings"),
        "udp_sent": fz.get("udp_sent"),
        "tcp_sent": fz.get("tcp_sent"),
        "kinds": len(fz.get("kinds", {})),
        "findings": data.get("findings"),
    }


def soak_verdict(data: dict[str, Any] | None, why: str) -> dict[str, Any]:
    if data is None:
        return {"held": False, "error": why}
    checks = data.get("checks", {})
    failed = [name for name, c in checks.items() if isinstance(c, dict) and c.get("pass") is False]
    offline = data.get("false_offlines", {}).get("transitions")
    return {
        "held": bool(data.get("pass")) and bool(checks) and not failed and offline == 0,
        "storm": data.get("storm"),
        "false_offline_transitions": offline,
        "checks_failed": failed,
        "checks": checks,
        "errors_logged": data.get("errors_logged"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 20 s storm instead of 60 s")
    p.add_argument("--fuzz-seconds", type=float, default=60.0)
    p.add_argument("--out", default=str(HERE / "out" / "reliability.json"))
    args = p.parse_args(argv)
    started = time.monotonic()
    storm = ["--storm-seconds", "20", "--retry-after-max", "60"] if args.quick else []
    parts: dict[str, dict[str, Any]] = {}

    parts["faults"] = faults(timeout=900)
    fuzz, why = run_json(["bench/fuzz.py", "--seconds", str(args.fuzz_seconds)], 600)
    parts["fuzz"] = fuzz_verdict(fuzz, why)
    over, why = run_json(["bench/overload.py", *storm], 3000)
    parts["overload"] = overload_verdict(over, why)
    soak, why = run_json(["bench/soak.py", "--short"], 1800)
    parts["soak"] = soak_verdict(soak, why)

    lost = {
        "fault_tests_failed": [c["test"] for c in parts["faults"].get("cases", [])
                               if c["outcome"] == "failed"],
        "soak_checks_failed": parts["soak"].get("checks_failed"),
        "overload_failed_registrations": parts["overload"].get("shed", {}).get("failed"),
        "false_offlines": {
            "overload": parts["overload"].get("shed", {}).get("false_offlines"),
            "soak": parts["soak"].get("false_offline_transitions"),
        },
    }  # fmt: skip
    summary = {
        "held": all(part.get("held") for part in parts.values()),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "parts": parts,
        "lost": lost,
        "raw": {"overload": over, "soak": soak, "fuzz": fuzz},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    for name, part in parts.items():
        brief = {k: v for k, v in part.items() if k not in ("cases", "checks")}
        print(f"{name:9} {'held' if part.get('held') else 'FAILED'}  {json.dumps(brief)}")
    print(f"lost: {json.dumps(lost)}")
    print(f"whole report: {out}")
    return 0 if summary["held"] else 1


if __name__ == "__main__":
    sys.exit(main())
