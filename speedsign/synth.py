"""Synthetic German speed-limit signs: the offline default data set.

Each class is drawn as the real sign (red ring, white disc, narrow bold black digits; "end of
80" as a grey-ringed disc with grey digits and diagonal stripes) and then put through what a
dash camera does to it: perspective, rotation, clutter, dark or bright light, blur, noise,
JPEG, a branch in front. Signs come in tracks like GTSRB: the frames of one track are one
physical sign seen while the car approaches, so splits by track are honest.

Only Pillow and numpy are used, and only Pillow's built-in font (`load_default(size=...)`),
not a system font file, so the same seed gives byte-identical PNGs on any machine with the
same Pillow and numpy versions (a different Pillow may rasterise or JPEG-code a little
differently).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from speedsign.errors import UserError

CLASS_NAMES: tuple[str, ...] = (
    "speed_20", "speed_30", "speed_50", "speed_60", "speed_70",
    "speed_80", "end_speed_80", "speed_100", "speed_120",
)
MAX_PER_CLASS = 100_000
SIZE_RANGE = (16, 512)
FACE_PX = 256  # side of the flat sign face; it is then warped and scaled into the frame


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


@dataclass(frozen=True)
class TrackStyle:
    """What stays the same for every frame of one physical sign."""

    ring: tuple[int, int, int]
    disc: tuple[int, int, int]
    ink: tuple[int, int, int]
    diameter: float  # sign diameter / frame side, at the last (closest) frame
    centre: tuple[float, float]  # sign centre in frame fractions
    yaw: float  # radians; turns the sign away from the camera
    pitch: float
    roll: float
    start_zoom: float  # sign scale of the first frame relative to the last
    gain: float  # overall light: < 1 dusk, > 1 glare
    cast: tuple[float, float, float]  # colour of the light
    gamma: float
    haze: float  # fog / lens flare: blend towards grey
    backdrop: float  # background light relative to the (retroreflective) sign
    pole: bool
    neighbour: int  # 0 none, 1 warning triangle above, 2 plate below
    occluder: tuple[tuple[float, float], ...]  # polygon, sign-relative (units of radius)
    occluder_colour: tuple[int, int, int]
    stripes: int  # diagonal stripes on "end of 80"


@dataclass(frozen=True)
class FrameStyle:
    """What changes between frames of a track."""

    zoom: float
    shift: tuple[float, float]
    blur: float  # Gaussian radius in output pixels
    noise: float  # standard deviation in 0..255 units
    jpeg: int  # JPEG quality, 0 = no round trip


def render_track(
    class_name: str, *, rng: np.random.Generator, size: int = 64, n_frames: int = 5
) -> list[Image.Image]:
    """`n_frames` images of one physical sign, growing as the car approaches."""
    if class_name not in CLASS_NAMES:
        raise UserError(f"unknown class {class_name!r}; expected one of {', '.join(CLASS_NAMES)}")
    style = pick_track_style(rng)
    face = draw_face(class_name, style)
    side = 2 * size  # draw at twice the size, downscale once: cheap antialiasing
    background = draw_background(rng, side).point(lambda v: v * style.backdrop)
    frames = []
    for k in range(n_frames):
        frame = pick_frame_style(rng, style, k=k, n_frames=n_frames)
        frames.append(compose_frame(face, background, style, frame, rng=rng, size=size))
    return frames


def pick_track_style(rng: np.random.Generator) -> TrackStyle:
    """Draw the identity of one sign: paint, pose, place, light, what is in front of it."""
    fade = rng.uniform(0.0, 0.3) if rng.random() < 0.2 else 0.0  # sun-bleached paint
    red = (rng.integers(140, 230), rng.integers(0, 40), rng.integers(10, 50))
    ring = tuple(int(c + (190 - c) * fade) for c in red)
    white = rng.integers(185, 256)
    disc = (int(white), int(white - rng.integers(0, 10)), int(white - rng.integers(0, 20)))
    ink = tuple(int(v) for v in rng.integers(0, 45, size=3))
    diameter = rng.uniform(0.62, 0.95)
    slack = max(0.0, (1.0 - diameter) / 2)
    centre = (0.5 + rng.uniform(-slack, slack), 0.5 + rng.uniform(-slack, slack))
    occluder: tuple[tuple[float, float], ...] = ()
    if rng.random() < 0.25:
        occluder = pick_occluder(rng)
    return TrackStyle(
        ring=ring, disc=disc, ink=ink, diameter=diameter, centre=centre,
        yaw=rng.normal(0, 0.2), pitch=rng.normal(0, 0.08), roll=rng.normal(0, 0.07),
        start_zoom=rng.uniform(0.65, 0.92),
        gain=float(np.exp(rng.normal(-0.6, 0.6))),
        cast=tuple(float(c) for c in rng.uniform(0.92, 1.08, size=3)),
        gamma=rng.uniform(0.7, 1.4), haze=rng.uniform(0, 0.25) if rng.random() < 0.15 else 0.0,
        backdrop=rng.uniform(0.45, 1.05),
        pole=rng.random() < 0.6, neighbour=int(rng.choice(3, p=[0.7, 0.15, 0.15])),
        occluder=occluder,
        occluder_colour=tuple(int(v) for v in rng.choice(
            [(40, 70, 25), (70, 50, 30), (90, 110, 40), (120, 120, 120), (30, 30, 30)])),
        stripes=int(rng.integers(3, 6)),
    )


def pick_occluder(rng: np.random.Generator) -> tuple[tuple[float, float], ...]:
    """A branch or the edge of something in front, covering one side of the sign."""
    phi = rng.uniform(0, 2 * math.pi)
    depth = rng.uniform(0.45, 0.85)  # distance of its inner edge from the centre, in radii
    ux, uy = math.cos(phi), math.sin(phi)  # towards the occluder
    vx, vy = -uy, ux  # along its edge
    if rng.random() < 0.5:  # a branch: a thick band crossing the sign edge
        width = rng.uniform(0.12, 0.3)
        a, b = depth, depth + width
    else:  # a solid edge: everything beyond the chord
        a, b = depth, 4.0
    wiggle = rng.uniform(-0.08, 0.08, size=4)
    return (
        ((a + wiggle[0]) * ux - 3 * vx, (a + wiggle[0]) * uy - 3 * vy),
        ((a + wiggle[1]) * ux + 3 * vx, (a + wiggle[1]) * uy + 3 * vy),
        ((b + wiggle[2]) * ux + 3 * vx, (b + wiggle[2]) * uy + 3 * vy),
        ((b + wiggle[3]) * ux - 3 * vx, (b + wiggle[3]) * uy - 3 * vy),
    )


def pick_frame_style(
    rng: np.random.Generator, style: TrackStyle, *, k: int, n_frames: int
) -> FrameStyle:
    """Frame `k` of `n_frames`: later frames are closer, so the sign is bigger."""
    progress = k / (n_frames - 1) if n_frames > 1 else 1.0
    return FrameStyle(
        zoom=style.start_zoom + (1 - style.start_zoom) * progress,
        shift=(rng.normal(0, 0.015), rng.normal(0, 0.015)),
        blur=rng.uniform(0.0, 0.9) if rng.random() < 0.6 else 0.0,
        noise=rng.uniform(0, 7),
        jpeg=int(rng.integers(25, 95)) if rng.random() < 0.6 else 0,
    )


@functools.lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.FreeTypeFont:
    # Pillow's built-in scalable font: no font file, so output is the same on every machine.
    return ImageFont.load_default(size=px)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _digit_mask(digit: str, width: int, height: int, *, bold: int) -> Image.Image:
    """An "L" mask of one digit squeezed into width x height: DIN-like tall and narrow.

    `bold` is the stroke width at the 200 px the glyph is drawn at; Aileron Regular is too
    thin for a road sign.
    """
    font = _font(200)
    left, top, right, bottom = font.getbbox(digit, stroke_width=bold)
    glyph = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(glyph).text(
        (-left, -top), digit, font=font, fill=255, stroke_width=bold, stroke_fill=255
    )
    return glyph.resize((width, height), Image.Resampling.LANCZOS)


def draw_digits(
    face: Image.Image, text: str, *, colour: tuple[int, int, int], height: float
) -> None:
    """Paste `text` centred on `face`, each digit condensed, with a narrow gap between them."""
    px = face.width
    h = round(height * px)
    w = round(h * (0.50 if len(text) == 2 else 0.42))
    gap = round(h * 0.08)
    total = len(text) * w + (len(text) - 1) * gap
    x, y = (px - total) // 2, (px - h) // 2
    ink = Image.new("RGBA", (w, h), colour + (255,))
    for digit in text:
        face.paste(ink, (x, y), _digit_mask(digit, w, h, bold=9))
        x += w + gap


def draw_face(class_name: str, style: TrackStyle) -> Image.Image:
    """The flat sign, as RGBA on a transparent square of FACE_PX."""
    px = FACE_PX
    # Transparent pixels take the ring colour so resampling does not leave dark fringes.
    face = Image.new("RGBA", (px, px), style.ring + (0,))
    draw = ImageDraw.Draw(face)
    box = (1, 1, px - 2, px - 2)
    if class_name == "end_speed_80":
        grey = tuple(min(255, int(v + 70)) for v in style.ink)
        draw.ellipse(box, fill=grey + (255,))
        rim = round(px * 0.035)
        draw.ellipse((rim, rim, px - 1 - rim, px - 1 - rim), fill=style.disc + (255,))
        draw_digits(face, "80", colour=grey, height=0.46)
        stripes = Image.new("L", (px, px), 0)
        sd = ImageDraw.Draw(stripes)
        spread = 0.035 * (style.stripes - 1) * px  # a band of "/" stripes through the centre
        for off in np.linspace(-spread, spread, style.stripes):
            sd.line((0 + off, px + off, px + off, 0 + off), fill=255, width=round(px * 0.022))
        disc_mask = Image.new("L", (px, px), 0)
        ImageDraw.Draw(disc_mask).ellipse(box, fill=255)
        face.paste(Image.new("RGBA", (px, px), style.ink + (255,)), (0, 0),
                   Image.fromarray(np.minimum(np.asarray(stripes), np.asarray(disc_mask))))
        return face
    draw.ellipse(box, fill=style.disc + (255,))  # thin white rim outside the red ring
    rim = round(px * 0.025)
    draw.ellipse((rim, rim, px - 1 - rim, px - 1 - rim), fill=style.ring + (255,))
    inner = round(px * 0.125)
    draw.ellipse((inner, inner, px - 1 - inner, px - 1 - inner), fill=style.disc + (255,))
    text = class_name.removeprefix("speed_")
    draw_digits(face, text, colour=style.ink, height=0.44 if len(text) == 2 else 0.38)
    return face


def smooth_noise(rng: np.random.Generator, side: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random cells x cells grid, smoothly upsampled to side x side."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((side, side), Image.Resampling.BICUBIC)).clip(0, 1)


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any colour, biased to the muted colours of streets."""
    base = rng.integers(0, 256, size=3)
    grey = rng.integers(20, 220)
    mix = rng.uniform(0.5, 1.0)
    return tuple(int(v) for v in (base * (1 - mix) + grey * mix))


def draw_background(rng: np.random.Generator, side: int) -> Image.Image:
    """Clutter behind the sign: gradient, sky, foliage or street, plus random shapes."""
    kind = rng.choice(["gradient", "sky", "foliage", "street"])
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    a, b = np.array(random_colour(rng)), np.array(random_colour(rng))
    if kind == "sky":
        a = np.array((rng.integers(120, 240), rng.integers(150, 240), rng.integers(180, 256)))
        b = np.array((235, 235, 235)) * rng.uniform(0.6, 1.0)
        t = (yy * rng.uniform(0.3, 1.0) + 0.6 * smooth_noise(rng, side, 4))[..., None]
    elif kind == "foliage":
        a = np.array((rng.integers(10, 70), rng.integers(30, 110), rng.integers(0, 50)))
        b = np.array((rng.integers(60, 160), rng.integers(80, 180), rng.integers(20, 90)))
        t = (0.5 * smooth_noise(rng, side, 6) + 0.5 * smooth_noise(rng, side, 24))[..., None]
    else:
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle))[..., None]
        t = (t - t.min()) / (t.max() - t.min() + 1e-6)
    pixels = a * (1 - t) + b * t
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    n_shapes = rng.integers(8, 20) if kind == "street" else rng.integers(0, 8)
    for _ in range(n_shapes):
        x0, y0 = rng.integers(-side // 4, side, size=2)
        w, h = rng.integers(side // 16, side * 2 // 3, size=2)
        colour = random_colour(rng)
        shape = rng.integers(3)
        if shape == 0:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.line((x0, y0, x0 + w, y0 + h - side // 3), fill=colour,
                      width=int(rng.integers(1, max(2, side // 20))))
    return image


def perspective_coeffs(
    dst: np.ndarray, src: np.ndarray
) -> tuple[float, ...]:
    """Coefficients for Image.transform(PERSPECTIVE) mapping output points `dst` to input `src`."""
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return tuple(np.linalg.solve(np.array(rows), src.reshape(8)).tolist())


def project_corners(
    style: TrackStyle, *, centre: tuple[float, float], radius: float
) -> np.ndarray:
    """Where the face's corners land in the frame after 3D rotation and a pinhole camera."""
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float64)
    cy, sy = math.cos(style.yaw), math.sin(style.yaw)
    cp, sp = math.cos(style.pitch), math.sin(style.pitch)
    cr, sr = math.cos(style.roll), math.sin(style.roll)
    yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    points = corners @ (roll @ pitch @ yaw).T
    focal = 4.0  # in sign radii: a wide-ish dash camera a few metres away
    scale = focal / (focal + points[:, 2:3])
    return points[:, :2] * scale * radius + np.array(centre)


def compose_frame(
    face: Image.Image, background: Image.Image, style: TrackStyle, frame: FrameStyle,
    *, rng: np.random.Generator, size: int,
) -> Image.Image:
    """Put the sign in front of the background, then add the camera's faults."""
    side = background.width
    # The camera approaches: the background grows too, a little less than the sign.
    crop = side * (1 - 0.25 * (frame.zoom - style.start_zoom))
    x0 = (side - crop) * style.centre[0]
    y0 = (side - crop) * style.centre[1]
    box = (x0, y0, x0 + crop, y0 + crop)
    canvas = background.resize((side, side), Image.Resampling.BILINEAR, box=box)
    radius = style.diameter * frame.zoom * side / 2
    cx = (style.centre[0] + frame.shift[0]) * side
    cy = (style.centre[1] + frame.shift[1]) * side
    draw = ImageDraw.Draw(canvas)
    if style.pole:
        grey = int(160 * style.backdrop)  # lit like the background, not like the sign
        draw.rectangle((cx - radius * 0.07, cy, cx + radius * 0.07, side), fill=(grey, grey, grey))
    if style.neighbour == 1:  # the warning triangle often mounted above a limit
        top = cy - radius * 2.9
        tri = [(cx - radius, cy - radius * 1.1), (cx + radius, cy - radius * 1.1), (cx, top)]
        draw.polygon(tri, fill=style.disc, outline=style.ring, width=max(1, round(radius * 0.15)))
    elif style.neighbour == 2:
        plate = (cx - radius * 0.9, cy + radius * 1.1, cx + radius * 0.9, cy + radius * 1.9)
        border = max(1, round(radius * 0.05))
        draw.rectangle(plate, fill=style.disc, outline=style.ink, width=border)
    dst = project_corners(style, centre=(cx, cy), radius=radius)
    src = np.array([[0, 0], [FACE_PX, 0], [FACE_PX, FACE_PX], [0, FACE_PX]], dtype=np.float64)
    sign = face.transform((side, side), Image.Transform.PERSPECTIVE, perspective_coeffs(dst, src),
                          Image.Resampling.BICUBIC, fillcolor=style.ring + (0,))
    canvas.paste(sign, (0, 0), sign)
    if style.occluder:
        draw.polygon([(cx + u * radius, cy + v * radius) for u, v in style.occluder],
                     fill=style.occluder_colour)
    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if frame.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(frame.blur * size / 64))
    image = apply_light(image, style, frame, rng=rng)
    if frame.jpeg:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=frame.jpeg)
        image = Image.open(buffer).convert("RGB")
    return image


def apply_light(
    image: Image.Image, style: TrackStyle, frame: FrameStyle, *, rng: np.random.Generator
) -> Image.Image:
    """Dusk or glare, colour cast, haze and sensor noise."""
    x = np.asarray(image, dtype=np.float32) / 255
    x = x ** style.gamma * style.gain * np.array(style.cast, dtype=np.float32)
    x = x * (1 - style.haze) + style.haze * 0.7
    x = x * 255 + rng.normal(0, frame.noise, size=x.shape).astype(np.float32)
    return Image.fromarray(x.clip(0, 255).round().astype(np.uint8), mode="RGB")


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


def render_dataset(
    out: Path, *, per_class: int = 200, seed: int = 0, size: int = 64, frames_per_track: int = 5,
    overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write an ImageFolder `out/train/<class>/<track>_<frame>.png`, atomically.

    Every (seed, class, track) has its own random generator, so the images do not depend on
    the order they are rendered in. Nothing is left at `out` unless the whole set is complete.
    """
    check_args(per_class=per_class, seed=seed, size=size, frames_per_track=frames_per_track)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out} already exists and is not empty; choose another folder or overwrite it"
        )
    started = time.perf_counter()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    total, done = per_class * len(CLASS_NAMES), 0
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        for class_index, class_name in enumerate(CLASS_NAMES):
            folder = tmp / "train" / class_name
            folder.mkdir(parents=True)
            for track in range(math.ceil(per_class / frames_per_track)):
                rng = np.random.default_rng([seed, class_index, track])
                n_frames = min(frames_per_track, per_class - track * frames_per_track)
                frames = render_track(class_name, rng=rng, size=size, n_frames=n_frames)
                for k, image in enumerate(frames):
                    image.save(folder / f"{track:05d}_{k:05d}.png")
                done += n_frames
                if progress is not None:
                    progress(done, total)
        seconds = time.perf_counter() - started
        report = SynthReport(
            out=out, n_images=total, per_class=per_class, seed=seed, size=size,
            frames_per_track=frames_per_track, seconds=round(seconds, 3),
        )
        write_info(tmp, report)
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


def write_info(folder: Path, report: SynthReport) -> None:
    """README.txt for people and synth.json for programs, saying how the set was made."""
    info = {k: v for k, v in asdict(report).items() if k not in ("out", "seconds")}
    info |= {
        "generator": "speedsign.synth",
        "classes": list(CLASS_NAMES),
        "layout": "train/<class>/<track>_<frame>.png (GTSRB-style, 5 digits each)",
    }
    (folder / "synth.json").write_text(json.dumps(info, indent=2) + "\n")
    (folder / "README.txt").write_text(
        "Synthetic German speed-limit signs made by speedsign.synth (not real photos).\n"
        f"seed={report.seed} per_class={report.per_class} size={report.size}px "
        f"frames_per_track={report.frames_per_track} images={report.n_images}\n"
        "Frames of one track (same first number) show the same sign: split by track.\n"
    )
