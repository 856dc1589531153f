"""Accuracy under corruption: the same images made darker, glared, blurred, noisy, JPEG-coded,
occluded, rotated or shrunk, each at three severities.

A road sign is rarely photographed as cleanly as a val image: dusk, a low sun, a moving car, a
cheap camera, a branch in front of it. `corrupt` turns a stored uint8 batch into one such
version; `evaluate_corruptions` scores a run's model on every version, and `corruption_report`
does it for a data folder's split (what `eval --corruptions` prints).

Determinism: the random parts (glare spot, blur direction, noise, box, rotation direction) are
drawn per image from a seed made of (seed, corruption, image index), never from the global RNG,
so an image gets the same corruption whatever batch it is in, on any device, and severities of
one corruption share their draws: severity 3 is severity 1 made stronger, not a new picture.

Lengths in pixels (blur sigma, motion length) are given at REFERENCE_SIDE and scaled with the
image side, so a 64 px or 256 px model meets the same blur relative to the sign as a 32 px one.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from speedsign.errors import UserError

REFERENCE_SIDE = 32  # the side at which pixel lengths in the table hold; scaled for other sides
SEVERITIES: tuple[int, ...] = (1, 2, 3)
Progress = Callable[[int, int], None]  # (steps done, steps in all), as speedsign.data's


@dataclass(frozen=True)
class Corruption:
    """One corruption: what its number means and that number at severities 1, 2 and 3."""

    name: str
    label: str  # for display: "motion blur"
    values: tuple[float, float, float]  # severities 1, 2, 3
    template: str  # one severity for display; {label}, {value} (as given) and {pct} (value x 100)
    random: bool  # drawn per image from the seed; False: the same change for every image
    in_pixels: bool = False  # a length in px at REFERENCE_SIDE, scaled with the image side


# The single table of what each severity means, chosen for 32-64 px sign crops: severity 1 is
# a nuisance a driver would not notice, severity 3 is hard but still leaves the digits there.
# (The functions below take these values as they are, lengths already scaled to the image.)
TABLE: dict[str, Corruption] = {c.name: c for c in (
    # Brightness factor. GTSRB photos are already dark (mean pixel ~0.30), so x0.25 is near night.
    Corruption("darkness", "darkness", (0.6, 0.4, 0.25), "{label} (brightness x{value:g})", random=False),
    # Peak strength of a bright spot (sigma a quarter of the side) on a weaker veil over the
    # whole image, screen-blended towards white: a low sun or a headlight on the sign.
    Corruption("glare", "glare", (0.35, 0.55, 0.75), "{label} {pct:.0f}%", random=True),
    # Sigma in px: at 32 px a digit stroke is ~2 px, so sigma 1.5 smears the digits together.
    Corruption("gaussian_blur", "gaussian blur", (0.6, 1.0, 1.5), "{label} sigma {value:g} px",
               random=False, in_pixels=True),
    # Length of a straight streak in px, at a random angle: the camera moving during exposure.
    Corruption("motion_blur", "motion blur", (3.0, 5.0, 7.0), "{label} {value:g} px", random=True, in_pixels=True),
    # Gaussian std in 0-255 units, per pixel and channel: sensor noise of a dim or cheap camera.
    Corruption("noise", "noise", (8.0, 16.0, 32.0), "{label} std {value:g}/255", random=True),
    # JPEG quality: 30 is a heavily compressed web image, 8 shows 8x8 blocks across the digits.
    Corruption("jpeg", "JPEG", (30.0, 15.0, 8.0), "{label} quality {value:g}", random=False),
    # Share of the area under a black or grey box (aspect 1:2 to 2:1): a post, a branch, a sticker.
    Corruption("occlusion", "occlusion", (0.1, 0.2, 0.3), "{label} {pct:.0f}% of the area", random=True),
    # Degrees, to the left or right: a tilted pole or camera. Training's augmentation goes to 10.
    Corruption("rotation", "rotation", (5.0, 10.0, 15.0), "{label} {value:g} degrees", random=True),
    # Side kept when zooming out (border pixels repeated around): a sign farther away in its
    # crop than any training crop (augmentation only zooms in).
    Corruption("scale", "scale", (0.9, 0.8, 0.7), "{label} {pct:.0f}% (zoomed out)", random=False),
)}
CORRUPTIONS: tuple[str, ...] = tuple(TABLE)  # darkness, glare, ..., scale (the table's order)


def corruption_spec(name: str) -> Corruption:
    """The table entry of a corruption; ValueError naming the known ones otherwise."""
    if name not in TABLE:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    return TABLE[name]


def corruption_value(name: str, severity: int) -> float:
    """The table's number for a corruption at a severity (pixel lengths at REFERENCE_SIDE)."""
    spec = corruption_spec(name)
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}; got {severity!r}")
    return spec.values[SEVERITIES.index(severity)]


def describe_corruption(name: str, severity: int) -> str:
    """A corruption at a severity for display: "motion blur 5 px", "JPEG quality 15"."""
    spec, value = corruption_spec(name), corruption_value(name, severity)
    return spec.template.format(label=spec.label, value=value, pct=100 * value)


# ---------------------------------------------------------------- per-image random draws

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: nearby integers in, unrelated 64-bit integers out."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _image_generators(seed: int, name: str, start: int, n: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, corruption, index of the image).

    Severity is left out on purpose, so every severity draws the same spot, angle or noise.
    Folded to 32 bits because torch's CPU generator keeps only the low 32 bits of a seed.
    """
    base = _mix64((int(seed) & _MASK64) ^ (zlib.crc32(name.encode()) << 32))
    generators = []
    for index in range(start, start + n):
        mixed = _mix64(base + index)
        generators.append(torch.Generator().manual_seed((mixed ^ (mixed >> 32)) & 0xFFFFFFFF))
    return generators


def _uniforms(generators: Sequence[torch.Generator], count: int, device: torch.device) -> torch.Tensor:
    """(n, count) uniforms in [0, 1), row i from image i's generator."""
    rows = [torch.rand(count, generator=g) for g in generators]
    return torch.stack(rows).to(device)


def _normals(generators: Sequence[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """(n, *shape) standard normals, image i's from its own generator."""
    return torch.stack([torch.randn(*shape, generator=g) for g in generators]).to(device)


# ---------------------------------------------------------------- the corruptions, on floats in [0, 1]

def _darken(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return pixels * value


def _add_glare(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    n, _, height, width = pixels.shape
    # The spot falls on the middle half of the crop, where the sign is.
    centre = 0.25 + 0.5 * _uniforms(generators, 2, pixels.device)
    ys = (torch.arange(height, device=pixels.device) + 0.5) / height
    xs = (torch.arange(width, device=pixels.device) + 0.5) / width
    dy = ys.view(1, height, 1) - centre[:, 0].view(n, 1, 1)
    dx = xs.view(1, 1, width) - centre[:, 1].view(n, 1, 1)
    spot = torch.exp(-(dx.square() + dy.square()) / (2 * 0.25**2))
    veil = 0.25  # of the peak, everywhere: glare also lowers the contrast of the whole picture
    light = (value * (veil + (1 - veil) * spot)).unsqueeze(1)
    return pixels + light * (1 - pixels)  # screen blend: brighter, never past white


def _blur_matrix(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """(size, size): row i holds the Gaussian weights that blur into pixel i along one axis,
    edge pixels repeated beyond the border (the padding folded into the matrix)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=like.device)
    weights = torch.exp(-0.5 * (offsets.to(like.dtype) / sigma).square())
    weights = (weights / weights.sum()).expand(size, -1).contiguous()
    sources = (torch.arange(size, device=like.device).view(-1, 1) + offsets.view(1, -1)).clamp(0, size - 1)
    return torch.zeros(size, size, dtype=like.dtype, device=like.device).scatter_add_(1, sources, weights)


def _gaussian_blur(pixels: torch.Tensor, sigma: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    # Separable, as two matrix products (columns, then rows): at 256 px (sigma 12, a 73-tap
    # kernel) several times faster on a CPU than a convolution, and exact.
    return _blur_matrix(height, sigma, pixels) @ pixels @ _blur_matrix(width, sigma, pixels).T


def _motion_kernels(length: float, angles: torch.Tensor) -> torch.Tensor:
    """(n, 1, k, k) kernels averaging along a segment of `length` px at each angle (radians).

    A pixel's weight falls linearly with its distance from the segment, up to 1 px: an
    anti-aliased line, symmetric about the centre, so the blur does not shift the image.
    """
    half = (length - 1) / 2
    radius = max(1, math.ceil(half + 1) - 1)
    grid = torch.arange(-radius, radius + 1, dtype=torch.float32, device=angles.device)
    y, x = grid.view(1, -1, 1), grid.view(1, 1, -1)
    cos, sin = torch.cos(angles).view(-1, 1, 1), torch.sin(angles).view(-1, 1, 1)
    along = (x * cos + y * sin).clamp(-half, half)  # nearest point of the segment
    distance = torch.sqrt((x - along * cos).square() + (y - along * sin).square())
    weights = (1 - distance).clamp_min(0)
    return (weights / weights.sum(dim=(1, 2), keepdim=True)).unsqueeze(1)


def _convolve_each(pixels: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each image convolved with its own point-symmetric (k, k) kernel, edges repeated.

    Through the FFT: a 56 px streak on a 256 px image then costs what a 7 px one does. The
    padding is as wide as the kernel's radius, so the circular convolution's wrap-around only
    reaches the padding, and the centre is the plain convolution.
    """
    height, width = pixels.shape[-2:]
    radius = kernels.shape[-1] // 2
    padded = F.pad(pixels, (radius,) * 4, mode="replicate")
    size = padded.shape[-2:]
    placed = torch.zeros(kernels.shape[0], 1, *size, dtype=pixels.dtype, device=pixels.device)
    placed[..., :kernels.shape[-2], :kernels.shape[-1]] = kernels
    placed = torch.roll(placed, shifts=(-radius, -radius), dims=(-2, -1))  # centre at the origin
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(placed), s=size)
    return out[..., radius:radius + height, radius:radius + width]


def _motion_blur(pixels: torch.Tensor, length: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    angles = _uniforms(generators, 1, pixels.device)[:, 0] * math.pi  # a streak and its reverse are one
    return _convolve_each(pixels, _motion_kernels(length, angles).to(pixels.dtype))


def _add_noise(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    return pixels + _normals(generators, pixels.shape[1:], pixels.device) * (value / 255)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W, 3) uint8 image encoded as JPEG at a quality and decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _compress_jpeg(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    # Pillow on the CPU whatever the device: the libjpeg that codes real photos, one result on
    # every device, and torchvision.io's JPEG functions are deprecated since torchvision 0.29.
    images = _to_uint8(pixels).permute(0, 2, 3, 1).cpu().numpy()
    coded = np.stack([_jpeg_round_trip(image, int(value)) for image in images])
    return torch.from_numpy(coded).permute(0, 3, 1, 2).to(pixels.device).float().div_(255)


def _occlude(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    n, _, height, width = pixels.shape
    draws = _uniforms(generators, 4, torch.device("cpu")).double()
    area = value * height * width
    aspect = torch.exp((draws[:, 0] * 2 - 1) * math.log(2))  # width / height, 1:2 to 2:1
    box_h = torch.sqrt(area / aspect).round().clamp(1, height)
    # Width from the rounded height, so the covered share stays within a row of the table's.
    box_w = (area / box_h).round().clamp(1, width)
    # The box's centre on the middle half of the crop, where the sign is (moved in to fit).
    top = ((0.25 + 0.5 * draws[:, 1]) * height - box_h / 2).round().clamp(min=0).minimum(height - box_h)
    left = ((0.25 + 0.5 * draws[:, 2]) * width - box_w / 2).round().clamp(min=0).minimum(width - box_w)
    fill = torch.where(draws[:, 3] < 0.5, 0.0, 128 / 255)  # black or mid-grey, like a post or a sticker
    rows, cols = torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)
    inside_rows = (rows.view(1, -1) >= top.view(-1, 1)) & (rows.view(1, -1) < (top + box_h).view(-1, 1))
    inside_cols = (cols.view(1, -1) >= left.view(-1, 1)) & (cols.view(1, -1) < (left + box_w).view(-1, 1))
    mask = (inside_rows.unsqueeze(2) & inside_cols.unsqueeze(1)).unsqueeze(1).to(pixels.device)
    return torch.where(mask, fill.to(pixels).view(n, 1, 1, 1), pixels)


def _warp(pixels: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    # "border" repeats the edge pixels, as training's augmentation does: no black frame as a cue.
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rotate(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    n, _, height, width = pixels.shape
    sign = torch.where(_uniforms(generators, 1, pixels.device)[:, 0] < 0.5, -1.0, 1.0)
    angle = sign * math.radians(value)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid works in coordinates normalised per axis: the aspect terms keep a
    # non-square image's rotation a rotation, not a shear.
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin * height / width, zeros], 1),
                         torch.stack([sin * width / height, cos, zeros], 1)], 1)
    return _warp(pixels, theta.to(pixels))


def _zoom_out(pixels: torch.Tensor, value: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    theta = torch.tensor([[1 / value, 0.0, 0.0], [0.0, 1 / value, 0.0]], dtype=pixels.dtype, device=pixels.device)
    return _warp(pixels, theta.expand(pixels.shape[0], 2, 3))


_APPLY: dict[str, Callable[[torch.Tensor, float, Sequence[torch.Generator]], torch.Tensor]] = {
    "darkness": _darken, "glare": _add_glare, "gaussian_blur": _gaussian_blur, "motion_blur": _motion_blur,
    "noise": _add_noise, "jpeg": _compress_jpeg, "occlusion": _occlude, "rotation": _rotate, "scale": _zoom_out,
}


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise ValueError(f"corrupt takes uint8 images (N, 3, H, W); got {shape} {dtype}")


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0, start: int = 0) -> torch.Tensor:
    """A corrupted copy of a uint8 batch (N, 3, H, W): same shape, dtype and device.

    Deterministic for (seed, name, severity) and the images' indices (`start` is the index
    of the first image, so a split corrupted in chunks equals the split corrupted at once).
    The input is never changed, and nothing mirrors the image.
    """
    value = corruption_value(name, severity)
    _check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    if TABLE[name].in_pixels:
        value *= min(images.shape[-2:]) / REFERENCE_SIDE
    # Only the random corruptions need generators, and making them is most of a small batch's time.
    generators = _image_generators(seed, name, start, images.shape[0]) if TABLE[name].random else []
    pixels = images.float().div_(255)  # a new tensor: the caller's images stay as they were
    return _to_uint8(_APPLY[name](pixels, value, generators))


# ---------------------------------------------------------------- accuracy under corruption

def _check_grid(names: Sequence[str], severities: Sequence[int]) -> None:
    for name in names:
        for severity in severities:
            corruption_value(name, severity)


def evaluate_corruptions(predictor: Any, images: torch.Tensor, labels: np.ndarray, *,
                         names: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                         seed: int = 0, batch_size: int = 256,
                         progress: Progress | None = None) -> list[dict[str, Any]]:
    """Accuracy on the clean images, then under each corruption at each severity.

    `images`: stored uint8 tensors (N, 3, S, S), as `predict.evaluate_split` loads them;
    `labels`: the run's class indices. Rows: {"corruption": "clean" or a name, "severity": 0 or
    1-3, "accuracy", "n", "correct"}, the clean row first. `progress(batches done, batches)`.
    """
    _check_grid(names, severities)
    labels = np.asarray(labels)
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    device = getattr(predictor, "device", None)
    grid: list[tuple[str | None, int]] = [(None, 0)] + [(name, s) for name in names for s in severities]
    correct = [0] * len(grid)
    starts = range(0, len(images), batch_size)
    # Batches outside, corruptions inside: a memory-mapped split is read, and sent to the
    # device, once rather than once per corruption.
    for done, start in enumerate(starts, 1):
        clean = images[start:start + batch_size]
        clean = clean.to(device) if device is not None else clean  # corrupt where the model runs
        truth = labels[start:start + batch_size]
        for position, (name, severity) in enumerate(grid):
            batch = clean if name is None else corrupt(clean, name, severity, seed=seed, start=start)
            predicted = np.asarray(predictor.probabilities(batch)).argmax(axis=1)
            correct[position] += int((predicted == truth).sum())
        if progress is not None:
            progress(done, len(starts))
    return [{"corruption": name or "clean", "severity": severity, "accuracy": hits / len(images),
             "n": len(images), "correct": hits} for (name, severity), hits in zip(grid, correct, strict=True)]


def worst_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The corrupted row with the lowest accuracy (first in table order on a tie), described."""
    corrupted = [row for row in rows if row["corruption"] != "clean"]
    if not corrupted:
        raise ValueError("no corrupted rows")
    worst = dict(min(corrupted, key=lambda row: row["accuracy"]))
    worst["description"] = describe_corruption(worst["corruption"], worst["severity"])
    return worst


def mean_corruption_accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    """Mean accuracy over the corrupted rows (clean left out): the run that degrades least has the most."""
    corrupted = [float(row["accuracy"]) for row in rows if row["corruption"] != "clean"]
    if not corrupted:
        raise ValueError("no corrupted rows")
    return float(np.mean(corrupted))


def robustness_frame(rows_by_run: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per run, corruption and severity (clean as severity 0): the heat map's data."""
    records = [{"run": run, "corruption": row["corruption"], "severity": int(row["severity"]),
                "accuracy": float(row["accuracy"])}
               for run, rows in rows_by_run.items() for row in rows]
    return pd.DataFrame(records, columns=["run", "corruption", "severity", "accuracy"])


def load_eval_images(predictor: Any, data_dir: Path | str, *, split: str = "val") -> tuple[torch.Tensor, np.ndarray]:
    """A split's stored uint8 images and the run's labels, loaded as `predict.evaluate_split` loads them.

    The val split is drawn as the run drew it (its val_fraction and seed); "all" is every image
    of the folder; classes are matched to the run's by name. UserError for bad input.
    """
    from speedsign.predict import load_split

    tensors, labels = load_split(predictor, data_dir, split=split)
    if not len(tensors):
        raise UserError(f"no readable images in the {split} split of {data_dir}")
    return tensors.images, labels


def corruption_report(predictor: Any, data_dir: Path | str, *, split: str = "val", seed: int = 0,
                      names: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                      batch_size: int = 256, progress: Progress | None = None) -> dict[str, Any]:
    """A run's accuracy on a split, clean and under each corruption at each severity (JSON-able).

    {"split", "n", "seed", "rows", "worst", "clean_accuracy", "mean_corruption_accuracy"};
    "worst" is the lowest corrupted row with its "description". UserError for bad input.
    """
    try:
        _check_grid(names, severities)
    except ValueError as error:  # a name or severity typed by a user
        raise UserError(str(error)) from None
    images, labels = load_eval_images(predictor, data_dir, split=split)
    rows = evaluate_corruptions(predictor, images, labels, names=names, severities=severities, seed=seed,
                                batch_size=batch_size, progress=progress)
    return {"split": split, "n": len(labels), "seed": int(seed), "rows": rows, "worst": worst_row(rows),
            "clean_accuracy": rows[0]["accuracy"], "mean_corruption_accuracy": mean_corruption_accuracy(rows)}
