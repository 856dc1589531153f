"""Real-browser checks of what a newcomer meets offline: no request leaves this machine (the
favicon, fonts and icons are served by the app), and the Home comparison table fits.

Debian's /usr/bin/chromium driven by Playwright, on the three finished tiny runs of
`runs_with_results` and the synthetic set they trained on. Skipped without Chromium or
Playwright, unless SPEEDSIGN_REQUIRE_BROWSER=1 (as in .ci/run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    assert_clean,
    explain_failure,
    open_page,
    streamlit_server,
    sync_playwright,
    wait_for_charts,
    wait_idle,
)

WAIT_MS = 60_000
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# Checked before any other fixture (the tiny runs take a while to train): skip or fail at once.
pytestmark = pytest.mark.usefixtures("browser_available")


@pytest.fixture(scope="module")
def browser_available() -> Any:
    return sync_playwright()


@pytest.fixture(scope="module")
def browser(browser_available: Any) -> Iterator[Any]:
    with browser_available() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, browser: Any, runs_with_results: dict[str, Path],
        synth_dir: Path) -> Iterator[str]:
    """The app on the tiny finished runs and the synthetic set (data/synth, a link); its URL."""
    tmp = tmp_path_factory.mktemp("browser-views")
    (tmp / "data").mkdir()
    (tmp / "data" / "synth").symlink_to(synth_dir.resolve(), target_is_directory=True)
    runs = next(iter(runs_with_results.values())).parent
    with streamlit_server(runs=runs, data=tmp / "data", cache=tmp / "cache", log=tmp / "streamlit.log") as url:
        yield url


def off_machine(urls: list[str]) -> list[str]:
    """The requests that went to another host than this one (data: and blob: URLs stay here)."""
    return sorted({url for url in urls if urlparse(url).scheme not in ("data", "blob")
                   and urlparse(url).hostname not in LOOPBACK})


def test_home_and_classify_request_nothing_off_this_machine(app: str, browser: Any, synth_dir: Path,
                                                            tmp_path: Path) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    try:
        with explain_failure(page, tmp_path):
            open_page(page, app)
            assert_clean(page, "home")
            page.locator('[data-testid="stDataFrame"]').first.wait_for()
            favicon = page.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
            assert urlparse(favicon).hostname in LOOPBACK and favicon.endswith(".png"), favicon
            open_page(page, f"{app}/classify")
            sign = sorted((synth_dir / "train" / "speed_50").iterdir())[0]
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(sign))
            # Every card ends with what its model was trained on, whether it is sure or not.
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
                ".filter(c => c.innerText.includes('Trained on')).length >= 3", timeout=WAIT_MS)
            wait_idle(page, timeout_ms=WAIT_MS)
            wait_for_charts(page)
            assert_clean(page, "classify")
            assert page.get_by_text("Trained on synthetic signs only").count() == 3
            page.wait_for_timeout(500)  # late requests (fonts, icons) of the last redraw
    finally:
        context.close()
    assert requested and off_machine(requested) == [], off_machine(requested)


@pytest.mark.parametrize("width, height", [(1600, 1000), (1280, 900)])
def test_home_table_fits_without_scrolling(app: str, browser: Any, tmp_path: Path, width: int, height: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    try:
        with explain_failure(page, tmp_path):
            open_page(page, app)
            table = page.locator('[data-testid="stDataFrame"]').first
            table.wait_for()
            page.wait_for_timeout(300)  # the grid sizes its columns after it is drawn
            sizes = page.evaluate(
                "() => [...document.querySelectorAll('[data-testid=\"stDataFrame\"] .dvn-scroller')]"
                ".map(s => [s.scrollWidth, s.clientWidth])")
            assert sizes and all(scroll <= client for scroll, client in sizes), (width, sizes)
            page.screenshot(path=str(tmp_path / f"home-{width}x{height}.png"), full_page=True)
    finally:
        context.close()
