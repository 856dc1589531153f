"""Grad-CAM against an independent class-activation computation, on every approach."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from speedsign.augment import prepare_batch
from speedsign.config import resolve_config
from speedsign.models import build_untrained, checkpoint_payload, freeze_backbone
from speedsign.predict import Predictor
from speedsign.saliency import grad_cam, jet_colormap, overlay_heatmap
from speedsign.storage import atomic_torch_save

APPROACHES = ("finetune", "frozen", "scratch")
CLASSES = ("speed_30", "speed_50", "speed_80")


def hand_made_predictor(root: Path, approach: str, *, img_size: int = 64, resize: str = "square",
                        seed: int = 0) -> Predictor:
    """A random-init model at a size where layer4 has a real spatial grid (64 px -> 2x2)."""
    torch.manual_seed(seed)
    overrides: dict[str, object] = {"img_size": img_size, "resize": resize}
    if approach != "scratch":
        overrides["weights"] = "local.pth"  # only recorded; nothing is loaded from it here
    config = resolve_config(approach=approach, overrides=overrides)
    model = build_untrained(approach, num_classes=len(CLASSES))
    run_dir = root / f"{approach}-{img_size}-{resize}-{seed}"
    atomic_torch_save(checkpoint_payload(model, config=config, classes=CLASSES), run_dir / "best.pt")
    predictor = Predictor(run_dir)
    if approach == "frozen":
        freeze_backbone(predictor.model)
    return predictor


def textured_image(side: int, *, patch: slice, seed: int = 1) -> torch.Tensor:
    """Flat grey with random texture in one square: content that differs in one place."""
    image = torch.full((3, side, side), 128, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(seed)
    size = patch.stop - patch.start
    image[:, patch, patch] = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
    return image


def reference_cam(predictor: Predictor, image: torch.Tensor, class_index: int) -> np.ndarray:
    """CAM of Zhou et al. 2016, computed without hooks or autograd.

    Behind global average pooling and one linear layer, the gradient of a class score with
    respect to layer4's output is fc.weight[c] / (h*w) everywhere, so Grad-CAM equals
    relu(sum_k w_ck A_k) up to a positive factor that normalisation removes.
    """
    model = predictor.model
    batch = prepare_batch(image.unsqueeze(0), config=predictor.config, train=False)
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(batch))))
        acts = model.layer4(model.layer3(model.layer2(model.layer1(x))))[0]
        cam = torch.relu(torch.einsum("k,khw->hw", model.fc.weight[class_index], acts))
    crop = batch.shape[-1]
    cam = F.interpolate(cam[None, None], size=(crop, crop), mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max() if float(cam.max()) > 1e-12 else torch.zeros_like(cam)
    side = image.shape[-1]
    out = np.zeros((side, side), dtype=np.float32)
    top = (side - crop) // 2
    out[top:top + crop, top:top + crop] = cam.numpy()
    return out


def leftover_hooks(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks]


# ---------------------------------------------------------------- the tiny real runs

@pytest.mark.parametrize("approach", APPROACHES)
def test_grad_cam_on_real_runs_shape_range_and_no_side_effects(runs_with_results, synth_dir, approach):
    predictor = Predictor(runs_with_results[approach])
    image_path = next((synth_dir).rglob("*.png"))
    image = predictor.load_tensor(image_path)
    if approach == "frozen":
        # As in training: no gradient anywhere before fc, yet layer4's gradient must exist.
        freeze_backbone(predictor.model)
    flags = [p.requires_grad for p in predictor.model.parameters()]

    heat = grad_cam(predictor, image)

    side = predictor.config.stored_size
    assert heat.shape == (side, side) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert leftover_hooks(predictor.model) == []
    assert [p.requires_grad for p in predictor.model.parameters()] == flags
    assert all(p.grad is None for p in predictor.model.parameters())
    assert not predictor.model.training
    # The model still predicts as before.
    assert predictor.predict_tensor(image).label in predictor.classes


@pytest.mark.parametrize("approach", APPROACHES)
def test_grad_cam_on_real_runs_matches_reference_for_each_class(runs_with_results, synth_dir, approach):
    predictor = Predictor(runs_with_results[approach])
    image = predictor.load_tensor(next(synth_dir.rglob("*.png")))
    for class_index in (0, len(predictor.classes) - 1):
        np.testing.assert_allclose(grad_cam(predictor, image, class_index=class_index),
                                   reference_cam(predictor, image, class_index), atol=1e-5)


# ---------------------------------------------------------------- hand-made models with a grid

@pytest.mark.parametrize("approach", APPROACHES)
def test_grad_cam_equals_class_activation_map(tmp_path, approach):
    predictor = hand_made_predictor(tmp_path, approach)
    image = textured_image(64, patch=slice(36, 60))
    maps = []
    for class_index in range(len(CLASSES)):
        heat = grad_cam(predictor, image, class_index=class_index)
        np.testing.assert_allclose(heat, reference_cam(predictor, image, class_index), atol=1e-5)
        maps.append(heat)
    # class_index is honoured: different classes, different maps.
    assert any(not np.allclose(maps[0], other) for other in maps[1:])


def test_default_class_is_the_predicted_one(tmp_path):
    predictor = hand_made_predictor(tmp_path, "finetune")
    image = textured_image(64, patch=slice(4, 28))
    predicted = predictor.classes.index(predictor.predict_tensor(image).label)
    np.testing.assert_array_equal(grad_cam(predictor, image), grad_cam(predictor, image, class_index=predicted))


class TextureNet(torch.nn.Module):
    """A model we understand: layer4 measures local texture (|Laplacian|) on an 8x8 grid.

    Class 0 sums the texture (its Grad-CAM is the texture map), class 1 counts it against
    (relu leaves nothing), class 2 ignores it.
    """

    def __init__(self) -> None:
        super().__init__()
        laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        conv = torch.nn.Conv2d(3, 2, 3, padding=1, padding_mode="replicate", bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.stack([laplacian, -laplacian])[:, None].expand(2, 3, 3, 3) / 3)
        self.layer4 = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AvgPool2d(8))
        self.fc = torch.nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layer4(x), 1), 1))


def test_grad_cam_localises_the_differing_content(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch")
    predictor.model = TextureNet().eval()
    # Top-right, so a transposed or flipped map would put the heat elsewhere.
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    image[:, 4:28, 36:60] = torch.randint(0, 256, (3, 24, 24), generator=generator, dtype=torch.uint8)
    heat = grad_cam(predictor, image, class_index=0)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert row < 32 <= col
    quadrant = heat[:32, 32:].mean()
    for other in (heat[:32, :32], heat[32:, :32], heat[32:, 32:]):
        assert quadrant > 3 * other.mean()
    assert heat[8:24, 40:56].min() > 0.5  # the middle of the patch is hot throughout
    assert grad_cam(predictor, image, class_index=1).max() == 0.0  # evidence against: nothing
    assert grad_cam(predictor, image, class_index=2).max() == 0.0  # no evidence: nothing


def test_tutorial_resize_heats_only_the_centre_crop(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch", resize="tutorial")
    side = predictor.config.stored_size
    assert side > predictor.config.img_size
    heat = grad_cam(predictor, textured_image(side, patch=slice(10, 40)), class_index=1)
    assert heat.shape == (side, side)
    top = (side - predictor.config.img_size) // 2
    assert heat[:top].max() == 0.0 and heat[:, :top].max() == 0.0
    np.testing.assert_allclose(heat, reference_cam(predictor, textured_image(side, patch=slice(10, 40)), 1),
                               atol=1e-5)


def test_all_zero_map_stays_zero(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch")
    with torch.no_grad():  # no class evidence anywhere: relu(0) everywhere
        predictor.model.fc.weight.zero_()
    heat = grad_cam(predictor, textured_image(64, patch=slice(4, 28)), class_index=2)
    assert heat.shape == (64, 64) and not np.isnan(heat).any() and heat.max() == 0.0


def test_works_inside_a_callers_inference_mode(tmp_path):
    predictor = hand_made_predictor(tmp_path, "frozen")
    image = textured_image(64, patch=slice(4, 28))
    expected = grad_cam(predictor, image, class_index=1)
    with torch.inference_mode():
        np.testing.assert_array_equal(grad_cam(predictor, image, class_index=1), expected)


def test_bad_arguments_are_clear_errors(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch")
    image = textured_image(64, patch=slice(4, 28))
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(predictor, image, class_index=3)
    with pytest.raises(ValueError, match="uint8"):
        grad_cam(predictor, image.float(), class_index=0)
    with pytest.raises(ValueError, match=r"\(3, S, S\)"):
        grad_cam(predictor, image[0], class_index=0)


def test_threads_sharing_one_predictor_get_the_same_maps(tmp_path):
    predictor = hand_made_predictor(tmp_path, "finetune")
    images = [textured_image(64, patch=slice(4 + 4 * i, 28 + 4 * i), seed=i) for i in range(4)]
    expected = [grad_cam(predictor, image) for image in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            if number % 2:  # predictions interleaved with Grad-CAM on the same model
                predictor.predict_tensor(images[number % 4])
            results[number] = grad_cam(predictor, images[number % 4])
        except BaseException as error:  # reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for number, heat in results.items():
        np.testing.assert_array_equal(heat, expected[number % 4])
    assert leftover_hooks(predictor.model) == []


# ---------------------------------------------------------------- overlay

def test_jet_colormap_runs_blue_to_red():
    table = jet_colormap()
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[0].argmax() == 2 and table[-1].argmax() == 0  # blue at 0, red at 1
    assert table[128][1] == 255  # green in the middle


def test_overlay_blends_and_resizes():
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    heat = np.zeros((4, 3), dtype=np.float32)
    heat[0, 0] = 1.0
    out = overlay_heatmap(image, heat, alpha=0.5)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[0, 0, 2]  # hot corner is red
    assert out[-1, -1, 2] > out[-1, -1, 0]  # cold corner is blue
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    full = overlay_heatmap(image, heat, alpha=1.0)
    np.testing.assert_array_equal(full[-1, -1], jet_colormap()[0])


def test_overlay_accepts_tensors_grey_and_nan():
    tensor = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    heat = np.full((8, 8), np.nan, dtype=np.float32)
    out = overlay_heatmap(tensor, heat)
    assert out.shape == (8, 8, 3)
    assert overlay_heatmap(np.zeros((8, 8), dtype=np.uint8), np.ones((2, 2))).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(np.zeros((8, 8, 3), dtype=np.uint8), np.ones((2, 2)), alpha=2)
    with pytest.raises(ValueError, match="uint8"):
        overlay_heatmap(np.zeros((8, 8, 3), dtype=np.float32), np.ones((2, 2)))


def test_grad_cam_feeds_overlay(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch")
    image = textured_image(64, patch=slice(4, 28))
    out = overlay_heatmap(image.permute(1, 2, 0).numpy(), grad_cam(predictor, image))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
