"""Digest (RFC 2617): the reference's vectors, both qop forms, stale nonces, nc replay."""

from __future__ import annotations

import pytest

from gateway.sip.digest import Credentials, DigestClient, DigestServer, Verdict, compute_response
from gateway.sip.headers import parse_auth_params

URI = "sip:34020000002000000001@3402000000"
USER = "34020000001320000001"


def test_reference_vector_without_qop() -> None:
    assert (
        compute_response(
            username=USER,
            realm="3402000000",
            password="12345678",
            method="REGISTER",
            uri=URI,
            nonce="9bd055b1c0d5c8a7",
        )
        == "399ebdaa005171c436dc1b8bfbb5f042"
    )


def test_reference_vector_with_qop() -> None:
    assert (
        compute_response(
            username=USER,
            realm="3402000000",
            password="12345678",
            method="REGISTER",
            uri=URI,
            nonce="9bd055b1c0d5c8a7",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "84c690570a1c85214bd55c5b5df6cb2a"
    )


def test_rfc2617_section_3_5_vector() -> None:
    # The RFC's own example (qop=auth, GET).
    assert (
        compute_response(
            username="Mufasa",
            realm="testrealm@host.com",
            password="Circle Of Life",
            method="GET",
            uri="/dir/index.html",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
            qop="auth",
            nc="00000001",
            cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _answer(
    server: DigestServer, password: str = "12345678", *, qop: bool | None = None
) -> Credentials:
    _, challenge = parse_auth_params(server.challenge())
    if qop is False:
        challenge.pop("qop", None)
    header = DigestClient(USER, password).authorization(challenge, "REGISTER", URI)
    creds = Credentials.from_params(*parse_auth_params(header))
    assert creds is not None
    return creds


def test_server_accepts_both_forms_and_refuses_wrong_password() -> None:
    clock = Clock()
    for qop in (True, False):
        server = DigestServer("3402000000", qop=qop, clock=clock)
        assert ('qop="auth"' in server.challenge()) is qop
        assert server.verify(_answer(server), "REGISTER", "12345678") is Verdict.OK
        assert (
            server.verify(_answer(server, "wrong"), "REGISTER", "12345678") is Verdict.BAD_PASSWORD
        )
    # A client may answer a qop challenge the RFC 2069 way; devices do.
    server = DigestServer("3402000000", qop=True, clock=clock)
    assert server.verify(_answer(server, qop=False), "REGISTER", "12345678") is Verdict.OK


def test_stale_nonce_is_detected_before_the_password() -> None:
    clock = Clock()
    server = DigestServer("3402000000", nonce_ttl=30, clock=clock)
    creds = _answer(server)
    clock.now += 31
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.STALE
    assert "stale=true" in server.challenge(stale=True)


def test_forged_or_foreign_nonce_is_unknown() -> None:
    clock = Clock()
    server = DigestServer("3402000000", clock=clock)
    other = DigestServer("3402000000", clock=clock)  # another secret, e.g. before a restart
    assert server.verify(_answer(other), "REGISTER", "12345678") is Verdict.UNKNOWN_NONCE
    creds = _answer(server)
    fields = {f: getattr(creds, f) for f in Credentials.__slots__}
    fields["nonce"] = ("0" if creds.nonce[0] != "0" else "1") + creds.nonce[1:]
    assert server.verify(Credentials(**fields), "REGISTER", "12345678") is Verdict.UNKNOWN_NONCE


def test_replayed_nonce_count_is_refused() -> None:
    server = DigestServer("3402000000", clock=Clock())
    creds = _answer(server)
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.OK
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.REPLAY
    # A higher nc on the same nonce is a legitimate reuse.
    fields = {f: getattr(creds, f) for f in Credentials.__slots__}
    fields["nc"] = "00000002"
    fields["response"] = compute_response(
        username=USER,
        realm=creds.realm,
        password="12345678",
        method="REGISTER",
        uri=URI,
        nonce=creds.nonce,
        qop="auth",
        nc="00000002",
        cnonce=creds.cnonce,
    )
    assert server.verify(Credentials(**fields), "REGISTER", "12345678") is Verdict.OK


def test_unsupported_and_malformed() -> None:
    server = DigestServer("3402000000", clock=Clock())
    creds = _answer(server)
    fields = {f: getattr(creds, f) for f in Credentials.__slots__}
    assert (
        server.verify(Credentials(**{**fields, "algorithm": "SHA-256"}), "REGISTER", "x")
        is Verdict.UNSUPPORTED
    )
    assert (
        server.verify(Credentials(**{**fields, "nc": "zz"}), "REGISTER", "x") is Verdict.MALFORMED
    )
    assert (
        server.verify(Credentials(**{**fields, "qop": "auth-int"}), "REGISTER", "x")
        is Verdict.UNSUPPORTED
    )
    assert Credentials.from_params("Basic", {"username": "a"}) is None
    assert Credentials.from_params("Digest", {"username": "a"}) is None


def test_client_counts_nc_per_nonce() -> None:
    client = DigestClient(USER, "12345678")
    challenge = {"realm": "3402000000", "nonce": "abc", "qop": "auth"}
    first = parse_auth_params(client.authorization(challenge, "REGISTER", URI))[1]
    second = parse_auth_params(client.authorization(challenge, "REGISTER", URI))[1]
    assert (first["nc"], second["nc"]) == ("00000001", "00000002")
    third = parse_auth_params(client.authorization({**challenge, "nonce": "new"}, "REGISTER", URI))[
        1
    ]
    assert third["nc"] == "00000001"


def test_wrong_realm_is_refused() -> None:
    server = DigestServer("3402000000", clock=Clock())
    _, challenge = parse_auth_params(server.challenge())
    header = DigestClient(USER, "12345678").authorization(
        {**challenge, "realm": "evil"}, "REGISTER", URI
    )
    creds = Credentials.from_params(*parse_auth_params(header))
    assert creds is not None
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.WRONG_REALM


def test_answer_without_qop_is_single_use() -> None:
    server = DigestServer("3402000000", qop=False, clock=Clock())
    creds = _answer(server)
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.OK
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.REPLAY


def test_non_ascii_values_get_a_verdict_not_an_exception() -> None:
    server = DigestServer("3402000000", clock=Clock())
    creds = _answer(server)
    fields = {f: getattr(creds, f) for f in Credentials.__slots__}
    bad_nonce = Credentials(**{**fields, "nonce": "摄" * 44})
    assert server.verify(bad_nonce, "REGISTER", "12345678") is Verdict.UNKNOWN_NONCE
    bad_response = Credentials(**{**fields, "response": "摄像机"})
    assert server.verify(bad_response, "REGISTER", "12345678") is Verdict.BAD_PASSWORD


def test_a_wrong_answer_uses_up_its_nonce() -> None:
    """Issue 13 item 3: 6,000 guesses on one nonce, then the right password on it, was accepted.
    The nonce's state is decided before the password, so the answer says nothing about it."""
    for qop in (True, False):
        server = DigestServer("3402000000", qop=qop, clock=Clock())
        wrong = _answer(server, "87654321")
        assert server.verify(wrong, "REGISTER", "12345678") is Verdict.BAD_PASSWORD
        fields = {f: getattr(wrong, f) for f in Credentials.__slots__}
        fields["response"] = compute_response(
            username=USER,
            realm=wrong.realm,
            password="12345678",
            method="REGISTER",
            uri=URI,
            nonce=wrong.nonce,
            qop=wrong.qop,
            nc=wrong.nc,
            cnonce=wrong.cnonce,
        )
        right = Credentials(**fields)
        assert server.verify(right, "REGISTER", "12345678") is Verdict.USED_UP
        assert server.verify(wrong, "REGISTER", "12345678") is Verdict.USED_UP
        assert server.verify(_answer(server), "REGISTER", "12345678") is Verdict.OK


def test_a_replay_is_refused_before_the_password_is_checked() -> None:
    server = DigestServer("3402000000", clock=Clock())
    creds = _answer(server)
    assert server.verify(creds, "REGISTER", "12345678") is Verdict.OK
    # Same nonce and nc with a guessed password: REPLAY whatever the guess, so no oracle, and
    # the nonce is not burned for the client that owns it.
    assert server.verify(creds, "REGISTER", "another guess") is Verdict.REPLAY


@pytest.mark.timeout(60)
def test_remembered_nonces_are_bounded_and_forgetting_reopens_none() -> None:
    clock = Clock()
    server = DigestServer("3402000000", clock=clock, max_nonces=8)
    burned = []
    for _ in range(50):
        clock.now += 0.01
        wrong = _answer(server, "guess")
        assert server.verify(wrong, "REGISTER", "12345678") is Verdict.BAD_PASSWORD
        burned.append(wrong)
    assert len(server._nc_seen) <= 8
    for creds in burned:  # forgotten ones are stale, remembered ones used up: none is open
        assert server.verify(creds, "REGISTER", "guess") in (Verdict.STALE, Verdict.USED_UP)
    clock.now += 0.01
    assert server.verify(_answer(server), "REGISTER", "12345678") is Verdict.OK


def test_supports_only_md5_with_auth_or_no_qop() -> None:
    server = DigestServer("3402000000", clock=Clock())
    creds = _answer(server)
    fields = {f: getattr(creds, f) for f in Credentials.__slots__}
    assert server.supports(creds)
    assert server.supports(Credentials(**{**fields, "algorithm": "md5"}))
    assert server.supports(Credentials(**{**fields, "algorithm": None, "qop": None}))
    for algorithm in ("MD5-sess", "SHA-256", "SHA-512-256", "SHA-256-sess"):
        assert not server.supports(Credentials(**{**fields, "algorithm": algorithm}))
    assert not server.supports(Credentials(**{**fields, "qop": "auth-int"}))


def test_a_nonce_answers_only_from_the_host_it_was_issued_to() -> None:
    # A guesser fetches challenges at its own address and answers them with a forged source:
    # the nonce does not match the forged host, so no password is looked at, nothing burns.
    server = DigestServer("3402000000", clock=Clock())
    _, challenge = parse_auth_params(server.challenge(bind="192.0.2.7"))
    assert server.check_nonce(challenge["nonce"], bind="192.0.2.7") is Verdict.OK
    assert server.check_nonce(challenge["nonce"], bind="192.0.2.8") is Verdict.UNKNOWN_NONCE
    assert server.check_nonce(challenge["nonce"]) is Verdict.UNKNOWN_NONCE  # bound to nobody

    def answer(password: str) -> Credentials:
        header = DigestClient(USER, password).authorization(challenge, "REGISTER", URI)
        creds = Credentials.from_params(*parse_auth_params(header))
        assert creds is not None
        return creds

    for host in ("192.0.2.8", "2001:db8::7", ""):
        wrong = server.verify(answer("wrong"), "REGISTER", "12345678", bind=host)
        assert wrong is Verdict.UNKNOWN_NONCE
    # The nonce was not used up by those: its rightful host still answers on it.
    assert server.verify(answer("12345678"), "REGISTER", "12345678", bind="192.0.2.7") is (
        Verdict.OK
    )


def test_prune_forgets_expired_nonces_without_a_new_answer() -> None:
    # The registrar's periodic check calls prune(), so the nonces of the last burst of
    # registrations do not stay in memory until the next answer arrives.
    clock = Clock()
    server = DigestServer("3402000000", clock=clock, nonce_ttl=10.0)
    for _ in range(5):
        assert server.verify(_answer(server), "REGISTER", "12345678") is Verdict.OK
    assert len(server._nc_seen) == 5
    clock.now += 5.0  # within the TTL: kept
    server.prune()
    assert len(server._nc_seen) == 5
    clock.now += 6.0  # past it
    server.prune()
    assert server._nc_seen == {}
