"""The device side (floor 4): the registrar (registration, keepalive, offline), queries and
controls with multi-part answers, catalog sync and subscriptions to devices, alarms, positions,
and the device's part of voice broadcast. It never imports the uplink."""

from gateway.downlink.broadcast import AudioSource, PendingBroadcast, VoiceBroadcast
from gateway.downlink.collector import Collector, Outcome, QueryResult
from gateway.downlink.downlink import Downlink, Elsewhere
from gateway.downlink.queries import DeviceUnavailable, QueryError, QueryRejected, QueryTimeout
from gateway.downlink.quirks import QUIRKS, DeviceQuirks
from gateway.downlink.registrar import Registrar, gb_date, make_tz
from gateway.downlink.remote import RemoteDevices
from gateway.downlink.subscriptions import Subscriptions
from gateway.downlink.sync import CatalogSync

__all__ = [
    "QUIRKS",
    "AudioSource",
    "CatalogSync",
    "Collector",
    "DeviceQuirks",
    "DeviceUnavailable",
    "Downlink",
    "Elsewhere",
    "Outcome",
    "PendingBroadcast",
    "QueryError",
    "QueryRejected",
    "QueryResult",
    "QueryTimeout",
    "Registrar",
    "RemoteDevices",
    "Subscriptions",
    "VoiceBroadcast",
    "gb_date",
    "make_tz",
]
