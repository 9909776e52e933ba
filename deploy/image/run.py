#!/usr/bin/env python3
"""Runs the gateway's image where no container engine is: ``buildah from`` the image, then
``buildah run --isolation chroot`` its entrypoint and command as the image's user, in its
working directory, with its environment, in the host's network (so the ports the
configuration names are the host's), a host folder bind-mounted on the image's volume, and
the container removed when the gateway ends. Needs root and buildah.

    deploy/image/run.py --data ./data-image --config gateway.toml
    deploy/image/run.py --data ./data-image -- --config /etc/gb28181/gateway.toml

SIGTERM or SIGINT to this script reaches the gateway as SIGTERM (it then stops cleanly); the
script exits with the gateway's status. ``--pidfile`` names a file that gets the gateway's PID
(as the host sees it) once it runs. A ``--data`` folder that is empty (or new) is given to the
image's user, as an engine's named volume would be.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = "localhost/gb28181-gateway:latest"
CONFIG_PATH = "/etc/gb28181/gateway.toml"


def buildah(*args: str) -> str:
    return subprocess.run(
        ["buildah", *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout.strip()


def image_config(container: str) -> dict[str, object]:
    """The container's config (Docker's form: it keeps the HEALTHCHECK; else the OCI one)."""
    data = json.loads(buildah("inspect", "--type", "container", container))
    docker = (data.get("Docker") or {}).get("config") or {}
    oci = (data.get("OCIv1") or {}).get("config") or {}
    return {
        "Entrypoint": docker.get("Entrypoint") or oci.get("Entrypoint") or [],
        "Cmd": docker.get("Cmd") or oci.get("Cmd") or [],
        "User": docker.get("User") or oci.get("User") or "",
        "Volumes": sorted((docker.get("Volumes") or oci.get("Volumes") or {}).keys()),
    }


def user_ids(rootfs: Path, user: str) -> tuple[int, int]:
    """uid and gid of ``user[:group]`` (names or numbers) in the image's /etc/passwd, group."""
    name, _, group = user.partition(":")

    def lookup(path: Path, key: str, field: int) -> int:
        if key.isdigit():
            return int(key)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split(":")
            if parts[0] == key:
                return int(parts[field])
        raise SystemExit(f"run: no {key!r} in the image's {path.name}")

    uid = lookup(rootfs / "etc/passwd", name or "root", 2)
    if group:
        gid = lookup(rootfs / "etc/group", group, 2)
    elif name.isdigit():
        gid = uid
    else:
        gid = lookup(rootfs / "etc/passwd", name or "root", 3)
    return uid, gid


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The name may hold spaces and parentheses: the fields start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


def entrypoint_pid(root_pid: int, command: list[str]) -> int | None:
    """The image's entrypoint as the host sees it: the process below ``root_pid`` that
    buildah's exec helper (``buildah-chroot-exec``) started and that runs ``command`` (a
    script's interpreter may come first). ``None`` until it runs."""
    tail = [a.encode() for a in command[1:]]
    tree = _children()
    todo = [(root_pid, b"")]
    while todo:
        pid, parent = todo.pop(0)
        try:
            argv = _argv(pid) if pid != root_pid else [b"buildah"]
        except OSError:
            continue
        name = os.path.basename(argv[0]) if argv else b""
        if (
            parent == b"buildah-chroot-exec"
            and not name.startswith(b"buildah")
            and argv[len(argv) - len(tail) :] == tail
        ):
            return pid
        todo += [(child, name) for child in tree.get(pid, [])]
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", default=os.environ.get("GB_IMAGE", IMAGE))
    p.add_argument("--name", default="", help="the container's name (default: buildah's)")
    p.add_argument(
        "--data", metavar="DIR", help="host folder for the image's volume (default: a new one)"
    )
    p.add_argument("--config", metavar="FILE", help=f"host TOML mounted read-only at {CONFIG_PATH}")
    p.add_argument("--pidfile", metavar="FILE", help="write the gateway's PID here")
    p.add_argument("--keep", action="store_true", help="keep the container afterwards")
    p.add_argument("args", nargs="*", help="arguments instead of the image's CMD (after --)")
    opts = p.parse_args(argv)

    from_args = ["from", "--pull-never", "--quiet"]
    if opts.name:
        from_args += ["--name", opts.name]
    container = buildah(*from_args, opts.image)
    try:
        config = image_config(container)
        mounts: list[str] = []
        volumes = [str(v) for v in config["Volumes"]]  # type: ignore[attr-defined]
        # buildah run would also mount a fresh copy of each declared volume at its path, and
        # which of that copy and the -v bind below ends on top is not fixed: the working
        # container (not the image) forgets its volumes, so only the bind is there.
        for volume in volumes:
            buildah("config", "--volume", f"{volume}-", container)
        if volumes:
            data = Path(opts.data) if opts.data else Path(tempfile.mkdtemp(prefix="gb28181-vol."))
            data.mkdir(parents=True, exist_ok=True)
            if not any(data.iterdir()):
                rootfs = Path(buildah("mount", container))
                try:
                    uid, gid = user_ids(rootfs, str(config["User"]))
                finally:
                    buildah("umount", container)
                os.chown(data, uid, gid)
            mounts += ["-v", f"{data.resolve()}:{volumes[0]}"]
            print(f"run: volume {volumes[0]} is {data.resolve()}", file=sys.stderr)
        if opts.config:
            mounts += ["-v", f"{Path(opts.config).resolve()}:{CONFIG_PATH}:ro"]
        command = [*config["Entrypoint"], *(opts.args or config["Cmd"])]  # type: ignore[misc]
        proc = subprocess.Popen(
            [
                "buildah",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                *mounts,
                container,
                "--",
                *command,
            ],
            # A terminal's Ctrl-C reaches this script alone, which stops the gateway cleanly
            # (buildah itself would kill it).
            start_new_session=True,
        )

        stopping = False

        def forward(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True
            pid = entrypoint_pid(proc.pid, command)
            try:
                if pid is not None:
                    os.kill(pid, signal.SIGTERM)
                else:
                    proc.terminate()
            except ProcessLookupError:
                pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        if opts.pidfile:
            while proc.poll() is None and not stopping:
                pid = entrypoint_pid(proc.pid, command)
                if pid is not None:
                    Path(opts.pidfile).write_text(f"{pid}\n")
                    break
                time.sleep(0.05)
        return proc.wait()
    finally:
        if not opts.keep:
            subprocess.run(["buildah", "rm", container], stdout=subprocess.DEVNULL, check=False)


if __name__ == "__main__":
    sys.exit(main())
