"""Stateful property tests of the RFC 3261 §17 transaction machines (with RFC 6026's Accepted):
hypothesis drives a client or a server transaction, INVITE or not, over UDP or TCP, with any
interleaving of responses, retransmitted requests, ACKs, transport errors and time, and checks
after every step what must always hold, whatever the order. The fixed paths (each timer,
each retransmission schedule) are in ``test_transaction.py``."""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gateway.sip import Response, make_response
from gateway.sip.transaction import ClientTransaction, ServerTransaction, TimerConfig
from tests.sip.fakeclock import FakeClock
from tests.sip.test_transaction import request

CFG = TimerConfig(t1=0.5, t2=4.0, t4=5.0)
# Longest a transaction can live once it has had its final response or given up: timer B/F or
# H/L/M (64·T1), plus I/K (T4) or D (32 s), plus the last retransmission interval.
SETTLE = 64 * CFG.t1 + 32.0 + CFG.t2 + 1
STATUSES = st.sampled_from([100, 180, 183, 200, 202, 302, 404, 486, 500, 603])
STEPS = st.sampled_from([0.1, 0.5, 1.0, 2.0, 4.0, 16.0, 40.0])


class ClientMachine(RuleBasedStateMachine):
    """One client transaction and the TU above it: what the TU hears, what goes on the wire."""

    @initialize(invite=st.booleans(), reliable=st.booleans())
    def start(self, invite: bool, reliable: bool) -> None:
        self.clock = FakeClock()
        self.req = request("INVITE" if invite else "MESSAGE")
        self.invite, self.reliable = invite, reliable
        self.wire: list[tuple[float, str]] = []  # (time, "request" | "ACK")
        self.heard: list[int] = []  # statuses the TU was given
        self.timeouts = 0
        self.terminations = 0
        self.txn = ClientTransaction(
            self.req,
            reliable=reliable,
            sched=self.clock,
            cfg=CFG,
            send=self._sent,
            on_response=lambda r: self.heard.append(r.status),
            on_timeout=self._timeout,
            on_terminated=self._terminated,
        )
        self.txn.start()
        self.final_at: float | None = None  # when the first final response arrived

    def _sent(self, data: bytes) -> None:
        assert self.terminations == 0, "sent after termination"
        self.wire.append((self.clock.now, "ACK" if data.startswith(b"ACK ") else "request"))

    def _timeout(self) -> None:
        self.timeouts += 1

    def _terminated(self, _: Any) -> None:
        self.terminations += 1

    @rule(status=STATUSES)
    def response(self, status: int) -> None:
        resp = make_response(self.req, status, to_tag="t1")
        if status >= 200 and self.final_at is None and self.txn.state != "terminated":
            self.final_at = self.clock.now
        self.txn.receive_response(resp)

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def transport_error(self) -> None:
        self.txn.transport_error()

    @invariant()
    def the_tu_hears_one_outcome(self) -> None:
        finals = [s for s in self.heard if s >= 200]
        assert self.timeouts <= 1
        # A timeout (timer B/F, or a transport error) and a final response exclude each other.
        assert not (self.timeouts and finals), (finals, self.timeouts)
        if self.invite:
            # 2xx may come again (Accepted, for the TU's ACK); never mixed with another final.
            assert len({s >= 300 for s in finals}) <= 1, finals
            assert sum(1 for s in finals if s >= 300) <= 1, finals
        else:
            assert len(finals) <= 1, finals
        # Nothing provisional reaches the TU after a final.
        if finals:
            first = self.heard.index(finals[0])
            assert all(s >= 200 for s in self.heard[first:]), self.heard

    @invariant()
    def the_request_is_not_resent_after_a_final(self) -> None:
        if self.final_at is not None:
            late = [t for t, what in self.wire if what == "request" and t > self.final_at]
            assert not late, (self.final_at, late)
        if self.reliable:
            assert [w for _, w in self.wire].count("request") == 1  # no retransmission on TCP

    @invariant()
    def acks_only_for_a_non_2xx_final_of_an_invite(self) -> None:
        acks = [t for t, what in self.wire if what == "ACK"]
        if acks:
            assert self.invite and any(s >= 300 for s in self.heard), self.heard

    @invariant()
    def terminated_once_and_for_good(self) -> None:
        assert self.terminations <= 1
        assert (self.terminations == 1) == (self.txn.state == "terminated")

    @invariant()
    def over_udp_retransmissions_are_bounded(self) -> None:
        # Timer A doubles with no cap; E doubles to T2: within 64·T1 at most 11 copies either way.
        assert [w for _, w in self.wire].count("request") <= 11

    def teardown(self) -> None:
        # Liveness: once time has passed, the transaction is over, except for an INVITE left in
        # Proceeding (RFC 3261 leaves that to the TU).
        self.clock.advance(SETTLE)
        if not (self.invite and self.txn.state == "proceeding"):
            assert self.txn.state == "terminated", self.txn.state


class ServerMachine(RuleBasedStateMachine):
    """One server transaction and its TU's answers."""

    @initialize(invite=st.booleans(), reliable=st.booleans())
    def start(self, invite: bool, reliable: bool) -> None:
        self.clock = FakeClock()
        self.req = request("INVITE" if invite else "MESSAGE")
        self.invite, self.reliable = invite, reliable
        self.wire: list[tuple[float, int]] = []  # (time, status sent)
        self.terminations = 0
        self.timeouts = 0
        self.txn = ServerTransaction(
            self.req,
            reliable=reliable,
            sched=self.clock,
            cfg=CFG,
            send=self._sent,
            on_terminated=self._terminated,
            on_timeout=self._timeout,
        )
        self.txn.receive_request()
        self.final: int | None = None  # the first final the TU gave (the one that counts)
        self.acked = False

    def _sent(self, data: bytes) -> None:
        assert self.terminations == 0, "sent after termination"
        self.wire.append((self.clock.now, int(data[8:11])))

    def _terminated(self, _: Any) -> None:
        self.terminations += 1

    def _timeout(self) -> None:
        self.timeouts += 1

    @rule(status=STATUSES)
    def tu_answers(self, status: int) -> None:
        if self.final is None and status >= 200 and self.txn.state in ("trying", "proceeding"):
            self.final = status
        resp: Response = make_response(self.req, status, to_tag="t2")
        self.txn.respond(resp)

    @rule()
    def request_again(self) -> None:
        self.txn.receive_request()

    @precondition(lambda self: self.invite)
    @rule()
    def ack(self) -> None:
        if self.final is not None and self.txn.state == "completed":
            self.acked = True  # an ACK that counts: before timer H gave up
        self.txn.receive_ack()

    @rule(seconds=STEPS)
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def one_final_response_and_only_that_one_again(self) -> None:
        finals = [s for _, s in self.wire if s >= 200]
        if finals:
            assert set(finals) == {self.final}, (finals, self.final)
            first = next(i for i, (_, s) in enumerate(self.wire) if s >= 200)
            assert all(s == self.final for _, s in self.wire[first:]), self.wire

    @invariant()
    def no_response_before_the_tu_gave_one(self) -> None:
        # Trying absorbs retransmissions until the TU answers (§17.2.2): nothing invented.
        assert len(self.wire) == 0 or self.txn.last_response is not None

    @invariant()
    def timer_h_only_for_an_unacknowledged_non_2xx(self) -> None:
        assert self.timeouts <= 1
        if self.timeouts:
            assert self.invite and self.final is not None and self.final >= 300
            assert not self.acked

    @invariant()
    def terminated_once_and_for_good(self) -> None:
        assert self.terminations <= 1
        assert (self.terminations == 1) == (self.txn.state == "terminated")

    def teardown(self) -> None:
        self.clock.advance(SETTLE)
        if self.final is not None:
            assert self.txn.state == "terminated", self.txn.state
        else:  # without a final response the TU still owns it (the core's guard answers it)
            assert self.txn.state in ("trying", "proceeding"), self.txn.state


TestClientTransactionStates = ClientMachine.TestCase
TestClientTransactionStates.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestServerTransactionStates = ServerMachine.TestCase
TestServerTransactionStates.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
