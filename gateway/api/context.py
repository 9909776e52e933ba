"""What the HTTP API is given: the gateway's parts, built by the composition root.

The API stands on floor 5: it may use every part below it, but it is handed them here rather
than reaching into ``gateway.app``. Each router reads the parts it needs from ``ApiContext``
(``request.app.state.ctx``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import Query, Request

from gateway.catalog import Catalog
from gateway.directory import Directory
from gateway.downlink import CatalogSync, DeviceQuirks, Downlink, Registrar
from gateway.events import EventBus
from gateway.media import SessionTable
from gateway.metrics import Metrics
from gateway.model import Device, DeviceDirectory
from gateway.preview import Previews
from gateway.settings import Config
from gateway.sip import Endpoint
from gateway.store import Store
from gateway.uplink import Calls, Uplink


class DeviceList(DeviceDirectory, Protocol):
    """Every node's devices, in a cluster (``gateway.cluster.ClusterDevices``): read-only, with
    their IDs and how many there are (the views' cache key)."""

    def __len__(self) -> int: ...

    def ids(self) -> Iterable[str]: ...


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
    # In a cluster: every node's devices (this node's registrar first, then the replica of the
    # others'), what the API shows and sends commands to; None: this node's registrar only.
    # Writes (accounts, bindings) and the metrics stay this node's.
    devices: DeviceList | None = None
    # Filled by the API itself at start (the authenticator, the audit log...).
    extras: dict[str, Any] = field(default_factory=dict)

    def device(self, device_id: str) -> Device | None:
        """The device under ``device_id``, whichever node holds it."""
        if self.devices is not None:
            return self.devices.get(device_id)
        return self.registrar.devices.get(device_id)

    def has_device(self, device_id: str) -> bool:
        """Whether any node knows a device under ``device_id``."""
        if self.devices is not None:
            return device_id in self.devices
        return device_id in self.registrar.devices

    def device_count_and_ids(self) -> tuple[int, Iterable[str]]:
        """How many devices every node knows, and (lazily) their IDs."""
        if self.devices is not None:
            return len(self.devices), self.devices.ids()
        regs = self.registrar.devices
        return len(regs), regs


# The paging parameters every list takes (``?offset=&limit=``).
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]


def ctx_of(request: Request) -> ApiContext:
    """The gateway's parts, as the API server was given them."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
