"""The cluster (floor 2): several gateway nodes sharing a Redis store. Node-to-node requests and
events (:class:`Bus`), the replica of what the other nodes hold (:class:`Replica`,
:class:`ClusterDevices`). Without Redis none of it is built: every device is local."""

from gateway.cluster.bus import Bus, ClusterError, ClusterTimeout
from gateway.cluster.replica import CatalogMirror, ClusterDevices, Replica
from gateway.cluster.wire import (
    device_from_wire,
    device_to_wire,
    items_from_wire,
    items_to_wire,
    message_from_wire,
    message_to_wire,
)

__all__ = [
    "Bus",
    "CatalogMirror",
    "ClusterDevices",
    "ClusterError",
    "ClusterTimeout",
    "Replica",
    "device_from_wire",
    "device_to_wire",
    "items_from_wire",
    "items_to_wire",
    "message_from_wire",
    "message_to_wire",
]
