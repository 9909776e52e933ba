"""RTP relay throughput and added latency on 127.0.0.1, UDP in and out, 1,400-byte packets.

Run: ``.venv/bin/python bench/relay.py`` (about 2–3 minutes; ``--quick`` for a shorter run).

Three kinds of process, besides this driver, each started here and stopped here by PID:

* the **sender** emulates cameras: stream *i* sends a 25 fps PS stream of ``--stream-pps`` (360,
  i.e. 4 Mbit/s) RTP packets per second — one frame (a PS pack of 14–15 packets, a key frame
  with system header and PSM every 50 frames) sent back to back every 40 ms, the streams'
  frames evenly staggered. One socket sends to every stream's port with ``sendmmsg``: a 3-part
  iovec per packet (12-byte header, shared payload, 8-byte send time) and, where the kernel has
  UDP GSO, one ``UDP_SEGMENT`` entry per frame, so that the load generator leaves the cores to
  the relay. Each packet ends with ``time.time_ns()`` taken just before its ``sendmmsg``.
* the **receiver** reads its sockets with ``recvmmsg`` and ``SO_TIMESTAMPNS``; per packet,
  latency = the kernel's arrival time at the receiver − the send time in the payload.
* the **relay** process: ``make_relay(workers=W)`` on uvloop with one UDP stream per camera,
  each with one UDP output to the receiver. ``W=0`` is a :class:`LocalRelay` in that process;
  ``W=2`` is the scaled-out :class:`WorkerRelay` (that process plus two relay workers).

The sender, receiver and relay share the machine's cores (2 here). For each relay form the
number of camera streams is stepped up by ``--factor`` and then bisected (at most
``--max-steps`` steps) for the highest rate at which the relay keeps up: loss < 0.01 % (packets
the receiver got vs packets sent, once the relay has drained), p99 latency ≤ ``--max-p99-ms``
and the last packet within ``--max-lag-ms`` of being sent — a relay that falls behind builds a
backlog in its 4 MiB socket buffers, so a short step shows latency long before it shows loss.
A step where the sender itself slipped more than ``--max-late-ms`` off its schedule counts as
failed too (the offered rate was not offered). Each failed step is run a second time. The same
is measured at the target rate (100,000 packets/s, 278 streams). The latency the relay adds is
its p50/p99 minus those of the sender sending straight to the receiver at the same rate
(``direct``). Drops are attributed with the kernel's per-socket counters (``/proc/net/udp``).

Prints one JSON object on stdout; progress goes to stderr. Every loop is bounded; the whole run
by ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import ctypes
import json
import os
import platform
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import psutil  # noqa: E402

from gateway.media._relay_ports import set_buffer  # noqa: E402
from gateway.media._relay_udp import (  # noqa: E402
    MMSG_SIZE,
    Iovec,
    Mmsghdr,
    gso_cmsg,
    gso_supported,
    load_mmsg,
)

PACKET = 1400
STAMP = 8  # the send time (int64, native order) ends each packet
FPS = 25
KEY_EVERY = 50
SO_TIMESTAMPNS = 35  # Linux
RECV_SLOT = 2048
RECV_BATCH = 256
SEND_BATCH = 1024
LOSS_BOUND = 1e-4


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(ordered: list[int] | array.array[int], q: float) -> int:
    return int(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if len(ordered) else 0


def udp_drops() -> dict[int, int]:
    """Datagrams the kernel dropped per local UDP port (``/proc/net/udp``, last column)."""
    drops: dict[int, int] = {}
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                cols = line.split()
                port = int(cols[1].rsplit(":", 1)[1], 16)
                drops[port] = drops.get(port, 0) + int(cols[-1])
    except OSError:
        pass
    return drops


def mmsg_or_exit() -> Any:
    mmsg = load_mmsg()
    if mmsg is None:
        sys.exit("this benchmark needs Linux (recvmmsg/sendmmsg)")
    return mmsg


# ---------------------------------------------------------------------------------------------
# The sender process


def ps_bodies(size: int) -> tuple[bytes, bytes, bytes]:
    """Payloads (without the trailing send time) of a key frame's first packet (pack header +
    system header + PSM), another frame's first packet (pack header) and the other packets."""
    n = size - 12 - STAMP
    pack = b"\x00\x00\x01\xba" + bytes([0x44, 0, 4, 0, 4, 1, 1, 0x89, 0xC3, 0xF8])
    system = b"\x00\x00\x01\xbb\x00\x0c" + bytes(12)
    psm = b"\x00\x00\x01\xbc\x00\x12" + bytes(18)
    pes = b"\x00\x00\x01\xe0"
    fill = bytes(range(256)) * (n // 256 + 1)
    key = (pack + system + psm + pes + fill)[:n]
    frame = (pack + pes + fill)[:n]
    rest = fill[:n]
    return key, frame, rest


class Sender:
    """Camera-like RTP streams from one socket with ``sendmmsg`` (see the module docstring)."""

    def __init__(self) -> None:
        self.mmsg = mmsg_or_exit()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        set_buffer(self.sock, receive=False, size=16 * 1024 * 1024)
        self.fd = self.sock.fileno()
        b = SEND_BATCH
        self.hdrs = (Mmsghdr * b)()
        self.iov = (Iovec * (3 * b))()
        self.heads = ctypes.create_string_buffer(16 * b)
        self.stamp = ctypes.create_string_buffer(8)
        self.bodies = [ctypes.create_string_buffer(x, len(x)) for x in ps_bodies(PACKET)]
        self.body_addr = [ctypes.addressof(x) for x in self.bodies]
        heads, stamp = ctypes.addressof(self.heads), ctypes.addressof(self.stamp)
        for i in range(b):
            self.iov[3 * i].iov_base, self.iov[3 * i].iov_len = heads + 16 * i, 12
            self.iov[3 * i + 1].iov_len = PACKET - 12 - STAMP
            self.iov[3 * i + 2].iov_base, self.iov[3 * i + 2].iov_len = stamp, STAMP
            self.hdrs[i].msg_hdr.msg_iov = ctypes.addressof(self.iov[3 * i])
            self.hdrs[i].msg_hdr.msg_iovlen = 3
            self.hdrs[i].msg_hdr.msg_namelen = 16
        # With UDP GSO a frame is one entry (its packets are all PACKET bytes): msg_name, msg_iov
        # and msg_iovlen are words 0, 2 and 3 of an entry; the control message is shared.
        self.gso = gso_supported(self.sock)
        self.control = ctypes.create_string_buffer(gso_cmsg(PACKET), len(gso_cmsg(PACKET)))
        if self.gso:
            for i in range(b):
                h = self.hdrs[i].msg_hdr
                h.msg_control = ctypes.addressof(self.control)
                h.msg_controllen = len(self.control)
        words = (ctypes.c_size_t * (MMSG_SIZE // 8 * b)).from_buffer(self.hdrs)
        self.name_words = words  # msg_name of entry i is word (MMSG_SIZE/8)·i
        self.iov_words = (ctypes.c_size_t * (6 * b)).from_buffer(self.iov)
        self.head = struct.Struct(">BBHII")
        self.names: list[ctypes.Array[ctypes.c_char]] = []
        self.seq: list[int] = []

    def targets(self, ports: list[int]) -> list[int]:
        self.names = []
        for port in ports:
            self.names.append(
                ctypes.create_string_buffer(
                    struct.pack("=H", socket.AF_INET)
                    + struct.pack(">H", port)
                    + socket.inet_aton("127.0.0.1")
                    + bytes(8),
                    16,
                )
            )
        while len(self.seq) < len(ports):
            self.seq.append((len(self.seq) * 7919) & 0xFFFF)
        return [ctypes.addressof(x) for x in self.names]

    def run(self, ports: list[int], stream_pps: int, seconds: float) -> dict[str, Any]:
        names = self.targets(ports)
        streams = len(ports)
        per_frame = stream_pps / FPS
        frames_per_second = FPS * streams
        total_frames = int(seconds * FPS) * streams
        word = MMSG_SIZE // 8
        head, heads, seqs = self.head, self.heads, self.seq
        key, frame_body, rest = self.body_addr
        iov_words, name_words = self.iov_words, self.name_words
        sendmmsg, hdrs = self.mmsg.sendmmsg, ctypes.addressof(self.hdrs)
        sent = failed = calls = 0
        late = 0.0
        g = 0
        gso = self.gso
        iov_base = ctypes.addressof(self.iov)
        carry = [0.0] * streams  # fractional packets per frame accumulate per stream
        t0 = time.perf_counter()
        while g < total_frames:
            now = time.perf_counter() - t0
            due = min(total_frames, int(now * frames_per_second) + 1)
            if due <= g:
                time.sleep(max(0.0, g / frames_per_second - now))
                continue
            late = max(late, now - g / frames_per_second)
            slot = entry = 0
            frames: list[int] = []
            while g < due:
                s = g % streams
                f = g // streams
                want = per_frame + carry[s]
                k = int(want)
                carry[s] = want - k
                if slot + k > SEND_BATCH:
                    break
                seq, ts, ssrc = seqs[s], (f * 3600) & 0xFFFFFFFF, 0x5000_0000 + s
                if gso:  # entry `entry` holds the frame's k packets, 3 iovecs each
                    name_words[word * entry] = names[s]
                    name_words[word * entry + 2] = iov_base + 48 * slot
                    name_words[word * entry + 3] = 3 * k
                    frames.append(k)
                else:
                    name_words[word * slot : word * (slot + k) : word] = [names[s]] * k
                iov_words[6 * slot + 2 : 6 * (slot + k) + 2 : 6] = [rest] * k
                iov_words[6 * slot + 2] = key if f % KEY_EVERY == 0 else frame_body
                for j in range(k):
                    marker = 0x80 if j == k - 1 else 0  # the frame's last packet
                    head.pack_into(heads, 16 * (slot + j), 0x80, 96 | marker, seq, ts, ssrc)
                    seq = (seq + 1) & 0xFFFF
                seqs[s] = seq
                slot += k
                entry += 1
                g += 1
            struct.pack_into("=q", self.stamp, 0, time.time_ns())
            entries = entry if gso else slot
            done = 0
            while done < entries:
                r = sendmmsg(self.fd, hdrs + done * MMSG_SIZE, entries - done, 0)
                if r <= 0:
                    break
                done += r
            packets = sum(frames[:done]) if gso else done
            sent += packets
            failed += slot - packets
            calls += 1
        elapsed = time.perf_counter() - t0
        return {
            "sent": sent,
            "failed": failed,
            "seconds": elapsed,
            "rate": sent / elapsed,
            "calls": calls,
            "max_late_ms": round(late * 1000, 2),
            "gso": gso,
            "end_ns": time.time_ns(),
        }


def sender_main() -> int:
    sender = Sender()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        cmd = json.loads(line)
        result = sender.run(cmd["ports"], cmd["stream_pps"], cmd["seconds"])
        print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# The receiver process


class Receiver:
    """Counts packets and collects latencies on ``sockets`` UDP sockets."""

    def __init__(self, sockets: int) -> None:
        self.mmsg = mmsg_or_exit()
        self.socks = []
        for _ in range(sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            set_buffer(sock, receive=True, size=64 * 1024 * 1024)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            self.socks.append(sock)
        b = RECV_BATCH
        self.buf = ctypes.create_string_buffer(RECV_SLOT * b)
        self.ctrl = ctypes.create_string_buffer(64 * b)
        self.iov = (Iovec * b)()
        self.hdrs = (Mmsghdr * b)()
        base, ctrl = ctypes.addressof(self.buf), ctypes.addressof(self.ctrl)
        for i in range(b):
            self.iov[i].iov_base, self.iov[i].iov_len = base + RECV_SLOT * i, RECV_SLOT
            h = self.hdrs[i].msg_hdr
            h.msg_iov, h.msg_iovlen = ctypes.addressof(self.iov[i]), 1
            h.msg_control, h.msg_controllen = ctrl + 64 * i, 64
        q = memoryview(self.buf).cast("B").cast("q")
        stamp_at = (PACKET - STAMP) // 8
        self.sent_at = q[stamp_at :: RECV_SLOT // 8]
        c = memoryview(self.ctrl).cast("B").cast("q")
        self.sec, self.nsec = c[2::8], c[3::8]  # cmsghdr (16 bytes), then struct timespec
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first_ns = self.last_ns = 0
        self.latency: array.array[int] = array.array("q")

    def drain(self, fd: int) -> int:
        got = 0
        recvmmsg, hdrs = self.mmsg.recvmmsg, ctypes.addressof(self.hdrs)
        for _ in range(64):
            n = recvmmsg(fd, hdrs, RECV_BATCH, socket.MSG_DONTWAIT, None)
            if n <= 0:
                break
            sec, nsec = self.sec[:n].tolist(), self.nsec[:n].tolist()
            arrived = [s * 1_000_000_000 + ns for s, ns in zip(sec, nsec, strict=True)]
            self.latency.extend(
                [a - t for a, t in zip(arrived, self.sent_at[:n].tolist(), strict=True)]
            )
            if not self.first_ns:
                self.first_ns = arrived[0]
            self.last_ns = max(self.last_ns, arrived[-1])
            got += n
            if n < RECV_BATCH:
                break
        self.count += got
        return got

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latency)
        return {
            "received": self.count,
            "last_ns": self.last_ns,
            "latency_us": {
                "p50": round(percentile(lat, 0.50) / 1000, 1),
                "p90": round(percentile(lat, 0.90) / 1000, 1),
                "p99": round(percentile(lat, 0.99) / 1000, 1),
                "max": round((lat[-1] if lat else 0) / 1000, 1),
            },
        }


def receiver_main(sockets: int) -> int:
    rx = Receiver(sockets)
    ports = [s.getsockname()[1] for s in rx.socks]
    print(json.dumps({"ports": ports}), flush=True)
    poller = select.epoll()
    fds = {s.fileno() for s in rx.socks}
    for fd in fds:
        poller.register(fd, select.EPOLLIN)
    stdin = sys.stdin.fileno()
    poller.register(stdin, select.EPOLLIN)
    pending: dict[str, Any] | None = None
    last_packet = time.monotonic()
    pending_since = 0.0
    while True:
        for fd, _ in poller.poll(0.05):
            if fd in fds:
                if rx.drain(fd):
                    last_packet = time.monotonic()
            elif fd == stdin:
                line = sys.stdin.readline()
                if not line or line.strip() == "quit":
                    return 0
                pending, pending_since = json.loads(line), time.monotonic()
        if pending is not None:
            now = time.monotonic()
            quiet = now - max(last_packet, pending_since) >= pending["quiet"]
            if quiet or now - pending_since > pending["timeout"]:
                print(json.dumps(rx.summary()), flush=True)
                rx.reset()
                pending = None


# ---------------------------------------------------------------------------------------------
# The relay process


async def relay_serve(args: argparse.Namespace) -> None:
    from gateway.app import tune_gc
    from gateway.media.relay import WorkerRelay, make_relay
    from gateway.metrics import Metrics

    metrics = Metrics()
    relay = make_relay(
        workers=args.workers,
        host="127.0.0.1",
        port_min=args.port_min,
        port_max=args.port_max,
        metrics=metrics,
    )
    await relay.start()
    outs = [int(p) for p in args.targets.split(",")]
    inputs = []
    for i in range(args.streams):
        sid = f"cam{i}"
        inputs.append(await relay.open_stream(sid, "udp", idle_timeout=3600.0))
        await relay.add_output(
            sid, "up", "udp", remote=("127.0.0.1", outs[i % len(outs)]), ssrc=0x0BEB_C200 + i
        )
    tune_gc()
    pids = [os.getpid()]
    if isinstance(relay, WorkerRelay):
        pids += relay.worker_pids()
    print(json.dumps({"inputs": inputs, "pids": pids}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "quit":
            break
        totals = {"packets": 0, "lost": 0, "reordered": 0, "sent": 0, "dropped": 0, "keyframes": 0}
        for i in range(args.streams):
            st = await relay.stats(f"cam{i}")
            totals["packets"] += st.input.packets
            totals["lost"] += st.input.lost
            totals["reordered"] += st.input.reordered
            totals["keyframes"] += st.input.last_keyframe_at is not None
            for o in st.outputs:
                totals["sent"] += o.packets
                totals["dropped"] += o.dropped
        totals["metrics"] = metrics.snapshot()  # type: ignore[assignment]
        print(json.dumps(totals), flush=True)
    await relay.close()


def relay_main(args: argparse.Namespace) -> int:
    from gateway.app import configure_logging, install_event_loop_policy
    from gateway.settings import config_from_dict

    # Logs to stderr (stdout carries the answers), warnings only: streams open quietly.
    configure_logging(config_from_dict({"log": {"level": "warning"}}))
    install_event_loop_policy()
    asyncio.run(relay_serve(args))
    return 0


# ---------------------------------------------------------------------------------------------
# The driver


class Child:
    """A process of this benchmark, talking JSON lines over its stdin/stdout."""

    def __init__(self, role: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.hello = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.args[3]} process ended (exit {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, cmd: dict[str, Any] | str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((cmd if isinstance(cmd, str) else json.dumps(cmd)) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget
        self.receiver = Child("receiver", "--sockets", str(args.receiver_sockets))
        try:
            self.sender = Child("sender")
        except BaseException:
            self.receiver.stop()
            raise
        self.rx_ports: list[int] = self.receiver.hello["ports"]
        self.direct_cache: dict[int, dict[str, Any]] = {}

    def step(self, ports: list[int], streams: int, pids: list[int]) -> dict[str, Any]:
        """Send ``streams`` camera streams to ``ports`` for ``--step`` seconds; judge the run."""
        args = self.args
        targets = ports[:streams]
        relay = [psutil.Process(pid) for pid in pids]
        helpers = [psutil.Process(c.proc.pid) for c in (self.sender, self.receiver)]
        cpu0 = [sum(p.cpu_times()[:2]) for p in relay + helpers]
        drops0 = udp_drops()
        sent = self.sender.ask(
            {"cmd": "send", "ports": targets, "stream_pps": args.stream_pps, "seconds": args.step}
        )
        got = self.receiver.ask({"cmd": "collect", "quiet": 0.3, "timeout": 10.0})
        busy = [
            round(100 * (sum(p.cpu_times()[:2]) - c) / sent["seconds"])
            for p, c in zip(relay + helpers, cpu0, strict=True)
        ]
        drops1 = udp_drops()
        lost = sent["sent"] - got["received"]
        loss = lost / sent["sent"] if sent["sent"] else 1.0
        lag_ms = (got["last_ns"] - sent["end_ns"]) / 1e6 if got["last_ns"] else None
        p99_ms = got["latency_us"]["p99"] / 1000
        verdict = "ok"
        if sent["max_late_ms"] > args.max_late_ms:
            verdict = "sender fell behind"
        elif loss >= LOSS_BOUND:
            verdict = "loss"
        elif lag_ms is None or lag_ms > args.max_lag_ms or p99_ms > args.max_p99_ms:
            verdict = "relay fell behind"
        result = {
            "streams": streams,
            "offered_pps": round(sent["rate"]),
            "sent": sent["sent"],
            "received": got["received"],
            "loss": round(loss, 6),
            "dropped_at_relay_input": (
                sum(drops1.get(p, 0) - drops0.get(p, 0) for p in targets) if pids else None
            ),
            "dropped_at_receiver": sum(drops1.get(p, 0) - drops0.get(p, 0) for p in self.rx_ports),
            "lag_ms": round(lag_ms, 2) if lag_ms is not None else None,
            "latency_us": got["latency_us"],
            "cpu_percent": {
                "relay": sum(busy[: len(relay)]) if pids else None,
                "relay_by_process": busy[: len(relay)] if len(relay) > 1 else None,
                "sender": busy[-2],
                "receiver": busy[-1],
            },
            "sender_max_late_ms": sent["max_late_ms"],
            "verdict": verdict,
        }
        cpu = result["cpu_percent"]
        log(
            f"  {streams} streams, {result['offered_pps']} pps: loss {loss:.4%},"
            f" p50/p99 {got['latency_us']['p50']}/{got['latency_us']['p99']} us,"
            f" cpu % relay {cpu['relay']} {cpu['relay_by_process'] or ''} sender {cpu['sender']}"
            f" receiver {cpu['receiver']} -> {verdict}"
        )
        return result

    def judged(self, ports: list[int], streams: int, pids: list[int]) -> dict[str, Any]:
        """:meth:`step`, run a second time if it failed, to rule out a one-off."""
        result = self.step(ports, streams, pids)
        if result["verdict"] != "ok" and time.monotonic() < self.deadline:
            log("  again, to rule out a one-off")
            result = self.step(ports, streams, pids)
        return result

    def direct(self, streams: int) -> dict[str, Any]:
        """The sender straight to the receiver: the latency without a relay (the baseline)."""
        if streams not in self.direct_cache:
            log(f" direct, no relay, {streams} streams")
            ports = [self.rx_ports[i % len(self.rx_ports)] for i in range(streams)]
            self.direct_cache[streams] = self.step(ports, streams, [])
        return self.direct_cache[streams]

    def search(self, relay: Child) -> dict[str, Any]:
        """Grow the number of streams by ``--factor`` until a step fails, then bisect; bounded
        by ``--max-steps`` and the budget."""
        args = self.args
        inputs: list[int] = relay.hello["inputs"]
        pids: list[int] = relay.hello["pids"]
        steps: list[dict[str, Any]] = []
        lo, hi = 0, None
        streams = args.start_streams
        best: dict[str, Any] | None = None
        for _ in range(args.max_steps):
            if time.monotonic() > self.deadline:
                log("budget spent: the search stops here")
                break
            result = self.judged(inputs, streams, pids)
            steps.append(result)
            if result["verdict"] == "ok":
                lo, best = streams, result
            else:
                hi = streams
            if hi is None:
                nxt = min(len(inputs), int(streams * args.factor))
                if nxt == streams:
                    break
            else:
                if hi - lo <= max(2, lo // 20):
                    break
                nxt = (lo + hi) // 2
            streams = nxt
        at_target = None
        target_streams = -(-TARGET_PPS // args.stream_pps)
        if target_streams <= len(inputs) and time.monotonic() < self.deadline:
            log(f" at the target rate: {target_streams} streams")
            at_target = self.judged(inputs, target_streams, pids)
        totals = relay.ask("stats")
        return {"best": best, "at_target": at_target, "steps": steps, "relay_totals": totals}

    def run_relay(self, workers: int) -> dict[str, Any]:
        args = self.args
        log(f"relay with workers={workers}, {args.max_streams} streams open")
        relay = Child(
            "relay",
            "--workers",
            str(workers),
            "--port-min",
            str(args.port_min),
            "--port-max",
            str(args.port_max),
            "--streams",
            str(args.max_streams),
            "--targets",
            ",".join(map(str, self.rx_ports)),
        )
        try:
            found = self.search(relay)
        finally:
            relay.stop()
        out: dict[str, Any] = {"workers": workers, **found}
        summary: dict[str, Any] = {}
        for name in ("best", "at_target"):
            step = found[name]
            if step is None:
                continue
            base = self.direct(step["streams"])
            summary[name] = {
                "ok": step["verdict"] == "ok",
                "packets_per_second": step["offered_pps"],
                "camera_streams_4mbit": step["streams"],
                "loss": step["loss"],
                "latency_us": step["latency_us"],
                "direct_latency_us": base["latency_us"],
                "latency_added_us": {
                    q: round(step["latency_us"][q] - base["latency_us"][q], 1)
                    for q in ("p50", "p99")
                },
                "relay_cpu_percent": step["cpu_percent"]["relay"],
                "relay_cpu_us_per_packet": round(
                    step["cpu_percent"]["relay"] * 1e4 / step["offered_pps"], 2
                ),
            }
        out["summary"] = summary
        return out

    def close(self) -> None:
        self.sender.stop()
        self.receiver.stop()


TARGET_PPS = 100_000


def drive(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args)
    try:
        local = bench.run_relay(0)
        scaled = bench.run_relay(args.workers) if args.workers > 0 else None
    finally:
        bench.close()
    mbit = args.stream_pps * PACKET * 8 / 1e6
    return {
        "benchmark": "relay",
        "command": " ".join(["bench/relay.py", *args.argv]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "packet_bytes": PACKET,
        "camera_stream": {"packets_per_second": args.stream_pps, "fps": FPS, "mbit_s": mbit},
        "pass": {
            "loss_below": LOSS_BOUND,
            "p99_latency_ms_at_most": args.max_p99_ms,
            "lag_ms_at_most": args.max_lag_ms,
            "sender_late_ms_at_most": args.max_late_ms,
        },
        "local": local["summary"],
        "scaled_out": {"workers": args.workers, **scaled["summary"]} if scaled else None,
        "targets": {"packets_per_second": TARGET_PPS, "latency_added_p99_us": 2000},
        "detail": {"local": local, "scaled_out": scaled},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("driver", "sender", "receiver", "relay"), default="driver")
    p.add_argument("--workers", type=int, default=2, help="workers of the scaled-out form, 0: none")
    p.add_argument("--port-min", type=int, default=40000)
    p.add_argument("--port-max", type=int, default=44999)
    p.add_argument("--streams", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--targets", default="", help=argparse.SUPPRESS)
    p.add_argument("--sockets", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--receiver-sockets", type=int, default=4)
    p.add_argument("--stream-pps", type=int, default=360, help="packets/s of one camera stream")
    p.add_argument("--start-streams", type=int, default=100)
    p.add_argument("--max-streams", type=int, default=1200)
    p.add_argument("--factor", type=float, default=1.35, help="growth of the stream count")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--step", type=float, default=3.0, help="seconds of sending per step")
    p.add_argument("--max-p99-ms", type=float, default=10.0, help="a step's p99 latency bound")
    p.add_argument("--max-lag-ms", type=float, default=50.0, help="last packet's delay bound")
    p.add_argument("--max-late-ms", type=float, default=20.0, help="sender schedule slip bound")
    p.add_argument("--quick", action="store_true", help="shorter steps, fewer of them")
    p.add_argument("--budget", type=float, default=200.0, help="seconds the whole run may take")
    raw = sys.argv[1:] if argv is None else argv
    args = p.parse_args(raw)
    args.argv = raw
    if args.role == "sender":
        return sender_main()
    if args.role == "receiver":
        return receiver_main(args.sockets)
    if args.role == "relay":
        return relay_main(args)
    if args.quick:
        args.step, args.max_steps = 1.5, 6
    result = drive(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
