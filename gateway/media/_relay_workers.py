"""The scaled-out relay: streams spread over relay worker processes.

Python runs one thread of bytecode per process, and the relay's hot path is Python, so beyond
one core the relay scales by processes. Each worker (``python -m gateway.media.worker``) runs a
:class:`~gateway.media.relay.LocalRelay` on uvloop over its own slice of the port range; the
signalling process talks to it over the worker's stdin/stdout with length-prefixed pickles
(:func:`encode`, :func:`read_message`). Media never crosses the pipes: a worker owns its
sockets, so a stream (and the outputs that follow it) lives wholly in one worker.

A new stream goes to the live worker with the fewest streams. Events come back asynchronously
and reach ``on_event``; counters come back as deltas and are added to ``metrics``. A worker that
dies reports ``"closed"`` for each of its streams and is started again for new streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway import logs
from gateway.media._relay_types import (
    EventSink,
    PortsExhausted,
    RelayError,
    StreamStats,
    Transport,
    UnknownStream,
)
from gateway.metrics import Metrics

log = structlog.get_logger("gateway.media.relay")

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 16 * 1024 * 1024
CALL_TIMEOUT = 10.0
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
RESPAWN_DELAY = 1.0

CALLS = frozenset(
    {
        "open_stream",
        "connect_stream",
        "settle_input",
        "add_output",
        "remove_output",
        "close_stream",
        "stats",
        "holds_port",
        "close",
    }
)
"""The :class:`~gateway.media.relay.LocalRelay` methods a worker answers."""


def encode(message: object) -> bytes:
    """A message on a worker pipe: 4-byte big-endian length, then the pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_message(reader: asyncio.StreamReader) -> Any:
    """The next message, or ``None`` at the end of the pipe."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(head)
        if size > MAX_MESSAGE:
            raise RelayError(f"relay worker message of {size} bytes")
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`RelayError` saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RelayError(f"{type(exc).__name__}: {exc}")
    return exc


def split_ports(port_min: int, port_max: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous slices of the range, each holding the same number of even ports."""
    first = port_min + (port_min & 1)
    evens = list(range(first, port_max + 1, 2))
    if len(evens) < parts:
        raise RelayError(f"{len(evens)} even ports cannot be split over {parts} relay workers")
    size, extra = divmod(len(evens), parts)
    slices, at = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        slices.append((evens[at], evens[at + n - 1]))
        at += n
    return slices


def _log_options() -> list[str]:
    """The worker logs like this process: same level, JSON if this process writes JSON, the
    same rate limit and excerpt length."""
    options: list[str] = []
    try:
        processors = structlog.get_config()["processors"]
        if processors and isinstance(processors[-1], structlog.processors.JSONRenderer):
            options.append("--log-json")
        for p in processors:
            if isinstance(p, logs.RateLimit):
                options += ["--log-burst", str(p.burst), "--log-window", str(p.window)]
            elif isinstance(p, logs.Excerpts):
                options += ["--log-max-value-chars", str(p.limit)]
        probe = structlog.get_logger("gateway.media.relay")
        for level in ("debug", "info", "warning", "error"):
            if probe.is_enabled_for(getattr(logging, level.upper())):
                options += ["--log-level", level]
                break
    except Exception:  # an unusual structlog configuration: the worker's defaults will do
        pass
    return options


@dataclass(slots=True, eq=False)
class _Worker:
    index: int
    port_min: int
    port_max: int
    proc: asyncio.subprocess.Process
    ports_free: int = 0
    streams: set[str] = field(default_factory=set)
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    ready: asyncio.Future[None] | None = None
    reader: asyncio.Task[None] | None = None
    alive: bool = True
    started: bool = False


class WorkerRelay:
    """N relay worker processes behind the :class:`~gateway.media.relay.Relay` interface."""

    def __init__(
        self,
        *,
        workers: int,
        host: str,
        port_min: int,
        port_max: int,
        on_event: EventSink | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if workers < 1:
            raise RelayError("a WorkerRelay needs at least one worker")
        self.host = host
        self.metrics = metrics if metrics is not None else Metrics()
        self._on_event = on_event
        self._slices = split_ports(port_min, port_max, workers)
        self._workers: list[_Worker | None] = [None] * workers
        self._where: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()

    # -- processes ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        started = await asyncio.gather(
            *(self._spawn(i) for i in range(len(self._slices))), return_exceptions=True
        )
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            await self.close()
            raise RelayError(f"relay workers did not start: {failures[0]}") from failures[0]
        log.info("relay.workers_started", workers=len(self._slices), host=self.host)

    async def _spawn(self, index: int) -> None:
        port_min, port_max = self._slices[index]
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.media.worker",
            "--host",
            self.host,
            "--port-min",
            str(port_min),
            "--port-max",
            str(port_max),
            *_log_options(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        loop = asyncio.get_running_loop()
        worker = _Worker(index, port_min, port_max, proc, ready=loop.create_future())
        worker.reader = loop.create_task(self._read(worker))
        self._workers[index] = worker
        try:
            assert worker.ready is not None
            await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT)
        except BaseException:
            await self._stop(worker)
            raise
        worker.started = True
        log.info("relay.worker_started", worker=index, pid=proc.pid, ports=(port_min, port_max))

    async def _read(self, worker: _Worker) -> None:
        assert worker.proc.stdout is not None
        reader = worker.proc.stdout
        try:
            while (message := await read_message(reader)) is not None:
                self._dispatch(worker, message)
        except Exception as exc:
            log.error("relay.worker_pipe_broken", worker=worker.index, reason=str(exc))
        self._lost(worker)

    def _dispatch(self, worker: _Worker, message: Any) -> None:
        kind = message[0]
        if kind == "reply":
            _, req_id, ok, value, worker.ports_free = message
            fut = worker.pending.pop(req_id, None)
            if fut is not None and not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        elif kind == "event":
            _, stream_id, output_id, event = message
            self._emit(stream_id, output_id, event)
        elif kind == "metrics":
            for name, n in message[1].items():
                self.metrics.inc(name, n)
        elif kind == "ready":
            worker.ports_free = message[1]
            if worker.ready is not None and not worker.ready.done():
                worker.ready.set_result(None)

    def _lost(self, worker: _Worker) -> None:
        """The worker's pipe ended: fail its calls, close its streams, start another."""
        worker.alive = False
        error = RelayError(f"relay worker {worker.index} is gone")
        for fut in worker.pending.values():
            if not fut.done():
                fut.set_exception(error)
        worker.pending.clear()
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(error)
        if self._closing or not worker.started or self._workers[worker.index] is not worker:
            return
        self.metrics.inc("relay.worker_died")
        log.error(
            "relay.worker_died",
            worker=worker.index,
            pid=worker.proc.pid,
            streams=len(worker.streams),
        )
        for stream_id in sorted(worker.streams):
            if self._where.get(stream_id) is worker:
                del self._where[stream_id]
                self._emit(stream_id, None, "closed")
        worker.streams.clear()
        task = asyncio.get_running_loop().create_task(self._respawn(worker))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, dead: _Worker) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(dead.proc.wait(), STOP_TIMEOUT)
        await asyncio.sleep(RESPAWN_DELAY)
        if self._closing:
            return
        try:
            await self._spawn(dead.index)
        except Exception as exc:
            log.error("relay.worker_restart_failed", worker=dead.index, reason=str(exc))

    async def _stop(self, worker: _Worker) -> None:
        proc = worker.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("relay.worker_killed", worker=worker.index, pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if worker.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(worker.reader, STOP_TIMEOUT)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            if worker.alive:
                with contextlib.suppress(RelayError):
                    await self._call(worker, "close")
        await asyncio.gather(*(self._stop(w) for w in workers))
        self._workers = [None] * len(self._slices)
        self._where.clear()
        log.info("relay.workers_stopped", workers=len(workers))

    # -- calls ----------------------------------------------------------------------------------

    async def _call(self, worker: _Worker, method: str, *args: Any, **kwargs: Any) -> Any:
        if not worker.alive or worker.proc.stdin is None:
            raise RelayError(f"relay worker {worker.index} is gone")
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        worker.pending[req_id] = fut
        try:
            worker.proc.stdin.write(encode(("call", req_id, method, args, kwargs)))
        except (ConnectionError, RuntimeError) as exc:
            worker.pending.pop(req_id, None)
            raise RelayError(f"relay worker {worker.index} is gone") from exc
        try:
            return await asyncio.wait_for(fut, CALL_TIMEOUT)
        except TimeoutError:
            raise RelayError(f"relay worker {worker.index} did not answer {method}") from None
        finally:
            worker.pending.pop(req_id, None)

    def _worker_of(self, stream_id: str) -> _Worker:
        try:
            return self._where[stream_id]
        except KeyError:
            raise UnknownStream(stream_id) from None

    def _emit(self, stream_id: str, output_id: str | None, event: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(stream_id, output_id, event)
        except Exception:
            log.exception("relay.event_sink_failed", stream_id=stream_id, event=event)

    def ports_free(self) -> int:
        return sum(w.ports_free for w in self._workers if w is not None and w.alive)

    async def holds_port(self, port: int) -> bool:
        """Asks the worker whose slice of the range holds ``port``."""
        for worker in self._workers:
            if worker is not None and worker.alive and worker.port_min <= port <= worker.port_max:
                held: bool = await self._call(worker, "holds_port", port)
                return held
        return False

    async def open_stream(
        self,
        stream_id: str,
        transport: Transport,
        *,
        idle_timeout: float,
        remote: tuple[str, int] | None = None,
    ) -> int:
        if stream_id in self._where:
            raise RelayError(f"stream {stream_id} is already open")
        live = [w for w in self._workers if w is not None and w.alive]
        if not live:
            raise RelayError("no relay worker is running")
        # Least loaded first; a worker whose ports are all taken (by us or by other programs)
        # passes the stream on to the next.
        for worker in sorted(live, key=lambda w: (len(w.streams), -w.ports_free)):
            if worker.ports_free == 0:
                continue
            self._where[stream_id] = worker  # before the call: events may come back at once
            worker.streams.add(stream_id)
            try:
                port: int = await self._call(
                    worker,
                    "open_stream",
                    stream_id,
                    transport,
                    idle_timeout=idle_timeout,
                    remote=remote,
                )
            except BaseException as exc:
                if self._where.get(stream_id) is worker:
                    del self._where[stream_id]
                worker.streams.discard(stream_id)
                if isinstance(exc, PortsExhausted):
                    continue
                raise
            return port
        self.metrics.inc("relay.ports_exhausted")
        raise PortsExhausted("no relay worker has a free port")

    async def connect_stream(self, stream_id: str, remote: tuple[str, int]) -> None:
        await self._call(self._worker_of(stream_id), "connect_stream", stream_id, remote)

    async def settle_input(self, stream_id: str, transport: Transport) -> None:
        await self._call(self._worker_of(stream_id), "settle_input", stream_id, transport)

    async def add_output(
        self,
        stream_id: str,
        output_id: str,
        transport: Transport,
        *,
        remote: tuple[str, int] | None,
        ssrc: int,
    ) -> int:
        worker = self._worker_of(stream_id)
        port: int = await self._call(
            worker, "add_output", stream_id, output_id, transport, remote=remote, ssrc=ssrc
        )
        return port

    async def remove_output(self, stream_id: str, output_id: str) -> None:
        await self._call(self._worker_of(stream_id), "remove_output", stream_id, output_id)

    async def close_stream(self, stream_id: str) -> None:
        worker = self._where.pop(stream_id, None)
        if worker is None:
            return
        worker.streams.discard(stream_id)
        if worker.alive:
            await self._call(worker, "close_stream", stream_id)

    async def stats(self, stream_id: str) -> StreamStats:
        stats: StreamStats = await self._call(self._worker_of(stream_id), "stats", stream_id)
        return stats

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and operators)."""
        return [w.proc.pid for w in self._workers if w is not None and w.alive]
