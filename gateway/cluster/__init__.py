"""The cluster (floor 2): several gateway nodes sharing a Redis store. Node-to-node requests and
events (:class:`Bus`), the replica of what the other nodes hold (:class:`Replica`,
:class:`ClusterDevices`). Without Redis none of it is built: every device is local."""

from gateway.cluster.bus import Bus, ClusterError, ClusterTimeout

__all__ = [
    "Bus",
    "ClusterError",
    "ClusterTimeout",
]
