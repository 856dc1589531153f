"""augment.py: one preprocessing for val and prediction, sign-safe batch augmentation."""

from __future__ import annotations

import pytest
import torch

from speedsign.augment import center_crop, normalize, prepare_batch, preview_augmentations
from speedsign.config import IMAGENET_MEAN, resolve_config


def _batch(n: int = 16, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)


def test_eval_preprocessing_is_normalisation_only_for_square_resize() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32})
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
    config = resolve_config(approach="scratch", overrides={"img_size": 32})
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
    config = resolve_config(approach="scratch", overrides={"img_size": 32})
    previews = preview_augmentations(_batch(1)[0], config=config, n=8, seed=0)
    assert previews.shape == (8, 3, 32, 32) and previews.dtype == torch.uint8
    assert len({bytes(p.numpy().tobytes()) for p in previews}) == 8


def test_channels_last_output_for_the_training_device() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32})
    out = prepare_batch(_batch(), config=config, train=False, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(normalize(torch.full((1, 3, 1, 1), 0, dtype=torch.uint8))[0, 0]) + IMAGENET_MEAN[0] / 0.229) < 1e-5
