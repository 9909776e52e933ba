"""Media: the SDP model, RTP and its TCP framings, PS demultiplexing and H.264 access units
(floor 1, also used by the conformance suite), and the bookkeeping of floor 3: the SSRC and port
pools, the RTP relay and the session table (legs, outputs, live-leg sharing, teardown). The SIP
flows that set sessions up are the uplink's (upper→device) and the downlink's (device→upper
broadcast)."""

from gateway.media._relay_ports import bind_udp
from gateway.media.h264 import (
    H264RtpReceiver,
    ParameterSets,
    SpsInfo,
    is_key,
    parse_sps,
    split_annexb,
)
from gateway.media.ps import EsUnit, PsDemuxer, PsRtpReceiver, receiver_for
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
    "EsUnit",
    "H264RtpReceiver",
    "Leg",
    "LegStats",
    "LocalRelay",
    "LocalSession",
    "MediaError",
    "Output",
    "ParameterSets",
    "PortsExhausted",
    "PsDemuxer",
    "PsRtpReceiver",
    "Relay",
    "RelayError",
    "Sdp",
    "SdpError",
    "SessionTable",
    "SpsInfo",
    "SsrcExhausted",
    "SsrcPool",
    "StreamStats",
    "Transport",
    "UnknownStream",
    "WorkerRelay",
    "answer_setup",
    "bind_udp",
    "is_key",
    "is_ready",
    "make_relay",
    "offer_setup",
    "parse_sdp",
    "parse_sps",
    "receiver_for",
    "settled_transport",
    "split_annexb",
]
