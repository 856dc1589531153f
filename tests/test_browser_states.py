"""Real-browser test of the Train page's states: honest defaults, one state per run, jobs
that outlive a reload, a "done" message.

`streamlit run` on a loopback port, Debian's Chromium driven by Playwright (see
browser_support.py). The runs folder starts with one run made by the library as a failed
command-line launch leaves it (ImageNet offline, the CLI's message); the test then launches a
tiny scratch job from the page (16 px, 1 epoch: seconds) and watches it finish. The torch
cache is private, so no ImageNet file is found; whether ImageNet can be downloaded is
whatever this machine's network says, and the expected defaults follow it. Skips without
Chromium or Playwright, unless SPEEDSIGN_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from speedsign import jobs, models, training
from speedsign.config import APPROACHES, resolve_config
from speedsign.job import TrainRequest, plan_run, write_run_config
from speedsign.runs import ACTIVE_STATES, iter_run_dirs, now_iso, read_status

from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    explain_failure,
    open_page,
    problems,
    streamlit_server,
    sync_playwright,
    wait_idle,
)

WAIT_MS = 30_000
JOB_S = 45.0  # a 16 px, 1-epoch scratch job: a few seconds of training after torch's import
# One look at the page: the state in each job card's heading and each row of the All runs
# table (the page's last grid; its cells are in the grid's accessible table), taken only
# while no script run is drawing, so both come from the same run of the live fragment.
SNAPSHOT_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const main = document.querySelector('[data-testid="stMain"]');
  const cards = {};
  for (const el of main.querySelectorAll('[data-testid="stMarkdownContainer"]')) {
    const m = el.textContent.match(/· (\\S+) · state (\\w+)/);
    if (m) cards[m[1]] = m[2];
  }
  const grids = [...main.querySelectorAll('table[role="grid"]')];
  const rows = {};
  const grid = grids[grids.length - 1];
  if (grid) {
    const heads = [...grid.querySelectorAll('thead th')].map(th => th.textContent.trim());
    for (const tr of grid.querySelectorAll('tbody tr')) {
      const cells = [...tr.querySelectorAll('td')].map(td => td.textContent.trim());
      const row = Object.fromEntries(heads.map((h, i) => [h, cells[i]]));
      if (row.run) rows[row.run] = row;
    }
  }
  return {idle: app.getAttribute('data-test-script-state') === 'notRunning', cards, rows,
          text: main.innerText};
}"""
# Every toast the page shows, kept: a toast goes away after a few seconds.
RECORD_TOASTS_JS = """() => {
  window.__toasts = [];
  const seen = new WeakSet();
  const look = () => document.querySelectorAll('[data-testid="stToast"]').forEach(t => {
    if (!seen.has(t)) { seen.add(t); window.__toasts.push(t.innerText); }
  });
  new MutationObserver(look).observe(document.body, {childList: true, subtree: true});
  look();
}"""

pytestmark = pytest.mark.usefixtures("browser_available")


@pytest.fixture(scope="module")
def browser_available() -> Any:
    return sync_playwright()


@pytest.fixture
def page(browser_available: Any) -> Iterator[Any]:
    with browser_available() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(WAIT_MS)
            yield context.new_page()
        finally:
            browser.close()


def failed_cli_run(data_dir: Path, runs_dir: Path) -> str:
    """A frozen run as a command-line launch with ImageNet weights leaves it offline: config.json
    written, status failed with the CLI's message (which names --weights flags)."""
    config = resolve_config(approach="frozen", preset="fast",
                            overrides={"weights": "imagenet", "img_size": 16, "epochs": 1, "batch_size": 32})
    request = TrainRequest(config=config, data_dir=data_dir, runs_dir=runs_dir, device="cpu")
    plan = plan_run(request)
    plan.run_dir.mkdir(parents=True)
    write_run_config(plan, request)
    plan.folder.write_status(state="failed", created=now_iso(), finished=now_iso(), epochs=config.epochs,
                             error=models._offline_message(models.imagenet_weights_path()))
    return plan.run_id


def states(look: dict[str, Any]) -> tuple:
    return tuple(sorted(look["cards"].items())), tuple(sorted((r, row["state"]) for r, row in look["rows"].items()))


def snapshot(page: Any) -> dict[str, Any]:
    """Cards and table at one moment, once the page has settled (bounded wait): idle, the table
    drawn, and the same states in two looks 300 ms apart. The grid fills its accessible cells
    a frame or two after a script run ends; a disagreement that lasts shows in both looks."""
    deadline = time.monotonic() + WAIT_MS / 1000
    before = None
    while True:
        tables = page.locator('[data-testid="stDataFrame"]')
        if tables.count():  # the grid fills its cells once it is on screen
            with contextlib.suppress(Exception):
                tables.last.scroll_into_view_if_needed(timeout=2000)
        look = page.evaluate(SNAPSHOT_JS)
        ready = look["idle"] and (look["rows"] or not look["cards"])
        if ready and before is not None and states(before) == states(look):
            return look
        if time.monotonic() > deadline:
            return look
        before = look if ready else None
        page.wait_for_timeout(300)


def assert_agree(look: dict[str, Any]) -> None:
    """Every run with a card has the same state in the All runs table."""
    for run_id, state in look["cards"].items():
        assert run_id in look["rows"], (run_id, look["rows"].keys())
        assert look["rows"][run_id]["state"] == state, (run_id, state, look["rows"][run_id])


def assert_clean(page: Any, where: str) -> None:
    """No traceback, and no error box but a failed job's card ("Failed: ...")."""
    unexpected = [text for text in problems(page) if not text.startswith("Failed:")]
    assert not unexpected, f"{where}: {unexpected}"


def chosen_approaches(page: Any) -> list[str]:
    tags = page.locator('[data-testid="stMultiSelect"] [data-tag] [title]')
    return sorted(tags.nth(i).get_attribute("title") for i in range(tags.count()))


def set_number(page: Any, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def cancel_leftovers(runs_dir: Path) -> None:
    """A job still going when the test ends (it failed early) is asked to stop."""
    for run_dir in iter_run_dirs(runs_dir):
        if read_status(run_dir).live_state in ACTIVE_STATES:
            with contextlib.suppress(OSError):
                jobs.request_cancel(run_dir)


def test_train_page_states_defaults_reload_and_done(page: Any, synth_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ImageNet file, for the server and its jobs
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    (data / "synth").symlink_to(synth_dir, target_is_directory=True)
    failed = failed_cli_run(data / "synth", runs)
    offline = training.imagenet_problem() is not None
    with streamlit_server(runs=runs, data=data, cache=tmp_path / "cache", log=tmp_path / "streamlit.log") as url, \
            explain_failure(page, tmp_path):
        try:
            open_page(page, f"{url}/train")
            page.evaluate(RECORD_TOASTS_JS)
            assert_clean(page, "train")
            # Defaults: offline with no usable backbone, scratch alone and why, in the app's words.
            look = snapshot(page)
            if offline:
                assert chosen_approaches(page) == ["scratch"]
                assert "finetune and frozen need a pretrained backbone" in look["text"]
            else:
                assert chosen_approaches(page) == sorted(APPROACHES)
            assert "--weights" not in look["text"]
            # The failed command-line run: failed in its card and in the table, its reason without flags.
            assert look["cards"].get(failed) == "failed", look["cards"]
            assert_agree(look)
            assert models.OFFLINE_REASON in look["text"] and "train scratch first" in look["text"]

            # A tiny scratch job from the page.
            for approach in chosen_approaches(page):
                if approach != "scratch":
                    page.get_by_role("button", name=f"Remove {approach}").click()
                    wait_idle(page)
            page.get_by_text("Set hyper-parameters by hand").click()
            wait_idle(page)
            set_number(page, "Passes over the training split", 1)
            set_number(page, "Input side in pixels", 16)
            set_number(page, "Images per training step", 32)
            page.locator('[data-testid="stBaseButton-primary"]', has_text="Launch").click()
            page.wait_for_function("() => window.__toasts.some(t => t.includes('queued in the background'))",
                                   timeout=WAIT_MS)
            wait_idle(page)
            assert_clean(page, "after Launch")

            # Watch it: card and table agree at every look, and the end is announced.
            deadline = time.monotonic() + JOB_S
            job = None
            while True:
                look = snapshot(page)
                assert_agree(look)
                job = job or next((r for r in look["cards"] if r.startswith("scratch-")), None)
                if job and look["cards"][job] not in ACTIVE_STATES:
                    break
                assert time.monotonic() < deadline, f"the job did not end within {JOB_S:.0f} s: {look['cards']}"
                page.wait_for_timeout(300)
            assert look["cards"][job] == "done", (look["cards"], (runs / job / "log.txt").read_text()[-2000:])
            page.wait_for_function("id => window.__toasts.some(t => t.includes(id) && t.includes('is done'))",
                                   arg=job, timeout=WAIT_MS)
            page.get_by_text(re.compile(r"Done: 1 epoch\(s\), best val accuracy \d\.\d{3}")).wait_for()
            main = page.locator('[data-testid="stMain"]')
            for link in ("Learning curves", "Evaluation"):
                assert main.locator('[data-testid="stPageLink"]', has_text=link).count() >= 1, link
            assert_clean(page, "after the job ended")

            # A reload is a new session: the failed and the finished job are still listed.
            page.reload()
            page.wait_for_selector('[data-testid="stMain"] h1', timeout=WAIT_MS)
            wait_idle(page)
            page.get_by_text("state failed").first.wait_for()
            look = snapshot(page)
            assert look["cards"].get(failed) == "failed" and look["cards"].get(job) == "done", look["cards"]
            assert_agree(look)
            assert "--weights" not in look["text"]
            # Now a usable backbone exists: all three, on that run's backbone.
            assert chosen_approaches(page) == sorted(APPROACHES)
            backbone = page.locator('[data-testid="stSelectbox"]', has_text="Backbone weights").evaluate(
                "e => e.textContent + ' ' + [...e.querySelectorAll('input')].map(i => i.value).join(' ')")
            assert (job in backbone) if offline else ("ImageNet" in backbone), backbone
            assert_clean(page, "after the reload")
        finally:
            cancel_leftovers(runs)
