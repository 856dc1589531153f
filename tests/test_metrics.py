"""Metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from speedsign.metrics import (
    confusion_matrix,
    evaluation_report,
    expected_calibration_error,
    most_confused,
    per_class_scores,
    reliability_table,
    top_losses,
    wilson_interval,
)

NAMES = ["20", "30", "50"]


def one_hot_probs(preds, n_classes, confidence=1.0):
    probs = np.full((len(preds), n_classes), (1 - confidence) / max(n_classes - 1, 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


# --- confusion and per-class scores ------------------------------------------------------------

def test_confusion_matrix_counts_true_by_predicted():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, preds, n_classes=3)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_rejects_bad_indices():
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), n_classes=3)
    with pytest.raises(ValueError, match="length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), n_classes=3)
    assert confusion_matrix(np.array([]), np.array([]), n_classes=2).tolist() == [[0, 0], [0, 0]]


def test_per_class_scores_known_values():
    # rows true, columns predicted
    confusion = np.array([[5, 2, 0],
                          [1, 3, 0],
                          [0, 0, 0]])   # class "50" has no images and is never predicted
    scores = per_class_scores(confusion, class_names=NAMES)
    assert list(scores.index) == NAMES and scores.index.name == "class"
    assert list(scores.columns) == ["precision", "recall", "f1", "support"]
    assert scores.loc["20", "precision"] == pytest.approx(5 / 6)
    assert scores.loc["20", "recall"] == pytest.approx(5 / 7)
    p, r = 5 / 6, 5 / 7
    assert scores.loc["20", "f1"] == pytest.approx(2 * p * r / (p + r))
    assert scores.loc["30", "precision"] == pytest.approx(3 / 5)
    assert scores.loc["30", "recall"] == pytest.approx(3 / 4)
    assert scores.loc["30", "f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert scores.loc["50"].tolist() == [0.0, 0.0, 0.0, 0]  # zero support: 0, not NaN
    assert scores["support"].tolist() == [7, 4, 0]
    assert not scores.isna().any().any()


def test_per_class_scores_predicted_but_absent_class():
    confusion = np.array([[3, 1], [0, 0]])
    scores = per_class_scores(confusion, class_names=["a", "b"])
    assert scores.loc["b"].tolist() == [0.0, 0.0, 0.0, 0]
    assert scores.loc["a", "precision"] == 1.0 and scores.loc["a", "recall"] == 0.75


def test_per_class_scores_checks_shape():
    with pytest.raises(ValueError, match="3x3"):
        per_class_scores(np.zeros((2, 2)), class_names=NAMES)


# --- intervals ---------------------------------------------------------------------------------

def test_wilson_perfect_score_on_19_images():
    low, high = wilson_interval(19, 19)
    assert low == pytest.approx(0.8318, abs=5e-4)
    assert high == 1.0


def test_wilson_known_values():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=5e-4)
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=5e-4) and high == pytest.approx(0.5962, abs=5e-4)
    assert (1 - high) == pytest.approx(low)  # symmetric at p = 0.5


def test_wilson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    with pytest.raises(ValueError):
        wilson_interval(-1, 3)


# --- most confused and top losses --------------------------------------------------------------

def test_most_confused_sorted_and_filtered():
    confusion = np.array([[9, 1, 4],
                          [4, 8, 0],
                          [2, 0, 7]])
    table = most_confused(confusion, class_names=NAMES)
    assert list(table.columns) == ["true", "predicted", "count"]
    assert table.values.tolist() == [["20", "50", 4], ["30", "20", 4], ["50", "20", 2],
                                     ["20", "30", 1]]
    assert len(most_confused(confusion, class_names=NAMES, min_count=3)) == 2
    assert most_confused(np.eye(3, dtype=int), class_names=NAMES).empty


def test_top_losses():
    probs = np.array([[0.9, 0.1, 0.0],
                      [0.2, 0.7, 0.1],
                      [0.6, 0.3, 0.1],
                      [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 2, 0])
    files = ["a.png", "b.png", "c.png", "d.png"]
    table = top_losses(probs, labels, files=files, class_names=NAMES, k=3)
    assert list(table.columns) == ["file", "true", "predicted", "confidence", "prob_true", "loss"]
    assert table["file"].tolist() == ["d.png", "c.png", "b.png"]
    assert table.loc[1].tolist()[:3] == ["c.png", "50", "20"]
    assert table.loc[1, "confidence"] == pytest.approx(0.6)
    assert table.loc[1, "prob_true"] == pytest.approx(0.1)
    assert table.loc[1, "loss"] == pytest.approx(-math.log(0.1))
    assert math.isfinite(table.loc[0, "loss"]) and table.loc[0, "loss"] > 700  # p_true = 0
    assert len(top_losses(probs, labels, files=files, class_names=NAMES)) == 4
    with pytest.raises(ValueError, match="files"):
        top_losses(probs, labels, files=files[:2], class_names=NAMES)


# --- calibration -------------------------------------------------------------------------------

def test_reliability_table_bins_and_empty_bins():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    table = reliability_table(probs, labels, n_bins=5)
    assert list(table.columns) == ["bin_low", "bin_high", "confidence", "accuracy", "count"]
    assert table["count"].tolist() == [0, 0, 1, 1, 2]  # 0.6 -> (0.4, 0.6], 0.65 -> (0.6, 0.8]
    assert table["bin_low"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert table.loc[4, "confidence"] == pytest.approx(0.95)
    assert table.loc[4, "accuracy"] == pytest.approx(0.5)
    assert table.loc[[0, 1], "accuracy"].isna().all()


def test_ece_perfectly_calibrated_is_zero():
    # 10 predictions at 0.8 confidence, 8 right: accuracy equals confidence in that bin.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_overconfident():
    # Always 99% sure, right half the time: ECE = |0.5 - 0.99| = 0.49.
    probs = np.tile([0.99, 0.01], (10, 1))
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.49)
    mixed = np.vstack([np.tile([0.8, 0.2], (10, 1)), np.tile([0.99, 0.01], (10, 1))])
    mixed_labels = np.array([0] * 8 + [1] * 2 + [0, 1] * 5)
    assert expected_calibration_error(mixed, mixed_labels) == pytest.approx(0.245)


def test_ece_empty():
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 0.0


# --- the report (command-line contract) --------------------------------------------------------

def test_evaluation_report_keys_types_and_values():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    report = evaluation_report(one_hot_probs(preds, 3, 0.9), labels, class_names=NAMES)
    assert set(report) == {"accuracy", "n", "accuracy_ci95", "ece", "per_class", "confusion",
                           "classes", "most_confused"}
    assert json.loads(json.dumps(report)) == report  # plain JSON types only
    assert report["accuracy"] == pytest.approx(4 / 6) and report["n"] == 6
    assert report["accuracy_ci95"] == pytest.approx(list(wilson_interval(4, 6)))
    assert report["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert report["classes"] == NAMES
    assert report["per_class"]["30"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert set(report["per_class"]["20"]) == {"precision", "recall", "f1", "support"}
    assert isinstance(report["per_class"]["50"]["support"], int)
    assert report["most_confused"] == [{"true": "20", "predicted": "30", "count": 1},
                                       {"true": "30", "predicted": "20", "count": 1}]
    assert report["ece"] == pytest.approx(abs(0.9 - 4 / 6))


def test_evaluation_report_perfect_on_19():
    labels = np.arange(19) % 3
    report = evaluation_report(one_hot_probs(labels, 3), labels, class_names=NAMES)
    assert report["accuracy"] == 1.0
    assert report["accuracy_ci95"][0] == pytest.approx(0.832, abs=1e-3)
    assert report["most_confused"] == []


def test_evaluation_report_caps_most_confused_at_ten():
    names = [str(i) for i in range(6)]
    labels = np.repeat(np.arange(6), 5)
    preds = (labels + np.tile(np.arange(5), 6) + 1) % 6  # every off-diagonal cell is hit
    report = evaluation_report(one_hot_probs(preds, 6), labels, class_names=names)
    assert len(report["most_confused"]) == 10


@pytest.mark.parametrize("probs", [np.zeros((0, 3)), np.zeros(0)])
def test_evaluation_report_empty(probs):
    report = evaluation_report(probs, np.zeros(0, dtype=int), class_names=NAMES)
    assert report["accuracy"] == 0.0 and report["n"] == 0
    assert report["accuracy_ci95"] == [0.0, 1.0]
    assert report["ece"] == 0.0
    assert report["confusion"] == [[0] * 3] * 3
    assert report["per_class"]["20"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    json.dumps(report)


def test_evaluation_report_checks_inputs():
    with pytest.raises(ValueError, match="columns"):
        evaluation_report(np.ones((2, 2)) / 2, np.array([0, 1]), class_names=NAMES)
    with pytest.raises(ValueError, match="unique"):
        evaluation_report(np.ones((2, 2)) / 2, np.array([0, 1]), class_names=["a", "a"])
    with pytest.raises(ValueError, match="labels"):
        evaluation_report(np.ones((2, 3)) / 3, np.array([0, 1, 2]), class_names=NAMES)


def test_scores_frame_is_a_dataframe():
    assert isinstance(per_class_scores(np.eye(3, dtype=int), class_names=NAMES), pd.DataFrame)
