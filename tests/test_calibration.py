"""calibration.py: temperature scaling fitted on val, stored with the run, read back without trust."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from speedsign.calibration import (
    MAX_FILE_BYTES,
    Calibration,
    apply_temperature,
    calibrate_run,
    fit_calibration,
    fit_temperature,
    nll,
    read_calibration,
    read_temperature,
    temperature_and_problem,
)
from speedsign.errors import UserError
from speedsign.runs import RunDir

N_CLASSES = 9


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def sampled(scale: float, *, n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), and a model that reports softmax(scale * logits):
    over-confident for scale > 1, under-confident (as label smoothing makes ours) for scale < 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, N_CLASSES)) * 3
    true = softmax(logits)
    labels = np.array([rng.choice(N_CLASSES, p=row) for row in true], dtype=np.int64)
    return softmax(scale * logits).astype(np.float32), labels


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


@pytest.mark.parametrize(("scale", "side"), [(3.0, "above"), (0.4, "below")])
def test_temperature_scaling_lowers_val_nll_and_leaves_accuracy_unchanged(scale: float, side: str) -> None:
    probs, labels = sampled(scale)
    temperature = fit_temperature(probs, labels)
    # Over-confident wants T > 1 (softer), under-confident T < 1; the truth is T = scale.
    assert (temperature > 1) if side == "above" else (temperature < 1)
    assert temperature == pytest.approx(scale, rel=0.15)
    scaled = apply_temperature(probs, temperature)
    assert nll(scaled, labels) < nll(probs, labels) - 0.05
    assert np.array_equal(scaled.argmax(axis=1), probs.argmax(axis=1))
    assert accuracy(scaled, labels) == accuracy(probs, labels)
    fitted = fit_calibration(probs, labels)
    assert fitted.temperature == temperature and fitted.n == len(labels)
    assert fitted.nll_after < fitted.nll_before and fitted.ece_after < fitted.ece_before


def test_a_calibrated_model_keeps_temperature_near_one_and_refitting_is_idempotent() -> None:
    probs, labels = sampled(1.0)
    assert fit_temperature(probs, labels) == pytest.approx(1.0, abs=0.1)
    over, labels = sampled(2.5)
    temperature = fit_temperature(over, labels)
    assert fit_temperature(over, labels) == temperature  # deterministic
    # Fitting again on the calibrated probabilities finds nothing left to correct.
    assert fit_temperature(apply_temperature(over, temperature), labels) == pytest.approx(1.0, abs=1e-3)


def test_apply_temperature_gives_rows_that_sum_to_one_and_keeps_the_argmax() -> None:
    probs, _ = sampled(2.0, n=50)
    probs[0] = 0.0
    probs[0, 3] = 1.0  # an underflowed softmax: zeros must not become NaN
    for temperature in (0.05, 0.5, 1.0, 2.0, 20.0):
        scaled = apply_temperature(probs, temperature)
        assert np.isfinite(scaled).all() and np.allclose(scaled.sum(axis=1), 1.0)
        assert np.array_equal(scaled.argmax(axis=1), probs.argmax(axis=1)), temperature
    assert np.array_equal(apply_temperature(probs, 1.0), probs.astype(np.float64))  # T = 1 is the identity
    high = apply_temperature(probs, 20.0).max(axis=1)
    low = apply_temperature(probs, 0.5).max(axis=1)
    assert (high[1:] < probs.max(axis=1)[1:]).all() and (low[1:] > probs.max(axis=1)[1:]).all()
    assert apply_temperature(np.zeros((0, N_CLASSES)), 2.0).shape == (0, N_CLASSES)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            apply_temperature(probs, bad)


def test_nll_and_the_fit_check_their_inputs() -> None:
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert nll(probs, np.array([0, 0])) == pytest.approx(-(np.log(0.5) + np.log(0.9)) / 2)
    assert np.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1])))  # p = 0 is floored, not inf
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 1.0
    assert nll(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 0.0
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match="need probs"):
        fit_temperature(probs, np.array([0]))
    with pytest.raises(ValueError, match="finite"):
        fit_temperature(np.array([[np.nan, 1.0]]), np.array([0]))


def test_all_right_or_all_wrong_keeps_temperature_one() -> None:
    # All right: any sharper T lowers NLL, so a fit would run to the bound and claim certainty.
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    assert fit_temperature(probs, np.array([0, 1])) == 1.0
    assert fit_temperature(probs, np.array([1, 0])) == 1.0  # all wrong


def write_val_predictions(run_dir: Path, probs: np.ndarray, labels: np.ndarray) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(RunDir(run_dir).predictions, probs=probs, labels=labels,
             files=np.array([f"val/x/{i}.png" for i in range(len(labels))]),
             classes=np.array([f"c{i}" for i in range(probs.shape[1])]))


def test_calibrate_run_writes_calibration_json_that_reads_back(tmp_path: Path) -> None:
    run_dir = tmp_path / "scratch-20990101-calib"
    probs, labels = sampled(0.5, n=400)
    write_val_predictions(run_dir, probs, labels)
    assert read_calibration(run_dir) == (None, None)  # an older run: no file, no problem
    assert temperature_and_problem(run_dir) == (1.0, None) and read_temperature(run_dir) == 1.0
    fitted = calibrate_run(run_dir)
    stored = json.loads(RunDir(run_dir).calibration.read_text())
    assert stored["method"] == "temperature" and stored["fitted_on"] == "val"
    assert stored["temperature"] == fitted.temperature < 1
    assert read_calibration(run_dir) == (fitted, None)
    assert read_temperature(run_dir) == fitted.temperature
    assert Calibration.from_json(fitted.to_json()) == fitted
    assert calibrate_run(run_dir) == fitted  # the stored predictions stay raw: refitting changes nothing
    with pytest.raises(UserError, match="missing"):
        calibrate_run(tmp_path / "empty")


def damaged_files() -> dict[str, bytes]:
    good = Calibration(temperature=1.5, n=10, nll_before=1.0, nll_after=0.9, ece_before=0.1, ece_after=0.05).to_json()

    def variant(**values: object) -> bytes:
        return json.dumps({**good, **values}).encode()

    return {
        "junk": b"\x00\xff not json",
        "not an object": b"[1.5]",
        "string temperature": variant(temperature="1.5"),
        "bool temperature": variant(temperature=True),
        "missing temperature": json.dumps({k: v for k, v in good.items() if k != "temperature"}).encode(),
        "nan": variant().replace(b'"temperature": 1.5', b'"temperature": NaN'),
        "infinite": variant().replace(b'"temperature": 1.5', b'"temperature": 1e999'),
        "huge int": variant().replace(b'"temperature": 1.5', b'"temperature": 1' + b"0" * 400),
        "negative": variant(temperature=-2.0),
        "zero": variant(temperature=0),
        "too large": variant(temperature=1e6),
        "fractional n": variant(n=2.5),
        "deep nesting": b"[" * 20_000 + b"]" * 20_000,  # under the size limit: json recursion
        "oversized": b" " * (MAX_FILE_BYTES + 10) + variant(),
    }


@pytest.mark.parametrize("name", list(damaged_files()))
def test_a_damaged_or_hostile_calibration_json_means_temperature_one_and_says_so(tmp_path: Path, name: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunDir(run_dir).calibration.write_bytes(damaged_files()[name])
    calibration_, problem = read_calibration(run_dir)
    assert calibration_ is None and problem and RunDir.CALIBRATION in problem
    assert temperature_and_problem(run_dir) == (1.0, problem)
    assert read_temperature(run_dir) == 1.0


def test_a_calibration_json_that_is_not_a_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    folder.calibration.mkdir()
    assert temperature_and_problem(folder.path)[0] == 1.0 and temperature_and_problem(folder.path)[1]
    folder.calibration.rmdir()
    folder.calibration.symlink_to(tmp_path / "nowhere")
    assert temperature_and_problem(folder.path)[0] == 1.0 and temperature_and_problem(folder.path)[1]
    if hasattr(os, "mkfifo"):  # opening a FIFO would block for ever
        folder.calibration.unlink()
        os.mkfifo(folder.calibration)
        assert temperature_and_problem(folder.path)[0] == 1.0 and temperature_and_problem(folder.path)[1]
