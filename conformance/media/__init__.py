"""Media of the simulated peers: an H.264 clip, PS packing, RTP and RTP/TCP framing, decoding,
and asyncio sender/receiver legs (GB/T 28181 Annex C and D; reference §6.3–6.6)."""
