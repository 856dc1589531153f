"""predict.py: the Predictor sees exactly what the val split saw; top-k; eval on val and test."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from speedsign.calibration import Calibration, apply_temperature, read_temperature
from speedsign.errors import UserError
from speedsign.predict import Predictor, evaluate_split, predict_files
from speedsign.runs import RunDir

from conftest import APPROACHES


@pytest.mark.parametrize("approach", APPROACHES)
def test_predictor_gives_the_val_split_probabilities_for_the_val_files(approach: str,
                                                                       runs_with_results: dict[str, Path],
                                                                       synth_dir: Path) -> None:
    run_dir = runs_with_results[approach]
    predictor = Predictor(run_dir)
    assert predictor.temperature == read_temperature(run_dir) and predictor.calibration_problem is None
    saved = np.load(run_dir / "predictions_val.npz")  # raw: the temperature is fitted on them
    calibrated = apply_temperature(saved["probs"], predictor.temperature)
    exact = 0
    for row in range(len(saved["files"])):
        file = str(saved["files"][row])
        image = predictor.load_tensor(synth_dir / file).unsqueeze(0)
        assert np.allclose(predictor.probabilities(image, calibrated=False)[0], saved["probs"][row], atol=1e-4), file
        # apply_temperature starts from stored float32 probabilities; a probability that underflowed
        # there lost its logit, which the predictor still has. A tiny overconfident model (T at its
        # bound) has such rows: compare the calibrated values where nothing underflowed.
        if saved["probs"][row].min() > 1e-30:
            assert np.allclose(predictor.probabilities(image)[0], calibrated[row], atol=1e-4), file
            exact += 1
        else:
            assert predictor.probabilities(image)[0].argmax() == calibrated[row].argmax(), file
    assert exact > 0


@pytest.mark.parametrize("approach", APPROACHES)
def test_top_k_from_bytes_and_from_a_path_agree(approach: str, runs_with_results: dict[str, Path],
                                                synth_dir: Path) -> None:
    predictor = Predictor(runs_with_results[approach])
    path = next((synth_dir / "train" / "speed_50").iterdir())
    from_path = predictor.predict(path, top=3)
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    from_bytes = predictor.predict(buffer.getvalue(), top=3)
    assert from_path.labels == from_bytes.labels and len(from_path.labels) == 3
    assert all(label in predictor.classes for label in from_path.labels)
    assert list(from_path.probs) == sorted(from_path.probs, reverse=True)
    assert from_path.milliseconds > 0
    assert len(predictor.predict(path, top=99).labels) == 9


def test_predict_files_turns_bad_files_into_error_entries(runs_with_results: dict[str, Path], synth_dir: Path,
                                                          tmp_path: Path) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    good = next((synth_dir / "train" / "speed_30").iterdir())
    entries = predict_files(Predictor(runs_with_results["scratch"]), [str(good), str(bad), str(tmp_path / "nope.png")])
    assert "top" in entries[0]
    assert "error" in entries[1] and "error" in entries[2]


def test_evaluate_val_matches_the_saved_report(runs_with_results: dict[str, Path], synth_dir: Path) -> None:
    run_dir = runs_with_results["scratch"]
    predictor = Predictor(run_dir)
    report, probs, labels = evaluate_split(predictor, synth_dir, split="val")
    saved = json.loads((run_dir / "eval_val.json").read_text())  # of the raw probabilities
    assert report["n"] == saved["n"] and report["accuracy"] == pytest.approx(saved["accuracy"])
    assert probs.shape == (report["n"], 9) and report["temperature"] == predictor.temperature
    raw, raw_probs, _ = evaluate_split(predictor, synth_dir, split="val", calibrated=False)
    assert raw["ece"] == pytest.approx(saved["ece"], abs=1e-4) and raw["temperature"] == 1.0
    assert np.array_equal(raw_probs.argmax(1), probs.argmax(1))


def stored_temperature(run_dir: Path, temperature: float) -> None:
    calibration = Calibration(temperature=temperature, n=1, nll_before=1.0, nll_after=1.0, ece_before=0.0,
                              ece_after=0.0)
    (run_dir / RunDir.CALIBRATION).write_text(json.dumps(calibration.to_json()))


def test_predictor_applies_the_stored_temperature(runs_with_results: dict[str, Path], synth_dir: Path,
                                                  tmp_path: Path, one_thread: None) -> None:
    run_dir = tmp_path / "scratch-20990101-temperature"
    run_dir.mkdir()
    for name in (RunDir.BEST, RunDir.CONFIG):  # what a Predictor reads, besides calibration.json
        shutil.copy(runs_with_results["scratch"] / name, run_dir / name)
    images = torch.stack([Predictor(run_dir).load_tensor(path) for path in
                          sorted((synth_dir / "train" / "speed_50").iterdir())[:4]])
    for temperature in (0.25, 4.0):
        stored_temperature(run_dir, temperature)
        predictor = Predictor(run_dir)
        assert predictor.temperature == temperature and predictor.calibration_problem is None
        raw, calibrated = predictor.probabilities(images, calibrated=False), predictor.probabilities(images)
        assert not np.allclose(raw, calibrated, atol=1e-3)
        assert np.array_equal(raw.argmax(1), calibrated.argmax(1)) and np.allclose(calibrated.sum(1), 1, atol=1e-5)
        assert np.allclose(calibrated, apply_temperature(raw, temperature), atol=1e-5)
        sharper = calibrated.max(1) > raw.max(1)
        assert sharper.all() if temperature < 1 else not sharper.any()
        top = predictor.predict_tensor(images[0], top=1)
        assert top.probs[0] == pytest.approx(float(calibrated[0].max()), abs=1e-5)
    (run_dir / RunDir.CALIBRATION).write_text('{"temperature": "os.system(1)"}')  # damaged: T = 1, and said
    predictor = Predictor(run_dir)
    assert predictor.temperature == 1.0 and "calibration.json" in (predictor.calibration_problem or "")
    assert np.allclose(predictor.probabilities(images), predictor.probabilities(images, calibrated=False))
    (run_dir / RunDir.CALIBRATION).unlink()  # an older run: T = 1, nothing to say
    predictor = Predictor(run_dir)
    assert predictor.temperature == 1.0 and predictor.calibration_problem is None


def test_evaluate_test_matches_classes_by_name_and_refuses_unknown_ones(runs_with_results: dict[str, Path],
                                                                        synth_dir: Path, tmp_path: Path) -> None:
    test_dir = tmp_path / "only_test"
    for name in ("speed_120", "speed_30"):  # a subset, in another order
        shutil.copytree(synth_dir / "train" / name, test_dir / "test" / name)
    report, _, labels = evaluate_split(Predictor(runs_with_results["scratch"]), test_dir, split="test")
    assert report["n"] == 40
    assert set(labels.tolist()) == {1, 8}  # the run's indices of speed_30 and speed_120
    (test_dir / "test" / "stop").mkdir()
    Image.new("RGB", (8, 8)).save(test_dir / "test" / "stop" / "a.png")
    with pytest.raises(UserError, match="does not know: stop"):
        evaluate_split(Predictor(runs_with_results["scratch"]), test_dir, split="test")


def test_a_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        Predictor(tmp_path)
