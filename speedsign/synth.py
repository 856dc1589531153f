"""Synthetic German speed-limit signs: the offline default data set.

The recipe follows da Silva and Fernandes (2022), whose template-only synthetic GTSRB
trains a CNN to 99.4% on real photos. What matters is not realism but the statistics of real
crops:
- the face is drawn as the real sign: DIN 1451 Mittelschrift-like digits (bold, narrow, one
  stroke width, drawn as vector strokes and arcs) in a red ring on a white disc; "end of 80"
  is a grey-ringed disc with grey digits and diagonal stripes over them;
- it is then rendered **small** (18-48 px, a fifth at 12-17 px) with area resampling and a
  7-25% margin, and resized to the output size: the blur and aliasing of real crops;
- brightness is drawn from a dark prior, Perlin-like noise is blended in, small samples get
  "confetti", hues and saturation shift, the sign rotates and tilts, motion blurs it.

Every drawn number comes from a `RenderSettings` range (saved with the set as synth.json), and
every frame's draw is a `FrameParams`, so tests can check each degradation stays in its range.
Signs come in tracks like GTSRB: the frames of one track are one physical sign (face, paint,
pose, light, background) seen at growing sizes, so splits by track are honest. Every
(seed, class, track) has its own generator: the same seed renders byte-identical PNGs with the
same Pillow and numpy, in any order and with any number of worker processes.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import concurrent.futures.process
import contextlib
import functools
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, PngImagePlugin  # noqa: F401 (imported before workers fork)

from speedsign.errors import UserError

CLASS_NAMES: tuple[str, ...] = (
    "speed_20", "speed_30", "speed_50", "speed_60", "speed_70",
    "speed_80", "end_speed_80", "speed_100", "speed_120",
)
MAX_PER_CLASS = 100_000
SIZE_RANGE = (16, 512)
BACKGROUND_NOISE_GAIN = 4.0
FACE_PX = 128  # side of the flat sign face before it is warped and shrunk
_SUPERSAMPLE = 3  # faces are drawn at 3x and reduced once: smooth edges without a font
INFO_NAME = "synth.json"
# The default set, rendered on first start: 27,000 images at GTSRB's 32 px in tracks of 2 frames
# (13,500 physical signs), in 16-22 s on 2 cores. Within the same training time, more signs
# read more real photos: on the tuning tracks, 1,500 a class in tracks of 5 read 88.8%, 3,000
# in tracks of 5 91.8%, 3,000 in tracks of 2 93.1% (README, "Synthetic signs that read real
# photos", has every run and how far identical runs spread).
DEFAULT_PER_CLASS = 3000
DEFAULT_FRAMES_PER_TRACK = 2
DEFAULT_SIZE = 32

Range = tuple[float, float]


@dataclass(frozen=True)
class RenderSettings:
    """Every probability and range the renderer draws from (saved with the set).

    Chosen by measurement on real GTSRB photos (docs/benchmarks.md, "Synthetic to real").
    """

    sign_px: tuple[int, int] = (18, 48)  # side the sign is rendered at before resizing
    small_px: tuple[int, int] = (12, 17)  # ... for the small fraction
    small_fraction: float = 0.2
    # Background on each side, of the frame side. GTSRB crops keep a 10% border (at least 5 px,
    # so more around small signs); the paper's 7-21% drew signs smaller than GTSRB's.
    margin: Range = (0.05, 0.14)
    small_margin: Range = (0.20, 0.25)
    # Mean value (HSV V, 0..255) of the sign: a Johnson SB law, (a, b, low, width), which da
    # Silva and Fernandes fitted to German GTSRB signs (median 86: GTSRB is dark).
    brightness: tuple[float, float, float, float] = (0.747, 0.907, 7.099, 259.904)
    hue_degrees: Range = (-12.0, 20.0)
    hue_probability: float = 0.8
    saturation: Range = (0.4, 2.0)
    saturation_probability: float = 0.8
    rotate_degrees: float = 15.0
    rotate_probability: float = 0.7
    # Each corner moves inwards by this fraction of the side. The paper's 5-25% squashes discs
    # into ellipses far flatter than GTSRB's signs, which face the road.
    perspective: Range = (0.02, 0.12)
    perspective_probability: float = 0.6
    noise_weight: float = 0.4  # Perlin-like noise blended into the sign
    confetti_probability: float = 0.5  # on small samples only
    confetti_patches: tuple[int, int] = (1, 12)
    confetti_side: float = 0.08  # side of one patch, of the face side
    motion_blur_probability: float = 0.3
    motion_blur_px: tuple[int, int] = (2, 5)
    sensor_noise: Range = (0.0, 6.0)  # Gaussian standard deviation, 0..255 units
    chroma_probability: float = 0.3  # colour fringes of a cheap lens and Bayer demosaicing
    chroma_px: Range = (0.3, 1.0)  # red and blue shifted apart by this much, in output pixels
    # Backgrounds: two colours mixed by fractal noise (streets, trees and sky are not plain). Each
    # colour's value is the sign's over a log-uniform ratio: GTSRB signs are mostly brighter than
    # what is around them (real crops: centre/border median 1.5), and lit by the same light.
    background_saturation: Range = (0.0, 0.5)  # HSV saturation of each colour: streets are muted
    background_ratio: Range = (0.4, 4.0)  # the sign's brightness over the background's
    background_texture: Range = (0.3, 1.0)  # how much of the second colour the noise mixes in, at most
    # Light that the brightness law misses, one track in each case: a sign against a bright sky
    # (a dark disc whose red ring hardly shows, which real photos of every class have), and a
    # sunlit sign whose glare spreads into its strokes (thin, pale digits). Without them, dark
    # speed signs were read as "end of 80" and glaring ones as the wrong number.
    backlight_probability: float = 0.15
    backlight_value: Range = (12.0, 70.0)  # mean value of the backlit sign, 0..255
    backlight_ratio: Range = (0.1, 0.35)  # ... over the sky's (clipped at 255)
    glare_probability: float = 0.15
    glare_value: Range = (200.0, 330.0)  # mean value of the sign before clipping: it saturates
    glare_px: Range = (0.4, 1.2)  # Gaussian radius, in output pixels, of the light spilling over
    face_variants: int = 4  # faces per class, each with its own proportions drawn from the four ranges below
    # Proportions of a face (sign 274 of the StVO: digits about 0.45-0.5 of the diameter high,
    # condensed, one stroke about 1/8 of their height; a red ring about a fifth of the radius).
    ring_width: Range = (0.17, 0.23)  # of the radius
    digit_height: Range = (0.44, 0.50)  # of the diameter
    stroke_width: Range = (0.115, 0.14)  # of the digit height
    digit_width: Range = (0.50, 0.56)  # of the digit height

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("probability") or f.name in ("small_fraction", "noise_weight"):
                if not 0.0 <= value <= 1.0:
                    raise UserError(f"renderer setting {f.name} must be 0-1, got {value!r}")
            elif isinstance(value, tuple) and len(value) == 2 and not value[0] <= value[1]:
                raise UserError(f"renderer setting {f.name} must be (low, high), got {value!r}")
        if self.backlight_probability + self.glare_probability > 1:
            raise UserError("backlight_probability and glare_probability must add up to at most 1")
        if not (1 <= self.motion_blur_px[0] and self.motion_blur_px[1] <= 5):
            raise UserError(f"motion_blur_px must lie in 1-5 (a 5x5 kernel), got {self.motion_blur_px!r}")
        if not (1 <= self.sign_px[0] and 1 <= self.small_px[0] and 1 <= self.face_variants):
            raise UserError("renderer sizes and face_variants must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise UserError(f"unknown renderer settings: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


DEFAULT_SETTINGS = RenderSettings()


@dataclass(frozen=True)
class TrackParams:
    """What stays the same for every frame of one physical sign."""

    variant: int  # which face variant
    hue: float  # degrees, 0 when not shifted
    saturation: float  # factor, 1 when not changed
    brightness: float  # target mean value of the sign (the law reaches 267, glare 330: clipped at 255)
    light: str  # "law" (the brightness law), "backlight" or "glare"
    glare: float  # radius of the spilled light in output pixels, 0 = none
    background: tuple[int, int, int]
    background_mix: tuple[int, int, int]  # the second colour, mixed in by noise
    texture: float  # share of background_mix where the noise is 1
    angle: float  # degrees
    corners: tuple[float, ...]  # 8 inward moves (fractions of the side), zeros when flat
    small: bool
    px_start: int  # sign side of the first frame ...
    px_end: int  # ... and of the last: the car approaches
    margin: float
    noise_seed: int


@dataclass(frozen=True)
class FrameParams:
    """What changes from frame to frame of a track."""

    px: int
    offset: tuple[float, float]  # where the sign sits in the free margin, 0..1 each way
    confetti: int  # number of patches
    motion_blur: int  # kernel length in pixels, 0 = none
    blur_angle: float
    sensor_noise: float
    chroma: float  # red-blue shift in output pixels, 0 = none


@dataclass(frozen=True)
class SynthReport:
    """What `render_dataset` wrote."""

    out: Path
    n_images: int
    per_class: int
    seed: int
    size: int
    frames_per_track: int
    seconds: float


# ---------------------------------------------------------------- the faces

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 24) -> Stroke:
    """Points on an ellipse arc; angles in degrees, 0 = right, 90 = down (image axes)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(start, end, n)]


def digit_strokes(digit: str, *, width: float, stroke: float) -> list[Stroke]:
    """Centre lines of a DIN 1451-like digit in a box `width` wide and 1 high (y down).

    Lines are inset by half the stroke, so a stroke drawn on them fills the box exactly.
    """
    x0, x1, y0, y1 = stroke / 2, width - stroke / 2, stroke / 2, 1 - stroke / 2
    xm, r = (x0 + x1) / 2, (x1 - x0) / 2
    h = y1 - y0
    if digit == "0":
        return [_arc(xm, y0 + r, r, r, 180, 360) + _arc(xm, y1 - r, r, r, 0, 180)
                + [(x0, y0 + r)]]
    if digit == "1":
        stem = xm + 0.18 * width
        return [[(stem, y0), (stem, y1)], [(stem, y0), (x0 + 0.05 * width, y0 + 0.3 * h)]]
    if digit == "2":
        top = 0.30 * h
        return [_arc(xm, y0 + top, r, top, 195, 360)
                + _arc(xm, y0 + top, r, top, 0, 40, 6) + [(x0, y1), (x1 + stroke / 2, y1)]]
    if digit == "3":
        top, bottom = 0.24 * h, 0.27 * h
        middle = y0 + 2 * top
        return [_arc(xm, y0 + top, r * 0.92, top, 200, 450)[:-1] + [(xm - 0.1 * width, middle)],
                [(xm - 0.1 * width, middle)] + _arc(xm, y1 - bottom, r, bottom, -90, 150)]
    if digit == "5":
        bowl = 0.30 * h
        cy = y1 - bowl
        join = _arc(xm, cy, r, bowl, -145, -145, 1)[0]
        return [[(x1, y0), (x0 + 0.06 * width, y0), (join[0], join[1])]
                + _arc(xm, cy, r, bowl, -145, 150)]
    if digit == "6":
        bowl = 0.29 * h
        cy = y1 - bowl
        return [_arc(xm, cy, r, bowl, 0, 360),
                _arc(x1, cy, x1 - x0, cy - y0, -110, -180) + _arc(xm, cy, r, bowl, 180, 200, 3)]
    if digit == "7":
        return [[(x0, y0), (x1, y0), (xm - 0.12 * width, y1)]]
    if digit == "8":
        top, bottom = 0.22 * h, 0.27 * h
        return [_arc(xm, y0 + top, r * 0.86, top, 0, 360), _arc(xm, y1 - bottom, r, bottom, 0, 360)]
    raise ValueError(f"no strokes for digit {digit!r}")


@dataclass(frozen=True)
class FaceStyle:
    """One variant of a class's face: proportions that differ between real signs."""

    ring: float  # red ring width, of the radius
    digit_height: float  # of the diameter
    stroke: float  # of the digit height
    narrow: float  # digit width, of its height


FACE_STYLE_SEED = 274  # the StVO's number of the sign: variant k has the same proportions in every set


def face_style(variant: int, settings: RenderSettings = DEFAULT_SETTINGS) -> FaceStyle:
    """Variant `variant`'s proportions, drawn from the settings' ranges (the same variant, the same style)."""
    rng = np.random.default_rng([FACE_STYLE_SEED, variant])
    return FaceStyle(ring=_between(rng, settings.ring_width), digit_height=_between(rng, settings.digit_height),
                     stroke=_between(rng, settings.stroke_width), narrow=_between(rng, settings.digit_width))


def draw_digits(draw: ImageDraw.ImageDraw, text: str, *, px: int, style: FaceStyle,
                colour: tuple[int, int, int, int]) -> None:
    """`text` centred on a face `px` wide, one constant stroke width throughout."""
    height = style.digit_height * px * (0.92 if len(text) == 3 else 1.0)
    width = style.narrow * height * (0.84 if len(text) == 3 else 1.0)
    gap = 0.10 * height
    total = len(text) * width + (len(text) - 1) * gap
    left, top = (px - total) / 2, (px - height) / 2
    line = max(1, round(style.stroke * height))
    for k, digit in enumerate(text):
        x = left + k * (width + gap)
        for stroke in digit_strokes(digit, width=width / height, stroke=style.stroke):
            points = [(x + u * height, top + v * height) for u, v in stroke]
            draw.line(points, fill=colour, width=line, joint="curve")
            for point in (points[0], points[-1]):  # round ends, as a pen would leave
                radius = line / 2 - 0.5
                draw.ellipse((point[0] - radius, point[1] - radius, point[0] + radius, point[1] + radius),
                             fill=colour)


@functools.lru_cache(maxsize=1024)
def draw_face(class_name: str, variant: int = 0, settings: RenderSettings = DEFAULT_SETTINGS) -> Image.Image:
    """The flat sign as RGBA on a transparent FACE_PX square (cached: drawn once per process)."""
    if class_name not in CLASS_NAMES:
        raise UserError(f"unknown class {class_name!r}; expected one of {', '.join(CLASS_NAMES)}")
    style = face_style(variant, settings)
    px = FACE_PX * _SUPERSAMPLE
    # Pillow premultiplies alpha when it resamples, so transparent pixels leave no fringe.
    face = Image.new("RGBA", (px, px), (128, 128, 128, 0))
    draw = ImageDraw.Draw(face)
    white, red, black = (245, 245, 240, 255), (200, 20, 30, 255), (20, 20, 20, 255)
    draw.ellipse((0, 0, px - 1, px - 1), fill=white)
    if class_name == "end_speed_80":
        grey = (85, 85, 85, 255)  # the digits and rim are a dark grey, not black
        rim = round(px * 0.03)
        draw.ellipse((rim, rim, px - 1 - rim, px - 1 - rim), outline=grey, width=round(px * 0.025))
        draw_digits(draw, "80", px=px, style=style, colour=grey)
        stripes = Image.new("L", (px, px), 0)
        lines = ImageDraw.Draw(stripes)
        spacing, width = 0.045 * px, round(px * 0.018)
        for k in range(-2, 3):  # five thin "/" stripes through the centre
            off = k * spacing * math.sqrt(2)
            lines.line((off, px + off, px + off, off), fill=255, width=width)
        disc = Image.new("L", (px, px), 0)
        ImageDraw.Draw(disc).ellipse((rim, rim, px - 1 - rim, px - 1 - rim), fill=255)
        mask = Image.fromarray(np.minimum(np.asarray(stripes), np.asarray(disc)))
        face.paste(Image.new("RGBA", (px, px), (40, 40, 40, 255)), (0, 0), mask)
    else:
        rim = round(px * 0.02)  # the thin white edge outside the red ring
        draw.ellipse((rim, rim, px - 1 - rim, px - 1 - rim), fill=red)
        inner = rim + round(px / 2 * style.ring)
        draw.ellipse((inner, inner, px - 1 - inner, px - 1 - inner), fill=white)
        draw_digits(draw, class_name.removeprefix("speed_"), px=px, style=style, colour=black)
    return face.reduce(_SUPERSAMPLE)


def warp_side(settings: RenderSettings = DEFAULT_SETTINGS) -> int:
    """Side the face is warped at: the largest sign drawn with a third to spare, at most FACE_PX.

    Warping is the costliest step of a track; at 64 px instead of 128 it costs a quarter, and
    every frame (at most 48 px) is still shrunk from a larger image with area resampling.
    """
    largest = max(settings.sign_px[1], settings.small_px[1])
    return min(FACE_PX, max(32, math.ceil(largest * 4 / 3)))


@functools.lru_cache(maxsize=1024)
def working_face(class_name: str, variant: int = 0, settings: RenderSettings = DEFAULT_SETTINGS) -> Image.Image:
    """The flat face at `warp_side`: what a track warps (cached: shrunk once per process)."""
    side = warp_side(settings)
    return draw_face(class_name, variant, settings).resize((side, side), Image.Resampling.BOX)


# ---------------------------------------------------------------- drawing the parameters

def _between(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def draw_brightness(rng: np.random.Generator, law: tuple[float, float, float, float]) -> float:
    """A draw of the Johnson SB law (a, b, low, width): low + width / (1 + exp(-(z - a) / b))."""
    a, b, low, width = law
    return low + width / (1 + math.exp(-(float(rng.standard_normal()) - a) / b))


def draw_background(rng: np.random.Generator, *, saturation: Range, ratio: Range,
                    sign_value: float) -> tuple[int, int, int]:
    """A background colour: any hue, HSV saturation from `saturation`, and the value of the sign
    (`sign_value`, 0..255) over a log-uniform draw of `ratio`, clipped to 255."""
    hue = float(rng.random())
    sat = _between(rng, saturation)
    value = min(255.0, sign_value / math.exp(_between(rng, (math.log(ratio[0]), math.log(ratio[1])))))
    rgb = colorsys.hsv_to_rgb(hue, sat, value / 255)
    return tuple(int(round(255 * c)) for c in rgb)


def draw_light(rng: np.random.Generator, s: RenderSettings) -> tuple[str, float, Range]:
    """How one track is lit: its kind, the sign's mean value, and the sign-over-background range."""
    u = float(rng.random())
    if u < s.backlight_probability:
        return "backlight", _between(rng, s.backlight_value), s.backlight_ratio
    if u < s.backlight_probability + s.glare_probability:
        return "glare", _between(rng, s.glare_value), s.background_ratio
    return "law", draw_brightness(rng, s.brightness), s.background_ratio


def draw_track_params(rng: np.random.Generator, settings: RenderSettings) -> TrackParams:
    """Draw one physical sign: face variant, paint, light, pose, size and background."""
    s = settings
    small = bool(rng.random() < s.small_fraction)
    low, high = s.small_px if small else s.sign_px
    ends = sorted(int(v) for v in rng.integers(low, high + 1, size=2))
    corners = (tuple(float(v) for v in rng.uniform(*s.perspective, size=8))
               if rng.random() < s.perspective_probability else (0.0,) * 8)
    light, brightness, ratio = draw_light(rng, s)
    return TrackParams(
        variant=int(rng.integers(s.face_variants)),
        hue=_between(rng, s.hue_degrees) if rng.random() < s.hue_probability else 0.0,
        saturation=_between(rng, s.saturation) if rng.random() < s.saturation_probability else 1.0,
        brightness=brightness, light=light,
        glare=_between(rng, s.glare_px) if light == "glare" else 0.0,
        background=draw_background(rng, saturation=s.background_saturation, ratio=ratio,
                                   sign_value=min(255.0, brightness)),
        background_mix=draw_background(rng, saturation=s.background_saturation, ratio=ratio,
                                       sign_value=min(255.0, brightness)),
        texture=_between(rng, s.background_texture),
        angle=float(rng.uniform(-s.rotate_degrees, s.rotate_degrees))
        if rng.random() < s.rotate_probability else 0.0,
        corners=corners, small=small, px_start=ends[0], px_end=ends[1],
        margin=_between(rng, s.small_margin if small else s.margin),
        noise_seed=int(rng.integers(2**31)),
    )


def draw_frame_params(rng: np.random.Generator, track: TrackParams, settings: RenderSettings,
                      *, k: int, n_frames: int) -> FrameParams:
    """Frame `k` of `n_frames`: later frames are closer, so the sign is bigger."""
    s = settings
    progress = k / (n_frames - 1) if n_frames > 1 else 1.0
    confetti = (int(rng.integers(s.confetti_patches[0], s.confetti_patches[1] + 1))
                if track.small and rng.random() < s.confetti_probability else 0)
    blur = (int(rng.integers(s.motion_blur_px[0], s.motion_blur_px[1] + 1))
            if rng.random() < s.motion_blur_probability else 0)
    return FrameParams(
        px=round(track.px_start + (track.px_end - track.px_start) * progress),
        offset=(float(rng.random()), float(rng.random())),
        confetti=confetti, motion_blur=blur, blur_angle=float(rng.uniform(0, 180)),
        sensor_noise=_between(rng, s.sensor_noise),
        chroma=_between(rng, s.chroma_px) if rng.random() < s.chroma_probability else 0.0,
    )


# ---------------------------------------------------------------- rendering

@functools.lru_cache(maxsize=1)
def noise_field(side: int = 256) -> np.ndarray:
    """Fractal value noise in [0, 1], the same in every process: a stand-in for Perlin noise."""
    rng = np.random.default_rng(1451)
    total = np.zeros((side, side), dtype=np.float32)
    weight = 0.0
    for octave in range(6):
        cells = 4 * 2**octave
        grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
        amplitude = 0.5**octave
        total += amplitude * np.asarray(grid.resize((side, side), Image.Resampling.BICUBIC))
        weight += amplitude
    total /= weight
    return (total - total.min()) / (total.max() - total.min())


def noise_patch(rng: np.random.Generator, px: int, *, zoom: tuple[int, int] = (4, 2)) -> np.ndarray:
    """A random crop of the noise field, between 1/zoom[0] and 1/zoom[1] of its side, shrunk to
    px x px: the larger the crop, the finer the texture."""
    field = noise_field()
    side = int(rng.integers(field.shape[0] // zoom[0], field.shape[0] // zoom[1] + 1))
    y, x = (int(v) for v in rng.integers(0, field.shape[0] - side + 1, size=2))
    crop = Image.fromarray(field[y:y + side, x:x + side], mode="F")
    return np.asarray(crop.resize((px, px), Image.Resampling.BOX))


def warp_face(face: Image.Image, track: TrackParams) -> Image.Image:
    """Rotation and perspective in one transform of the face (corners move inwards)."""
    px = face.width
    src = np.array([[0, 0], [px, 0], [px, px], [0, px]], dtype=np.float64)
    inwards = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float64)
    moves = np.array(track.corners, dtype=np.float64).reshape(4, 2) * px * inwards
    dst = src + moves
    angle = math.radians(track.angle)
    centre = np.array([px / 2, px / 2])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = (dst - centre) @ rot.T + centre
    # Fit the warped sign back into the square, so its size is what the frame says.
    lo, hi = dst.min(axis=0), dst.max(axis=0)
    dst = (dst - lo) / (hi - lo).max() * px + (px - (hi - lo) / (hi - lo).max() * px) / 2
    return face.transform((px, px), Image.Transform.PERSPECTIVE, perspective_coeffs(dst, src),
                          Image.Resampling.BILINEAR, fillcolor=(128, 128, 128, 0))


def perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points `dst` to input `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows), src.reshape(8)).tolist())


def add_confetti(face: Image.Image, rng: np.random.Generator, *, patches: int, side: float) -> Image.Image:
    """Random solid-colour squares on the sign (only where it is opaque)."""
    if not patches:
        return face
    face = face.copy()
    rgba = np.asarray(face).copy()
    px = face.width
    edge = max(1, round(side * px))
    for _ in range(patches):
        y, x = (int(v) for v in rng.integers(0, px - edge, size=2))
        rgba[y:y + edge, x:x + edge, :3] = rng.integers(0, 256, size=3)
    return Image.fromarray(rgba, mode="RGBA")


def shift_colour(rgb: np.ndarray, *, hue: float, saturation: float) -> np.ndarray:
    """Rotate the hue by `hue` degrees and scale the saturation (uint8 HxWx3 in, out)."""
    image = Image.fromarray(rgb, mode="RGB")
    if hue:
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue / 360 * 256)) % 256
        image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    if saturation != 1.0:
        image = ImageEnhance.Color(image).enhance(saturation)
    return np.asarray(image)


def add_glare(canvas: np.ndarray, *, radius: float) -> np.ndarray:
    """Spread the light above 255 over `radius` pixels, as a lens and sensor do: it brightens
    the dark strokes next to a saturated disc, so the digits come out thin and pale."""
    # The excess stays under 255 (glare_value is at most 1.3x white), so it fits an 8-bit image.
    excess = np.clip(canvas - 255.0, 0.0, 255.0).round().astype(np.uint8)
    spread = Image.fromarray(excess, mode="RGB").filter(ImageFilter.GaussianBlur(radius))
    return canvas + np.asarray(spread, dtype=np.float32)


def motion_kernel(length: int, angle: float) -> ImageFilter.Kernel:
    """A 5x5 kernel averaging along a line of `length` (1-5) pixels at `angle` degrees."""
    if not 1 <= length <= 5:
        raise ValueError(f"motion blur length must be 1-5 px (a 5x5 kernel), got {length}")
    kernel = np.zeros((5, 5), dtype=np.float64)
    dx, dy = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    # Sample the segment of `length` pixels centred on the middle pixel densely and count the
    # samples per pixel: symmetric for every length and angle, and never outside the 5x5.
    half = length / 2 - 1e-6
    for t in np.linspace(-half, half, 16 * length):
        kernel[math.floor(2.5 + t * dy), math.floor(2.5 + t * dx)] += 1
    kernel /= kernel.sum()
    return ImageFilter.Kernel((5, 5), kernel.reshape(-1).tolist(), scale=1)


def shift_channels(image: Image.Image, shift: float) -> Image.Image:
    """Red moved right and blue left by half of `shift` pixels each (bilinear): colour fringes."""
    red, green, blue = image.split()

    def moved(channel: Image.Image, dx: float) -> Image.Image:
        return channel.transform(channel.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, 0),
                                 Image.Resampling.BILINEAR)

    return Image.merge("RGB", (moved(red, shift / 2), green, moved(blue, -shift / 2)))


def render_frame(class_name: str, track: TrackParams, frame: FrameParams, *,
                 rng: np.random.Generator, size: int, settings: RenderSettings,
                 warped: Image.Image | None = None) -> Image.Image:
    """One frame: warp, confetti, shrink, colour, noise, light, background, blur, resize.

    `warped` is the track's face after `warp_face`, when the caller has it: the pose is the
    same for every frame of a track, so render_track warps once (the warp is the costliest step).
    """
    face = warped if warped is not None else warp_face(working_face(class_name, track.variant, settings), track)
    face = add_confetti(face, rng, patches=frame.confetti, side=settings.confetti_side)
    small = np.asarray(face.resize((frame.px, frame.px), Image.Resampling.BOX), dtype=np.float32)
    alpha = small[..., 3:] / 255
    rgb = shift_colour(small[..., :3].round().astype(np.uint8), hue=track.hue,
                       saturation=track.saturation).astype(np.float32)
    noise = noise_patch(np.random.default_rng([track.noise_seed, frame.px]), frame.px)
    rgb = (1 - settings.noise_weight) * rgb + settings.noise_weight * 255 * noise[..., None]
    value = rgb.max(axis=2)
    opaque = alpha[..., 0] > 0.5
    mean = float(value[opaque].mean()) if opaque.any() else 1.0
    rgb = rgb * (track.brightness / max(mean, 1.0))
    canvas_px = max(frame.px + 2, round(frame.px / (1 - 2 * track.margin)))
    # Finer noise than the sign's: leaves, walls and sky at a distance.
    field = noise_patch(np.random.default_rng([track.noise_seed, frame.px, 1]), canvas_px, zoom=(2, 1))
    # Fractal noise sits near its mean: stretched, it leaves patches of either colour, as real scenes do.
    field = np.clip((field - field.mean()) * BACKGROUND_NOISE_GAIN + 0.5, 0.0, 1.0)
    mix = track.texture * field[..., None]
    base, other = (np.array(c, dtype=np.float32) for c in (track.background, track.background_mix))
    canvas = (base * (1 - mix) + other * mix).astype(np.float32)
    free = canvas_px - frame.px
    # The sign stays near the middle, as in a GTSRB crop: at most 40% of the margin off-centre.
    y = round(free * (0.5 + 0.4 * (frame.offset[1] - 0.5)))
    x = round(free * (0.5 + 0.4 * (frame.offset[0] - 0.5)))
    window = canvas[y:y + frame.px, x:x + frame.px]
    window[:] = window * (1 - alpha) + rgb * alpha
    if track.glare:
        canvas = add_glare(canvas, radius=track.glare * canvas_px / size)
    image = Image.fromarray(canvas.clip(0, 255).round().astype(np.uint8), mode="RGB")
    if frame.motion_blur:
        image = image.filter(motion_kernel(frame.motion_blur, frame.blur_angle))
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    if frame.chroma:
        image = shift_channels(image, frame.chroma)
    if frame.sensor_noise:
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0, frame.sensor_noise, size=pixels.shape).astype(np.float32)
        image = Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), mode="RGB")
    return image


def render_track(class_name: str, *, rng: np.random.Generator, size: int = DEFAULT_SIZE,
                 n_frames: int = DEFAULT_FRAMES_PER_TRACK,
                 settings: RenderSettings = DEFAULT_SETTINGS) -> list[Image.Image]:
    """`n_frames` images of one physical sign, growing as the car approaches."""
    if class_name not in CLASS_NAMES:
        raise UserError(f"unknown class {class_name!r}; expected one of {', '.join(CLASS_NAMES)}")
    track = draw_track_params(rng, settings)
    warped = warp_face(working_face(class_name, track.variant, settings), track)
    return [render_frame(class_name, track, draw_frame_params(rng, track, settings, k=k, n_frames=n_frames),
                         rng=rng, size=size, settings=settings, warped=warped)
            for k in range(n_frames)]


# ---------------------------------------------------------------- the data set

def check_whole(name: str, value: object, *, low: int, high: int) -> None:
    """Refuse `value` unless it is an int (not a bool) in low..high."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def check_args(*, per_class: int, seed: int, size: int, frames_per_track: int) -> None:
    """Refuse settings that would make a useless or enormous data set."""
    check_whole("per_class", per_class, low=1, high=MAX_PER_CLASS)
    check_whole("seed", seed, low=0, high=2**63 - 1)
    check_whole("size (pixels)", size, low=SIZE_RANGE[0], high=SIZE_RANGE[1])
    check_whole("frames_per_track", frames_per_track, low=1, high=1000)


@dataclass(frozen=True)
class TrackJob:
    """One track to render and write: everything a worker process needs."""

    folder: Path
    class_index: int
    track: int
    n_frames: int  # frames written
    track_frames: int  # frames per track of the set
    seed: int
    size: int
    settings: RenderSettings


def render_job(job: TrackJob) -> int:
    """Render one track into its class folder; returns the number of images written."""
    rng = np.random.default_rng([job.seed, job.class_index, job.track])
    # The whole track is drawn even when only its first frames are kept: a bigger set then
    # extends a smaller one frame for frame.
    frames = render_track(CLASS_NAMES[job.class_index], rng=rng, size=job.size, n_frames=job.track_frames,
                          settings=job.settings)[:job.n_frames]
    for k, image in enumerate(frames):
        image.save(job.folder / CLASS_NAMES[job.class_index] / f"{job.track:05d}_{k:05d}.png",
                   compress_level=1)
    return len(frames)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


RENDER_CHUNK = 8  # tracks per message to a worker process: few messages, progress still smooth


def run_jobs(jobs: list[TrackJob], workers: int) -> Iterator[int]:
    """Images written per finished track, in the order of `jobs`.

    Worker processes where they fork (Linux): the calls are many and small (numpy and Pillow
    on images of 12-64 px hold the GIL most of the time), so on 2 cores two threads gain little
    over one and sometimes lose. Measured in turns on an AVX2 EPYC (2,700 images, scaled to the
    default set): two threads 37-40 s, one thread 43-54 s, two processes 26-29 s.
    Forked, not spawned: a spawned worker runs the parent's main script again, and in the app
    that is the Streamlit page. The pool starts its workers before any thread of its own, and
    a worker only renders and writes PNGs. Elsewhere, threads. On a failure or an interrupt,
    the tracks not yet started are cancelled and the running ones waited for, so no worker
    writes afterwards.
    """
    if workers <= 1 or len(jobs) < 4 * RENDER_CHUNK:
        yield from map(render_job, jobs)
        return
    if sys.platform == "linux":
        pool: concurrent.futures.Executor = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        yield from pool.map(render_job, jobs, chunksize=RENDER_CHUNK)
    except concurrent.futures.process.BrokenProcessPool as error:
        raise UserError("a rendering worker process died before it finished (out of memory?); "
                        "nothing was written: try again, or render a smaller set") from error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def render_dataset(
    out: Path, *, per_class: int = DEFAULT_PER_CLASS, seed: int = 0, size: int = DEFAULT_SIZE,
    frames_per_track: int = DEFAULT_FRAMES_PER_TRACK, overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None, settings: RenderSettings = DEFAULT_SETTINGS,
    workers: int | None = None,
) -> SynthReport:
    """Write an ImageFolder `out/train/<class>/<track>_<frame>.png`, atomically.

    Nothing is left at `out` unless the whole set is complete; with `overwrite`, an existing
    set is replaced only once the new one is.
    """
    check_args(per_class=per_class, seed=seed, size=size, frames_per_track=frames_per_track)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; choose another folder or overwrite it")
    started = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    total, done = per_class * len(CLASS_NAMES), 0
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for class_name in CLASS_NAMES:
            (tmp / "train" / class_name).mkdir(parents=True)
        jobs = [TrackJob(tmp / "train", c, track, min(frames_per_track, per_class - track * frames_per_track),
                         frames_per_track, seed, size, settings)
                for c in range(len(CLASS_NAMES)) for track in range(math.ceil(per_class / frames_per_track))]
        # closing: a failing progress callback stops the workers before the folder is removed.
        with contextlib.closing(run_jobs(jobs, default_workers() if workers is None else workers)) as finished:
            for written in finished:
                done += written
                if progress is not None:
                    progress(done, total)
        report = SynthReport(out=out, n_images=total, per_class=per_class, seed=seed, size=size,
                             frames_per_track=frames_per_track,
                             seconds=round(time.perf_counter() - started, 3))
        write_info(tmp, report, settings)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; an existing `out` goes only once `tmp` is in place."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # put the previous set back rather than leave nothing
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_info(folder: Path, report: SynthReport, settings: RenderSettings) -> None:
    """README.txt for people and synth.json for programs: how the set was made, in full."""
    info = {k: v for k, v in asdict(report).items() if k not in ("out", "seconds")}
    info |= {
        "generator": "speedsign.synth",
        "classes": list(CLASS_NAMES),
        "layout": "train/<class>/<track>_<frame>.png (GTSRB-style, 5 digits each)",
        "settings": settings.to_dict(),
    }
    (folder / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    (folder / "README.txt").write_text(
        "Synthetic German speed-limit signs made by speedsign.synth (not real photos).\n"
        f"seed={report.seed} per_class={report.per_class} size={report.size}px "
        f"frames_per_track={report.frames_per_track} images={report.n_images}\n"
        "Frames of one track (same first number) show the same sign: split by track.\n"
        f"Renderer settings are in {INFO_NAME}.\n"
    )


def read_settings(folder: Path) -> RenderSettings:
    """The renderer settings a set was made with (UserError when synth.json is missing or bad)."""
    try:
        info = json.loads((Path(folder) / INFO_NAME).read_text())
        return RenderSettings.from_dict(info["settings"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{folder} has no readable renderer settings ({INFO_NAME}): {error}") from None
