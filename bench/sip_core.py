"""SIP core throughput: messages per second through :meth:`SipCore.receive`, no sockets.

Run: ``PYTHONPATH=<tree> .venv/bin/python bench/sip_core.py``. Prints one JSON object. Only
``gateway.sip`` is imported, so the same file measures an older tree put first on PYTHONPATH.

Two streams of datagrams, each message new (its own branch, Call-ID and From tag, as a device
sends them), over UDP from one peer:

* ``keepalive_message``: the GB/T 28181 keepalive MESSAGE (a small MANSCDP+xml body);
* ``register``: a REGISTER with Contact and Expires (the refresh a device sends).

The transaction user answers each 200 at once through :meth:`SipCore.reply`. The network only
counts what it is given; the scheduler keeps the timers (timer J for each transaction) and never
fires them. The datagrams are built before the clock starts: the figure is parse + check +
transaction + answer. Each figure is the best of ``--repeats`` runs of ``--count`` messages on a
fresh core, the garbage collector paused during a run.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from typing import Any

from gateway.sip.core import SipCore
from gateway.sip.peer import Peer

DEVICE = "34020000001320000001"
SERVER = "34020000002000000001"
DOMAIN = "3402000000"
PEER = Peer("udp", "192.168.1.64", 5060)

KEEPALIVE_BODY = (
    '<?xml version="1.0" encoding="GB2312"?>\r\n'
    "<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{n}</SN>\r\n"
    f"<DeviceID>{DEVICE}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n"
)


def keepalive(n: int) -> bytes:
    body = KEEPALIVE_BODY.format(n=n).encode()
    head = (
        f"MESSAGE sip:{SERVER}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK{n:09d}\r\n"
        f"From: <sip:{DEVICE}@{DOMAIN}>;tag={n:08d}\r\n"
        f"To: <sip:{SERVER}@{DOMAIN}>\r\n"
        f"Call-ID: {n:010d}@192.168.1.64\r\n"
        "CSeq: 20 MESSAGE\r\n"
        "Content-Type: Application/MANSCDP+xml\r\n"
        "Max-Forwards: 70\r\n"
        "User-Agent: IP Camera\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def register(n: int) -> bytes:
    head = (
        f"REGISTER sip:{SERVER}@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK{n:09d}\r\n"
        f"From: <sip:{DEVICE}@{DOMAIN}>;tag={n:08d}\r\n"
        f"To: <sip:{DEVICE}@{DOMAIN}>\r\n"
        f"Call-ID: {n:010d}@192.168.1.64\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{DEVICE}@192.168.1.64:5060>\r\n"
        "Max-Forwards: 70\r\n"
        "User-Agent: IP Camera\r\n"
        "Expires: 3600\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return head.encode()


class _Handle:
    __slots__ = ()

    def cancel(self) -> None:
        pass


class _Scheduler:
    """Keeps nothing and fires nothing: a run measures receiving, not timers."""

    handle = _Handle()

    def call_later(self, delay: float, callback: Any, *args: Any) -> _Handle:
        return self.handle


class _Network:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, peer: Peer, data: bytes) -> bool:
        self.sent += 1
        return True


class _Counters:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


class _User:
    def __init__(self) -> None:
        self.core: SipCore | None = None

    def request_received(self, request: Any, peer: Peer, txn: Any) -> None:
        assert self.core is not None
        self.core.reply(txn, request, 200)


def _core() -> tuple[SipCore, _Network, _Counters]:
    network, counters, user = _Network(), _Counters(), _User()
    core = SipCore(network=network, user=user, counters=counters, scheduler=_Scheduler())
    user.core = core
    core.allow("MESSAGE")
    core.allow("REGISTER")
    return core, network, counters


def run(datagrams: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        core, network, counters = _core()
        receive = core.receive
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for data in datagrams:
                receive(data, PEER)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        if network.sent != len(datagrams):
            raise SystemExit(f"{network.sent} answers to {len(datagrams)} requests: {counters}")
        best = min(best, elapsed)
    return len(datagrams) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import gateway

    out: dict[str, Any] = {
        "tree": gateway.__file__.rsplit("/gateway/", 1)[0],
        "python": platform.python_version(),
        "count": args.count,
        "repeats": args.repeats,
    }
    for name, make in (("keepalive_message", keepalive), ("register", register)):
        datagrams = [make(n) for n in range(args.count)]
        run(datagrams[:500], 1)  # warm-up
        out[f"{name}_per_s"] = round(run(datagrams, args.repeats))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
