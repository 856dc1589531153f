"""The Home page's question: which approach works best, by how much, and is the lead real?

Numbers come from the run store only (eval_val.json, predictions_val.npz, metrics.jsonl,
status.json, config.json): comparing never trains or evaluates anything. Latency is the
one measured number, and only when the caller passes it (it needs the models loaded).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speedsign.config import APPROACHES
from speedsign.errors import UserError
from speedsign.evaluation import read_predictions
from speedsign.metrics import wilson_interval
from speedsign.models import build_untrained, count_parameters, model_size_mb
from speedsign.predict import Predictor
from speedsign.runs import RunDir, RunInfo, list_runs, read_metrics
from speedsign.storage import read_json

# Relative training-time difference below which two runs "train about as fast".
SAME_SPEED_RATIO = 1.05


@dataclass(frozen=True)
class Comparison:
    """One approach's best finished run, as the comparison table shows it."""

    approach: str
    run_id: str
    preset: str
    val_acc: float
    ci_low: float  # 95% Wilson interval of val_acc
    ci_high: float
    n_val: int  # 0 when the run stored no val predictions (the interval is then 0-1)
    train_seconds: float
    images_per_s: float  # median over epochs of training throughput
    epochs: int
    img_size: int
    model_mb: float
    params: int
    latency_ms: float | None  # p50 of one upload end to end, when measured
    trainable_params: int | None = None  # frozen trains only fc


# ---------------------------------------------------------------- choosing runs

def best_runs(runs_dir: Path, *, data_fingerprint: str | None = None) -> dict[str, RunInfo]:
    """The best finished run per approach: highest val accuracy, the newest on ties.

    Only runs that are done and undamaged count; with `data_fingerprint`, only runs trained
    on that data set (a lead measured on other data is no lead). Approaches in the usual order.
    """
    return best_of(list_runs(Path(runs_dir)), data_fingerprint=data_fingerprint)


def best_of(runs: Sequence[RunInfo], *, data_fingerprint: str | None = None) -> dict[str, RunInfo]:
    """`best_runs` over given runs (published models, say)."""
    best: dict[str, RunInfo] = {}
    for info in runs:
        if not is_comparable(info, data_fingerprint=data_fingerprint):
            continue
        current = best.get(info.approach)
        if current is None or _rank(info) > _rank(current):
            best[info.approach] = info
    return {approach: best[approach] for approach in sorted(best, key=_approach_order)}


def published_groups(published: Sequence[RunInfo]) -> list[tuple[str, dict[str, RunInfo]]]:
    """The published models' best per approach, per data set they were trained on:
    (data folder name, best), the largest group first (models of different data never share a table)."""
    by_data: dict[str, list[RunInfo]] = {}
    for info in published:
        if is_comparable(info):
            by_data.setdefault(str(info.config.get("data_fingerprint")), []).append(info)
    groups = [(Path(str(runs[0].config.get("data_dir", "?"))).name, best_of(runs)) for runs in by_data.values()]
    return sorted(groups, key=lambda group: -len(group[1]))


def is_comparable(info: RunInfo, *, data_fingerprint: str | None = None) -> bool:
    """Done, undamaged, with an approach and an accuracy (and on the data set, if given)."""
    if info.state != "done" or info.damaged or info.approach == "?" or info.best_val_acc is None:
        return False
    return data_fingerprint is None or info.config.get("data_fingerprint") == data_fingerprint


def _rank(info: RunInfo) -> tuple[float, str]:
    # ISO timestamps in UTC sort as strings; "finished" says which result is newest.
    finished = str(info.status.finished or info.status.created or info.config.get("created") or "")
    return float(info.best_val_acc or 0.0), finished


def _approach_order(approach: str) -> tuple[int, str]:
    return (APPROACHES.index(approach) if approach in APPROACHES else len(APPROACHES), approach)


# ---------------------------------------------------------------- reading a run

def compare_runs(runs: Mapping[str, RunInfo], *, latency: Mapping[str, float] | None = None) -> list[Comparison]:
    """One Comparison per run, in the mapping's order; `latency` (ms) keyed by approach or run id."""
    rows = []
    for key, info in runs.items():
        approach = info.approach if info.approach != "?" else key
        measured = None
        if latency is not None:
            measured = latency.get(approach, latency.get(info.run_id, latency.get(key)))
        rows.append(summarize_run(info, approach=approach, latency_ms=measured))
    return rows


def summarize_run(info: RunInfo, *, approach: str | None = None, latency_ms: float | None = None) -> Comparison:
    """A run folder's numbers for the comparison; missing files fall back, never raise."""
    approach = approach or info.approach
    config: dict[str, Any] = info.config.get("config", {}) if isinstance(info.config, dict) else {}
    classes = info.config.get("classes", []) if isinstance(info.config, dict) else []
    accuracy, n, low, high = val_accuracy(info)
    rows, _ = read_metrics(info.run_dir)
    params, size_mb, trainable = model_footprint(approach, num_classes=len(classes), run_dir=info.run_dir)
    if info.published and info.folder.model.is_file():  # int8 on disk: what the bundle weighs
        size_mb = info.folder.model.stat().st_size / 1e6
    return Comparison(
        approach=approach, run_id=info.run_id, preset=str(config.get("preset", "?")),
        val_acc=accuracy, ci_low=low, ci_high=high, n_val=n,
        train_seconds=_number(info.status.seconds),
        images_per_s=median_throughput(rows, fallback=info.status.images_per_s),
        epochs=int(info.epoch or len(rows)), img_size=int(_number(config.get("img_size"))),
        model_mb=size_mb, params=params,
        latency_ms=float(latency_ms) if latency_ms is not None else None,
        trainable_params=trainable,
    )


def val_accuracy(info: RunInfo) -> tuple[float, int, float, float]:
    """(accuracy, n, ci_low, ci_high) of a run's best model on its val split.

    From eval_val.json, else predictions_val.npz, else the status's best_val_acc with n = 0
    (nothing says how many images it was measured on, so the interval is the whole 0-1).
    """
    report = _read_eval(info.folder.evaluation)
    if report is not None:
        return report
    counted = _count_predictions(info.folder.predictions)
    if counted is not None:
        correct, n = counted
        low, high = wilson_interval(correct, n)
        return (correct / n if n else 0.0), n, low, high
    return float(info.best_val_acc or 0.0), 0, 0.0, 1.0


def _read_eval(path: Path) -> tuple[float, int, float, float] | None:
    try:
        report = read_json(path)
        accuracy, n = float(report["accuracy"]), int(report["n"])
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: try the next source
        return None
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0 and n >= 0):
        return None
    interval = report.get("accuracy_ci95")
    if (isinstance(interval, list) and len(interval) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in interval)):
        return accuracy, n, float(interval[0]), float(interval[1])
    low, high = wilson_interval(round(accuracy * n), n)
    return accuracy, n, low, high


def _count_predictions(path: Path) -> tuple[int, int] | None:
    """(correct, n) of a run's saved val predictions; None when missing or damaged."""
    try:
        saved = read_predictions(path)
    except UserError:  # missing or damaged: fall back to the status's accuracy
        return None
    return saved.correct, len(saved.labels)


def median_throughput(rows: Sequence[Mapping[str, Any]], *, fallback: Any = None) -> float:
    """Median training images/s over epochs: the first epoch's warm-up does not drag it down."""
    values = [float(r["images_per_s"]) for r in rows
              if isinstance(r.get("images_per_s"), (int, float)) and math.isfinite(r["images_per_s"])
              and r["images_per_s"] > 0]
    if values:
        return float(statistics.median(values))
    return _number(fallback)


def model_footprint(approach: str, *, num_classes: int, run_dir: Path | None = None) -> tuple[int, float, int | None]:
    """(parameters, size in MB, trainable parameters) of an approach's network.

    Built untrained from the config (no checkpoint load); an unknown approach falls back to
    the size of the model file with parameters unknown (0).
    """
    if approach in APPROACHES and num_classes > 0:
        return _footprint(approach, num_classes)
    best = RunDir(run_dir).model if run_dir else None
    size = best.stat().st_size / 1e6 if best is not None and best.exists() else 0.0
    return 0, size, None


@functools.lru_cache(maxsize=16)
def _footprint(approach: str, num_classes: int) -> tuple[int, float, int]:
    # Building a ResNet18 costs ~0.1 s of random init; the answer never changes.
    model = build_untrained(approach, num_classes=num_classes)
    params = count_parameters(model)
    trainable = count_parameters(model.fc) if approach == "frozen" else params
    return params, model_size_mb(model), trainable


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


# ---------------------------------------------------------------- presenting

FRAME_COLUMNS: tuple[str, ...] = (
    "approach", "run", "val accuracy (%)", "95% CI (%)", "val images", "training time (s)", "images/s",
    "epochs", "input (px)", "model size (MB)", "trainable (M)", "latency p50 (ms)",
)

# The table's headers on screen, with what each column means: the frame's own names carry
# the units in words, and twelve such headers need 1,160 px, more than the page has at
# 1280 px wide (about 820 px beside the sidebar). Short headers as narrow as the numbers fit.
FRAME_LABELS: dict[str, tuple[str, str]] = {
    "approach": ("approach", "finetune: every layer trains; frozen: only a new fc; scratch: random init"),
    "run": ("run", "the run id (its folder under runs/)"),
    "val accuracy (%)": ("val acc %", "share of the val images the best model gets right"),
    "95% CI (%)": ("95% CI", "Wilson 95% interval of the val accuracy, in %: overlapping intervals, no clear lead"),
    "val images": ("val n", "val images the accuracy is measured on"),
    "training time (s)": ("train s", "wall time of the whole run, in seconds"),
    "images/s": ("img/s", "training images per second (median over epochs)"),
    "epochs": ("epochs", "epochs trained"),
    "input (px)": ("px", "input side in pixels"),
    "model size (MB)": ("MB", "size of the weights in MB (float32; a published model's int8 file)"),
    "trainable (M)": ("train M", "trainable parameters, millions (frozen trains only its fc)"),
    "latency p50 (ms)": ("p50 ms", "median time of one photo end to end (decode, resize, forward), ms"),
}


def comparison_frame(rows: Sequence[Comparison]) -> pd.DataFrame:
    """The comparison table: one row per approach, rounded, units in the column names.

    Kept to what fits one screen: the interval as one text column, parameters as the
    trainable count (all three are ResNet18s of 11.2 M parameters; frozen trains 4.6 k).
    """
    records = [{
        "approach": r.approach,
        "run": r.run_id,
        "val accuracy (%)": round(100 * r.val_acc, 1),
        "95% CI (%)": f"{100 * r.ci_low:.1f}-{100 * r.ci_high:.1f}",
        "val images": r.n_val,
        "training time (s)": round(r.train_seconds, 1),
        "images/s": round(r.images_per_s),
        "epochs": r.epochs,
        "input (px)": r.img_size,
        "model size (MB)": round(r.model_mb, 1),
        "trainable (M)": (round(r.trainable_params / 1e6, 3) if r.trainable_params is not None
                          else round(r.params / 1e6, 2)),
        "latency p50 (ms)": round(r.latency_ms, 1) if r.latency_ms is not None else float("nan"),
    } for r in rows]
    return pd.DataFrame(records, columns=list(FRAME_COLUMNS))


def winner_sentence(rows: Sequence[Comparison]) -> str:
    """One sentence on who is best, by how much, and whether the intervals say it is real."""
    if not rows:
        return ("No finished runs yet: train the finetune, frozen and scratch approaches to compare them.")
    ranked = sorted(rows, key=lambda r: (-r.val_acc, r.train_seconds if r.train_seconds > 0 else math.inf))
    best = ranked[0]
    if len(ranked) == 1:
        return (f"Only {best.approach} has a finished run so far: {_pct(best.val_acc)} val accuracy "
                f"{_interval(best)}{_on_images(ranked)}; train the other approaches to compare.")
    tied = [r for r in ranked if abs(r.val_acc - best.val_acc) < 1e-12]
    if len(tied) > 1:
        return _tie_sentence(tied)
    runner = ranked[1]
    points = 100 * (best.val_acc - runner.val_acc)
    lead = (f"{_pct(best.val_acc)} val accuracy {_interval(best)} against {_pct(runner.val_acc)} "
            f"for {runner.approach}, {_points(points)} better")
    if best.ci_low > runner.ci_high:
        return f"{best.approach} wins: {lead}; its interval does not overlap, so the lead is clear."
    return (f"{best.approach} leads: {lead}; the intervals overlap, so the difference is not clear"
            f"{_on_images([best, runner])}.")


def _tie_sentence(tied: Sequence[Comparison]) -> str:
    names = _join([r.approach for r in tied])
    accuracy = f"{_pct(tied[0].val_acc)} val accuracy{_on_images(tied)}"
    timed = [r for r in tied if r.train_seconds > 0]
    if len(timed) < 2:
        return f"{names} are equally accurate ({accuracy}); their training times are not all recorded."
    fastest, slowest = timed[0], max(timed, key=lambda r: r.train_seconds)
    ratio = slowest.train_seconds / fastest.train_seconds
    if ratio < SAME_SPEED_RATIO:
        return f"{names} are equally accurate ({accuracy}) and train about as fast."
    if len(tied) == 2:
        faster = (f"{fastest.approach} trains {ratio:.1f}x faster ({_duration(fastest.train_seconds)} "
                  f"against {_duration(slowest.train_seconds)})")
    else:
        faster = f"{fastest.approach} trains fastest, {ratio:.1f}x faster than {slowest.approach}"
    return f"{names} are equally accurate ({accuracy}); {faster}."


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval(row: Comparison) -> str:
    return f"(95% CI {100 * row.ci_low:.1f}-{100 * row.ci_high:.1f}%)"


def _points(points: float) -> str:
    # 0.04 points shown as "0.0 points better" would read as a contradiction.
    return f"{points:.2f} points" if points < 0.05 else f"{points:.1f} points"


def _on_images(rows: Sequence[Comparison]) -> str:
    sizes = sorted({r.n_val for r in rows if r.n_val > 0})
    if not sizes:
        return ""
    if len(sizes) == 1:
        return f" on {sizes[0]:,} val images"
    return f" on val sets of {_join([f'{n:,}' for n in sizes])} images"


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- latency

def measure_latency(predictor: Predictor, image: bytes, *, repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Milliseconds from upload bytes to probabilities (decode, resize, forward): p50, p95, mean.

    Warm-up calls are not counted: the first forwards pay for allocator and kernel set-up.
    A bad image raises ImageError from the first call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    for _ in range(warmup):
        predictor.predict(image)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict(image)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95)),
            "mean": float(np.mean(times))}
