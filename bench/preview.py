"""Live preview (WHEP over WebRTC): time to the first frame, and how many previews one gateway
holds without losing frames.

Run: ``PYTHONPATH=. .venv/bin/python bench/preview.py`` (about 7 minutes, 9 with
``--profile 100``; ``--quick``: under two). Prints one JSON object on stdout; progress on
stderr.

Three kinds of process, each started here and stopped here by PID:

* the **gateway** as it ships (``gb28181-gateway run``; ``bench/register.py``'s ``Gateway``):
  SQLite store, SIP and HTTP on loopback, a viewer token, ``[preview] ice_addresses =
  ["127.0.0.1"]``;
* this **driver**, which is also the simulated NVR (``conformance``'s ``SimDevice`` over UDP)
  streaming a camera-like clip on every channel (``bench/_preview_clip.py``: 1280x720, 25 fps,
  ~1 Mbit/s under x264's rate control, a key frame every ``--gop`` frames; its measured bitrate
  is in the JSON);
* **client** processes (``bench/_preview_client.py``), aiortc ``RTCPeerConnection`` s
  (recvonly video) that POST their offer to ``/whep/channels/{id}`` with httpx and a bearer
  token. One decodes (the first-frame figures); the others only count (capacity).

1. **First frame** (``first_frame``): from the WHEP POST to the first ``av.VideoFrame`` from
   ``track.recv()``, ``--tries`` times each: ``warm``, the channel already streaming (another
   viewer keeps the device leg up: the new one starts from the GOP cache); ``cold``, no leg
   yet (every try waits until the device saw the previous leg's BYE, so each pays a device
   INVITE, then the first key frame). The clip starts each stream at a key frame, so a cold
   start is the INVITE plus ICE/DTLS, bounded by one GOP in any case.
2. **Capacity** (``capacity``): previews are added in steps (``--steps``), each held
   ``--hold`` s, in two layouts: ``1xN`` (every viewer on one channel) and ``N/4x4`` (four
   viewers per channel, N/4 channels, so N/4 device legs too). The count-only clients swap
   each aiortc receiver's decoder queue for a counter of the complete frames its jitter buffer
   delivers and of the frames missing between them (RTP timestamp gaps at 3600 ticks a
   frame). Per step: ``frames_missing`` and ``loss_pct`` (the gaps, over all viewers);
   ``lag_growth_ms`` (how much further behind real time a viewer's picture got during the
   window: the client's clock minus the media time it received; a viewer more than
   ``LAG_BOUND_MS`` further behind is ``behind``); for reference the frames the device sent on
   a channel in the window and the fewest a viewer got (the snapshots of device and clients
   are taken apart, so these differ by a few frames even when nothing is lost) and the fewest
   the gateway handed to a sender (``GET /api/v1/previews``); the kernel's UDP error
   counters; the gateway's CPU (% of one core, psutil), CPU per preview and RSS; the clients',
   the driver's and the whole machine's CPU and the load average (the machine is shared: a
   loaded machine starves the gateway and the clients alike). ``sustained`` is the largest
   step with no frame missing, no viewer behind and every POST answered 201. A layout stops at
   its first step that fails.
3. ``--profile N``: afterwards, one step of N previews (1xN) on a second gateway run under
   cProfile; the main thread's time by part (aiortc's packetizer and RTP/RTCP, SRTP, DTLS and
   ICE, the socket sends, the gateway's feed, the WHEP/HTTP side) and per RTP packet sent.

Every wait is bounded; the whole run by ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from fractions import Fraction
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import av  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
import structlog  # noqa: E402
from _preview_clip import camera_clip, clip_kbps  # noqa: E402
from aiortc.codecs.h264 import H264Encoder  # noqa: E402
from register import Gateway, free_port, log  # noqa: E402

from conformance.peers.device import SimDevice  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.sip import Endpoint, Peer, TimerConfig  # noqa: E402

TOKEN = "bench-preview-viewer-token-0123456789"
NVR = "34020000001180000001"
FPS = 25
CLIENT = HERE / "_preview_client.py"
# A viewer whose picture fell further behind real time than this over a window (media time
# received vs its client's clock) is not kept up with, even if no frame is missing.
LAG_BOUND_MS = 200.0


def rtp_packets_per_frame(clip: tuple[Any, ...]) -> float:
    """RTP packets aiortc's H.264 packetizer makes of a frame of ``clip``, on average."""
    encoder = H264Encoder()
    packets = 0
    for n, frame in enumerate(clip):
        packet = av.Packet(frame.data)
        packet.pts, packet.time_base = n, Fraction(1, FPS)
        packets += len(encoder.pack(packet)[0])
    return packets / len(clip)


def udp_errors() -> dict[str, int]:
    """The kernel's UDP error counters (``/proc/net/snmp``, the whole machine)."""
    try:
        lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    udp = [ln[1:] for ln in lines if ln and ln[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    values = dict(zip(udp[0], udp[1], strict=False))
    keys = ("InErrors", "RcvbufErrors", "SndbufErrors")
    return {k: int(values[k]) for k in keys if k in values}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class PreviewGateway(Gateway):
    """The gateway with HTTP on a known port, a viewer token and previews on loopback."""

    def __init__(self, workdir: Path, *, profile: Path | None = None) -> None:
        self.http_port = free_port()
        self.profile = profile
        super().__init__(
            workdir,
            downlink=[],  # the defaults: a registering device's catalog is synced
            extra=[
                "[media]",
                'host = "127.0.0.1"',
                "port_min = 41000",
                "port_max = 41999",
                "[preview]",
                'ice_addresses = ["127.0.0.1"]',
                "max_sessions = 2000",
            ],
        )
        token = f'tokens = [{{name = "bench", role = "viewer", token = "{TOKEN}"}}]'
        self.config_text = self.config_text.replace(
            "[http]\nport = 0", f'[http]\nhost = "127.0.0.1"\nport = {self.http_port}\n{token}'
        )
        self.config_path.write_text(self.config_text, encoding="utf-8")

    @property
    def command(self) -> list[str]:
        if self.profile is None:
            return super().command
        wrapper = HERE / "_preview_profiled.py"
        config = str(self.config_path)
        return [sys.executable, str(wrapper), str(self.profile), "run", "--config", config]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


class Child:
    """A client process (``bench/_preview_client.py``), one JSON line per command."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ps = psutil.Process(proc.pid)

    @classmethod
    async def start(cls, url: str, *, count_only: bool) -> Child:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CLIENT),
            "--url",
            url,
            "--token",
            TOKEN,
            *(["--count-only"] if count_only else []),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        return cls(proc)

    async def ask(self, cmd: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"client {self.proc.pid} exited ({cmd['op']})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def cpu(self) -> float:
        try:
            t = self.ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            await self.ask({"op": "quit"}, timeout=1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 20)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.clip = camera_clip(gop=args.gop, kbps=args.kbps)
        self.packets_per_frame = rtp_packets_per_frame(self.clip)
        self.channels = max(2, max(args.steps) // 4 + 1)
        self.budget = Budget(args.budget)
        self.gw: PreviewGateway | None = None
        self.endpoint: Endpoint | None = None
        self.nvr: SimDevice | None = None
        self.children: list[Child] = []

    # -- set-up -------------------------------------------------------------------------------
    async def start(self, *, profile: Path | None = None) -> None:
        wd = self.workdir / ("profile" if profile else "main")
        wd.mkdir()
        self.gw = PreviewGateway(wd, profile=profile)
        await asyncio.to_thread(self.gw.start, 60.0)
        self.endpoint = Endpoint(metrics=Metrics(), timers=TimerConfig())
        await self.endpoint.start("127.0.0.1", 0)
        self.nvr = SimDevice(
            self.endpoint,
            NVR,
            Peer("udp", "127.0.0.1", self.gw.port),
            channel_count=self.channels,
            clip=self.clip,
            fps=FPS,
        )
        self.nvr.install()
        answer = await self.nvr.register()
        if answer.status != 200:
            raise RuntimeError(f"the NVR's REGISTER got {answer.status}")
        await self.wait_catalog()

    async def wait_catalog(self) -> None:
        assert self.gw is not None
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=self.gw.url, headers=headers, timeout=10) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = await http.get(f"/api/v1/devices/{NVR}/channels", params={"limit": 1})
                if got.status_code == 200 and got.json().get("total", 0) >= self.channels:
                    return
                await asyncio.sleep(0.2)
        raise RuntimeError("the NVR's catalog was not synced within 30 s")

    async def stop(self) -> None:
        for child in self.children:
            await child.stop()
        self.children = []
        if self.nvr is not None:
            with contextlib.suppress(Exception):
                await self.nvr.close_media()
        if self.endpoint is not None:
            await self.endpoint.close()
        if self.gw is not None:
            await asyncio.to_thread(self.gw.stop)
        self.nvr = self.endpoint = self.gw = None

    def channel(self, n: int) -> str:
        assert self.nvr is not None
        return self.nvr.channel_id(n)

    def live(self, channel: str) -> list[Any]:
        assert self.nvr is not None
        return [
            s
            for s in self.nvr.media_sessions.values()
            if s.channel_id == channel and s.kind == "Play" and not s.ended
        ]

    def sent(self, channel: str) -> int:
        """Frames the device has sent on ``channel`` (all its live sessions)."""
        assert self.nvr is not None
        return sum(
            s.sender.frames_sent
            for s in self.nvr.media_sessions.values()
            if s.channel_id == channel and s.kind == "Play" and s.sender is not None
        )

    async def wait_no_leg(self, channel: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while self.live(channel):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- 1. first frame -----------------------------------------------------------------------
    async def first_frame(self) -> dict[str, Any]:
        assert self.gw is not None and self.nvr is not None
        decoder = await Child.start(self.gw.url, count_only=False)
        keeper = await Child.start(self.gw.url, count_only=True)
        self.children += [decoder, keeper]
        warm_ch, cold_ch = self.channel(1), self.channel(2)
        out: dict[str, Any] = {"gop_frames": self.args.gop, "gop_ms": self.args.gop * 1000 / FPS}
        opened = await keeper.ask({"op": "open", "channels": [warm_ch]})
        if opened["opened"] != 1:
            raise RuntimeError(f"the warm channel's keeper did not open: {opened}")
        await decoder.ask({"op": "first_frame", "channel": warm_ch})  # imports, first use
        out["warm"] = await self.tries(decoder, warm_ch, cold=False)
        await keeper.ask({"op": "close"})
        invites_before = self.invites(cold_ch)
        out["cold"] = await self.tries(decoder, cold_ch, cold=True)
        out["cold"]["device_invites"] = self.invites(cold_ch) - invites_before
        return out

    def invites(self, channel: str) -> int:
        assert self.nvr is not None
        return sum(
            1
            for s in self.nvr.media_sessions.values()
            if s.channel_id == channel and s.kind == "Play"
        )

    async def tries(self, decoder: Child, channel: str, *, cold: bool) -> dict[str, Any]:
        times: list[float] = []
        answers: list[float] = []
        errors: list[str] = []
        legs_kept = 0
        for _ in range(self.args.tries):
            if self.budget.left() < 60:
                break
            if cold and not await self.wait_no_leg(channel):
                legs_kept += 1
            got = await decoder.ask({"op": "first_frame", "channel": channel}, timeout=90)
            if "error" in got:
                errors.append(got["error"])
                continue
            times.append(got["ms"])
            answers.append(got["answer_ms"])
            size = got["size"]
            if not cold:
                await asyncio.sleep(0.2)
        result: dict[str, Any] = {"tries": len(times) + len(errors), "errors": errors[:5]}
        if times:
            result |= {
                "p50_ms": percentile(times, 50),
                "p95_ms": percentile(times, 95),
                "max_ms": max(times),
                "answer_p50_ms": percentile(answers, 50),
                "frame_size": size,
                "all_ms": times,
            }
        if cold:
            result["legs_still_up_before_a_try"] = legs_kept
            # a stream starts at a key frame: a POST answered only after half a GOP means the
            # gateway missed the first one and waited for the next
            half_gop_ms = self.args.gop * 500 / FPS
            result["tries_waiting_for_a_later_key_frame"] = sum(
                1 for a in answers if a > half_gop_ms
            )
        return result

    # -- 2. capacity --------------------------------------------------------------------------
    async def capacity(self, layout: str) -> dict[str, Any]:
        assert self.gw is not None and self.gw.ps is not None
        clients = [
            await Child.start(self.gw.url, count_only=True) for _ in range(self.args.clients)
        ]
        self.children += clients
        per_channel = 1 if layout == "1xN" else 4
        viewers = 0
        steps: list[dict[str, Any]] = []
        for target in self.args.steps:
            if self.budget.left() < self.args.hold + 60:
                log(f"{layout}: budget spent before step {target}")
                break
            new = list(range(viewers, target))
            chans = [self.channel(1 if per_channel == 1 else 1 + i // per_channel) for i in new]
            log(f"{layout}: opening {len(new)} more previews ({target})")
            answers = await asyncio.gather(
                *(
                    c.ask({"op": "open", "channels": chans[k :: len(clients)]}, timeout=600)
                    for k, c in enumerate(clients)
                )
            )
            viewers = target
            failures = sum(a["failures"] for a in answers)
            failed = [e for a in answers for e in a["failed"]][:3]
            await asyncio.sleep(self.args.settle)
            step = await self.window(clients, viewers)
            step |= {"open_failures": failures, "open_errors": failed}
            step["open_s"] = max(a["seconds"] for a in answers)
            step["ok"] = step["ok"] and failures == 0
            steps.append(step)
            log(f"{layout}: {json.dumps(step)}")
            if not step["ok"]:
                break
        for c in clients:
            await c.ask({"op": "close"}, timeout=120)
            await c.stop()
            self.children.remove(c)
        for n in range(1, self.channels + 1):
            await self.wait_no_leg(self.channel(n), timeout=10)
        good = [s["previews"] for s in steps if s["ok"]]
        return {
            "layout": layout,
            "viewers_per_channel": per_channel if per_channel > 1 else "all",
            "sustained": max(good) if good else 0,
            "steps": steps,
        }

    async def window(self, clients: list[Child], viewers: int) -> dict[str, Any]:
        assert self.gw is not None and self.gw.ps is not None
        chans = {self.channel(n) for n in range(1, self.channels + 1)}
        sent0 = {c: self.sent(c) for c in chans}
        gw0, wall0 = self.gw.cpu(), time.monotonic()
        cl0 = sum(c.cpu() for c in clients)
        me0 = psutil.Process().cpu_times()
        psutil.cpu_percent()
        udp0 = udp_errors()
        handed0 = await self.handed()
        snaps0 = await asyncio.gather(*(c.ask({"op": "snap"}) for c in clients))
        await asyncio.sleep(self.args.hold)
        snaps1 = await asyncio.gather(*(c.ask({"op": "snap"}) for c in clients))
        handed1 = await self.handed()
        udp1 = udp_errors()
        sent1 = {c: self.sent(c) for c in chans}
        wall = time.monotonic() - wall0
        gw_cpu = (self.gw.cpu() - gw0) / wall * 100
        cl_cpu = (sum(c.cpu() for c in clients) - cl0) / wall * 100
        me1 = psutil.Process().cpu_times()
        me_cpu = ((me1.user + me1.system) - (me0.user + me0.system)) / wall * 100
        machine = psutil.cpu_percent()
        received: list[int] = []
        missing: list[int] = []
        lag_ms: list[float] = []
        expected_min: int | None = None
        for a, b in zip(snaps0, snaps1, strict=True):
            wall_s = b["at"] - a["at"]  # the client's own clock: no skew between processes
            for (chan, f0, m0, t0), (_c, f1, m1, t1) in zip(
                a["viewers"], b["viewers"], strict=False
            ):
                expected = sent1[chan] - sent0[chan]
                expected_min = expected if expected_min is None else min(expected_min, expected)
                received.append(f1 - f0)
                missing.append(m1 - m0)
                lag_ms.append((wall_s - (t1 - t0) / 90_000) * 1000)
        counted = len(received)
        handed = [handed1[k] - handed0[k] for k in handed1 if k in handed0]
        total_expected = sum(sent1[c] - sent0[c] for c in chans if sent1[c] > sent0[c])
        behind = sum(1 for lag in lag_ms if lag > LAG_BOUND_MS)
        delivered = sum(received) + sum(missing)
        return {
            "previews": viewers,
            "viewers_counted": counted,
            "window_s": round(wall, 1),
            "frames_expected": expected_min,
            "frames_received_min": min(received) if received else 0,
            "frames_missing": sum(missing),
            "viewers_missing_frames": sum(1 for m in missing if m),
            "loss_pct": round(100 * sum(missing) / delivered, 3) if delivered else None,
            "lag_growth_ms_max": round(max(lag_ms), 1) if lag_ms else None,
            "lag_growth_ms_p50": round(percentile(lag_ms, 50), 1) if lag_ms else None,
            "viewers_behind": behind,
            "device_frames_sent": total_expected,
            # what the gateway handed to aiortc's senders (GET /api/v1/previews frames_sent):
            # fewer than the device sent = dropped in the gateway (a lagging viewer skips to
            # the next key frame); as many = any loss is between the sender and the client
            "gateway_frames_handed_min": min(handed) if handed else None,
            "udp_errors": {k: udp1[k] - udp0[k] for k in udp1},
            "load_average_1m": round(os.getloadavg()[0], 2),
            "gateway_cpu_pct": round(gw_cpu, 1),
            "cpu_pct_per_preview": round(gw_cpu / viewers, 3) if viewers else None,
            "gateway_rss_mb": round(self.gw.rss() / 2**20, 1),
            # the gateway's CPU time over the RTP packets its senders made from the frames
            # it handed them (aiortc's packetizer cuts this clip's frames into
            # ``rtp_packets_per_frame`` packets on average)
            "gateway_us_per_rtp_packet": (
                round(gw_cpu / 100 * wall / (sum(handed) * self.packets_per_frame) * 1e6, 1)
                if handed and sum(handed)
                else None
            ),
            "clients_cpu_pct": round(cl_cpu, 1),
            "driver_nvr_cpu_pct": round(me_cpu, 1),
            "machine_cpu_pct": machine,
            "ok": counted == viewers and not any(missing) and behind == 0,
        }

    async def handed(self) -> dict[str, int]:
        """Frames the gateway handed to each preview's sender so far, by session id."""
        assert self.gw is not None
        out: dict[str, int] = {}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=self.gw.url, headers=headers, timeout=30) as http:
            offset = 0
            while True:
                got = await http.get("/api/v1/previews", params={"offset": offset, "limit": 500})
                if got.status_code != 200:
                    return out
                items = got.json().get("items", [])
                out.update((i["id"], int(i.get("frames_sent", 0))) for i in items)
                if len(items) < 500:
                    return out
                offset += 500

    # -- 3. profile ---------------------------------------------------------------------------
    async def profile(self, previews: int) -> dict[str, Any]:
        prof = self.workdir / "gateway.prof"
        await self.start(profile=prof)
        assert self.gw is not None
        clients = [
            await Child.start(self.gw.url, count_only=True) for _ in range(self.args.clients)
        ]
        self.children += clients
        chans = [self.channel(1)] * previews
        await asyncio.gather(
            *(
                c.ask({"op": "open", "channels": chans[k :: len(clients)]}, timeout=600)
                for k, c in enumerate(clients)
            )
        )
        await asyncio.sleep(self.args.settle)
        assert self.gw.proc is not None
        self.gw.proc.send_signal(signal.SIGUSR1)
        step = await self.window(clients, previews)
        self.gw.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not prof.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        await self.stop()
        return {"previews": previews, "step_under_cprofile": step, **summarise(prof)}


PARTS = (  # (part, substrings of "file:function"), first match wins
    ("srtp", ("pylibsrtp", "srtp")),
    ("aiortc_packetize_h264", ("aiortc/codecs/h264",)),
    ("aiortc_rtp_sender", ("rtcrtpsender",)),
    ("aiortc_rtp_packet", ("aiortc/rtp.py",)),
    ("dtls_transport", ("rtcdtlstransport", "OpenSSL", "cryptography")),
    ("aioice_send_incl_uvloop_sendto", ("aioice",)),  # Cython sendto is not seen apart
    ("socket_send", ("sendto", "send_to", "_sock_send")),
    ("gateway_preview_feed", ("gateway/preview",)),
    ("gateway_media_depacketise", ("gateway/media",)),
    ("gateway_http_whep", ("gateway/api", "starlette", "fastapi", "uvicorn", "h11", "httptools")),
    ("aiortc_other", ("aiortc",)),
    ("asyncio_loop", ("asyncio", "uvloop", "<built-in method select", "selectors")),
)


def summarise(path: Path) -> dict[str, Any]:
    """The gateway's main thread by part (own time) and per RTP packet sent."""
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    total = 0.0
    packets = 0
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, _ct, _callers) in raw.items():
        key = f"{file}:{func}"
        total += tottime
        part = next((p for p, keys in PARTS if any(k in key for k in keys)), "other")
        parts[part] = parts.get(part, 0.0) + tottime
        if file.endswith("aiortc/rtp.py") and func == "serialize":
            packets += ncalls
        where = "/".join(Path(file).parts[-2:])
        rows.append((tottime, ncalls, f"{where}:{line}:{func}"))
    rows.sort(reverse=True)
    per_packet = (
        {p: round(t / packets * 1e6, 2) for p, t in sorted(parts.items(), key=lambda x: -x[1])}
        if packets
        else {}
    )
    return {
        "profile_total_s": round(total, 1),
        "rtp_packets_serialized": packets,
        "by_part_s": {p: round(t, 2) for p, t in sorted(parts.items(), key=lambda x: -x[1])},
        "by_part_us_per_packet": per_packet,
        "top_functions": [
            {"tottime_s": round(t, 2), "calls": n, "where": w} for t, n, w in rows[:25]
        ],
    }


async def phase(work: Awaitable[dict[str, Any]], **known: Any) -> dict[str, Any]:
    """A part of the bench; one that fails is reported as such and the bench goes on."""
    try:
        return await work
    except (RuntimeError, OSError, TimeoutError, KeyError, ValueError) as exc:
        log(f"failed: {type(exc).__name__}: {exc}")
        return {**known, "error": f"{type(exc).__name__}: {exc}"}


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-preview-"))
    bench = Bench(args, workdir)
    result: dict[str, Any] = {
        "bench": "preview",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "clip": {
            "size": "1280x720",
            "fps": FPS,
            "gop_frames": args.gop,
            "frames_looped": len(bench.clip),
            "h264_kbps": round(clip_kbps(bench.clip, FPS), 1),
            "avg_frame_bytes": round(sum(len(f.data) for f in bench.clip) / len(bench.clip)),
            "key_frame_bytes": max(len(f.data) for f in bench.clip if f.key),
            "rtp_packets_per_frame": round(bench.packets_per_frame, 2),
        },
        "client_processes": args.clients,
    }
    try:
        await bench.start()
        log("first frame: warm and cold tries")
        result["first_frame"] = await phase(bench.first_frame())
        result["capacity"] = []
        for child in bench.children:
            await child.stop()
        bench.children = []
        for layout in ("1xN", "N/4x4"):
            result["capacity"].append(await phase(bench.capacity(layout), layout=layout))
        nvr = bench.nvr
        assert nvr is not None
        kbps = [
            s.sender.bytes_sent * 8 / (s.sender.frames_sent / FPS) / 1000
            for s in nvr.media_sessions.values()
            if s.sender is not None and s.sender.frames_sent >= 2 * FPS
        ]
        if kbps:
            result["clip"]["ps_rtp_kbps_sent"] = round(statistics.mean(kbps), 1)
    finally:
        await bench.stop()
    if args.profile:
        try:
            result["profile"] = await phase(bench.profile(args.profile))
        finally:
            await bench.stop()
    result["sustained"] = {c["layout"]: c.get("sustained", 0) for c in result.get("capacity", [])}
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run: small steps, 5 tries")
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds per capacity step")
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4, help="count-only client processes")
    parser.add_argument("--gop", type=int, default=50, help="the clip's key-frame interval")
    parser.add_argument("--kbps", type=int, default=1000, help="the clip's H.264 bitrate")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    parser.add_argument("--budget", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep the gateway's logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.tries = min(args.tries, 5)
        args.hold = min(args.hold, 5.0)
        args.settle = min(args.settle, 2.0)
        args.steps = args.steps or [10, 25]
        args.clients = min(args.clients, 2)
    args.steps = args.steps or [25, 50, 100, 125, 150, 200]
    signal.signal(signal.SIGTERM, _terminated)
    # The simulated NVR's SIP endpoint logs through structlog: to stderr, warnings only.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    result = asyncio.run(drive(args))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
