"""Where the model looked: gradient x input, smoothed, and a colour overlay.

The map (Shrikumar et al. 2016, "gradient x input") is |sum over colour channels of
x * d(class score)/dx| for the normalised input x, box-smoothed over an eighth of the side.
x is measured from the ImageNet mean colour (the zero of the normalised input, also what
zero-padding shows the network beyond the border), so each pixel gets its first-order
share of the class score. One forward and one backward pass, at the input's own resolution
whatever its size, on any network (no layer to pick), and for a frozen backbone too: the
gradient with respect to the input exists whatever the parameters' requires_grad.

Why not Grad-CAM on `layer4`: at the preset sizes that block is 1x1 (32 px) or 2x2
(48-64 px), so its map is one blob in a corner whatever the photo. Measured on scratch
ResNet18s trained on synthetic signs (9 classes; 64 px: 60% val accuracy, 32 px: 58%), 27 rendered
signs per row centred on a plain background, a hit when the map's peak lies on the sign's
disc; time per map on 2 shared CPU cores:

    method                     64 px: disc 50% / 70% of the side  32 px: 50% / 70%  ms (64 / 32 px)
    Grad-CAM layer4 (2x2, 1x1)        0 / 0                          0 / 0 (flat)    13 / 7
    Grad-CAM layer3 (4x4, 2x2)       19 / 24                         0 / 0           22 / 9
    Grad-CAM layer2 (8x8, 4x4)       22 / 26                         7 / 16          25 / 12
    occlusion, 1/4-side patch, 7x7   25 / 27                        11 / 23         100 / 36
    occlusion, 1/4-side patch, 13x13 26 / 27                        11 / 23         390 / 96
    SmoothGrad x input (16 samples)  26 / 26                        16 / 22          78 / 31
    gradient x input (this)          26 / 26                        17 / 21          28 / 14

and with the sign on a cluttered background (blocks of random colours / smooth colour
noise): gradient x input 26 / 27 of 27 at 64 px, occlusion 26 / 23, Grad-CAM layer2 15 / 20.
Gradient x input resolves the sign as well as occlusion at a quarter of its cost (Classify
shows several models at once), and much better than any Grad-CAM layer at these sizes. It
also passes the model-randomisation check (Adebayo et al. 2018) that a blurred-image
baseline fails: an untrained 64 px ResNet18's map hits the centred sign 6 times in 27, a
trained one's 26 (with x measured from a blurred copy, the untrained one's hits 27: on a
plain background that baseline finds the sign's edges whatever the model). At 32 px most
misses are a hot top-left corner: those models do respond to the image border there
(occlusion finds the same corner; the 7x7 stride-2 stem reaches 3 padded pixels beyond the
top and left edges but 2 beyond the bottom and right).

`grad_cam` stays for comparison (and for inputs of 128 px and more, where layer4 has a grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speedsign.augment import prepare_batch
from speedsign.predict import Predictor

METHOD = "gradient × input"
TARGET_LAYER = "layer4"  # grad_cam's default: the last convolutional block of both ResNet18s
SMOOTH_FRACTION = 1 / 8  # box blur of the gradient x input map, as a fraction of the input side
# Below this the map is numerically nothing: return zeros rather than amplify rounding noise.
MIN_PEAK = 1e-12


def saliency_map(predictor: Predictor, image: torch.Tensor, *, class_index: int | None = None) -> np.ndarray:
    """Gradient x input heat map (S, S) float32 in [0, 1] of a uint8 image (3, S, S) for one class.

    `image` is what `predictor.load_tensor` returns; `class_index` defaults to the predicted
    class. Safe to call from many threads sharing one Predictor (it holds the model's lock).
    """
    _check_arguments(predictor, image, class_index)
    # Outside any caller's inference_mode: autograd needs ordinary tensors.
    with torch.inference_mode(False):
        batch = _network_input(predictor, image)
        with predictor.exclusive_model() as model:
            gradient = input_gradient(model, batch, class_index=class_index)
        contribution = (gradient * batch).sum(dim=1, keepdim=True).abs()
        heat = smooth(contribution, width=smoothing_width(batch.shape[-1]))
    return _to_image_grid(heat, crop=batch.shape[-1], side=image.shape[-1])


def input_gradient(model: nn.Module, batch: torch.Tensor, *, class_index: int | None) -> torch.Tensor:
    """The class score's gradient with respect to a one-image input batch (same shape).

    The caller holds the model exclusively. Parameters are left as they were: no
    requires_grad flag changes and no `.grad` written (autograd.grad asks for the input's
    gradient only), so it works the same for a frozen backbone.
    """
    inputs = batch.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        target = int(logits[0].argmax()) if class_index is None else int(class_index)
        (gradient,) = torch.autograd.grad(logits[0, target], inputs)
    return gradient.detach()


def smoothing_width(side: int) -> int:
    """Odd box width for a `side`-pixel input: an eighth of the side, at least 3."""
    return max(3, round(side * SMOOTH_FRACTION)) | 1


def smooth(heat: torch.Tensor, *, width: int) -> torch.Tensor:
    """Box blur of (1, 1, h, w); the border averages only pixels inside the image."""
    return F.avg_pool2d(heat, width, stride=1, padding=width // 2, count_include_pad=False)


def grad_cam(predictor: Predictor, image: torch.Tensor, *, class_index: int | None = None,
             layer: str = TARGET_LAYER) -> np.ndarray:
    """Grad-CAM heat map (S, S) float32 in [0, 1] on `layer`, for comparison (see the module doc).

    Selvaraju et al. 2017: the class score's gradient with respect to `layer`'s output,
    averaged over space, weights that output's channels; the ReLU of the weighted sum,
    upsampled to the image, is the map. Both ResNet18s name their blocks layer1-layer4.
    """
    _check_arguments(predictor, image, class_index)
    with torch.inference_mode(False):
        batch = _network_input(predictor, image)
        with predictor.exclusive_model() as model:
            activations, gradients = layer_activation_and_gradient(model, batch, class_index=class_index,
                                                                   layer=layer)
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


def _check_arguments(predictor: Predictor, image: Any, class_index: int | None) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a (3, S, S) tensor; got {_describe(image)}")
    if image.dtype != torch.uint8:
        raise ValueError(f"image must be uint8 as from Predictor.load_tensor; got {image.dtype}")
    n_classes = len(predictor.classes)
    if class_index is not None and not 0 <= int(class_index) < n_classes:
        raise ValueError(f"class_index must be in [0, {n_classes}); got {class_index}")


def _network_input(predictor: Predictor, image: torch.Tensor) -> torch.Tensor:
    """The normalised (1, 3, crop, crop) batch the model sees, as an ordinary tensor."""
    return prepare_batch(image.unsqueeze(0).to(predictor.device).clone(), config=predictor.config, train=False)


def _to_image_grid(cam: torch.Tensor, *, crop: int, side: int) -> np.ndarray:
    """(1, 1, h, w) map -> (side, side) in [0, 1]: upsampled over the centre crop the model saw."""
    cam = cam.float()
    if tuple(cam.shape[-2:]) != (crop, crop):
        cam = F.interpolate(cam, size=(crop, crop), mode="bilinear", align_corners=False)
    cam = cam[0, 0]
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
