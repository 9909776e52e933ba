"""The container's HEALTHCHECK: GET ``/healthz`` on the HTTP port of the configuration the
gateway (PID 1) was started with (its ``--config``, else /etc/gb28181/gateway.toml). Exit 0
when it answers 200, 1 otherwise (Docker's convention); 0 when HTTP is disabled there."""

from __future__ import annotations

import sys
import tomllib
import urllib.request
from pathlib import Path

DEFAULT = "/etc/gb28181/gateway.toml"


def config_path(cmdline: list[str]) -> str:
    """The value of ``--config FILE`` or ``--config=FILE`` in PID 1's arguments."""
    for i, arg in enumerate(cmdline):
        if arg == "--config" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return DEFAULT


def main() -> int:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    except OSError:
        args = []
    path = config_path(args)
    try:
        http = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("http", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"healthcheck: cannot read {path}: {exc}", file=sys.stderr)
        http = {}
    if http.get("enabled", True) is False:
        return 0
    host = str(http.get("host", "127.0.0.1"))
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    url = f"http://{host}:{int(http.get('port', 8080))}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
