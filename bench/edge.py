"""The network edge under attack: what a stranger can make the gateway hold, spend or write.

Run: ``.venv/bin/python bench/edge.py`` (this checkout), or
``.venv/bin/python bench/edge.py --tree /path/to/old/checkout --tree .`` to measure several
checkouts of the gateway one after the other in the same run (before/after figures).

For each tree a gateway subprocess is started on 127.0.0.1 (``[log] level = "warning"``, the
level a city runs at) with that tree first on ``PYTHONPATH``, and these are measured:

1. ``no_call_id``: 20,000 INVITE datagrams without a Call-ID, each with a fresh branch. RSS
   before, and after the gateway is idle again; how many were answered, and with what.
2. ``hostile_authorization``: REGISTERs whose Authorization fills the 8 KiB header-line limit
   with a shape that made a parser backtrack (``Digest , , , …``; ``Digest a=b a=b … !``).
   Median time to the answer, and the answer.
3. ``guessing``: one device challenged, then ``--guesses`` REGISTERs with wrong passwords from
   one address, as fast as the answers come, each on the freshest nonce the gateway gave.
   Guesses per second, the answers, how many had their password checked, whether a
   ``Retry-After`` came, and the answer to the right password sent after them.
4. ``log_flood``: 20,000 garbage datagrams carrying 1,000 attacker-chosen characters each (with
   terminal escapes). Bytes the gateway wrote to its log for them.

Prints one JSON object on stdout (per tree); progress goes to stderr. Every loop is bounded in
count and time; only the gateways started here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from register import DOMAIN, GATEWAY_ID, MB, Gateway, log

DEVICE = f"{DOMAIN}1320000001"
PASSWORD = "12345678"  # the embedded default


class TreeGateway(Gateway):
    """The gateway of one checkout: ``tree`` goes first on the subprocess's PYTHONPATH."""

    def __init__(self, workdir: Path, tree: Path) -> None:
        super().__init__(workdir)
        self.tree = tree

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)]

    def start(self, timeout: float = 15.0) -> None:
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(self.tree)
        try:
            super().start(timeout)
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old


class Peer:
    """One UDP socket on 127.0.0.1 that sends requests and collects what comes back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MB)
        self.lport = int(self.sock.getsockname()[1])
        self.dest = ("127.0.0.1", port)

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.dest)

    def drain(self, wait: float) -> list[bytes]:
        """Everything that arrives until ``wait`` seconds pass with nothing new."""
        out: list[bytes] = []
        self.sock.settimeout(wait)
        while True:
            try:
                out.append(self.sock.recv(65536))
            except OSError:
                return out

    def ask(self, data: bytes, timeout: float = 5.0) -> bytes | None:
        self.send(data)
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except OSError:
            return None

    def via(self) -> str:
        return f"SIP/2.0/UDP 127.0.0.1:{self.lport};rport;branch=z9hG4bK{os.urandom(8).hex()}"


def status_of(data: bytes | None) -> str:
    if data is None:
        return "none"
    first = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    return first[8:] if first.startswith("SIP/2.0 ") else first[:40]


def header(data: bytes, name: str) -> str | None:
    m = re.search(rb"(?im)^" + name.encode() + rb"\s*:\s*(.*?)\r?$", data)
    return m.group(1).decode("utf-8", "replace") if m else None


def tally(items: list[bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        key = status_of(item)
        out[key] = out.get(key, 0) + 1
    return out


def no_call_id(gw: Gateway, count: int) -> dict[str, Any]:
    peer = Peer(gw.port)
    try:
        gw.wait_idle()
        before = gw.rss()
        answers: list[bytes] = []
        for start in range(0, count, 500):
            for _ in range(start, min(count, start + 500)):
                peer.send(
                    (
                        f"INVITE sip:{DEVICE}@{DOMAIN} SIP/2.0\r\n"
                        f"Via: {peer.via()}\r\n"
                        f"From: <sip:{GATEWAY_ID}9@{DOMAIN}>;tag={os.urandom(4).hex()}\r\n"
                        f"To: <sip:{DEVICE}@{DOMAIN}>\r\n"
                        "CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                    ).encode()
                )
            answers += peer.drain(0.02)
        answers += peer.drain(1.0)
        gw.wait_idle()
        after = gw.rss()
        return {
            "requests": count,
            "answers": tally(answers),
            "rss_before_mb": round(before / MB, 1),
            "rss_after_mb": round(after / MB, 1),
            "rss_growth_bytes_per_request": round((after - before) / count),
        }
    finally:
        peer.close()


def register(peer: Peer, call_id: str, cseq: int, auth: str | None) -> bytes:
    lines = [
        f"REGISTER sip:{GATEWAY_ID}@{DOMAIN} SIP/2.0",
        f"Via: {peer.via()}",
        f"From: <sip:{DEVICE}@{DOMAIN}>;tag=bench{cseq}",
        f"To: <sip:{DEVICE}@{DOMAIN}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{DEVICE}@127.0.0.1:{peer.lport}>",
        "Max-Forwards: 70",
        "Expires: 3600",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


SHAPES = {
    # as many as the 8 KiB header-line limit allows
    "separators": lambda n: "Digest " + ", " * (n // 2),
    "no_commas_then_junk": lambda n: "Digest " + "a=b " * (n // 4) + "!",
}


def hostile_authorization(gw: Gateway, rounds: int) -> dict[str, Any]:
    peer = Peer(gw.port)
    out: dict[str, Any] = {}
    try:
        for name, shape in SHAPES.items():
            value = shape(8 * 1024 - 40)
            times: list[float] = []
            answers: list[bytes | None] = []
            for n in range(rounds):
                t0 = time.perf_counter()
                req = register(peer, f"hostile-{name}-{n}", n + 1, value)
                answers.append(peer.ask(req, timeout=30))
                times.append(time.perf_counter() - t0)
            out[name] = {
                "header_chars": len("Authorization: ") + len(value),
                "median_answer_ms": round(statistics.median(times) * 1000, 2),
                "max_answer_ms": round(max(times) * 1000, 2),
                "answers": tally([a for a in answers if a is not None]),
                "unanswered": sum(1 for a in answers if a is None),
            }
        return out
    finally:
        peer.close()


def digest(nonce: str, realm: str, password: str, cseq: int) -> str:
    uri = f"sip:{GATEWAY_ID}@{DOMAIN}"
    ha1 = hashlib.md5(f"{DEVICE}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    nc, cnonce = f"{cseq:08x}", "bench"
    resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (
        f'Digest username="{DEVICE}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def challenge_of(data: bytes | None) -> tuple[str, str] | None:
    """(nonce, realm) of the WWW-Authenticate in ``data``, if any."""
    value = header(data or b"", "WWW-Authenticate") or ""
    nonce = re.search(r'nonce="([^"]*)"', value)
    realm = re.search(r'realm="([^"]*)"', value)
    return None if nonce is None or realm is None else (nonce.group(1), realm.group(1))


def guessing(gw: Gateway, guesses: int) -> dict[str, Any]:
    """A guesser at one address: each wrong answer goes on the freshest nonce it was given
    (the first challenge's, or the one a 401 came back with)."""
    peer = Peer(gw.port)
    try:
        first = peer.ask(register(peer, "guess", 1, None))
        challenge = challenge_of(first)
        if challenge is None:
            return {"error": f"no challenge: {status_of(first)}"}
        nonce, realm = challenge
        answers: list[bytes | None] = []
        t0 = time.perf_counter()
        for n in range(guesses):
            wrong = f"{n:08d}" if f"{n:08d}" != PASSWORD else "x"
            answer = peer.ask(register(peer, "guess", n + 2, digest(nonce, realm, wrong, n + 2)))
            answers.append(answer)
            fresh = challenge_of(answer)
            if fresh is not None:
                nonce, realm = fresh
        elapsed = time.perf_counter() - t0
        right = peer.ask(register(peer, "guess", guesses + 2, digest(nonce, realm, PASSWORD, 99)))
        retry_after = [header(a, "Retry-After") for a in answers if a is not None]
        return {
            "guesses": guesses,
            "guesses_per_s": round(guesses / elapsed),
            "answers": tally([a for a in answers if a is not None]),
            "with_retry_after": sum(1 for r in retry_after if r),
            "password_checked": sum(
                1 for a in answers if status_of(a).startswith("403 Forbidden (wrong")
            ),
            "right_password_after_them": status_of(right),
        }
    finally:
        peer.close()


def log_flood(gw: Gateway, count: int) -> dict[str, Any]:
    peer = Peer(gw.port)
    junk = "\x1b[31m" + "A" * 1000 + "\x1b[0m"
    try:
        gw.wait_idle()
        before = gw.log_path.stat().st_size
        for n in range(count):
            peer.send(f"GARBAGE{n} {junk}\r\n\r\n".encode())
            if n % 500 == 499:
                time.sleep(0.02)
        peer.drain(0.5)
        gw.wait_idle()
        written = gw.log_path.stat().st_size - before
        return {
            "datagrams": count,
            "log_bytes": written,
            "log_bytes_per_datagram": round(written / count, 1),
        }
    finally:
        peer.close()


def measure(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        gw = TreeGateway(Path(tmp), tree)
        log(f"{tree}: starting the gateway on port {gw.port}")
        gw.start()
        try:
            out: dict[str, Any] = {"tree": str(tree)}
            log("no Call-ID flood")
            out["no_call_id"] = no_call_id(gw, args.requests)
            log("hostile Authorization")
            out["hostile_authorization"] = hostile_authorization(gw, args.rounds)
            log("password guessing")
            out["guessing"] = guessing(gw, args.guesses)
            log("log flood")
            out["log_flood"] = log_flood(gw, args.requests)
            return out
        finally:
            gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="checkout(s) to measure")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--guesses", type=int, default=2_000)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [Path(__file__).resolve().parent.parent])]
    results = [measure(tree, args) for tree in trees]
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))


if __name__ == "__main__":
    main()
