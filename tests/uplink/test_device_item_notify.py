"""A device that lists no item for itself appears in an upper's view as the parent the gateway
makes for it, as soon as one of its channels does: a catalog subscription hears of it then (ADD
before its first channel), and hears it go (DEL with its last channel)."""

from __future__ import annotations

import pytest

from gateway.events import CatalogSynced
from tests.conftest import wait_for
from tests.uplink.test_uplink import GW, NVR1, gateway_with, nvr, online_at, platform, upper_config

pytestmark = pytest.mark.timeout(60)


async def test_a_device_is_announced_with_its_first_channel_and_withdrawn_with_its_last(
    upper_endpoint, start_gateway, device_endpoint
) -> None:
    p = platform(upper_endpoint)
    gw = await gateway_with(start_gateway, upper_config(upper_endpoint))
    await online_at(p)
    await p.subscribe(GW, "Catalog")
    synced: list[CatalogSynced] = []
    gw.events.subscribe(CatalogSynced, synced.append)
    dev = nvr(device_endpoint, gw, NVR1, channel_count=2)
    assert (await dev.register()).status == 200
    channels = list(dev.channel_ids())

    def changes() -> list[tuple[str, str]]:  # the ON/OFF of its registration aside
        return [e for e in p.catalog_events if e[0] in ("ADD", "DEL")]

    await wait_for(lambda: len(changes()) >= 3, 15, "the device and its channels")
    assert changes()[:3] == [("ADD", NVR1), ("ADD", channels[0]), ("ADD", channels[1])]
    # What the subscription said is what a query shows.
    listed = {i.device_id for i in (await p.catalog(GW)).items}
    assert {NVR1, *channels} <= listed
    # The device's catalog empties: its channels go, and then the device.
    await wait_for(lambda: bool(synced), 15, "the first sync")
    dev.channel_count = 0
    synced.clear()
    gw.sync.schedule(NVR1)
    await wait_for(lambda: bool(synced), 15, "the second sync")
    await wait_for(lambda: len(changes()) >= 6, 15, "the DELs")
    # (one NOTIFY lists devices first: planning.notify_items)
    assert sorted(changes()[3:]) == sorted(
        [("DEL", NVR1), ("DEL", channels[0]), ("DEL", channels[1])]
    )
    assert NVR1 not in {i.device_id for i in (await p.catalog(GW)).items}
