"""Classify one photo: frame it, ask each model, and show where the model looked.

The Classify page's computations: which models answer by default, the square crop the
user frames, safe decoding of an upload, one model's `Answer` (top-k and its time), and
the Grad-CAM overlay. Plain values (PIL images, arrays, dataclasses); no Streamlit here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from speedsign.images import ImageError, image_to_tensor, open_image
from speedsign.runs import RunInfo

MAX_ZOOM = 4.0
# Up to this many finished models answer by default; beyond, the best of each approach.
MAX_DEFAULT_MODELS = 6


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


def answer(predictor: Any, image: Image.Image, *, top: int = 3) -> Answer:
    """Top-k of one model for a framed photo; the time covers resizing and the forward pass."""
    started = time.perf_counter()
    tensor = image_to_tensor(image, size=predictor.config.stored_size, resize=predictor.config.resize)
    prediction = predictor.predict_tensor(tensor, top=top)
    return Answer(predictor.run_id, predictor.config.approach, prediction.labels, prediction.probs,
                  (time.perf_counter() - started) * 1000, tensor)


def saliency_overlay(predictor: Any, answer: Answer) -> tuple[np.ndarray, bool]:
    """Grad-CAM of the predicted class over the image the model saw (uint8 H, W, 3), and whether
    the map shows anything: at small inputs the last block is one cell, and the map is flat."""
    from speedsign.saliency import grad_cam, overlay_heatmap

    heat = grad_cam(predictor, answer.tensor)
    informative = bool(heat.size) and float(heat.max() - heat.min()) > 1e-3
    return overlay_heatmap(answer.tensor.permute(1, 2, 0).numpy(), heat), informative
