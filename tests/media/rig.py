"""A gateway with one simulated NVR below and one simulated city platform above, for the media
tests: the session table's (tests/media), the upper's calls (tests/uplink) and the device side of
voice broadcast (tests/downlink). The fixtures reach each of those folders through its
``conftest.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from gateway.app import Gateway
from gateway.events import CatalogSynced
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer, TimerConfig
from tests.conftest import wait_for

GW = "34020000002000000001"
UP = "34010000002000000001"
NVR = "34020000001180000001"
FRAMES = 30
TRANSPORTS = ["udp", "tcp-passive", "tcp-active"]


def fast_timers() -> TimerConfig:
    return TimerConfig(t1=0.1, t2=0.4, t4=0.5)


@pytest.fixture
async def upper_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


@pytest.fixture
async def nvr_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


Start = Callable[..., Awaitable[Gateway]]


class Rig:
    """A gateway with one simulated NVR below and one simulated city platform above."""

    def __init__(self, gw: Gateway, platform: SimPlatform, nvr: SimDevice) -> None:
        self.gw, self.platform, self.nvr = gw, platform, nvr
        assert gw.media is not None and gw.calls is not None
        self.media = gw.media
        self.calls = gw.calls
        self.ports_at_rest = gw.media.relay.ports_free()

    @property
    def channel(self) -> str:
        return self.nvr.channel_id(1)

    async def invite(self, **kw: Any) -> Any:
        return await self.platform.invite(GW, kw.pop("channel", self.channel), **kw)

    async def at_rest(self) -> None:
        """Every leg ended, every port and SSRC back in its pool."""
        media = self.media
        await wait_for(
            lambda: (
                not media.legs
                and not media.outputs_by_call
                and media.ssrcs.in_use() == 0
                and media.relay.ports_free() == self.ports_at_rest
            ),
            10,
            "sessions ended and ports/SSRCs freed",
        )


@pytest.fixture
async def rig_factory(
    upper_endpoint: Endpoint, nvr_endpoint: Endpoint, start_gateway: Start
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(
        *,
        device_transport: str = "udp",
        media: dict[str, Any] | None = None,
        upper: dict[str, Any] | None = None,
        gateway: dict[str, dict[str, Any]] | None = None,
        **nvr_kw: Any,
    ) -> Rig:
        """``upper``: keys of the upper's config; ``gateway``: more config sections."""
        platform = SimPlatform(upper_endpoint, platform_id=UP, domain=UP[:10]).start()
        up = {
            "id": UP,
            "domain": UP[:10],
            "host": "127.0.0.1",
            "port": upper_endpoint.port,
            "password": "12345678",
            "keepalive_interval": 0.5,
            "keepalive_timeout_count": 2,
            "retry_interval": 0.2,
        }
        up.update(upper or {})
        media_cfg = {
            "host": "127.0.0.1",
            "port_min": 47000,
            "port_max": 47199,
            "device_transport": device_transport,
            "rtp_timeout": 3.0,
            "invite_timeout": 3.0,
        }
        media_cfg.update(media or {})
        sections: dict[str, dict[str, Any]] = {
            "uplink": {"platforms": [up]},
            "media": media_cfg,
            "downlink": {"response_timeout": 3.0, "idle_timeout": 0.5},
        }
        for name, values in (gateway or {}).items():
            sections[name] = {**sections.get(name, {}), **values}
        gw = await start_gateway(**sections)
        nvr_kw.setdefault("channel_count", 4)
        nvr_kw.setdefault("live_frames", FRAMES)
        nvr = SimDevice(nvr_endpoint, NVR, Peer("udp", "127.0.0.1", gw.port), **nvr_kw)
        nvr.install()
        synced: list[CatalogSynced] = []
        gw.events.subscribe(CatalogSynced, synced.append)
        assert (await nvr.register()).status == 200
        await wait_for(lambda: bool(synced), 10, "catalog synced")
        await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 5, "upper")
        rig = Rig(gw, platform, nvr)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.platform.close()
        await rig.nvr.close_media()


def device_session(rig: Rig, index: int = -1) -> Any:
    sessions = list(rig.nvr.media_sessions.values())
    return sessions[index]
