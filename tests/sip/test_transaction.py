"""RFC 3261 §17 transaction state machines, every timer path, driven by a fake clock."""

from __future__ import annotations

from gateway.sip import Request, Response, make_response, parse
from gateway.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    TimerConfig,
    ack_for,
)
from tests.sip.fakeclock import FakeClock

CFG = TimerConfig(t1=0.5, t2=4.0, t4=5.0)


def request(method: str = "MESSAGE") -> Request:
    msg = parse(
        f"{method} sip:34020000001320000001@192.168.1.64:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.168.1.10:5060;rport;branch=z9hG4bKabc\r\n"
        "From: <sip:34020000002000000001@3402000000>;tag=f1\r\n"
        "To: <sip:34020000001320000001@3402000000>\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: 7 {method}\r\n"
        "Max-Forwards: 70\r\n\r\n".encode()
    )
    assert isinstance(msg, Request)
    return msg


class ClientRig:
    def __init__(self, method: str, reliable: bool = False) -> None:
        self.clock = FakeClock()
        self.sent: list[tuple[float, bytes]] = []
        self.responses: list[Response] = []
        self.timeouts = 0
        self.terminated = False
        self.req = request(method)
        self.txn = ClientTransaction(
            self.req,
            reliable=reliable,
            sched=self.clock,
            cfg=CFG,
            send=lambda d: self.sent.append((round(self.clock.now, 3), d)),
            on_response=self.responses.append,
            on_timeout=self._timeout,
            on_terminated=self._terminated,
        )
        self.txn.start()

    def _timeout(self) -> None:
        self.timeouts += 1

    def _terminated(self, _: object) -> None:
        self.terminated = True

    def reply(self, status: int) -> Response:
        resp = make_response(self.req, status, to_tag="t1")
        self.txn.receive_response(resp)
        return resp

    def send_times(self) -> list[float]:
        return [t for t, _ in self.sent]


def test_non_invite_client_timer_e_doubles_to_t2_then_f_times_out() -> None:
    rig = ClientRig("MESSAGE")
    rig.clock.advance(40)
    # Timer E: 0.5, 1, 2, 4, 4, 4 ... until F at 64*T1 = 32 s.
    assert rig.send_times()[:7] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert rig.send_times()[-1] == 31.5
    assert rig.timeouts == 1 and rig.terminated
    assert rig.txn.state == "terminated"
    assert (32.0, "F") in rig.clock.fired


def test_non_invite_client_provisional_sets_e_to_t2() -> None:
    rig = ClientRig("MESSAGE")
    rig.clock.advance(0.6)  # one retransmission at 0.5
    rig.reply(100)
    assert rig.txn.state == "proceeding"
    rig.clock.advance(10)
    # Next E fires at 1.5 (already armed with 1 s), then every T2 = 4 s.
    assert rig.send_times() == [0.0, 0.5, 1.5, 5.5, 9.5]


def test_non_invite_client_completed_absorbs_then_k() -> None:
    rig = ClientRig("MESSAGE")
    rig.reply(200)
    rig.reply(200)  # retransmitted final: absorbed
    assert [r.status for r in rig.responses] == [200]
    assert rig.txn.state == "completed"
    rig.clock.advance(4.9)
    assert not rig.terminated
    rig.clock.advance(0.2)  # K = T4 = 5 s over UDP
    assert rig.terminated
    assert rig.timeouts == 0
    assert len(rig.sent) == 1  # no retransmission after the final response


def test_non_invite_client_reliable_no_retransmit_k_zero() -> None:
    rig = ClientRig("MESSAGE", reliable=True)
    rig.clock.advance(20)
    assert len(rig.sent) == 1
    rig.reply(404)
    rig.clock.advance(0)
    assert rig.terminated
    rig2 = ClientRig("MESSAGE", reliable=True)
    rig2.clock.advance(33)
    assert rig2.timeouts == 1 and len(rig2.sent) == 1


def test_invite_client_timer_a_doubles_without_cap_and_b_times_out() -> None:
    rig = ClientRig("INVITE")
    rig.clock.advance(40)
    assert rig.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert rig.timeouts == 1 and rig.terminated
    assert (32.0, "B") in rig.clock.fired


def test_invite_client_error_sends_ack_and_waits_d() -> None:
    rig = ClientRig("INVITE")
    rig.reply(180)
    assert rig.txn.state == "proceeding"
    rig.clock.advance(5)
    assert len(rig.sent) == 1  # no retransmission once provisional arrived
    rig.reply(486)
    assert rig.txn.state == "completed"
    ack = parse(rig.sent[-1][1])
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.cseq.seq == 7 and ack.cseq.method == "ACK"
    assert ack.to.tag == "t1"
    assert ack.top_via.branch == "z9hG4bKabc"
    rig.reply(486)  # retransmitted final → ACK again, TU not told twice
    assert len([s for s in rig.sent if s[1].startswith(b"ACK")]) == 2
    assert [r.status for r in rig.responses] == [180, 486]
    rig.clock.advance(31.9)
    assert not rig.terminated
    rig.clock.advance(0.2)  # D = 32 s over UDP
    assert rig.terminated and rig.timeouts == 0


def test_invite_client_2xx_accepted_passes_retransmissions_then_m() -> None:
    rig = ClientRig("INVITE")
    rig.reply(200)
    rig.reply(200)
    assert rig.txn.state == "accepted"
    assert [r.status for r in rig.responses] == [200, 200]  # RFC 6026: TU re-ACKs each
    assert not any(d.startswith(b"ACK") for _, d in rig.sent)  # 2xx ACK is the TU's
    rig.clock.advance(32.1)
    assert rig.terminated and rig.timeouts == 0


def test_invite_client_reliable_d_is_zero() -> None:
    rig = ClientRig("INVITE", reliable=True)
    rig.reply(404)
    rig.clock.advance(0)
    assert rig.terminated
    assert len(rig.sent) == 2  # INVITE + ACK


def test_client_transport_error_reports_timeout() -> None:
    rig = ClientRig("MESSAGE")
    rig.txn.transport_error()
    assert rig.timeouts == 1 and rig.terminated
    assert rig.clock.pending() == []


def test_ack_for_copies_route_and_single_via() -> None:
    req = request("INVITE")
    req.add_header("Route", "<sip:proxy;lr>")
    req.set_header("Via", "SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/UDP b:2;branch=z9hG4bK2")
    ack = ack_for(req, make_response(req, 603, to_tag="x"))
    assert ack.get_headers("Route") == ["<sip:proxy;lr>"]
    assert ack.get_header("Via") == "SIP/2.0/UDP a:1;branch=z9hG4bK1"


class ServerRig:
    def __init__(self, method: str, reliable: bool = False) -> None:
        self.clock = FakeClock()
        self.sent: list[tuple[float, bytes]] = []
        self.terminated = False
        self.timeouts = 0
        self.req = request(method)
        self.txn = ServerTransaction(
            self.req,
            reliable=reliable,
            sched=self.clock,
            cfg=CFG,
            send=lambda d: self.sent.append((round(self.clock.now, 3), d)),
            on_terminated=lambda _: setattr(self, "terminated", True),
            on_timeout=self._timeout,
        )

    def _timeout(self) -> None:
        self.timeouts += 1

    def respond(self, status: int) -> None:
        self.txn.respond(make_response(self.req, status, to_tag="s1"))

    def statuses(self) -> list[int]:
        out = []
        for _, data in self.sent:
            msg = parse(data)
            assert isinstance(msg, Response)
            out.append(msg.status)
        return out


def test_non_invite_server_trying_absorbs_then_completed_resends_then_j() -> None:
    rig = ServerRig("MESSAGE")
    rig.txn.receive_request()  # retransmission in Trying: absorbed
    assert rig.sent == []
    rig.respond(100)
    rig.txn.receive_request()  # Proceeding: last provisional again
    rig.respond(200)
    rig.txn.receive_request()  # Completed: final again
    rig.respond(500)  # TU answering twice: ignored
    assert rig.statuses() == [100, 100, 200, 200]
    rig.clock.advance(31.9)
    assert not rig.terminated
    rig.clock.advance(0.2)  # J = 64*T1
    assert rig.terminated
    assert rig.clock.fired == [(32.0, "J")]


def test_non_invite_server_reliable_terminates_at_once() -> None:
    rig = ServerRig("REGISTER", reliable=True)
    rig.respond(200)
    assert rig.terminated


def test_invite_server_error_g_retransmits_until_h() -> None:
    rig = ServerRig("INVITE")
    rig.respond(100)
    rig.txn.receive_request()
    rig.respond(486)
    rig.clock.advance(40)
    times = [t for t, _ in rig.sent[2:]]
    # G: 0.5, 1, 2, 4, 4 ... capped at T2, until H at 32 s.
    assert times[:6] == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]
    assert times[-1] <= 32.0
    assert rig.timeouts == 1 and rig.terminated
    assert (32.0, "H") in rig.clock.fired


def test_invite_server_ack_confirms_then_i() -> None:
    rig = ServerRig("INVITE")
    rig.respond(404)
    rig.clock.advance(0.6)
    rig.txn.receive_ack()
    assert rig.txn.state == "confirmed"
    n = len(rig.sent)
    rig.txn.receive_request()  # INVITE retransmission in Confirmed: absorbed
    rig.clock.advance(4.9)
    assert len(rig.sent) == n and not rig.terminated
    rig.clock.advance(0.2)  # I = T4
    assert rig.terminated and rig.timeouts == 0


def test_invite_server_2xx_accepted_retransmits_until_ack_then_l() -> None:
    rig = ServerRig("INVITE")
    rig.respond(200)
    rig.clock.advance(1.6)
    assert rig.statuses() == [200, 200, 200]
    rig.txn.receive_ack()
    rig.txn.receive_request()  # absorbed in Accepted
    rig.clock.advance(10)
    assert rig.statuses() == [200, 200, 200]
    rig.clock.advance(22)
    assert rig.terminated
    assert rig.clock.fired[-1] == (32.0, "L")


def test_invite_server_reliable_no_g_and_i_zero() -> None:
    rig = ServerRig("INVITE", reliable=True)
    rig.respond(603)
    rig.clock.advance(5)
    assert len(rig.sent) == 1
    rig.txn.receive_ack()
    assert rig.terminated


def test_timers_follow_a_configured_t1() -> None:
    clock = FakeClock()
    sent: list[float] = []
    timeouts: list[int] = []
    txn = ClientTransaction(
        request("MESSAGE"),
        reliable=False,
        sched=clock,
        cfg=TimerConfig(t1=0.1, t2=0.4, t4=5.0),
        send=lambda d: sent.append(round(clock.now, 3)),
        on_response=lambda r: None,
        on_timeout=lambda: timeouts.append(1),
    )
    txn.start()
    clock.advance(10)
    assert sent[:5] == [0.0, 0.1, 0.3, 0.7, 1.1]  # E: T1 doubling, capped at T2 = 0.4
    assert (6.4, "F") in clock.fired and timeouts == [1]  # F = 64·T1
