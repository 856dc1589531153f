"""Framing a photo, decoding it safely, default models, and one model's answer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedsign import classify
from speedsign.images import MAX_FILE_BYTES, ImageError
from speedsign.runs import RunInfo, RunStatus


def test_crop_square_zoom_and_offsets() -> None:
    image = Image.fromarray(np.arange(200 * 100 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8))
    assert classify.crop_square(image).size == (100, 100)
    assert classify.crop_square(image, zoom=2).size == (50, 50)
    left = classify.crop_square(image, zoom=2, x=-1, y=-1)
    right = classify.crop_square(image, zoom=2, x=1, y=1)
    assert np.array_equal(np.asarray(left), np.asarray(image)[:50, :50])
    assert np.array_equal(np.asarray(right), np.asarray(image)[50:, 150:])
    assert classify.crop_square(image, zoom=99, x=5).size == (25, 25)  # clamped to 4x, edge


def test_crop_can_move_unless_a_square_photo_is_shown_whole() -> None:
    square, wide = Image.new("RGB", (50, 50)), Image.new("RGB", (80, 50))
    assert not classify.can_move(square, 1.0)
    assert classify.can_move(square, 1.5) and classify.can_move(wide, 1.0)


def test_too_big_photo_is_refused_by_the_decoder() -> None:
    with pytest.raises(ImageError, match="limit"):
        classify.decode_photo(b"\xff\xd8" + b"\0" * MAX_FILE_BYTES)


def test_empty_photo_is_refused() -> None:
    with pytest.raises(ImageError, match="empty"):
        classify.decode_photo(b"")


def run(run_id: str, approach: str, accuracy: float) -> RunInfo:
    return RunInfo(run_id=run_id, run_dir=Path(run_id), approach=approach, state="done", epoch=2, epochs=2,
                   best_val_acc=accuracy, damaged=None, config={}, status=RunStatus(state="done", exists=True))


def test_default_models_are_all_when_few_else_the_best_of_each_approach() -> None:
    few = [run(f"scratch-{i}", "scratch", 0.5 + i / 100) for i in range(3)]
    assert classify.default_models(few) == ["scratch-0", "scratch-1", "scratch-2"]
    many = few + [run(f"frozen-{i}", "frozen", 0.9 - i / 100) for i in range(classify.MAX_DEFAULT_MODELS)]
    assert classify.default_models(many) == ["scratch-2", "frozen-0"]


def test_answer_of_a_real_model(runs_with_results: dict[str, Path], synth_dir: Path) -> None:
    from speedsign.predict import Predictor

    predictor = Predictor(runs_with_results["scratch"])
    photo = Image.open(sorted((synth_dir / "train" / "speed_50").iterdir())[0])
    answer = classify.answer(predictor, classify.crop_square(photo))
    assert answer.label == answer.labels[0] and len(answer.labels) == 3
    assert answer.label in predictor.classes and answer.milliseconds > 0
    assert list(answer.probs) == sorted(answer.probs, reverse=True)
    overlay, informative = classify.saliency_overlay(predictor, answer)
    assert overlay.dtype == np.uint8 and overlay.ndim == 3 and isinstance(informative, bool)


def an_answer(probs: tuple[float, ...]) -> classify.Answer:
    import torch

    labels = tuple(f"speed_{i}0" for i in range(2, 2 + len(probs)))
    return classify.Answer("scratch-x", "scratch", labels, probs, 1.0, torch.zeros((3, 4, 4), dtype=torch.uint8))


def test_an_answer_is_sure_from_half_up_and_never_when_not_a_number() -> None:
    assert classify.CONFIDENT_PROB == 0.5
    assert an_answer((0.5, 0.3, 0.2)).confident
    unsure = an_answer((0.28, 0.25, 0.2))
    assert not unsure.confident and unsure.finite and unsure.top_prob == 0.28
    assert unsure.top_text == "speed_20 28%, speed_30 25%, speed_40 20%"
    broken = an_answer((float("nan"), float("nan"), float("nan")))
    assert not broken.finite and not broken.confident  # NaN >= 0.5 is False, NaN < 0.5 too


def run_on(data_dir: object) -> RunInfo:
    config = {} if data_dir is None else {"data_dir": str(data_dir)}
    return dataclasses.replace(run("scratch-1", "scratch", 0.5), config=config)


def test_what_a_model_was_trained_on(synth_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "synth").symlink_to(synth_dir, target_is_directory=True)
    synthetic = classify.training_data(run_on(synth_dir), data_root=root)
    assert synthetic == classify.TrainingData("synth", True)  # named as the sidebar names it
    assert synthetic.description == ("Trained on synthetic signs only (data set synth): "
                                     "real photos may be read wrongly.")
    real = root / "photos"
    (real / "train" / "speed_30").mkdir(parents=True)
    assert classify.training_data(run_on(real), data_root=root) == classify.TrainingData("photos", False)
    assert classify.training_data(run_on(real), data_root=root).description == "Trained on data set photos."
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert classify.training_data(run_on(elsewhere), data_root=root).name == str(elsewhere)
    gone = classify.training_data(run_on(tmp_path / "deleted"), data_root=root)
    assert gone.synthetic is None and "folder is gone" in gone.description
    assert classify.training_data(run_on(None), data_root=root).description == "Training data not recorded."
