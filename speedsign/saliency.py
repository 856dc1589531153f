"""Where the model looked: Grad-CAM on the last convolutional block, and a colour overlay.

Grad-CAM (Selvaraju et al. 2017): the class score's gradient with respect to `layer4`'s
output, averaged over space, weights that output's channels; the ReLU of the weighted sum,
upsampled to the image, is the map. Both ResNet18s (ours and torchvision's) name their last
block `layer4`, so one function serves the three approaches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speedsign.augment import prepare_batch
from speedsign.predict import Predictor

TARGET_LAYER = "layer4"
# Below this the map is numerically nothing: return zeros rather than amplify rounding noise.
MIN_PEAK = 1e-12


def grad_cam(predictor: Predictor, image: torch.Tensor, *, class_index: int | None = None) -> np.ndarray:
    """Grad-CAM heat map (S, S) float32 in [0, 1] of a uint8 image (3, S, S) for one class.

    `image` is what `predictor.load_tensor` returns; `class_index` defaults to the predicted
    class. Safe to call from many threads sharing one Predictor (it holds the model's lock).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a (3, S, S) tensor; got {_describe(image)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 as from Predictor.load_tensor; got {image.dtype}")
    n_classes = len(predictor.classes)
    if class_index is not None and not 0 <= int(class_index) < n_classes:
        raise ValueError(f"class_index must be in [0, {n_classes}); got {class_index}")
    # Outside any caller's inference_mode: autograd needs ordinary tensors.
    with torch.inference_mode(False):
        batch = prepare_batch(image.unsqueeze(0).to(predictor.device).clone(), config=predictor.config,
                              train=False)
        with predictor.exclusive_model() as model:
            activations, gradients = layer_activation_and_gradient(model, batch, class_index=class_index)
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1, keepdim=True))
    return _to_image_grid(cam, crop=batch.shape[-1], side=image.shape[-1])


def layer_activation_and_gradient(model: nn.Module, batch: torch.Tensor, *, class_index: int | None,
                                  layer: str = TARGET_LAYER) -> tuple[torch.Tensor, torch.Tensor]:
    """`layer`'s output for a one-image batch and the class score's gradient with respect to it.

    The caller holds the model exclusively. Parameters are left as they were: no
    requires_grad flag changes, no `.grad` written, no hook left behind.
    """
    module = getattr(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def capture(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        # A leaf cut from the graph: the gradient we want exists even when the backbone is
        # frozen (requires_grad False everywhere before fc), and backward stops here instead
        # of running through the backbone.
        leaf = output.detach().requires_grad_(True)
        captured["activations"] = leaf
        return leaf

    handle = module.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            logits = model(batch)
            target = int(logits[0].argmax()) if class_index is None else int(class_index)
            activations = captured["activations"]
            (gradients,) = torch.autograd.grad(logits[0, target], activations)
    finally:
        handle.remove()
    return activations.detach(), gradients.detach()


def _to_image_grid(cam: torch.Tensor, *, crop: int, side: int) -> np.ndarray:
    """(1, 1, h, w) map -> (side, side) in [0, 1]: upsampled over the centre crop the model saw."""
    cam = F.interpolate(cam.float(), size=(crop, crop), mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max()) if cam.numel() else 0.0
    if not np.isfinite(peak) or peak < MIN_PEAK:
        cam = torch.zeros_like(cam)
    else:
        cam = (cam / peak).clamp_(0.0, 1.0)
    heat = np.zeros((side, side), dtype=np.float32)
    # With resize "tutorial" the model sees only the centre crop of the stored image
    # (augment.center_crop); the border it never saw gets no heat.
    top = (side - crop) // 2
    heat[top:top + crop, top:top + crop] = cam.cpu().numpy()
    return heat


# ---------------------------------------------------------------- overlay

def jet_colormap(levels: int = 256) -> np.ndarray:
    """A jet-like colour table (levels, 3) uint8: dark blue (0) -> cyan -> yellow -> dark red (1)."""
    x = np.linspace(0.0, 1.0, levels)
    # The classic piecewise-linear jet: each channel a clipped tent centred a quarter apart.
    rgb = np.stack([np.clip(1.5 - np.abs(4 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)], axis=1)
    return np.round(rgb * 255).astype(np.uint8)


_JET = jet_colormap()


def overlay_heatmap(image: np.ndarray | torch.Tensor, heat: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map in [0, 1] over an RGB image; returns uint8 (H, W, 3).

    `image` is uint8 (H, W, 3) (grey (H, W), RGBA and a (3, H, W) tensor are accepted too);
    `heat` (h, w) is resized to H x W bilinearly. NaN counts as no heat.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    rgb = _as_rgb(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heat must be a non-empty 2-d map; got shape {heat.shape}")
    heat = np.clip(np.nan_to_num(heat, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    height, width = rgb.shape[:2]
    if heat.shape != (height, width):
        resized = F.interpolate(torch.from_numpy(heat)[None, None], size=(height, width), mode="bilinear",
                                align_corners=False)
        heat = resized[0, 0].clamp_(0.0, 1.0).numpy()
    colours = _JET[np.round(heat * (len(_JET) - 1)).astype(np.intp)]
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _as_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):  # torch images are (C, H, W)
            array = np.moveaxis(array, 0, -1)
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image must be (H, W, 3) uint8; got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {array.dtype}")
    return array[..., :3]


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
