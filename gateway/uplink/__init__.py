"""The upper side (floor 4): registration to each upper platform, answers to its queries,
forwarding of its queries and controls to devices, its subscriptions and our NOTIFYs, and its
INVITEs (live, playback, download, MANSRTSP) relayed to devices. Uses the downlink's public face."""

from gateway.uplink.calls import Calls, Relayed, UpperAudio
from gateway.uplink.idmap import IdMap
from gateway.uplink.relayed import RelayedCalls
from gateway.uplink.service import Uplink, UpperError
from gateway.uplink.session import UpperSession
from gateway.uplink.share import Share, SharedView

__all__ = [
    "Calls",
    "IdMap",
    "Relayed",
    "RelayedCalls",
    "Share",
    "SharedView",
    "Uplink",
    "UpperAudio",
    "UpperError",
    "UpperSession",
]
