"""The study: which approach wins, by how much, at what cost, and why.

Built from the run store only (predictions, metrics, status, calibration); it trains nothing.
Every model is scored on the same images, so pairs are compared with paired statistics: an
exact McNemar test (Holm-corrected over the pairs) and a paired bootstrap interval of the
accuracy difference. The written conclusion is generated from those numbers, and names a
winner only where the test rejects "equally accurate". Robustness to corruptions needs the
models and the images, so it is computed apart (`robustness_rows`) and passed in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speedsign import metrics
from speedsign.calibration import apply_temperature, fit_temperature, read_calibration
from speedsign.compare import SAME_SPEED_RATIO, median_throughput, model_footprint
from speedsign.errors import UserError
from speedsign.evaluation import read_predictions
from speedsign.run_views import CURVE_AXES, curves_frame, run_data_dir
from speedsign.runs import RunInfo, read_metrics

SPLITS: tuple[str, ...] = ("val", "test")
ALPHA = 0.05  # a pair differs when its Holm-corrected McNemar p is below this
BOOTSTRAP_SAMPLES = 10_000
# Below this gap in mean accuracy under corruption, two runs are "about equally robust":
# the corrupted images are a sample of a few hundred, so a point is within its noise.
ROBUST_SAME_POINTS = 1.0


@dataclass(frozen=True)
class StudyRun:
    """One run's predictions on the study's images, in the study's image order."""

    run_id: str
    approach: str
    info: RunInfo
    probs: np.ndarray  # (n, classes) raw softmax of the best model
    temperature: float  # fitted on val; 1.0 when none could be fitted

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass(frozen=True)
class Study:
    """Runs scored on one split of one data set, aligned image by image."""

    split: str
    data_fingerprint: str
    data_dir: Path | None
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    runs: tuple[StudyRun, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def n(self) -> int:
        return len(self.labels)

    def correct(self, run: StudyRun) -> np.ndarray:
        return run.preds == self.labels


# ---------------------------------------------------------------- choosing and loading

def predictions_path(info: RunInfo, split: str) -> Path:
    return info.folder.predictions if split == "val" else info.folder.predictions_test


def available_splits(infos: Sequence[RunInfo]) -> list[str]:
    """val, and test when every chosen run stored its test predictions."""
    has_test = bool(infos) and all(predictions_path(info, "test").is_file() for info in infos)
    return ["val", "test"] if has_test else ["val"]


def load_study(infos: Sequence[RunInfo], *, split: str = "val") -> Study:
    """The chosen runs on one split, aligned by file; UserError when they cannot be compared."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if not infos:
        raise UserError("choose at least one run to study")
    ids = [info.run_id for info in infos]
    if len(set(ids)) != len(ids):
        raise UserError("each run can be chosen once")
    for info in infos:
        if info.damaged:
            raise UserError(f"run {info.run_id} is damaged ({info.damaged}): it cannot be studied")
        if info.state != "done":
            raise UserError(f"run {info.run_id} is {info.state}: only finished runs can be studied")
    fingerprints = {str(info.config.get("data_fingerprint", "")) for info in infos}
    if len(fingerprints) != 1 or "" in fingerprints:
        raise UserError("these runs trained on different data sets: a study compares models scored on the same "
                        "images, so choose runs of one data set")
    saved = {info.run_id: _read(info, split) for info in infos}
    first = saved[ids[0]]
    order = {name: i for i, name in enumerate(first.files)}
    runs = []
    for info in infos:
        own = saved[info.run_id]
        if own.classes != first.classes:
            raise UserError(f"run {info.run_id} has other classes than {ids[0]}: they cannot be compared")
        if set(own.files) != set(first.files) or len(own.files) != len(first.files):
            raise UserError(f"runs {ids[0]} and {info.run_id} were scored on different {split} images (another "
                            "val_fraction or seed draws another val split): choose runs of the same split")
        position = np.array([order[name] for name in own.files])
        probs = np.empty_like(own.probs)
        probs[position] = own.probs
        labels = np.empty_like(own.labels)
        labels[position] = own.labels
        if not np.array_equal(labels, first.labels):
            raise UserError(f"runs {ids[0]} and {info.run_id} disagree on the labels of the same images")
        runs.append(StudyRun(info.run_id, info.approach, info, probs, run_temperature(info)))
    return Study(split=split, data_fingerprint=fingerprints.pop(), data_dir=run_data_dir(infos[0]),
                 classes=first.classes, files=first.files, labels=first.labels, runs=tuple(runs))


def _read(info: RunInfo, split: str) -> Any:
    path = predictions_path(info, split)
    if not path.is_file():
        raise UserError(f"run {info.run_id} has no stored {split} predictions ({path.name})"
                        + ("; its data set may have no test/ folder" if split == "test" else ""))
    try:
        return read_predictions(path)
    except UserError as error:
        raise UserError(f"run {info.run_id}: {error}") from None


def run_temperature(info: RunInfo) -> float:
    """The run's stored temperature; fitted on its val predictions when it stored none."""
    calibration, _ = read_calibration(info.run_dir)
    if calibration is not None:
        return calibration.temperature
    try:
        saved = read_predictions(info.folder.predictions)
    except UserError:
        return 1.0
    return fit_temperature(saved.probs, saved.labels) if len(saved.labels) else 1.0


# ---------------------------------------------------------------- accuracy and pairs

def accuracy_rows(study: Study) -> list[dict[str, Any]]:
    """Per run: accuracy and its Wilson 95% interval on the study's images."""
    rows = []
    for run in study.runs:
        correct = int(study.correct(run).sum())
        low, high = metrics.wilson_interval(correct, study.n)
        rows.append({"run_id": run.run_id, "approach": run.approach, "correct": correct, "n": study.n,
                     "accuracy": correct / study.n if study.n else 0.0, "ci": [low, high]})
    return rows


def pair_rows(study: Study, *, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[dict[str, Any]]:
    """One entry per pair of runs (the `study --json` contract), Holm-corrected over the pairs."""
    pairs = []
    for run_a, run_b in itertools.combinations(study.runs, 2):
        a, b = study.correct(run_a), study.correct(run_b)
        test = metrics.mcnemar_exact(a, b)
        low, high = metrics.paired_bootstrap_ci(a, b, n_boot=n_boot, seed=seed)
        diff = float(a.mean() - b.mean()) if study.n else 0.0
        pairs.append({"a": run_a.run_id, "b": run_b.run_id, "n": study.n, "mcnemar": test, "diff": diff,
                      "diff_ci": [low, high]})
    for pair, adjusted in zip(pairs, metrics.holm_correction([p["mcnemar"]["p"] for p in pairs]), strict=True):
        pair["p_holm"] = adjusted
        pair["differs"] = adjusted < ALPHA
    return pairs


# ---------------------------------------------------------------- cost

def cost_rows(study: Study, *, latency_ms: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Per run: training seconds, images seen, images/s, parameters, size, and latency when measured."""
    rows = []
    for run in study.runs:
        records, _ = read_metrics(run.info.run_dir)
        images = records[-1].get("images") if records else None
        params, size_mb, trainable = model_footprint(run.approach, num_classes=len(study.classes),
                                                     run_dir=run.info.run_dir)
        seconds = run.info.status.seconds
        rows.append({
            "run_id": run.run_id, "approach": run.approach,
            "train_seconds": float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else None,
            "images_seen": int(images) if isinstance(images, int) and images > 0 else None,
            "images_per_s": median_throughput(records, fallback=run.info.status.images_per_s) or None,
            "params": params or None, "trainable_params": trainable if trainable is not None else (params or None),
            "model_mb": round(size_mb, 2),
            "latency_ms": (latency_ms or {}).get(run.run_id),
        })
    return rows


def time_to_accuracy_frame(study: Study) -> pd.DataFrame:
    """Val accuracy per epoch: run, epoch, seconds (cumulative), images (seen), val_acc."""
    frame = curves_frame({run.run_id: read_metrics(run.info.run_dir)[0] for run in study.runs})
    frame = frame[frame["split"] == "val"].rename(columns={"acc": "val_acc"})
    return frame[["run", *CURVE_AXES, "val_acc"]].reset_index(drop=True)


def first_reaching(frame: pd.DataFrame, run_id: str, target: float, *, x: str) -> float | None:
    """The first x (seconds or images) at which a run's val accuracy reached target; None if never."""
    rows = frame[(frame["run"] == run_id) & (frame["val_acc"] >= target)]
    rows = rows.dropna(subset=[x])
    return float(rows[x].iloc[0]) if not rows.empty else None


# ---------------------------------------------------------------- calibration

def calibration_rows(study: Study) -> list[dict[str, Any]]:
    """Per run: the temperature (fitted on val), ECE and NLL before and after it, on the study's images."""
    rows = []
    for run in study.runs:
        scaled = apply_temperature(run.probs, run.temperature)
        rows.append({"run_id": run.run_id, "approach": run.approach, "temperature": run.temperature,
                     "ece_before": metrics.expected_calibration_error(run.probs, study.labels),
                     "ece_after": metrics.expected_calibration_error(scaled, study.labels),
                     "nll_before": _nll(run.probs, study.labels), "nll_after": _nll(scaled, study.labels)})
    return rows


def reliability_tables(study: Study, run: StudyRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's reliability table before and after temperature scaling."""
    return (metrics.reliability_table(run.probs, study.labels),
            metrics.reliability_table(apply_temperature(run.probs, run.temperature), study.labels))


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    if not len(labels):
        return 0.0
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.log(picked).mean())


# ---------------------------------------------------------------- where they differ

def per_class_frame(study: Study) -> pd.DataFrame:
    """Recall per class (rows) and run (columns), with support."""
    table = {"support": [int((study.labels == k).sum()) for k in range(len(study.classes))]}
    for run in study.runs:
        confusion = metrics.confusion_matrix(study.labels, run.preds, n_classes=len(study.classes))
        table[run.run_id] = metrics.per_class_scores(confusion, class_names=study.classes)["recall"].to_numpy()
    return pd.DataFrame(table, index=pd.Index(list(study.classes), name="class"))


def disagreements(study: Study, run_a: str, run_b: str, *, k: int = 24) -> pd.DataFrame:
    """Images that run_a gets right and run_b wrong, most confident mistake first.

    Columns: file, true, a_pred, a_conf, b_pred, b_conf (each model's confidence in its answer)."""
    a, b = _run(study, run_a), _run(study, run_b)
    chosen = np.flatnonzero(study.correct(a) & ~study.correct(b))
    b_conf = b.probs[chosen, b.preds[chosen]]
    chosen = chosen[np.argsort(-b_conf, kind="stable")][:k]
    return pd.DataFrame({
        "file": [study.files[i] for i in chosen],
        "true": [study.classes[study.labels[i]] for i in chosen],
        "a_pred": [study.classes[a.preds[i]] for i in chosen],
        "a_conf": [float(a.probs[i, a.preds[i]]) for i in chosen],
        "b_pred": [study.classes[b.preds[i]] for i in chosen],
        "b_conf": [float(b.probs[i, b.preds[i]]) for i in chosen],
    }, columns=["file", "true", "a_pred", "a_conf", "b_pred", "b_conf"])


def _run(study: Study, run_id: str) -> StudyRun:
    for run in study.runs:
        if run.run_id == run_id:
            return run
    raise UserError(f"run {run_id} is not in this study")


# ---------------------------------------------------------------- robustness

def robustness_summary(rows_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Per run: clean accuracy, mean accuracy over the corruptions, and the drop between them."""
    summary = []
    for run_id, rows in rows_by_run.items():
        clean = [r["accuracy"] for r in rows if r["corruption"] == "clean"]
        corrupted = [r["accuracy"] for r in rows if r["corruption"] != "clean"]
        if not clean or not corrupted:
            continue
        mean = float(np.mean(corrupted))
        worst = min((r for r in rows if r["corruption"] != "clean"), key=lambda r: r["accuracy"])
        summary.append({"run_id": run_id, "clean": float(clean[0]), "corrupted_mean": mean,
                        "drop": float(clean[0]) - mean, "n": int(rows[0].get("n", 0)),
                        "worst": {"corruption": worst["corruption"], "severity": worst["severity"],
                                  "accuracy": worst["accuracy"]}})
    return summary


def sample_indices(study: Study, *, images: int, seed: int = 0) -> np.ndarray:
    """A fixed sample of the study's images (all when `images` covers them), in file order."""
    if images < 1:
        raise UserError(f"the corruption sample needs at least 1 image; got {images}")
    if images >= study.n:
        return np.arange(study.n)
    return np.sort(np.random.default_rng(seed).choice(study.n, size=images, replace=False))


def robustness_rows(study: Study, *, images: int = 500, seed: int = 0,
                    predictors: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each run's accuracy under every corruption and severity, on one fixed sample of the images.

    Loads each run's model (or takes `predictors`, by run id) and the sample at that run's own
    input size, decoded as its val split was; the corruptions are drawn from `seed`, so every
    run sees the same corrupted images."""
    from speedsign.corruptions import evaluate_corruptions
    from speedsign.datasets import inside
    from speedsign.predict import Predictor

    if study.data_dir is None or not Path(study.data_dir).is_dir():
        raise UserError(f"the data folder of these runs ({study.data_dir}) is gone: corruptions need its images")
    chosen = sample_indices(study, images=images, seed=seed)
    paths = [inside(study.data_dir, study.files[i]) for i in chosen]
    if any(path is None for path in paths):
        raise UserError("the stored predictions name files outside the run's data folder: refused")
    results: dict[str, list[dict[str, Any]]] = {}
    for run in study.runs:
        predictor = (predictors or {}).get(run.run_id) or Predictor(run.info.run_dir)
        tensors = load_images(predictor, paths)
        results[run.run_id] = evaluate_corruptions(predictor, tensors, study.labels[chosen], seed=seed)
    return results


def load_images(predictor: Any, paths: Sequence[Path]) -> Any:
    """The files as one uint8 batch at the predictor's stored size (ImageError on a bad file)."""
    import torch

    return torch.stack([predictor.load_tensor(path) for path in paths])


def measure_latency_ms(study: Study, *, predictors: Mapping[str, Any] | None = None) -> dict[str, float]:
    """p50 milliseconds from image bytes to probabilities, per run, on the study's first image."""
    from speedsign.compare import measure_latency
    from speedsign.datasets import inside
    from speedsign.predict import Predictor

    path = inside(study.data_dir, study.files[0]) if study.data_dir is not None and study.n else None
    if path is None or not path.is_file():
        raise UserError("no image to time: the runs' data folder is gone")
    image = path.read_bytes()
    return {run.run_id: measure_latency((predictors or {}).get(run.run_id) or Predictor(run.info.run_dir),
                                        image)["p50"] for run in study.runs}


# ---------------------------------------------------------------- the conclusion

def conclusion(study: Study, pairs: Sequence[Mapping[str, Any]], costs: Sequence[Mapping[str, Any]],
               calibration: Sequence[Mapping[str, Any]] = (),
               robustness: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Plain sentences from the numbers; a winner is named only where McNemar (Holm) rejects."""
    if len(study.runs) < 2:
        only = accuracy_rows(study)
        if not only:
            return ["No runs chosen."]
        row = only[0]
        return [f"Only one run ({row['run_id']}): {_pct(row['accuracy'])} on {study.n:,} {study.split} images "
                f"(95% CI {_pct(row['ci'][0])} to {_pct(row['ci'][1])}); choose another to compare."]
    names = {run.run_id: _name(run, study) for run in study.runs}
    seconds = {c["run_id"]: c["train_seconds"] for c in costs}
    sentences = [_winner_sentence(study, pairs, names)]
    for pair in pairs:
        sentences.append(_pair_sentence(pair, names, seconds))
    if calibration:
        sentences.append(_calibration_sentence(calibration, names))
    if robustness:
        sentences.append(_robustness_sentence(robustness, names))
    return sentences


def _winner_sentence(study: Study, pairs: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    accuracy = {row["run_id"]: row["accuracy"] for row in accuracy_rows(study)}
    best = max(accuracy, key=accuracy.get)
    beats_all = all(p["differs"] and ((p["a"] == best and p["diff"] > 0) or (p["b"] == best and p["diff"] < 0))
                    for p in pairs if best in (p["a"], p["b"]))
    n_text = f"on {study.n:,} {study.split} images"
    if beats_all:
        return (f"{names[best]} is the most accurate ({_pct(accuracy[best])} {n_text}): it beats every other run "
                f"with a McNemar test that rejects \"equally accurate\" after Holm correction.")
    tied = sorted({p["a"] if p["b"] == best else p["b"] for p in pairs
                   if best in (p["a"], p["b"]) and not p["differs"]}, key=lambda r: -accuracy[r])
    return (f"No run is clearly the most accurate {n_text}: {names[best]} scores highest "
            f"({_pct(accuracy[best])}), but its difference from {_join([names[r] for r in tied])} is within noise.")


def _pair_sentence(pair: Mapping[str, Any], names: Mapping[str, str], seconds: Mapping[str, float | None]) -> str:
    # Said from the more accurate side: "scratch is 2.5 points more accurate than finetune".
    flip = pair["diff"] < 0
    a, b = (pair["b"], pair["a"]) if flip else (pair["a"], pair["b"])
    diff = abs(pair["diff"]) * 100
    low, high = sorted(100 * (-v if flip else v) for v in pair["diff_ci"])
    stats = f"95% CI {low:+.1f} to {high:+.1f} points, McNemar {_p(pair['p_holm'])} after Holm correction"
    speed = _speed(seconds.get(a), seconds.get(b))
    if pair["differs"]:
        cost = {"slower": f" but trains {speed[1]}", "faster": f" and trains {speed[1]}",
                "same": " and trains about as fast", None: ""}[speed[0]]
        return f"{names[a]} is {diff:.1f} points more accurate than {names[b]} ({stats}){cost}."
    cost = {"slower": f"; {names[b]} trains {_inverse(seconds.get(a), seconds.get(b))}",
            "faster": f"; {names[a]} trains {speed[1]}", "same": "; both train about as fast", None: ""}[speed[0]]
    return (f"{names[a]} and {names[b]} are within noise of each other: {diff:.1f} points apart ({stats}), so "
            f"neither is shown to be more accurate{cost}.")


def _speed(seconds_a: float | None, seconds_b: float | None) -> tuple[str | None, str]:
    """How a's training time compares with b's: ("slower", "4.3x longer (...)"), "faster", "same" or None."""
    if not seconds_a or not seconds_b:
        return None, ""
    ratio = seconds_a / seconds_b
    times = f"({_duration(seconds_a)} against {_duration(seconds_b)})"
    if ratio >= SAME_SPEED_RATIO:
        return "slower", f"{ratio:.1f}x longer {times}"
    if ratio <= 1 / SAME_SPEED_RATIO:
        return "faster", f"{1 / ratio:.1f}x faster {times}"
    return "same", ""


def _inverse(seconds_a: float | None, seconds_b: float | None) -> str:
    return _speed(seconds_b, seconds_a)[1]


def _calibration_sentence(calibration: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    parts = [f"{names[c['run_id']]} {c['ece_before']:.3f} to {c['ece_after']:.3f} (T = {c['temperature']:.2f})"
             for c in calibration]
    return ("Calibration (expected calibration error before and after temperature scaling fitted on val): "
            + "; ".join(parts) + ". Shown confidences use the fitted temperature.")


def _robustness_sentence(robustness: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """Who keeps the most accuracy under corruption, and who degrades least from its own clean
    score (not always the same run: a weak model has less to lose)."""
    ranked = sorted(robustness, key=lambda r: -r["corrupted_mean"])
    best = ranked[0]
    text = (f"Under the corruptions ({best['n']:,} images each), {names[best['run_id']]} keeps the most accuracy: "
            f"{_pct(best['corrupted_mean'])} on average")
    if len(ranked) > 1:
        runner = ranked[1]
        gap = 100 * (best["corrupted_mean"] - runner["corrupted_mean"])
        if gap < ROBUST_SAME_POINTS:
            text += (f", but {names[runner['run_id']]} is within {ROBUST_SAME_POINTS:.0f} point "
                     f"({_pct(runner['corrupted_mean'])}): about equally robust")
        else:
            text += f", {gap:.1f} points ahead of {names[runner['run_id']]}"
        steady = min(robustness, key=lambda r: r["drop"])
        drops = sorted(100 * r["drop"] for r in robustness)
        if drops[1] - drops[0] < ROBUST_SAME_POINTS:
            text += "; they lose about as much from their clean accuracy"
        else:
            text += (f"; {names[steady['run_id']]} degrades least, {100 * steady['drop']:.1f} points below its clean "
                     f"{_pct(steady['clean'])}")
    else:
        text += f", {100 * best['drop']:.1f} points below its clean {_pct(best['clean'])}"
    return text + f"; hardest for {names[best['run_id']]}: {best['worst']['corruption']} at severity " \
                  f"{best['worst']['severity']}."


def _name(run: StudyRun, study: Study) -> str:
    """The approach when it names one run in the study, else the run id."""
    same = [r for r in study.runs if r.approach == run.approach]
    return run.approach if len(same) == 1 else run.run_id


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if not words:
        return "the others"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.0f} min"


# ---------------------------------------------------------------- everything, as plain values

@dataclass(frozen=True)
class StudyResult:
    """Every number of a study: what the page draws, the HTML report holds and --json prints."""

    study: Study
    accuracy: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    cost: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    curves: pd.DataFrame
    per_class: pd.DataFrame
    robustness: dict[str, list[dict[str, Any]]]
    robustness_summary: list[dict[str, Any]]
    conclusion: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.study.split, "n": self.study.n, "data_fingerprint": self.study.data_fingerprint,
            "classes": list(self.study.classes), "runs": self.accuracy, "pairs": self.pairs, "cost": self.cost,
            "calibration": self.calibration,
            "time_to_accuracy": _records(self.curves),
            "per_class_recall": {str(k): {c: _plain(v) for c, v in row.items()}
                                 for k, row in self.per_class.to_dict(orient="index").items()},
            "robustness": self.robustness, "robustness_summary": self.robustness_summary,
            "conclusion": self.conclusion,
        }


def build_study(study: Study, *, latency_ms: Mapping[str, float] | None = None,
                robustness: Mapping[str, list[dict[str, Any]]] | None = None,
                n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> StudyResult:
    """All of the study's numbers and its conclusion."""
    pairs = pair_rows(study, n_boot=n_boot, seed=seed)
    cost = cost_rows(study, latency_ms=latency_ms)
    calibration = calibration_rows(study)
    robust = dict(robustness or {})
    summary = robustness_summary(robust)
    return StudyResult(study=study, accuracy=accuracy_rows(study), pairs=pairs, cost=cost, calibration=calibration,
                       curves=time_to_accuracy_frame(study), per_class=per_class_frame(study), robustness=robust,
                       robustness_summary=summary,
                       conclusion=conclusion(study, pairs, cost, calibration, summary))


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    return value
