"""Helpers of the AppTests: run the app through its router, and read what a page shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from speedsign import datasets

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
TIMEOUT = 60


def start(page: str | None = None) -> AppTest:
    """The app's first run (Home), then `page` (a file name in pages/, without .py) if given."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    if page is not None and page != "home":
        at.switch_page(f"pages/{page}.py").run()
    return at


def plain(text: object) -> str:
    """Page text as a reader sees it: names from disk are markdown-escaped (\\. for .)."""
    return re.sub(r"\\(.)", r"\1", str(text))


def texts(at: AppTest, kind: str) -> list[str]:
    return [plain(element.value) for element in getattr(at, kind)]


def answers(at: AppTest) -> list[str]:
    """Every model's answer on Classify: a Prediction metric when it is sure, else a best guess in
    plain type (or a no-answer warning when its output is not a number)."""
    sure = [plain(m.value) for m in at.metric if m.label == "Prediction"]
    unsure = [text for text in texts(at, "markdown") if text.startswith("Best guess: ")]
    broken = [text for text in texts(at, "warning") if text.startswith("No answer: ")]
    return sure + unsure + broken


def fresh_app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty data root and runs folder for the app; first-start synth made tiny and fast."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    runs.mkdir()
    monkeypatch.setenv("SPEEDSIGN_DATA", str(data))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    monkeypatch.setattr(datasets, "FIRST_RUN_PER_CLASS", 10)
    monkeypatch.setattr(datasets, "FIRST_RUN_SIZE", 32)
    return {"data": data, "runs": runs}
