"""Tests for the synthetic sign renderer: faces, parameter ranges, layout, reproducibility, atomicity."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedsign import synth
from speedsign.errors import UserError

NAME = re.compile(r"^(\d{5})_(\d{5})\.png$")
N_TRACKS = 2000  # parameter draws per settings in the range tests (about 0.2 s)

# Every range and probability moved away from the defaults (and 0 outside the hue range, 1
# outside the saturation range), so "in range or exactly off" cannot pass by luck. Blur lengths
# stay within the 5x5 kernel so a set can be rendered with it.
CUSTOM = synth.RenderSettings(
    sign_px=(30, 60), small_px=(8, 10), small_fraction=0.5, margin=(0.10, 0.12), small_margin=(0.30, 0.35),
    brightness=(0.0, 1.0, 50.0, 100.0), hue_degrees=(-90.0, -30.0), hue_probability=0.3,
    saturation=(1.5, 3.0), saturation_probability=0.4, rotate_degrees=40.0, rotate_probability=0.9,
    perspective=(0.30, 0.35), perspective_probability=0.2, noise_weight=0.1, confetti_probability=0.9,
    confetti_patches=(20, 30), confetti_side=0.05, motion_blur_probability=0.6, motion_blur_px=(3, 4),
    sensor_noise=(2.0, 3.0), face_variants=2, chroma_probability=0.7, chroma_px=(0.6, 0.8),
    background_saturation=(0.0, 0.1), ring_width=(0.25, 0.27), digit_height=(0.36, 0.38), stroke_width=(0.2, 0.21),
    digit_width=(0.7, 0.72), backlight_probability=0.3, backlight_value=(30.0, 40.0), backlight_ratio=(0.2, 0.25),
    glare_probability=0.4, glare_value=(280.0, 300.0), glare_px=(0.8, 0.9),
)
ALL_OFF = dataclasses.replace(
    synth.DEFAULT_SETTINGS, small_fraction=0.0, hue_probability=0.0, saturation_probability=0.0,
    rotate_probability=0.0, perspective_probability=0.0, confetti_probability=0.0, motion_blur_probability=0.0,
    chroma_probability=0.0, backlight_probability=0.0, glare_probability=0.0,
)
# Backlight and glare exclude each other (one light per track): ALL_ON has glare, BACKLIT the other.
ALL_ON = dataclasses.replace(
    CUSTOM, small_fraction=1.0, hue_probability=1.0, saturation_probability=1.0,
    rotate_probability=1.0, perspective_probability=1.0, confetti_probability=1.0, motion_blur_probability=1.0,
    chroma_probability=1.0, backlight_probability=0.0, glare_probability=1.0,
)
BACKLIT = dataclasses.replace(CUSTOM, backlight_probability=1.0, glare_probability=0.0)


def render_one(class_name: str, *, rng: np.random.Generator, size: int = synth.DEFAULT_SIZE) -> Image.Image:
    """One image of one sign: a track of a single frame."""
    return synth.render_track(class_name, rng=rng, size=size, n_frames=1)[0]


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def draw_many(settings: synth.RenderSettings, *, n_frames: int = 5) -> list[tuple[synth.TrackParams,
                                                                                   list[synth.FrameParams]]]:
    """N_TRACKS tracks with their frames, each from its own seed (as render_job seeds them)."""
    draws = []
    for seed in range(N_TRACKS):
        rng = np.random.default_rng([seed, 0, 0])
        track = synth.draw_track_params(rng, settings)
        frames = [synth.draw_frame_params(rng, track, settings, k=k, n_frames=n_frames) for k in range(n_frames)]
        draws.append((track, frames))
    return draws


def within(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


# ---------------------------------------------------------------- faces

def test_class_names_are_the_gtsrb_subset() -> None:
    assert synth.CLASS_NAMES == (
        "speed_20", "speed_30", "speed_50", "speed_60", "speed_70",
        "speed_80", "end_speed_80", "speed_100", "speed_120",
    )


@pytest.mark.parametrize("variant", range(synth.DEFAULT_SETTINGS.face_variants))
@pytest.mark.parametrize("class_name", synth.CLASS_NAMES)
def test_face_is_an_rgba_disc(class_name: str, variant: int) -> None:
    face = synth.draw_face(class_name, variant)
    assert face.mode == "RGBA" and face.size == (synth.FACE_PX, synth.FACE_PX)
    alpha = np.asarray(face)[..., 3]
    last = synth.FACE_PX - 1
    for y, x in itertools.product((0, 1, last - 1, last), repeat=2):  # outside the disc
        assert alpha[y, x] == 0
    centre = synth.FACE_PX // 2
    assert (alpha[centre - 20:centre + 20, centre - 20:centre + 20] == 255).all()


@pytest.mark.parametrize("variant", range(synth.DEFAULT_SETTINGS.face_variants))
def test_every_class_face_differs_from_every_other_in_pixels(variant: int) -> None:
    # Faces are drawn deterministically (no noise), so the same face differs by exactly 0. The
    # closest pair is speed_30 / speed_80 (a "3" is an "8" without its left halves): about 1.9
    # mean absolute RGBA difference and 210-270 pixels that differ by more than a quarter of the
    # range, depending on the variant. The bounds below are about half of that: a whole stroke
    # segment (a 7 x 14 px piece of a 128 px face) must differ, not a few edge pixels.
    faces = {c: np.asarray(synth.draw_face(c, variant), dtype=np.float64) for c in synth.CLASS_NAMES}
    for a, b in itertools.combinations(synth.CLASS_NAMES, 2):
        diff = np.abs(faces[a] - faces[b])
        assert diff.mean() > 1.0, (a, b, diff.mean())
        assert (diff.max(axis=2) > 64).sum() >= 100, (a, b)


@pytest.mark.parametrize("class_name", synth.CLASS_NAMES)
def test_face_variants_of_one_class_differ(class_name: str) -> None:
    # Closest measured: end_speed_80 variants 0/1 and 1/3, 2.5 mean and ~430 pixels over 64.
    faces = [np.asarray(synth.draw_face(class_name, v), dtype=np.float64)
             for v in range(synth.DEFAULT_SETTINGS.face_variants)]
    for (v, a), (w, b) in itertools.combinations(enumerate(faces), 2):
        diff = np.abs(a - b)
        assert diff.mean() > 1.0, (v, w, diff.mean())
        assert (diff.max(axis=2) > 64).sum() >= 200, (v, w)


@pytest.mark.parametrize("settings", [synth.DEFAULT_SETTINGS, CUSTOM], ids=["default", "custom"])
def test_face_proportions_stay_within_their_ranges(settings: synth.RenderSettings) -> None:
    styles = [synth.face_style(v, settings) for v in range(200)]
    for style in styles:
        assert settings.ring_width[0] <= style.ring <= settings.ring_width[1]
        assert settings.digit_height[0] <= style.digit_height <= settings.digit_height[1]
        assert settings.stroke_width[0] <= style.stroke <= settings.stroke_width[1]
        assert settings.digit_width[0] <= style.narrow <= settings.digit_width[1]
    assert len(set(styles)) == len(styles)  # every variant its own proportions
    assert synth.face_style(7, settings) == styles[7]  # the same variant, the same face in every set


def test_custom_proportions_change_the_face() -> None:
    plain = np.asarray(synth.draw_face("speed_50", 0), dtype=np.float64)
    custom = np.asarray(synth.draw_face("speed_50", 0, CUSTOM), dtype=np.float64)
    assert np.abs(plain - custom).mean() > 1.0


def test_face_refuses_unknown_class() -> None:
    with pytest.raises(UserError, match="unknown class"):
        synth.draw_face("speed_90", 0)


# ---------------------------------------------------------------- parameter ranges

@pytest.mark.parametrize("settings", [synth.DEFAULT_SETTINGS, CUSTOM], ids=["default", "custom"])
def test_every_degradation_stays_within_its_range(settings: synth.RenderSettings) -> None:
    s = settings
    a, b, low, width = s.brightness
    for track, frames in draw_many(s):
        assert 0 <= track.variant < s.face_variants
        assert track.hue == 0.0 or within(track.hue, s.hue_degrees)
        assert track.saturation == 1.0 or within(track.saturation, s.saturation)
        assert track.light in ("law", "backlight", "glare")
        if track.light == "law":
            assert low <= track.brightness <= low + width and track.glare == 0.0
        elif track.light == "backlight":
            assert within(track.brightness, s.backlight_value) and track.glare == 0.0
        else:
            assert within(track.brightness, s.glare_value) and within(track.glare, s.glare_px)
        assert len(track.background) == 3 and all(0 <= c <= 255 for c in track.background)
        # Saturation scaled by at most the range's top: the channels' spread around their mean
        # is at most that share of a uniform colour's, which is at most 255.
        spread = max(track.background) - min(track.background)
        assert spread <= s.background_saturation[1] * 255 + 2
        assert -s.rotate_degrees <= track.angle <= s.rotate_degrees
        assert len(track.corners) == 8
        assert all(c == 0.0 for c in track.corners) or all(within(c, s.perspective) for c in track.corners)
        px_range = s.small_px if track.small else s.sign_px
        assert px_range[0] <= track.px_start <= track.px_end <= px_range[1]
        assert within(track.margin, s.small_margin if track.small else s.margin)
        assert 0 <= track.noise_seed < 2**31
        for frame in frames:
            assert track.px_start <= frame.px <= track.px_end
            assert all(0 <= o <= 1 for o in frame.offset)
            assert frame.confetti == 0 or (track.small and within(frame.confetti, s.confetti_patches))
            assert frame.motion_blur == 0 or within(frame.motion_blur, s.motion_blur_px)
            assert 0 <= frame.blur_angle <= 180
            assert within(frame.sensor_noise, s.sensor_noise)
            assert frame.chroma == 0.0 or within(frame.chroma, s.chroma_px)


@pytest.mark.parametrize("settings", [synth.DEFAULT_SETTINGS, CUSTOM], ids=["default", "custom"])
def test_degradation_probabilities_roughly_hold(settings: synth.RenderSettings) -> None:
    # With 2000 draws the standard error of a fraction is at most 0.011 (0.016 for the
    # ~400-1000 small tracks' frames it is conditioned on, x5 frames): 0.05 is over 3 of them.
    # The draws are seeded, so this is a check of the law, not a flaky test.
    s = settings
    draws = draw_many(s)
    tracks = [t for t, _ in draws]

    def fraction(flags: list[bool]) -> float:
        return sum(flags) / len(flags)

    assert fraction([t.small for t in tracks]) == pytest.approx(s.small_fraction, abs=0.05)
    assert fraction([t.light == "backlight" for t in tracks]) == pytest.approx(s.backlight_probability, abs=0.05)
    assert fraction([t.light == "glare" for t in tracks]) == pytest.approx(s.glare_probability, abs=0.05)
    assert fraction([t.hue != 0 for t in tracks]) == pytest.approx(s.hue_probability, abs=0.05)
    assert fraction([t.saturation != 1 for t in tracks]) == pytest.approx(s.saturation_probability, abs=0.05)
    assert fraction([t.angle != 0 for t in tracks]) == pytest.approx(s.rotate_probability, abs=0.05)
    assert fraction([any(t.corners) for t in tracks]) == pytest.approx(s.perspective_probability, abs=0.05)
    small_frames = [f for t, fs in draws if t.small for f in fs]
    assert fraction([f.confetti > 0 for f in small_frames]) == pytest.approx(s.confetti_probability, abs=0.05)
    frames = [f for _, fs in draws for f in fs]
    assert fraction([f.motion_blur > 0 for f in frames]) == pytest.approx(s.motion_blur_probability, abs=0.05)
    assert fraction([f.chroma > 0 for f in frames]) == pytest.approx(s.chroma_probability, abs=0.05)
    # Every variant is used, about equally.
    counts = np.bincount([t.variant for t in tracks], minlength=s.face_variants)
    assert len(counts) == s.face_variants and counts.min() > 0.8 * N_TRACKS / s.face_variants


def test_default_brightness_median_is_gtsrb_dark() -> None:
    # The Johnson SB median is low + width / (1 + exp(a / b)) = 86.4 for the default law.
    median = float(np.median([t.brightness for t, _ in draw_many(synth.DEFAULT_SETTINGS, n_frames=1)]))
    assert median == pytest.approx(86.4, abs=8)


def test_probability_zero_turns_every_degradation_off() -> None:
    for track, frames in draw_many(ALL_OFF):
        assert not track.small and track.hue == 0.0 and track.saturation == 1.0
        assert track.angle == 0.0 and track.corners == (0.0,) * 8
        assert track.light == "law" and track.glare == 0.0
        assert all(f.confetti == 0 and f.motion_blur == 0 for f in frames)


def test_probability_one_turns_every_degradation_on() -> None:
    s = ALL_ON
    for track, frames in draw_many(s):
        assert track.small and within(track.hue, s.hue_degrees) and within(track.saturation, s.saturation)
        assert track.angle != 0.0 and all(within(c, s.perspective) for c in track.corners)
        assert track.light == "glare" and within(track.glare, s.glare_px)
        assert all(within(f.confetti, s.confetti_patches) for f in frames)
        assert all(within(f.motion_blur, s.motion_blur_px) for f in frames)


def test_backlight_probability_one_backlights_every_track() -> None:
    for track, _ in draw_many(BACKLIT):
        assert track.light == "backlight" and within(track.brightness, BACKLIT.backlight_value)
        # The sky is brighter than the sign by the drawn ratio (up to clipping at 255).
        assert max(track.background) >= min(255.0, track.brightness / BACKLIT.backlight_ratio[1]) - 2


def test_backlit_sign_is_darker_than_its_sky() -> None:
    rng = np.random.default_rng(5)
    for class_name in ("speed_60", "end_speed_80"):
        pixels = np.asarray(synth.render_track(class_name, rng=rng, n_frames=1,
                                               settings=dataclasses.replace(BACKLIT, margin=(0.12, 0.12),
                                                                            small_fraction=0.0))[0],
                            dtype=np.float64).max(axis=2)
        assert pixels[12:20, 12:20].mean() < 0.6 * np.concatenate([pixels[:2].ravel(), pixels[-2:].ravel()]).mean()


def test_glare_spreads_light_into_dark_strokes_and_nothing_else() -> None:
    canvas = np.full((20, 20, 3), 330.0, dtype=np.float32)
    canvas[:, 9:11] = 20.0  # a dark stroke across a saturated disc
    glared = synth.add_glare(canvas, radius=1.0)
    assert glared[10, 10, 0] > canvas[10, 10, 0] + 20  # the stroke is paler ...
    assert synth.add_glare(canvas, radius=2.0)[10, 10, 0] > glared[10, 10, 0]  # ... the more, the wider the glare
    dim = np.full((8, 8, 3), 200.0, dtype=np.float32)
    assert np.array_equal(synth.add_glare(dim, radius=1.0), dim)  # nothing saturates, nothing spreads


def test_confetti_only_on_small_signs() -> None:
    s = dataclasses.replace(ALL_ON, small_fraction=0.0)
    assert all(f.confetti == 0 for _, frames in draw_many(s) for f in frames)


@pytest.mark.parametrize("n_frames", [1, 2, 5, 30])
def test_track_frames_grow(n_frames: int) -> None:
    for seed in range(200):
        rng = np.random.default_rng(seed)
        track = synth.draw_track_params(rng, synth.DEFAULT_SETTINGS)
        pxs = [synth.draw_frame_params(rng, track, synth.DEFAULT_SETTINGS, k=k, n_frames=n_frames).px
               for k in range(n_frames)]
        assert pxs == sorted(pxs)
        assert pxs[-1] == track.px_end
        if n_frames > 1:
            assert pxs[0] == track.px_start


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("settings", [synth.DEFAULT_SETTINGS, CUSTOM], ids=["default", "custom"])
def test_settings_round_trip(settings: synth.RenderSettings) -> None:
    data = settings.to_dict()
    assert synth.RenderSettings.from_dict(data) == settings
    assert synth.RenderSettings.from_dict(json.loads(json.dumps(data))) == settings


def test_settings_from_dict_refuses_unknown_keys() -> None:
    data = synth.DEFAULT_SETTINGS.to_dict() | {"glitter": 0.5}
    with pytest.raises(UserError, match="glitter"):
        synth.RenderSettings.from_dict(data)


def test_synth_json_keeps_the_settings(tmp_path: Path) -> None:
    out = synth.render_dataset(tmp_path / "synth", per_class=2, size=16, frames_per_track=2, settings=CUSTOM).out
    info = json.loads((out / synth.INFO_NAME).read_text())
    assert info["settings"] == CUSTOM.to_dict()
    assert synth.read_settings(out) == CUSTOM


@pytest.mark.parametrize("content", [None, "not json", "[1, 2]", '{"seed": 0}', '{"settings": {"glitter": 1}}'],
                         ids=["missing", "not-json", "list", "no-settings", "unknown-key"])
def test_read_settings_refuses_missing_or_bad_info(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / synth.INFO_NAME).write_text(content)
    with pytest.raises(UserError):
        synth.read_settings(tmp_path)


# ---------------------------------------------------------------- rendering

@pytest.mark.parametrize("class_name", synth.CLASS_NAMES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_sign_size_and_mode(class_name: str, size: int) -> None:
    image = render_one(class_name, rng=np.random.default_rng(0), size=size)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_faces_are_warped_from_a_side_larger_than_any_sign() -> None:
    # Every frame must shrink (area resampling) from the warped face, never enlarge it.
    for settings in (synth.DEFAULT_SETTINGS, CUSTOM, synth.RenderSettings(sign_px=(20, 100))):
        side = synth.warp_side(settings)
        largest = max(settings.sign_px[1], settings.small_px[1])
        assert side >= min(synth.FACE_PX, largest * 4 / 3) and side <= synth.FACE_PX
        assert synth.working_face("speed_30", 0, settings).size == (side, side)
    assert synth.warp_side(synth.DEFAULT_SETTINGS) == 64  # 48 px signs at most: a quarter of 128's cost
    assert synth.warp_side(synth.RenderSettings(sign_px=(20, 100))) == synth.FACE_PX


def test_default_size_is_gtsrb_32() -> None:
    assert synth.DEFAULT_SIZE == 32
    assert render_one("speed_50", rng=np.random.default_rng(0)).size == (32, 32)


@pytest.mark.parametrize("n_frames", [1, 3, 5])
def test_render_track_gives_n_frames(n_frames: int) -> None:
    frames = synth.render_track("speed_70", rng=np.random.default_rng(4), size=16, n_frames=n_frames)
    assert len(frames) == n_frames
    assert all(f.mode == "RGB" and f.size == (16, 16) for f in frames)


@pytest.mark.parametrize("settings", [ALL_OFF, ALL_ON], ids=["all-off", "all-on"])
def test_render_track_with_extreme_settings(settings: synth.RenderSettings) -> None:
    for seed in range(5):
        frames = synth.render_track("speed_120", rng=np.random.default_rng(seed), size=24, n_frames=3,
                                    settings=settings)
        assert [f.size for f in frames] == [(24, 24)] * 3


def test_render_sign_is_seeded() -> None:
    a = render_one("speed_30", rng=np.random.default_rng(7))
    b = render_one("speed_30", rng=np.random.default_rng(7))
    c = render_one("speed_30", rng=np.random.default_rng(8))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_render_sign_refuses_unknown_class() -> None:
    with pytest.raises(UserError, match="unknown class"):
        render_one("speed_90", rng=np.random.default_rng(0))


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("angle", [0.0, 30.0, 45.0, 90.0, 135.0, 179.0])
def test_motion_kernel_is_5x5_and_sums_to_one(length: int, angle: float) -> None:
    kernel = synth.motion_kernel(length, angle)
    size, scale, offset, weights = kernel.filterargs
    assert size == (5, 5) and len(weights) == 25
    assert scale == 1 and offset == 0
    assert all(w >= 0 for w in weights)
    assert sum(weights) == pytest.approx(1.0)
    grid = np.array(weights).reshape(5, 5)
    assert grid[2, 2] > 0  # a line through the centre ...
    assert np.allclose(grid, grid[::-1, ::-1], atol=0.02)  # ... symmetric about it


@pytest.mark.parametrize("length", [2, 3, 4, 5])
@pytest.mark.parametrize("angle", [0.0, 45.0, 90.0])
def test_motion_kernel_blurs(length: int, angle: float) -> None:
    weights = np.array(synth.motion_kernel(length, angle).filterargs[3])
    assert (weights > 0).sum() >= 2
    assert weights.max() < 1


@pytest.mark.parametrize("length", [0, 6, 7])
def test_motion_kernel_refuses_lengths_a_5x5_kernel_cannot_hold(length: int) -> None:
    with pytest.raises(ValueError):
        synth.motion_kernel(length, 0.0)


@pytest.mark.parametrize("bad", [{"motion_blur_px": (2, 7)}, {"rotate_probability": 1.5},
                                 {"sign_px": (48, 18)}, {"noise_weight": -0.1},
                                 {"backlight_probability": 0.6, "glare_probability": 0.5}])
def test_bad_renderer_settings_are_refused(bad: dict) -> None:
    with pytest.raises(UserError):
        synth.RenderSettings(**bad)


def test_a_partial_last_track_is_the_start_of_the_whole_track(tmp_path: Path) -> None:
    kwargs = dict(size=16, frames_per_track=2, workers=1)
    small = read_tree(synth.render_dataset(tmp_path / "s", per_class=3, **kwargs).out)
    big = read_tree(synth.render_dataset(tmp_path / "b", per_class=4, **kwargs).out)
    assert all(big[k] == v for k, v in small.items() if k.endswith(".png"))


def test_low_brightness_renders_a_darker_sign() -> None:
    track = synth.draw_track_params(np.random.default_rng(3), synth.DEFAULT_SETTINGS)
    track = dataclasses.replace(track, margin=0.1, small=False, light="law", glare=0.0)
    frame = synth.FrameParams(px=40, offset=(0.5, 0.5), confetti=0, motion_blur=0, blur_angle=0.0, sensor_noise=0.0,
                              chroma=0.0)
    means = []
    for brightness in (20.0, 60.0, 120.0, 200.0):
        image = synth.render_frame("speed_50", dataclasses.replace(track, brightness=brightness), frame,
                                   rng=np.random.default_rng(1), size=32, settings=synth.DEFAULT_SETTINGS)
        centre = np.asarray(image, dtype=np.float64)[11:21, 11:21]
        means.append(float(centre.max(axis=2).mean()))  # HSV value, as the brightness target is
    assert means == sorted(means)
    # The target is the mean value over the sign; the centre (disc and digits) follows it closely.
    assert means[0] < 40 and means[-1] > 150
    assert means[0] < 0.25 * means[-1]


# ---------------------------------------------------------------- the data set

def test_layout_names_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    calls: list[tuple[int, int]] = []
    report = synth.render_dataset(out, per_class=7, seed=1, size=32, frames_per_track=3,
                                  progress=lambda done, total: calls.append((done, total)))
    assert report.out == out and report.n_images == 7 * 9 and report.per_class == 7
    assert report.seed == 1 and report.seconds >= 0 and report.size == 32 and report.frames_per_track == 3
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(synth.CLASS_NAMES)
    for class_name in synth.CLASS_NAMES:
        names = sorted(p.name for p in (out / "train" / class_name).iterdir())
        matches = [NAME.match(n) for n in names]
        assert all(matches)
        tracks = [(int(m.group(1)), int(m.group(2))) for m in matches]  # type: ignore[union-attr]
        # 7 images, 3 frames per track: tracks 0 and 1 full, track 2 has one frame.
        assert tracks == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    with Image.open(out / "train" / "speed_50" / "00001_00002.png") as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    info = json.loads((out / "synth.json").read_text())
    assert info["seed"] == 1 and info["per_class"] == 7 and info["size"] == 32
    assert info["frames_per_track"] == 3 and info["n_images"] == 63
    assert info["classes"] == list(synth.CLASS_NAMES)
    assert info["settings"] == synth.DEFAULT_SETTINGS.to_dict()
    assert "seed=1" in (out / "README.txt").read_text()
    assert calls[-1] == (63, 63)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_same_seed_renders_the_same_set(tmp_path: Path) -> None:
    # 9 classes x 4 tracks = 36 jobs: enough for run_jobs to use worker processes with 2 workers.
    kwargs = dict(per_class=8, size=24, frames_per_track=2)
    assert 9 * 4 >= 4 * synth.RENDER_CHUNK
    a = read_tree(synth.render_dataset(tmp_path / "a", seed=5, workers=1, **kwargs).out)
    b = read_tree(synth.render_dataset(tmp_path / "b", seed=5, workers=2, **kwargs).out)
    c = read_tree(synth.render_dataset(tmp_path / "c", seed=6, workers=2, **kwargs).out)
    assert len([k for k in a if k.endswith(".png")]) == 72
    assert a == b  # PNGs, synth.json and README.txt
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)
    assert json.loads(a["synth.json"])["seed"] == 5 and json.loads(c["synth.json"])["seed"] == 6


def test_output_does_not_depend_on_per_class(tmp_path: Path) -> None:
    # One generator per (seed, class, track): a bigger set extends a smaller one (whole tracks).
    kwargs = dict(size=16, frames_per_track=2)
    small = read_tree(synth.render_dataset(tmp_path / "s", per_class=2, **kwargs).out)
    big = read_tree(synth.render_dataset(tmp_path / "b", per_class=4, **kwargs).out)
    assert all(big[k] == v for k, v in small.items() if k.endswith(".png"))


# 9 classes x 4 tracks of one frame: 36 jobs, so that 2 workers are worker processes (forked:
# they see what the test patched).
MANY_JOBS = dict(per_class=4, size=16, frames_per_track=1)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("failure", ["render", "write"])
def test_failure_mid_render_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int, failure: str
) -> None:
    # The last class fails, so other tracks are written before it: in rendering, or in writing
    # its PNGs (a full disk).
    if failure == "render":
        real = synth.render_track

        def flaky(class_name: str, **kwargs):  # type: ignore[no-untyped-def]
            if class_name == "speed_120":
                raise RuntimeError("boom")
            return real(class_name, **kwargs)

        monkeypatch.setattr(synth, "render_track", flaky)
    else:
        save = Image.Image.save

        def full(self, fp, *args, **kwargs):  # type: ignore[no-untyped-def]
            if "speed_120" in str(fp):
                raise OSError("boom: no space left on device")
            return save(self, fp, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "synth"
    with pytest.raises((RuntimeError, OSError), match="boom"):
        synth.render_dataset(out, workers=workers, **MANY_JOBS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers", [1, 2])
def test_failure_with_overwrite_keeps_old_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "render_track", broken)
    with pytest.raises(KeyboardInterrupt):
        synth.render_dataset(out, overwrite=True, workers=workers, **MANY_JOBS)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]
    assert (out / "keep.txt").read_text() == "old"


def test_an_interrupt_stops_the_workers_before_the_folder_is_removed(tmp_path: Path) -> None:
    # Stopped at the first finished track (Ctrl-C, or a page that went away): the tracks not
    # started are cancelled and the running ones finish first, so nothing is written afterwards.
    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth.render_dataset(tmp_path / "synth", workers=2, progress=interrupt,
                             **{**MANY_JOBS, "per_class": 40})
    assert list(tmp_path.iterdir()) == []
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_out_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synth.render_dataset(out, per_class=1, size=16)
    assert (out / "something.txt").read_text() == "mine"
    synth.render_dataset(out, per_class=1, size=16, overwrite=True)
    assert not (out / "something.txt").exists()
    assert len(list((out / "train").rglob("*.png"))) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_empty_out_folder_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    synth.render_dataset(out, per_class=1, size=16)
    assert len(list((out / "train").rglob("*.png"))) == 9


def test_refuses_a_file_as_out(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        synth.render_dataset(out, per_class=1, size=16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0}, {"per_class": -3}, {"per_class": 100_001}, {"per_class": 2.5},
        {"per_class": True}, {"seed": -1}, {"seed": 2**63}, {"size": 15}, {"size": 513}, {"size": "64"},
        {"frames_per_track": 0}, {"frames_per_track": 1001},
    ],
)
def test_bad_args_are_user_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UserError):
        synth.render_dataset(tmp_path / "synth", **{"per_class": 1, "size": 16, **kwargs})
    assert list(tmp_path.iterdir()) == []
