"""Declarative mapping between MANSCDP elements and typed dataclasses.

A message or item is a ``slots`` dataclass whose fields say which element they come from
(``text("DeviceID")``, ``integer("SN")``, ``items("DeviceList", CatalogItem)``...). One generic
reader and one generic writer walk those declarations, so each CmdType is written once, as the
standard's table of fields, and read and written the same way.

Reading is lenient (reference §10): element names match case-insensitively and in any order,
values are trimmed, aliases are accepted (``IFameCmd``/``IFrameCmd``), an empty element reads as
absent, and unknown elements are kept verbatim in ``extra`` (written back out unchanged) and
otherwise ignored. A value that does not fit its type (``<Port>-</Port>``) is moved to ``extra``
and reported as a repair rather than failing the whole message; a missing *required* field is a
:class:`DecodeError`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from lxml import etree

from gateway.manscdp.errors import DecodeError
from gateway.manscdp.xmlio import CONTROLS_REMOVED, xml_text

# Short, often repeated values (manufacturer, model, civil code, status...) are interned so that
# 200,000 catalog items share one string object per distinct value.
_INTERN_MAX = 24

STR, INT, FLOAT, NODE, LIST, TEXTS, BLOCK = range(7)


@dataclass(frozen=True, slots=True)
class Spec:
    attr: str
    tag: str
    kind: int
    aliases: tuple[str, ...] = ()
    node: type[Node] | None = None
    item_tag: str = "Item"
    upper: bool = False
    required: bool = False
    tag_2022: str | None = None
    omit_empty: bool = True


def _meta(tag: str, kind: int, **kw: Any) -> dict[str, Any]:
    return {"gb": (tag, kind, kw)}


def text(
    tag: str,
    *aliases: str,
    upper: bool = False,
    required: bool = False,
    tag_2022: str | None = None,
) -> Any:
    """A text element. ``upper``: normalise to upper case (ON/OFF, OK/ERROR)."""
    meta = _meta(tag, STR, aliases=aliases, upper=upper, required=required, tag_2022=tag_2022)
    if required:
        return field(metadata=meta)
    return field(default=None, metadata=meta)


def integer(tag: str, *aliases: str, required: bool = False) -> Any:
    meta = _meta(tag, INT, aliases=aliases, required=required)
    if required:
        return field(metadata=meta)
    return field(default=None, metadata=meta)


def number(tag: str, *aliases: str) -> Any:
    return field(default=None, metadata=_meta(tag, FLOAT, aliases=aliases))


def node(tag: str, cls: type[Node], *aliases: str) -> Any:
    return field(default=None, metadata=_meta(tag, NODE, aliases=aliases, node=cls))


def items(
    tag: str, cls: type[Node], item: str = "Item", *aliases: str, omit_empty: bool = True
) -> Any:
    """A list element (``<DeviceList Num="n">``) of ``item`` children; ``Num`` is written from
    the list's length. An empty list is left out (2022 Annex M) unless ``omit_empty`` is off."""
    meta = _meta(tag, LIST, aliases=aliases, node=cls, item_tag=item, omit_empty=omit_empty)
    return field(default=(), metadata=meta)


def texts(tag: str) -> Any:
    """A repeated text element (``<ExtraInfo>`` ×n, ``<DeviceID>`` ×n)."""
    return field(default=(), metadata=_meta(tag, TEXTS))


def block(tag: str) -> Any:
    """A subtree kept as a generic :class:`Block` (configuration blocks with deep structure)."""
    return field(default=None, metadata=_meta(tag, BLOCK))


@dataclass(frozen=True, slots=True)
class Block:
    """A generic element: tag, trimmed text, attributes and children, for configuration blocks
    whose structure is deep and rarely read field by field (SVAC, record plans, OSD...)."""

    tag: str
    text: str = ""
    children: tuple[Block, ...] = ()
    attrib: tuple[tuple[str, str], ...] = ()

    def find(self, tag: str) -> Block | None:
        low = tag.lower()
        for child in self.children:
            if child.tag.lower() == low:
                return child
        return None

    def get(self, tag: str) -> str | None:
        child = self.find(tag)
        return None if child is None else child.text

    @classmethod
    def from_element(cls, el: Any, repairs: list[str] | None = None) -> Block:
        """The block of element ``el``, without C1 controls (recorded in ``repairs``)."""
        fixes = [] if repairs is None else repairs
        return cls(
            tag=el.tag,
            text=_no_controls((el.text or "").strip(), fixes).strip(),
            children=tuple(cls.from_element(c, fixes) for c in el if isinstance(c.tag, str)),
            attrib=tuple((str(k), _no_controls(str(v), fixes)) for k, v in el.attrib.items()),
        )

    def to_element(self, parent: Any) -> None:
        el = etree.SubElement(parent, self.tag, {k: xml_text(v) for k, v in self.attrib})
        if self.text:
            el.text = xml_text(self.text)
        for child in self.children:
            child.to_element(el)


Extra = tuple[str, str]
"""An unknown element: (tag, its XML text), written back out verbatim."""


@dataclass(slots=True, kw_only=True)
class Node:
    """Base of every typed element. ``extra`` keeps unknown child elements."""

    extra: tuple[Extra, ...] = ()

    _specs: ClassVar[tuple[Spec, ...]] = ()
    _by_tag: ClassVar[dict[str, Spec]] = {}

    def extra_text(self, tag: str) -> str | None:
        """The text of an unknown element kept in ``extra`` (vendor fields such as StreamNum)."""
        low = tag.lower()
        for name, xml in self.extra:
            if name.lower() == low:
                el = etree.fromstring(xml if xml.isprintable() else xml_text(xml))
                return (el.text or "").strip()
        return None


T = TypeVar("T", bound=type["Node"])
N = TypeVar("N", bound="Node")


def compile_node(cls: T) -> T:
    """Class decorator (after ``@dataclass``): compute the element table of ``cls``."""
    specs: list[Spec] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("gb")
        if meta is None:
            continue
        tag, kind, kw = meta
        specs.append(Spec(attr=f.name, tag=tag, kind=kind, **kw))
    by_tag: dict[str, Spec] = {}
    for spec in specs:
        for name in (spec.tag, *spec.aliases, *((spec.tag_2022,) if spec.tag_2022 else ())):
            by_tag[name.lower()] = spec
    # The standard's spelling too, so that the usual case needs no lower-casing.
    for spec in specs:
        for name in (spec.tag, *spec.aliases, *((spec.tag_2022,) if spec.tag_2022 else ())):
            by_tag.setdefault(name, spec)
    cls._specs = tuple(specs)
    cls._by_tag = by_tag
    return cls


# -- reading -------------------------------------------------------------------------------


def _no_controls(value: str, repairs: list[str]) -> str:
    """A value read from the tree without its C1 controls (lxml refused the C0 ones; see
    :mod:`gateway.manscdp.xmlio`). An ASCII or printable value, the usual one, has none."""
    if value.isascii() or value.isprintable():
        return value
    fixed = xml_text(value)
    if fixed != value and CONTROLS_REMOVED not in repairs:
        repairs.append(CONTROLS_REMOVED)
    return fixed


def _clean(raw: str | None, upper: bool, repairs: list[str]) -> str:
    value = (raw or "").strip()
    if not (value.isascii() or value.isprintable()):
        value = _no_controls(value, repairs).strip()
    if upper:
        value = value.upper()
    if len(value) <= _INTERN_MAX:
        value = sys.intern(value)
    return value


def _to_int(value: str) -> int | None:
    if value.isdigit():
        # str.isdigit() accepts "²" and other Unicode digits: only ASCII ones are numbers here.
        return int(value) if value.isascii() and len(value) <= 18 else None
    if value[:1] in "+-" and value[1:].isdigit() and value.isascii() and len(value) <= 19:
        return int(value)
    return None


def _to_float(value: str) -> float | None:
    if not value.isascii() or len(value) > 40:
        return None
    try:
        result = float(value)
    except ValueError:
        return None
    return result if math.isfinite(result) else None


def _verbatim(el: Any, repairs: list[str]) -> str:
    """An unknown element's XML, indented as :func:`xmlio.serialize` will write it, so that what
    is read, written and read again compares equal; without C1 controls (never in a name)."""
    etree.indent(el, space="")
    xml: str = etree.tostring(el, encoding="unicode", with_tail=False)
    if _no_controls(xml, repairs) is not xml:
        # Cleaned in the tree, not in the text: an element left empty is written ``<X/>``.
        for node in el.iter():
            node.text = (xml_text(node.text) or None) if node.text else None
            if node is not el and node.tail:
                node.tail = xml_text(node.tail)
            for k, v in node.attrib.items():
                node.set(k, xml_text(v))
        xml = etree.tostring(el, encoding="unicode", with_tail=False)
    return xml


def read_node(cls: type[N], el: Any, repairs: list[str]) -> N:
    """Read element ``el`` into a ``cls``, recording repairs; DecodeError on a missing required
    field."""
    by_tag = cls._by_tag
    values: dict[str, Any] = {}
    extra: list[Extra] = []
    for child in el:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        spec = by_tag.get(tag) or by_tag.get(tag.lower())
        if spec is None:
            extra.append((tag, _verbatim(child, repairs)))
            continue
        kind = spec.kind
        if kind == TEXTS:
            text = _clean(child.text, spec.upper, repairs)
            values[spec.attr] = (*values.get(spec.attr, ()), text)
            continue
        if spec.attr in values and kind == LIST:
            # A second <DeviceList> (or any list) adds its items to the first: kept in extra,
            # it would be written back as the list itself once the first one is empty.
            assert spec.node is not None
            repairs.append(f"duplicate <{tag}> merged into the first")
            values[spec.attr] += _list_items(spec.node, spec.item_tag, child, repairs)
            continue
        if spec.attr in values:
            repairs.append(f"duplicate <{tag}> kept in extra")
            extra.append((tag, _verbatim(child, repairs)))
            continue
        if kind == STR:
            value = _clean(child.text, spec.upper, repairs)
            if value:  # an empty element reads as absent
                values[spec.attr] = value
        elif kind in (INT, FLOAT):
            raw = (child.text or "").strip()
            if not raw:
                continue
            converted = _to_int(raw) if kind == INT else _to_float(raw)
            if converted is None:
                if spec.required:
                    raise DecodeError(f"<{spec.tag}> is not a number: {raw[:20]!r}")
                repairs.append(f"<{tag}> {raw[:20]!r} is not a number; kept in extra")
                extra.append((tag, _verbatim(child, repairs)))
                continue
            values[spec.attr] = converted
        elif kind == NODE:
            assert spec.node is not None
            values[spec.attr] = read_node(spec.node, child, repairs)
        elif kind == LIST:
            assert spec.node is not None
            values[spec.attr] = _list_items(spec.node, spec.item_tag, child, repairs)
        else:  # BLOCK
            values[spec.attr] = Block.from_element(child, repairs)
    for spec in cls._specs:
        if spec.required and spec.attr not in values:
            raise DecodeError(f"missing <{spec.tag}> in <{el.tag}>")
    if extra:
        values["extra"] = tuple(extra)
    try:
        return cls(**values)
    except TypeError as exc:  # pragma: no cover - a declaration error, not bad input
        raise DecodeError(f"cannot build {cls.__name__}: {exc}") from None


def _list_items(item_cls: type[N], item_tag: str, el: Any, repairs: list[str]) -> tuple[N, ...]:
    tag = item_tag.lower()
    return tuple(
        read_node(item_cls, it, repairs)
        for it in el
        if isinstance(it.tag, str) and it.tag.lower() == tag
    )


# -- writing -------------------------------------------------------------------------------


def _fmt_float(value: float) -> str:
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def write_node(obj: Node, el: Any, gb2022: bool = False) -> None:
    """Append ``obj``'s fields to element ``el`` as children, then its ``extra``. Every text
    goes through :func:`~gateway.manscdp.xmlio.xml_text`: a value stored with a control
    character (an older database, a value from elsewhere) goes out without it, and the
    document stays well-formed."""
    sub: Callable[..., Any] = etree.SubElement
    for spec in obj._specs:
        value = getattr(obj, spec.attr)
        if value is None:
            continue
        tag = spec.tag_2022 if gb2022 and spec.tag_2022 else spec.tag
        kind = spec.kind
        if kind == STR:
            sub(el, tag).text = value if value.isprintable() else xml_text(value)
        elif kind == INT:
            sub(el, tag).text = str(value)
        elif kind == FLOAT:
            sub(el, tag).text = _fmt_float(value)
        elif kind == NODE:
            write_node(value, sub(el, tag), gb2022)
        elif kind == LIST:
            if not value and spec.omit_empty:
                continue
            lst = sub(el, tag, Num=str(len(value)))
            for item in value:
                write_node(item, sub(lst, spec.item_tag), gb2022)
        elif kind == TEXTS:
            for v in value:
                sub(el, tag).text = xml_text(v)
        else:
            value.to_element(el)
    for tag, xml in obj.extra:
        try:
            el.append(etree.fromstring(xml if xml.isprintable() else xml_text(xml)))
        except etree.XMLSyntaxError:  # extras come from parsed XML, or else from elsewhere
            sub(el, tag)
