"""Helpers of the real-browser tests: a Streamlit server in a subprocess, Debian's Chromium
driven by Playwright, and waits that know when a Streamlit page has finished running.

Every wait is bounded. Without Chromium or Playwright the tests skip, unless
SPEEDSIGN_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("SPEEDSIGN_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_ENV = "SPEEDSIGN_REQUIRE_BROWSER"
# Without the background-networking flags this machine's Chromium gets its connections
# refused; the fake-media flags give the page a webcam (a test pattern) and say yes to it.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]
VIEWPORT = {"width": 1400, "height": 900}
SCREENSHOT_WIDTH = 1600  # wide enough for most of the Home comparison table
SERVER_START_S = 60.0


def unavailable(reason: str) -> None:
    """Skip, or fail when this run must have the browser (CI)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the browser tests must run here)")
    pytest.skip(reason)


def require_browser(api: str = "sync_api") -> Any:
    """Playwright's `api` module (sync_api or async_api), and Chromium checked to be there (or skip/fail)."""
    try:
        module = importlib.import_module(f"playwright.{api}")
    except ImportError:
        unavailable("the playwright package is not installed (pip install -r requirements-dev.txt)")
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    return module


def sync_playwright() -> Any:
    """Playwright's sync entry point, and Chromium checked to be there (or skip/fail)."""
    return require_browser("sync_api").sync_playwright


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.read().strip() == b"ok"
    except OSError:
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def streamlit_server(*, runs: Path, data: Path, cache: Path, log: Path, start_s: float = SERVER_START_S,
                     one_thread: bool = True, models: Path | None = None,
                     extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on a free local port; yields its URL; killed after.

    one_thread: torch in the app uses one thread (tests share the cores); otherwise the
    environment's OMP_NUM_THREADS, if any, holds. models: the published models it shows
    (default none: an empty folder, not the repository's models/)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if models is None:
        models = cache / "no-models"
        models.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPEEDSIGN_RUNS": str(runs), "SPEEDSIGN_DATA": str(data), "SPEEDSIGN_CACHE": str(cache),
           "SPEEDSIGN_MODELS": str(models), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    if one_thread:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
               "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + start_s
        while not _healthy(url):
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with {process.returncode} before answering:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer /_stcore/health within {start_s:.0f} s:\n{_tail(log)}")
            time.sleep(0.25)
        yield url
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen | None, *, grace_s: float = 10) -> None:
    """SIGTERM to a process group started with start_new_session (the server, a job), SIGKILL if it lingers."""
    if process is None:
        return
    for sig, grace in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


# ---------------------------------------------------------------- pages

def wait_idle(page: Any, *, timeout_ms: float = 30_000) -> None:
    """Wait until the app is connected and no script run is going (nor about to start)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', timeout=timeout_ms)
    # Two quiet looks in a row: a rerun can start just after one run ends.
    for _ in range(2):
        page.wait_for_timeout(150)
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_ms)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSpinner\"], "
                           "[data-testid=\"stSkeleton\"]')", timeout=timeout_ms)


def open_page(page: Any, url: str, *, timeout_ms: float = 60_000) -> None:
    """Go to a page and wait for its first complete run."""
    page.goto(url, timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_selector('[data-testid="stMain"] h1', timeout=timeout_ms)  # every page has a title
    wait_idle(page, timeout_ms=timeout_ms)


def wait_for_charts(page: Any, *, timeout_ms: float = 30_000) -> None:
    """Every Plotly chart on the page has drawn its SVG."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        ".every(chart => chart.querySelector('.main-svg'))", timeout=timeout_ms)


def problems(page: Any) -> list[str]:
    """Tracebacks and error boxes on the page (their text)."""
    found = page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [found.nth(i).inner_text() for i in range(found.count())]


def assert_clean(page: Any, where: str) -> None:
    errors = problems(page)
    assert not errors, f"{where}: {errors}"


@contextlib.contextmanager
def explain_failure(page: Any, folder: Path) -> Iterator[None]:
    """On a failure, add what the page showed: its script state, its text, a screenshot."""
    try:
        yield
    except Exception as error:  # re-raised with the page's state
        shot = Path(folder) / "failure.png"
        details = []
        with contextlib.suppress(Exception):
            details.append("script state " + str(page.locator('[data-testid="stApp"]').get_attribute(
                "data-test-script-state", timeout=2000)))
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True, timeout=10_000)
            details.append(f"screenshot {shot}")
        with contextlib.suppress(Exception):
            details.append("page text:\n" + page.locator('[data-testid="stMain"]').inner_text(timeout=2000)[-3000:])
        raise AssertionError(f"{type(error).__name__}: {error}\n" + "\n".join(details)) from error


def screenshot(page: Any, path: Path) -> Path:
    """The whole page as a PNG. Streamlit scrolls inside its main block, not the document,
    so the viewport is made as tall as the content first."""
    page.set_viewport_size({"width": SCREENSHOT_WIDTH, "height": VIEWPORT["height"]})
    page.wait_for_timeout(400)
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
        "[data-testid=\"stAppViewContainer\"], [data-testid=\"stSidebar\"] > div')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)")
    page.set_viewport_size({"width": SCREENSHOT_WIDTH, "height": int(min(max(height, VIEWPORT["height"]), 6000))})
    page.wait_for_timeout(400)  # charts re-layout to the new size
    wait_for_charts(page)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    page.set_viewport_size(VIEWPORT)
    return path
