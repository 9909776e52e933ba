"""Properties of the MANSCDP codec (design "Tests": hypothesis for every codec): whatever bytes
arrive, decoding gives a message or the codec's own DecodeError with a reason of its own; what
decodes re-encodes to the same message; any text GB 18030 can carry survives a round trip."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.manscdp import REGISTRY, DecodeError, decode, encode
from gateway.manscdp import messages as m
from tests.manscdp import samples
from tests.manscdp.samples import CAM, NVR

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLE_BYTES = sorted(
    encode(msg, charset, gb2022=gb2022)
    for msg in samples.samples().values()
    for charset, gb2022 in (("GB2312", False), ("UTF-8", True))
)


def decodes_cleanly(data: bytes) -> m.Decoded | None:
    """Decode ``data``; on success check the result re-encodes to the same message (what the
    gateway relays upward must mean what the device said); on failure check the error is the
    codec's own, with a reason, not the last-resort guard around an unexpected exception."""
    try:
        decoded = decode(data)
    except DecodeError as exc:
        assert exc.reason, data
        assert not exc.reason.startswith("cannot decode"), (exc.reason, data)
        return None
    msg = decoded.message
    assert isinstance(msg, m.Message)
    assert type(msg) is REGISTRY[(msg.ROOT.lower(), msg.CMD.lower())]
    assert isinstance(msg.sn, int) and msg.sn >= 0
    for charset in ("GB2312", "UTF-8"):
        again = decode(encode(msg, charset))
        assert again.message == msg, charset
    return decoded


@FAST
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xff\xfe<\x00Q\x00")
@example(b"<?xml version='1.0' encoding='GB2312'")
def test_arbitrary_bytes_give_a_message_or_decode_error(data: bytes) -> None:
    decodes_cleanly(data)


XML_ILLEGAL = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)]))
# What the codec removes from text on the way in and on the way out: XML_ILLEGAL, the
# non-characters and surrogates XML 1.0 forbids too, and the C1 controls (DEL is kept).
CONTROLS = XML_ILLEGAL + "".join(map(chr, range(0x80, 0xA0)))
NOT_IN_TEXT = frozenset(XML_ILLEGAL + "\ufffe\uffff<")

# XML-shaped noise: known roots, CmdTypes and element names with random values, so the typed
# reader (not only the XML parser) sees garbage.
TAGS = sorted(
    {spec.tag for cls in REGISTRY.values() for spec in cls._specs}
    | {spec.tag for spec in m.CatalogItem._specs}
    | {spec.tag for spec in m.CatalogInfo._specs}
    | {"Item", "Info", "CmdType", "Num", "X-Unknown"}
)
VALUES = st.one_of(
    st.sampled_from(["", " ", "0", "-1", "1e999", "nan", "OK", "on", "&amp;", "&", NVR, "一"]),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True).map(str),
    st.text(max_size=12),
)


@st.composite
def xml_noise(draw: st.DrawFn, depth: int = 0) -> str:
    children = []
    for _ in range(draw(st.integers(0, 5 if depth < 3 else 0))):
        tag = draw(st.sampled_from(TAGS))
        if draw(st.booleans()) and depth < 3:
            inner = draw(xml_noise(depth + 1))
        else:
            value = draw(VALUES)
            inner = "".join(c for c in value if c not in NOT_IN_TEXT)
        children.append(f"<{tag}>{inner}</{tag}>")
    return "".join(children)


@FAST
@given(
    root=st.sampled_from(["Query", "Response", "Notify", "Control", "query"]),
    cmd=st.sampled_from(sorted({cls.CMD for cls in REGISTRY.values()})),
    sn=st.sampled_from(["1", "4294967295", " 7 ", "x", "", "-1"]),
    body=xml_noise(),
    charset=st.sampled_from(["gb18030", "utf-8"]),
)
def test_xml_shaped_noise_gives_a_message_or_decode_error(
    root: str, cmd: str, sn: str, body: str, charset: str
) -> None:
    xml = (
        f'<?xml version="1.0" encoding="GB2312"?>\n<{root}><CmdType>{cmd}</CmdType><SN>{sn}</SN>'
        f"<DeviceID>{CAM}</DeviceID>{body}</{root}>"
    )
    decodes_cleanly(xml.encode(charset))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLE_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "duplicate"]))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from(b"<>&/\"'=?!\x00\x80\xff \r\n;#x"))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(
                st.one_of(
                    st.binary(min_size=1, max_size=8),
                    st.sampled_from([b"<", b"</", b"&", b"&lt;", b"<![CDATA[", b"<!--", b"\xa1"]),
                )
            )
        elif op == "truncate":
            del data[at:]
        else:
            end = at + draw(st.integers(1, 64))
            data[end:end] = data[at:end]
    return bytes(data)


@settings(max_examples=600, deadline=None)
@given(mutated())
def test_mutated_messages_give_a_message_or_decode_error(data: bytes) -> None:
    decodes_cleanly(data)


# Any text GB 18030 can encode and XML 1.0 can carry, but control characters. Values are trimmed
# on reading, and an empty value reads as absent, so generated values are trimmed and non-empty.
XML_TEXT = (
    st.text(
        st.characters(blacklist_categories=["Cs"], blacklist_characters=CONTROLS + "\ufffe\uffff"),
        min_size=1,
        max_size=40,
    )
    .map(str.strip)
    .filter(bool)
)
CJK = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(XML_TEXT, CJK), address=XML_TEXT, charset=st.sampled_from(["GB2312", "UTF-8"])
)
@example(name="一", address="专业", charset="GB2312")
@example(name="Café", address="Δ", charset="UTF-8")
@example(name="堃\r\n镕", address="a]]>b&c<d", charset="GB2312")
@example(name="\U0002a6a5𠀀", address="x\u2028y", charset="GB2312")
def test_catalog_item_text_round_trip(name: str, address: str, charset: str) -> None:
    item = dataclasses.replace(samples.catalog_item(), name=name, address=address)
    msg = m.CatalogNotify(sn=1, device_id=NVR, sum_num=1, items=(item,))
    decoded = decode(encode(msg, charset))
    assert decoded.message == msg
    assert decoded.repairs == ()
    assert isinstance(decoded.message, m.CatalogNotify)
    assert (decoded.message.items[0].name, decoded.message.items[0].address) == (name, address)


@settings(max_examples=150, deadline=None)
@given(name=st.one_of(XML_TEXT, CJK))
def test_catalog_item_text_round_trip_only_name(name: str) -> None:
    """The hardest case for charset detection: the name is the only non-ASCII text."""
    msg = m.CatalogResponse(sn=2, device_id=NVR, items=(m.CatalogItem(device_id=CAM, name=name),))
    for charset in ("GB2312", "UTF-8"):
        decoded = decode(encode(msg, charset))
        assert decoded.message == msg, charset


# Text with anything in it: what a stored value may hold (an older database, a value from
# elsewhere), surrogates and non-characters included.
ANY_TEXT = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(CONTROLS + "\ufffe\uffff\ud800\udbff\udc00\udfff"),
    ),
    min_size=1,
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(name=ANY_TEXT, address=ANY_TEXT)
@example(name="Gate\x01\x1b[31m\x9b2J", address="\ud800x\ufffe\uffff\x7f")
def test_any_stored_text_encodes_to_well_formed_xml(name: str, address: str) -> None:
    """Issue 13 item 7: whatever a value holds, the writer never fails and never writes a
    character that breaks XML: the control characters are left out and the rest is read back."""
    item = dataclasses.replace(samples.catalog_item(), name=name, address=address)
    msg = m.CatalogNotify(sn=1, device_id=NVR, sum_num=1, items=(item,))
    strict = etree.XMLParser(recover=False, resolve_entities=False)
    for charset in ("GB2312", "UTF-8"):
        data = encode(msg, charset)
        if charset == "UTF-8":
            etree.fromstring(data, strict)  # raises unless well-formed
        got = decode(data).message
        assert isinstance(got, m.CatalogNotify)
        want = "".join(c for c in name if c not in CONTROLS and c not in "\ufffe\uffff")
        want = "".join(c for c in want if not 0xD800 <= ord(c) <= 0xDFFF).strip() or None
        if charset == "UTF-8":  # GB 2312 bodies may be read back in the other charset
            assert got.items[0].name == want
