"""corruptions.py: deterministic corruptions that keep their range, and accuracy under them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from speedsign.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    TABLE,
    corrupt,
    corruption_report,
    describe_corruption,
    evaluate_corruptions,
    mean_corruption_accuracy,
    robustness_frame,
    worst_row,
)
from speedsign.errors import UserError

RANDOM = tuple(name for name in CORRUPTIONS if TABLE[name].random)


def _images(n: int = 6, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=generator)


def _sign(size: int = 32) -> torch.Tensor:
    """A smooth picture with edges (a ring on a gradient): what JPEG and warps act on."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = ((ys - size / 2).square() + (xs - size / 2).square()).sqrt()
    ring = ((radius > size * 0.3) & (radius < size * 0.42)).float()
    red = 60 + 150 * ring + xs / size * 40
    return torch.stack([red, 60 + ys / size * 100, 90 - 40 * ring]).round().to(torch.uint8).unsqueeze(0)


def _high_frequency(images: torch.Tensor) -> float:
    pixels = images.float()
    return float(pixels.diff(dim=-1).square().mean() + pixels.diff(dim=-2).square().mean())


def test_the_table_names_every_corruption_at_three_severities() -> None:
    assert CORRUPTIONS == ("darkness", "glare", "gaussian_blur", "motion_blur", "noise", "jpeg", "occlusion",
                           "rotation", "scale")
    assert SEVERITIES == (1, 2, 3)
    assert all(len(TABLE[name].values) == len(SEVERITIES) for name in CORRUPTIONS)
    assert describe_corruption("motion_blur", 2) == "motion blur 5 px"
    assert describe_corruption("jpeg", 3) == "JPEG quality 8"
    descriptions = {describe_corruption(name, s) for name in CORRUPTIONS for s in SEVERITIES}
    assert len(descriptions) == len(CORRUPTIONS) * len(SEVERITIES)


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (3, 3, 20, 28)])
def test_every_corruption_keeps_shape_dtype_device_and_the_input(name: str, shape: tuple[int, ...]) -> None:
    images = _images(*[shape[0], shape[2], shape[3]])
    before = images.clone()
    for severity in SEVERITIES:
        torch.manual_seed(severity)  # the global RNG must not matter
        out = corrupt(images, name, severity, seed=3)
        torch.manual_seed(99)
        again = corrupt(images, name, severity, seed=3)
        assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
        assert torch.equal(out, again)
        assert not torch.equal(out, images), "a corruption that changes nothing"
        # Range: uint8 cannot leave 0-255, so check nothing wrapped or saturated wholesale.
        assert 0.05 < out.float().mean() / 255 < 0.95
    assert torch.equal(images, before), "the input was changed in place"


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_differ_between_seeds(name: str) -> None:
    images = _images()
    assert not torch.equal(corrupt(images, name, 2, seed=0), corrupt(images, name, 2, seed=1))


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - set(RANDOM)))
def test_fixed_corruptions_are_the_same_for_every_seed(name: str) -> None:
    images = _images()
    assert torch.equal(corrupt(images, name, 2, seed=0), corrupt(images, name, 2, seed=7))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_an_image_gets_the_same_corruption_in_any_batch(name: str) -> None:
    images = _images(n=8)
    whole = corrupt(images, name, 3, seed=5)
    tail = corrupt(images[4:], name, 3, seed=5, start=4)
    # Float rounding in a batched conv may differ by one level; the random draws may not.
    assert (whole[4:].int() - tail.int()).abs().max() <= 1


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_nothing_mirrors_the_image(name: str) -> None:
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[..., :16] = 220
    out = corrupt(image.expand(16, -1, -1, -1).contiguous(), name, 3).float()
    assert bool((out[..., :10].mean(dim=(1, 2, 3)) > out[..., 22:].mean(dim=(1, 2, 3))).all())


def test_darkness_and_glare_move_brightness_with_severity() -> None:
    images = _images()
    dark = [corrupt(images, "darkness", s).float().mean() for s in SEVERITIES]
    glare = [corrupt(images, "glare", s) for s in SEVERITIES]
    assert images.float().mean() > dark[0] > dark[1] > dark[2]
    assert abs(float(dark[2]) - 0.25 * float(images.float().mean())) < 1
    means = [float(g.float().mean()) for g in glare]
    assert float(images.float().mean()) < means[0] < means[1] < means[2]
    assert all(bool((g >= images).all()) for g in glare), "glare only brightens"


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur"])
def test_blur_removes_more_detail_at_each_severity(name: str) -> None:
    images = _images()
    energy = [_high_frequency(images)] + [_high_frequency(corrupt(images, name, s)) for s in SEVERITIES]
    assert energy == sorted(energy, reverse=True) and len(set(energy)) == len(energy)
    assert abs(float(corrupt(images, name, 3).float().mean() - images.float().mean())) < 2  # blur, not darken


def test_blur_length_scales_with_the_image_side() -> None:
    # The same picture at 32 and 64 px loses about the same share of its detail.
    small = _sign(32)
    large = torch.nn.functional.interpolate(small.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    lost_small = 1 - _high_frequency(corrupt(small, "gaussian_blur", 2)) / _high_frequency(small)
    lost_large = 1 - _high_frequency(corrupt(large, "gaussian_blur", 2)) / _high_frequency(large)
    assert abs(lost_small - lost_large) < 0.15


def test_noise_has_the_stated_std() -> None:
    grey = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    for severity in SEVERITIES:
        diff = corrupt(grey, "noise", severity).float() - 128
        assert abs(float(diff.std()) / TABLE["noise"].values[severity - 1] - 1) < 0.05
        assert abs(float(diff.mean())) < 1


def test_jpeg_loses_more_at_lower_quality() -> None:
    image = _sign(48)
    errors = [float((corrupt(image, "jpeg", s).float() - image.float()).square().mean()) for s in SEVERITIES]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_occlusion_covers_the_stated_share_with_one_box() -> None:
    images = torch.full((32, 3, 32, 32), 200, dtype=torch.uint8)
    for severity in SEVERITIES:
        out = corrupt(images, "occlusion", severity, seed=1)
        changed = (out != 200).all(dim=1)  # (N, H, W)
        share = changed.float().mean(dim=(1, 2))
        target = TABLE["occlusion"].values[severity - 1]
        assert bool(((share - target).abs() < 0.02).all()), (severity, share)
        for mask, image in zip(changed, out, strict=True):
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert bool(box.all()), "not one rectangle"
            assert set(image[:, mask].unique().tolist()) <= {0, 128}


@pytest.mark.parametrize("name", ["rotation", "scale"])
def test_warps_move_further_from_the_image_at_each_severity(name: str) -> None:
    image = _sign(32).expand(4, -1, -1, -1).contiguous()
    errors = [float((corrupt(image, name, s).float() - image.float()).abs().mean()) for s in SEVERITIES]
    assert 0 < errors[0] < errors[1] < errors[2]


def test_bad_names_severities_and_images_are_refused() -> None:
    images = _images(n=2)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(images, "fog", 1)
    for severity in (0, 4, True, 1.5):
        with pytest.raises(ValueError, match="severity must be one of 1, 2, 3"):
            corrupt(images, "noise", severity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "noise", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images[:, :1], "noise", 1)
    assert corrupt(images[:0], "jpeg", 1).shape == (0, 3, 32, 32)


class BrightnessPredictor:
    """Says "bright" for a light image and "dark" otherwise; classes in its own order."""

    classes = ("other", "dark", "bright")

    def __init__(self) -> None:
        self.config = SimpleNamespace(stored_size=16, resize="square", val_fraction=0.2, seed=0)
        self.calls = 0

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        self.calls += 1
        bright = images.float().mean(dim=(1, 2, 3)).numpy() > 110
        probs = np.full((len(images), 3), 0.05, dtype=np.float32)
        probs[np.arange(len(images)), np.where(bright, 2, 1)] = 0.9
        return probs


def _bright_and_dark(n: int = 10) -> tuple[torch.Tensor, np.ndarray]:
    images = torch.full((n, 3, 16, 16), 40, dtype=torch.uint8)
    images[: n // 2] = 200
    return images, np.array([2] * (n // 2) + [1] * (n - n // 2))


def test_evaluate_corruptions_scores_clean_first_then_every_corruption() -> None:
    images, labels = _bright_and_dark()
    rows = evaluate_corruptions(BrightnessPredictor(), images, labels, batch_size=4)
    assert rows[0] == {"corruption": "clean", "severity": 0, "accuracy": 1.0, "n": 10, "correct": 10}
    assert [(r["corruption"], r["severity"]) for r in rows[1:]] == [(n, s) for n in CORRUPTIONS for s in SEVERITIES]
    assert all(0 <= r["accuracy"] <= 1 and r["correct"] == round(r["accuracy"] * r["n"]) for r in rows)
    darkest = next(r for r in rows if r["corruption"] == "darkness" and r["severity"] == 3)
    assert darkest["accuracy"] == 0.5  # 200 x 0.25 = 50: every bright image now reads as dark
    assert rows == evaluate_corruptions(BrightnessPredictor(), images, labels, batch_size=256)
    assert 0 <= mean_corruption_accuracy(rows) <= 1
    assert worst_row(rows)["accuracy"] == min(r["accuracy"] for r in rows[1:])
    assert worst_row(rows)["description"]


def test_evaluate_corruptions_checks_its_grid_before_predicting() -> None:
    images, labels = _bright_and_dark()
    predictor = BrightnessPredictor()
    with pytest.raises(ValueError, match="severity"):
        evaluate_corruptions(predictor, images, labels, severities=(1, 5))
    with pytest.raises(ValueError, match="unknown corruption"):
        evaluate_corruptions(predictor, images, labels, names=("darkness", "rain"))
    with pytest.raises(ValueError, match="labels"):
        evaluate_corruptions(predictor, images, labels[:3])
    assert predictor.calls == 0
    steps: list[tuple[int, int]] = []
    rows = evaluate_corruptions(predictor, images, labels, names=("noise",), severities=(2,), batch_size=4,
                                progress=lambda done, total: steps.append((done, total)))
    assert [(r["corruption"], r["severity"]) for r in rows] == [("clean", 0), ("noise", 2)]
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_robustness_frame_and_mean_accuracy_rank_runs() -> None:
    steady = [{"corruption": "clean", "severity": 0, "accuracy": 0.9},
              {"corruption": "noise", "severity": 1, "accuracy": 0.8},
              {"corruption": "noise", "severity": 2, "accuracy": 0.7}]
    fragile = [{**row, "accuracy": row["accuracy"] - 0.3 * row["severity"]} for row in steady]
    frame = robustness_frame({"a": steady, "b": fragile})
    assert list(frame.columns) == ["run", "corruption", "severity", "accuracy"] and len(frame) == 6
    assert isinstance(frame, pd.DataFrame)
    assert math.isclose(mean_corruption_accuracy(steady), 0.75)
    assert mean_corruption_accuracy(steady) > mean_corruption_accuracy(fragile)
    with pytest.raises(ValueError):
        mean_corruption_accuracy(steady[:1])


def _write_folder(root: Path) -> Path:
    """train/ and val/ with a bright and a dark class, 16 px PNGs."""
    for split, count in (("train", 2), ("val", 4)):
        for name, level in (("bright", 200), ("dark", 40)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (16, 16), (level, level + i, level)).save(folder / f"{name}{i}.png")
    return root


def test_corruption_report_loads_the_split_as_evaluation_does(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "data")
    report = corruption_report(BrightnessPredictor(), root, split="val", seed=2)
    assert json.loads(json.dumps(report)) == report
    assert (report["split"], report["n"], report["seed"]) == ("val", 8, 2)
    assert report["rows"][0]["accuracy"] == 1.0  # labels remapped to the run's class order
    assert report["worst"]["corruption"] != "clean"
    with pytest.raises(UserError, match="split must be one of"):
        corruption_report(BrightnessPredictor(), root, split="holdout")
    with pytest.raises(UserError, match="unknown corruption 'fog'"):
        corruption_report(BrightnessPredictor(), root, names=("fog",))
    only = corruption_report(BrightnessPredictor(), root, names=("darkness",), severities=(3,))
    assert [r["corruption"] for r in only["rows"]] == ["clean", "darkness"]
    assert only["worst"]["description"] == "darkness (brightness x0.25)" and only["worst"]["accuracy"] == 0.5
    with pytest.raises(UserError, match="no test split"):
        corruption_report(BrightnessPredictor(), root, split="test")
    (root / "val" / "grey").mkdir()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(root / "val" / "grey" / "g.png")
    (root / "train" / "grey").mkdir()
    Image.new("RGB", (16, 16), (128, 128, 128)).save(root / "train" / "grey" / "g.png")
    with pytest.raises(UserError, match="classes the run does not know: grey"):
        corruption_report(BrightnessPredictor(), root)
