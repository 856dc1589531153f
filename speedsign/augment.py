"""Turning uint8 batches into network inputs, with augmentation on whole batches on the device.

One preprocessing for training, evaluation and prediction: `prepare_batch(train=False)` is
exactly what the val split and an uploaded photo go through (after `images.image_to_tensor`).

Recipes (`TrainConfig.augment`):
- signs: small translation, mild zoom (crop area 0.8-1), small rotation, brightness,
  contrast and blur. No flips: a mirrored "30" is not a 30 km/h sign.
- tutorial: the PyTorch tutorial's RandomResizedCrop(scale 0.08-1) + RandomHorizontalFlip,
  kept so the two can be compared.
- none: no augmentation (the frozen approach trains on cached features).
- auto: signs when the run shows every training image at least AUTO_MIN_EPOCHS times, else none
  (`resolve_augment`, decided once the run's steps are known, e.g. planned by a time budget).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from speedsign.config import AUTO_MIN_EPOCHS, IMAGENET_MEAN, IMAGENET_STD, TrainConfig

MAX_TRANSLATE = 0.1  # of the image side
ZOOM_AREA = (0.8, 1.0)  # fraction of the image kept when zooming in
MAX_ROTATE_DEGREES = 10.0
BRIGHTNESS = 0.3
CONTRAST = 0.3
BLUR_PROBABILITY = 0.25
STRETCH_QUANTILES = (0.02, 0.98)  # the dark and light levels that `stretch_contrast` maps to 0 and 1
STRETCH_MIN_RANGE = 0.02  # a flat image is left nearly flat, not blown up to noise
# contrast "centre" reads the levels on the middle of the image: a GTSRB crop keeps a 10% border
# around its sign, and a dark sign against a bright sky would otherwise keep the sky's levels.
CENTRE_SHARE = 0.6


def resolve_augment(config: TrainConfig, *, images: int, n_train: int) -> str:
    """The recipe a run trains with: `config.augment`, with "auto" decided by the images the run
    will show (`images`, all steps x batch) against the size of its training split."""
    if config.augment != "auto":
        return config.augment
    return "signs" if images >= AUTO_MIN_EPOCHS * max(1, n_train) else "none"


def costliest_recipe(config: TrainConfig) -> TrainConfig:
    """`config` with "auto" as the costlier recipe it may pick ("signs"): what a step is timed
    with before the run's length decides, and what a preview of "auto" shows."""
    return dataclasses.replace(config, augment="signs") if config.augment == "auto" else config


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The middle size x size of a batch (the tutorial's CenterCrop); no-op when equal."""
    height, width = images.shape[-2:]
    if height == size and width == size:
        return images
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top:top + size, left:left + size]


def standardize(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 1] -> normalised with ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean).div_(std)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float normalised with ImageNet statistics."""
    return standardize(images.float().div_(255.0))


def _uniform(n: int, low: float, high: float, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _affine_sample(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    grid = F.affine_grid(theta, [images.shape[0], images.shape[1], size, size], align_corners=False)
    # "border" repeats the edge pixels: a black frame would be a cue no real photo has.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def sign_affine(n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-image affine matrices: zoom in (area 0.8-1), rotate +-10 deg, shift +-10%."""
    zoom = torch.sqrt(_uniform(n, *ZOOM_AREA, generator=generator, device=device))
    angle = _uniform(n, -MAX_ROTATE_DEGREES, MAX_ROTATE_DEGREES, generator=generator, device=device)
    angle = angle * math.pi / 180
    shift = _uniform(2 * n, -2 * MAX_TRANSLATE, 2 * MAX_TRANSLATE, generator=generator, device=device).view(n, 2)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return theta


def tutorial_affine(n: int, *, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """RandomResizedCrop(scale=(0.08, 1), ratio=(3/4, 4/3)) + horizontal flip, as matrices.

    Like torchvision, a crop whose box does not fit falls back to the whole image.
    """
    area = _uniform(n, 0.08, 1.0, generator=generator, device=device)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), generator=generator, device=device)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio)
    height = torch.sqrt(area / ratio)
    fits = (width <= 1) & (height <= 1)
    width = torch.where(fits, width, torch.ones_like(width))
    height = torch.where(fits, height, torch.ones_like(height))
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    zeros = torch.zeros_like(width)
    return torch.stack([torch.stack([width * flip, zeros, cx], 1), torch.stack([zeros, height, cy], 1)], 1)


def jitter_light(images: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness and contrast on [0, 1] floats, and a light blur on some images."""
    n, device = images.shape[0], images.device
    brightness = _uniform(n, 1 - BRIGHTNESS, 1 + BRIGHTNESS, generator=generator, device=device).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - CONTRAST, 1 + CONTRAST, generator=generator, device=device).view(n, 1, 1, 1)
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean
    blur = torch.rand(n, generator=generator, device=device) < BLUR_PROBABILITY
    if bool(blur.any()):
        kernel = torch.tensor([1.0, 2.0, 1.0], device=device)
        kernel = (kernel[:, None] * kernel[None, :]) / 16
        kernel = kernel.expand(3, 1, 3, 3).contiguous()
        blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        images = torch.where(blur.view(n, 1, 1, 1), blurred, images)
    return images.clamp_(0, 1)


def stretch_contrast(pixels: torch.Tensor, *, centre: bool = False) -> torch.Tensor:
    """Per-image levels: each image's 2% and 98% brightness quantiles become 0 and 1.

    GTSRB photos range from glare to near-black (median brightness 86 of 255); the classic
    remedy is per-image contrast normalisation, done here on whole float batches in [0, 1].
    One scale and offset per image, shared by its three channels, so colours keep their hue.
    `centre`: the quantiles of the middle CENTRE_SHARE of the side only (where the sign is).
    """
    n = pixels.shape[0]
    measured = center_crop(pixels, max(1, round(CENTRE_SHARE * pixels.shape[-1]))) if centre else pixels
    gray = measured.mean(dim=1).reshape(n, -1)
    low, high = torch.quantile(gray, torch.tensor(STRETCH_QUANTILES, device=pixels.device), dim=1)
    scale = (high - low).clamp_(min=STRETCH_MIN_RANGE).view(n, 1, 1, 1)
    return ((pixels - low.view(n, 1, 1, 1)) / scale).clamp_(0, 1)


def shrink(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Float pixels resized down to size x size with antialiasing (progressive resizing)."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def prepare_batch(images: torch.Tensor, *, config: TrainConfig, train: bool,
                  generator: torch.Generator | None = None,
                  channels_last: bool = False, size: int | None = None) -> torch.Tensor:
    """uint8 (N, 3, S, S) on the training device -> normalised float input of the network.

    `size`: a smaller training side than `config.img_size` (progressive resizing), reached by
    shrinking the whole image; evaluation and prediction always use `config.img_size`.
    """
    smaller = size is not None and size != config.img_size
    size = config.img_size if size is None else size
    augment = config.augment if train else "none"
    if augment == "auto":
        raise ValueError("augment 'auto' is decided per run: resolve_augment() before training")
    pixels = images.float().div_(255.0)
    if augment == "none":
        pixels = center_crop(pixels, config.img_size)
        if smaller:
            pixels = shrink(pixels, size)
    else:
        if generator is None:
            raise ValueError("augmentation needs a seeded generator for reproducible runs")
        n = pixels.shape[0]
        if augment == "signs":
            pixels = shrink(center_crop(pixels, config.img_size), size)
            pixels = _affine_sample(pixels, sign_affine(n, generator=generator, device=pixels.device), size)
            pixels = jitter_light(pixels, generator=generator)
        else:  # tutorial: crop from the stored (larger) image, as RandomResizedCrop does
            pixels = _affine_sample(pixels, tutorial_affine(n, generator=generator, device=pixels.device), size)
    if config.contrast != "none":
        # Last, after the lighting jitter: training sees the levels that evaluation sees.
        pixels = stretch_contrast(pixels, centre=config.contrast == "centre")
    batch = standardize(pixels)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def preview_augmentations(image: torch.Tensor, *, config: TrainConfig, n: int = 8, seed: int = 0) -> torch.Tensor:
    """n augmented versions of one uint8 image (3, S, S), as uint8 (n, 3, size, size), for a look."""
    generator = torch.Generator().manual_seed(seed)
    batch = prepare_batch(image.unsqueeze(0).expand(n, -1, -1, -1).contiguous(), config=config,
                          train=config.augment != "none", generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
