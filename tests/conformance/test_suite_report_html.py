"""The HTML report in a real browser: Debian's Chromium, headless, driven by Playwright's Python
package with ``executable_path`` (Playwright never downloads a browser here).

The report comes from a run of the framework tests' fake cases (a pass, failures, a skip, errors)
whose SIP bodies carry markup, and must render with its totals, open a failed case on a click to
show what was expected, what was seen and the trace, run no injected script, log no console
error and request nothing but itself.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conformance.suite.options import Options
from conformance.suite.runner import run_suite
from tests.conformance.test_suite_framework import FakeHarness, make_registry, options

pytestmark = pytest.mark.timeout(30)

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")


@pytest.fixture
async def report(tmp_path: Path) -> Path:
    def factory(opts: Options) -> FakeHarness:
        return FakeHarness(opts)

    await run_suite(options(tmp_path), registry=make_registry(), harness_factory=factory)
    return tmp_path / "report.html"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if async_playwright is None:
        pytest.skip("Playwright's Python package is missing: .venv/bin/pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: apt-get install -y --no-install-recommends chromium")
    async with async_playwright() as pw:
        # Playwright adds --no-sandbox itself (chromium_sandbox defaults to off): we run as root.
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page with everything that must not happen recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("request", lambda req: self.requests.append(req.url))
        page.on("dialog", self._dialog)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.console_errors.append(msg.text)

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def assert_clean(self, url: str) -> None:
        assert self.console_errors == []
        assert self.page_errors == []
        assert self.dialogs == []
        assert {u.split("#")[0] for u in self.requests} == {url}  # itself, nothing else


async def open_report(browser: Browser, report: Path, fragment: str = "") -> Watched:
    page = await browser.new_page()
    watched = Watched(page)
    await page.goto(report.as_uri() + fragment)
    await page.wait_for_load_state("load")
    return watched


async def test_page_title_totals_and_nothing_external(browser: Browser, report: Path) -> None:
    w = await open_report(browser, report)
    page = w.page
    assert await page.title() == ("GB/T 28181 conformance: platform 127.0.0.1:5060/udp (2016)")
    totals = page.locator("#totals")
    assert await totals.get_attribute("data-total") == "8"
    for verdict, count in {"pass": 1, "fail": 2, "skip": 3, "error": 2}.items():
        assert await totals.locator(f'[data-count="{verdict}"]').inner_text() == (
            f"{count} {verdict}"
        )
    assert await page.locator("details.case").count() == 8
    # The markup in the SIP body was shown as text, not run.
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("img").count() == 0
    # The script did run: the hash opens the case it names.
    await page.goto(report.as_uri() + "#case-C-ERR-01")
    assert await page.locator("#case-C-ERR-01").evaluate("d => d.open") is True
    assert await page.locator("#case-C-ERR-01 .failure .reason").inner_text() == (
        "RuntimeError: boom in the suite"
    )
    w.assert_clean(report.as_uri())


async def test_a_failed_case_opens_on_click(browser: Browser, report: Path) -> None:
    w = await open_report(browser, report)
    page = w.page
    case = page.locator("#case-A-FAIL-01")
    expected = case.locator("pre.expected")
    seen = case.locator("pre.seen")
    trace = case.locator("table.trace")
    assert await case.evaluate("d => d.open") is False
    assert not await expected.is_visible() and not await trace.is_visible()

    await case.locator("> summary").click()
    assert await expected.is_visible() and await seen.is_visible()
    assert await expected.inner_text() == "200"
    assert await seen.inner_text() == "488"
    assert await case.locator(".failure .reason").inner_text() == "the query is accepted"
    assert await trace.is_visible()
    rows = trace.locator("tbody tr")
    assert await rows.count() == 4
    first = rows.nth(0)
    assert "sent" in await first.locator("td").nth(2).inner_text()
    assert (await first.locator("summary").inner_text()).startswith("MESSAGE sip:")
    last = rows.nth(3)
    assert (await last.locator("summary").inner_text()).startswith("SIP/2.0 488")
    assert "involved" in (await last.get_attribute("class") or "")

    # The full message is one more click away, as text.
    full = first.locator("pre")
    assert not await full.is_visible()
    await first.locator("summary").click()
    assert await full.is_visible()
    assert "<Query><SN>17</SN></Query>" in await full.inner_text()
    w.assert_clean(report.as_uri())


async def test_controls_filter_and_expand(browser: Browser, report: Path) -> None:
    w = await open_report(browser, report)
    page = w.page
    await page.locator('input[data-filter="pass"]').uncheck()
    assert not await page.locator("#case-A-PASS-01").is_visible()
    assert not await page.locator('table.summary tr[data-verdict="pass"]').is_visible()
    await page.locator("#expand-all").click()
    opened = await page.eval_on_selector_all("details.case", "ds => ds.map(d => [d.id, d.open])")
    assert dict(opened) == {
        f"case-{i}": i != "A-PASS-01" for i in (c.id for c in make_registry().all())
    }
    pass_case = page.locator("#case-A-PASS-01")
    await page.locator('input[data-filter="pass"]').check()
    await pass_case.locator("> summary").click()
    media = pass_case.locator("table.media")
    assert "frames_decoded" in await media.inner_text()
    assert "0200000001" in await media.inner_text()
    steps = pass_case.locator("ol.steps")
    assert "send a MESSAGE with <b>markup</b>" in await steps.inner_text()
    await page.locator("#collapse-all").click()
    assert await page.eval_on_selector_all("details.case", "ds => ds.some(d => d.open)") is False
    w.assert_clean(report.as_uri())
