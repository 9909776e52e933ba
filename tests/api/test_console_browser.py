"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package with ``executable_path`` (Playwright never downloads a browser here).

With the gateway (API on an OS-picked port), a simulated NVR and a simulated upper platform, an
operator onboards a social unit through the console alone: log in, create the unit, add a device
account (its password shown once), download the unit's credential sheet and check what it says,
start the NVR with exactly those credentials and watch it come online on the open page (no
reload), open the device and see its channels, press a PTZ button and check the NVR received
that command (then a stop), take the NVR offline and watch the page change, share the unit with
the upper and check the upper's catalog query now returns the unit's cameras. Every page is
saved as a screenshot in the test's output directory and in ``bench/out/console/``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from conformance.peers.device import SimDevice
from conformance.peers.platform import SimPlatform
from gateway.manscdp.ptz import TILT_UP, ZOOM_IN, decode_ptz, preset_call
from gateway.metrics import Metrics
from gateway.sip import Endpoint, Peer
from tests.api.conftest import Api
from tests.conftest import wait_for
from tests.media.rig import fast_timers

# One worker of a parallel run for the browser tests (test_console_preview_browser.py).
pytestmark = [pytest.mark.timeout(90), pytest.mark.xdist_group("browser")]

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "bench" / "out" / "console"
GW = "34020000002000000001"
UP = "34010000002000000001"
ADMIN, ADMIN_PASSWORD = "admin", "console-test-Pa55"
CHANNELS = 4
UI_WAIT = 10_000  # ms: what the page may take to show a change (SSE interval + a refetch)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("Playwright's Python package is missing: .venv/bin/pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install -y --no-install-recommends chromium")
    async with async_playwright() as pw:
        # Playwright adds --no-sandbox itself (chromium_sandbox defaults to off): we run as root.
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def upper_ep() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


@pytest.fixture
async def nvr_ep() -> AsyncIterator[Endpoint]:
    ep = Endpoint(metrics=Metrics(), timers=fast_timers())
    await ep.start("127.0.0.1", 0)
    yield ep
    await ep.close()


class Shots:
    """Screenshots of each page, in the test's directory and in bench/out/console/."""

    def __init__(self, page: Page, out: Path, prefix: str) -> None:
        self.page = page
        self.out = out
        self.prefix = prefix
        self.saved: list[Path] = []
        out.mkdir(parents=True, exist_ok=True)
        SHOTS.mkdir(parents=True, exist_ok=True)
        for old in SHOTS.glob(f"{prefix}-*.png"):  # a previous run's
            old.unlink()

    async def take(self, name: str) -> None:
        path = self.out / f"{self.prefix}-{len(self.saved):02d}-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)
        self.saved.append(path)


class Sink(asyncio.DatagramProtocol):
    """A UDP port a session streams to: counts what arrives."""

    def __init__(self) -> None:
        self.packets = 0
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.packets += 1


class Watched:
    """What went wrong in the page: script errors, and console errors other than the browser's
    own note of an HTTP error status (the API's 4xx answers the test provokes)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, URL)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)
        page.on("request", lambda req: self.requests.append((req.method, req.url)))

    def _console(self, msg: Any) -> None:
        if msg.type == "error" and "Failed to load resource" not in msg.text:
            self.errors.append(f"console: {msg.text}")


async def go(page: Page, nav: str) -> None:
    """Navigate with the side bar, as a person would."""
    await page.click(f'#nav a[data-nav="{nav}"]')
    await page.wait_for_function("n => document.body.dataset.page === n", arg=nav, timeout=UI_WAIT)


async def badge_online(page: Page, device_id: str, online: bool, where: str = "") -> None:
    state = "true" if online else "false"
    sel = f'{where} [data-device-status="{device_id}"][data-online="{state}"]'
    await page.wait_for_selector(sel.strip(), timeout=UI_WAIT)


async def test_console_onboards_a_unit_end_to_end(
    start_api: Callable[..., Awaitable[Api]],
    upper_ep: Endpoint,
    nvr_ep: Endpoint,
    browser: Browser,
    tmp_path: Path,
) -> None:
    platform = SimPlatform(upper_ep, platform_id=UP, domain=UP[:10]).start()
    api = await start_api(
        gateway={"id": GW, "name": "测试网关", "civil_code": "340200"},
        downlink={"response_timeout": 3.0, "idle_timeout": 0.5},
        http={"sse_interval": 0.2},
        uplink={
            "platforms": [
                {
                    "id": UP,
                    "domain": UP[:10],
                    "host": "127.0.0.1",
                    "port": upper_ep.port,
                    "password": "12345678",
                    "keepalive_interval": 1.0,
                    "retry_interval": 0.2,
                    "share": [],
                }
            ]
        },
    )
    gw = api.gw
    assert gw.api is not None
    await gw.api.auth.add_user(ADMIN, ADMIN_PASSWORD, "admin")
    await wait_for(lambda: GW in platform.lowers and platform.lowers[GW].online, 10, "upper")

    context = await browser.new_context(
        viewport={"width": 1280, "height": 860}, accept_downloads=True, locale="zh-CN"
    )
    page = await context.new_page()
    watched = Watched(page)
    shots = Shots(page, tmp_path / "screenshots", "onboard")
    dev: SimDevice | None = None
    try:
        # -- log in (Chinese by default) ------------------------------------------------------
        await page.goto(api.base + "/")
        await page.wait_for_selector("#login-username")
        assert await page.locator("#login-submit").inner_text() == "登录"
        await page.fill("#login-username", ADMIN)
        await page.fill("#login-password", "wrong password")
        await page.click("#login-submit")
        await page.wait_for_function(
            "() => document.querySelector('#login-error').textContent.length > 0"
        )
        await shots.take("login-refused")
        await page.fill("#login-password", ADMIN_PASSWORD)
        await page.click("#login-submit")
        await page.wait_for_selector('#nav a[data-nav="units"]')
        assert await page.locator("#who").inner_text() == f"{ADMIN} · admin"
        await page.wait_for_selector('#live[data-state="on"]', timeout=UI_WAIT)
        await page.wait_for_selector('[data-tile="devices"]')
        await shots.take("overview-empty")
        # Marks this document: if anything below reloaded the page, the mark would be gone.
        await page.evaluate("window.__sameDocument = true")

        # -- create a unit; a refused field shows the API's own message -----------------------
        await go(page, "units")
        await page.click("#new-unit")
        await page.fill('.modal input[name="name"]', "第三中学")
        await page.fill('.modal input[name="civil_code"]', "34x")
        await page.click('.modal button[type="submit"]')
        refused = await api.admin.post(
            "/api/v1/units", json={"name": "第三中学", "civil_code": "34x", "kind": "school"}
        )
        assert refused.status_code == 422
        await page.wait_for_function(
            "m => document.querySelector('.modal .form-error').textContent === m",
            arg=refused.json()["error"],
            timeout=UI_WAIT,
        )
        await shots.take("unit-form-refused")
        await page.fill('.modal input[name="civil_code"]', "340200")
        await page.select_option('.modal select[name="kind"]', "school")
        await page.fill('.modal input[name="address"]', "人民路 3 号")
        await page.fill('.modal input[name="contact"]', "王老师")
        await page.click('.modal button[type="submit"]')
        await page.wait_for_function("() => /^#\\/units\\/[^/]+$/.test(location.hash)")
        unit_id = (await page.evaluate("location.hash")).split("/")[-1]
        unit = (await api.admin.get(f"/api/v1/units/{unit_id}")).json()
        assert unit["name"] == "第三中学" and unit["kind"] == "school"

        # -- add a device account: its password is shown once --------------------------------
        await page.click("#add-account")
        await page.fill('.modal input[name="name"]', "教学楼 NVR")
        await page.click('.modal button[type="submit"]')
        secret = page.locator("#password-once code.secret")
        await secret.wait_for(timeout=UI_WAIT)
        device_id = await secret.get_attribute("data-device")
        password = await secret.inner_text()
        assert device_id and len(device_id) == 20 and len(password) >= 12
        await page.wait_for_selector(f'tr[data-account="{device_id}"]')
        await shots.take("unit-with-account")

        # -- download the credential sheets (fetched with the bearer token) -------------------
        async with page.expect_download() as dl:
            await page.click("#sheet-csv")
        download = await dl.value
        assert download.suggested_filename.endswith(".csv")
        text = Path(await download.path()).read_text(encoding="utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text)))
        row = next(r for r in rows if r["device_id"] == device_id)
        assert row["password"] == password
        assert row["name"] == "教学楼 NVR"
        assert row["sip_server_id"] == GW
        assert int(row["sip_port"]) == gw.port
        assert "UDP" in row["transport"]
        async with page.expect_download() as dl:
            await page.click("#sheet-xlsx")
        download = await dl.value
        assert download.suggested_filename.endswith(".xlsx")
        xlsx = Path(await download.path()).read_bytes()
        book = openpyxl.load_workbook(io.BytesIO(xlsx), read_only=True)
        values = [list(r) for r in book.active.iter_rows(values_only=True)]
        at = next(n for n, r in enumerate(values) if "device_id" in r)  # under a title row
        header = values[at]
        xrow = next(
            dict(zip(header, r, strict=False))
            for r in values[at + 1 :]
            if r[header.index("device_id")] == device_id
        )
        assert xrow["password"] == password

        # -- the NVR registers with those credentials: online on the open page ----------------
        dev = SimDevice(
            nvr_ep,
            device_id,
            Peer("udp", row["sip_host"], int(row["sip_port"])),
            server_id=row["sip_server_id"],
            domain=row["sip_domain"],
            password=row["password"],
            channel_count=CHANNELS,
        )
        dev.install()
        assert (await dev.register()).status == 200
        await badge_online(page, device_id, True, '[data-list="unit-devices"]')
        assert await page.evaluate("window.__sameDocument") is True
        await shots.take("unit-device-online")

        # -- the device page: its channels ---------------------------------------------------
        await page.click(f'[data-list="unit-devices"] a[href="#/devices/{device_id}"]')
        await page.wait_for_selector("tr[data-channel]", timeout=UI_WAIT)
        await page.wait_for_function(
            "n => document.querySelectorAll('tr[data-channel]').length === n",
            arg=CHANNELS,
            timeout=UI_WAIT,
        )
        channel = dev.channel_id(1)
        await page.click(f'tr[data-channel="{channel}"] td:nth-child(2)')
        await page.wait_for_selector('button[data-ptz="up"]')

        # -- PTZ: a press moves, the release stops -------------------------------------------
        await page.click('button[data-ptz="up"]')
        await wait_for(lambda: len(dev.ptz_commands) >= 2, 10, "PTZ move and stop")
        move, stop = (decode_ptz(c) for c in dev.ptz_commands[:2])
        assert move.code & TILT_UP and move.tilt_speed > 0
        assert stop.code == 0
        assert [c.device_id for c in dev.controls[:2]] == [channel, channel]
        await page.click('button[data-ptz="zoomin"]')
        await wait_for(lambda: len(dev.ptz_commands) >= 4, 10, "zoom and stop")
        assert decode_ptz(dev.ptz_commands[2]).code & ZOOM_IN
        await page.fill("#preset-index", "3")
        await page.click('button[data-preset="goto"]')
        await wait_for(lambda: len(dev.ptz_commands) >= 5, 10, "preset call")
        preset = decode_ptz(dev.ptz_commands[4])
        assert preset == preset_call(3)
        await shots.take("device-channels-ptz")
        await page.click("#btn-info")
        await page.wait_for_selector("#device-result dl", timeout=UI_WAIT)
        assert "SimVision" in await page.locator("#device-result").inner_text()

        # -- record search shows the NVR's files --------------------------------------------
        await page.click("#rec-search")
        await page.wait_for_selector("#records table tbody tr", timeout=UI_WAIT)
        assert await page.locator("#records table tbody tr").count() == dev.record_count
        await shots.take("device-records")

        # -- the NVR goes away: the page says so without a reload -----------------------------
        assert (await dev.unregister()).status == 200
        await badge_online(page, device_id, False, ".page-head")
        assert await page.evaluate("window.__sameDocument") is True
        await shots.take("device-offline")
        assert (await dev.register()).status == 200
        await badge_online(page, device_id, True, ".page-head")

        # -- the tree, lazy by parent --------------------------------------------------------
        await go(page, "tree")
        await page.click(f'li[data-node="{unit_id}"] > .twisty')
        await page.click(f'li[data-node="{device_id}"] > .twisty', timeout=UI_WAIT)
        await page.wait_for_selector(f'li[data-node="{channel}"]', timeout=UI_WAIT)
        await shots.take("tree")

        # -- a live session to a local port: the sessions page shows its bytes, and stops it --
        loop = asyncio.get_running_loop()
        sink_transport, sink = await loop.create_datagram_endpoint(
            Sink, local_addr=("127.0.0.1", 0)
        )
        try:
            await go(page, "sessions")
            await page.click("#new-session")
            await page.fill('.modal input[name="channel_id"]', channel)
            await page.fill('.modal input[name="port"]', str(sink.port))
            await page.click('.modal button[type="submit"]')
            row = f'[data-list="sessions"] tr[data-channel="{channel}"]'
            await page.wait_for_selector(row, timeout=UI_WAIT)
            await wait_for(lambda: sink.packets > 0, 10, "RTP at the session's address")
            await page.wait_for_function(
                "sel => Number(document.querySelector(sel)?.dataset.bytes) > 0",
                arg=row,
                timeout=UI_WAIT,
            )
            await shots.take("sessions")
            await page.click(f"{row} button.danger")
            await page.click(".modal button.danger")
            await page.wait_for_selector(row, state="detached", timeout=UI_WAIT)
        finally:
            sink_transport.close()

        # -- an alarm from the NVR appears on the open alarms page -------------------------
        await go(page, "alarms")
        await page.wait_for_selector('[data-list="alarms"] tbody tr')
        await dev.send_alarm(description="周界入侵")
        alarm_row = '[data-list="alarms"] tr[data-alarm]'
        await page.wait_for_selector(f"{alarm_row}:has-text('周界入侵')", timeout=UI_WAIT)
        assert await page.evaluate("window.__sameDocument") is True
        await shots.take("alarms")

        # -- the other pages render ------------------------------------------------------------
        await go(page, "overview")
        await page.wait_for_selector('[data-tile="devices"]')
        await page.wait_for_function(
            "() => document.querySelector('[data-tile=devices] .value').textContent"
            ".startsWith('1')",
            timeout=UI_WAIT,
        )
        await shots.take("overview")
        for nav, ready in [
            ("devices", f'[data-list="devices"] tr[data-device="{device_id}"]'),
            ("audit", '[data-list="audit"] tbody tr td'),
            ("users", '[data-list="users"] tbody tr'),
        ]:
            await go(page, nav)
            await page.wait_for_selector(ready, timeout=UI_WAIT)
            await shots.take(nav)

        # -- share the unit with the upper: its catalog now has the unit's cameras ------------
        before = await platform.catalog(GW)
        assert device_id not in {i.device_id for i in before.items}
        await go(page, "uppers")
        await page.wait_for_selector(f'tr[data-upper="{UP}"]')
        await shots.take("uppers")
        await page.click(f'tr[data-upper="{UP}"] td:nth-child(2)')
        await page.fill('input[data-picker="units"]', "第三中学")
        await page.click(f'[data-picker-box="units"] button[data-add="{unit_id}"]', timeout=UI_WAIT)
        await page.click("#share-save")
        await page.wait_for_selector(".toast.ok", timeout=UI_WAIT)
        share = (await api.admin.get(f"/api/v1/uppers/{UP}/share")).json()
        assert share["units"] == [unit_id]
        await shots.take("upper-share")
        after = await platform.catalog(GW)
        seen = {i.device_id for i in after.items}
        assert {device_id, *dev.channel_ids()} <= seen
        assert unit["vo_id"] in seen  # the unit, as a virtual organisation

        # -- English, remembered across a reload; the login survives it (sessionStorage) -------
        await page.click("#lang-switch")
        await page.wait_for_selector('#nav a[data-nav="units"]:text("Units")')
        await page.reload()
        await page.wait_for_selector('#nav a[data-nav="units"]:text("Units")')
        await go(page, "overview")
        await page.wait_for_selector('[data-tile="devices"]')
        await shots.take("overview-english")

        # -- log out: the token is forgotten and no longer works -------------------------------
        token = await page.evaluate("JSON.parse(sessionStorage.getItem('gbgw.session')).token")
        await page.click("#logout")
        await page.wait_for_selector("#login-username")
        assert await page.evaluate("sessionStorage.getItem('gbgw.session')") is None
        assert (await api.client(token).get("/api/v1/auth/me")).status_code == 401
        assert watched.errors == []
        # Nothing from elsewhere (no CDN), and no list asked without a page size: the console
        # never loads "everything".
        urls = [u for _, u in watched.requests if not u.startswith(("blob:", "data:"))]
        assert all(u.startswith(api.base + "/") for u in urls), urls
        lists = (
            "units",
            "devices",
            "channels",
            "accounts",
            "tree",
            "alarms",
            "audit",
            "users",
            "uppers",
        )
        for method, url in watched.requests:
            path = url.removeprefix(api.base).split("?")[0]
            if method == "GET" and path.split("/")[-1] in lists:
                assert "limit=" in url, url
    finally:
        if dev is not None:
            dev.stop()
        await context.close()
        platform.stop()


async def test_a_viewer_sees_no_write_controls_and_an_expired_login_returns_to_the_form(
    start_api: Callable[..., Awaitable[Api]], browser: Browser, tmp_path: Path
) -> None:
    api = await start_api()
    assert api.gw.api is not None
    await api.gw.api.auth.add_user("watcher", "viewer-Pa55word", "viewer")
    unit = (await api.operator.post("/api/v1/units", json={"name": "银行网点"})).json()
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    watched = Watched(page)
    shots = Shots(page, tmp_path / "screenshots", "viewer")
    try:
        await page.goto(api.base + "/")
        await page.fill("#login-username", "watcher")
        await page.fill("#login-password", "viewer-Pa55word")
        await page.click("#login-submit")
        await page.wait_for_selector('#nav a[data-nav="units"]')
        navs = await page.locator("#nav a").evaluate_all("as => as.map(a => a.dataset.nav)")
        assert "users" not in navs and "audit" not in navs and "units" in navs
        await go(page, "units")
        await page.wait_for_selector(f'tr[data-unit="{unit["id"]}"]')
        assert await page.locator("#new-unit").count() == 0
        await page.click(f'tr[data-unit="{unit["id"]}"] a')
        await page.wait_for_selector('[data-list="unit-accounts"]')
        assert await page.locator("#add-account, #sheet-csv").count() == 0
        await shots.take("viewer-unit")
        # The login ends on the server (as a restart or a timeout would): the next call's 401
        # brings the form back instead of a broken page.
        token = await page.evaluate("JSON.parse(sessionStorage.getItem('gbgw.session')).token")
        api.gw.api.auth.logout(token)
        # To the devices page by its link's address (a background refresh's own 401 may have
        # hidden the side bar already, which a click would wait on).
        await page.evaluate("location.hash = '#/devices'")
        await page.wait_for_selector("#login-username", timeout=UI_WAIT)
        assert await page.evaluate("sessionStorage.getItem('gbgw.session')") is None
        assert watched.errors == []
    finally:
        await context.close()
