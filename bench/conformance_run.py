"""``make conformance``: the whole conformance suite, in gateway mode, against the gateway as it
ships.

The gateway runs as a real process (``python -m gateway.cli run``) on its shipped defaults:
keepalive every 60 s to its upper, registration for 3600 s, retry after 60 s, a device offline
after 3 × 60 s of silence, and so on, as ``make run`` would have them. Only these are set: its
SIP and media ports and address (loopback), its data directory (a temporary one), and one
uplink to the suite's upper platform (ID, address, password, and ``gb_version`` for the
edition the suite checks). The suite (``gb28181-conformance run --target-role gateway``) plays
the upper platform above it and two simulated NVRs below it (one sending one catalog item per
MESSAGE with a custom tree, one sending its catalog in a batch in UTF-8); it starts first, so
the gateway's first REGISTER finds its upper listening.

The suite's reports (``junit.xml``, ``report.html``, ``results.json``), the gateway's log and
``summary.json`` go to ``--out`` (``bench/out/conformance``). The summary (counts per verdict,
duration, every applicable case that did not pass, what cases left out of place) is printed
last. Exit status 0 only when every applicable case passed (a skip of an applicable case
counts as not passed; cases that need an operator are not applicable here), 1 otherwise, 2 when
the run could not be made.

Run: ``.venv/bin/python bench/conformance_run.py [--edition 2016] [-- SUITE ARGS...]``; the
suite's progress (a live line on a terminal) and its per-case lines come through as it runs.
It takes about 12 minutes: the cases wait on the gateway's real timers (3 minutes of them
for one device to be called offline).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GATEWAY_ID = "34020000002000000001"  # the shipped default gateway.id
UPPER_ID = "34010000002000000001"
PASSWORD = "12345678"  # the shipped default auth.password (the NVRs use it) and the upper's
NVRS = ("34020000001180000101", "34020000001180000102")
MEDIA_PORTS = 400  # a media port range of this size (two NVRs, a few sessions at once)


def log(msg: str) -> None:
    print(f"[conformance {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _bindable(port: int, kinds: tuple[int, ...] = (socket.SOCK_STREAM, socket.SOCK_DGRAM)) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        if _bindable(port):
            return port
    raise RuntimeError("no free port")


def media_range() -> tuple[int, int]:
    """A range of :data:`MEDIA_PORTS` ports whose ends are free (checked, not reserved)."""
    for _ in range(50):
        low = random.randrange(20000, 30000 - MEDIA_PORTS) & ~1
        if all(_bindable(p) for p in (low, low + 1, low + MEDIA_PORTS - 1)):
            return low, low + MEDIA_PORTS - 1
    raise RuntimeError("no free media port range")


def gateway_config(sip_port: int, upper_port: int, media: tuple[int, int], data: Path,
                   edition: str) -> str:  # fmt: skip
    """The gateway's TOML: shipped defaults but for ports, address, data and the uplink."""
    return "\n".join(
        [
            "# Written by bench/conformance_run.py: every key not here is the shipped default.",
            "[sip]",
            'host = "127.0.0.1"',
            f"port = {sip_port}",
            "[media]",
            'host = "127.0.0.1"',
            f"port_min = {media[0]}",
            f"port_max = {media[1]}",
            "[http]",
            "port = 0",
            "[store]",
            f"path = {json.dumps(str(data / 'gateway.db'))}",
            "[[uplink.platforms]]",
            f'id = "{UPPER_ID}"',
            f'domain = "{UPPER_ID[:10]}"',
            'host = "127.0.0.1"',
            f"port = {upper_port}",
            f'password = "{PASSWORD}"',
            f'gb_version = "{edition}"',
            "",
        ]
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _wait_bound(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Until something listens on ``port`` (UDP and TCP can no longer be bound), or ``proc``
    ended, or ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if not _bindable(port, (socket.SOCK_DGRAM,)):
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop within {timeout:g} s: killing it")
        proc.kill()
        proc.wait()


def summarize(results: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What ``make conformance`` decides on: the counts, every applicable case not passed,
    what the runner could not put back."""
    cases = results.get("cases", [])
    applicable = [c for c in cases if c.get("applicable", True)]
    not_passed = [
        {"id": c["id"], "verdict": c["verdict"], "reason": c["reason"]}
        for c in applicable
        if c["verdict"] != "pass"
    ]
    unrestored = [n for n in results.get("state_log", []) if n["problems"] and not n["restored"]]
    return {
        "ok": bool(applicable) and not not_passed and not results.get("run_error"),
        "totals": results.get("totals", {}),
        "applicable": len(applicable),
        "passed": sum(1 for c in applicable if c["verdict"] == "pass"),
        "not_passed": not_passed,
        "run_error": results.get("run_error", ""),
        "left_out_of_place": [n for n in results.get("state_log", []) if n["problems"]],
        "unrestored": unrestored,
        "suite_seconds": results.get("duration"),
        "wall_seconds": round(seconds, 1),
    }


def print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    t = summary["totals"]
    print("")
    print("make conformance: the gateway on its shipped defaults, the suite in gateway mode")
    print(
        f"  {t.get('pass', 0)} pass, {t.get('fail', 0)} fail, {t.get('skip', 0)} skip, "
        f"{t.get('error', 0)} error of {t.get('total', 0)} cases; "
        f"{summary['passed']}/{summary['applicable']} applicable cases passed; "
        f"{summary['wall_seconds']:.0f} s"
    )
    if summary["run_error"]:
        print(f"  run error: {summary['run_error']}")
    for c in summary["not_passed"]:
        print(f"  NOT PASSED {c['id']} {c['verdict']}: {c['reason']}")
    for n in summary["left_out_of_place"]:
        state = "restored" if n["restored"] else "NOT restored"
        print(f"  after {n['after']}: {'; '.join(n['problems'])} ({state}, {n['waited']:.1f} s)")
    print(f"  reports: {out_dir}/report.html, results.json, junit.xml; gateway log: gateway.log")
    print("  OK" if summary["ok"] else "  FAILED: not every applicable case passed")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "conformance"))
    p.add_argument("--edition", choices=("2016", "2022"), default="2022")
    p.add_argument(
        "--register-timeout", type=float, default=120.0,
        help="the suite's --register-timeout: the gateway retries a failed registration after "
        "60-90 s by default, so more than that (default 120)",
    )  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="give up on the suite after")
    p.add_argument("suite_args", nargs="*", help="more gb28181-conformance run arguments")
    args = p.parse_args(argv)
    out_dir = Path(args.out).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    sip_port, upper_port = free_port(), free_port()
    while upper_port == sip_port:
        upper_port = free_port()
    media = media_range()
    data = Path(tempfile.mkdtemp(prefix="gb28181-conformance-"))
    config = out_dir / "gateway.toml"
    config.write_text(gateway_config(sip_port, upper_port, media, data, args.edition))
    suite_cmd = [
        sys.executable, "-m", "conformance.suite.cli", "run",
        "--target-role", "gateway",
        "--target-port", str(sip_port),
        "--target-id", GATEWAY_ID,
        "--password", PASSWORD,
        "--local-port", str(upper_port),
        "--suite-platform-id", UPPER_ID,
        "--edition", args.edition,
        "--register-timeout", f"{args.register_timeout:g}",
        "--report", str(out_dir),
        *(x for d in NVRS for x in ("--device-id", d)),
        *args.suite_args,
    ]  # fmt: skip
    gateway_cmd = [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)]
    started = time.monotonic()
    log(f"gateway SIP 127.0.0.1:{sip_port}, the suite's upper 127.0.0.1:{upper_port}, "
        f"media {media[0]}-{media[1]}, data {data}")  # fmt: skip
    suite = subprocess.Popen(suite_cmd, cwd=ROOT, env=_env())
    gateway: subprocess.Popen[bytes] | None = None
    try:
        if not _wait_bound(upper_port, suite, 30.0):
            log("the suite's upper platform did not start listening")
            return 2
        with (out_dir / "gateway.log").open("wb") as gw_log:
            gateway = subprocess.Popen(
                gateway_cmd, cwd=ROOT, env=_env(), stdout=gw_log, stderr=subprocess.STDOUT
            )
            log(f"gateway started (pid {gateway.pid}): {' '.join(gateway_cmd)}")
            try:
                code = suite.wait(args.timeout)
            except subprocess.TimeoutExpired:
                log(f"the suite did not finish within {args.timeout:g} s")
                _stop(suite, "the suite")
                return 2
            _stop(gateway, "the gateway")
    finally:
        _stop(suite, "the suite")
        if gateway is not None:
            _stop(gateway, "the gateway")
        shutil.rmtree(data, ignore_errors=True)
    seconds = time.monotonic() - started
    results_path = out_dir / "results.json"
    if not results_path.exists():
        log(f"the suite wrote no results (exit {code})")
        return 2
    summary = summarize(json.loads(results_path.read_text(encoding="utf-8")), seconds)
    summary["suite_exit"] = code
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary, out_dir)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
