"""One configured upper platform as the uplink holds it: its registration, its ID map, what it
may see and the subscriptions it made (GB/T 28181-2022 §9.1, §9.11; reference §7.2)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from gateway.settings import UpperPlatform
from gateway.uplink.idmap import IdMap
from gateway.uplink.quirks import UpperQuirks
from gateway.uplink.registration import UpperLink
from gateway.uplink.share import SharedView
from gateway.uplink.subscriptions import InboundSubscription

log = structlog.get_logger("gateway.uplink")


class UpperSession:
    def __init__(self, upper: UpperPlatform, link: UpperLink, idmap: IdMap, view: SharedView):
        self.upper = upper
        self.link = link
        self.idmap = idmap
        self.view = view
        self.subs: dict[str, InboundSubscription] = {}
        self.catalog_task: asyncio.Task[Any] | None = None
        # Over a UDP link: until when large requests skip TCP (it failed); 0: TCP is tried.
        self.tcp_retry_at = 0.0
        # Changes of what the upper sees (its share, the units) one at a time: each builds
        # the view before and after to tell the upper the difference.
        self.view_lock = asyncio.Lock()
        # In a cluster: this node does not hold the upper's lease, nothing may be sent to it
        # (gateway.uplink.takeover).
        self.fenced = False
        self.log = log.bind(upper=upper.id)

    @property
    def reliable(self) -> bool:
        return self.link.peer.reliable

    def hosts(self) -> set[str]:
        """Every address the upper is known by: configured, where its registrar is now (after
        a 302), and ``other_hosts`` (several NICs, a cluster)."""
        return {self.upper.host, self.link.home.host, self.link.peer.host, *self.upper.other_hosts}

    @property
    def quirks(self) -> UpperQuirks:
        """What this upper does that the standard does not ask for, with counts
        (:mod:`gateway.uplink.quirks`): the per-upper record for a status page or API."""
        return self.link.quirks

    @property
    def online(self) -> bool:
        """Registered with the upper (:class:`UpperLink`): only then does it hear from us."""
        return self.link.online
