"""Media: SDP, the SSRC pool, the RTP relay and the B2BUA sessions between uppers and devices."""
