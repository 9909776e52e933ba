"""Lock-outs after wrong passwords (``gateway.downlink.lockout``), with the time passed in."""

from __future__ import annotations

import pytest

from gateway.downlink.lockout import FailureLimits, Locked

D = "34020000001320000001"
E = "34020000001320000002"
A, B = "198.51.100.7", "203.0.113.9"


def limits(**kw: float) -> FailureLimits:
    cfg: dict[str, float] = {
        "max_failures_per_device": 5,
        "max_failures_per_address": 20,
        "failure_window": 900.0,
        "lockout_seconds": 900.0,
        "max_entries": 1000,
    }
    cfg.update(kw)
    return FailureLimits(
        max_failures_per_device=int(cfg["max_failures_per_device"]),
        max_failures_per_address=int(cfg["max_failures_per_address"]),
        failure_window=cfg["failure_window"],
        lockout_seconds=cfg["lockout_seconds"],
        max_entries=int(cfg["max_entries"]),
    )


def test_guesses_for_one_device_lock_it_against_the_guessing_address_only() -> None:
    lim = limits()
    now = 1000.0
    for i in range(4):
        assert lim.check(D, A, now + i) is None
        assert lim.failed(D, A, now + i) == []
    assert lim.check(D, A, now + 4) is None
    started = lim.failed(D, A, now + 4)  # the fifth
    assert [(s.kind, s.key, s.failures) for s in started] == [("device", D, 5)]
    assert lim.check(D, A, now + 5) == Locked("device", 899)
    assert lim.check(D, A, now + 903.5) == Locked("device", 1)  # never 0 while locked
    # The same device from an address that never failed for it is not locked out...
    assert lim.check(D, B, now + 5) is None
    # ...nor is another device from the guessing address (that is the address limit's job).
    assert lim.check(E, A, now + 5) is None
    # Over: the count starts again at zero.
    assert lim.check(D, A, now + 904) is None
    assert lim.failed(D, A, now + 904) == []


def test_a_distributed_guesser_gets_one_failure_per_address_while_the_device_is_locked() -> None:
    lim = limits()
    for i in range(5):
        lim.failed(D, f"192.0.2.{i}", 100.0)
    for i in range(5, 50):
        address = f"192.0.2.{i}"
        assert lim.check(D, address, 101.0) is None  # a clean address gets its one try
        assert lim.failed(D, address, 101.0) == []  # no second lock-out, no longer one
        assert lim.check(D, address, 101.0) == Locked("device", 899)


def test_address_limit_locks_everything_from_that_address() -> None:
    lim = limits(max_failures_per_address=6)
    ids = [f"3402000000132000{i:04d}" for i in range(6)]
    started = []
    for device_id in ids:
        started += lim.failed(device_id, A, 10.0)
    assert [(s.kind, s.key) for s in started] == [("address", A)]
    assert lim.check(E, A, 11.0) == Locked("address", 899)
    assert lim.check(None, A, 11.0) == Locked("address", 899)  # even with a broken ID
    assert lim.check(E, B, 11.0) is None


def test_a_device_registered_from_a_locked_address_is_held_by_its_own_lock_only() -> None:
    # Four misconfigured cameras behind one NAT lock its address; a working camera registered
    # from that address keeps refreshing, until it (or a guesser for its ID there) fails.
    lim = limits()
    started = []
    for n in range(4):
        for _ in range(5):
            started += lim.failed(f"3402000000132000{n + 10:04d}", A, 10.0)
    assert ("address", A) in [(s.kind, s.key) for s in started]
    assert lim.check(D, A, 11.0) == Locked("address", 899)
    assert lim.check(D, A, 11.0, registered_here=True) is None
    assert lim.check(E, A, 11.0) == Locked("address", 899)  # not registered: locked
    assert lim.check(None, A, 11.0) == Locked("address", 899)
    for _ in range(5):
        lim.failed(D, A, 12.0)
    assert lim.check(D, A, 13.0, registered_here=True) == Locked("device", 899)


def test_failures_outside_the_window_do_not_add_up() -> None:
    lim = limits(failure_window=60.0)
    for i in range(20):
        assert lim.failed(D, A, i * 61.0) == []  # one a minute and a bit: never five in 60 s
        assert lim.check(D, A, i * 61.0 + 1) is None


def test_success_clears_only_that_address_for_that_device() -> None:
    lim = limits(max_failures_per_device=2)
    lim.failed(D, A, 0.0)
    lim.failed(D, B, 0.0)  # B is the real device with a typo; D is now locked against A and B
    assert lim.check(D, B, 1.0) is not None
    lim.succeeded(D, B)  # (the right password arrived on a nonce taken before the lock)
    assert lim.check(D, B, 1.0) is None
    assert lim.check(D, A, 1.0) == Locked("device", 899)


@pytest.mark.timeout(60)
def test_tables_stay_bounded_and_expire() -> None:
    lim = limits(max_entries=64)
    for i in range(5000):
        lim.failed(f"3402000000132{i:07d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 1.0)
    assert len(lim.addresses) <= 64 and len(lim.devices) <= 64 and len(lim.tried) <= 64
    lim.prune(1.0 + 900 + 900)
    assert lim.size() == 0
