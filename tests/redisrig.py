"""A real ``redis-server`` for the tests, started on a free loopback port in a folder of the
test's own (issue 18: no mocks of Redis).

``make test`` installs Debian's ``redis-server`` when it is missing. The server keeps an
append-only file fsynced on every write (``appendfsync always``), so killing it with SIGKILL
loses nothing it acknowledged, as the outage tests require; :meth:`RedisServer.kill` and
:meth:`RedisServer.start` stop and bring it back on the same port and data, and
:meth:`RedisServer.wipe` restarts it empty.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` is what ``[store] url`` takes."""

    def __init__(self, folder: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.folder = folder
        self.host = host
        self.port = port or free_port(host)
        # A port picked here may be taken by another test worker before redis-server binds it:
        # the first start then tries another one (a restart keeps its port, as a crash would).
        self._pick_port = port is None
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if not self._pick_port:
            return self._start(timeout)
        self._pick_port = False
        for _ in range(4):
            try:
                return self._start(timeout)
            except RuntimeError as exc:
                if "Address already in use" not in str(exc):
                    raise
                self.port = free_port(self.host)
        return self._start(timeout)

    def _start(self, timeout: float) -> RedisServer:
        assert self.proc is None, "already running"
        args = [
            REDIS_SERVER,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        logfile = self.folder / "redis.log"
        logged = len(logfile.read_text(errors="replace")) if logfile.exists() else 0
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                log = logfile.read_text(errors="replace")[logged:][-2000:]
                raise RuntimeError(f"redis-server exited with {code}: {log}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on {self.url} in {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: what an outage or a crash looks like to the gateway."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def wipe(self) -> None:
        """Restart empty (its data files removed), as after losing the Redis machine."""
        self.kill()
        for entry in self.folder.iterdir():
            if entry.name != "redis.log":
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    os.unlink(entry)
        self.start()
