"""The container image (Dockerfile, deploy/image/) and the compose example (compose.yaml,
deploy/compose/).

The ``image`` tests build the image here as an operator without a registry or an engine
does (``deploy/image/build.sh``: a debootstrapped Debian bookworm base, then ``buildah bud
--isolation chroot``), run the gateway from it (``deploy/image/run.py``: ``buildah run`` as
the image's user, in the host's network, on loopback ports) and check that it answers SIP and
HTTP, runs as the non-root user and keeps its data in the volume. They are skipped, with the
reason, where buildah or debootstrap cannot run (not root, not installed, Debian's archive
unreachable while no base is cached). ``make test-image`` runs them alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import load_config
from tests.gateway_process import toml_text

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "deploy" / "image"
IMAGE = "localhost/gb28181-gateway:test"
BASE = "localhost/gb28181-base:bookworm"
USER_ID = 10001
VOLUME = "/var/lib/gb28181"

# A cold build (debootstrap, then every dependency from the package index) takes minutes.
BUILD_TIMEOUT = 1500


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _why_not() -> str | None:
    """Why the image cannot be built here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root (buildah's chroot isolation and debootstrap)"
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install buildah debootstrap)"
    info = _run("buildah", "info")
    if info.returncode != 0:
        return f"buildah cannot run here: {info.stderr.strip()[:300]}"
    if _run("buildah", "inspect", "--type", "image", BASE).returncode == 0:
        return None
    mirror = _run("sh", str(IMAGE_DIR / "base.sh"), "--print-mirror").stdout.strip()
    try:
        with urllib.request.urlopen(f"{mirror}/dists/bookworm/Release", timeout=15) as resp:
            resp.read(64)
    except (OSError, ValueError) as exc:
        return f"Debian's archive ({mirror}) is not reachable and no base is cached: {exc}"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built by deploy/image/build.sh (the base is made once and kept)."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("image") / "build.log"
    with log.open("w") as out:
        build = subprocess.run(
            ["sh", str(IMAGE_DIR / "build.sh")],
            env={**os.environ, "GB_IMAGE": IMAGE, "GB_BASE_IMAGE": BASE},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    if build.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"the image did not build (exit {build.returncode}):\n{tail}")
    return IMAGE


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free for both UDP and TCP."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        held: list[socket.socket] = []
        try:
            for port in range(first, first + count):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = socket.socket(socket.AF_INET, kind)
                    held.append(s)
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        return first
    raise RuntimeError("no free ports")


def _sip_request(port: int, method: str, extra: str = "") -> tuple[str, str]:
    """Send one request over UDP (RFC 3261 §17.1.2.2: resent on T1 doubling) and return the
    final response's status line and its text; (``""``, ``""``) when none came."""
    call_id = uuid.uuid4().hex
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        me = sock.getsockname()[1]
        target = "sip:34020000002000000001@3402000000"
        if method == "REGISTER":
            target = "sip:3402000000"
        msg = (
            f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch={branch}\r\n"
            f"From: <sip:34020000001320000001@3402000000>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:34020000001320000001@3402000000>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"Contact: <sip:34020000001320000001@127.0.0.1:{me}>\r\n"
            f"Max-Forwards: 70\r\n{extra}"
            f"Content-Length: 0\r\n\r\n"
        ).encode()
        wait = 0.5
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            sock.sendto(msg, ("127.0.0.1", port))
            sock.settimeout(wait)
            try:
                while True:
                    data = sock.recv(65535).decode("utf-8", "replace")
                    status = data.split("\r\n", 1)[0]
                    if f"Call-ID: {call_id}" in data and not status.startswith("SIP/2.0 1"):
                        return status, data
            except TimeoutError:
                wait = min(wait * 2, 4.0)
    return "", ""


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _wait_for(predicate: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)


def _log_events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _started(log: Path) -> bool:
    return any(e.get("event") == "gateway.started" for e in _log_events(log))


def _containers() -> set[str]:
    out = _run("buildah", "containers", "--format", "{{.ContainerName}}").stdout
    return set(out.split())


@pytest.fixture
def runner(image: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The gateway run from the image by deploy/image/run.py on loopback ports, with the
    image's own configuration (deploy/image/gateway.toml) but for its addresses and ports."""
    sip_port = _free_ports(1)
    http_port = _free_ports(1)
    media_min = _free_ports(10)
    shipped = tomllib.loads((IMAGE_DIR / "gateway.toml").read_text(encoding="utf-8"))
    shipped["sip"].update(host="127.0.0.1", port=sip_port)
    shipped["http"].update(host="127.0.0.1", port=http_port)
    shipped["media"].update(host="127.0.0.1", port_min=media_min, port_max=media_min + 9)
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(shipped), encoding="utf-8")
    config.chmod(0o644)
    volume = tmp_path / "volume"
    log = tmp_path / "gateway.log"
    pidfile = tmp_path / "gateway.pid"
    name = f"gb28181-test-{uuid.uuid4().hex[:10]}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(IMAGE_DIR / "run.py"),
                "--image",
                image,
                "--name",
                name,
                "--data",
                str(volume),
                "--config",
                str(config),
                "--pidfile",
                str(pidfile),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rig = {
        "proc": proc,
        "name": name,
        "config": config,
        "volume": volume,
        "log": log,
        "pidfile": pidfile,
        "sip_port": sip_port,
        "http_port": http_port,
    }
    try:
        _wait_for(
            lambda: _started(log) or proc.poll() is not None,
            120,
            "the gateway did not start in the container",
            log,
        )
        assert proc.poll() is None, f"run.py ended:\n{log.read_text(errors='replace')}"
        _wait_for(pidfile.exists, 30, "run.py wrote no PID", log)
        rig["pid"] = int(pidfile.read_text())
        yield rig
    finally:
        # Only what this fixture started: run.py (it forwards SIGTERM to the gateway); if it
        # does not end, run.py's process group and the gateway by its PID (buildah run, in a
        # session of its own, ends with the gateway).
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                if "pid" in rig:
                    try:
                        os.kill(rig["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait(30)
        if name in _containers():
            _run("buildah", "rm", name)


@pytest.mark.image
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_image_runs_the_gateway_as_its_user_with_its_data_in_the_volume(
    runner: dict[str, Any],
) -> None:
    pid: int = runner["pid"]
    log: Path = runner["log"]

    # Signalling: OPTIONS is answered by the SIP core (405 with Allow: the gateway takes no
    # OPTIONS, RFC 3261 §8.2.1), a REGISTER without credentials is challenged (§22.4).
    status, text = _sip_request(runner["sip_port"], "OPTIONS")
    assert status in ("SIP/2.0 200 OK", "SIP/2.0 405 Method Not Allowed"), (status, text)
    if status.startswith("SIP/2.0 405"):
        assert "REGISTER" in next(
            line for line in text.split("\r\n") if line.lower().startswith("allow:")
        )
    status, text = _sip_request(runner["sip_port"], "REGISTER", "Expires: 3600\r\n")
    assert status == "SIP/2.0 401 Unauthorized", (status, text)
    assert "WWW-Authenticate: Digest" in text

    # HTTP: /healthz and /readyz, and the image's HEALTHCHECK command run in the container.
    base = f"http://127.0.0.1:{runner['http_port']}"
    assert _get(f"{base}/healthz") == (200, {"status": "ok"})
    ready, body = _get(f"{base}/readyz")
    assert ready == 200, body
    check = _run(
        "buildah",
        "run",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "-v",
        f"{runner['config']}:/etc/gb28181/gateway.toml:ro",
        runner["name"],
        "--",
        "/opt/venv/bin/python",
        "/usr/local/lib/gb28181/healthcheck.py",
    )
    assert check.returncode == 0, check.stderr

    # The process: the image's user (not root) in the container's root, working in the volume.
    status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    uids = next(line for line in status_lines if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status_lines if line.startswith("Gid:")).split()[1:]
    assert uids == [str(USER_ID)] * 4 and gids == [str(USER_ID)] * 4
    # The process's root (buildah's chroot, in a mount namespace of its own) is not the host's.
    assert os.readlink(f"/proc/{pid}/root") != "/"
    passwd = Path(f"/proc/{pid}/root/etc/passwd").read_text().splitlines()
    assert f"gateway:x:{USER_ID}:{USER_ID}:" in "\n".join(passwd)
    assert os.readlink(f"/proc/{pid}/cwd").endswith(VOLUME)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"/opt/venv/bin/gb28181-gateway" in cmdline and b"run" in cmdline

    # The data: the store is in the volume (the host folder), owned by the image's user.
    volume: Path = runner["volume"]
    db = volume / "gateway.db"
    mounts = [m for m in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if VOLUME in m]
    assert db.exists(), (sorted(p.name for p in volume.iterdir()), mounts)
    assert db.stat().st_uid == USER_ID and volume.stat().st_uid == USER_ID
    assert {p.name for p in volume.iterdir()} <= {
        "gateway.db",
        "gateway.db-wal",
        "gateway.db-shm",
    }

    # SIGTERM to the runner reaches the gateway, which stops cleanly; the container goes.
    proc: subprocess.Popen[bytes] = runner["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text(errors="replace")[-4000:]
    assert any(e.get("event") == "gateway.stopped" for e in _log_events(log))
    assert not Path(f"/proc/{pid}").exists()
    assert runner["name"] not in _containers()
    # What the gateway kept outlives the container, in the volume's folder.
    assert db.exists() and db.stat().st_size > 0


@pytest.mark.image
@pytest.mark.timeout(BUILD_TIMEOUT + 120)
def test_the_image_declares_its_user_ports_volume_entrypoint_and_healthcheck(
    image: str,
) -> None:
    info = json.loads(_run("buildah", "inspect", "--type", "image", image).stdout)
    config = info["Docker"]["config"]
    assert config["User"] == "gateway:gateway"
    assert set(config["ExposedPorts"]) == {
        "5060/udp",
        "5060/tcp",
        "8080/tcp",
        "30000-39999/udp",
        "30000-39999/tcp",
    }
    assert set(config["Volumes"]) == {VOLUME}
    assert config["WorkingDir"] == VOLUME
    assert config["Entrypoint"] == ["gb28181-gateway", "run"]
    assert config["Cmd"] == ["--config", "/etc/gb28181/gateway.toml"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "/opt/venv/bin" in next(e for e in config["Env"] if e.startswith("PATH="))


def test_the_exposed_ports_are_the_shipped_configuration_s() -> None:
    """The Dockerfile's EXPOSE names the ports deploy/image/gateway.toml listens on."""
    config = load_config(IMAGE_DIR / "gateway.toml")
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    expose = next(line for line in dockerfile.splitlines() if line.startswith("EXPOSE "))
    ports = set(expose.split()[1:])
    media = f"{config.media.port_min}-{config.media.port_max}"
    assert {
        f"{config.sip.port}/udp",
        f"{config.sip.port}/tcp",
        f"{config.http.port}/tcp",
        f"{media}/udp",
        f"{media}/tcp",
    } == ports
    assert config.sip.host == config.http.host == "0.0.0.0"
    assert config.store.backend == "sqlite"
    assert config.store.path.startswith(VOLUME + "/")
    assert f'VOLUME ["{VOLUME}"]' in dockerfile
    assert "ARG BASE=python:3.11-slim" in dockerfile


def test_the_healthcheck_reads_the_config_pid_1_runs_with() -> None:
    spec = importlib.util.spec_from_file_location("healthcheck", IMAGE_DIR / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = ["/opt/venv/bin/python3", "/opt/venv/bin/gb28181-gateway", "run"]
    assert module.config_path([*run, "--config", "/etc/x.toml"]) == "/etc/x.toml"
    assert module.config_path([*run, "--config=/etc/y.toml"]) == "/etc/y.toml"
    assert module.config_path(run) == "/etc/gb28181/gateway.toml"


def test_the_compose_nodes_share_redis_and_differ_in_node_id_and_ports() -> None:
    configs = [load_config(p) for p in sorted((ROOT / "deploy" / "compose").glob("*.toml"))]
    assert len(configs) == 2
    assert {c.store.backend for c in configs} == {"redis"}
    assert len({(c.store.url, c.store.prefix) for c in configs}) == 1
    assert len({c.gateway.id for c in configs}) == 1  # one lower platform to the uppers
    assert len({c.cluster.node_id for c in configs}) == 2
    assert len({c.sip.port for c in configs}) == 2
    assert len({c.http.port for c in configs}) == 2
    first, second = sorted(configs, key=lambda c: c.media.port_min)
    assert first.media.port_max < second.media.port_min


def test_compose_yaml_names_redis_two_nodes_their_configs_and_volumes() -> None:
    """compose.yaml's syntax and shape (it cannot be run here: no container engine)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in this environment")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"redis", "gateway-1", "gateway-2"}
    assert "redis-server" in services["redis"]["command"]
    for name in ("gateway-1", "gateway-2"):
        service = services[name]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        config = ROOT / mounts["/etc/gb28181/gateway.toml"]
        assert config.exists()
        node = load_config(config)
        assert node.store.url.startswith("redis://redis:")
        assert mounts[VOLUME] in compose["volumes"]
        published = {p.rsplit(":", 1)[1] for p in service["ports"]}
        assert f"{node.sip.port}/udp" in published and f"{node.sip.port}/tcp" in published
        assert f"{node.http.port}/tcp" in published
        assert f"{node.media.port_min}-{node.media.port_max}/udp" in published
