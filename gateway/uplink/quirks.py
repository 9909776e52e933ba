"""What one upper platform does that the standard does not ask for, counted (issue 15).

Real city platforms bend the rules in a few known ways. Where the standard allows it and it is
safe the gateway copes (RFC 3261 §8.2: a UAS checks what it needs, not everything a UAC must
write); where it forbids it, the gateway refuses cleanly. Either way each occurrence is noted
here, per upper: :attr:`UpperQuirks.counts` (quirk name → times seen) is the per-upper record a
status page or the HTTP API can show, ``uplink.quirk.<name>`` the metric, and the first time an
upper shows a quirk is logged (``uplink.quirk``, naming it) at warning level, later times at
debug. The names are the fixed set :data:`QUIRKS`, so what a peer can make this hold is bounded.
"""

from __future__ import annotations

from typing import Any

from gateway.metrics import Metrics

QUIRKS = {
    # The 200 to our REGISTER has no To tag / no Contact (RFC 3261 §8.2.6.2, §10.3 step 8):
    # registered all the same, for the Expires header's time (else what we asked for).
    "register_ok_without_to_tag": "the 200 to REGISTER has no To tag",
    "register_ok_without_contact": "the 200 to REGISTER lists no Contact",
    # Requests without Max-Forwards (a UAC MUST, RFC 3261 §8.1.1.6): served, it is a proxy's
    # loop guard (§16.3) and the gateway is the endpoint of every request it serves.
    "no_max_forwards": "requests without Max-Forwards",
    # An in-dialog BYE whose CSeq is not above the last one (the INVITE's): the session ends.
    "bye_cseq_not_above": "BYE with a CSeq not above the dialog's last",
    # A CSeq whose method is not the request line's (``CSeq: 2 Info`` on an INFO): 400.
    "cseq_method_mismatch": "CSeq method differs from the request line's (400)",
    # 500 to a REGISTER with a new Call-ID while it holds our registration under the old one:
    # the gateway goes back to the old Call-ID.
    "register_500_new_call_id": "500 to a REGISTER with a new Call-ID",
    # Requests over UDP from an upper we registered to over TCP: served.
    "request_over_other_transport": "requests over UDP while registered over TCP",
}


class UpperQuirks:
    """The quirks one upper showed, with how often."""

    __slots__ = ("counts", "log", "metrics")

    def __init__(self, metrics: Metrics, log: Any) -> None:
        self.metrics = metrics
        self.log = log
        self.counts: dict[str, int] = {}

    def note(self, quirk: str, **detail: Any) -> None:
        """One occurrence of ``quirk`` (a key of :data:`QUIRKS`)."""
        assert quirk in QUIRKS, quirk
        seen = self.counts.get(quirk, 0) + 1
        self.counts[quirk] = seen
        self.metrics.inc(f"uplink.quirk.{quirk}")
        if seen == 1:
            self.log.warning("uplink.quirk", quirk=quirk, what=QUIRKS[quirk], **detail)
        else:
            self.log.debug("uplink.quirk", quirk=quirk, seen=seen, **detail)

    def seen(self, quirk: str) -> int:
        return self.counts.get(quirk, 0)
