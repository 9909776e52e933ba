"""PTZCmd codec (GB/T 28181 Appendix A.3): the reference's ready-made commands, every refusal,
and round trips over everything the builders can make. Expected strings are computed by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.manscdp import DecodeError, PtzCommand, decode_ptz, ptz

# (what the gateway builds, the PTZCmd of the reference §4.2 table, kind, fields after decoding)
READY_MADE: list[tuple[PtzCommand, str, str, dict[str, Any]]] = [
    (ptz.ptz_stop(), "A50F0100000000B5", "stop", {"pan": 0, "tilt": 0, "zoom": 0, "pan_speed": 0}),
    (
        ptz.ptz_move(pan=1, tilt=1),
        "A50F0109808000BE",
        "ptz",
        {"pan": 1, "tilt": 1, "zoom": 0, "pan_speed": 0x80, "tilt_speed": 0x80, "zoom_speed": 0},
    ),
    (
        ptz.ptz_move(tilt=1),
        "A50F01080080003D",
        "ptz",
        {"pan": 0, "tilt": 1, "zoom": 0, "pan_speed": 0, "tilt_speed": 0x80},
    ),
    (
        ptz.ptz_move(tilt=-1),
        "A50F010400800039",
        "ptz",
        {"pan": 0, "tilt": -1, "zoom": 0, "pan_speed": 0, "tilt_speed": 0x80},
    ),
    (
        ptz.ptz_move(zoom=1, zoom_speed=0xA),
        "A50F01100000A065",
        "ptz",
        {"pan": 0, "tilt": 0, "zoom": 1, "zoom_speed": 0xA, "pan_speed": 0, "tilt_speed": 0},
    ),
    (
        ptz.ptz_move(zoom=-1, zoom_speed=0xA),
        "A50F01200000A075",
        "ptz",
        {"pan": 0, "tilt": 0, "zoom": -1, "zoom_speed": 0xA},
    ),
    (
        ptz.fi(focus=-1),
        "A50F014280000077",
        "fi",
        {"focus": -1, "iris": 0, "focus_speed": 0x80, "iris_speed": 0, "pan": 0, "tilt": 0},
    ),
    (
        ptz.fi(focus=1),
        "A50F014180000076",
        "fi",
        {"focus": 1, "iris": 0, "focus_speed": 0x80, "iris_speed": 0, "pan": 0, "pan_speed": 0},
    ),
    (
        ptz.fi(iris=1),
        "A50F014400800079",
        "fi",
        {"focus": 0, "iris": 1, "focus_speed": 0, "iris_speed": 0x80, "tilt": 0, "tilt_speed": 0},
    ),
    (
        ptz.fi(iris=-1),
        "A50F01480080007D",
        "fi",
        {"focus": 0, "iris": -1, "iris_speed": 0x80, "zoom": 0},
    ),
    (ptz.fi_stop(), "A50F0140000000F5", "fi_stop", {"focus": 0, "iris": 0, "focus_speed": 0}),
    (ptz.preset_set(3), "A50F018100030039", "preset_set", {"preset": 3, "group": 0, "tilt": 0}),
    (ptz.preset_call(3), "A50F01820003003A", "preset_call", {"preset": 3, "group": 0}),
    (ptz.preset_delete(3), "A50F01830003003B", "preset_delete", {"preset": 3, "value12": 0}),
    (ptz.cruise_add(1, 2), "A50F01840102003C", "cruise_add", {"group": 1, "preset": 2}),
    (
        ptz.cruise_dwell(1, 10),
        "A50F0187010A0047",
        "cruise_dwell",
        {"group": 1, "value12": 10, "preset": 0},
    ),
    (ptz.cruise_start(1), "A50F01880100003E", "cruise_start", {"group": 1, "preset": 0}),
    (
        ptz.scan_start(1),
        "A50F01890100003F",
        "scan",
        {"group": 1, "scan_action": "start", "preset": 0},
    ),
    (ptz.scan_left_limit(1), "A50F018901010040", "scan", {"group": 1, "scan_action": "left"}),
    (ptz.scan_right_limit(1), "A50F018901020041", "scan", {"group": 1, "scan_action": "right"}),
    (ptz.aux_on(1), "A50F018C01000042", "aux_on", {"aux": 1, "group": 0, "scan_action": None}),
    (ptz.aux_off(1), "A50F018D01000043", "aux_off", {"aux": 1, "group": 0, "pan_speed": 0}),
]


@pytest.mark.parametrize(("built", "text", "kind", "fields"), READY_MADE, ids=lambda v: str(v))
def test_ready_made_commands(
    built: PtzCommand, text: str, kind: str, fields: dict[str, Any]
) -> None:
    assert built.encode() == text
    assert str(built) == text
    decoded = decode_ptz(text)
    assert decoded == built
    assert decoded.kind == kind
    assert decoded.address == 1
    for name, value in fields.items():
        assert getattr(decoded, name) == value, name


def test_pan_alone_carries_no_tilt_speed() -> None:
    # The reference table's pan commands also carry tilt speed 0x80 (what wvp sends); the builder
    # gives a speed only to the axes that move. Both decode to the same motion.
    assert ptz.ptz_move(pan=1).encode() == "A50F010180000036"
    assert ptz.ptz_move(pan=-1).encode() == "A50F010280000037"
    for table, code, pan in (("A50F0101808000B6", 0x01, 1), ("A50F0102808000B7", 0x02, -1)):
        decoded = decode_ptz(table)
        assert decoded == PtzCommand(code, 0x80, 0x80)
        assert (decoded.kind, decoded.pan, decoded.tilt, decoded.zoom) == ("ptz", pan, 0, 0)
        assert (decoded.pan_speed, decoded.tilt_speed) == (0x80, 0x80)
        assert decoded.encode() == table


def test_pan_tilt_zoom_combined() -> None:
    c = ptz.ptz_move(pan=-1, tilt=-1, zoom=-1, pan_speed=0x10, tilt_speed=0x20, zoom_speed=0xF)
    # 26 = out | down | left; byte 7 = zoom speed F in the high nibble
    assert c.encode() == "A50F01261020F0FB"
    assert (c.pan, c.tilt, c.zoom) == (-1, -1, -1)
    assert (c.pan_speed, c.tilt_speed, c.zoom_speed) == (0x10, 0x20, 0xF)


def test_twelve_bit_values() -> None:
    dwell = ptz.cruise_dwell(1, 0xABC)
    assert dwell.encode() == "A50F018701BCA099"
    assert (dwell.data2, dwell.data3, dwell.value12) == (0xBC, 0xA, 0xABC)
    speed = ptz.cruise_speed(2, 300)
    assert speed.encode() == "A50F0186022C1079"
    assert (decode_ptz("A50F0186022C1079").kind, speed.group, speed.value12) == (
        "cruise_speed",
        2,
        300,
    )
    scan = ptz.scan_speed(1, 4095)
    assert scan.encode() == "A50F018A01FFF02F"
    assert (decode_ptz("A50F018A01FFF02F").kind, scan.group, scan.value12) == (
        "scan_speed",
        1,
        4095,
    )


def test_cruise_delete() -> None:
    whole = ptz.cruise_delete(1)
    assert whole.encode() == "A50F01850100003B"
    assert (whole.kind, whole.group, whole.preset) == ("cruise_delete", 1, 0)
    point = ptz.cruise_delete(1, 2)
    assert point.encode() == "A50F01850102003D"
    assert decode_ptz("A50F01850102003D").preset == 2


def test_address_split_over_bytes_3_and_7() -> None:
    assert PtzCommand(0, address=0xABC).encode() == "A50FBC0000000A7A"
    zoom = decode_ptz("A50F23100000A188")
    assert (zoom.address, zoom.kind, zoom.zoom, zoom.zoom_speed) == (0x123, "ptz", 1, 0xA)
    assert decode_ptz("A50F0000000000B4").address == 0  # broadcast


def test_lower_case_and_whitespace_accepted() -> None:
    assert decode_ptz("  a50f0101808000b6\r\n") == PtzCommand(0x01, 0x80, 0x80)
    assert decode_ptz("\ta50F018901020041 ").scan_action == "right"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "16 hex digits, got 0"),
        ("A50F0100000000B", "16 hex digits, got 15"),
        ("A50F0100000000B500", "16 hex digits, got 18"),
        ("A50F0100000000BG", "not hexadecimal"),
        ("A50F01000000 0B5", "not hexadecimal"),
        ("0x0F0100000000B5", "not hexadecimal"),
        ("A50F0100000000B５", "not hexadecimal"),  # full-width 5
        ("A50F01000000_0B5", "not hexadecimal"),
        ("A60F0100000000B6", "starts with 0xA6, expected 0xA5"),
        ("A50E0100000000B4", "check nibble E, expected F"),
        ("A51F0100000000C5", "check nibble F, expected 0"),
        ("A5100100000000B6", "version nibble 1 unsupported"),
        ("A50F0100000000B4", "checksum 0xB4 expected 0xB5"),
        ("A50F0101808000B7", "checksum 0xB7 expected 0xB6"),
        ("A50F010380000038", "sets both pan left and right"),
        ("A50F010C00800041", "sets both tilt up and down"),
        ("A50F013000005035", "sets both zoom in and out"),
        ("A50F0143000000F8", "sets both focus near and far"),
        ("A50F014C00000001", "sets both iris open and close"),
        ("A50F018B00000040", "unknown instruction code 0x8B"),
        ("A50F018E00000043", "unknown instruction code 0x8E"),
        ("A50F019000000045", "unknown instruction code 0x90"),
        ("A50F01FF000000B4", "unknown instruction code 0xFF"),
        ("A50F015000000005", "unknown instruction code 0x50"),
        ("A50F018000000035", "unknown instruction code 0x80"),
        ("A50F018901030042", "unknown scan action 0x03"),
    ],
)
def test_decode_refusals(text: str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_ptz(text)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    "build",
    [
        lambda: ptz.ptz_move(pan=2),
        lambda: ptz.ptz_move(tilt=-2),
        lambda: ptz.ptz_move(zoom=5),
        lambda: ptz.ptz_move(pan=1, pan_speed=256),
        lambda: ptz.ptz_move(tilt=1, tilt_speed=-1),
        lambda: ptz.ptz_move(zoom=1, zoom_speed=16),
        lambda: ptz.fi(focus=2),
        lambda: ptz.fi(iris=-3),
        lambda: ptz.fi(focus=1, focus_speed=256),
        lambda: ptz.fi(iris=1, iris_speed=-1),
        lambda: ptz.preset_set(0),
        lambda: ptz.preset_call(256),
        lambda: ptz.preset_delete(-1),
        lambda: ptz.cruise_add(256, 1),
        lambda: ptz.cruise_add(1, 0),
        lambda: ptz.cruise_delete(1, 256),
        lambda: ptz.cruise_delete(-1),
        lambda: ptz.cruise_speed(1, 4096),
        lambda: ptz.cruise_dwell(1, -1),
        lambda: ptz.cruise_start(256),
        lambda: ptz.scan_start(-1),
        lambda: ptz.scan_left_limit(256),
        lambda: ptz.scan_right_limit(300),
        lambda: ptz.scan_speed(1, 0x1000),
        lambda: ptz.aux_on(0),
        lambda: ptz.aux_off(256),
        lambda: PtzCommand(256),
        lambda: PtzCommand(0x8B),
        lambda: PtzCommand(0x03),
        lambda: PtzCommand(0x4C),
        lambda: PtzCommand(0x89, 1, 3),
        lambda: PtzCommand(0, data1=256),
        lambda: PtzCommand(0, data3=16),
        lambda: PtzCommand(0, address=0x1000),
        lambda: PtzCommand(0, address=-1),
    ],
)
def test_out_of_range_arguments(build: Callable[[], PtzCommand]) -> None:
    with pytest.raises(ValueError):
        build()


def test_accessors_of_other_kinds_are_zero() -> None:
    preset = decode_ptz("A50F01820003003A")
    assert (preset.pan, preset.tilt, preset.zoom, preset.focus, preset.iris) == (0, 0, 0, 0, 0)
    assert (preset.pan_speed, preset.focus_speed, preset.group, preset.aux) == (0, 0, 0, 0)
    assert preset.scan_action is None
    move = ptz.ptz_move(pan=1)
    assert (move.preset, move.group, move.value12, move.focus, move.focus_speed) == (0, 0, 0, 0, 0)


def test_kind_is_read_only() -> None:
    # Assigning a non-field to a frozen slots dataclass raises TypeError on 3.11 (a CPython quirk),
    # so check the property itself has no setter.
    kind = vars(PtzCommand)["kind"]
    assert isinstance(kind, property)
    assert kind.fset is None
    c = ptz.ptz_stop()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.code = 1  # type: ignore[misc]


# Property tests.

speed8 = st.integers(0, 0xFF)
direction = st.sampled_from((-1, 0, 1))
group = st.integers(0, 0xFF)
preset_number = st.integers(1, 0xFF)
value12 = st.integers(0, 0xFFF)

built_commands: st.SearchStrategy[PtzCommand] = st.one_of(
    st.builds(
        ptz.ptz_move,
        pan=direction,
        tilt=direction,
        zoom=direction,
        pan_speed=speed8,
        tilt_speed=speed8,
        zoom_speed=st.integers(0, 0xF),
    ),
    st.just(ptz.ptz_stop()),
    st.builds(ptz.fi, focus=direction, iris=direction, focus_speed=speed8, iris_speed=speed8),
    st.just(ptz.fi_stop()),
    st.builds(ptz.preset_set, preset_number),
    st.builds(ptz.preset_call, preset_number),
    st.builds(ptz.preset_delete, preset_number),
    st.builds(ptz.cruise_add, group, preset_number),
    st.builds(ptz.cruise_delete, group, st.integers(0, 0xFF)),
    st.builds(ptz.cruise_speed, group, value12),
    st.builds(ptz.cruise_dwell, group, value12),
    st.builds(ptz.cruise_start, group),
    st.builds(ptz.scan_start, group),
    st.builds(ptz.scan_left_limit, group),
    st.builds(ptz.scan_right_limit, group),
    st.builds(ptz.scan_speed, group, value12),
    st.builds(ptz.aux_on, preset_number),
    st.builds(ptz.aux_off, preset_number),
)


@given(built_commands, st.integers(0, 0xFFF))
def test_round_trip(command: PtzCommand, address: int) -> None:
    for c in (command, dataclasses.replace(command, address=address)):
        text = c.encode()
        assert len(text) == 16
        assert text == text.upper()
        raw = bytes.fromhex(text)
        assert raw[:2] == b"\xa5\x0f"
        assert raw[7] == sum(raw[:7]) % 256
        assert decode_ptz(text) == c
        assert decode_ptz(text.lower()) == c
        assert decode_ptz(text).kind == c.kind


@given(direction, direction, direction, speed8, speed8, st.integers(0, 0xF))
def test_move_fields_survive(pan: int, tilt: int, zoom: int, ps: int, ts: int, zs: int) -> None:
    c = decode_ptz(ptz.ptz_move(pan, tilt, zoom, ps, ts, zs).encode())
    assert c.kind == ("ptz" if (pan, tilt, zoom) != (0, 0, 0) else "stop")
    assert (c.pan, c.tilt, c.zoom) == (pan, tilt, zoom)
    assert (c.pan_speed, c.tilt_speed, c.zoom_speed) == (
        ps if pan else 0,
        ts if tilt else 0,
        zs if zoom else 0,
    )


@given(direction, direction, speed8, speed8)
def test_fi_fields_survive(focus: int, iris: int, fs: int, irs: int) -> None:
    c = decode_ptz(ptz.fi(focus, iris, fs, irs).encode())
    assert c.kind == ("fi" if (focus, iris) != (0, 0) else "fi_stop")
    assert (c.focus, c.iris, c.focus_speed, c.iris_speed) == (
        focus,
        iris,
        fs if focus else 0,
        irs if iris else 0,
    )
    assert (c.pan, c.tilt, c.zoom) == (0, 0, 0)


@given(group, value12)
def test_twelve_bit_fields_survive(g: int, v: int) -> None:
    for build, kind in (
        (ptz.cruise_speed, "cruise_speed"),
        (ptz.cruise_dwell, "cruise_dwell"),
        (ptz.scan_speed, "scan_speed"),
    ):
        c = decode_ptz(build(g, v).encode())
        assert (c.kind, c.group, c.value12) == (kind, g, v)


@given(st.text())
@example("A50F0100000000B5")
@example("\u0660" * 16)  # Arabic-Indic zeros: digits to str.isdigit, not hex
def test_arbitrary_text_raises_only_decode_error(text: str) -> None:
    try:
        c = decode_ptz(text)
    except DecodeError as e:
        assert e.reason
    else:
        assert c.encode() == text.strip().upper()


def _with_checksum(head: bytes) -> str:
    return (head + bytes([sum(head) % 256])).hex()


@given(
    st.one_of(
        st.binary(min_size=7, max_size=7),
        st.binary(min_size=5, max_size=5).map(lambda b: b"\xa5\x0f" + b),
    ).map(_with_checksum)
)
def test_well_framed_bytes_decode_or_raise_decode_error(text: str) -> None:
    try:
        c = decode_ptz(text)
    except DecodeError as e:
        assert e.reason
    else:
        assert c.encode() == text.upper()
