"""Load on a live server: 20 real browser sessions classify at once while a job trains.

bench.load's `run_load` against `streamlit run` with the tiny published models of
`published_models` and a tiny scratch job (16 px, one torch thread) training throughout:
every session must get every model's answer, the same answers, and the server log must stay
free of errors. The sessions are tabs of one browser context (each tab is a Streamlit session
of its own; shared browser caches halve the browser's CPU, which on 2 cores is most of the
work), and the models load cold, under the 20 sessions. Timings are printed, not asserted
(they are the machine's); `pytest -s` shows them. About 90 s on 2 cores. Without Chromium or
Playwright it skips, unless SPEEDSIGN_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from browser_support import require_browser

SESSIONS = 20
# Far more epochs than the test lasts: the job is still training when the sessions end (it is
# stopped then), so no fourth model turns up on Classify halfway.
TINY_JOB = ("--img-size", "16", "--batch-size", "32", "--epochs", "1000")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def async_browser() -> None:
    require_browser("async_api")


def a_sign(dataset: Path) -> Path:
    """A 50 km/h sign of the synthetic set (it has train/ only)."""
    return sorted((dataset / "train" / "speed_50").iterdir())[0]


def test_twenty_sessions_get_every_answer_while_a_job_trains(async_browser: Any, published_models: dict[str, Path],
                                                             synth_dir: Path, tmp_path: Path) -> None:
    from bench.load import print_report, run_load

    models = next(iter(published_models.values())).parent
    report = run_load(models=models, sessions=SESSIONS, image=a_sign(synth_dir), data=synth_dir,
                      train_budget="0", train_extra=TINY_JOB, one_thread=True, lone_first=False, tabs=True,
                      timeout_s=150, session_timeout_s=120, work=tmp_path, say=lambda _: None)
    print_report(report)
    assert sorted(report["models"]) == sorted(f"bundle:{path.name}" for path in published_models.values())
    assert report["training"]["at_start"]["state"] == "running"
    assert report["training"]["still_running_at_end"], report["training"]
    assert report["complete"] == SESSIONS, report["failures"]
    assert report["same_answers"], report["per_session"]
    assert {card["run"] for card in report["answers"]} == set(report["models"])
    assert report["server_log_problems"] == []
