"""Safe bytes ⇄ XML for MANSCDP bodies, whatever charset the peer really used.

GB/T 28181-2016 asks for GB 2312 signalling, -2022 for GB 18030 (reference §8.3); devices declare
``encoding="GB2312"`` and then send UTF-8, or send GBK-only characters under a GB2312 prolog. So
the prolog is never trusted: bytes that are valid UTF-8 are read as UTF-8, anything else as
GB 18030 (a superset of GB 2312 and GBK). The charset actually seen is reported so the caller can
answer the peer in kind.

Parsing is defensive: no DTDs (XXE and billion-laughs are refused before lxml sees the text), no
network, no entity expansion, bounded size and depth. Known vendor garbage is repaired and each
repair is reported (NUL bytes, a bare ``&``, bytes that decode in neither charset, control
characters); anything still unparseable raises :class:`DecodeError`.

Characters that XML 1.0 §2.2 forbids (C0 controls but TAB, LF and CR; surrogates; U+FFFE and
U+FFFF) make a document not well-formed, and the C1 controls (U+0080-U+009F) that it only
discourages are terminal escape codes (U+009B is CSI) that no name or address holds. Devices send
them in names, raw or as character references. They are removed, not replaced (a U+FFFD has no
place in a GB 2312 document; an ID that lost one is still checked as an ID by the catalog), on
the way in and on the way out:

* in: a body lxml refuses for a forbidden character is cleaned (:func:`_remove_unsafe`) and
  parsed again, one repair for the message; the C1 controls lxml accepts are taken out of each
  value as it is read (:mod:`gateway.manscdp.schema`). Clean bodies pay no extra pass.
* out: every value is written through :func:`xml_text` (by :mod:`gateway.manscdp.schema`), so
  that every document the gateway writes is well-formed, without C1 controls, whatever was
  stored (an older database, a value from elsewhere). A value with none, the usual one, costs one
  ``str.isprintable()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lxml import etree

from gateway.manscdp.errors import DecodeError

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32

_PROLOG = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)
# The prolog's encoding only: an ``encoding="..."`` in the body's text says nothing.
_DECLARED = re.compile(
    rb"\A(?:\xef\xbb\xbf)?\s*<\?xml[^>]{0,200}?\sencoding\s*=\s*"
    rb"""["']([A-Za-z0-9_.:-]{1,40})["']""",
    re.IGNORECASE,
)
_BARE_AMP = re.compile(r"&(?!(?:[A-Za-z][A-Za-z0-9]{0,15}|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});)")
_DTD = re.compile(r"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
# What XML 1.0 §2.2 forbids (C0 controls but TAB/LF/CR, surrogates, U+FFFE/U+FFFF), and the C1
# controls it discourages. Each is in Unicode category Cc, Cs or Cn, so a value for which
# ``str.isprintable()`` holds has none of them (nor has an ASCII value lxml took: lxml refuses
# the C0 controls): those C-speed tests spare the common case the scan.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x80-\x9f\ud800-\udfff\ufffe\uffff]")
# A character reference (zero-padded ones too; the code point is checked, not the length).
_CHAR_REF = re.compile(r"&#(?:[xX]([0-9A-Fa-f]{1,16})|([0-9]{1,16}));")
CONTROLS_REMOVED = "control characters removed"

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
    strip_cdata=True,
    recover=False,
)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed body. ``charset`` is what the bytes really were: ``UTF-8`` or ``GB18030``, or
    ``None`` when they were pure ASCII (which tells nothing). ``declared`` is the prolog's
    ``encoding`` (upper case) or ``None``. ``repairs`` lists what had to be fixed."""

    root: Any  # lxml element; lxml ships no type information
    charset: str | None
    declared: str | None
    repairs: tuple[str, ...]


def decode_text(data: bytes, declared: str | None = None) -> tuple[str, str | None, list[str]]:
    """Bytes to text: UTF-8 when valid, else GB 18030. Returns (text, charset, repairs).

    Short GB 2312 text can be valid UTF-8 too (一 is D2 BB, a two-byte UTF-8 sequence), but it
    then decodes to two-byte characters (U+0080-U+07FF: Latin, Greek, Cyrillic...), to CJK only
    by rare chance. In that ambiguous case the declaration decides, GB (the standard's) by default.
    """
    repairs: list[str] = []
    if data.isascii():
        return data.decode("ascii"), None, repairs
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if declared in ("UTF-8", "UTF8") or max(text) >= "\u0800":
            return text, "UTF-8", repairs
        try:
            return data.decode("gb18030"), "GB18030", repairs
        except UnicodeDecodeError:
            return text, "UTF-8", repairs
    try:
        return data.decode("gb18030"), "GB18030", repairs
    except UnicodeDecodeError:
        repairs.append("bytes valid in neither UTF-8 nor GB18030 replaced")
        return data.decode("gb18030", errors="replace"), "GB18030", repairs


def xml_text(value: str) -> str:
    """``value`` without the characters that break XML or a terminal (see the module)."""
    return value if value.isprintable() else _UNSAFE.sub("", value)


def _safe_ref(m: re.Match[str]) -> str:
    hexa, dec = m.group(1), m.group(2)
    code = int(hexa, 16) if hexa is not None else int(dec)
    if code > 0x10FFFF or _UNSAFE.match(chr(code)):
        return ""
    return m.group(0)


def _remove_unsafe(text: str, repairs: list[str]) -> str:
    """``text`` without control characters and non-characters, raw or as character
    references (a repair when there were any)."""
    fixed = _UNSAFE.sub("", text)
    if "&#" in fixed:
        fixed = _CHAR_REF.sub(_safe_ref, fixed)
    if fixed != text:
        repairs.append(CONTROLS_REMOVED)
    return fixed


def declared_encoding(data: bytes) -> str | None:
    """The ``encoding`` of the body's XML prolog, upper case; ``None`` without one."""
    m = _DECLARED.match(data)
    return m.group(1).decode("ascii").upper() if m else None


def parse(data: bytes) -> Parsed:
    """Parse a MANSCDP body into an element tree, repairing known garbage."""
    if len(data) > MAX_BODY:
        raise DecodeError(f"body of {len(data)} bytes exceeds {MAX_BODY}")
    repairs: list[str] = []
    if b"\x00" in data:
        data = data.replace(b"\x00", b"")
        repairs.append("NUL bytes removed")
    declared = declared_encoding(data)
    text, charset, decode_repairs = decode_text(data, declared)
    repairs.extend(decode_repairs)
    text = text.lstrip("\ufeff")
    text = _PROLOG.sub("", text, count=1).strip()
    if not text:
        raise DecodeError("empty body")
    if _DTD.search(text):
        raise DecodeError("DTD or entity declarations are not allowed")
    if "&" in text:
        fixed = _BARE_AMP.sub("&amp;", text)
        if fixed != text:
            repairs.append("bare '&' escaped")
            text = fixed
    try:
        root = _fromstring(text)
    except etree.XMLSyntaxError as exc:
        root = _parse_repaired(text, exc, repairs)
    if _depth_exceeds(root, MAX_DEPTH):
        raise DecodeError(f"elements nested deeper than {MAX_DEPTH}")
    return Parsed(root, charset, declared, tuple(repairs))


def _parse_repaired(text: str, exc: etree.XMLSyntaxError, repairs: list[str]) -> Any:
    """Parse ``text``, which lxml refused with ``exc``, once its known garbage is repaired:
    control characters, then junk after the root element."""
    if "depth" in str(exc).lower():  # libxml2's own limit (256) for deeper documents
        raise DecodeError(f"elements nested deeper than {MAX_DEPTH}") from None
    clean = _remove_unsafe(text, repairs)
    if clean != text:
        try:
            return _fromstring(clean)
        except etree.XMLSyntaxError as again:
            return _parse_repaired(clean, again, repairs)  # cleaning it again changes nothing
    # Trailing junk after the root element is a common vendor bug: keep the first element.
    end = _root_end(text)
    if end is None:
        raise DecodeError(f"not well-formed XML: {_short(exc)}") from None
    try:
        root = _fromstring(text[:end])
    except etree.XMLSyntaxError:
        raise DecodeError(f"not well-formed XML: {_short(exc)}") from None
    repairs.append("junk after the root element dropped")
    return root


def _fromstring(text: str) -> Any:
    try:
        return etree.fromstring(text, _PARSER)
    except ValueError:  # lxml refuses text that starts like a prolog _PROLOG could not remove
        raise DecodeError("malformed XML declaration") from None


def _root_end(text: str) -> int | None:
    m = re.match(r"<([A-Za-z_][\w.-]*)", text)
    if m is None:
        return None
    closing = f"</{m.group(1)}>"
    idx = text.rfind(closing)
    return None if idx < 0 else idx + len(closing)


def _short(exc: Exception) -> str:
    return str(exc).split("\n", 1)[0][:120]


# Is there an element deeper than MAX_DEPTH? Evaluated in C: a Python walk of every element
# cost as much as the parse itself.
_TOO_DEEP = etree.XPath("boolean(/" + "/*" * (MAX_DEPTH + 1) + ")")


def _depth_exceeds(root: Any, limit: int) -> bool:
    if limit == MAX_DEPTH:
        return bool(_TOO_DEEP(root))
    return bool(etree.XPath("boolean(/" + "/*" * (limit + 1) + ")")(root))


def serialize(root: Any, charset: str = "GB2312", declare: str | None = None) -> bytes:
    """Element tree to bytes with a double-quoted prolog: ``<?xml version="1.0"
    encoding="GB2312"?>``. ``charset`` is how the bytes are encoded (GB2312 and GBK text are
    written with the GB 18030 codec, which encodes them identically and never fails);
    ``declare`` is the prolog's name for it, by default ``charset`` itself. The document is
    well-formed whatever the tree's values held: lxml refuses a character XML 1.0 forbids when
    text is set, and :func:`~gateway.manscdp.schema.write_node` sets every value through
    :func:`xml_text`, which also leaves out the C1 controls lxml would take."""
    etree.indent(root, space="")
    body: str = etree.tostring(root, encoding="unicode")
    name = (declare or charset).upper()
    codec = "utf-8" if charset.upper().replace("-", "") == "UTF8" else "gb18030"
    doc = f'<?xml version="1.0" encoding="{name}"?>\r\n{body}\r\n'
    data = doc.encode(codec)
    if codec == "gb18030" and not data.isascii() and decode_text(data, name)[1] == "UTF-8":
        # Text that is UTF-8 read as GB (mojibake) encodes back to valid UTF-8, which any
        # reader, this one included, takes for UTF-8: send its characters as references.
        names = (n for el in root.iter() for n in (el.tag, *el.attrib))
        if all(isinstance(n, str) and n.isascii() for n in names):
            data = doc.encode("ascii", errors="xmlcharrefreplace")
    return data
