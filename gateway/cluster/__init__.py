"""Several gateway nodes on one Redis (floor 2).

* Fenced leases (one node acts for each upper platform and each floating address), membership
  (which nodes are alive) and what an upper's holder keeps for its successor: :class:`Cluster`.
  ``Cluster(url=None, ...)`` is the single-node form: every lease held, nothing sent.
* Node-to-node requests and events (:class:`Bus`) and the replica of what the other nodes hold
  (:class:`Replica`, :class:`ClusterDevices`). Without Redis none of it is built: every device
  is local.
"""

from gateway.cluster.bus import Bus, ClusterError, ClusterTimeout
from gateway.cluster.floating import FloatingAddresses
from gateway.cluster.leases import HeldLease, Lease, LeaseLike
from gateway.cluster.membership import Membership, NodeInfo
from gateway.cluster.node import Cluster
from gateway.cluster.replica import CatalogMirror, ClusterDevices, Replica
from gateway.cluster.uppers import UpperState
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
    "Cluster",
    "ClusterDevices",
    "ClusterError",
    "ClusterTimeout",
    "FloatingAddresses",
    "HeldLease",
    "Lease",
    "LeaseLike",
    "Membership",
    "NodeInfo",
    "Replica",
    "UpperState",
    "device_from_wire",
    "device_to_wire",
    "items_from_wire",
    "items_to_wire",
    "message_from_wire",
    "message_to_wire",
]
