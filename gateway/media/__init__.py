"""Media: the SDP model, RTP and its TCP framings (floor 1, also used by the conformance suite),
and the bookkeeping of floor 3: the SSRC and port pools, the RTP relay and the session table
(legs, outputs, live-leg sharing, teardown). The SIP flows that set sessions up are the uplink's
(upper→device) and the downlink's (device→upper broadcast)."""

from gateway.media.relay import (
    LegStats,
    LocalRelay,
    PortsExhausted,
    Relay,
    RelayError,
    StreamStats,
    Transport,
    UnknownStream,
    WorkerRelay,
    make_relay,
)
from gateway.media.sdp import (
    Sdp,
    SdpError,
    answer_setup,
    offer_setup,
    parse_sdp,
    settled_transport,
)
from gateway.media.sessions import (
    BROADCAST,
    DOWNLOAD,
    OPPOSITE,
    PLAY,
    PLAYBACK,
    SDP_TYPE,
    Leg,
    LocalSession,
    MediaError,
    Output,
    SessionTable,
    is_ready,
)
from gateway.media.ssrc import SsrcExhausted, SsrcPool

__all__ = [
    "BROADCAST",
    "DOWNLOAD",
    "OPPOSITE",
    "PLAY",
    "PLAYBACK",
    "SDP_TYPE",
    "Leg",
    "LegStats",
    "LocalRelay",
    "LocalSession",
    "MediaError",
    "Output",
    "PortsExhausted",
    "Relay",
    "RelayError",
    "Sdp",
    "SdpError",
    "SessionTable",
    "SsrcExhausted",
    "SsrcPool",
    "StreamStats",
    "Transport",
    "UnknownStream",
    "WorkerRelay",
    "answer_setup",
    "is_ready",
    "make_relay",
    "offer_setup",
    "parse_sdp",
    "settled_transport",
]
