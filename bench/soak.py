"""Soak: 20,000 devices register in a storm, keep alive for ten minutes under an upper's load.

Run: ``.venv/bin/python bench/soak.py`` (``make soak``; ``--short`` is the few-minute run of
``make reliability``: 2,000 devices, 2 minutes).

A gateway is started as a subprocess (``bench/register.py``'s ``Gateway``: a temporary
directory, SQLite, free ports on 127.0.0.1) with a compressed keepalive (``--interval`` 5 s,
``--timeout-count`` 3), JSON logs at info level, and one upper platform over TCP. The upper is a
:class:`~conformance.peers.platform.SimPlatform` in this process. The devices are
:class:`~conformance.peers.device.SimDevice` objects in ``--loads`` load processes (this script
with ``--load``), each process one :class:`~conformance.peers.device.DeviceHub` on one UDP
socket: each device has ``--channels`` channels, answers the gateway's DeviceInfo, Catalog and
SUBSCRIBE, and streams its clip (PS over RTP) when INVITEd. The load processes run no task per
device: a timing wheel of ``--interval`` seconds sends each registered device's keepalive once a
turn (``SimDevice.heartbeat``: a 404 or three lost keepalives make it register again) and times
the answer.

1. **Storm**: every load process registers its devices at once (``--concurrency`` in flight per
   process). Storm duration: the first REGISTER sent → the last 200 (target: under 60 s).
2. **Settle**: until the store holds every channel (the gateway syncs each device's catalog).
3. **Soak** for ``--minutes``: devices keep alive; the upper queries the whole catalog (at the
   start and in the middle), holds a catalog subscription and ``--sessions`` live sessions
   (INVITE through the gateway, UDP), INVITing again any that ends. Every ``--sample`` seconds:
   gateway CPU % and RSS, online devices (the store), sessions up and flowing.
4. **Checks**, devices still keeping alive: every device online, every channel in the catalog,
   and the upper's view (a final catalog query, and the first query with every NOTIFY applied)
   equal to the store. Relay loss: the devices' senders are paused, and RTP packets they sent
   are compared with those the upper received.

False offlines: every ``device.offline`` the gateway logged while the devices were keeping
alive (no device stops on its own here), with what the devices saw of those keepalives.
Keepalive latency: REGISTER-free keepalives, send → 200, retransmissions included.

Prints one JSON object on stdout (progress on stderr), draws CPU, RSS, online devices and
sessions over time to ``--plot`` (matplotlib), and exits 1 when a check fails. Every loop is
bounded in count and time, the whole run by ``--budget``; only processes started here are
stopped, by PID, in ``finally`` blocks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from register import DOMAIN, GATEWAY_ID, Gateway, log  # noqa: E402

from conformance.peers.catalog_gen import channel_id, default_channel_base  # noqa: E402

UPPER_ID = "34010000002000000001"
MB = 1024 * 1024
# Latency histogram: bucket i holds [LAT_MIN * LAT_RATIO**i, LAT_MIN * LAT_RATIO**(i+1)) s,
# 10 µs to about 100 s in 1.5 % steps; percentiles are read at the bucket's upper edge.
LAT_MIN = 1e-5
LAT_RATIO = 1.015
LAT_BUCKETS = 1100
T1, T2 = 0.5, 4.0  # RFC 3261 timers, for the load processes' keepalives
KEEPALIVE_FAIL_LIMIT = 3  # lost keepalives before a device registers again (as SimDevice)


# ---------------------------------------------------------------------------------------------
# devices and their channels


def device_ids(count: int) -> list[str]:
    """NVR IDs (type 118). 10,000 per 10-digit prefix, so that the channel IDs the simulated
    devices derive from their own (``default_channel_base``) never collide."""
    if count > 990_000:
        raise ValueError("too many devices")
    return [f"{DOMAIN[:8]}{i // 10_000:02d}118{i % 10_000 + 1:07d}" for i in range(count)]


def channel_ids(device_id: str, channels: int) -> list[str]:
    base = default_channel_base(device_id)
    return [channel_id(device_id, base, n) for n in range(1, channels + 1)]


def bucket(seconds: float) -> int:
    if seconds <= LAT_MIN:
        return 0
    return min(LAT_BUCKETS - 1, int(math.log(seconds / LAT_MIN, LAT_RATIO)))


def percentile(hist: Counter[int], q: float) -> float | None:
    total = sum(hist.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for i in sorted(hist):
        seen += hist[i]
        if seen >= rank:
            return LAT_MIN * LAT_RATIO ** (i + 1)
    return None  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# the load process: one DeviceHub, a keepalive wheel, commands on stdin, JSON lines on stdout


class KeepaliveTap:
    """Between a load process's transports and its endpoint: takes the answers to the lean
    keepalives (matched by Call-ID, without parsing) and hands everything else on. Keeps each
    unanswered keepalive's bytes for retransmission: after T1, doubling up to T2, given up
    after 64·T1 (RFC 3261 §17.1.2, timers E and F)."""

    __slots__ = ("answered", "counts", "endpoint", "pending", "waiting")

    def __init__(self, endpoint: Any, answered: Any, counts: Counter[str]) -> None:
        self.endpoint = endpoint
        self.answered = answered
        self.counts = counts
        # Call-ID -> [device, sent at, bytes, next retransmission at, retransmission interval]
        self.pending: dict[bytes, list[Any]] = {}
        self.waiting: set[str] = set()  # devices with a keepalive unanswered

    def sent(self, device: Any, call_id: str, data: bytes, now: float) -> None:
        self.pending[call_id.encode()] = [device, now, data, now + T1, T1]
        self.waiting.add(device.device_id)

    def message_received(self, data: bytes, peer: Any) -> None:
        if data.startswith(b"SIP/2.0 ") and self.pending:
            at = data.find(b"\r\nCall-ID: ")
            if at >= 0:
                end = data.find(b"\r\n", at + 11)
                entry = self.pending.pop(data[at + 11 : end].strip(), None)
                if entry is not None:
                    status = int(data[8:11]) if data[8:11].isdigit() else 0
                    if status < 200:
                        return  # no 1xx to a MESSAGE is expected; the final one follows
                    device = entry[0]
                    self.waiting.discard(device.device_id)
                    self.answered(device, status, time.perf_counter() - entry[1])
                    return
        self.endpoint.message_received(data, peer)

    def connection_lost(self, peer: Any) -> None:
        self.endpoint.connection_lost(peer)

    def sweep(self, now: float) -> None:
        """Retransmit what is due; give up on what waited 64·T1."""
        for call_id, entry in list(self.pending.items()):
            device, sent_at, data, retransmit_at, interval = entry
            if now - sent_at >= 64 * T1:
                del self.pending[call_id]
                self.waiting.discard(device.device_id)
                self.answered(device, 0, now - sent_at)
            elif now >= retransmit_at and data is not None:
                self.endpoint.transports.send(device.server, data)
                self.counts["keepalive_retransmissions"] += 1
                entry[4] = min(2 * interval, T2)
                entry[3] = now + entry[4]


class LoadProcess:
    """Devices of one load process. Commands (one per stdin line): ``storm``, ``stats``,
    ``pause-media``, ``stop``; each answer is one JSON line on stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        from conformance.peers.device import DeviceHub, SimDevice
        from gateway.metrics import Metrics
        from gateway.sip.endpoint import Endpoint
        from gateway.sip.transaction import TimerConfig
        from gateway.sip.transport import Peer

        self.args = args
        self.endpoint = Endpoint(metrics=Metrics(), timers=TimerConfig())
        self.hub = DeviceHub(self.endpoint, on_event=self._on_event)
        server = Peer("udp", "127.0.0.1", args.port)
        ids = device_ids(args.first + args.count)[args.first :]
        self.devices = [
            SimDevice(
                self.endpoint,
                device_id,
                server,
                server_id=GATEWAY_ID,
                domain=DOMAIN,
                channel_count=args.channels,
                fps=args.fps,
            )
            for device_id in ids
        ]
        self.interval = args.interval
        self.tick = 0.05
        self.slots: list[list[Any]] = [[] for _ in range(max(1, round(args.interval / 0.05)))]
        self.hist: Counter[int] = Counter()
        self.counts: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.failed_devices: dict[str, float] = {}  # device ID -> last keepalive failure
        self.storm: dict[str, Any] = {}
        self.registering: set[str] = set()
        self.lag_max = 0.0  # the wheel's worst lateness since the last ``counts``
        self.tap = KeepaliveTap(self.endpoint, self._answered, self.counts)
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what the devices tell us
    def _on_event(self, device_id: str, event: str, detail: str) -> None:
        self.events[event] += 1
        if event in ("keepalive-failed", "keepalive-404"):
            self.failed_devices[device_id] = time.time()

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        from conformance.peers.media_session import video_clip
        from gateway.app import tune_gc

        await self.endpoint.start("127.0.0.1", 0)
        for device in self.devices:
            self.hub.add(device)
        video_clip()  # encoded once now, not during the first INVITE
        self.endpoint.transports.listener = self.tap
        tune_gc()  # as the gateway does: 5,000 devices' objects frozen, no long collections
        self.emit({"ready": len(self.devices), "pid": os.getpid()})

    # -- the storm
    async def run_storm(self) -> None:
        from conformance.peers.device import SimDevice

        pending: Iterator[SimDevice] = iter(self.devices)
        first_sent: float | None = None
        last_ok: float | None = None
        ok = failed = 0

        async def worker() -> None:
            nonlocal first_sent, last_ok, ok, failed
            for device in pending:
                if self.stopping.is_set():
                    return
                if first_sent is None:
                    first_sent = time.monotonic()
                try:
                    resp = await device.register()
                    status = resp.status
                except Exception as exc:  # the device's send errors, reported as a count
                    self.events[f"storm-{type(exc).__name__}"] += 1
                    status = 0
                if status == 200:
                    ok += 1
                    last_ok = time.monotonic()
                else:
                    failed += 1
                self._schedule(device)  # not registered: its first heartbeat registers it

        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        self.storm = {
            "first_sent": first_sent,
            "last_ok": last_ok,
            "ok": ok,
            "failed": failed,
        }
        self.emit({"storm": self.storm})

    # -- keepalives: one wheel, no task per device between beats
    def _schedule(self, device: Any) -> None:
        random.choice(self.slots).append(device)

    async def wheel(self) -> None:
        loop = asyncio.get_running_loop()
        n = len(self.slots)
        i = 0
        next_at = loop.time()
        while not self.stopping.is_set():
            self.lag_max = max(self.lag_max, loop.time() - next_at)
            now = time.perf_counter()
            for device in self.slots[i]:
                self._beat(device, now)
            self.tap.sweep(now)
            i = (i + 1) % n
            next_at += self.tick
            delay = next_at - loop.time()
            if delay < -self.interval:  # far behind: skip ahead instead of bursting
                self.counts["wheel_skips"] += 1
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))

    def _beat(self, device: Any, now: float) -> None:
        """One keepalive (GB/T 28181-2022 §9.6), sent outside any client transaction: the
        device's own MESSAGE (``SimDevice.build_message``, ``keepalive_body``) through its
        endpoint's socket, retransmitted as RFC 3261 §17.1.2 says; the answer is taken by
        :class:`KeepaliveTap`. Not registered, or three keepalives lost or refused: the device
        registers again (``SimDevice.register``), as ``SimDevice.heartbeat`` does."""
        from conformance.peers.device import keepalive_body

        if device.device_id in self.registering:
            return
        if not device.registered or device.missed_keepalives >= KEEPALIVE_FAIL_LIMIT:
            self.spawn(self._register_again(device))
            return
        if device.device_id in self.tap.waiting:
            self.counts["still_waiting"] += 1  # the previous keepalive is still unanswered
            return
        device.sn += 1
        req = device.build_message(keepalive_body(device.device_id, device.sn))
        req.prepend_header("Via", self.endpoint.via(device.server))  # a fresh branch
        data = req.to_bytes()
        self.endpoint.transports.send(device.server, data)
        self.counts["keepalive_sent"] += 1
        self.tap.sent(device, req.call_id, data, now)

    async def _register_again(self, device: Any) -> None:
        self.registering.add(device.device_id)
        self.counts["registrations"] += 1
        try:
            await device.register()
        except Exception as exc:  # the device's send errors, reported as a count
            self.events[f"register-{type(exc).__name__}"] += 1
        finally:
            self.registering.discard(device.device_id)

    def _answered(self, device: Any, status: int, seconds: float) -> None:
        if status == 200:
            device.missed_keepalives = 0
            self.counts["keepalive_ok"] += 1
            self.hist[bucket(seconds)] += 1
            return
        self.counts[f"keepalive_{status or 'unanswered'}"] += 1
        self.failed_devices[device.device_id] = time.time()
        device.missed_keepalives += 1
        if status == 404:  # the gateway does not know it (any more): register at once
            device.registered = False

    # -- media
    def media(self, pause: bool) -> dict[str, int]:
        sent: Counter[str] = Counter()
        for device in self.devices:
            for session in device.media_sessions.values():
                if session.sender is not None:
                    if pause:
                        session.sender.pause()
                    sent[session.channel_id] += session.sender.packets_sent
        return dict(sent)

    def stats(self) -> dict[str, Any]:
        return {
            "devices": len(self.devices),
            "registered": sum(1 for d in self.devices if d.registered),
            "counts": dict(self.counts),
            "events": dict(self.events),
            "hist": {str(k): v for k, v in self.hist.items()},
            "failed_devices": {k: round(v, 3) for k, v in self.failed_devices.items()},
            "media_sessions": sum(len(d.media_sessions) for d in self.devices),
            "tasks": len(self._tasks),
        }

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        wheel = loop.create_task(self.wheel())
        deadline = loop.time() + self.args.budget
        try:
            while loop.time() < deadline:
                try:
                    line = await asyncio.wait_for(reader.readline(), deadline - loop.time())
                except TimeoutError:
                    break
                command = line.decode().strip()
                if not command or command == "stop":
                    break
                if command == "storm":
                    self.spawn(self.run_storm())
                elif command == "stats":
                    self.emit({"stats": self.stats()})
                elif command == "counts":
                    counts = {**self.counts, "wheel_lag_max_ms": round(1000 * self.lag_max, 1)}
                    self.lag_max = 0.0
                    self.emit({"counts": counts})
                elif command == "pause-media":
                    self.emit({"media": self.media(pause=True)})
        finally:
            self.stopping.set()
            wheel.cancel()
            self.hub.stop()
            for task in list(self._tasks):
                task.cancel()
            await self.hub.close()
            await self.endpoint.close()


def run_load(args: argparse.Namespace) -> int:
    from gateway.app import configure_logging, install_event_loop_policy
    from gateway.settings import config_from_dict

    # Logs to stderr, warnings only: stdout carries the JSON lines.
    configure_logging(config_from_dict({"log": {"level": "warning"}}))
    install_event_loop_policy()
    # Four load processes against one gateway process: with equal priority the scheduler
    # gives them four shares of the two cores to its one whenever the machine is busy.
    os.nice(args.load_nice)

    async def main() -> None:
        load = LoadProcess(args)
        await load.start()
        await load.serve()

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------------------------------
# the driver's side of the load processes


class Loads:
    """The load processes, started and stopped here, by PID."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args = args
        self.procs: list[subprocess.Popen[str]] = []
        self.ps: list[psutil.Process] = []
        self.inbox: list[dict[str, queue.Queue[Any]]] = []
        self.lock = threading.Lock()
        self.asking = threading.Lock()
        per = math.ceil(args.devices / args.loads)
        first = 0
        while first < args.devices:
            count = min(per, args.devices - first)
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--load",
                "--port",
                str(port),
                "--first",
                str(first),
                "--count",
                str(count),
                "--channels",
                str(args.channels),
                "--interval",
                str(args.interval),
                "--concurrency",
                str(args.concurrency),
                "--fps",
                str(args.fps),
                "--load-nice",
                str(args.load_nice),
                "--budget",
                str(args.budget),
            ]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            self.procs.append(proc)
            self.ps.append(psutil.Process(proc.pid))
            self.inbox.append({})
            threading.Thread(target=self._reader, args=(proc, self.inbox[-1]), daemon=True).start()
            first += count

    def _reader(self, proc: subprocess.Popen[str], inbox: dict[str, queue.Queue[Any]]) -> None:
        """One thread per process: each JSON line into the queue of its key."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            for key, value in obj.items():
                with self.lock:
                    q = inbox.setdefault(key, queue.Queue())
                q.put(value)

    def send(self, command: str) -> None:
        with self.lock:
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write(command + "\n")
                proc.stdin.flush()

    def read(self, key: str, timeout: float) -> list[Any]:
        """The next value of ``key`` from each process."""
        out = []
        deadline = time.monotonic() + timeout
        for proc, inbox in zip(self.procs, self.inbox, strict=True):
            with self.lock:
                q = inbox.setdefault(key, queue.Queue())
            try:
                out.append(q.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                state = "ended" if proc.poll() is not None else "running"
                raise RuntimeError(
                    f"load process {proc.pid} ({state}): no {key!r} in time"
                ) from None
        return out

    def ask(self, command: str, key: str, timeout: float = 60.0) -> list[Any]:
        with self.asking:  # one question at a time: answers come back in order
            self.send(command)
            return self.read(key, timeout)

    def cpu(self) -> float:
        total = 0.0
        for p in self.ps:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self) -> list[int | None]:
        codes: list[int | None] = []
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError, ValueError):
                    assert proc.stdin is not None
                    proc.stdin.write("stop\n")
                    proc.stdin.flush()
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=20))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=5))
        return codes


# ---------------------------------------------------------------------------------------------
# what the gateway shows: its store (read-only) and its JSON log


def store_query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


class LogWatch:
    """Reads the gateway's JSON log as it grows: offline events, error-level lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.lines = 0
        self.events: Counter[str] = Counter()
        self.offline: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.error_count = 0
        self.warnings: Counter[str] = Counter()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(64 * MB)
        self.offset += len(data)
        chunk = self.partial + data
        lines = chunk.split(b"\n")
        self.partial = lines.pop()
        now = time.monotonic()
        for raw in lines:
            if not raw.strip():
                continue
            self.lines += 1
            try:
                ev = json.loads(raw)
            except ValueError:
                ev = {
                    "event": "(not JSON)",
                    "level": "error",
                    "text": raw[:300].decode("utf-8", "replace"),
                }
            if not isinstance(ev, dict):
                continue
            name = str(ev.get("event", "?"))
            level = str(ev.get("level", "info"))
            self.events[name] += 1
            if name == "device.offline":
                self.offline.append({**ev, "seen": now})
            if level in ("error", "critical", "exception"):
                self.error_count += 1
                if len(self.errors) < 10:
                    self.errors.append(ev)
            elif level == "warning":
                self.warnings[name] += 1


# ---------------------------------------------------------------------------------------------
# the driver


class Sampler:
    def __init__(self, gw: Gateway, loads: Loads, db: Path, logs: LogWatch) -> None:
        self.gw, self.loads, self.db, self.logs = gw, loads, db, logs
        self.t0 = time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self._last: tuple[float, float, float, float, float] | None = None
        self._last_counts: Counter[str] = Counter()
        self._last_drops = udp_socket(gw.port)[1]
        self.sessions = lambda: (0, 0)
        self.phase = "start"

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        gw_cpu, load_cpu = self.gw.cpu(), self.loads.cpu()
        me = psutil.Process().cpu_times()
        own = gw_cpu + load_cpu + me.user + me.system
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        cpu_pct = load_pct = others_pct = None
        if self._last is not None:
            t, c, lc, o, b = self._last
            cpu_pct = round(100 * (gw_cpu - c) / (now - t), 1)
            load_pct = round(100 * (load_cpu - lc) / (now - t), 1)
            # Process and machine counters are read a moment apart: about ±10 % of noise.
            others_pct = max(0.0, round(100 * ((busy - b) - (own - o)) / (now - t), 1))
        self._last = (now, gw_cpu, load_cpu, own, busy)
        online = store_query(self.db, "SELECT count(*) FROM devices WHERE online = 1")
        self.logs.poll()
        up, flowing = self.sessions()
        counts: Counter[str] = Counter()
        lag = None
        try:
            for c in self.loads.ask("counts", "counts", timeout=10.0):
                lag = max(lag or 0.0, c.pop("wheel_lag_max_ms"))
                counts.update(c)
        except RuntimeError:
            pass  # a load process too busy to answer in time: the row says so (None)
        delta = counts - self._last_counts if counts else Counter()
        if counts:
            self._last_counts = counts
        rx_queue, drops = udp_socket(self.gw.port)
        row = {
            "t": round(now - self.t0, 1),
            "phase": self.phase,
            "gateway_cpu_pct": cpu_pct,
            "gateway_rss_mb": round(self.gw.rss() / MB, 1),
            "loads_cpu_pct": load_pct,
            "other_processes_cpu_pct": others_pct,
            "online": online[0][0] if online else 0,
            "sessions": up,
            "sessions_flowing": flowing,
            "offline_events": len(self.logs.offline),
            "keepalives_sent": delta["keepalive_sent"] if counts else None,
            "keepalives_ok": delta["keepalive_ok"] if counts else None,
            "keepalive_retransmissions": delta["keepalive_retransmissions"] if counts else None,
            "keepalives_unanswered": delta["keepalive_unanswered"] if counts else None,
            "registrations": delta["registrations"] if counts else None,
            "wheel_lag_max_ms": lag,
            "sip_rx_queue_kb": rx_queue // 1024,
            "sip_rx_drops": drops - self._last_drops,
        }
        self._last_drops = drops
        self.rows.append(row)
        return row


ROW_FIELDS = (
    "t",
    "phase",
    "gateway_cpu_pct",
    "gateway_rss_mb",
    "online",
    "sessions",
    "sessions_flowing",
    "offline_events",
    "loads_cpu_pct",
    "other_processes_cpu_pct",
    "keepalives_sent",
    "keepalives_ok",
    "keepalive_retransmissions",
    "keepalives_unanswered",
    "registrations",
    "wheel_lag_max_ms",
    "sip_rx_queue_kb",
    "sip_rx_drops",
)


def udp_socket(port: int) -> tuple[int, int]:
    """(bytes waiting in the receive queue, datagrams dropped for a full queue) of the UDP
    socket bound to 127.0.0.1:``port`` (the gateway's SIP socket), from /proc/net/udp."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0, 0
    for line in lines:
        f = line.split()
        if len(f) >= 13 and f[1] == want:
            return int(f[4].split(":")[1], 16), int(f[12])
    return 0, 0


def series_stats(values: Iterable[float | None]) -> dict[str, float] | None:
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"min": min(vs), "max": max(vs), "mean": round(sum(vs) / len(vs), 1)}


def plot(rows: list[dict[str, Any]], marks: dict[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    panels = [
        (
            "CPU % (100: one core)",
            [
                ("gateway", "gateway_cpu_pct"),
                ("loads", "loads_cpu_pct"),
                ("others", "other_processes_cpu_pct"),
            ],
        ),
        ("gateway RSS (MB)", [("RSS", "gateway_rss_mb")]),
        ("online devices", [("online (store)", "online")]),
        ("live sessions", [("up", "sessions"), ("RTP flowing", "sessions_flowing")]),
    ]
    for ax, (label, lines) in zip(axes, panels, strict=True):
        for name, key in lines:
            ax.plot(t, [r[key] if r[key] is not None else float("nan") for r in rows], label=name)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        for mark, at in marks.items():
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            if ax is axes[0]:
                ax.text(at, ax.get_ylim()[1], f" {mark}", fontsize=8, va="top")
        if len(lines) > 1:
            ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("seconds since the gateway started")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Upper:
    """The simulated upper platform and what it holds: a catalog view, a subscription, calls."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.view: dict[str, str | None] = {}  # item ID -> Status, from queries and NOTIFYs
        self.notified = 0
        self.calls: dict[str, Any] = {}  # channel -> current PlatformCall
        self.all_calls: list[Any] = []
        self.invite_failures: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.sub: Any = None

    async def start(self) -> None:
        from conformance.peers.platform import SimPlatform
        from gateway.metrics import Metrics
        from gateway.sip import Endpoint, TimerConfig

        self.endpoint = Endpoint(metrics=Metrics(), timers=TimerConfig())
        await self.endpoint.start("127.0.0.1", 0)
        self.platform = SimPlatform(
            self.endpoint, platform_id=UPPER_ID, domain=UPPER_ID[:10], decode_media=False
        ).start()

    @property
    def port(self) -> int:
        return int(self.endpoint.port)

    def gateway_online(self) -> bool:
        lower = self.platform.lowers.get(GATEWAY_ID)
        return lower is not None and lower.online

    async def catalog(self, timeout: float) -> dict[str, Any]:
        res = await self.platform.catalog(GATEWAY_ID, timeout=timeout, idle=30.0)
        items = {i.device_id: i.status for i in res.items}
        return {
            "seconds": round(res.elapsed, 2),
            "items": len(items),
            "sum_num": res.sum_num,
            "partial": res.partial,
            "status": res.status,
            "view": items,
        }

    def apply_notifies(self) -> None:
        """Every catalog NOTIFY since the last call, in order, onto ``view``."""
        from gateway.manscdp.messages import CatalogNotify

        notifies = self.platform.notifies
        for _req, msg in notifies[self.notified :]:
            if not isinstance(msg, CatalogNotify):
                continue
            for item in msg.items:
                event = (item.event or "").upper()
                if event == "DEL":
                    self.view.pop(item.device_id, None)
                elif event in ("ADD", "UPDATE"):
                    self.view[item.device_id] = item.status
                elif event in ("ON", "OFF", "VLOST", "DEFECT"):
                    self.view[item.device_id] = "ON" if event == "ON" else "OFF"
        self.notified = len(notifies)

    async def invite(self, channel: str) -> None:
        from conformance.peers.platform import RequestFailed

        try:
            call = await self.platform.invite(GATEWAY_ID, channel, transport="udp", timeout=20)
        except RequestFailed as exc:
            self.invite_failures[f"{exc.status} {exc.reason}"[:80]] += 1
            return
        self.calls[channel] = call
        self.all_calls.append(call)

    async def hold_sessions(self, channels: list[str], until: float) -> None:
        """Keep a call up on each channel until ``until``: INVITE again any that ended."""
        gate = asyncio.Semaphore(10)

        async def one(channel: str) -> None:
            async with gate:
                await self.invite(channel)

        tries = 0
        while time.monotonic() < until and tries < 20 * len(channels):
            missing = []
            for ch in channels:
                call = self.calls.get(ch)
                if call is None:
                    missing.append(ch)
                elif call.ended.is_set():
                    self.ended[str(call.ended_by)] += 1
                    del self.calls[ch]
                    missing.append(ch)
            tries += len(missing)
            await asyncio.gather(*(one(ch) for ch in missing))
            await asyncio.sleep(min(2.0, max(0.0, until - time.monotonic())))

    def sessions(self) -> tuple[int, int]:
        now = time.monotonic()
        up = [c for c in self.calls.values() if not c.ended.is_set()]
        flowing = [
            c
            for c in up
            if c.receiver.last_packet_at is not None and now - c.receiver.last_packet_at < 2.0
        ]
        return len(up), len(flowing)

    def received(self) -> dict[str, int]:
        got: Counter[str] = Counter()
        for call in self.all_calls:
            got[call.channel_id] += call.receiver.packets
        return dict(got)

    async def hang_up(self) -> None:
        await asyncio.gather(
            *(c.bye(timeout=10) for c in self.calls.values() if not c.ended.is_set()),
            return_exceptions=True,
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.platform.close()
        await self.endpoint.close()


async def wait_until(what: str, check: Any, deadline: float, every: float = 0.5) -> bool:
    """Poll ``check`` until true or ``deadline``; False (and a log line) at the deadline."""
    while not check():
        if time.monotonic() > deadline:
            log(f"gave up waiting for {what}")
            return False
        await asyncio.sleep(every)
    return True


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    hist: Counter[int] = Counter()
    counts: Counter[str] = Counter()
    events: Counter[str] = Counter()
    failed: dict[str, float] = {}
    for s in stats:
        hist.update({int(k): v for k, v in s["hist"].items()})
        counts.update(s["counts"])
        events.update(s["events"])
        failed.update(s["failed_devices"])
    return {
        "registered": sum(s["registered"] for s in stats),
        "hist": hist,
        "counts": counts,
        "events": events,
        "failed": failed,
        "tasks": sum(s["tasks"] for s in stats),
    }


async def drive(args: argparse.Namespace, result: dict[str, Any]) -> bool:
    """The run; fills ``result`` as it goes. True when every check passed."""
    from gateway.app import tune_gc

    tune_gc()
    started = time.monotonic()
    deadline = started + args.budget
    workdir = Path(tempfile.mkdtemp(prefix="gb-soak-"))
    result["workdir"] = str(workdir)
    upper = Upper(args)
    await upper.start()
    media_low = random.randrange(20000, 29000) & ~1
    gw = Gateway(
        workdir,
        downlink=[],  # defaults: sync on register, catalog subscription
        overload=[],  # defaults: shedding on, as shipped
        keepalive=(args.interval, args.timeout_count),
        log=['level = "info"', 'format = "json"'],
        extra=[
            "[media]",
            'host = "127.0.0.1"',
            f"port_min = {media_low}",
            f"port_max = {media_low + 999}",
            "[[uplink.platforms]]",
            f'id = "{UPPER_ID}"',
            f'domain = "{UPPER_ID[:10]}"',
            'host = "127.0.0.1"',
            f"port = {upper.port}",
            'transport = "tcp"',
            'password = "12345678"',
            "keepalive_interval = 30",
            "retry_interval = 2",
        ],
    )
    result["gateway"] = {"command": " ".join(gw.command), "config": gw.config_text}
    db = workdir / "gateway.db"
    logs = LogWatch(gw.log_path)
    loads: Loads | None = None
    sampler_task: asyncio.Task[None] | None = None
    ids = device_ids(args.devices)
    channels = {d: channel_ids(d, args.channels) for d in ids}
    all_channels = {c for cs in channels.values() for c in cs}
    checks: dict[str, Any] = {}
    loop = asyncio.get_running_loop()
    try:
        gw.start()
        log(f"gateway pid {gw.proc.pid if gw.proc else '?'} on 127.0.0.1:{gw.port}, {workdir}")
        loads = Loads(args, gw.port)
        sampler = Sampler(gw, loads, db, logs)
        sampler.sessions = upper.sessions

        async def sample_loop() -> None:
            while time.monotonic() < deadline:
                row = await loop.run_in_executor(None, sampler.sample)
                if len(sampler.rows) % 6 == 1:
                    log(
                        f"{row['phase']}: online {row['online']}, sessions {row['sessions']}"
                        f"/{row['sessions_flowing']}, gateway CPU {row['gateway_cpu_pct']} %,"
                        f" RSS {row['gateway_rss_mb']} MB, offline events {row['offline_events']}"
                    )
                await asyncio.sleep(args.sample)

        sampler_task = loop.create_task(sample_loop())
        await wait_until("the gateway registered to the upper", upper.gateway_online, deadline)
        ready = await loop.run_in_executor(None, loads.read, "ready", 120.0)
        log(f"{sum(ready)} devices ready in {len(ready)} load processes")

        # -- 1. the storm
        sampler.phase = "storm"
        marks = {"storm": round(time.monotonic() - sampler.t0, 1)}
        loads.send("storm")
        storm_budget = max(60.0, args.devices / 50)
        storms = await loop.run_in_executor(None, loads.read, "storm", storm_budget + 120)
        firsts = [s["first_sent"] for s in storms if s["first_sent"] is not None]
        lasts = [s["last_ok"] for s in storms if s["last_ok"] is not None]
        storm_s = round(max(lasts) - min(firsts), 2) if firsts and lasts else None
        result["storm"] = {
            "devices": args.devices,
            "registered": sum(s["ok"] for s in storms),
            "failed": sum(s["failed"] for s in storms),
            "seconds": storm_s,
            "target_seconds": 60,
            "met": storm_s is not None and storm_s <= 60,
        }
        log(f"storm: {result['storm']}")

        # -- 2. settle: every channel stored
        sampler.phase = "sync"
        expected = len(all_channels)
        t_settle = time.monotonic()
        synced = await wait_until(
            f"{expected} channels stored",
            lambda: (store_query(db, "SELECT count(*) FROM channels WHERE kind = 'channel'")
                     or [(0,)])[0][0] >= expected,
            min(deadline, t_settle + args.settle),
            every=1.0,
        )  # fmt: skip
        result["sync"] = {
            "all_channels_stored": synced,
            "seconds_after_storm": round(time.monotonic() - t_settle, 1),
        }

        # -- 3. the soak
        sampler.phase = "soak"
        soak_start = time.monotonic()
        before_soak = merge_stats(await loop.run_in_executor(None, loads.ask, "stats", "stats"))
        marks["soak"] = round(soak_start - sampler.t0, 1)
        soak_end = min(soak_start + args.minutes * 60, deadline - 240)
        upper.sub = await upper.platform.subscribe(GATEWAY_ID, "Catalog", expires=3600)
        first = await upper.catalog(timeout=min(180.0, soak_end - time.monotonic()))
        upper.view = dict(first.pop("view"))
        upper.apply_notifies()
        result["upper"] = {"subscription_status": upper.sub.status, "catalog_first": first}
        log(f"upper: first catalog {first}")
        # one channel of every (devices / sessions)-th device: spread over the load processes
        step = max(1, args.devices // max(1, args.sessions))
        live = [channels[ids[i]][0] for i in range(0, args.devices, step)][: args.sessions]
        holder = loop.create_task(upper.hold_sessions(live, soak_end))
        mid_query: dict[str, Any] | None = None
        while time.monotonic() < soak_end:
            await asyncio.sleep(min(5.0, max(0.0, soak_end - time.monotonic())))
            upper.apply_notifies()
            if mid_query is None and time.monotonic() > soak_start + (soak_end - soak_start) / 2:
                mid = await upper.catalog(timeout=120.0)
                mid.pop("view")
                mid_query = mid
                log(f"upper: mid-soak catalog {mid}")
            if not loads.alive():
                raise RuntimeError("a load process died")
            if gw.proc is not None and gw.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gw.proc.returncode}")
        await holder
        result["upper"]["catalog_mid"] = mid_query

        # -- 4. checks (the devices still keep alive)
        sampler.phase = "checks"
        marks["checks"] = round(time.monotonic() - sampler.t0, 1)
        sessions_up, flowing = upper.sessions()
        media = await loop.run_in_executor(None, loads.ask, "pause-media", "media")
        await asyncio.sleep(2.0)  # packets in flight arrive
        sent: Counter[str] = Counter()
        for m in media:
            sent.update(m)
        got = upper.received()
        total_sent = sum(sent[c] for c in live)
        total_got = sum(got.get(c, 0) for c in live)
        # Channels whose one call lasted the whole soak: their device had one session only,
        # so what it sent is what the relay had to carry. A channel whose call ended (its
        # device judged offline: the gateway ends the leg without a BYE to the device, which
        # keeps streaming into a closed port) is counted apart.
        invites = Counter(c.channel_id for c in upper.all_calls)
        whole = [
            c
            for c in live
            if invites[c] == 1 and c in upper.calls and not upper.calls[c].ended.is_set()
        ]
        whole_sent = sum(sent[c] for c in whole)
        whole_got = sum(got.get(c, 0) for c in whole)
        result["media"] = {
            "sessions_wanted": len(live),
            "sessions_up_at_end": sessions_up,
            "sessions_flowing_at_end": flowing,
            "invites": len(upper.all_calls),
            "invite_failures": dict(upper.invite_failures),
            "sessions_ended_early": dict(upper.ended),
            "packets_sent_by_devices": total_sent,
            "packets_received_by_upper": total_got,
            "relay_loss_packets": total_sent - total_got,
            "relay_loss_pct": round(100 * (total_sent - total_got) / total_sent, 4)
            if total_sent
            else None,
            "sequence_gaps_seen_by_upper": sum(c.receiver.lost for c in upper.all_calls),
            "sessions_that_lasted_the_whole_soak": {
                "sessions": len(whole),
                "packets_sent": whole_sent,
                "packets_received": whole_got,
                "relay_loss_pct": round(100 * (whole_sent - whole_got) / whole_sent, 4)
                if whole_sent
                else None,
            },
            "channels_with_a_difference": {
                c: [sent[c], got.get(c, 0), invites[c]] for c in live if sent[c] != got.get(c, 0)
            },
        }
        await upper.hang_up()

        stats = merge_stats(await loop.run_in_executor(None, loads.ask, "stats", "stats"))
        rows = store_query(db, "SELECT device_id, online FROM devices")
        online = {d for d, on in rows if on}
        missing_online = [d for d in ids if d not in online]
        stored = {
            i: s
            for i, s in store_query(
                db, "SELECT item_id, status FROM channels WHERE kind = 'channel'"
            )
        }
        missing_channels = sorted(all_channels - stored.keys())
        not_on = sorted(c for c in all_channels & stored.keys() if stored[c] != "ON")
        checks["every_device_online"] = {
            "pass": not missing_online and stats["registered"] == args.devices,
            "online_in_store": len(online & set(ids)),
            "registered_at_devices": stats["registered"],
            "expected": args.devices,
            "first_missing": missing_online[:10],
        }
        checks["every_channel_in_catalog"] = {
            "pass": not missing_channels and not not_on,
            "stored": len(all_channels & stored.keys()),
            "expected": len(all_channels),
            "first_missing": missing_channels[:10],
            "not_on": len(not_on),
            "first_not_on": not_on[:10],
        }
        final = await upper.catalog(timeout=min(180.0, max(30.0, deadline - time.monotonic())))
        final_view: dict[str, str | None] = final.pop("view")
        upper.apply_notifies()
        result["upper"]["catalog_final"] = final
        result["upper"]["notifies"] = len(upper.platform.notifies)
        result["upper"]["catalog_events"] = dict(
            Counter(e for e, _ in upper.platform.catalog_events)
        )
        store_view: dict[str, str | None] = dict(stored)
        store_view.update({d: ("ON" if d in online else "OFF") for d, _ in rows})
        checks["upper_view_equals_store"] = {
            "pass": compare(final_view, store_view)["equal"]
            and compare(upper.view, store_view)["equal"],
            "final_query": compare(final_view, store_view),
            "first_query_plus_notifies": compare(upper.view, store_view),
        }

        # keepalives and offlines
        offline_devices = Counter(str(e.get("device_id")) for e in logs.offline)
        failed = stats["failed"]
        result["keepalive"] = {
            "interval_s": args.interval,
            "timeout_count": args.timeout_count,
            "answered_200": stats["counts"].get("keepalive_ok", 0),
            "latency_ms": latency(stats["hist"]),
            "latency_ms_soak_phase": latency(stats["hist"] - before_soak["hist"]),
            "counts": dict(stats["counts"]),
            "device_events": dict(stats["events"]),
            "devices_with_a_failed_keepalive": len(failed),
        }
        result["false_offlines"] = {
            "transitions": len(logs.offline),
            "devices": len(offline_devices),
            "target": 0,
            "of_devices_whose_keepalives_all_got_200": sum(
                1 for d in offline_devices if d not in failed
            ),
            "reasons": dict(Counter(str(e.get("reason")) for e in logs.offline)),
            "first": [
                {k: e.get(k) for k in ("timestamp", "device_id", "reason")}
                for e in logs.offline[:5]
            ],
            "upper_off_notifies": sum(1 for e, _ in upper.platform.catalog_events if e == "OFF"),
        }
        checks["no_false_offline"] = {"pass": not logs.offline, "count": len(logs.offline)}
        result["marks"] = marks
        result["sampler"] = sampler
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"error: {result['error']}")
    finally:
        if sampler_task is not None:
            sampler_task.cancel()
        if loads is not None:
            result["load_exit_codes"] = await loop.run_in_executor(None, loads.stop)
        await upper.close()
        result.setdefault("gateway", {})["exit_code"] = gw.stop()
        logs.poll()
    result["errors_logged"] = {
        "count": logs.error_count,
        "first": [{k: str(v)[:300] for k, v in e.items()} for e in logs.errors[:5]],
        "warnings_by_event": dict(logs.warnings),
        "log_lines": logs.lines,
    }
    checks["no_error_logged"] = {"pass": logs.error_count == 0, "count": logs.error_count}
    result["checks"] = checks
    return bool(checks) and all(c["pass"] for c in checks.values()) and "error" not in result


def latency(hist: Counter[int]) -> dict[str, Any]:
    return {
        "count": sum(hist.values()),
        "p50": ms(percentile(hist, 0.50)),
        "p99": ms(percentile(hist, 0.99)),
        "p999": ms(percentile(hist, 0.999)),
        "max_bucket": ms(percentile(hist, 1.0)),
    }


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def compare(view: dict[str, str | None], store: dict[str, str | None]) -> dict[str, Any]:
    """The upper's items (the gateway's own item left out) against the store's devices and
    channels, by ID and Status."""
    seen = {k: v for k, v in view.items() if k != GATEWAY_ID}
    only_upper = sorted(seen.keys() - store.keys())
    only_store = sorted(store.keys() - seen.keys())
    status = sorted(
        k for k in seen.keys() & store.keys() if (seen[k] or "ON") != (store[k] or "ON")
    )
    return {
        "equal": not only_upper and not only_store and not status,
        "upper_items": len(seen),
        "store_items": len(store),
        "only_at_upper": len(only_upper),
        "only_in_store": len(only_store),
        "status_differs": len(status),
        "examples": (only_upper[:3], only_store[:3], status[:3]),
    }


def finish(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Series, their summaries and the plot, from the sampler's rows."""
    sampler: Sampler | None = result.pop("sampler", None)
    if sampler is None:
        return
    rows = sampler.rows
    result["series"] = {
        "sample_seconds": args.sample,
        "gateway_cpu_pct": series_stats(r["gateway_cpu_pct"] for r in rows),
        "gateway_rss_mb": series_stats(r["gateway_rss_mb"] for r in rows),
        "loads_cpu_pct": series_stats(r["loads_cpu_pct"] for r in rows),
        "other_processes_cpu_pct": series_stats(r["other_processes_cpu_pct"] for r in rows),
        "soak_only": {
            "gateway_cpu_pct": series_stats(
                r["gateway_cpu_pct"] for r in rows if r["phase"] == "soak"
            ),
            "gateway_rss_mb": series_stats(
                r["gateway_rss_mb"] for r in rows if r["phase"] == "soak"
            ),
        },
        "row_fields": ROW_FIELDS,
        "rows": [[r[k] for k in ROW_FIELDS] for r in rows],
    }
    soak = [r["gateway_rss_mb"] for r in rows if r["phase"] == "soak"]
    if len(soak) >= 4:
        half = len(soak) // 2
        result["series"]["soak_rss_growth_second_half_mb"] = round(max(soak[half:]) - soak[half], 1)
    path = Path(args.plot)
    try:
        plot(
            rows,
            result.get("marks", {}),
            path,
            f"soak: {args.devices} devices × {args.channels} channels, keepalive "
            f"{args.interval:g} s, {args.sessions} sessions, {args.minutes:g} min",
        )
        result["plot"] = str(path.resolve())
    except Exception as exc:  # the figures still go out
        result["plot_error"] = f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--devices", type=int, default=20_000)
    p.add_argument("--channels", type=int, default=4, help="channels per device")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak phase")
    p.add_argument("--short", action="store_true", help="2,000 devices, 2 minutes")
    p.add_argument("--loads", type=int, default=4, help="load processes")
    p.add_argument("--interval", type=float, default=5.0, help="keepalive interval, seconds")
    p.add_argument("--timeout-count", type=int, default=3)
    p.add_argument("--sessions", type=int, default=50, help="live sessions the upper holds")
    p.add_argument("--fps", type=int, default=10, help="frames/s of each live stream")
    p.add_argument(
        "--load-nice", type=int, default=5, help="niceness of the load processes (0: the gateway's)"
    )
    p.add_argument("--concurrency", type=int, default=64, help="REGISTERs in flight per process")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument(
        "--settle", type=float, default=180.0, help="most seconds to wait for the catalog sync"
    )
    p.add_argument("--plot", default=str(HERE / "out" / "soak.png"))
    p.add_argument("--budget", type=float, default=None, help="whole run, seconds")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    if args.short:
        args.devices, args.minutes = min(args.devices, 2000), min(args.minutes, 2.0)
    if args.budget is None:
        args.budget = args.minutes * 60 + 600 + args.devices / 40
    if args.load:
        return run_load(args)

    from gateway.app import configure_logging, install_event_loop_policy
    from gateway.settings import config_from_dict

    # The upper's endpoint logs to stderr, warnings only: stdout carries the JSON.
    configure_logging(config_from_dict({"log": {"level": "warning"}}))
    install_event_loop_policy()
    started = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "soak",
        "command": " ".join(["bench/soak.py", *raw]),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "devices": args.devices,
        "channels_per_device": args.channels,
        "minutes": args.minutes,
        "load_processes": min(args.loads, args.devices),
    }

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        ok = asyncio.run(drive(args, result))
    except KeyboardInterrupt:  # drive's finally blocks have stopped what it started
        result["error"] = "interrupted"
        ok = False
    finish(result, args)
    result["host"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    workdir = result.get("workdir")
    if workdir and ok and not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        result.pop("workdir")
    result["pass"] = ok
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
