"""The field quirks each device was seen to show, counted per device (issue 15).

Real devices break the standard in a handful of known ways; where the gateway copes (reference
§8.3, §10) it says so here: :meth:`DeviceQuirks.note` counts the quirk in the metrics
(``device.quirk.<name>``) and per device, and logs it once per device (``device.quirk``, with
the quirk's name), so a flood of one quirk is one log line. Some quirks are also remembered
as a way of talking to that device (:meth:`DeviceQuirks.has`): a device that drops pipelined
requests gets one request at a time, a device that never answers SUBSCRIBE is not asked again
for a while. :meth:`snapshot` is what an HTTP API shows.

Bounded: quirk names are the fixed set :data:`QUIRKS` (any other name is a programming error),
only devices that passed digest authentication (a registered device, or the owner of a
validated catalog item or media leg) are noted, and at most ``max_devices`` devices are kept,
the least recently noted one forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from gateway.metrics import Metrics

__all__ = ["QUIRKS", "DeviceQuirks"]

log = structlog.get_logger("gateway.downlink.quirks")

QUIRKS: dict[str, str] = {
    "content_length_chars": "Content-Length counted characters, not bytes (datagram taken whole)",
    "no_refresh": "registration ran out while keepalives went on: asked to register again",
    "drops_pipelined": "dropped a request sent while another was in flight (TCP)",
    "subscribe_unanswered": "never answered a SUBSCRIBE",
    "ptz_response": "answered a PTZ DeviceControl with a Response the standard does not define",
    "no_parent_id": "catalog items without ParentID (hung under the device)",
    "answer_transport": "media answer changed the offered transport or setup role",
    "ascii_declared_charset": "plain-ASCII bodies only: the declared charset is taken",
}
"""Every quirk the gateway knows, by name, with what it means."""


class DeviceQuirks:
    """Per-device counts of :data:`QUIRKS` (see the module docstring)."""

    __slots__ = ("_by_device", "max_devices", "metrics")

    def __init__(self, metrics: Metrics, *, max_devices: int = 100_000) -> None:
        self.metrics = metrics
        self.max_devices = max_devices
        self._by_device: OrderedDict[str, dict[str, int]] = OrderedDict()

    def note(self, device_id: str, quirk: str, n: int = 1, **detail: object) -> int:
        """Count ``n`` sightings of ``quirk`` on ``device_id``; returns the device's count."""
        if quirk not in QUIRKS:
            raise ValueError(f"unknown quirk {quirk!r}")
        self.metrics.inc(f"device.quirk.{quirk}", n)
        book = self._by_device.get(device_id)
        if book is None:
            book = self._by_device[device_id] = {}
            while len(self._by_device) > self.max_devices:
                self._by_device.popitem(last=False)
        else:
            self._by_device.move_to_end(device_id)
        count = book[quirk] = book.get(quirk, 0) + n
        if count == n:  # the first sighting on this device: one line, then only the counts
            log.warning(
                "device.quirk", device_id=device_id, quirk=quirk, what=QUIRKS[quirk], **detail
            )
        return count

    def has(self, device_id: str, quirk: str) -> bool:
        book = self._by_device.get(device_id)
        return book is not None and quirk in book

    def of(self, device_id: str) -> dict[str, int]:
        """The quirks seen on one device, by name (empty when none)."""
        return dict(self._by_device.get(device_id, {}))

    def forget(self, device_id: str, quirk: str | None = None) -> None:
        """Drop one quirk (or all) of a device, e.g. when it was seen to behave after all."""
        book = self._by_device.get(device_id)
        if book is None:
            return
        if quirk is None:
            del self._by_device[device_id]
        else:
            book.pop(quirk, None)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Every device with a quirk: {device ID: {quirk: count}}."""
        return {device_id: dict(book) for device_id, book in self._by_device.items()}
