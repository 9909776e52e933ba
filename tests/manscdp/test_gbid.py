"""GB IDs and civil codes (GB/T 28181-2022 Appendix E): parsing, catalog item kinds, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.manscdp import (
    GbId,
    gbid,
    is_civil_code,
    is_gb_id,
    item_kind,
    make_gb_id,
    parse_gb_id,
    type_code,
)


def test_parse_channel_id() -> None:
    g = parse_gb_id("34020000001310000001")
    assert g == GbId(centre="34020000", industry="00", type_code=131, network=0, serial="000001")
    assert (g.province, g.city, g.district, g.domain) == ("34", "3402", "340200", "3402000000")
    assert str(g) == "34020000001310000001"


def test_parse_keeps_every_segment() -> None:
    g = parse_gb_id("11010812052156789012")
    assert (g.centre, g.industry, g.type_code, g.network, g.serial) == (
        "11010812",
        "05",
        215,
        6,
        "789012",
    )
    assert (g.province, g.city, g.district, g.domain) == ("11", "1101", "110108", "1101081205")


BAD_IDS = [
    "",
    "3402000000131000000",  # 19 digits
    "340200000013100000012",  # 21 digits
    "3402000000131000000A",
    "34020000-01310000001",
    " 3402000000131000000",
    "3402000000131000000²",  # superscript two: str.isdigit() says yes
    "３４０２００００００１３１００００００１",  # full-width digits
    "340200000013100000٠1",  # Arabic-Indic zero
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_gb_id(bad)
    assert not is_gb_id(bad)
    assert type_code(bad) is None


def test_is_gb_id() -> None:
    assert is_gb_id("34020000002000000001")
    assert not is_gb_id(None)
    assert not is_gb_id("3402000000")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("34", True),
        ("3402", True),
        ("340200", True),
        ("34020001", True),
        ("3", False),
        ("340", False),
        ("3402000", False),
        ("3402000000", False),
        ("34020000001310000001", False),
        ("", False),
        (None, False),
        ("3²", False),
        ("３４", False),
        ("34a2", False),
    ],
)
def test_is_civil_code(code: str | None, expected: bool) -> None:
    assert is_civil_code(code) is expected


def test_type_code() -> None:
    assert type_code("34020000002000000001") == 200
    assert type_code("34020000001320000001") == 132
    assert type_code("34020000000010000001") == 1
    assert type_code("340200") is None
    assert type_code(None) is None


@pytest.mark.parametrize(
    ("device_id", "kind"),
    [
        ("34", "region"),
        ("3402", "region"),
        ("340200", "region"),
        ("34020001", "region"),
        ("34020000002000000001", "system"),
        ("34020000002150000001", "business_group"),
        ("34020000002160000001", "virtual_org"),
        ("34020000001110000001", "device"),  # DVR
        ("34020000001180000001", "device"),  # NVR
        ("34020000001200000001", "device"),  # 2022: online collection system
        ("34020000001250000001", "device"),  # security inspection
        ("34020000001300000001", "device"),  # HVR
        ("34020000001190000001", "channel"),  # reserved
        ("34020000001260000001", "channel"),  # extension slot
        ("34020000001310000001", "channel"),  # camera
        ("34020000001320000001", "channel"),  # IPC
        ("34020000001340000001", "channel"),  # alarm input
        ("34020000001430000001", "channel"),  # credential reader
        ("34020000002090000001", "channel"),  # access gateway: not a catalog container
        ("3402000000", "channel"),  # 10 digits: neither region nor ID
        ("camera-1", "channel"),
        ("", "channel"),
    ],
)
def test_item_kind(device_id: str, kind: str) -> None:
    assert item_kind(device_id) == kind


def test_type_sets() -> None:
    main = {111, 112, 113, 114, 115, 116, 117, 118, 120, 121, 122, 123, 124, 125, 130}
    assert main == gbid.MAIN_DEVICE_TYPES
    assert min(gbid.CHANNEL_TYPES) == 131
    assert max(gbid.CHANNEL_TYPES) == 143
    assert len(gbid.CHANNEL_TYPES) == 13
    assert not gbid.MAIN_DEVICE_TYPES & gbid.CHANNEL_TYPES
    assert (gbid.SYSTEM, gbid.BUSINESS_GROUP, gbid.VIRTUAL_ORG) == (200, 215, 216)


def test_make_gb_id() -> None:
    assert make_gb_id("34020000", "00", 200, 0, 1) == "34020000002000000001"
    assert make_gb_id("34020000", "00", 132, 0, 999_999) == "34020000001320999999"
    assert make_gb_id("11010800", "01", 1, 7, 0) == "11010800010017000000"


@pytest.mark.parametrize(
    ("centre", "industry", "type_", "network", "serial"),
    [
        ("3402000", "00", 132, 0, 1),
        ("340200000", "00", 132, 0, 1),
        ("3402000A", "00", 132, 0, 1),
        ("3402000²", "00", 132, 0, 1),
        ("34020000", "0", 132, 0, 1),
        ("34020000", "001", 132, 0, 1),
        ("34020000", "０1", 132, 0, 1),
        ("34020000", "00", 1000, 0, 1),
        ("34020000", "00", -1, 0, 1),
        ("34020000", "00", 132, 10, 1),
        ("34020000", "00", 132, -1, 1),
        ("34020000", "00", 132, 0, 1_000_000),
        ("34020000", "00", 132, 0, -1),
    ],
)
def test_make_gb_id_refuses_bad_parts(
    centre: str, industry: str, type_: int, network: int, serial: int
) -> None:
    with pytest.raises(ValueError):
        make_gb_id(centre, industry, type_, network, serial)


@given(
    st.text(alphabet="0123456789", min_size=8, max_size=8),
    st.text(alphabet="0123456789", min_size=2, max_size=2),
    st.integers(0, 999),
    st.integers(0, 9),
    st.integers(0, 999_999),
)
def test_make_parse_round_trip(
    centre: str, industry: str, type_: int, network: int, serial: int
) -> None:
    s = make_gb_id(centre, industry, type_, network, serial)
    assert len(s) == 20
    assert is_gb_id(s)
    assert type_code(s) == type_
    g = parse_gb_id(s)
    assert (g.centre, g.industry, g.type_code, g.network, int(g.serial)) == (
        centre,
        industry,
        type_,
        network,
        serial,
    )
    assert str(g) == s
    assert g.domain == s[:10]


@given(st.text(max_size=25))
def test_parse_raises_only_value_error(s: str) -> None:
    try:
        g = parse_gb_id(s)
    except ValueError:
        assert not is_gb_id(s)
    else:
        assert str(g) == s
