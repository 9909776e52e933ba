"""uvicorn's own log lines, through the gateway's log pipeline.

uvicorn logs with the standard library (``uvicorn.error``: a bad HTTP request, an exception in
the application, a connection problem). The server is started with ``log_config=None``, so
those records would reach Python's last-resort handler and come out on stderr as plain text,
breaking ``[log] format = "json"``. :func:`route_uvicorn_logs` gives the ``uvicorn`` loggers a
handler that re-logs each record (warnings and above) with structlog as ``http.uvicorn``, with
its logger name and message (and traceback), so they are JSON objects like every other line,
rate-limited and cut like every other value.
"""

from __future__ import annotations

import logging

import structlog

log = structlog.get_logger("gateway.api.uvicorn")

LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            if record.levelno >= logging.ERROR:
                log.error("http.uvicorn", **fields)
            elif record.levelno >= logging.WARNING:
                log.warning("http.uvicorn", **fields)
            else:
                log.info("http.uvicorn", **fields)
        except Exception:
            self.handleError(record)


def route_uvicorn_logs() -> None:
    """Send uvicorn's warnings and errors to structlog, once per process (idempotent); its
    informational chatter ("Started server process"...) is dropped: ``http.started`` says it."""
    top = logging.getLogger("uvicorn")
    if not any(isinstance(h, ToStructlog) for h in top.handlers):
        top.handlers = [ToStructlog()]
    top.setLevel(logging.WARNING)
    top.propagate = False
    for name in LOGGERS[1:]:
        child = logging.getLogger(name)
        child.handlers = []  # what uvicorn may have put there goes through the parent's
        child.propagate = True
        child.setLevel(logging.NOTSET)
