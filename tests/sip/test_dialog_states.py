"""A stateful property test of the two ends of an INVITE dialog (RFC 3261 §12): hypothesis
builds the dialog from an INVITE and its 2xx, then lets either end send in-dialog requests,
retransmits, reorders, ACKs and requests from strangers, in any order, and checks what §12.2
says must hold. The socket-level flows (ACK of the 2xx, CANCEL, BYE) are in
``test_dialog.py``."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from gateway.sip import Dialog, Peer, Request, make_response, parse
from gateway.sip.message import Response

UAC_PEER = Peer("udp", "192.168.1.10", 5060)  # where the UAC is, as the UAS sees it
UAS_PEER = Peer("udp", "192.168.1.64", 5060)
METHODS = st.sampled_from(["INFO", "BYE", "INVITE", "MESSAGE", "UPDATE"])


def invite(cseq: int) -> Request:
    msg = parse(
        "INVITE sip:34020000001310000001@192.168.1.64:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.168.1.10:5060;rport;branch=z9hG4bKinv\r\n"
        "From: <sip:34020000002000000001@3402000000>;tag=uac1\r\n"
        "To: <sip:34020000001310000001@3402000000>\r\n"
        "Call-ID: dialog-1@192.168.1.10\r\n"
        f"CSeq: {cseq} INVITE\r\n"
        "Contact: <sip:34020000002000000001@192.168.1.10:5060>\r\n"
        "Max-Forwards: 70\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


def over_the_wire(req: Request) -> Request:
    """What the far end reads: the request serialised and parsed again."""
    msg = parse(req.to_bytes())
    assert isinstance(msg, Request)
    return msg


class DialogPair(RuleBasedStateMachine):
    """Both ends of one dialog, and what each has sent the other."""

    sent = Bundle("sent")  # (sender, request) pairs, to be delivered again or late

    @initialize(cseq=st.integers(min_value=1, max_value=2**31 - 100))
    def established(self, cseq: int) -> None:
        inv = invite(cseq)
        answer: Response = make_response(inv, 200, to_tag="uas1")
        answer.add_header("Contact", "<sip:34020000001310000001@192.168.1.64:5060>")
        self.uas = Dialog.as_uas(over_the_wire(inv), "uas1", UAC_PEER)
        self.uac = Dialog.as_uac(inv, answer, UAS_PEER)
        self.accepted: dict[str, list[int]] = {"uac": [], "uas": []}  # CSeqs each end took
        self.last_local = {"uac": self.uac.local_cseq, "uas": self.uas.local_cseq}

    def _ends(self, sender: str) -> tuple[Dialog, Dialog, Peer]:
        """(sending end, receiving end, the sender's address as the receiver sees it)."""
        if sender == "uac":
            return self.uac, self.uas, UAC_PEER
        return self.uas, self.uac, UAS_PEER

    def _deliver(self, sender: str, req: Request) -> bool:
        _, receiver, peer = self._ends(sender)
        got = over_the_wire(req)
        assert receiver.matches(got, peer), f"{sender}'s {req.method} not matched"
        taken = receiver.accepts(got)
        if taken and got.method != "ACK":
            self.accepted["uas" if sender == "uac" else "uac"].append(got.cseq.seq)
        return taken

    @rule(target=sent, sender=st.sampled_from(["uac", "uas"]), method=METHODS)
    def send_new(self, sender: str, method: str) -> tuple[str, Request]:
        end, _, _ = self._ends(sender)
        req = end.request(method)
        assert req.cseq.seq == self.last_local[sender] + 1  # §12.2.1.1: one more each time
        self.last_local[sender] = req.cseq.seq
        assert self._deliver(sender, req), "a new in-dialog request in order was refused"
        return sender, req

    @rule(item=sent)
    def retransmitted_or_late(self, item: tuple[str, Request]) -> None:
        # The same request again (a retransmission), or one overtaken by a newer: out of order.
        sender, req = item
        assert not self._deliver(sender, req), "an old CSeq was taken again"

    @rule()
    def uac_acks(self) -> None:
        ack = self.uac.ack()
        assert ack.cseq.seq == self.uac.invite_cseq  # §13.2.2.4: the INVITE's CSeq
        assert self._deliver("uac", ack)  # an ACK is never refused as out of order

    @rule(
        sender=st.sampled_from(["uac", "uas"]),
        flaw=st.sampled_from(["host", "call-id", "from-tag", "to-tag", "own"]),
    )
    def a_stranger_is_not_matched(self, sender: str, flaw: str) -> None:
        end, receiver, peer = self._ends(sender)
        req = over_the_wire(end._build("INFO", 2**31 - 1, b"", None, (), None))
        if flaw == "host":
            peer = Peer("udp", "10.0.0.99", peer.port)
        elif flaw == "call-id":
            req.set_header("Call-ID", "other@10.0.0.99")
        elif flaw == "from-tag":
            req.set_header("From", str(req.get_header("From")).replace("tag=", "tag=x"))
        elif flaw == "to-tag":
            req.set_header("To", str(req.get_header("To")).replace("tag=", "tag=x"))
        else:  # an end's own request looped back to it: tags the wrong way round
            receiver = end
        assert not receiver.matches(req, peer), flaw

    @invariant()
    def each_end_takes_requests_in_order(self) -> None:
        for seqs in self.accepted.values():
            assert seqs == sorted(set(seqs)), seqs

    @invariant()
    def the_ends_agree_on_the_dialog(self) -> None:
        uac, uas = self.uac, self.uas
        assert uac.call_id == uas.call_id
        assert (uac.local_tag, uac.remote_tag) == (uas.remote_tag, uas.local_tag)
        assert uac.target == "sip:34020000001310000001@192.168.1.64:5060"  # the 2xx's Contact
        assert uas.target == "sip:34020000002000000001@192.168.1.10:5060"  # the INVITE's


TestDialogStates = DialogPair.TestCase
TestDialogStates.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
