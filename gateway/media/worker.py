"""A relay worker process: ``python -m gateway.media.worker --host H --port-min A --port-max B``.

Runs one :class:`~gateway.media.relay.LocalRelay` on uvloop over its slice of the media port
range and obeys the process that started it (:class:`~gateway.media.relay.WorkerRelay`) over
stdin/stdout, in length-prefixed pickles (:mod:`gateway.media._relay_workers`):

* in: ``("call", id, method, args, kwargs)`` for the relay methods in ``CALLS``;
* out: ``("ready", ports_free)`` once, ``("reply", id, ok, value or exception, ports_free)``,
  ``("event", stream_id, output_id, event)`` as they happen and ``("metrics", deltas)`` each
  second when counters moved.

The worker's own stdout is pointed at stderr, so nothing but messages reaches the pipe. It ends
after the ``close`` call or when its stdin ends (the parent went away).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import structlog

from gateway import logs
from gateway.media._relay_workers import CALLS, encode, portable_error, read_message
from gateway.media.relay import LocalRelay
from gateway.metrics import Metrics

log = structlog.get_logger("gateway.media.relay")

METRICS_INTERVAL = 1.0


class _Pipe(asyncio.Protocol):
    """The write end towards the parent (asyncio needs a protocol for it)."""


class _Metered:
    """Counters of the worker, sent to the parent as differences."""

    __slots__ = ("metrics", "sent")

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.sent: dict[str, int] = {}

    def deltas(self) -> dict[str, int]:
        now = self.metrics.snapshot()
        out = {k: v - self.sent.get(k, 0) for k, v in now.items() if v != self.sent.get(k, 0)}
        self.sent = now
        return out


async def _report_metrics(metered: _Metered, send: Callable[[object], None]) -> None:
    while True:
        await asyncio.sleep(METRICS_INTERVAL)
        deltas = metered.deltas()
        if deltas:
            send(("metrics", deltas))


async def serve(args: argparse.Namespace, channel: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    out, _ = await loop.connect_write_pipe(_Pipe, os.fdopen(channel, "wb", buffering=0))

    def send(message: object) -> None:
        if not out.is_closing():
            out.write(encode(message))

    metered = _Metered()
    relay = LocalRelay(
        host=args.host,
        port_min=args.port_min,
        port_max=args.port_max,
        on_event=lambda stream_id, output_id, event: send(("event", stream_id, output_id, event)),
        metrics=metered.metrics,
    )
    await relay.start()
    reporter = loop.create_task(_report_metrics(metered, send))
    gc.collect()
    gc.freeze()  # start-up objects are never rescanned; the hot path makes no cycles
    gc.set_threshold(50_000, 20, 100)
    send(("ready", relay.ports_free()))
    try:
        while (message := await read_message(reader)) is not None:
            _, req_id, method, call_args, kwargs = message
            value: Any = None
            ok = False
            if method not in CALLS:
                value = RuntimeError(f"no relay call {method!r}")
            else:
                try:
                    value = await getattr(relay, method)(*call_args, **kwargs)
                    ok = True
                except Exception as exc:
                    value = portable_error(exc)
            send(("reply", req_id, ok, value, relay.ports_free()))
            if method == "close":
                break
    finally:
        reporter.cancel()
        await relay.close()
        deltas = metered.deltas()
        if deltas:
            send(("metrics", deltas))
        out.close()
        await asyncio.sleep(0)  # let the transport flush what is queued


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="GB/T 28181 gateway RTP relay worker")
    p.add_argument("--host", required=True)
    p.add_argument("--port-min", type=int, required=True)
    p.add_argument("--port-max", type=int, required=True)
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-json", action="store_true")
    p.add_argument("--log-burst", type=int, default=logs.BURST)
    p.add_argument("--log-window", type=float, default=logs.WINDOW)
    p.add_argument("--log-max-value-chars", type=int, default=logs.MAX_CHARS)
    args = p.parse_args(argv)
    # The parent stops this process (a ``close`` call, or the end of stdin when the parent is
    # gone). A Ctrl-C or a service manager's SIGTERM reaches the whole process group: left to
    # the defaults, the worker would die under the parent mid-stop, with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The pipe to the parent is a private copy of stdout; fd 1 becomes stderr so a stray print
    # can never corrupt a message.
    channel = os.dup(1)
    os.dup2(2, 1)
    limiter = logs.configure(
        level=args.log_level,
        json=args.log_json,
        burst=args.log_burst,
        window=args.log_window,
        max_chars=args.log_max_value_chars,
    )
    log.info("relay.worker_ready", pid=os.getpid(), ports=(args.port_min, args.port_max))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Linux
        asyncio.run(serve(args, channel))
    else:
        uvloop.run(serve(args, channel))
    limiter.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
