"""Choosing each approach's best run, reading its numbers, and saying who wins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from speedsign.compare import (
    FRAME_COLUMNS,
    Comparison,
    best_runs,
    compare_runs,
    comparison_frame,
    measure_latency,
    winner_sentence,
)
from speedsign.metrics import wilson_interval
from speedsign.predict import Predictor
from speedsign.runs import inspect_run, write_status
from speedsign.storage import read_json

APPROACHES = ("finetune", "frozen", "scratch")
RESNET18_PARAMS_9_CLASSES = 11_181_129  # 11,176,512 before fc + 512 * 9 + 9


def copy_run(source: Path, runs_dir: Path, name: str, **status: object) -> Path:
    """A copy of a finished run under a new id, with status fields changed."""
    target = runs_dir / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock", "last.pt"))
    if status:
        write_status(target, **status)
    return target


def set_fingerprint(run_dir: Path, fingerprint: str) -> None:
    meta = read_json(run_dir / "config.json")
    meta["data_fingerprint"] = fingerprint
    (run_dir / "config.json").write_text(json.dumps(meta))


def row(approach: str, accuracy: float, *, n: int = 2760, seconds: float = 60.0) -> Comparison:
    correct = round(accuracy * n)
    low, high = wilson_interval(correct, n)
    return Comparison(approach=approach, run_id=f"{approach}-20250101-abc", preset="fast", val_acc=correct / n,
                      ci_low=low, ci_high=high, n_val=n, train_seconds=seconds, images_per_s=1000.0,
                      epochs=10, img_size=48, model_mb=44.7, params=11_181_129, latency_ms=None)


# ---------------------------------------------------------------- best_runs

def test_best_runs_finds_one_per_approach(runs_with_results):
    runs_dir = runs_with_results["scratch"].parent
    best = best_runs(runs_dir)
    assert list(best) == list(APPROACHES)
    for approach, info in best.items():
        assert info.run_dir == runs_with_results[approach] and info.state == "done"
    fingerprint = best["scratch"].config["data_fingerprint"]
    assert list(best_runs(runs_dir, data_fingerprint=fingerprint)) == list(APPROACHES)
    assert best_runs(runs_dir, data_fingerprint="another data set") == {}
    assert best_runs(runs_dir / "missing") == {}


def test_best_runs_skips_unfinished_damaged_and_other_data(runs_with_results, tmp_path):
    source = runs_with_results["scratch"]
    runs_dir = tmp_path / "runs"
    original = copy_run(source, runs_dir, "scratch-20250101-original")
    fingerprint = inspect_run(original).config["data_fingerprint"]
    # Each of these claims a better accuracy, and none may win.
    failed = copy_run(source, runs_dir, "scratch-20250101-failed", state="failed", best_val_acc=0.99)
    damaged = copy_run(source, runs_dir, "scratch-20250101-damaged", best_val_acc=0.98)
    (damaged / "best.pt").unlink()
    other_data = copy_run(source, runs_dir, "scratch-20250101-otherdata", best_val_acc=0.97)
    set_fingerprint(other_data, "0123456789abcdef")
    assert inspect_run(damaged).damaged and inspect_run(failed).state == "failed"

    assert best_runs(runs_dir, data_fingerprint=fingerprint)["scratch"].run_dir == original
    assert best_runs(runs_dir)["scratch"].run_dir == other_data  # no filter: any data set
    assert best_runs(runs_dir, data_fingerprint="0123456789abcdef")["scratch"].run_dir == other_data


def test_best_runs_prefers_higher_accuracy_then_newest(runs_with_results, tmp_path):
    source = runs_with_results["frozen"]
    runs_dir = tmp_path / "runs"
    copy_run(source, runs_dir, "frozen-20250101-older", best_val_acc=0.5, finished="2025-01-01T10:00:00+00:00")
    newer = copy_run(source, runs_dir, "frozen-20250101-newer", best_val_acc=0.5,
                     finished="2025-01-02T10:00:00+00:00")
    assert best_runs(runs_dir)["frozen"].run_dir == newer
    better = copy_run(source, runs_dir, "frozen-20250101-better", best_val_acc=0.6,
                      finished="2024-01-01T10:00:00+00:00")
    assert best_runs(runs_dir)["frozen"].run_dir == better


# ---------------------------------------------------------------- compare_runs

def test_compare_runs_reads_the_run_store(runs_with_results):
    best = best_runs(runs_with_results["scratch"].parent)
    rows = compare_runs(best, latency={"frozen": 3.5})
    assert [r.approach for r in rows] == list(APPROACHES)
    for r in rows:
        report = read_json(runs_with_results[r.approach] / "eval_val.json")
        assert r.val_acc == pytest.approx(report["accuracy"]) and r.n_val == report["n"] > 0
        assert (r.ci_low, r.ci_high) == pytest.approx(tuple(report["accuracy_ci95"]))
        assert r.ci_low <= r.val_acc <= r.ci_high
        assert r.val_acc == pytest.approx(best[r.approach].best_val_acc)
        assert r.run_id == best[r.approach].run_id and r.preset == "fast"
        assert r.epochs == 2 and r.img_size == 16
        assert r.train_seconds > 0 and r.images_per_s > 0
        assert r.params == RESNET18_PARAMS_9_CLASSES
        assert r.model_mb == pytest.approx(44.7, abs=0.2)  # float32 weights plus BN buffers
    by_approach = {r.approach: r for r in rows}
    assert by_approach["frozen"].latency_ms == 3.5 and by_approach["scratch"].latency_ms is None
    assert by_approach["frozen"].trainable_params == 512 * 9 + 9
    assert by_approach["finetune"].trainable_params == RESNET18_PARAMS_9_CLASSES


def test_compare_runs_throughput_is_the_median_epoch(runs_with_results):
    info = best_runs(runs_with_results["scratch"].parent)["scratch"]
    lines = (info.run_dir / "metrics.jsonl").read_text().splitlines()
    speeds = [json.loads(line)["images_per_s"] for line in lines]
    assert compare_runs({"scratch": info})[0].images_per_s == pytest.approx(float(np.median(speeds)))


def test_compare_runs_falls_back_without_eval_file(runs_with_results, tmp_path):
    source = runs_with_results["finetune"]
    expected = read_json(source / "eval_val.json")
    run_dir = copy_run(source, tmp_path / "runs", "finetune-20250101-noeval")
    (run_dir / "eval_val.json").write_text("{ damaged")
    r = compare_runs({"finetune": inspect_run(run_dir)})[0]
    assert (r.val_acc, r.n_val) == (pytest.approx(expected["accuracy"]), expected["n"])
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(expected["accuracy_ci95"]))
    (run_dir / "eval_val.json").unlink()
    (run_dir / "predictions_val.npz").unlink()
    info = inspect_run(run_dir)
    r = compare_runs({"finetune": info})[0]
    assert r.val_acc == pytest.approx(info.best_val_acc) and r.n_val == 0 and (r.ci_low, r.ci_high) == (0.0, 1.0)


def test_comparison_frame_columns_and_units():
    frame = comparison_frame([row("scratch", 0.989, seconds=40), row("finetune", 0.972)])
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert frame["val accuracy (%)"].tolist() == [98.9, 97.2]
    assert frame["95% CI (%)"].str.match(r"^\d+\.\d-\d+\.\d$").all()
    assert frame["latency p50 (ms)"].isna().all()
    assert comparison_frame([]).columns.tolist() == list(FRAME_COLUMNS)


# ---------------------------------------------------------------- winner_sentence

def one_sentence(text: str) -> str:
    assert text.endswith(".") and ". " not in text and "\n" not in text, text
    return text


def test_clear_winner():
    text = one_sentence(winner_sentence([row("finetune", 0.972), row("scratch", 0.989), row("frozen", 0.90)]))
    assert text.startswith("scratch wins: 98.9% val accuracy (95% CI 98.5-99.2%) against 97.2% for finetune")
    assert "1.7 points better" in text and "does not overlap" in text


def test_overlapping_intervals_are_not_a_clear_lead():
    text = one_sentence(winner_sentence([row("frozen", 0.94, n=100), row("finetune", 0.95, n=100)]))
    assert text.startswith("finetune leads: 95.0%")
    assert "intervals overlap" in text and "not clear on 100 val images" in text


def test_accuracy_tie_is_broken_by_training_time():
    text = one_sentence(winner_sentence([row("finetune", 0.972, seconds=124), row("scratch", 0.972, seconds=40)]))
    assert text.startswith("scratch and finetune are equally accurate (97.2% val accuracy on 2,760 val images)")
    assert "scratch trains 3.1x faster (40 s against 124 s)" in text
    three = one_sentence(winner_sentence([row(a, 0.5, seconds=s) for a, s in
                                          (("finetune", 100), ("frozen", 10), ("scratch", 50))]))
    assert "frozen trains fastest, 10.0x faster than finetune" in three


def test_no_runs_and_one_run():
    assert one_sentence(winner_sentence([])).startswith("No finished runs yet: ")
    text = one_sentence(winner_sentence([row("frozen", 0.9, n=50)]))
    assert text.startswith("Only frozen has a finished run") and "90.0%" in text and "50 val images" in text


def test_winner_sentence_on_real_runs(runs_with_results):
    rows = compare_runs(best_runs(runs_with_results["scratch"].parent))
    text = one_sentence(winner_sentence(rows))
    assert any(text.startswith(a) for a in APPROACHES)


# ---------------------------------------------------------------- latency

def test_measure_latency_end_to_end(runs_with_results, synth_dir):
    predictor = Predictor(runs_with_results["frozen"])
    image = next(synth_dir.rglob("*.png")).read_bytes()
    timing = measure_latency(predictor, image, repeats=5, warmup=1)
    assert 0 < timing["p50"] <= timing["p95"] and timing["mean"] > 0
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(predictor, image, repeats=0)


def test_frame_labels_are_short_and_say_what_each_column_means():
    from speedsign.compare import FRAME_LABELS

    assert list(FRAME_LABELS) == list(FRAME_COLUMNS)  # every column, in order
    labels = [label for label, _ in FRAME_LABELS.values()]
    assert len(set(labels)) == len(labels) and max(map(len, labels)) <= 9, labels
    assert all(len(meaning) > len(label) for label, meaning in FRAME_LABELS.values())
