"""A run's evaluation: the one reader of its val predictions, the report's tables, mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speedsign import evaluation, metrics
from speedsign.errors import UserError
from speedsign.runs import RunDir, inspect_run

CLASSES = ("speed_30", "speed_50", "speed_80")


def save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays() -> dict[str, object]:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    return {"probs": probs, "labels": np.array([0, 1, 1, 2]), "files": np.array(["a", "b", "c", "d"]),
            "classes": np.array(CLASSES)}


def test_read_predictions_checks_what_it_reads(tmp_path: Path) -> None:
    saved = evaluation.read_predictions(save(tmp_path / RunDir.PREDICTIONS, **good_arrays()))
    assert saved.classes == CLASSES and saved.files == ("a", "b", "c", "d")
    assert saved.labels.dtype == np.int64 and saved.correct == 3
    with pytest.raises(UserError, match="missing"):
        evaluation.read_predictions(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="damaged"):
        evaluation.read_predictions(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="damaged"):
        evaluation.read_predictions(save(tmp_path / "nofiles.npz", probs=np.zeros((1, 3)), labels=np.zeros(1)))
    arrays = {**good_arrays(), "files": np.array(["a"])}
    with pytest.raises(UserError, match="inconsistent"):
        evaluation.read_predictions(save(tmp_path / "short.npz", **arrays))
    arrays = {**good_arrays(), "labels": np.array([0, 1, 1, 7])}
    with pytest.raises(UserError, match="outside its classes"):
        evaluation.read_predictions(save(tmp_path / "range.npz", **arrays))
    arrays = {**good_arrays(), "labels": np.array([0.5, 1, 1, 2])}
    with pytest.raises(UserError, match="class indices"):
        evaluation.read_predictions(save(tmp_path / "floats.npz", **arrays))


def test_tables_are_the_metrics_report(runs_with_results: dict[str, Path]) -> None:
    info = inspect_run(runs_with_results["scratch"])
    result = evaluation.val_evaluation(info)
    tables = evaluation.evaluation_tables(result)
    preds = result.probs.argmax(axis=1)
    confusion = metrics.confusion_matrix(result.labels, preds, n_classes=len(result.classes))
    assert np.array_equal(tables.confusion, confusion)
    assert tables.n == len(result.labels) and tables.accuracy == pytest.approx(np.trace(confusion) / tables.n)
    assert tables.interval == pytest.approx(metrics.wilson_interval(int(np.trace(confusion)), tables.n))
    scores = metrics.per_class_scores(confusion, class_names=result.classes)
    assert tables.scores.equals(scores)
    assert tables.confused.equals(metrics.most_confused(confusion, class_names=result.classes).head(10)
                                  .reset_index(drop=True)[list(evaluation.CONFUSED_COLUMNS)])
    assert tables.ece == pytest.approx(metrics.expected_calibration_error(result.probs, result.labels))
    assert result.data_dir is not None and result.data_dir.is_dir()
    assert evaluation.split_choices(info) == ["val"]  # the synthetic set has no test/


def test_misclassified_lists_only_mistakes_worst_first(tmp_path: Path) -> None:
    saved = evaluation.read_predictions(save(tmp_path / RunDir.PREDICTIONS, **good_arrays()))
    result = evaluation.Evaluation("run", "val", saved.classes, saved.probs, saved.labels, saved.files, None,
                                   evaluation.report_of(saved.probs, saved.labels, saved.classes))
    wrong = evaluation.misclassified(result)
    assert wrong["file"].tolist() == ["c"] and wrong.iloc[0]["predicted"] == "speed_30"
    assert evaluation.evaluation_tables(result).accuracy == 0.75


def test_a_run_without_predictions_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "scratch-20990101-nothing"
    run_dir.mkdir()
    info = inspect_run(run_dir)
    with pytest.raises(UserError, match=RunDir.PREDICTIONS.replace(".", r"\.")):
        evaluation.val_evaluation(info)
    with pytest.raises(UserError, match="is gone"):
        evaluation.index_for_test(info)


def test_duplicate_class_names_are_a_user_error(tmp_path: Path) -> None:
    arrays = {**good_arrays(), "classes": np.array(["x", "x", "y"])}
    saved = evaluation.read_predictions(save(tmp_path / "dup.npz", **arrays))
    with pytest.raises(UserError, match="unique"):
        evaluation.report_of(saved.probs, saved.labels, saved.classes)
