"""Typed MANSCDP nodes ⇄ plain JSON-able dicts keyed by the standard's element names.

The store keeps every field of a catalog item this way (``{"DeviceID": ..., "Info": {...}}``),
unknown vendor elements included (under ``"_extra"``), so nothing a device reported is lost and
operators read the same names as in the standard.
"""

from __future__ import annotations

from typing import Any, TypeVar

from gateway.manscdp.schema import BLOCK, FLOAT, INT, LIST, NODE, STR, TEXTS, Block, Node

N = TypeVar("N", bound=Node)


def _block_to_plain(b: Block) -> dict[str, Any]:
    out: dict[str, Any] = {"tag": b.tag}
    if b.text:
        out["text"] = b.text
    if b.attrib:
        out["attrib"] = [list(a) for a in b.attrib]
    if b.children:
        out["children"] = [_block_to_plain(c) for c in b.children]
    return out


def _block_from_plain(d: dict[str, Any]) -> Block:
    return Block(
        tag=str(d["tag"]),
        text=str(d.get("text", "")),
        children=tuple(_block_from_plain(c) for c in d.get("children", ())),
        attrib=tuple((str(k), str(v)) for k, v in d.get("attrib", ())),
    )


def to_plain(obj: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in obj._specs:
        value = getattr(obj, spec.attr)
        if value is None or (spec.kind in (LIST, TEXTS) and not value):
            continue
        if spec.kind == NODE:
            out[spec.tag] = to_plain(value)
        elif spec.kind == LIST:
            out[spec.tag] = [to_plain(v) for v in value]
        elif spec.kind == TEXTS:
            out[spec.tag] = list(value)
        elif spec.kind == BLOCK:
            out[spec.tag] = _block_to_plain(value)
        else:
            out[spec.tag] = value
    if obj.extra:
        out["_extra"] = [list(e) for e in obj.extra]
    return out


def from_plain(cls: type[N], data: dict[str, Any]) -> N:
    values: dict[str, Any] = {}
    by_tag = cls._by_tag
    for key, value in data.items():
        if key == "_extra":
            values["extra"] = tuple((str(t), str(x)) for t, x in value)
            continue
        spec = by_tag.get(key.lower())
        if spec is None:
            continue
        kind = spec.kind
        if kind == STR:
            values[spec.attr] = str(value)
        elif kind == INT:
            values[spec.attr] = int(value)
        elif kind == FLOAT:
            values[spec.attr] = float(value)
        elif kind == NODE:
            assert spec.node is not None
            values[spec.attr] = from_plain(spec.node, value)
        elif kind == LIST:
            assert spec.node is not None
            item_cls = spec.node
            values[spec.attr] = tuple(from_plain(item_cls, v) for v in value)
        elif kind == TEXTS:
            values[spec.attr] = tuple(str(v) for v in value)
        else:
            values[spec.attr] = _block_from_plain(value)
    return cls(**values)
