"""A gateway in a process of its own, started as an operator starts it
(``python -m gateway.cli run --config FILE``), its log read line by line as it comes: for the
tests of what the gateway writes to its log as a whole, and of how it stops on a signal."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def toml_text(data: dict[str, Any]) -> str:
    """The few TOML shapes a gateway config needs: sections of scalars, arrays of tables."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v))

    out: list[str] = []
    for section, values in data.items():
        tables = {k: v for k, v in values.items() if isinstance(v, list)}
        out.append(f"[{section}]")
        out += [f"{k} = {scalar(v)}" for k, v in values.items() if k not in tables]
        for key, rows in tables.items():
            for row in rows:
                out.append(f"[[{section}.{key}]]")
                out += [f"{k} = {scalar(v)}" for k, v in row.items()]
    return "\n".join(out) + "\n"


class GatewayProcess:
    """``gb28181-gateway run`` in a subprocess with JSON logs on stderr, all of them kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.raw: list[bytes] = []
        self.events: list[dict[str, Any]] = []
        self.port = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(
        cls, tmp_path: Path, timeout: float = 20.0, **sections: dict[str, Any]
    ) -> GatewayProcess:
        data: dict[str, Any] = {
            "sip": {"host": "127.0.0.1", "port": 0},
            "store": {"backend": "memory"},
            "log": {"level": "info", "format": "json"},
            "http": {"port": 0},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        config = tmp_path / "gateway.toml"
        config.write_text(toml_text(data), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "run",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=str(tmp_path),
            # A process group of its own (with its relay workers): a test may signal the group
            # as a terminal's Ctrl-C or a service manager does, without touching pytest.
            start_new_session=True,
        )
        gw = cls(proc)
        started = await gw.wait_event("gateway.started", timeout)
        gw.port = int(started["port"])
        return gw

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.raw.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)

    async def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("event") == name:
                    return event
            if self._reader.done() or time.monotonic() > deadline:
                raise AssertionError(f"no {name} in the gateway's log:\n{self.text}")
            await asyncio.sleep(0.02)

    async def stop(
        self, sig: int = signal.SIGTERM, timeout: float = 30.0, *, group: bool = False
    ) -> int:
        """Send ``sig`` (to the whole process group with ``group``) and wait for the process to
        end and its output to be read."""
        if self.proc.returncode is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the gateway did not stop in {timeout} s:\n{self.text}") from None
        await self._reader
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill(self) -> None:
        """Make sure the gateway and its workers are gone (after a failed test)."""
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._reader.cancel()

    @property
    def text(self) -> str:
        return b"".join(self.raw).decode("utf-8", "replace")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]
