"""Several gateway nodes on one Redis: fenced leases (one node acts for each upper platform,
each floating address), membership (which nodes are alive), and what an upper's holder keeps
for its successor. ``Cluster(url=None, ...)`` is the single-node form: every lease held,
nothing sent."""

from gateway.cluster.floating import FloatingAddresses
from gateway.cluster.leases import HeldLease, Lease, LeaseLike
from gateway.cluster.membership import Membership, NodeInfo
from gateway.cluster.node import Cluster
from gateway.cluster.uppers import UpperState

__all__ = [
    "Cluster",
    "FloatingAddresses",
    "HeldLease",
    "Lease",
    "LeaseLike",
    "Membership",
    "NodeInfo",
    "UpperState",
]
