"""Queries and controls from an upper, forwarded to the device that answers them.

Reference §7.2–§7.4; GB/T 28181-2022 §9.3, §9.5 and Annex M. The upper names a shared channel
or device in its own IDs; the request goes down with our ID and our own SN (the downlink's
query), and the device's answer comes back up with the upper's SN and IDs. A multi-part answer
is relayed item by item, in our own parts. A DeviceControl keeps its PTZ string unchanged. When
the device does not answer, a command whose answer has a Result gets ``Result ERROR``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.downlink import Downlink, QueryError
from gateway.manscdp import (
    REGISTRY,
    ConfigDownloadQuery,
    DeviceConfig,
    DeviceControl,
    DeviceStatusResponse,
    Message,
)
from gateway.metrics import Metrics
from gateway.uplink.answers import SendParts
from gateway.uplink.idmap import IdMap
from gateway.uplink.session import UpperSession

# Queries forwarded to the device that answers them (reference §7.2).
FORWARDED = frozenset(
    {
        "DeviceInfo",
        "DeviceStatus",
        "RecordInfo",
        "ConfigDownload",
        "PresetQuery",
        "HomePositionQuery",
        "CruiseTrackListQuery",
        "CruiseTrackQuery",
        "PTZPosition",
        "SDCardStatus",
        "MobilePosition",
    }
)


def error_answer(msg: Message, target: str) -> Message | None:
    """``Result ERROR`` for ``msg`` when its answer has a Result, else ``None``."""
    cls = REGISTRY.get(("response", msg.CMD.lower()))
    if cls is None or "result" not in {sp.attr for sp in cls._specs}:
        return None
    return cls(sn=msg.sn, device_id=target, result="ERROR")  # type: ignore[call-arg]


def item_for_upper(idmap: IdMap, item: Any, fallback: str | None = None) -> Any:
    """A relayed item (a record, an alarm input, a position...) with its DeviceID in the
    upper's IDs; an ID the upper does not know becomes ``fallback`` (or is left out). Items
    without one (cruise tracks and points, SD cards, presets) go as they are."""
    device_id = getattr(item, "device_id", None)
    if not device_id:
        return item
    return replace(item, device_id=idmap.known_upper(device_id) or fallback)


class Forwarder:
    """Forwards one upper's query or control to a device and relays the answer."""

    def __init__(
        self,
        *,
        downlink: Downlink,
        metrics: Metrics,
        send: Callable[[UpperSession, Message], Awaitable[bool]],
        send_parts: SendParts,
    ) -> None:
        self.downlink = downlink
        self.metrics = metrics
        self.send = send
        self.send_parts = send_parts

    async def query(self, s: UpperSession, msg: Message, local: str) -> None:
        """Forward ``msg`` (naming ``local`` in the upper's IDs) and relay the answer."""
        upper_target = msg.device_id
        down = replace(msg, device_id=local)
        kw: dict[str, Any] = {}
        if isinstance(down, ConfigDownloadQuery) and down.config_type:
            types = tuple(t for t in down.config_type.split("/") if t)
            kw = {"expected_parts": max(1, len(types)), "config_types": types}
        try:
            res = await self.downlink.query(local, down, **kw)
        except QueryError as exc:
            s.log.info(
                "uplink.forward_failed", cmd_type=msg.CMD, target=upper_target, error=str(exc)
            )
            self.metrics.inc("uplink.forward_failed")
            failed = error_answer(msg, upper_target)
            if failed is not None:
                await self.send(s, failed)
            return
        self.metrics.inc("uplink.forwarded")
        first = res.response
        if res.listed:
            # Every item of every part the device sent, in our own parts (Annex M), SumNum
            # the items relayed; the other fields (Result, Name, Number...) the first part's.
            items = [item_for_upper(s.idmap, i, upper_target) for i in res.items]

            def make(batch: Sequence[Any], total: int) -> Message:
                fields: dict[str, Any] = {
                    "sn": msg.sn,
                    "device_id": upper_target,
                    "sum_num": total,
                    "items": tuple(batch),
                }
                return replace(first, **fields)

            await self.send_parts(s, make, items)
            return
        # No list (or a list type answered without one: a 2016 flat MobilePosition, a bare
        # Result ERROR): relayed as the device wrote it, nothing added.
        for r in res.responses:
            if isinstance(r, DeviceStatusResponse) and r.alarm_status:
                alarms = tuple(item_for_upper(s.idmap, a) for a in r.alarm_status)
                r = replace(r, alarm_status=alarms)
            await self.send(s, replace(r, sn=msg.sn, device_id=upper_target))

    async def control(self, s: UpperSession, msg: DeviceControl | DeviceConfig, local: str) -> None:
        """Forward a DeviceControl or DeviceConfig and relay the device's Response, if any."""
        try:
            if isinstance(msg, DeviceControl):
                answer: Message | None = await self.downlink.control(local, msg)
            else:
                answer = await self.downlink.configure(local, msg)
        except QueryError as exc:
            s.log.info(
                "uplink.control_failed", cmd_type=msg.CMD, target=msg.device_id, error=str(exc)
            )
            self.metrics.inc("uplink.control_failed")
            if isinstance(msg, DeviceConfig) or msg.expects_response:
                failed = error_answer(msg, msg.device_id)
                if failed is not None:
                    await self.send(s, failed)
            return
        self.metrics.inc("uplink.control_forwarded")
        if answer is not None:
            await self.send(s, replace(answer, sn=msg.sn, device_id=msg.device_id))
