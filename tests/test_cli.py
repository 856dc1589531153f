"""The command line contract (DESIGN.md section 4): with --json the last stdout line is one JSON
object with the contract's keys; bad input exits 2 with one line on stderr and no traceback.

Commands run in this process through `speedsign.cli.main` (a new Python costs seconds of
imports on two cores); one real subprocess checks exit codes and stderr end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from speedsign import cli

from conftest import APPROACHES

REPO = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"run_id", "run_dir", "state", "cached", "best_val_acc", "epochs_run", "seconds"}
EVAL_KEYS = {"accuracy", "n", "per_class", "confusion"}
CLASS_KEYS = {"precision", "recall", "f1", "support"}
RUN_KEYS = {"run_id", "approach", "state", "epoch", "epochs", "best_val_acc", "damaged"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 classes x 6 images of 16 px, with a test/ split of two classes."""
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("cli") / "signs"
    render_dataset(out, per_class=6, frames_per_track=2, size=16, seed=2)
    for name in ("speed_30", "speed_50"):
        (out / "test" / name).mkdir(parents=True)
        for path in sorted((out / "train" / name).iterdir())[:2]:
            shutil.copy(path, out / "test" / name / path.name)
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """Exit code, the parsed last stdout line (with --json), and stderr."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    answer = json.loads(lines[-1]) if "--json" in argv and lines and code in (0, 1) else None
    return code, answer, captured.err


def folder_snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under `folder`: (modification time in ns, content digest), by relative path."""
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_usage_error(code: int, err: str, words: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("speedsign: error: ") and words in lines[0], err


# ---------------------------------------------------------------- train

@pytest.mark.parametrize("approach", APPROACHES)
def test_train_json_then_cached_then_force(approach: str, tiny_data: Path, weights_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], one_thread) -> None:
    argv = ["train", "--approach", approach, "--data", str(tiny_data), "--img-size", "16", "--epochs", "1",
            "--batch-size", "12", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--json"]
    if approach != "scratch":
        argv += ["--weights", str(weights_file)]
    code, first, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert set(first) >= TRAIN_KEYS and first["state"] == "done" and first["cached"] is False
    assert first["epochs_run"] == 1 and 0 <= first["best_val_acc"] <= 1
    assert first["run_id"].startswith(f"{approach}-") and Path(first["run_dir"]).name == first["run_id"]

    before = folder_snapshot(Path(first["run_dir"]))
    code, second, _ = run_cli(capsys, *argv)
    assert code == 0 and second["cached"] is True and second["run_id"] == first["run_id"]
    assert second["state"] == "done" and second["best_val_acc"] == first["best_val_acc"]
    # No training, not even a restart of one: a scan and a hash, and the run folder untouched.
    assert folder_snapshot(Path(first["run_dir"])) == before

    code, again, err = run_cli(capsys, *argv, "--force")
    assert code == 0 and again["cached"] is False and again["state"] == "done", err
    assert again["run_id"] == first["run_id"]
    metrics = (Path(first["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in metrics] == [1]  # afresh, not appended


def test_background_launch_of_a_finished_run_returns_it_cached(
        runs_with_results: dict[str, Path], synth_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs_with_results["scratch"]
    code, answer, err = run_cli(capsys, "train", "--approach", "scratch", "--data", str(synth_dir),
                                "--img-size", "16", "--epochs", "2", "--batch-size", "32",
                                "--runs-dir", str(run_dir.parent), "--background", "--json")
    assert code == 0, err
    assert answer["run_id"] == run_dir.name and answer["cached"] is True and answer["state"] == "done"
    assert answer["pid"] is None  # nothing was started


# ---------------------------------------------------------------- eval, predict

def test_eval_val_and_test_splits_give_the_contract_report(
        runs_with_results: dict[str, Path], synth_dir: Path, tiny_data: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs_with_results["frozen"]
    classes = json.loads((run_dir / "config.json").read_text())["classes"]
    code, val, err = run_cli(capsys, "eval", str(run_dir), "--data", str(synth_dir), "--split", "val", "--json")
    assert code == 0, err
    assert set(val) >= EVAL_KEYS and val["n"] > 0 and 0 <= val["accuracy"] <= 1
    assert list(val["per_class"]) == classes and all(set(s) >= CLASS_KEYS for s in val["per_class"].values())
    assert sum(map(sum, val["confusion"])) == val["n"] == sum(s["support"] for s in val["per_class"].values())

    only_test = tiny_data.parent / "only-test"
    shutil.copytree(tiny_data / "test", only_test / "test", dirs_exist_ok=True)
    for data in (tiny_data, only_test):  # test/ beside train/, and a folder of test/ alone
        code, test, err = run_cli(capsys, "eval", str(run_dir), "--data", str(data), "--split", "test", "--json")
        assert code == 0, err
        assert set(test) >= EVAL_KEYS and test["n"] == 4
        assert {name for name, s in test["per_class"].items() if s["support"]} == {"speed_30", "speed_50"}

    code, _, err = run_cli(capsys, "eval", str(run_dir), "--data", str(synth_dir))
    assert code == 0 and err == ""  # text mode too


def test_eval_all_scores_every_image_of_the_folder(
        runs_with_results: dict[str, Path], tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --split all: a data set the run never saw (real photos for a synthetic-trained model).
    run_dir = runs_with_results["scratch"]
    code, report, err = run_cli(capsys, "eval", str(run_dir), "--data", str(tiny_data), "--split", "all", "--json")
    assert code == 0, err
    every = list(tiny_data.rglob("*.png"))
    assert report["split"] == "all" and report["n"] == len(every) == 9 * 6 + 4
    assert sum(s["support"] for s in report["per_class"].values()) == report["n"]


def test_eval_with_a_class_the_run_does_not_know_or_no_data_exits_2(
        runs_with_results: dict[str, Path], tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = runs_with_results["scratch"]
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "test", data / "test")
    shutil.copytree(tiny_data / "test" / "speed_30", data / "test" / "speed_999")
    assert_usage_error(*run_cli(capsys, "eval", str(run_dir), "--data", str(data), "--split", "test", "--json")[::2],
                       "classes the run does not know: speed_999")
    assert_usage_error(*run_cli(capsys, "eval", str(run_dir), "--data", str(tmp_path / "nowhere"), "--json")[::2],
                       "data folder not found")
    assert_usage_error(*run_cli(capsys, "eval", str(run_dir), "--data", str(data), "--split", "val", "--json")[::2],
                       "")
    assert_usage_error(*run_cli(capsys, "eval", str(tmp_path / "no-run"), "--data", str(data), "--json")[::2],
                       "checkpoint not found")


def test_predict_json_gives_top_k_per_image_and_an_error_entry_for_a_non_image(
        runs_with_results: dict[str, Path], tiny_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    images = sorted((tiny_data / "test").rglob("*.png"))[:2]
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    code, answer, err = run_cli(capsys, "predict", str(runs_with_results["finetune"]), str(images[0]), str(text),
                                str(images[1]), "--top", "2", "--json")
    assert code == 1 and "Traceback" not in err  # 1: one of the files had no answer
    first, bad, last = answer["predictions"]
    for entry, image in ((first, images[0]), (last, images[1])):
        assert set(entry) == {"image", "top"} and entry["image"] == str(image) and len(entry["top"]) == 2
        assert all(set(t) == {"label", "prob"} and 0 <= t["prob"] <= 1 for t in entry["top"])
        assert entry["top"][0]["prob"] >= entry["top"][1]["prob"]
    assert set(bad) == {"image", "error"} and bad["image"] == str(text) and "text file" in bad["error"]

    code, answer, _ = run_cli(capsys, "predict", str(runs_with_results["finetune"]), str(images[0]), "--json")
    assert code == 0 and len(answer["predictions"][0]["top"]) == 3  # --top defaults to 3
    assert_usage_error(*run_cli(capsys, "predict", str(runs_with_results["finetune"]), str(images[0]),
                                "--top", "0")[::2], "--top must be at least 1")


# ---------------------------------------------------------------- data, runs

def test_data_synth_and_stats_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    code, made, err = run_cli(capsys, "data", "synth", "--out", str(out), "--per-class", "4", "--size", "16", "--json")
    assert code == 0, err
    assert made["images"] == 36 and made["per_class"] == 4 and Path(made["out"]) == out
    code, stats, err = run_cli(capsys, "data", "stats", str(out), "--json")
    assert code == 0, err
    assert stats["images"] == 36 and len(stats["classes"]) == 9 and stats["unreadable"] == []
    assert set(stats["counts"]) == {"train", "val"}
    # Rendering over a data set is refused, not merged.
    assert_usage_error(*run_cli(capsys, "data", "synth", "--out", str(out), "--json")[::2], "not empty")
    assert_usage_error(*run_cli(capsys, "data", "stats", str(tmp_path / "nowhere"), "--json")[::2], "not found")


def test_runs_json_lists_every_run_with_the_contract_keys(
        runs_with_results: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = next(iter(runs_with_results.values())).parent
    code, answer, err = run_cli(capsys, "runs", "--runs-dir", str(runs_dir), "--json")
    assert code == 0, err
    rows = {row["run_id"]: row for row in answer["runs"]}
    assert {path.name for path in runs_with_results.values()} <= set(rows)
    for approach, path in runs_with_results.items():
        row = rows[path.name]
        assert set(row) == RUN_KEYS and row["approach"] == approach and row["state"] == "done"
        assert row["epoch"] == row["epochs"] == 2 and row["damaged"] is None
    code, answer, _ = run_cli(capsys, "runs", "--runs-dir", str(tmp_path / "none"), "--json")
    assert code == 0 and answer == {"runs": []}
    assert_usage_error(*run_cli(capsys, "cancel", str(tmp_path), "--json")[::2], "not a run folder")


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("extra, words", [
    (["--approach", "bogus"], "invalid choice: 'bogus'"),
    (["--lr", "0"], "lr must be in (0.0, 10.0]"),
    (["--lr", "nan"], "not a finite number"),
    (["--epochs", "-1"], "epochs must be in [1, 10000]"),
    (["--data", "/nonexistent/data"], "data folder not found"),
    (["--weights", "/nonexistent/w.pth", "--approach", "finetune"], "weights not found"),
    (["--device", "tpu"], "invalid choice"),
])
def test_bad_train_input_exits_2_with_one_line(extra: list[str], words: str, tiny_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--approach", "scratch", "--data", str(tiny_data), "--img-size", "16", "--epochs", "1",
            "--batch-size", "12", "--runs-dir", str(tmp_path / "runs"), "--json"]
    code, _, err = run_cli(capsys, *argv, *extra)
    assert_usage_error(code, err, words)
    assert not (tmp_path / "runs").exists()


def test_missing_subcommand_or_argument_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["train"], ["eval"], ["data"], ["predict", "somewhere"]):
        code, _, err = run_cli(capsys, *argv)
        assert_usage_error(code, err, "required")


def test_real_process_exit_codes_and_stderr(tiny_data: Path, tmp_path: Path) -> None:
    """End to end: what a shell or the dashboard's job runner sees."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    bad = subprocess.run([sys.executable, "-m", "speedsign", "train", "--approach", "scratch", "--data",
                          str(tiny_data), "--lr", "0", "--runs-dir", str(tmp_path / "runs"), "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr, bad.stderr
    good = subprocess.run([sys.executable, "-m", "speedsign", "runs", "--runs-dir", str(tmp_path / "runs"), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and json.loads(good.stdout.strip().splitlines()[-1]) == {"runs": []}, good.stderr
