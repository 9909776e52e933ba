"""Registration and keepalive load from SIPp, a real third-party SIP stack (GB/T 28181-2022 §9.1,
§9.6; reference §2).

500 devices, one per SIPp call, each REGISTER → 401 → REGISTER with digest → 200 → keepalive
MESSAGE → 200, over UDP (one socket for every device) and over TCP (one connection per device).
The gateway runs in-process on the test's event loop; SIPp is an asyncio subprocess so the loop
keeps serving while SIPp runs. SIPp's files (injection CSV, statistics, logs) go to ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import wait_for

SIPP = shutil.which("sipp")
SCENARIO = Path(__file__).parent / "sipp" / "register_keepalive.xml"
SERVER_URI_FOR_DIGEST = "34020000002000000001@3402000000"  # SIPp writes sip: in front
DEVICES = 500

pytestmark = [
    pytest.mark.sipp,
    # 500 devices at once: a loop late by 0.25 s sheds REGISTERs with 503, which SIPp takes as
    # failed calls, so the storms run on a machine no other test of the run is loading.
    pytest.mark.serial,
    pytest.mark.skipif(
        SIPP is None,
        reason="sipp not installed (Debian package sip-tester; `make test-deps` installs it)",
    ),
]

# SIPp plays registration and keepalive only: it cannot answer the queries a sync sends.
NO_MANSCDP = {"sync_on_register": False, "catalog_subscription": False}


def device_ids(count: int, first: int = 1) -> list[str]:
    """Distinct 20-digit IPC IDs in domain 3402000000 (type code 132)."""
    return [f"3402000000132{n:07d}" for n in range(first, first + count)]


def write_injection_csv(path: Path, ids: list[str]) -> None:
    """SIPp injection file: one device per line, used in order, ``[field0]`` = device ID."""
    path.write_text("SEQUENTIAL\n" + "".join(f"{i};\n" for i in ids), encoding="ascii")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SippRun:
    returncode: int
    stats: dict[str, str]
    workdir: Path

    @property
    def successful(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", "-1"))

    @property
    def failed(self) -> int:
        return int(self.stats.get("FailedCall(C)", "-1"))

    def explain(self) -> str:
        """What to look at when an assertion fails."""
        parts = [f"sipp exit {self.returncode}, successful {self.successful}, failed {self.failed}"]
        for pattern in ("*_errors.log", "*_screen.log", "sipp.stderr"):
            for f in sorted(self.workdir.glob(pattern)):
                parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def last_stats(path: Path) -> dict[str, str]:
    """The last row of SIPp's ``-trace_stat`` file (cumulative counters end in ``(C)``)."""
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


async def run_sipp(
    workdir: Path, gw_port: int, transport: str, ids: list[str], rate: int = 200
) -> SippRun:
    assert SIPP is not None
    inf = workdir / "devices.csv"
    write_injection_csv(inf, ids)
    stat = workdir / "stat.csv"
    local_port = free_port(socket.SOCK_DGRAM if transport.startswith("u") else socket.SOCK_STREAM)
    args = [
        SIPP,
        f"127.0.0.1:{gw_port}",
        "-sf",
        str(SCENARIO),
        "-inf",
        str(inf),
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(local_port),
        "-auth_uri",
        SERVER_URI_FOR_DIGEST,
        "-m",
        str(len(ids)),
        "-r",
        str(rate),
        "-l",
        str(len(ids)),
        "-recv_timeout",
        "10000",
        "-timeout",
        "60s",
        "-timeout_error",
        # SIPp's default (50000 sockets) is refused when it exceeds `ulimit -n`; -t tn needs
        # one per call.
        "-max_socket",
        str(len(ids) + 100),
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stat),
        "-trace_err",
        "-trace_screen",
    ]
    with (workdir / "sipp.stdout").open("wb") as out, (workdir / "sipp.stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *args, cwd=workdir, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err
        )
        try:
            returncode = await asyncio.wait_for(proc.wait(), timeout=75)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("sipp ran past its own -timeout; killed") from None
    return SippRun(returncode, last_stats(stat), workdir)


@pytest.mark.timeout(90)
async def test_500_devices_register_and_keepalive_over_udp(start_gateway, tmp_path: Path) -> None:
    gw = await start_gateway(downlink=NO_MANSCDP)
    ids = device_ids(DEVICES)
    run = await run_sipp(tmp_path, gw.port, "u1", ids)

    assert run.returncode == 0, run.explain()
    assert run.successful == DEVICES and run.failed == 0, run.explain()
    registrar = gw.registrar
    assert registrar is not None
    assert set(registrar.devices) == set(ids)
    assert all(d.online and d.transport == "udp" for d in registrar.devices.values())
    # One SIPp socket plays every device, so every device has the same recorded address.
    assert len({(d.host, d.port) for d in registrar.devices.values()}) == 1
    assert registrar.online_count() == DEVICES
    m = gw.metrics
    assert m.get("register.ok") == DEVICES
    assert m.get("register.challenged") == DEVICES
    assert m.get("keepalive.ok") == DEVICES
    assert m.get("keepalive.unregistered") == 0
    assert m.get("keepalive.address_mismatch") == 0
    assert m.get("sip.rx.parse_error") == 0


@pytest.mark.timeout(90)
async def test_500_devices_register_and_keepalive_over_tcp(start_gateway, tmp_path: Path) -> None:
    gw = await start_gateway(downlink=NO_MANSCDP)
    ids = device_ids(DEVICES, first=100_001)
    run = await run_sipp(tmp_path, gw.port, "tn", ids)

    assert run.returncode == 0, run.explain()
    assert run.successful == DEVICES and run.failed == 0, run.explain()
    registrar = gw.registrar
    assert registrar is not None
    assert set(registrar.devices) == set(ids)
    assert all(d.transport == "tcp" for d in registrar.devices.values())
    # One connection per device: 500 distinct source addresses.
    assert len({(d.host, d.port) for d in registrar.devices.values()}) == DEVICES
    m = gw.metrics
    assert m.get("register.ok") == DEVICES
    assert m.get("register.challenged") == DEVICES
    assert m.get("keepalive.ok") == DEVICES
    assert m.get("keepalive.address_mismatch") == 0
    assert m.get("sip.tcp.accepted") == DEVICES
    assert m.get("sip.tcp.refused_limit") == 0
    # SIPp has closed every connection by now; a device whose TCP connection drops is offline
    # (GB/T 28181-2022 §9.1 with TCP, reference §2.7).
    await wait_for(
        lambda: registrar.online_count() == 0,
        timeout=10,
        what="every TCP device offline after SIPp closed its connections",
    )
    assert not any(d.online for d in registrar.devices.values())
    assert m.get("device.offline") == DEVICES
