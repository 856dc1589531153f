"""Temperature scaling: one number, fitted on a run's val predictions, that makes its
confidences mean what they say.

A run stores softmax probabilities (predictions_val.npz), not logits. log(p) equals the
logits up to a per-row constant, and softmax is blind to such a constant, so
softmax(log(p) / T) is exactly softmax(logits / T): the temperature can be fitted and
applied from the stored probabilities alone (Guo et al. 2017, "On calibration of modern
neural networks"). T > 1 softens an over-confident model, T < 1 sharpens an under-confident
one (label smoothing makes ours so). The argmax, and so the accuracy, never changes.

`calibrate_run` fits on the run's val predictions and writes calibration.json; the
Predictor reads it back with `read_temperature`, which never trusts the file: a missing,
damaged or out-of-range one means T = 1, and `read_calibration` says what was wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from speedsign import metrics
from speedsign.runs import RunDir
from speedsign.storage import atomic_write_json

# The temperatures a fit may choose; a stored one outside them is not trusted.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
CALIBRATION_FORMAT = 1
# A probability that underflowed to 0 reads as the smallest float32 (the stored dtype): its
# logit was at least this far below the top one, and it stays negligible at any temperature.
PROB_FLOOR = float(np.finfo(np.float32).smallest_subnormal)
# calibration.json is a few hundred bytes; a larger file is not read at all.
MAX_FILE_BYTES = 64 * 1024
_GRID_POINTS = 81  # log-spaced temperatures searched before the golden-section refinement
_GOLDEN_STEPS = 60  # shrinks the bracket by 0.618^60: far below any meaningful digit


# ---------------------------------------------------------------- the maths

def _checked(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"need probs (n, classes) and labels (n,); got {probs.shape} and {labels.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= probs.shape[1]):
        raise ValueError("labels must be class indices into the columns of probs")
    if probs.size and not np.isfinite(probs).all():
        raise ValueError("probs must be finite")
    return probs, labels.astype(np.int64)


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a temperature must be a positive number; got {temperature!r}")
    return value


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T) per row: what the model's softmax would be with its logits divided by T."""
    temperature = _check_temperature(temperature)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"need probs (n, classes); got {probs.shape}")
    if temperature == 1.0 or probs.size == 0:
        return probs.copy()  # the raw probabilities, not a clipped round trip of them
    scaled = np.log(np.maximum(probs, PROB_FLOOR)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (nats); 0.0 for no predictions."""
    probs, labels = _checked(probs, labels)
    if not labels.size:
        return 0.0
    true = probs[np.arange(labels.size), labels]
    return float(-np.log(np.maximum(true, PROB_FLOOR)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] with the lowest NLL on (probs, labels).

    NLL is convex in 1/T, hence unimodal in log T: a log-spaced grid finds the basin and a
    golden-section search refines it. Deterministic, numpy only. 1.0 when there is nothing
    to fit: no predictions, or no mistake (or no right answer) among them, where any sharper
    (flatter) T looks better and the fit would run to a bound, making a 19-of-19 val set's
    model claim certainty on every photo; or when no temperature beats T = 1.
    """
    probs, labels = _checked(probs, labels)
    right = probs.argmax(axis=1) == labels if labels.size else np.zeros(0, dtype=bool)
    if not labels.size or right.all() or not right.any():
        return 1.0
    rows = np.arange(labels.size)
    logp = np.log(np.maximum(probs, PROB_FLOOR))
    logp -= logp.max(axis=1, keepdims=True)

    def loss(log_t: float) -> float:
        scaled = logp / math.exp(log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float((log_norm - scaled[rows, labels]).mean())

    grid = np.linspace(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE), _GRID_POINTS)
    values = [loss(float(x)) for x in grid]
    best = int(np.argmin(values))
    low, high = float(grid[max(best - 1, 0)]), float(grid[min(best + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    for _ in range(_GOLDEN_STEPS):
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = high - ratio * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    candidates = [(values[best], float(grid[best])), (loss_a, a), (loss_b, b)]
    best_loss, best_log_t = min(candidates)
    if best_loss >= loss(0.0):  # T = 1 is in the range: never store a worse one
        return 1.0
    return float(min(max(math.exp(best_log_t), MIN_TEMPERATURE), MAX_TEMPERATURE))


# ---------------------------------------------------------------- what a run stores

@dataclass(frozen=True)
class Calibration:
    """calibration.json: the fitted temperature and what it did on the val split."""

    temperature: float
    n: int  # val predictions it was fitted on
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def to_json(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "method": "temperature", "fitted_on": "val", **asdict(self)}

    @classmethod
    def from_json(cls, data: Any) -> Calibration:
        """From an untrusted mapping; ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = data.get(field.name)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                raise ValueError(f"{field.name} is missing or not a number")
            try:
                number = float(raw)
            except OverflowError:  # an int too large for a float
                raise ValueError(f"{field.name} is out of range") from None
            if not math.isfinite(number):
                raise ValueError(f"{field.name} is not finite")
            values[field.name] = number
        if not MIN_TEMPERATURE <= values["temperature"] <= MAX_TEMPERATURE:
            raise ValueError(f"temperature {values['temperature']:g} is outside "
                             f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]")
        if not values["n"].is_integer() or values["n"] < 0:
            raise ValueError("n is not a count")
        values["n"] = int(values["n"])
        return cls(**values)


def fit_calibration(probs: np.ndarray, labels: np.ndarray) -> Calibration:
    """Fit the temperature and measure NLL and ECE (metrics.expected_calibration_error) around it."""
    probs, labels = _checked(probs, labels)
    temperature = fit_temperature(probs, labels)
    after = apply_temperature(probs, temperature)
    return Calibration(temperature=temperature, n=int(labels.size), nll_before=nll(probs, labels),
                       nll_after=nll(after, labels), ece_before=metrics.expected_calibration_error(probs, labels),
                       ece_after=metrics.expected_calibration_error(after, labels))


def write_calibration(calibration: Calibration, run_dir: Path | str) -> None:
    atomic_write_json(calibration.to_json(), RunDir(run_dir).calibration)


def calibrate_run(run_dir: Path | str) -> Calibration:
    """Fit on the run's predictions_val.npz (raw, T = 1) and write calibration.json.

    Refitting is idempotent: the stored predictions stay raw, so it gives the same number.
    Raises UserError when the predictions are missing or damaged.
    """
    from speedsign.evaluation import read_predictions  # evaluation imports this module

    saved = read_predictions(RunDir(run_dir).predictions)
    calibration = fit_calibration(saved.probs, saved.labels)
    write_calibration(calibration, run_dir)
    return calibration


def read_calibration(run_dir: Path | str) -> tuple[Calibration | None, str | None]:
    """calibration.json, and why it cannot be used: (None, None) when the run has none (an
    older run), (None, problem) when it is damaged, hostile or out of range. Never raises."""
    path = RunDir(run_dir).calibration
    try:
        if not path.exists() and not path.is_symlink():
            return None, None
        if not path.is_file():  # a folder, a FIFO (would block), a device or a dangling link
            return None, f"{RunDir.CALIBRATION} is not a regular file"
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            return None, f"{RunDir.CALIBRATION} is larger than {MAX_FILE_BYTES} bytes"
        return Calibration.from_json(json.loads(data.decode("utf-8"))), None
    except (OSError, ValueError, RecursionError) as error:  # bad bytes or JSON, absurd numbers or nesting
        return None, f"{RunDir.CALIBRATION} is damaged ({error}); using temperature 1"


def temperature_and_problem(run_dir: Path | str) -> tuple[float, str | None]:
    """The temperature to apply (1.0 unless a sound calibration.json says otherwise) and, when
    the file was there but unusable, why: for a page to show."""
    calibration, problem = read_calibration(run_dir)
    return (calibration.temperature if calibration is not None else 1.0), problem


def read_temperature(run_dir: Path | str) -> float:
    """The run's fitted temperature; 1.0 when it has none or its file is unusable."""
    return temperature_and_problem(run_dir)[0]
