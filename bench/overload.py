"""A registration storm at several times what the gateway can take: with shedding, and without.

Run: ``.venv/bin/python bench/overload.py`` (needs ``sipp``: Debian package sip-tester).

1. **Sustainable rate.** On a gateway of its own (shedding off), the storm's device
   (``bench/sipp/register_retry.xml``: REGISTER → 401 → REGISTER → 200, then one keepalive) is
   stepped up in short runs until a step is not sustained (the criterion of
   ``bench/register.py``: under 0.1 % failed, at least 90 % of the target achieved). The best
   sustained step is the sustainable rate S.
2. **The storm, once per mode** (``shed``: ``[overload] enabled = true``, the default;
   ``noshed``: ``enabled = false``), each on a fresh gateway (SQLite store, keepalive every 5 s,
   offline after 3 missed):

   * ``--keepalive-devices`` devices register first and then keep alive every 5 s throughout
     (``bench/sipp/keepalive.xml``): the devices already online when the storm comes. Any of
     them the gateway turns offline is a *false offline*: it counts the keepalive devices not
     online in the store at the end, and the keepalives answered with anything but 200.
   * ``bench/sipp/register_retry.xml`` offers new devices at ``--factor`` × S for
     ``--storm-seconds`` (open loop: SIPp does not slow down), each registering and then
     sending one keepalive; a device answered 503 waits as its Retry-After says and starts
     over. Then no new devices are offered, and the run ends when every device has registered
     (or failed: SIPp gives up on a transaction after its retransmissions, ``-recv_timeout``
     10 s).

Per mode the JSON has: goodput in the storm (registrations completed per second while new
devices were offered) and its ratio to S (target ≥ 0.9 with shedding); the share of successful
registrations answered within 1 s (from the first REGISTER of the attempt that succeeded to
its 200); retransmissions; failed registrations; the Retry-After values given (their window);
``recovery_s``, how long after the storm the last shed device was registered, and whether that
is within twice the Retry-After window; false offlines (target 0); the gateway's CPU and
RSS, and the shedding it logged.

Prints one JSON object on stdout; progress on stderr. Every loop is bounded, the whole run by
``--budget`` seconds; only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from register import (  # noqa: E402  (a sibling script, not a package)
    MB,
    SCENARIOS,
    Budget,
    Gateway,
    Load,
    Sipp,
    _epoch,
    _int,
    best,
    device_ids,
    free_port,
    log,
    ramp,
    read_rows,
    sipp_command,
    write_injection_csv,
)

KEEPALIVE_INTERVAL = 5


def gateway(workdir: Path, shed: bool, retry_after_max: int) -> Gateway:
    gw = Gateway(
        workdir,
        overload=[
            f"enabled = {'true' if shed else 'false'}",
            f"retry_after_max = {retry_after_max}",
        ],
    )
    # Devices are judged offline after 3 missed keepalives at the benchmark's 5 s.
    text = gw.config_text.replace("interval = 600.0", f"interval = {KEEPALIVE_INTERVAL}.0")
    gw.config_text = text.replace('level = "warning"', 'level = "warning"\nformat = "json"')
    gw.config_path.write_text(gw.config_text, encoding="utf-8")
    return gw


def sustainable_rate(exe: str, workdir: Path, rates: list[int], seconds: float) -> dict[str, Any]:
    wd = workdir / "sustainable"
    wd.mkdir()
    gw = Gateway(wd)
    try:
        gw.start()
        sipp = Sipp(exe, wd, gw)
        counter = iter(range(1, 10_000_000, 1_000_000))
        load = Load(
            kind="register",
            # the storm's own device: registers, then one keepalive (no 503 comes: no shedding)
            scenario=SCENARIOS / "register_retry.xml",
            make_inf=lambda n: write_injection_csv(
                wd / f"ids-{n}-{time.monotonic_ns()}.csv", device_ids(n, next(counter))
            ),
            local_port=free_port(),
            target=0,
            grain=100,
        )
        steps = ramp(load, sipp, gw, Budget(600), rates, seconds)
    finally:
        gw.stop()
    top = best(steps)
    return {
        "rate": top.target_rate if top else 0,
        "achieved_rate": round(top.achieved_rate, 1) if top else 0.0,
        "steps": [
            {
                "rate": s.target_rate,
                "achieved": round(s.achieved_rate, 1),
                "failed": s.failed,
                "sustained": s.sustained,
            }
            for s in steps
        ],
    }


class Background:
    """Keepalive devices: registered before the storm, keeping alive through it."""

    def __init__(self, exe: str, workdir: Path, gw: Gateway, count: int) -> None:
        self.exe, self.workdir, self.gw, self.count = exe, workdir, gw, count
        self.port = free_port()
        self.ids = device_ids(count, 9_000_000)
        self.inf = write_injection_csv(workdir / "keepalive-ids.csv", self.ids)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stat = workdir / "keepalive-stat.csv"

    def _sipp(self, scenario: str, calls: int, rate: int, timeout: float, stat: Path) -> list[str]:
        return sipp_command(
            self.exe,
            self.gw.port,
            SCENARIOS / scenario,
            self.inf,
            local_port=self.port,
            calls=calls,
            rate=rate,
            limit=max(1000, 4 * rate),
            recv_timeout_ms=10000,
            timeout_s=timeout,
            stat=stat,
        )

    def register(self) -> int:
        stat = self.workdir / "keepalive-register-stat.csv"
        args = self._sipp("register.xml", self.count, 500, self.count / 500 + 30, stat)
        subprocess.run(args, cwd=self.workdir, capture_output=True, timeout=self.count / 500 + 60)
        rows = read_rows(stat)
        return _int(rows[-1], "SuccessfulCall(C)") if rows else 0

    def start(self, seconds: float) -> None:
        rate = max(1, round(self.count / KEEPALIVE_INTERVAL))
        calls = int(rate * seconds)
        args = self._sipp("keepalive.xml", calls, rate, seconds + 60, self.stat)
        self.proc = subprocess.Popen(
            args, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> dict[str, int]:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        rows = read_rows(self.stat)
        last = rows[-1] if rows else {}
        return {
            "keepalives_ok": _int(last, "SuccessfulCall(C)"),
            "keepalives_failed": _int(last, "FailedCall(C)"),
        }


def offline_of(gw: Gateway, ids: list[str]) -> int | None:
    """How many of ``ids`` the store does not have online."""
    cmd = [*gw.command[:-3], "devices", "--config", str(gw.config_path), "--json"]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=120, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    online = {d["device_id"] for d in json.loads(out) if d["online"]}
    return sum(1 for i in ids if i not in online)


def logged(gw: Gateway) -> dict[str, Any]:
    events: dict[str, int] = {}
    recovered: list[dict[str, Any]] = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        name = str(rec.get("event", "?"))
        events[name] = events.get(name, 0) + 1
        if name == "overload.recovered":
            recovered.append({k: rec.get(k) for k in ("shed", "rate")})
    return {"events": events, "recovered": recovered[:10]}


def storm(
    exe: str,
    workdir: Path,
    mode: str,
    rate: int,
    seconds: float,
    sustainable: int,
    keepalive_devices: int,
    retry_after_max: int,
) -> dict[str, Any]:
    wd = workdir / mode
    wd.mkdir()
    gw = gateway(wd, shed=mode == "shed", retry_after_max=retry_after_max)
    bg = Background(exe, wd, gw, keepalive_devices)
    out: dict[str, Any] = {"mode": mode, "offered_rate": rate, "storm_seconds": seconds}
    try:
        gw.start()
        out["keepalive_devices_registered"] = bg.register()
        calls = int(rate * seconds)
        tail = retry_after_max * 2 + 60  # the shed come back; SIPp gives up at -timeout
        # The keepalives outlive the storm's own deadline (seconds + tail + 30 below): were
        # they to stop first, every keepalive device would be offline at the count, a false
        # offline the gateway did not make. bg.stop() ends them once the storm is over.
        bg.start(seconds + tail + 90)
        inf = write_injection_csv(wd / "storm-ids.csv", device_ids(calls, 1))
        stat = wd / "storm-stat.csv"
        logs = wd / "storm-logs.txt"
        args = [
            *sipp_command(
                exe,
                gw.port,
                SCENARIOS / "register_retry.xml",
                inf,
                local_port=0,
                calls=calls,
                rate=rate,
                limit=10 * calls,  # open loop: the offered load does not wait for the gateway
                recv_timeout_ms=10000,
                timeout_s=seconds + tail,
                stat=stat,
            ),
            # A device drops a response that matches no transaction it waits on (a 401 or 503
            # resent for a retransmitted REGISTER): SIPp's default would fail the call.
            "-default_behaviors",
            "none",
            "-trace_rtt",
            "-rtt_freq",
            "100",
            "-trace_logs",
            "-log_file",
            str(logs),
        ]
        cpu0, t0 = gw.cpu(), time.monotonic()
        rss_peak = gw.rss()
        log(f"{mode}: {calls} devices at {rate}/s for {seconds:.0f} s")
        with (wd / "storm-sipp.out").open("wb") as sink:
            proc = subprocess.Popen(args, cwd=wd, stdout=sink, stderr=subprocess.STDOUT)
            try:
                deadline = t0 + seconds + tail + 30
                while proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(1.0)
                    rss_peak = max(rss_peak, gw.rss())
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
        elapsed = time.monotonic() - t0
        out["gateway_cpu_pct"] = round(100 * (gw.cpu() - cpu0) / elapsed, 1)
        out["gateway_rss_peak_mb"] = round(rss_peak / MB, 1)
        out.update(figures(read_rows(stat), seconds, sustainable, calls))
        out.update(response_times(wd))
        waits = (
            [
                int(line.rsplit(" ", 1)[-1])
                for line in logs.read_text(errors="replace").splitlines()
                if line.startswith("retry-after ") and line.rsplit(" ", 1)[-1].isdigit()
            ]
            if logs.exists()
            else []
        )
        out["shed_answers"] = len(waits)
        if waits:
            window = max(waits)
            out["retry_after"] = {"min": min(waits), "max": window, "window_s": window}
            rec = out.get("recovery_s")
            out["recovered_within_2x_window"] = rec is not None and rec <= 2 * window
        time.sleep(1.0)
        out.update(bg.stop())
        out["keepalive_devices_offline"] = offline_of(gw, bg.ids)
        out["false_offlines"] = (
            None
            if out["keepalive_devices_offline"] is None
            else out["keepalive_devices_offline"] + out["keepalives_failed"]
        )
    finally:
        bg.stop()
        gw.stop()
    out["log"] = logged(gw)
    return out


def figures(
    rows: list[dict[str, str]], seconds: float, sustainable: int, calls: int
) -> dict[str, Any]:
    if not rows:
        return {"error": "no SIPp statistics"}
    last = rows[-1]
    ok_in_storm = 0
    last_ok_at = 0.0
    for row in rows:
        t = _epoch(row["CurrentTime"]) - _epoch(row["StartTime"])
        ok = _int(row, "SuccessfulCall(P)")
        if t <= seconds + 0.5:
            ok_in_storm += ok
        if ok:
            last_ok_at = t
    successful = _int(last, "SuccessfulCall(C)")
    goodput = ok_in_storm / seconds
    return {
        "calls": calls,
        "successful": successful,
        "failed": _int(last, "FailedCall(C)"),
        "retransmissions": _int(last, "Retransmissions(C)"),
        "goodput_in_storm_per_s": round(goodput, 1),
        "goodput_ratio_to_sustainable": round(goodput / sustainable, 3) if sustainable else None,
        "recovery_s": round(max(0.0, last_ok_at - seconds), 1) if successful == calls else None,
        "last_registration_at_s": round(last_ok_at, 1),
    }


def response_times(wd: Path) -> dict[str, Any]:
    """Response time 1 of each successful registration, from SIPp's ``-trace_rtt`` files
    (``date_ms;response_time_ms;rtd_no`` lines)."""
    times: list[float] = []
    for path in wd.glob("register_retry_*_rtt.csv"):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(";")
            if len(parts) >= 3 and parts[2].strip() == "1":
                try:
                    times.append(float(parts[1]))
                except ValueError:
                    continue
    if not times:
        return {"answered_within_1s_share": None}
    times.sort()
    n = len(times)
    return {
        "answered_within_1s_share": round(sum(1 for t in times if t <= 1000) / n, 4),
        "response_time_ms": {
            "count": n,
            "p50": round(times[n // 2], 1),
            "p99": round(times[min(n - 1, int(n * 0.99))], 1),
            "max": round(times[-1], 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rates", default="500,1000,1500,2000,2500,3000,3500,4000,5000")
    p.add_argument("--step-seconds", type=float, default=5.0)
    p.add_argument("--rate", type=int, default=0, help="skip the search: this is S")
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--storm-seconds", type=float, default=60.0)
    p.add_argument("--keepalive-devices", type=int, default=2000)
    p.add_argument("--retry-after-max", type=int, default=300)
    p.add_argument("--modes", default="shed,noshed")
    p.add_argument("--budget", type=float, default=2400.0, help="whole run, seconds")
    args = p.parse_args(argv)
    # A SIGTERM unwinds like an exception, so every process started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    exe = shutil.which("sipp")
    if exe is None:
        print(json.dumps({"error": "sipp not found (Debian package sip-tester)"}))
        return 2
    budget = Budget(args.budget)
    workdir = Path(tempfile.mkdtemp(prefix="gb28181-overload-"))
    result: dict[str, Any] = {"benchmark": "overload", "workdir": str(workdir)}
    if args.rate:
        result["sustainable"] = {"rate": args.rate, "given": True}
    else:
        log("finding the sustainable rate")
        result["sustainable"] = sustainable_rate(
            exe, workdir, [int(r) for r in args.rates.split(",")], args.step_seconds
        )
    s = int(result["sustainable"]["rate"])
    log(f"sustainable: {s}/s")
    offered = int(s * args.factor)
    result["modes"] = {}
    for mode in args.modes.split(","):
        if budget.left() < args.storm_seconds + 2 * args.retry_after_max + 120:
            result["modes"][mode] = {"skipped": f"{budget.left():.0f} s of budget left"}
            continue
        result["modes"][mode] = storm(
            exe,
            workdir,
            mode,
            offered,
            args.storm_seconds,
            s,
            args.keepalive_devices,
            args.retry_after_max,
        )
        log(json.dumps({k: v for k, v in result["modes"][mode].items() if k != "log"}))
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
