"""Live preview in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package with ``executable_path`` (Playwright never downloads a browser here).

With the gateway (API on an OS-picked port, ICE host candidates on 127.0.0.1) and a simulated
NVR, a user logs in to the console, opens the NVR's page and presses play on a channel: the
console's own WHEP client (a plain RTCPeerConnection, no player library) opens the preview and
the ``<video>`` really plays the NVR's clip (its width, and decoded frames that keep coming). A
second channel, started from the tree, plays beside it in the grid while the first goes on;
closing a tile ends its session on the gateway and the device leg (BYE to the NVR). The NVR
going offline ends the playing tile, and a channel of an offline device shows the gateway's own
409 message in its tile. Leaving the page ends what still plays (pagehide, keepalive DELETE).
The playing picture is saved as ``bench/out/console/preview.png``.

Chromium flags, and why (each was removed in turn to see what breaks):

* ``--allow-loopback-in-peer-connection``: Chromium gathers no ICE candidate on the loopback
  interface without it. On a machine with another interface (this one) ICE still works without
  it: Chromium's checks from its LAN socket reach the gateway's 127.0.0.1 candidate and come back
  as a peer-reflexive pair. On a host with loopback only (a container without network, checked
  with ``unshare -n``) nothing connects without it.
* ``--disable-features=WebRtcHideLocalIpsWithMdns``: Chromium hides its host addresses behind
  random ``<uuid>.local`` mDNS names. On a loopback-only host their registration never
  finishes, ICE gathering never completes and nothing connects; with the flag the real
  addresses go in the offer. On a host with a LAN the names cost something too: aioice tries
  to resolve them by multicast, with an asyncio lock it keeps per thread, bound to the first
  event loop that used it; in a process that has run an earlier loop (pytest: one per test)
  the gateway then answers the offer 400 ("... is bound to a different event loop"). Chromium
  keeps only the LAST ``--disable-features`` switch, so this one replaces Playwright's own list
  (features of its request interception and of Google services at start-up, none of which this
  test uses).
* Not needed: ``--autoplay-policy=no-user-gesture-required`` (a muted ``<video autoplay>`` plays
  without a gesture) and ``--use-fake-ui-for-media-stream`` (nothing asks for camera or
  microphone: the transceivers are receive-only).

Both flags are kept so that the test does not depend on the machine having a LAN interface. A
user's browser needs neither: it reaches the gateway's LAN address, and its mDNS names come back
as peer-reflexive candidates the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conformance.peers.device import SimDevice
from gateway.manscdp import CatalogItem
from gateway.metrics import Metrics
from gateway.sip import Endpoint, TimerConfig
from tests.api.conftest import Api
from tests.conftest import sim, wait_for

# The browser tests share one worker of a parallel run: a Chromium decoding video is the
# heaviest process of the suite, and two at once starve the rest of the machine.
pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("browser")]

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "bench" / "out" / "console"
NVR = "34020000001180000077"
TS_NVR = "34020000001180000078"  # streams MPEG-TS (payload type 33): refused with 415
ALARM_IN = "34020000001340000001"  # an alarm input (type 134): a channel without a picture
USER, PASSWORD = "watcher", "preview-Pa55word"
CHROMIUM_WEBRTC_FLAGS = [
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# ms: a cold channel waits for the NVR's INVITE and its first key frame; on a loaded machine
# (a parallel run) ten more decoded frames have taken over 15 s
UI_WAIT = 30_000
MEDIA = {
    "host": "127.0.0.1",
    "port_min": 47700,
    "port_max": 47799,
    "rtp_timeout": 3.0,
    "invite_timeout": 3.0,
}
# Chromium starting on a busy machine can hold the loop long enough for the gateway to shed a
# REGISTER with 503; this test is not about overload.
NO_SHEDDING = {"enabled": False}

PCS = """(() => {
  const Real = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = class extends Real {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
  };
})();"""

# What the page's <video> of a channel shows: size and decoded frames.
VIDEO = """ch => {
  const v = document.querySelector(`[data-player="${ch}"] video`);
  if (!v) return null;
  return {w: v.videoWidth, h: v.videoHeight, frames: v.getVideoPlaybackQuality().totalVideoFrames,
          paused: v.paused};
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("Playwright's Python package is missing: .venv/bin/pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install -y --no-install-recommends chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_WEBRTC_FLAGS
        )
        try:
            yield b
        finally:
            await b.close()


async def plays(page: Page, channel: str, *, frames: int = 10) -> dict[str, Any]:
    """Wait until the channel's tile shows the clip (320x240) and ``frames`` more frames have
    been decoded than when asked: the picture moves, it is not one frame stuck."""
    await page.wait_for_selector(
        f'[data-player="{channel}"][data-state="playing"]', timeout=UI_WAIT
    )
    await page.wait_for_function(f"ch => ({VIDEO})(ch).w > 0", arg=channel, timeout=UI_WAIT)
    first = await page.evaluate(f"({VIDEO})", channel)
    await page.wait_for_function(
        f"([ch, n]) => ({VIDEO})(ch).frames >= n",
        arg=[channel, first["frames"] + frames],
        timeout=UI_WAIT,
    )
    now: dict[str, Any] = await page.evaluate(f"({VIDEO})", channel)
    assert (now["w"], now["h"]) == (320, 240), now
    assert now["paused"] is False
    return now


async def live_previews(api: Api) -> list[dict[str, Any]]:
    r = await api.admin.get("/api/v1/previews")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def previews_become(api: Api, channels: list[str], timeout: float = 10.0) -> None:
    """Wait until the gateway's open previews are of exactly ``channels``."""
    deadline = time.monotonic() + timeout
    while True:
        now = sorted(p["channel_id"] for p in await live_previews(api))
        if now == sorted(channels):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"previews {now}, expected {channels}")
        await asyncio.sleep(0.05)


def streaming(dev: SimDevice, channel: str) -> bool:
    """The NVR's newest INVITE dialog for ``channel`` is live (no BYE yet). Older ones of a
    device that went offline stay open in the simulator: the gateway sends no BYE to a device
    it lost."""
    mine = [s for s in dev.media_sessions.values() if s.channel_id == channel]
    return bool(mine) and not mine[-1].ended


async def test_the_console_plays_channels_in_a_grid_and_ends_their_sessions(
    start_api: Callable[..., Awaitable[Api]],
    device_endpoint: Any,
    browser: Browser,
    tmp_path: Path,
) -> None:
    api = await start_api(
        downlink={"response_timeout": 1.5, "idle_timeout": 0.5},
        media=MEDIA,
        preview={"ice_addresses": ["127.0.0.1"]},
        http={"sse_interval": 0.2},
        overload=NO_SHEDDING,
    )
    assert api.gw.api is not None
    await api.gw.api.auth.add_user(USER, PASSWORD, "viewer")
    alarm_input = CatalogItem(device_id=ALARM_IN, name="报警输入1", parent_id=NVR, status="ON")
    dev = sim(device_endpoint, api.gw, NVR, channel_count=3, catalog_extra_items=[alarm_input])
    dev.install()
    assert (await dev.register()).status == 200
    await wait_for(lambda: api.gw.registrar.devices[NVR].synced_at > 0, 20, "catalog sync")
    one, two, three = dev.channel_ids()

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def console(msg: Any) -> None:
        # The browser's own note of an HTTP error status (the 409 the test provokes) is fine.
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            errors.append(f"console: {msg.text}")

    page.on("console", console)
    page.on("request", lambda req: requests.append(req.url))
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        # -- log in as a viewer (the least role that may preview), open the NVR's page ---------
        await page.goto(api.base + "/")
        await page.fill("#login-username", USER)
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_selector('#nav a[data-nav="devices"]')
        await page.click('#nav a[data-nav="devices"]')
        await page.click(f'tr[data-device="{NVR}"] a', timeout=UI_WAIT)
        await page.wait_for_function(
            "() => document.querySelectorAll('tr[data-channel]').length === 4", timeout=UI_WAIT
        )
        assert await page.locator("#players").is_hidden()
        # Every camera has its play button; the alarm input has none.
        assert await page.locator("tr[data-channel] button[data-play]").count() == 3
        assert await page.locator(f'tr[data-channel="{ALARM_IN}"] button').count() == 0

        # -- play channel 1 from the channel list: the <video> really plays the clip -----------
        await page.click(f'tr[data-channel="{one}"] button[data-play="{one}"]')
        await plays(page, one, frames=25)
        assert streaming(dev, one)
        assert sum(s.channel_id == one for s in dev.media_sessions.values()) == 1
        [first] = await live_previews(api)
        assert first["channel_id"] == one and first["owner"] == f"user:{USER}"
        assert await page.get_attribute(f'[data-player="{one}"]', "data-session") == first["id"]
        await page.screenshot(path=str(SHOTS / "preview.png"))
        await page.locator(f'[data-player="{one}"]').screenshot(
            path=str(SHOTS / "preview-tile.png")
        )

        # -- a second channel from the tree: both play in the grid, the first goes on ----------
        await page.click('#nav a[data-nav="tree"]')
        await page.click('li[data-node="_unassigned"] > .twisty', timeout=UI_WAIT)
        await page.click(f'li[data-node="{NVR}"] > .twisty', timeout=UI_WAIT)
        await page.click(f'li[data-node="{two}"] button[data-play="{two}"]', timeout=UI_WAIT)
        await page.wait_for_selector(f'li[data-node="{ALARM_IN}"]')
        assert await page.locator(f'li[data-node="{ALARM_IN}"] button[data-play]').count() == 0
        await plays(page, two)
        await plays(page, one)  # the route changed; the panel and its pictures did not
        assert await page.locator("[data-player]").count() == 2
        assert {p["channel_id"] for p in await live_previews(api)} == {one, two}
        await page.screenshot(path=str(SHOTS / "preview-grid.png"))

        # -- closing a tile ends its session and, its last viewer gone, the device leg ---------
        deleted = api.gw.metrics.get("preview.ended.deleted")
        await page.click(f'[data-player="{one}"] button[data-close="{one}"]')
        await page.wait_for_selector(f'[data-player="{one}"]', state="detached")
        await previews_become(api, [two])
        assert api.gw.metrics.get("preview.ended.deleted") == deleted + 1  # by its DELETE
        await wait_for(lambda: not streaming(dev, one), 10, "BYE for channel 1")
        assert streaming(dev, two)
        await plays(page, two)

        # -- the NVR goes offline: the playing tile ends; a new one shows the 409 --------------
        assert (await dev.unregister()).status == 200
        await page.wait_for_selector(f'[data-player="{two}"][data-state="ended"]', timeout=UI_WAIT)
        await previews_become(api, [])
        async with page.expect_response(lambda r: r.url.endswith(f"/whep/channels/{three}")) as r:
            await page.click(f'li[data-node="{three}"] button[data-play="{three}"]')
        answer = await r.value
        assert answer.status == 409
        refused = f'[data-player="{three}"][data-state="error"][data-status="409"]'
        await page.wait_for_selector(refused, timeout=UI_WAIT)
        told = await page.locator(f'[data-player="{three}"] .player-status').inner_text()
        assert "设备离线" in told and (await answer.json())["error"] in told, told
        await page.screenshot(path=str(SHOTS / "preview-ended-and-refused.png"))
        await page.click("#lang-switch")  # the tile's own words follow the language
        await page.wait_for_function(
            "sel => document.querySelector(sel).innerText.startsWith('Device offline (HTTP 409)')",
            arg=f'[data-player="{three}"] .player-status',
        )

        # -- back online, Retry plays again; leaving the page ends the session -----------------
        assert (await dev.register()).status == 200
        await page.click(f'[data-player="{two}"] button[data-retry="{two}"]')
        await plays(page, two)
        await previews_become(api, [two])

        # -- the device page's own play button: every online channel of the NVR at once -------
        await page.click('#nav a[data-nav="devices"]')
        await page.click(f'tr[data-device="{NVR}"] a', timeout=UI_WAIT)
        await page.wait_for_selector("tr[data-channel] .badge.on", timeout=UI_WAIT)
        await page.click("#btn-play-all")
        for channel in (one, two, three):  # two goes on; three's refused tile starts again
            await plays(page, channel)
        assert await page.locator("[data-player]").count() == 3
        await previews_become(api, [one, two, three])

        # -- leaving the page ends every session it had (pagehide, keepalive DELETE) -----------
        deleted = api.gw.metrics.get("preview.ended.deleted")
        await page.goto("about:blank")
        await previews_become(api, [])
        assert api.gw.metrics.get("preview.ended.deleted") == deleted + 3
        for channel in (one, two, three):
            await wait_for(lambda c=channel: not streaming(dev, c), 10, f"BYE for {channel}")

        assert errors == []
        # Nothing fetched from elsewhere: no CDN, no player library.
        assert all(u.startswith((api.base + "/", "about:", "data:")) for u in requests), requests
    finally:
        dev.stop()
        await context.close()


@pytest.fixture
async def second_endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=TimerConfig(t1=0.1, t2=0.4, t4=0.5))
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


async def test_refusals_show_the_gateways_words_in_the_tile(
    start_api: Callable[..., Awaitable[Api]],
    device_endpoint: Any,
    second_endpoint: Endpoint,
    browser: Browser,
) -> None:
    """In English this time: a device streaming MPEG-TS (a codec the gateway cannot take apart)
    gets the 415 and its reason; with the preview limit reached, the next tile gets the 503,
    its reason and the Retry-After; the playing tile is not disturbed. Then the playing tile's
    connection fails (as Chromium says once ICE consent is lost): the tile says so and the
    session is DELETEd."""
    api = await start_api(
        downlink={"response_timeout": 1.5, "idle_timeout": 0.5},
        media=MEDIA,
        preview={"ice_addresses": ["127.0.0.1"], "max_sessions": 1},
        overload=NO_SHEDDING,
    )
    assert api.gw.api is not None
    await api.gw.api.auth.add_user(USER, PASSWORD, "viewer")
    nvr = sim(device_endpoint, api.gw, NVR, channel_count=2)
    ts = sim(second_endpoint, api.gw, TS_NVR, channel_count=1, payload_type=33)
    for dev in (nvr, ts):
        dev.install()
        assert (await dev.register()).status == 200
    for device_id in (NVR, TS_NVR):
        await wait_for(
            lambda d=device_id: api.gw.registrar.devices[d].synced_at > 0, 20, "catalog sync"
        )
    one, two = nvr.channel_ids()
    [mpeg_ts] = ts.channel_ids()

    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    # Keeps a hand on the page's peer connections, to make one say "failed".
    await context.add_init_script(PCS)
    page = await context.new_page()
    try:
        await page.goto(api.base + "/")
        await page.click("#lang-switch")
        await page.fill("#login-username", USER)
        await page.fill("#login-password", PASSWORD)
        await page.click("#login-submit")
        await page.click('#nav a[data-nav="tree"]')
        await page.click('li[data-node="_unassigned"] > .twisty', timeout=UI_WAIT)
        for device_id in (TS_NVR, NVR):
            await page.click(f'li[data-node="{device_id}"] > .twisty', timeout=UI_WAIT)

        async def refused(channel: str, status: int) -> tuple[str, Any]:
            async with page.expect_response(
                lambda r: r.url.endswith(f"/whep/channels/{channel}")
            ) as r:
                await page.click(f'li[data-node="{channel}"] button[data-play="{channel}"]')
            answer = await r.value
            assert answer.status == status
            sel = f'[data-player="{channel}"][data-state="error"][data-status="{status}"]'
            await page.wait_for_selector(sel, timeout=UI_WAIT)
            told = await page.locator(f"{sel} .player-status").inner_text()
            assert (await answer.json())["error"] in told, told
            return told, answer

        told, _ = await refused(mpeg_ts, 415)
        assert told.startswith("The browser cannot play this channel's codec (HTTP 415)"), told
        await previews_become(api, [])

        await page.click(f'li[data-node="{one}"] button[data-play="{one}"]')
        await plays(page, one)
        told, answer = await refused(two, 503)
        assert told.startswith("Preview not possible now (HTTP 503)"), told
        assert f"Try again in {answer.headers['retry-after']} s" in told, told
        await page.locator("#players").screenshot(path=str(SHOTS / "preview-refused.png"))
        await plays(page, one)
        await previews_become(api, [one])

        deleted = api.gw.metrics.get("preview.ended.deleted")
        await page.evaluate(
            """() => {
              const pc = window.__pcs.find((p) => p.connectionState === "connected");
              Object.defineProperty(pc, "connectionState", { value: "failed" });
              pc.dispatchEvent(new Event("connectionstatechange"));
            }"""
        )
        sel = f'[data-player="{one}"][data-state="error"][data-status="0"] .player-status'
        await page.wait_for_selector(sel, timeout=UI_WAIT)
        assert await page.inner_text(sel) == "The media connection failed (ICE/DTLS)"
        await previews_become(api, [])
        assert api.gw.metrics.get("preview.ended.deleted") == deleted + 1
        await wait_for(lambda: not streaming(nvr, one), 10, "BYE after the failure")
    finally:
        nvr.stop()
        ts.stop()
        await context.close()
