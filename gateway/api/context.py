"""What the HTTP API is given: the gateway's parts, built by the composition root.

The API stands on floor 5: it may use every part below it, but it is handed them here rather
than reaching into ``gateway.app``. Each router reads the parts it needs from ``ApiContext``
(``request.app.state.ctx``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Query, Request

from gateway.catalog import Catalog
from gateway.directory import Directory
from gateway.downlink import CatalogSync, DeviceQuirks, Downlink, Registrar
from gateway.events import EventBus
from gateway.media import SessionTable
from gateway.metrics import Metrics
from gateway.preview import Previews
from gateway.settings import Config
from gateway.sip import Endpoint
from gateway.store import Store
from gateway.uplink import Calls, Uplink


@dataclass
class ApiContext:
    config: Config
    store: Store
    metrics: Metrics
    events: EventBus
    endpoint: Endpoint
    registrar: Registrar
    catalog: Catalog
    downlink: Downlink
    sync: CatalogSync
    uplink: Uplink
    media: SessionTable[Any]
    calls: Calls
    quirks: DeviceQuirks
    directory: Directory
    previews: Previews
    clock: Callable[[], float] = time.time
    # Filled by the API itself at start (the authenticator, the audit log...).
    extras: dict[str, Any] = field(default_factory=dict)


# The paging parameters every list takes (``?offset=&limit=``).
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]


def ctx_of(request: Request) -> ApiContext:
    """The gateway's parts, as the API server was given them."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
