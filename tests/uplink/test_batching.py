"""How items are batched for an upper, and the route of a large request: plain calls, no loop,
no sockets (GB/T 28181-2022 Annex M; RFC 3261 §18.1.1)."""

from __future__ import annotations

from gateway.manscdp import CatalogItem
from gateway.uplink.batching import BatchLimits, batches, item_size, udp_batches, udp_budget
from gateway.uplink.sending import Route, route

SIZES = {"a": 30, "b": 30, "big": 500, "c": 30, "d": 30, "e": 30, "f": 30}


def size_of(item: str) -> int:
    return SIZES[item]


def always() -> bool:
    return True


def never() -> bool:
    return False


def test_over_tcp_batches_go_by_item_count() -> None:
    limits = BatchLimits(reliable=True, tcp_items=2, udp_budget=10)
    got = [list(b) for b in batches(["a", "b", "big", "c", "d"], limits, size_of, never)]
    # The byte budget is not a TCP link's concern: the large item goes with its neighbours.
    assert got == [["a", "b"], ["big", "c"], ["d"]]


def test_no_items_still_make_one_empty_message() -> None:
    none: list[str] = []
    for reliable in (True, False):
        limits = BatchLimits(reliable=reliable, tcp_items=50, udp_budget=100)
        assert [list(b) for b in batches(none, limits, size_of, always)] == [[]]


def test_over_udp_batches_go_by_byte_budget() -> None:
    limits = BatchLimits(reliable=False, tcp_items=50, udp_budget=100)
    got = [list(b) for b in batches(["a", "b", "c", "d", "e", "f"], limits, size_of, always)]
    assert got == [["a", "b", "c"], ["d", "e", "f"]]
    assert all(sum(size_of(i) for i in b) <= 100 for b in got)


def test_an_item_exactly_at_the_budget_stays_in_a_udp_message() -> None:
    sizes = {"x": 60, "y": 40, "z": 1}
    got = list(udp_batches(["x", "y", "z"], 100, 50, sizes.__getitem__, never))
    assert got == [["x", "y"], ["z"]]


def test_an_item_larger_than_the_budget_takes_its_neighbours_over_tcp() -> None:
    """While TCP is usable, the message that must go over TCP anyway carries the items around
    the large one, up to ``catalog_batch_tcp_items``; the rest goes by the byte budget."""
    items = ["a", "b", "big", "c", "d", "e", "f"]
    got = list(udp_batches(items, 100, 4, size_of, always))
    assert got == [["a", "b", "big", "c"], ["d", "e", "f"]]


def test_an_item_larger_than_the_budget_goes_alone_and_whole_when_tcp_failed() -> None:
    items = ["a", "b", "big", "c", "d", "e", "f"]
    got = list(udp_batches(items, 100, 4, size_of, never))
    assert got == [["a", "b"], ["big"], ["c", "d", "e"], ["f"]]
    assert list(udp_batches(["big"], 100, 4, size_of, always)) == [["big"]]


def test_whether_tcp_is_usable_is_asked_batch_by_batch() -> None:
    """TCP failing during an answer (between two sends) changes the batches still to come."""
    items = ["a", "b", "c", "d", "big", "e"]
    assert list(udp_batches(items, 100, 50, size_of, always)) == [
        ["a", "b", "c"],
        ["d", "big", "e"],
    ]
    usable = [True]
    gen = udp_batches(items, 100, 50, size_of, lambda: usable[0])
    assert next(gen) == ["a", "b", "c"]
    usable[0] = False  # the first message's TCP attempt failed
    assert list(gen) == [["d"], ["big"], ["e"]]


def test_udp_budget_leaves_room_for_headers_and_envelope() -> None:
    assert udp_budget(1300, 400, 200) < 1300 - 400 - 200
    assert udp_budget(1300, 400, 200) > 600


def test_item_size_counts_bytes_in_the_uppers_charset() -> None:
    item = CatalogItem(device_id="34020000001310000001", name="通道一号", status="ON")
    utf8 = item_size(item, charset="UTF-8", gb2022=False)
    gb = item_size(item, charset="GB2312", gb2022=False)
    assert utf8 - gb == 4  # four CJK characters: three bytes each in UTF-8, two in GB 18030
    longer = CatalogItem(device_id="34020000001310000001", name="通道一号" * 10, status="ON")
    assert item_size(longer, charset="UTF-8", gb2022=False) > utf8


def test_route_of_a_request() -> None:
    small = {"size": 800, "limit": 1300}
    large = {"size": 5000, "limit": 1300}
    for split in (False, True):
        assert route(reliable=False, tcp_usable=True, split=split, **small) is Route.LINK
        assert route(reliable=True, tcp_usable=False, split=split, **large) is Route.LINK
        assert route(reliable=False, tcp_usable=True, split=split, **large) is Route.TCP
    assert route(reliable=False, tcp_usable=False, split=False, **large) is Route.UDP_OVERSIZE
    assert route(reliable=False, tcp_usable=False, split=True, **large) is Route.SPLIT
    assert route(reliable=False, size=1300, limit=1300, tcp_usable=True, split=False) is Route.LINK
