"""Registration and keepalive throughput, and memory per registered device, measured with SIPp.

Run: ``.venv/bin/python bench/register.py`` (needs ``sipp``: Debian package sip-tester).

Starts the gateway as a subprocess on 127.0.0.1 with a fresh configuration in a temporary
directory, then drives it with SIPp over UDP (``-t u1``):

1. memory: RSS of the idle gateway; 20,000 devices register (REGISTER → 401 → REGISTER with
   digest → 200) from one SIPp socket; RSS right after, and again after waiting out timer J
   (64·T1 = 32 s) so the completed server transactions are gone. Per device = (after − before)
   / devices. A second batch of 20,000 then registers the same way: its transactions reuse the
   memory the first batch's transactions freed, so its RSS growth per device is the marginal cost
   of a device (``marginal_rss_per_device_bytes``).
2. keepalives per second: ``bench/sipp/keepalive.xml`` sends Notify/Keepalive MESSAGEs for those
   devices from the same SIPp address (the address they registered from).
3. registrations per second: ``bench/sipp/register.xml`` registers fresh device IDs.

For 2 and 3 the rate is stepped up with short runs (``ramp``) until a step is not sustained; a
step is *sustained* when under 0.1 % of its calls fail and the achieved rate (successful calls
over the run's wall time) is at least 90 % of the target: SIPp throttles (``-l``) when the gateway
falls behind, so failures alone would hide an overload. A short run ends before the first
completed transaction expires (timer J, 32 s), so it does not pay for the transactions the
gateway keeps; ``steady`` runs longer than that, starting at the best ramp rate and stepping down
(bounded) until one is sustained. Its figures are the ones to quote. Each ramp and each steady
run starts once the transactions of earlier runs have expired.

Prints one JSON object on stdout; progress goes to stderr. Every loop is bounded in count and
time, the whole run by ``--budget`` seconds; only processes started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "sipp"
GATEWAY_ID = "34020000002000000001"
DOMAIN = "3402000000"
AUTH_URI = f"{GATEWAY_ID}@{DOMAIN}"  # SIPp puts "sip:" in front
MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def device_ids(count: int, first: int) -> list[str]:
    """Distinct 20-digit IPC IDs (domain 3402000000, type code 132)."""
    if first + count > 10_000_000:
        raise ValueError("the 7-digit serial number space is exhausted")
    return [f"{DOMAIN}132{n:07d}" for n in range(first, first + count)]


def write_injection_csv(path: Path, ids: list[str]) -> Path:
    """SIPp injection file, one device per line used in order (and wrapping round)."""
    path.write_text("SEQUENTIAL\n" + "".join(f"{i};\n" for i in ids), encoding="ascii")
    return path


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the gateway binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


def children_cpu() -> float:
    """CPU seconds of reaped children (SIPp runs; the gateway is reaped only at the end)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------------------------
# the gateway under test


class Gateway:
    """The gateway under test, as a subprocess. ``downlink``: lines of its ``[downlink]``
    section (by default no sync and no subscription: SIPp devices answer no MANSCDP);
    ``extra``: more TOML lines at the end (``[[uplink.platforms]]``, ``[media]`` tables);
    ``keepalive``: (interval, timeout count); ``log``: lines of the ``[log]`` section;
    ``overload``: lines of its ``[overload]`` section (by default shedding is off)."""

    def __init__(
        self,
        workdir: Path,
        downlink: list[str] | None = None,
        extra: list[str] | None = None,
        *,
        keepalive: tuple[float, int] = (600.0, 3),
        log: list[str] | None = None,
        overload: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "gateway.toml"
        self.config_text = "\n".join(
            [
                "[sip]",
                'host = "127.0.0.1"',
                f"port = {self.port}",
                "[http]",
                "port = 0",
                "[store]",
                'backend = "sqlite"',
                f'path = "{workdir / "gateway.db"}"',
                "[registrar]",
                "default_expires = 3600",
                "min_expires = 60",
                "# a device must not be judged offline (interval x timeout_count) during the run",
                "[keepalive]",
                f"interval = {keepalive[0]}",
                f"timeout_count = {keepalive[1]}",
                "[downlink]",
                *(
                    downlink
                    if downlink is not None
                    else ["sync_on_register = false", "catalog_subscription = false"]
                ),
                "# capacity is measured without shedding (bench/overload.py measures that)",
                "[overload]",
                *(overload if overload is not None else ["enabled = false"]),
                "[log]",
                *(log if log is not None else ['level = "warning"']),
                *(extra or []),
                "",
            ]
        )
        self.config_path.write_text(self.config_text, encoding="utf-8")
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    @property
    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "gb28181-gateway"
        if exe.exists():
            return [str(exe), "run", "--config", str(self.config_path)]
        return [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)]

    def start(self, timeout: float = 15.0) -> None:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while not self._answers_options():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not answer within {timeout} s")

    def _answers_options(self) -> bool:
        """Any SIP response to an OPTIONS (405 is fine) means the loop is serving."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(0.3)
            lport = s.getsockname()[1]
            msg = (
                f"OPTIONS sip:{GATEWAY_ID}@{DOMAIN} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{lport};rport;branch=z9hG4bK{os.urandom(6).hex()}\r\n"
                f"From: <sip:bench@{DOMAIN}>;tag={os.urandom(4).hex()}\r\n"
                f"To: <sip:{GATEWAY_ID}@{DOMAIN}>\r\n"
                f"Call-ID: {os.urandom(8).hex()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            s.sendto(msg, ("127.0.0.1", self.port))
            try:
                return s.recv(4096).startswith(b"SIP/2.0 ")
            except OSError:
                return False

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def cpu(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def wait_idle(self, max_wait: float = 6.0, threshold: float = 0.10) -> None:
        """Until the gateway uses under 10 % of a CPU over 0.5 s (bounded by ``max_wait``)."""
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            c0, t0 = self.cpu(), time.monotonic()
            time.sleep(0.5)
            if (self.cpu() - c0) / (time.monotonic() - t0) < threshold:
                return

    def online_in_store(self) -> int | None:
        """Online devices as the store has them (``gb28181-gateway devices``, read-only)."""
        cmd = [*self.command[:-3], "devices", "--config", str(self.config_path), "--json"]
        try:
            out = subprocess.run(cmd, capture_output=True, timeout=60, check=True).stdout
        except (subprocess.SubprocessError, OSError):
            return None
        return sum(1 for d in json.loads(out) if d["online"])

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=5)

    def warnings_logged(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] in ("[warning", "[error", "[critical"):
                counts[parts[3]] = counts.get(parts[3], 0) + 1
        return counts


# ---------------------------------------------------------------------------------------------
# SIPp runs


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every row of SIPp's ``-trace_stat`` file by column name: one per ``-fd`` period, then a
    last one at exit. ``(P)`` columns count the period, ``(C)`` the whole run."""
    if not path.exists():
        return []
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]] if len(rows) >= 2 else []


def _epoch(stamp: str) -> float:
    """SIPp writes ``date<TAB>time<TAB>epoch``."""
    return float(stamp.split("\t")[-1])


def _int(row: dict[str, str], name: str) -> int:
    try:
        return int(row.get(name, "0"))
    except ValueError:
        return 0


def _duration_ms(text: str) -> float | None:
    """SIPp's ``HH:MM:SS:micro`` durations."""
    try:
        h, m, s, us = (int(p) for p in text.split(":"))
    except ValueError:
        return None
    return (h * 3600 + m * 60 + s) * 1000 + us / 1000


@dataclass
class Step:
    kind: str
    target_rate: int
    calls: int
    command: str
    sipp_exit: int
    rows: list[dict[str, str]]
    gateway_cpu_s: float
    sipp_cpu_s: float
    rss_after_mb: float

    @property
    def last(self) -> dict[str, str]:
        return self.rows[-1] if self.rows else {}

    @property
    def successful(self) -> int:
        return _int(self.last, "SuccessfulCall(C)")

    @property
    def failed(self) -> int:
        return _int(self.last, "FailedCall(C)")

    @property
    def elapsed_s(self) -> float:
        last = self.last
        return _epoch(last["CurrentTime"]) - _epoch(last["StartTime"]) if last else 0.0

    @property
    def achieved_rate(self) -> float:
        return self.successful / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.calls if self.calls else 1.0

    @property
    def sustained(self) -> bool:
        """Under 0.1 % failed and at least 90 % of the target rate achieved, over the whole run
        and, for a run longer than timer J, also over its part after timer J (the steady state,
        where transactions expire as fast as new ones arrive)."""
        if not (
            self.sipp_exit in (0, 1)
            and self.successful + self.failed >= self.calls
            and self.failed_ratio < 0.001
            and self.achieved_rate >= 0.9 * self.target_rate
        ):
            return False
        tail = self.steady_window
        return tail is None or (
            tail["failed"] < 0.001 * (tail["successful"] + tail["failed"])
            and tail["achieved_rate"] >= 0.9 * self.target_rate
        )

    @property
    def steady_window(self) -> dict[str, Any] | None:
        return self.window(TIMER_J + 1) if self.elapsed_s > TIMER_J + 3 else None

    def window(self, after_s: float) -> dict[str, Any] | None:
        """Calls completed in the periods that ended after ``after_s`` seconds of the run."""
        start = after_s
        ok = failed = 0
        end = None
        for row in self.rows:
            t = _epoch(row["CurrentTime"]) - _epoch(row["StartTime"])
            if t <= after_s:
                start = max(after_s, t)
                continue
            ok += _int(row, "SuccessfulCall(P)")
            failed += _int(row, "FailedCall(P)")
            end = t
        if end is None or end - start < 1:
            return None
        return {
            "from_s": round(start, 1),
            "to_s": round(end, 1),
            "successful": ok,
            "failed": failed,
            "achieved_rate": round(ok / (end - start), 1),
        }

    def as_json(self) -> dict[str, Any]:
        last = self.last
        kinds = {
            k[:-3]: _int(last, k)
            for k in last
            if k.startswith("Failed")
            and k.endswith("(C)")
            and k != "FailedCall(C)"
            and _int(last, k)
        }
        out: dict[str, Any] = {
            "target_rate": self.target_rate,
            "calls": self.calls,
            "successful": self.successful,
            "failed": self.failed,
            "failed_pct": round(100 * self.failed_ratio, 4),
            "failure_kinds": kinds,
            "retransmissions": _int(last, "Retransmissions(C)"),
            "retransmissions_per_100_calls": round(
                100 * _int(last, "Retransmissions(C)") / self.calls, 2
            )
            if self.calls
            else None,
            "achieved_rate": round(self.achieved_rate, 1),
            "elapsed_s": round(self.elapsed_s, 3),
            "mean_call_ms": _duration_ms(last.get("CallLength(C)", "")),
            "gateway_cpu_s": round(self.gateway_cpu_s, 2),
            "gateway_cpu_pct": round(100 * self.gateway_cpu_s / self.elapsed_s, 1)
            if self.elapsed_s
            else None,
            "gateway_cpu_us_per_call": round(1e6 * self.gateway_cpu_s / self.successful, 1)
            if self.successful
            else None,
            "gateway_rss_after_mb": self.rss_after_mb,
            "sipp_cpu_s": round(self.sipp_cpu_s, 2),
            "sipp_exit": self.sipp_exit,
            "sustained": self.sustained,
        }
        if self.steady_window is not None:
            out["after_timer_j"] = self.steady_window
        out["command"] = self.command
        return out


TIMER_J = 32.0  # 64·T1 with the default T1 = 0.5 s


def sipp_command(
    exe: str,
    port: int,
    scenario: Path,
    inf: Path,
    *,
    local_port: int,
    calls: int,
    rate: int,
    limit: int,
    recv_timeout_ms: int,
    timeout_s: float,
    stat: Path,
) -> list[str]:
    """A SIPp run of the bench's kind: UDP from one socket on 127.0.0.1 (``local_port``, 0 for
    any) to the gateway on ``port``, device IDs from ``inf``, the digest uri the gateway's,
    statistics every second to ``stat``."""
    return [
        exe,
        f"127.0.0.1:{port}",
        "-sf",
        str(scenario),
        "-inf",
        str(inf),
        "-t",
        "u1",
        "-i",
        "127.0.0.1",
        *(["-p", str(local_port)] if local_port else []),
        "-auth_uri",
        AUTH_URI,
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-l",
        str(limit),
        "-recv_timeout",
        str(recv_timeout_ms),
        "-buff_size",
        str(4 * MB),
        "-timeout",
        f"{int(timeout_s)}s",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat),
        "-fd",
        "1",
    ]


class Sipp:
    def __init__(self, exe: str, workdir: Path, gateway: Gateway) -> None:
        self.exe = exe
        self.workdir = workdir
        self.gateway = gateway
        self.runs = 0
        self.last_end = time.monotonic()

    def wait_for_expiry(self) -> float:
        """Sleep until the transactions of the last run have expired (timer J after its end);
        return the seconds slept."""
        delay = min(TIMER_J + 2, self.last_end + TIMER_J + 2 - time.monotonic())
        if delay > 0:
            time.sleep(delay)
        return max(0.0, delay)

    def run(
        self,
        kind: str,
        scenario: Path,
        inf: Path,
        calls: int,
        rate: int,
        local_port: int,
        timeout_s: float,
    ) -> Step:
        self.runs += 1
        rundir = self.workdir / f"{self.runs:02d}-{kind}-{rate}"
        rundir.mkdir()
        stat = rundir / "stat.csv"
        args = [
            *sipp_command(
                self.exe,
                self.gateway.port,
                scenario,
                inf,
                local_port=local_port,
                calls=calls,
                rate=rate,
                # at most 2 s of calls in flight: SIPp slows down when the gateway falls behind
                limit=max(100, 2 * rate),
                recv_timeout_ms=5000,
                timeout_s=timeout_s,
                stat=stat,
            ),
            "-timeout_error",
            "-trace_err",
        ]
        cpu0, kids0 = self.gateway.cpu(), children_cpu()
        with (rundir / "sipp.out").open("wb") as out:
            proc = subprocess.Popen(
                args, cwd=rundir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                code = proc.wait(timeout=timeout_s + 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=5)
        self.last_end = time.monotonic()
        step = Step(
            kind=kind,
            target_rate=rate,
            calls=calls,
            command=shlex.join(args),
            sipp_exit=code,
            rows=read_rows(stat),
            gateway_cpu_s=self.gateway.cpu() - cpu0,
            sipp_cpu_s=children_cpu() - kids0,
            rss_after_mb=round(self.gateway.rss() / MB, 1),
        )
        log(
            f"{kind} @ {rate}/s: {step.successful}/{calls} ok, {step.failed} failed, "
            f"achieved {step.achieved_rate:.0f}/s in {step.elapsed_s:.1f} s, gateway CPU "
            f"{100 * step.gateway_cpu_s / max(step.elapsed_s, 1e-9):.0f}%, "
            f"RSS {step.rss_after_mb:.0f} MB, sustained={step.sustained}"
        )
        return step


# ---------------------------------------------------------------------------------------------
# the benchmark


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Load:
    """One kind of load: what SIPp runs and where its device IDs come from."""

    kind: str
    scenario: Path
    make_inf: Callable[[int], Path]
    local_port: int
    target: int
    grain: int
    skipped: list[str] = field(default_factory=list)

    def run(
        self,
        sipp: Sipp,
        gw: Gateway,
        budget: Budget,
        rate: int,
        seconds: float,
        label: str,
        *,
        clean: bool = False,
    ) -> Step | None:
        """One SIPp run; ``clean``: first wait until no transaction of earlier runs is left."""
        calls = int(rate * seconds)
        timeout = seconds * 2 + 15
        need = timeout + 30 + (TIMER_J + 2 if clean else 0)
        if budget.left() < need:
            self.skipped.append(f"{label} at {rate}/s: {budget.left():.0f} s of budget left")
            log(f"{self.kind}: skipping {label} at {rate}/s, budget left {budget.left():.0f} s")
            return None
        if clean:
            sipp.wait_for_expiry()
        gw.wait_idle()
        return sipp.run(
            f"{self.kind}-{label}",
            self.scenario,
            self.make_inf(calls),
            calls,
            rate,
            self.local_port,
            timeout,
        )


def ramp(
    load: Load, sipp: Sipp, gw: Gateway, budget: Budget, rates: list[int], seconds: float
) -> list[Step]:
    """Each rate for ``seconds`` of traffic, up, until one is not sustained. The ramp starts
    with no transaction left from earlier runs; within it, each step carries those of the steps
    before (a rising load)."""
    steps: list[Step] = []
    for i, rate in enumerate(rates):
        step = load.run(sipp, gw, budget, rate, seconds, "ramp", clean=i == 0)
        if step is None:
            break
        steps.append(step)
        if not step.sustained:
            break
    return steps


class Descent:
    """Steady runs for one load, longer than timer J, from the best ramp rate down: each next
    rate is 85 % of what the failed run achieved, overall or after timer J, whichever is less
    (rounded down to ``grain``). Each run starts with no transaction left from earlier runs."""

    def __init__(self, load: Load, ramp_steps: list[Step]) -> None:
        self.load = load
        ok = [s.target_rate for s in ramp_steps if s.sustained]
        self.rate = max(ok) if ok else 0
        self.runs: list[Step] = []
        self.done = not ok

    def step(self, sipp: Sipp, gw: Gateway, budget: Budget, seconds: float) -> None:
        if self.done:
            return
        run = self.load.run(sipp, gw, budget, self.rate, seconds, "steady", clean=True)
        if run is None:
            self.done = True
            return
        self.runs.append(run)
        if run.sustained:
            self.done = True
            return
        achieved = min(run.achieved_rate, self.rate)
        tail = run.steady_window
        if tail is not None:
            achieved = min(achieved, tail["achieved_rate"])
        grain = self.load.grain
        self.rate = int(0.85 * achieved // grain * grain)
        self.done = self.rate < grain


def steady(
    descents: list[Descent], sipp: Sipp, gw: Gateway, budget: Budget, seconds: float, tries: int
) -> None:
    """Take turns, so a short budget cuts both loads' descents alike."""
    if seconds <= 0:
        return
    for _ in range(tries):
        for d in descents:
            d.step(sipp, gw, budget, seconds)


def best(steps: list[Step]) -> Step | None:
    ok = [s for s in steps if s.sustained]
    return max(ok, key=lambda s: s.target_rate) if ok else None


def summary(
    load: Load, ramp_steps: list[Step], steady_runs: list[Step], ramp_s: float, steady_s: float
) -> dict[str, Any]:
    r, s = best(ramp_steps), best(steady_runs)
    pick, basis = (s, "steady") if steady_runs else (r, "ramp")
    return {
        "target": load.target,
        "max_sustained_rate": pick.target_rate if pick else 0,
        "achieved_rate": round(pick.achieved_rate, 1) if pick else 0.0,
        "basis": basis,
        "target_met": bool(
            pick and pick.target_rate >= load.target and pick.achieved_rate >= 0.97 * load.target
        ),
        "ramp": {
            "step_seconds": ramp_s,
            "max_rate": r.target_rate if r else 0,
            "achieved_rate": round(r.achieved_rate, 1) if r else 0.0,
            "steps": [x.as_json() for x in ramp_steps],
        },
        "steady": {
            "run_seconds": steady_s,
            "max_rate": s.target_rate if s else 0,
            "achieved_rate": round(s.achieved_rate, 1) if s else 0.0,
            "runs": [x.as_json() for x in steady_runs],
        },
        "skipped": load.skipped,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--devices", type=int, default=20_000, help="devices for the memory figure")
    p.add_argument("--memory-rate", type=int, default=2000, help="their registration rate")
    p.add_argument("--settle", type=float, default=35.0, help="seconds to wait out timer J")
    p.add_argument("--register-rates", default="1000,2000,3000,4000,5000,6000,7000,8000,10000")
    p.add_argument(
        "--keepalive-rates", default="2000,4000,6000,8000,10000,12000,15000,18000,21000,25000"
    )
    p.add_argument("--step-seconds", type=float, default=5.0, help="traffic per ramp step")
    p.add_argument(
        "--steady-seconds",
        type=float,
        default=40.0,
        help="traffic per steady run, longer than timer J (0: no steady runs)",
    )
    p.add_argument("--steady-tries", type=int, default=4, help="steady runs per kind, at most")
    p.add_argument("--budget", type=float, default=570.0, help="whole run, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args(argv)

    exe = shutil.which("sipp")
    if exe is None:
        print(json.dumps({"error": "sipp not found (Debian package sip-tester)"}))
        return 2
    started = time.monotonic()
    budget = Budget(args.budget)
    workdir = Path(tempfile.mkdtemp(prefix="gb28181-bench-"))
    gw = Gateway(workdir)
    version = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=10).stdout
    result: dict[str, Any] = {
        "benchmark": "register",
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "sipp": next((ln.strip() for ln in version.splitlines() if "SIPp" in ln), "?"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "gateway": {"command": shlex.join(gw.command), "config": gw.config_text},
        "criterion": "a run is sustained when failed calls < 0.1 % and achieved rate >= 90 % "
        "of target, over the whole run and (steady runs) after timer J too; SIPp "
        "-t u1, -l 2*rate, -recv_timeout 5 s. target_met: a steady run sustained "
        "at the target rate or above, achieving >= 97 % of the target",
    }
    try:
        gw.start()
        log(
            f"gateway pid {gw.proc.pid if gw.proc else '?'} on 127.0.0.1:{gw.port}, "
            f"work dir {workdir}"
        )
        sipp = Sipp(exe, workdir, gw)
        device_port = free_port()  # every registered benchmark device lives at this address

        # -- memory -------------------------------------------------------------------------
        time.sleep(1.0)
        rss_before = gw.rss()
        n = args.devices
        batch1 = write_injection_csv(workdir / "batch1.csv", device_ids(n, 1))
        reg_timeout = min(120.0, 3 * n / args.memory_rate + 20)
        reg1 = sipp.run(
            "memory-batch1",
            SCENARIOS / "register.xml",
            batch1,
            n,
            args.memory_rate,
            device_port,
            reg_timeout,
        )
        rss_right_after = gw.rss()
        timeline = [(0.0, rss_right_after)]
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.settle:
            time.sleep(min(5.0, max(0.0, args.settle - (time.monotonic() - t0))))
            timeline.append((round(time.monotonic() - t0, 1), gw.rss()))
        rss_after = gw.rss()
        online1 = gw.online_in_store()
        batch2 = write_injection_csv(workdir / "batch2.csv", device_ids(n, n + 1))
        reg2 = sipp.run(
            "memory-batch2",
            SCENARIOS / "register.xml",
            batch2,
            n,
            args.memory_rate,
            device_port,
            reg_timeout,
        )
        rss_batch2 = gw.rss()
        ok1, ok2 = reg1.successful or 1, reg2.successful or 1
        result["memory"] = {
            "devices": n,
            "registered": reg1.successful,
            "online_in_store_after_settle": online1,
            "rss_before_mb": round(rss_before / MB, 2),
            "rss_right_after_registration_mb": round(rss_right_after / MB, 2),
            "rss_after_settle_mb": round(rss_after / MB, 2),
            "settle_s": args.settle,
            "rss_per_device_bytes": round((rss_after - rss_before) / ok1),
            "rss_per_device_bytes_right_after_registration": round(
                (rss_right_after - rss_before) / ok1
            ),
            "rss_timeline_after_registration_mb": [[t, round(r / MB, 2)] for t, r in timeline],
            "second_batch_registered": reg2.successful,
            "rss_after_second_batch_mb": round(rss_batch2 / MB, 2),
            "marginal_rss_per_device_bytes": round((rss_batch2 - rss_after) / ok2),
            "note": "RSS does not fall when transactions expire: the allocator keeps the "
            "memory and reuses it, so rss_per_device_bytes is mostly the peak of live "
            f"server transactions ({2 * n} in flight at the end of the burst, two per "
            "registration); marginal_rss_per_device_bytes is the second batch's "
            "growth once that memory is reused",
            "runs": [reg1.as_json(), reg2.as_json()],
        }
        all_devices = write_injection_csv(workdir / "devices.csv", device_ids(2 * n, 1))

        # -- keepalives and registrations: ramps, then steady runs ----------------------------
        keepalive = Load(
            "keepalive",
            SCENARIOS / "keepalive.xml",
            lambda calls: all_devices,
            device_port,
            target=10_000,
            grain=500,
        )
        rates = [int(r) for r in args.keepalive_rates.split(",") if r]
        ka_ramp = ramp(keepalive, sipp, gw, budget, rates, args.step_seconds)

        next_id = [2 * n + 1_000_000]

        def fresh(calls: int) -> Path:
            first = next_id[0]
            next_id[0] += calls
            return write_injection_csv(workdir / f"fresh-{first}.csv", device_ids(calls, first))

        register = Load(
            "register", SCENARIOS / "register.xml", fresh, free_port(), target=3_000, grain=250
        )
        rates = [int(r) for r in args.register_rates.split(",") if r]
        reg_ramp = ramp(register, sipp, gw, budget, rates, args.step_seconds)

        ka_steady, reg_steady = Descent(keepalive, ka_ramp), Descent(register, reg_ramp)
        steady([ka_steady, reg_steady], sipp, gw, budget, args.steady_seconds, args.steady_tries)
        result["keepalive"] = summary(
            keepalive, ka_ramp, ka_steady.runs, args.step_seconds, args.steady_seconds
        )
        result["register"] = summary(
            register, reg_ramp, reg_steady.runs, args.step_seconds, args.steady_seconds
        )
        result["gateway"]["rss_end_mb"] = round(gw.rss() / MB, 2)
    except Exception as exc:  # report what was measured so far, and why it stopped
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["gateway"]["exit_code"] = gw.stop()
        result["gateway"]["log_events_warning_or_worse"] = gw.warnings_logged()
        result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        if args.keep or "error" in result:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
