"""augment.py: one preprocessing for val and prediction, sign-safe batch augmentation."""

from __future__ import annotations

import pytest
import torch

from speedsign.augment import (
    center_crop,
    normalize,
    prepare_batch,
    preview_augmentations,
    resolve_augment,
    standardize,
    stretch_contrast,
)
from speedsign.config import AUTO_MIN_EPOCHS, IMAGENET_MEAN, resolve_config


def _batch(n: int = 16, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def test_eval_preprocessing_is_normalisation_only_for_square_resize() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "contrast": "none"})
    batch = _batch()
    out = prepare_batch(batch, config=config, train=False)
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out, normalize(batch))


def test_tutorial_eval_is_a_center_crop_of_the_stored_image() -> None:
    config = resolve_config(approach="scratch", preset="tutorial", overrides={"img_size": 56})
    assert config.stored_size == 64
    batch = _batch(size=64)
    out = prepare_batch(batch, config=config, train=False)
    assert out.shape[-1] == 56
    assert torch.allclose(out, normalize(center_crop(batch, 56)))


@pytest.mark.parametrize("augment", ["signs", "tutorial"])
def test_training_augmentation_is_seeded_batched_and_keeps_shape(augment: str) -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "augment": augment})
    batch = _batch()
    first = prepare_batch(batch, config=config, train=True, generator=torch.Generator().manual_seed(1))
    again = prepare_batch(batch, config=config, train=True, generator=torch.Generator().manual_seed(1))
    other = prepare_batch(batch, config=config, train=True, generator=torch.Generator().manual_seed(2))
    assert first.shape == (16, 3, 32, 32)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.allclose(first, normalize(batch))


def test_sign_augmentation_never_mirrors_the_image() -> None:
    # Left half bright, right half dark: a flip would put the bright half on the right.
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "augment": "signs"})
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[..., :16] = 255
    batch = image.expand(256, -1, -1, -1).contiguous()
    out = prepare_batch(batch, config=config, train=True, generator=torch.Generator().manual_seed(0))
    left, right = out[..., :, :12].mean(dim=(1, 2, 3)), out[..., :, 20:].mean(dim=(1, 2, 3))
    assert bool((left > right).all())


def test_tutorial_augmentation_does_flip_some_images() -> None:
    config = resolve_config(approach="scratch", preset="tutorial", overrides={"img_size": 28})
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[..., :16] = 255
    out = prepare_batch(image.expand(256, -1, -1, -1).contiguous(), config=config, train=True,
                        generator=torch.Generator().manual_seed(0))
    left, right = out[..., :, :8].mean(dim=(1, 2, 3)), out[..., :, 20:].mean(dim=(1, 2, 3))
    assert bool((right > left).any())


def test_preview_gives_eight_uint8_versions_of_one_image() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "augment": "signs"})
    previews = preview_augmentations(_batch(1)[0], config=config, n=8, seed=0)
    assert previews.shape == (8, 3, 32, 32) and previews.dtype == torch.uint8
    assert len({bytes(p.numpy().tobytes()) for p in previews}) == 8


def test_channels_last_output_for_the_training_device() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32})
    out = prepare_batch(_batch(), config=config, train=False, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(normalize(torch.full((1, 3, 1, 1), 0, dtype=torch.uint8))[0, 0]) + IMAGENET_MEAN[0] / 0.229) < 1e-5


def test_contrast_stretch_maps_a_dark_photo_to_the_full_range() -> None:
    torch.manual_seed(0)
    # Levels 13-64 of 255, like a night photo; grey, so no channel is clipped alone.
    dark = (torch.rand(4, 1, 32, 32) * 0.2 + 0.05).expand(4, 3, 32, 32)
    out = stretch_contrast(dark)
    gray = out.mean(dim=1).flatten(1)
    assert float(gray.quantile(0.02, dim=1).max()) < 0.01
    assert float(gray.quantile(0.98, dim=1).min()) > 0.99
    assert out.min() >= 0 and out.max() <= 1


def test_contrast_stretch_ignores_exposure_and_keeps_flat_images_finite() -> None:
    torch.manual_seed(1)
    photo = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    darker = photo * 0.4  # the same scene, under-exposed
    assert torch.allclose(stretch_contrast(photo), stretch_contrast(darker), atol=1e-5)
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.isfinite(stretch_contrast(flat)).all()


def test_centre_levels_expose_a_dark_sign_against_a_bright_sky() -> None:
    torch.manual_seed(3)
    # A backlit sign: a dark middle (levels 10-50 of 255) in a bright frame (230-250).
    image = torch.rand(1, 3, 40, 40) * 0.08 + 0.9
    image[..., 8:32, 8:32] = torch.rand(1, 3, 24, 24).mean(dim=1, keepdim=True) * 0.16 + 0.04
    middle = slice(14, 26)  # inside the measured middle (60% of the side) and the sign
    whole = stretch_contrast(image)[..., middle, middle].mean(dim=1)
    centre = stretch_contrast(image, centre=True)[..., middle, middle].mean(dim=1)
    assert float(whole.max() - whole.min()) < 0.25  # the sky's levels leave the sign a dark smudge
    assert float(centre.max() - centre.min()) > 0.9  # its own levels spread it over the whole range
    config = resolve_config(approach="scratch", overrides={"img_size": 40, "contrast": "centre"})
    assert torch.allclose(prepare_batch((image * 255).round().to(torch.uint8), config=config, train=False),
                          standardize(stretch_contrast(((image * 255).round() / 255), centre=True)), atol=1e-5)


def test_contrast_setting_applies_to_evaluation_and_training_alike() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "contrast": "stretch", "augment": "signs"})
    torch.manual_seed(2)
    photo = torch.randint(40, 220, (2, 3, 32, 32), dtype=torch.uint8)
    darker = (photo.float() * 0.5).round().to(torch.uint8)
    bright_in = prepare_batch(photo, config=config, train=False)
    dark_in = prepare_batch(darker, config=config, train=False)
    # Exposure no longer reaches the network (up to the rounding of the darker copy to uint8).
    assert (bright_in - dark_in).abs().mean() < 0.05
    assert not torch.allclose(bright_in, normalize(photo))
    assert resolve_config(approach="scratch").contrast == "stretch"  # the fast preset, chosen by measurement
    trained = prepare_batch(photo, config=config, train=True, generator=torch.Generator().manual_seed(0))
    gray = trained.mean(dim=1).flatten(1)  # standardised: the stretched range spans about 4 units
    assert float((gray.max(1).values - gray.min(1).values).min()) > 3.5


def test_auto_augmentation_is_signs_only_for_runs_that_see_every_image_often() -> None:
    config = resolve_config(approach="scratch", overrides={"augment": "auto"})
    n_train = 1000
    assert resolve_augment(config, images=int(AUTO_MIN_EPOCHS * n_train), n_train=n_train) == "signs"
    assert resolve_augment(config, images=int(AUTO_MIN_EPOCHS * n_train) - 1, n_train=n_train) == "none"
    for fixed in ("signs", "tutorial", "none"):  # a recipe set by hand is kept, however short the run
        chosen = resolve_config(approach="scratch", overrides={"augment": fixed})
        assert resolve_augment(chosen, images=1, n_train=n_train) == fixed


def test_auto_augmentation_must_be_decided_before_a_training_batch() -> None:
    config = resolve_config(approach="scratch", overrides={"augment": "auto", "img_size": 32})
    with pytest.raises(ValueError, match="resolve_augment"):
        prepare_batch(_batch(), config=config, train=True, generator=torch.Generator().manual_seed(0))
    assert prepare_batch(_batch(), config=config, train=False).shape == (16, 3, 32, 32)  # evaluation never augments
