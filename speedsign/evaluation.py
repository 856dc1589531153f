"""A run's evaluation: its saved val or test predictions (or a fresh test split), as tables and mistakes.

`read_predictions` is the one reader of a run's stored predictions (the Evaluation page and
`compare` both use it); the numbers come from `metrics.evaluation_report`, computed in one
place. Stored predictions are raw (temperature 1); `calibrated` gives the same evaluation
with the run's fitted temperature applied, for the before/after of calibration. Everything
returns plain values and raises `UserError` for a damaged or missing file; nothing imports
Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from speedsign import metrics
from speedsign.calibration import apply_temperature
from speedsign.data import DatasetIndex, scan_dataset
from speedsign.errors import UserError
from speedsign.run_views import run_data_dir
from speedsign.runs import RunInfo

SCORE_COLUMNS: tuple[str, ...] = ("precision", "recall", "f1", "support")
CONFUSED_COLUMNS: tuple[str, ...] = ("true", "predicted", "count")


# ---------------------------------------------------------------- reading predictions

@dataclass(frozen=True)
class Predictions:
    """What a run stored of its best model on val: probabilities, labels, files, class names."""

    probs: np.ndarray  # float64 (n, classes)
    labels: np.ndarray  # int64 (n,), indices into classes
    files: tuple[str, ...]  # relative to the run's data folder
    classes: tuple[str, ...]

    @property
    def correct(self) -> int:
        return int((self.probs.argmax(axis=1) == self.labels).sum()) if len(self.labels) else 0


def read_predictions(path: Path) -> Predictions:
    """A run's val predictions file, checked for shape and range before use (UserError if not)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as saved:
            probs, labels = np.asarray(saved["probs"], dtype=np.float64), np.asarray(saved["labels"])
            files = tuple(str(f) for f in saved["files"])
            classes = tuple(str(c) for c in saved["classes"])
    except FileNotFoundError:
        raise UserError(f"{path.name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path.name} is damaged ({error})") from None
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)) or len(files) != len(labels):
        raise UserError(f"{path.name} is inconsistent (probs {probs.shape}, {len(labels)} labels, "
                        f"{len(files)} files, {len(classes)} classes)")
    if labels.ndim != 1 or (len(labels) and not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"{path.name} holds labels that are not class indices")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"{path.name} has labels outside its classes")
    return Predictions(probs, labels.astype(np.int64), files, classes)


# ---------------------------------------------------------------- one run on one split

@dataclass(frozen=True)
class Evaluation:
    """A run's predictions on one split and their report (metrics.evaluation_report)."""

    run_id: str
    split: str
    classes: tuple[str, ...]
    probs: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]  # relative to data_dir
    data_dir: Path | None
    report: dict[str, Any]


def report_of(probs: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """metrics.evaluation_report, with its refusals (duplicate class names) as UserError."""
    try:
        return metrics.evaluation_report(probs, labels, class_names=classes)
    except ValueError as error:
        raise UserError(f"cannot evaluate: {error}") from None


def val_evaluation(info: RunInfo) -> Evaluation:
    """The run's saved val predictions, checked, with their report."""
    return stored_evaluation(info, "val", info.folder.predictions,
                             missing="it has not finished, or its folder was changed")


def test_evaluation(info: RunInfo) -> Evaluation:
    """The run's stored test predictions (written by the job when its data had test/), checked."""
    return stored_evaluation(info, "test", info.folder.predictions_test,
                             missing="its data had no test/, or it was trained before test splits were stored")


def stored_evaluation(info: RunInfo, split: str, path: Path, *, missing: str) -> Evaluation:
    """A predictions file of the run, checked, with its report; UserError saying why when missing."""
    if not path.is_file():
        raise UserError(f"run {info.run_id} has no {path.name} ({missing})")
    try:
        saved = read_predictions(path)
    except UserError as error:
        raise UserError(f"run {info.run_id}: {error}") from None
    return Evaluation(info.run_id, split, saved.classes, saved.probs, saved.labels, saved.files,
                      run_data_dir(info), report_of(saved.probs, saved.labels, saved.classes))


def calibrated(evaluation: Evaluation, temperature: float) -> Evaluation:
    """The same predictions with the logits divided by `temperature` (the run's fitted one,
    `calibration.read_temperature`), and their report: accuracy unchanged, ECE and NLL not."""
    probs = apply_temperature(evaluation.probs, temperature)
    return Evaluation(evaluation.run_id, evaluation.split, evaluation.classes, probs, evaluation.labels,
                      evaluation.files, evaluation.data_dir, report_of(probs, evaluation.labels, evaluation.classes))


def split_choices(info: RunInfo) -> list[str]:
    """val always; test when the run stored test predictions or its data folder has test/."""
    if info.folder.predictions_test.is_file():
        return ["val", "test"]
    data_dir = run_data_dir(info)
    return ["val", "test"] if data_dir is not None and (data_dir / "test").is_dir() else ["val"]


def index_for_test(info: RunInfo) -> DatasetIndex:
    """The run's data folder, scanned for its test split; UserError when it is gone."""
    data_dir = run_data_dir(info)
    if data_dir is None or not data_dir.is_dir():
        raise UserError(f"the data folder of run {info.run_id} ({data_dir}) is gone: cannot evaluate its test split")
    return scan_dataset(data_dir, require_train=False)


def evaluate_test(info: RunInfo, predictor: Any) -> Evaluation:
    """The run's test predictions: the stored ones when the job wrote them (`test_evaluation`),
    else, for an older run, its best model on the data folder's test split (a forward over every
    test image). Raw probabilities either way, as stored for val."""
    from speedsign.predict import evaluate_split

    if info.folder.predictions_test.is_file():
        return test_evaluation(info)
    index = index_for_test(info)
    report, probs, labels = evaluate_split(predictor, index.root, split="test", calibrated=False)
    return Evaluation(info.run_id, str(report.get("split", "test")), tuple(report["classes"]),
                      np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64),
                      tuple(report.get("files", ())), run_data_dir(info), report)


# ---------------------------------------------------------------- tables

@dataclass(frozen=True)
class EvaluationTables:
    """What the Evaluation page draws of one Evaluation."""

    accuracy: float
    n: int
    interval: tuple[float, float]
    ece: float
    confusion: np.ndarray
    scores: pd.DataFrame  # precision, recall, f1, support per class (index "class")
    confused: pd.DataFrame  # true, predicted, count: the largest off-diagonal cells
    reliability: pd.DataFrame


def evaluation_tables(evaluation: Evaluation) -> EvaluationTables:
    """The report's numbers as arrays and DataFrames, plus the reliability table."""
    report = evaluation.report
    low, high = report["accuracy_ci95"]
    return EvaluationTables(
        accuracy=float(report["accuracy"]), n=int(report["n"]), interval=(float(low), float(high)),
        ece=float(report["ece"]), confusion=np.asarray(report["confusion"], dtype=np.int64),
        scores=scores_frame(report["per_class"], evaluation.classes),
        confused=pd.DataFrame(report["most_confused"], columns=list(CONFUSED_COLUMNS)),
        reliability=metrics.reliability_table(evaluation.probs, evaluation.labels),
    )


def scores_frame(per_class: Mapping[str, Mapping[str, float]], classes: tuple[str, ...]) -> pd.DataFrame:
    """The report's per-class scores as a table in class order (index "class")."""
    frame = pd.DataFrame([per_class[name] for name in classes], index=pd.Index(list(classes), name="class"),
                         columns=list(SCORE_COLUMNS))
    return frame.astype({"support": np.int64})


def misclassified(evaluation: Evaluation, *, k: int = 24) -> pd.DataFrame:
    """The k worst mistakes (wrong predictions only), worst first: file, true, predicted, confidence."""
    table = metrics.top_losses(evaluation.probs, evaluation.labels, files=evaluation.files,
                               class_names=evaluation.classes, k=len(evaluation.labels))
    return table[table["true"] != table["predicted"]].head(k).reset_index(drop=True)
