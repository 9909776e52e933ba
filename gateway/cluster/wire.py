"""The JSON forms of what crosses the bus: devices, catalog items, alarms and MANSCDP messages.

Messages and items go as the codec's plain dicts (``gateway.manscdp.to_plain``, the form the
store keeps items in) with the message's root and CmdType, so a node reads back exactly the
typed value the other node had. A value that does not read back raises
:class:`~gateway.cluster.bus.ClusterError`.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from gateway.cluster.bus import ClusterError
from gateway.manscdp import REGISTRY, CatalogItem, Message, from_plain, to_plain
from gateway.model import Alarm, Device

_DEVICE_FIELDS = frozenset(f.name for f in fields(Device))
_ALARM_FIELDS = frozenset(f.name for f in fields(Alarm))


def device_to_wire(dev: Device) -> dict[str, Any]:
    return asdict(dev)


def device_from_wire(data: Any) -> Device:
    if not isinstance(data, dict) or not isinstance(data.get("device_id"), str):
        raise ClusterError("not a device record", "bad")
    try:
        return Device(**{k: v for k, v in data.items() if k in _DEVICE_FIELDS})
    except TypeError as exc:
        raise ClusterError(f"not a device record: {exc}", "bad") from None


def alarm_to_wire(alarm: Alarm) -> dict[str, Any]:
    return asdict(alarm)


def alarm_from_wire(data: Any) -> Alarm:
    if not isinstance(data, dict):
        raise ClusterError("not an alarm", "bad")
    try:
        return Alarm(**{k: v for k, v in data.items() if k in _ALARM_FIELDS})
    except TypeError as exc:
        raise ClusterError(f"not an alarm: {exc}", "bad") from None


def item_to_wire(item: CatalogItem | None) -> dict[str, Any] | None:
    return None if item is None else to_plain(item)


def item_from_wire(data: Any) -> CatalogItem | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ClusterError("not a catalog item", "bad")
    try:
        return from_plain(CatalogItem, data)
    except Exception as exc:
        raise ClusterError(f"not a catalog item: {exc}", "bad") from None


def message_to_wire(msg: Message) -> dict[str, Any]:
    return {"root": msg.ROOT, "cmd": msg.CMD, "plain": to_plain(msg)}


def message_from_wire(data: Any) -> Message:
    if not isinstance(data, dict):
        raise ClusterError("not a message", "bad")
    cls = REGISTRY.get((str(data.get("root", "")).lower(), str(data.get("cmd", "")).lower()))
    plain = data.get("plain")
    if cls is None or not isinstance(plain, dict):
        raise ClusterError(f"unknown message {data.get('root')}/{data.get('cmd')}", "bad")
    try:
        return from_plain(cls, plain)
    except Exception as exc:
        raise ClusterError(f"unreadable {cls.CMD}: {exc}", "bad") from None


def items_to_wire(items: list[Any]) -> list[dict[str, Any]]:
    """The items of a list answer (records, catalog items, presets...) as plain dicts."""
    return [to_plain(i) for i in items]


def items_from_wire(response: Message, data: Any) -> list[Any]:
    """The items of a list answer back, typed as ``response``'s list holds them."""
    if not isinstance(data, list):
        raise ClusterError("items are not a list", "bad")
    spec = next((s for s in response._specs if s.attr == "items" and s.node is not None), None)
    if spec is None or spec.node is None:
        if data:
            raise ClusterError(f"{response.CMD} has no item list", "bad")
        return []
    cls = spec.node
    try:
        return [from_plain(cls, d) for d in data]
    except Exception as exc:
        raise ClusterError(f"unreadable items of {response.CMD}: {exc}", "bad") from None
