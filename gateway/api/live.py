"""``GET /api/v1/events``: live updates for the console as Server-Sent Events.

Each connection (viewer or above; the token may come as ``?access_token=``, since a browser's
``EventSource`` sends no headers) hears the event bus and sends, at most once per ``[http]
sse_interval`` per kind:

* ``event: devices`` ``{"changes": [{"id", "online"}], "dropped": n}``: the newest state of each
  device that went on or offline, at most :data:`MAX_CHANGES` a message; changes of devices
  beyond those are counted in ``dropped`` and the client refetches;
* ``event: catalog`` ``{"devices": [ids], "dropped": n}``: devices whose catalog changed;
* ``event: alarm`` ``{"items": [...], "dropped": n}``: alarms received (at most
  :data:`MAX_ALARMS` a message);
* ``event: sessions`` ``{"active": n}``: the number of media sessions, when it changed.

A storm of a thousand status changes a second thus reaches a browser as about one message per
interval. What a connection holds is bounded (by those limits), open connections are bounded
by ``[http] sse_max_connections`` (503 beyond), a ``: ping`` comment goes out after
:data:`HEARTBEAT` quiet seconds so proxies keep the stream open, and a connection's bus
subscriptions are removed when it ends, however it ends. The stream checks its token again every
interval and ends once the token is revoked (deleted, its user disabled, logged out).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.auth import Authenticator, Principal, bearer_token, request_token, viewer
from gateway.api.context import ApiContext
from gateway.api.errors import ApiError
from gateway.events import (
    AlarmReceived,
    CatalogChange,
    CatalogSynced,
    DeviceOffline,
    DeviceOnline,
    EventBus,
)
from gateway.model import Alarm

log = structlog.get_logger("gateway.api.live")

router = APIRouter(tags=["live"])

MAX_CHANGES = 500
"""Device changes (and catalog devices) in one message; the rest are counted as dropped."""
MAX_ALARMS = 100
"""Alarms in one message."""
HEARTBEAT = 15.0
"""Seconds without a message after which a ``: ping`` comment is sent."""


class LiveClient:
    """One open stream: what has happened since its last message, bounded."""

    def __init__(self, events: EventBus, sessions: Callable[[], int]) -> None:
        self.events = events
        self.sessions = sessions
        self.devices: dict[str, bool] = {}
        self.devices_dropped = 0
        self.catalog: set[str] = set()
        self.catalog_dropped = 0
        self.alarms: list[dict[str, Any]] = []
        self.alarms_dropped = 0
        self.sent_sessions: int | None = None
        self._subs: list[tuple[type, Callable[[Any], None]]] = [
            (DeviceOnline, self._online),
            (DeviceOffline, self._offline),
            (CatalogChange, self._catalog_change),
            (CatalogSynced, self._catalog_synced),
            (AlarmReceived, self._alarm),
        ]

    # -- the bus ---------------------------------------------------------------------------
    def attach(self) -> None:
        for kind, callback in self._subs:
            self.events.subscribe(kind, callback)

    def detach(self) -> None:
        for kind, callback in self._subs:
            self.events.unsubscribe(kind, callback)

    def _device(self, device_id: str, online: bool) -> None:
        devices = self.devices
        if device_id in devices or len(devices) < MAX_CHANGES:
            devices[device_id] = online  # the newest state wins
        else:
            self.devices_dropped += 1

    def _online(self, event: DeviceOnline) -> None:
        self._device(event.device_id, True)

    def _offline(self, event: DeviceOffline) -> None:
        self._device(event.device_id, False)

    def _catalog_device(self, device_id: str) -> None:
        if device_id in self.catalog or len(self.catalog) < MAX_CHANGES:
            self.catalog.add(device_id)
        else:
            self.catalog_dropped += 1

    def _catalog_change(self, event: CatalogChange) -> None:
        self._catalog_device(event.owner_id)

    def _catalog_synced(self, event: CatalogSynced) -> None:
        self._catalog_device(event.device_id)

    def _alarm(self, event: AlarmReceived) -> None:
        if len(self.alarms) < MAX_ALARMS:
            self.alarms.append(alarm_item(event.alarm))
        else:
            self.alarms_dropped += 1

    # -- the stream --------------------------------------------------------------------------
    def drain(self) -> list[str]:
        """The messages for what piled up since the last call (and nothing more held)."""
        out: list[str] = []
        if self.devices or self.devices_dropped:
            changes = [{"id": k, "online": v} for k, v in self.devices.items()]
            out.append(_message("devices", {"changes": changes, "dropped": self.devices_dropped}))
            self.devices = {}
            self.devices_dropped = 0
        if self.catalog or self.catalog_dropped:
            body = {"devices": sorted(self.catalog), "dropped": self.catalog_dropped}
            out.append(_message("catalog", body))
            self.catalog = set()
            self.catalog_dropped = 0
        if self.alarms or self.alarms_dropped:
            out.append(_message("alarm", {"items": self.alarms, "dropped": self.alarms_dropped}))
            self.alarms = []
            self.alarms_dropped = 0
        active = self.sessions()
        if active != self.sent_sessions:
            out.append(_message("sessions", {"active": active}))
            self.sent_sessions = active
        return out

    async def stream(
        self, interval: float, still_allowed: Callable[[], bool] = lambda: True
    ) -> AsyncIterator[str]:
        """What piled up, once per ``interval`` (the session count at once); a ping after
        :data:`HEARTBEAT` quiet seconds. Whatever comes during an interval goes in the next
        message: that is the coalescing. The stream ends at the first tick where
        ``still_allowed`` says no (its token deleted, its user disabled or logged out)."""
        loop = asyncio.get_running_loop()
        yield "retry: 3000\n\n"
        last_write = loop.time()
        while True:
            if not still_allowed():
                log.info("live.revoked")
                return
            out = self.drain()
            if out:
                yield "".join(out)
                last_write = loop.time()
            elif loop.time() - last_write >= HEARTBEAT:
                yield ": ping\n\n"
                last_write = loop.time()
            await asyncio.sleep(interval)


def alarm_item(alarm: Alarm) -> dict[str, Any]:
    """An alarm in the shape of ``GET /api/v1/alarms`` items (the API contract)."""
    return {
        "id": alarm.id,
        "device_id": alarm.device_id,
        "channel_id": alarm.channel_id,
        "priority": alarm.priority,
        "method": alarm.method,
        "type": alarm.alarm_type,
        "time": alarm.time,
        "description": alarm.description,
        "received_at": alarm.received_at,
    }


def _message(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


class LiveHub:
    """The open streams of one API server: counted against the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.clients: set[LiveClient] = set()

    def open(self, client: LiveClient) -> bool:
        if len(self.clients) >= self.limit:
            return False
        self.clients.add(client)
        client.attach()
        return True

    def close(self, client: LiveClient) -> None:
        if client in self.clients:
            self.clients.discard(client)
            client.detach()


class EventStream(StreamingResponse):
    """The SSE response; whatever ends it (the client going, the server stopping, an error,
    or never being started at all) closes its client in the hub."""

    def __init__(
        self,
        hub: LiveHub,
        client: LiveClient,
        interval: float,
        still_allowed: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(
            client.stream(interval, still_allowed),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub = hub
        self.client = client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.close(self.client)
            log.debug("live.closed", clients=len(self.hub.clients))


def hub_of(ctx: ApiContext) -> LiveHub:
    hub = ctx.extras.get("live")
    if hub is None:
        hub = ctx.extras["live"] = LiveHub(ctx.config.http.sse_max_connections)
    assert isinstance(hub, LiveHub)
    return hub


@router.get("/events", response_class=StreamingResponse)
async def events(request: Request, who: Annotated[Principal, Depends(viewer)]) -> EventStream:
    """Server-Sent Events: devices on/offline, catalog changes, alarms, the session count."""
    ctx: ApiContext = request.app.state.ctx
    hub = hub_of(ctx)
    client = LiveClient(ctx.events, lambda: len(ctx.media.legs))
    if not hub.open(client):
        ctx.metrics.inc("api.live.refused")
        raise ApiError(503, f"too many live streams (at most {hub.limit})")
    ctx.metrics.inc("api.live.opened")
    log.debug("live.opened", who=who.name, clients=len(hub.clients))
    auth: Authenticator = ctx.extras["auth"]
    token = request_token(
        request.url.path, bearer_token(request), request.query_params.get("access_token")
    )

    def still_allowed() -> bool:
        # Every tick: a deleted token, a disabled or logged-out user ends the stream.
        return token is not None and auth.authenticate(token) is not None

    return EventStream(hub, client, ctx.config.http.sse_interval, still_allowed)
