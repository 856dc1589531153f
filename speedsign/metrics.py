"""Numbers first: confusion matrix, per-class scores, intervals, calibration, top losses, and
the paired tests between two models scored on the same images (McNemar, bootstrap, Holm).

Plain numpy arrays in, arrays and DataFrames out (no torch, no figures); `plots.py` draws
them and `evaluation_report` turns them into the JSON the command line prints.
Undefined ratios (a class never predicted, an empty split) are 0, never NaN, so every
table serialises to JSON and sorts predictably. The one exception is the reliability
table, where an empty bin has no accuracy to draw (NaN, with count 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

Z_95: float = 1.959964  # two-sided 95% normal quantile


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts as an int64 (n_classes, n_classes) matrix indexed [true, predicted]."""
    labels = _as_class_indices("labels", labels, n_classes=n_classes)
    preds = _as_class_indices("preds", preds, n_classes=n_classes)
    if labels.shape != preds.shape:
        raise ValueError(f"labels and preds differ in length: {labels.size} vs {preds.size}")
    flat = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes)
    return flat.astype(np.int64).reshape(n_classes, n_classes)


def per_class_scores(confusion: np.ndarray, *, class_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (index "class", in class order)."""
    confusion = _as_confusion(confusion, class_names=class_names)
    true_positives = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)},
        index=pd.Index(list(class_names), name="class"),
    )


def wilson_interval(correct: int, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion correct/n; (0.0, 1.0) when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0% or
    100%: 19/19 correct gives a lower bound near 0.83, not 1.0.
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n; got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # The exact ends at 0 and n, not 1e-17 off them from rounding.
    low = 0.0 if correct == 0 else max(0.0, center - half_width)
    high = 1.0 if correct == n else min(1.0, center + half_width)
    return low, high


# ---------------------------------------------------------------- two models, the same images

def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test of two models' per-image correctness on the same images.

    b: images a gets right and b wrong; c: a wrong and b right. Under "equally accurate" the
    b + c discordant images split as Binomial(b + c, 1/2); p is the exact two-sided p-value,
    2 * P(X <= min(b, c)) capped at 1 (1.0 when there is no discordant image).
    """
    a, b_ = _as_paired_correct(correct_a, correct_b)
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    return {"b": b, "c": c, "p": binomial_two_sided_p(min(b, c), b + c)}


def binomial_two_sided_p(k: int, n: int) -> float:
    """2 * P(X <= k) for X ~ Binomial(n, 1/2), capped at 1; exact, in log space for large n."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
                 for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def paired_bootstrap_ci(correct_a: np.ndarray, correct_b: np.ndarray, *, n_boot: int = 10_000,
                        seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy_a - accuracy_b, resampling images (pairs kept).

    Each image contributes +1 (only a right), -1 (only b right) or 0, so a resample of n images
    is a multinomial draw of those three counts: the same distribution as resampling indices,
    without an (n_boot, n) index matrix. Deterministic for a seed.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1; got {n_boot}")
    a, b = _as_paired_correct(correct_a, correct_b)
    n = int(a.size)
    if n == 0:
        return 0.0, 0.0
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    shares = np.array([only_a, only_b, n - only_a - only_b], dtype=np.float64) / n
    counts = np.random.default_rng(seed).multinomial(n, shares, size=n_boot)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = (1.0 - level) / 2
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return float(low), float(high)


def holm_correction(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order (step-down, monotone, capped at 1)."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1 or (p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1)):
        raise ValueError("p-values must be a list of numbers in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    result = np.empty(m, dtype=np.float64)
    result[order] = adjusted
    return [float(v) for v in result]


def _as_paired_correct(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a), np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D correctness arrays of one length; got {a.shape} and {b.shape}")
    return a.astype(bool), b.astype(bool)


def most_confused(
    confusion: np.ndarray, *, class_names: Sequence[str], min_count: int = 1
) -> pd.DataFrame:
    """Off-diagonal cells with at least `min_count` images, most frequent first.

    Columns true, predicted, count; ties keep class order (row, then column).
    """
    confusion = _as_confusion(confusion, class_names=class_names)
    rows, cols = np.nonzero(~np.eye(len(class_names), dtype=bool) & (confusion >= min_count))
    counts = confusion[rows, cols]
    order = np.argsort(-counts, kind="stable")
    names = np.asarray(list(class_names), dtype=object)
    return pd.DataFrame({
        "true": names[rows[order]].tolist(),
        "predicted": names[cols[order]].tolist(),
        "count": counts[order].astype(np.int64),
    })


def top_losses(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    files: Sequence[str],
    class_names: Sequence[str],
    k: int = 16,
) -> pd.DataFrame:
    """The k images the model got most wrong: highest -log p(true class) first.

    Columns file, true, predicted, confidence (of the prediction), prob_true, loss.
    """
    probs, labels = _as_probs_and_labels(probs, labels, n_classes=len(class_names))
    if len(files) != len(labels):
        raise ValueError(f"files has {len(files)} entries for {len(labels)} predictions")
    if k < 0:
        raise ValueError(f"k must be >= 0; got {k}")
    rows = np.arange(len(labels))
    preds = probs.argmax(axis=1) if len(labels) else np.zeros(0, dtype=np.int64)
    prob_true = probs[rows, labels]
    # A probability of exactly 0 would give an infinite loss (and break JSON); the smallest
    # positive float caps it near 708 nats, still far above any real mistake.
    loss = -np.log(np.maximum(prob_true.astype(np.float64), np.finfo(np.float64).tiny))
    order = np.argsort(-loss, kind="stable")[:k]
    names = np.asarray(list(class_names), dtype=object)
    return pd.DataFrame({
        "file": [str(files[i]) for i in order],
        "true": names[labels[order]].tolist(),
        "predicted": names[preds[order]].tolist(),
        "confidence": probs[order, preds[order]].astype(np.float64),
        "prob_true": prob_true[order].astype(np.float64),
        "loss": loss[order],
    })


def reliability_table(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> pd.DataFrame:
    """Mean confidence and accuracy per confidence bin (equal width, right-closed).

    Columns bin_low, bin_high, confidence, accuracy, count; every bin is listed, and an empty
    one has count 0 and NaN confidence and accuracy (nothing to draw, rather than a fake 0).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    probs, labels = _as_probs_and_labels(probs, labels, n_classes=None)
    confidence, correct = _confidence_and_correct(probs, labels)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # (low, high] bins as in Guo et al. 2017; a confidence of exactly 0 joins the first bin.
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return pd.DataFrame({
        "bin_low": edges[:-1],
        "bin_high": edges[1:],
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "count": count.astype(np.int64),
    })


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Count-weighted mean |accuracy - confidence| over the bins; 0.0 for no predictions."""
    table = reliability_table(probs, labels, n_bins=n_bins)
    total = int(table["count"].sum())
    if total == 0:
        return 0.0
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((gaps * filled["count"]).sum() / total)


def evaluation_report(
    probs: np.ndarray, labels: np.ndarray, *, class_names: Sequence[str]
) -> dict[str, Any]:
    """Everything `speedsign eval` prints, as plain JSON-ready Python values.

    Keys: accuracy, n, accuracy_ci95, ece, per_class, confusion, classes, most_confused
    (the 10 largest off-diagonal cells).
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique; got {names}")
    probs, labels = _as_probs_and_labels(probs, labels, n_classes=len(names))
    n = int(labels.size)
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    confusion = confusion_matrix(labels, preds, n_classes=len(names))
    correct = int(np.trace(confusion))
    low, high = wilson_interval(correct, n)
    scores = per_class_scores(confusion, class_names=names)
    confused = most_confused(confusion, class_names=names).head(10)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "accuracy_ci95": [low, high],
        "ece": expected_calibration_error(probs, labels),
        "per_class": {
            name: {
                "precision": float(precision),
                "recall": float(recall),
                "f1": float(f1),
                "support": int(support),
            }
            for name, precision, recall, f1, support in zip(
                names, scores["precision"], scores["recall"], scores["f1"], scores["support"], strict=True
            )
        },
        "confusion": confusion.tolist(),
        "classes": names,
        "most_confused": [
            {"true": str(true), "predicted": str(predicted), "count": int(count)}
            for true, predicted, count in zip(
                confused["true"], confused["predicted"], confused["count"], strict=True
            )
        ],
    }


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if labels.size == 0:
        return np.zeros(0), np.zeros(0)
    preds = probs.argmax(axis=1)
    confidence = probs.max(axis=1).astype(np.float64)
    return confidence, (preds == labels).astype(np.float64)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _as_class_indices(name: str, values: np.ndarray, *, n_classes: int | None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold class indices (integers); got {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0 or (n_classes is not None and array.max() >= n_classes):
        raise ValueError(f"{name} must be class indices in [0, {n_classes}); "
                         f"got values from {array.min()} to {array.max()}")
    return array


def _as_probs_and_labels(
    probs: np.ndarray, labels: np.ndarray, *, n_classes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels_array = np.asarray(labels)
    if probs.size == 0 and labels_array.size == 0:
        # An empty split may come as shape (0,) from np.concatenate of nothing.
        width = n_classes if n_classes is not None else (probs.shape[-1] if probs.ndim == 2 else 0)
        return np.zeros((0, width)), np.zeros(0, dtype=np.int64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n_images, n_classes); got shape {probs.shape}")
    if n_classes is not None and probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns for {n_classes} classes")
    labels = _as_class_indices("labels", labels_array, n_classes=probs.shape[1])
    if labels.size != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows of probs for {labels.size} labels")
    return probs, labels


def _as_confusion(confusion: np.ndarray, *, class_names: Sequence[str]) -> np.ndarray:
    confusion = np.asarray(confusion)
    size = len(class_names)
    if confusion.shape != (size, size):
        raise ValueError(f"confusion must be {size}x{size} for {size} classes; "
                         f"got shape {confusion.shape}")
    return confusion.astype(np.int64)
