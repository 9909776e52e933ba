"""The SSRC pool (reference §6.4)."""

from __future__ import annotations

import random

import pytest

from gateway.media import SsrcExhausted, SsrcPool


def test_format_live_and_history() -> None:
    pool = SsrcPool("3402000000", rng=random.Random(1))
    live, hist = pool.take(history=False), pool.take(history=True)
    assert live[0] == "0" and hist[0] == "1"
    assert live[1:6] == hist[1:6] == "20000"  # digits 4-8 of the domain
    assert len(live) == len(hist) == 10
    assert live[6:] != hist[6:]  # serials unique across live and history
    assert pool.in_use() == 2


def test_exhaustion_and_release() -> None:
    pool = SsrcPool("3402000000", rng=random.Random(2))
    taken = {pool.take(history=False)[6:] for _ in range(SsrcPool.SIZE)}
    assert len(taken) == SsrcPool.SIZE
    with pytest.raises(SsrcExhausted):
        pool.take(history=False)
    pool.release("0200000042")
    assert pool.take(history=True) == "1200000042"


def test_foreign_ssrcs_are_not_taken_back() -> None:
    pool = SsrcPool("3402000000", rng=random.Random(3))
    mine = pool.take(history=False)
    pool.release("0999990001")  # another domain's
    pool.release("garbage")
    pool.release(mine[:6] + "9999" if mine[6:] != "9999" else mine[:6] + "9998")  # never issued
    assert pool.in_use() == 1
    pool.release(mine)
    pool.release(mine)  # twice is harmless
    assert pool.in_use() == 0


def test_short_domain_refused() -> None:
    with pytest.raises(ValueError, match="8 digits"):
        SsrcPool("3402")
