"""AppTest of what a newcomer meets on Learning curves, Classify and Home: which runs are drawn
unasked, a failed run's error said once, unsure answers that do not look sure, what each
model was trained on, and a comparison table that fits.

The app runs in-process on a private data root and runs folder (environment variables); the
finished runs are the session's tiny real trainings (`runs_with_results`), linked into a
runs folder beside hand-made failed, cancelled and running ones.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from speedsign import classify, datasets

from app_support import plain, start, texts

OFFLINE = "ImageNet weights for ResNet18 are not on this machine and could not be downloaded (no internet?)"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def app_data(tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root holding the session's synthetic set as data/synth (a link: same fingerprint)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "synth").symlink_to(synth_dir, target_is_directory=True)
    monkeypatch.setenv("SPEEDSIGN_DATA", str(data))
    monkeypatch.setattr(datasets, "FIRST_RUN_PER_CLASS", 10)
    monkeypatch.setattr(datasets, "FIRST_RUN_SIZE", 32)
    return data


@pytest.fixture
def runs_dir(tmp_path: Path, app_data: Path, runs_with_results: dict[str, Path],
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runs folder with the three finished tiny runs (links), for tests to add runs beside."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for run_dir in runs_with_results.values():
        (runs / run_dir.name).symlink_to(run_dir, target_is_directory=True)
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    return runs


def add_run(runs: Path, source: Path, run_id: str, *, state: str, epoch: int, error: str | None = None,
            created: str = "2099-01-01T00:00:00+00:00", fingerprint: str | None = None,
            checkpoints: bool = True) -> Path:
    """A copy of a finished run under a new id, now in `state` after `epoch` epochs (newer than the
    fixture's runs); a live pid and a fresh heartbeat when running; another data set's
    fingerprint when given."""
    run_dir = runs / run_id
    keep = ("config.json", "status.json", "metrics.jsonl") + (("last.pt", "best.pt") if checkpoints else ())
    shutil.copytree(source, run_dir, ignore=lambda _folder, names: [n for n in names if n not in keep])
    status = json.loads((run_dir / "status.json").read_text())
    status.update(state=state, epoch=epoch, created=created, error=error, heartbeat=time.time(),
                  pid=os.getpid() if state == "running" else None, host=socket.gethostname())
    (run_dir / "status.json").write_text(json.dumps(status))
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()[:epoch]
    (run_dir / "metrics.jsonl").write_text("".join(row + "\n" for row in rows))
    if fingerprint is not None:
        config = json.loads((run_dir / "config.json").read_text())
        config["data_fingerprint"] = fingerprint
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def everything(at: AppTest) -> str:
    kinds = ("title", "subheader", "markdown", "caption", "info", "success", "warning", "error", "metric")
    return "\n".join(plain(getattr(e, "label", "")) + " " + plain(e.value) for kind in kinds for e in getattr(at, kind))


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def upload_sign(at: AppTest, synth_dir: Path) -> AppTest:
    image = sorted((synth_dir / "train" / "speed_50").iterdir())[0]
    buffer = io.BytesIO()
    Image.open(image).convert("RGB").save(buffer, format="PNG")
    return at.file_uploader(key="classify-upload").set_value(("sign.png", buffer.getvalue(), "image/png")).run()


# ---------------------------------------------------------------- Learning curves

@pytest.fixture
def mixed_runs(runs_dir: Path, runs_with_results: dict[str, Path]) -> dict[str, Path]:
    """Beside the three finished runs: two failed ones, a cancelled one, and a finished run of
    another data set."""
    scratch, frozen = runs_with_results["scratch"], runs_with_results["frozen"]
    return {
        "offline": add_run(runs_dir, frozen, "finetune-20990101-offline01", state="failed", epoch=0,
                           error=OFFLINE, checkpoints=False),
        "oom": add_run(runs_dir, scratch, "scratch-20990101-oomfail01", state="failed", epoch=1,
                       error="out of memory in epoch 2"),
        "cancelled": add_run(runs_dir, scratch, "scratch-20990101-cancel01", state="cancelled", epoch=1),
        "other": add_run(runs_dir, scratch, "scratch-20990102-otherdata", state="done", epoch=2,
                         fingerprint="0123456789abcdef"),
    }


def test_curves_draw_the_finished_runs_of_this_data_set_unasked(mixed_runs: dict[str, Path],
                                                                runs_with_results: dict[str, Path]) -> None:
    at = start("curves")
    assert_clean(at)
    picker = at.multiselect(key="curve-runs")
    assert sorted(picker.value) == sorted(run_dir.name for run_dir in runs_with_results.values())
    # The others can be chosen (the options are labels: the id first); the other data set's run says so.
    assert {run_dir.name for run_dir in mixed_runs.values()} <= {option.split(" · ")[0] for option in picker.options}
    assert [option for option in picker.options if "other data set" in option] == [
        option for option in picker.options if option.startswith(mixed_runs["other"].name)]
    (chart,) = at.get("plotly_chart")
    names = {trace["name"] for trace in json.loads(chart.proto.spec)["data"]}
    assert not any(run_dir.name in name for run_dir in mixed_runs.values() for name in names)


def test_a_failed_runs_error_is_said_once(mixed_runs: dict[str, Path]) -> None:
    at = start("curves")
    assert_clean(at)
    assert everything(at).count(OFFLINE) == 1
    assert everything(at).count("out of memory in epoch 2") == 1
    (box,) = [text for text in texts(at, "error") if OFFLINE in text]
    assert box.startswith("2 runs failed") and "out of memory in epoch 2" in box
    # Chosen too, and drawn again: still once, and the run with an epoch gets its curve.
    picker = at.multiselect(key="curve-runs")
    picker.set_value([*picker.value, mixed_runs["offline"].name, mixed_runs["oom"].name]).run()
    at.run()
    assert_clean(at)
    assert everything(at).count(OFFLINE) == 1
    assert everything(at).count("out of memory in epoch 2") == 1
    assert "finished no epoch" in everything(at)  # the offline run has no curve, and says why
    (chart,) = at.get("plotly_chart")
    assert any(mixed_runs["oom"].name in trace["name"] for trace in json.loads(chart.proto.spec)["data"])


def test_curves_draw_a_running_job_of_this_data_set_live(runs_dir: Path, runs_with_results: dict[str, Path]) -> None:
    running = add_run(runs_dir, runs_with_results["scratch"], "scratch-20990101-running01", state="running", epoch=1)
    at = start("curves")
    assert_clean(at)
    assert at.multiselect(key="curve-runs").value[0] == running.name  # training now: first
    assert "Updating every" in everything(at)


def test_curves_with_runs_of_other_data_sets_only(tmp_path: Path, app_data: Path,
                                                  runs_with_results: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs-other"
    runs.mkdir()
    add_run(runs, runs_with_results["scratch"], "scratch-20990102-otherdata", state="done", epoch=2,
            fingerprint="0123456789abcdef")
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    at = start("curves")
    assert_clean(at)
    assert at.multiselect(key="curve-runs").value == []
    assert "No finished or running run on this data set yet" in everything(at)
    assert not at.get("plotly_chart")


# ---------------------------------------------------------------- Classify

def with_probs(monkeypatch: pytest.MonkeyPatch, probs: tuple[float, ...]) -> None:
    """Every model's answer with these top-3 probabilities (the real labels, time and image)."""
    real = classify.answer
    monkeypatch.setattr(classify, "answer", lambda model, photo, **kw: dataclasses.replace(
        real(model, photo, **kw), probs=probs))


def test_an_unsure_answer_is_plain_type_with_a_warning_and_the_top_3(runs_dir: Path, synth_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with_probs(monkeypatch, (0.28, 0.25, 0.2))
    at = upload_sign(start("classify"), synth_dir)
    assert_clean(at)
    assert not [m for m in at.metric if m.label == "Prediction"]  # nothing in large type
    guesses = [text for text in texts(at, "markdown") if text.startswith("Best guess: ")]
    assert len(guesses) == 3 and all(text.endswith("(28%)") for text in guesses)
    warnings = [text for text in texts(at, "warning") if "Low confidence" in text]
    assert len(warnings) == 3 and all("the model is unsure; try framing the sign tighter" in w for w in warnings)
    tops = [text for text in texts(at, "caption") if text.startswith("Top 3: ")]
    assert len(tops) == 3 and all(re.fullmatch(r"Top 3: \S+ 28%, \S+ 25%, \S+ 20%", text) for text in tops), tops


def test_a_sure_answer_is_the_large_prediction(runs_dir: Path, synth_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with_probs(monkeypatch, (0.93, 0.04, 0.01))
    at = upload_sign(start("classify"), synth_dir)
    assert_clean(at)
    assert len([m for m in at.metric if m.label == "Prediction"]) == 3
    assert not [text for text in texts(at, "warning") if "Low confidence" in text]
    assert not [text for text in texts(at, "markdown") if text.startswith("Best guess")]


def test_a_model_whose_output_is_not_a_number_gives_no_answer(runs_dir: Path, synth_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with_probs(monkeypatch, (float("nan"),) * 3)
    at = upload_sign(start("classify"), synth_dir)
    assert_clean(at)
    assert not [m for m in at.metric if m.label == "Prediction"]
    assert len([text for text in texts(at, "warning") if text.startswith("No answer: ")]) == 3


def test_the_tiny_runs_answer_unsure_or_sure_never_both(runs_dir: Path, synth_dir: Path) -> None:
    at = upload_sign(start("classify"), synth_dir)
    assert_clean(at)
    sure = len([m for m in at.metric if m.label == "Prediction"])
    unsure = len([text for text in texts(at, "markdown") if text.startswith("Best guess: ")])
    broken = len([text for text in texts(at, "warning") if text.startswith("No answer: ")])
    assert sure + unsure + broken == 3
    assert len([text for text in texts(at, "warning") if "Low confidence" in text]) == unsure


def test_each_model_says_it_was_trained_on_synthetic_signs_only(runs_dir: Path, synth_dir: Path) -> None:
    at = upload_sign(start("classify"), synth_dir)
    assert_clean(at)
    notes = [text for text in texts(at, "caption") if "Trained on" in text]
    assert len(notes) == 3, notes
    assert all("Trained on synthetic signs only (data set synth): real photos may be read wrongly" in text
               for text in notes), notes


# ---------------------------------------------------------------- Home

def test_home_table_has_short_headers_and_every_approach(runs_dir: Path) -> None:
    at = start()
    assert_clean(at)
    (table,) = at.dataframe
    assert len(table.value) == 3 and sorted(table.value["approach"]) == ["finetune", "frozen", "scratch"]
    shown = list(table.proto.column_order)
    assert "val images" not in shown and "val accuracy (%)" in shown and "95% CI (%)" in shown
    config = json.loads(table.proto.columns)
    labels = [config[name]["label"] for name in shown]
    assert max(len(label) for label in labels) <= 9, labels
    assert all(config[name].get("help") for name in shown)
