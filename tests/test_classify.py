"""Framing a photo, decoding it safely, default models, and one model's answer."""

from __future__ import annotations

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
