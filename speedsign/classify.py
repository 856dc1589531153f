"""Classify one photo: frame it, ask each model, and show where the model looked.

The Classify page's computations: which models answer by default, the square crop the
user frames, safe decoding of an upload, one model's `Answer` (top-k and its time, and
whether it is sure), what a model was trained on, and the saliency overlay (gradient x input). Plain values
(PIL images, arrays, dataclasses); no Streamlit here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from speedsign.datasets import list_datasets
from speedsign.images import ImageError, image_to_tensor, open_image
from speedsign.run_views import run_data_dir
from speedsign.runs import RunInfo

MAX_ZOOM = 4.0
# Up to this many finished models answer by default; beyond, the best of each approach.
MAX_DEFAULT_MODELS = 6
# An answer is shown as sure only from this top-1 probability up. With nine classes chance is
# 11%, and the tiny or synthetic-trained models people try first answer real photos with
# 20-30%: such an answer is a guess. Below one half the model puts more weight on the other
# classes together than on its answer, so even a calibrated model is more often wrong than right.
CONFIDENT_PROB = 0.5
# speedsign.synth.write_info puts this file at the root of every set it renders.
SYNTH_INFO = "synth.json"


def default_models(usable: Sequence[RunInfo]) -> list[str]:
    """All finished models when a few; otherwise the best of each approach."""
    if len(usable) <= MAX_DEFAULT_MODELS:
        return [info.run_id for info in usable]
    best: dict[str, RunInfo] = {}
    for info in usable:
        if info.approach not in best or (info.best_val_acc or 0) > (best[info.approach].best_val_acc or 0):
            best[info.approach] = info
    return [info.run_id for info in best.values()]


def crop_square(image: Image.Image, *, zoom: float = 1.0, x: float = 0.0, y: float = 0.0) -> Image.Image:
    """A square cut of the photo: side = shorter side / zoom, moved by x, y in [-1, 1].

    x = -1 puts the square at the left edge, +1 at the right (y likewise, top to bottom);
    0 centres it. Zoom 1 is the largest centred square.
    """
    zoom = min(max(float(zoom), 1.0), MAX_ZOOM)
    x, y = (min(max(float(v), -1.0), 1.0) for v in (x, y))
    width, height = image.size
    side = max(1, int(round(min(width, height) / zoom)))
    left = (width - side) / 2 * (1 + x)
    top = (height - side) / 2 * (1 + y)
    left, top = int(round(left)), int(round(top))
    return image.crop((left, top, left + side, top + side))


def can_move(image: Image.Image, zoom: float) -> bool:
    """Whether the crop can move at all (not a whole square photo at zoom 1)."""
    return zoom != 1.0 or image.width != image.height


def decode_photo(data: bytes) -> Image.Image:
    """An uploaded or camera photo, decoded safely (ImageError with the reason otherwise)."""
    if not data:
        raise ImageError("the file is empty")
    return open_image(data)


@dataclass(frozen=True)
class Answer:
    """One model's answer to a photo."""

    run_id: str
    approach: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    milliseconds: float
    tensor: torch.Tensor  # the uint8 (3, S, S) image the model saw

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def top_prob(self) -> float:
        return float(self.probs[0]) if self.probs else math.nan

    @property
    def finite(self) -> bool:
        """False when the model's output is not a number (its training diverged)."""
        return bool(self.probs) and all(math.isfinite(p) for p in self.probs)

    @property
    def confident(self) -> bool:
        """Sure enough to be shown as the answer (top-1 probability >= CONFIDENT_PROB)."""
        return self.finite and self.top_prob >= CONFIDENT_PROB

    @property
    def top_text(self) -> str:
        """"speed_30 28%, speed_80 25%, speed_50 20%": the top-k in words."""
        return ", ".join(f"{label} {prob:.0%}" for label, prob in zip(self.labels, self.probs, strict=True))


def answer(predictor: Any, image: Image.Image, *, top: int = 3) -> Answer:
    """Top-k of one model for a framed photo; the time covers resizing and the forward pass."""
    started = time.perf_counter()
    tensor = image_to_tensor(image, size=predictor.config.stored_size, resize=predictor.config.resize)
    prediction = predictor.predict_tensor(tensor, top=top)
    return Answer(predictor.run_id, predictor.config.approach, prediction.labels, prediction.probs,
                  (time.perf_counter() - started) * 1000, tensor)


@dataclass(frozen=True)
class TrainingData:
    """What a model was trained on, as the Classify page says it."""

    name: str  # the data set as the sidebar names it, else its folder; "" when not recorded
    synthetic: bool | None  # rendered by speedsign.synth; None when the folder is gone or unknown

    @property
    def description(self) -> str:
        if not self.name:
            return "Training data not recorded."
        if self.synthetic:
            return f"Trained on synthetic signs only (data set {self.name}): real photos may be read wrongly."
        if self.synthetic is None:
            return f"Trained on data set {self.name} (its folder is gone: real photos or synthetic, unknown)."
        return f"Trained on data set {self.name}."


def training_data(info: RunInfo, *, data_root: Path | None = None) -> TrainingData:
    """The data set a run trained on (config.json's data_dir) and whether it is the synthetic
    set (a synth.json at its root, as speedsign.synth writes)."""
    if info.published:  # the publisher's folder is not here (and its path is none of a visitor's business)
        from speedsign.bundles import bundle_data

        data = bundle_data(info.run_dir)
        return TrainingData(str(data.get("name") or ""), data.get("synthetic"))
    folder = run_data_dir(info)
    if folder is None:
        return TrainingData("", None)
    name = str(folder)
    try:
        resolved = folder.resolve()
        name = next((entry.name for entry in list_datasets(data_root) if entry.path.resolve() == resolved), name)
        if not folder.is_dir():
            return TrainingData(name, None)
        return TrainingData(name, (folder / SYNTH_INFO).is_file())
    except (OSError, RuntimeError):  # unreadable, or a loop of links
        return TrainingData(name, None)


def saliency_overlay(predictor: Any, answer: Answer) -> tuple[np.ndarray, bool]:
    """Saliency map (gradient x input, `speedsign.saliency`) of the predicted class over the
    image the model saw (uint8 H, W, 3), and whether the map shows anything: it is flat only
    when no pixel moves the class score (a dead or broken model)."""
    from speedsign.saliency import overlay_heatmap, saliency_map

    heat = saliency_map(predictor, answer.tensor)
    informative = bool(heat.size) and float(heat.max() - heat.min()) > 1e-3
    return overlay_heatmap(answer.tensor.permute(1, 2, 0).numpy(), heat), informative
