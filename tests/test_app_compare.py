"""AppTest of the Compare page: 0, 1, 2 and 3 runs, runs of other data sets, downloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speedsign.storage import read_json

from app_support import fresh_app_env, plain, start, texts

APPROACHES = ("finetune", "frozen", "scratch")


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_dir: Path) -> dict[str, Path]:
    env = fresh_app_env(tmp_path, monkeypatch)
    (env["data"] / "synth").symlink_to(synth_dir, target_is_directory=True)
    return env


def link(runs_with_results: dict[str, Path], runs: Path, approaches: tuple[str, ...]) -> list[str]:
    for approach in approaches:
        source = runs_with_results[approach]
        (runs / source.name).symlink_to(source, target_is_directory=True)
    return [runs_with_results[a].name for a in approaches]


def compare_page(run_ids: list[str] | None = None):
    at = start("compare")
    if run_ids is not None:
        at.multiselect(key="compare-runs").set_value(run_ids).run()
    assert not at.exception, at.exception
    return at


def test_no_runs_says_what_to_do(app_env):
    at = compare_page()
    assert any("No finished runs yet" in text for text in texts(at, "info"))


def test_one_run_is_shown_without_pairs(app_env, runs_with_results):
    ids = link(runs_with_results, app_env["runs"], ("scratch",))
    at = compare_page(ids)
    conclusion = " ".join(texts(at, "markdown"))
    assert "Only one run" in conclusion
    assert not any("more accurate than" in text for text in texts(at, "markdown"))


@pytest.mark.parametrize("approaches", [("frozen", "scratch"), APPROACHES])
def test_two_and_three_runs_get_every_pair(app_env, runs_with_results, approaches):
    ids = link(runs_with_results, app_env["runs"], approaches)
    at = compare_page(ids)
    n_pairs = len(approaches) * (len(approaches) - 1) // 2
    pairs = [frame.value for frame in at.dataframe if "Holm p" in frame.value.columns]
    assert len(pairs) == 1 and len(pairs[0]) == n_pairs
    assert set(pairs[0]["verdict"]) <= {"differs", "within noise"}
    markdown = " ".join(texts(at, "markdown"))
    assert "McNemar" in markdown
    labels = [button.label for button in at.get("download_button")]
    assert labels == ["Download the study (HTML)", "Download the numbers (JSON)"]


def test_runs_of_another_data_set_are_refused_with_a_message(app_env, runs_with_results):
    ids = link(runs_with_results, app_env["runs"], ("frozen",))
    other = app_env["runs"] / "scratch-20990101-0123456789"
    shutil.copytree(runs_with_results["scratch"], other, ignore=shutil.ignore_patterns(".lock", "last.pt"))
    meta = read_json(other / "config.json")
    meta["data_fingerprint"] = "another-data-set"
    (other / "config.json").write_text(json.dumps(meta))
    at = compare_page([*ids, other.name])
    assert any("different data sets" in plain(text) for text in texts(at, "error"))
    assert not [frame for frame in at.dataframe if "Holm p" in frame.value.columns]
