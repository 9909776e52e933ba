"""The console command: --help, config errors, ``devices`` while the gateway runs, ``run``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.peers.device import SimDevice
from gateway.cli import main
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer
from tests.conftest import make_config, sim


def test_help_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "devices" in capsys.readouterr().out
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sip]\nport = "x"\n')
    assert main(["devices", "--config", str(cfg)]) == 2
    assert "sip.port" in capsys.readouterr().err


async def test_devices_lists_the_store_while_the_gateway_runs(
    tmp_path: Path, start_gateway, device_endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = await start_gateway(make_config(tmp_path))
    assert (await sim(device_endpoint, gw, "34020000001320000001").register()).status == 200
    await gw.store.flush()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "gw.db"}"\n')
    assert main(["devices", "--config", str(cfg), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1
    row = rows[0]
    assert row["device_id"] == "34020000001320000001"
    assert row["online"] is True
    assert row["transport"] == "udp"
    assert row["address"] == f"127.0.0.1:{device_endpoint.port}"
    assert 3500 < row["expires_in"] <= 3600
    assert main(["devices", "--config", str(cfg)]) == 0
    table = capsys.readouterr().out
    assert "34020000001320000001  online" in table and "1 devices, 1 online" in table


def _free_port() -> int:
    """A port free for both UDP and TCP (the gateway listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


async def test_run_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(
        f'[sip]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[store]\npath = "{tmp_path / "gw.db"}"\n[log]\nformat = "json"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "run",
        "--config",
        str(cfg),
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ep = Endpoint(metrics=Metrics())
    await ep.start("127.0.0.1", 0)
    try:
        assert proc.stderr is not None
        seen: list[bytes] = []
        line = b""
        while b"gateway.started" not in line:
            # Generous: a new interpreter importing the gateway on a loaded machine (the other
            # tests of a parallel run) has taken over 10 s to start.
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            # At the end of its output the gateway has exited: say why, do not read on forever.
            assert line, "the gateway exited before it started: " + b"".join(seen)[-2000:].decode()
            seen.append(line)
        assert json.loads(line)["port"] == port
        dev = SimDevice(ep, "34020000001320000009", Peer("udp", "127.0.0.1", port))
        assert (await dev.register()).status == 200
    finally:
        await ep.close()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "devices", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    assert [r["device_id"] for r in rows] == ["34020000001320000009"]
