"""Preview sessions: one WebRTC peer connection per viewer, one feed per previewed channel.

SKELETON (foundation of issue 17): the interface the API and the app are wired against. The
preview helper replaces the bodies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.downlink import Downlink
from gateway.media import SessionTable
from gateway.metrics import Metrics
from gateway.settings import PreviewSection
from gateway.uplink import Calls


class PreviewError(Exception):
    """A preview could not be opened: ``status`` is the HTTP status, ``message`` says why."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Previews:
    """Every preview of the gateway."""

    def __init__(
        self,
        *,
        settings: PreviewSection,
        calls: Calls,
        media: SessionTable[Any],
        downlink: Downlink,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = settings
        self.calls = calls
        self.media = media
        self.downlink = downlink
        self.metrics = metrics
        self.clock = clock

    async def start(self) -> None:
        """Nothing to start yet (feeds and peer connections come with viewers)."""

    async def close(self) -> None:
        """End every preview (reason ``stopping``) and free the legs."""

    @property
    def active(self) -> int:
        return 0

    async def open(self, channel_id: str, offer: str, *, owner: str) -> tuple[str, str]:
        """Open a preview of ``channel_id`` for the SDP ``offer``; returns (session id, SDP
        answer). Raises :class:`PreviewError`."""
        raise PreviewError(503, "preview is not built yet")

    async def end(self, session_id: str, reason: str = "deleted") -> bool:
        """End one preview; False when there is no such session."""
        return False

    def sessions(self) -> list[dict[str, Any]]:
        """The open previews, for the API."""
        return []
