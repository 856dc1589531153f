"""Saliency: gradient x input against independent computations, on every approach; the map of a
trained model peaks on the sign; Grad-CAM (kept for comparison) against class activation maps."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from speedsign.augment import prepare_batch
from speedsign.config import IMAGENET_MEAN, IMAGENET_STD, resolve_config
from speedsign.models import (
    backbone_features,
    build_model,
    build_untrained,
    checkpoint_payload,
    freeze_backbone,
    load_weights_file,
)
from speedsign.predict import Predictor
from speedsign.saliency import grad_cam, jet_colormap, overlay_heatmap, saliency_map, smoothing_width
from speedsign.storage import atomic_torch_save
from speedsign.synth import draw_face

APPROACHES = ("finetune", "frozen", "scratch")
CLASSES = ("speed_30", "speed_50", "speed_80")
METHODS = (saliency_map, grad_cam)


def hand_made_predictor(root: Path, approach: str, *, img_size: int = 64, resize: str = "square",
                        seed: int = 0) -> Predictor:
    """A random-init model at a size where layer4 has a real spatial grid (64 px -> 2x2)."""
    torch.manual_seed(seed)
    # Plain normalisation (no contrast stretch): the tests below compute the input by hand.
    overrides: dict[str, object] = {"img_size": img_size, "resize": resize, "contrast": "none"}
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


def normalised(image: torch.Tensor) -> np.ndarray:
    """What the network sees for resize "square", computed here with numpy: (3, S, S)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (image.numpy().astype(np.float32) / 255.0 - mean) / std


def box_mean(values: np.ndarray, width: int) -> np.ndarray:
    """Mean over the width x width window around each pixel, of the pixels inside the image."""
    half = width // 2
    height, breadth = values.shape
    out = np.empty_like(values)
    for row in range(height):
        for col in range(breadth):
            out[row, col] = values[max(0, row - half):row + half + 1, max(0, col - half):col + half + 1].mean()
    return out


def scaled(heat: np.ndarray) -> np.ndarray:
    return heat / heat.max() if heat.max() > 1e-12 else np.zeros_like(heat)


# ---------------------------------------------------------------- the tiny real runs

@pytest.mark.parametrize("approach", APPROACHES)
@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_maps_on_real_runs_shape_range_and_no_side_effects(runs_with_results, synth_dir, approach, method):
    predictor = Predictor(runs_with_results[approach])
    image = predictor.load_tensor(next(synth_dir.rglob("*.png")))
    if approach == "frozen":
        # As in training: no gradient anywhere before fc, yet the map's gradient must exist.
        freeze_backbone(predictor.model)
    flags = [p.requires_grad for p in predictor.model.parameters()]

    heat = method(predictor, image)

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
def test_saliency_resolves_a_16_px_run_whose_last_block_is_one_cell(runs_with_results, synth_dir, approach):
    predictor = Predictor(runs_with_results[approach])
    # A well-lit sign: gradient x input is rightly near zero over a dark (backlit) one, which
    # would say nothing about the map's resolution.
    first = sorted(synth_dir.rglob("*.png"))[:20]
    image = predictor.load_tensor(max(first, key=lambda path: np.asarray(Image.open(path)).mean()))
    assert np.ptp(grad_cam(predictor, image)) < 1e-3  # layer4 is 1x1 at 16 px: one flat cell
    heat = saliency_map(predictor, image)
    # Pixel-level, not cells: a map of 4x4 blocks (or coarser) has at most 16 levels. The count
    # depends on how concentrated the heat is (most pixels of a small sign are near 0).
    assert np.ptp(heat) > 0.5 and len(np.unique(heat.round(3))) > 16


@pytest.mark.parametrize("approach", APPROACHES)
def test_grad_cam_on_real_runs_matches_reference_for_each_class(runs_with_results, synth_dir, approach):
    predictor = Predictor(runs_with_results[approach])
    image = predictor.load_tensor(next(synth_dir.rglob("*.png")))
    for class_index in (0, len(predictor.classes) - 1):
        np.testing.assert_allclose(grad_cam(predictor, image, class_index=class_index),
                                   reference_cam(predictor, image, class_index), atol=1e-5)


# ---------------------------------------------------------------- a trained model, a centred sign

SIGN_CLASSES = ("speed_30", "speed_80", "end_speed_80")
# Plain backgrounds away from the ImageNet mean colour: gradient x input measures pixels from
# that colour, so a mean-grey background would get no heat whatever the model.
BACKGROUNDS = ((30, 90, 200), (200, 60, 40), (60, 170, 70), (230, 230, 230), (20, 20, 20), (120, 200, 220))


def sign_scene(side: int, class_name: str, *, frac: float, centre: tuple[float, float],
               background: tuple[int, ...], variant: int = 0) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """A sign face (a disc frac of the side across) at `centre` on a plain background, and its
    disc (centre row, centre column, radius) in pixels."""
    d = max(4, round(side * frac))
    face = draw_face(class_name, variant).resize((d, d), Image.Resampling.BOX)
    canvas = Image.new("RGB", (side, side), tuple(background))
    left, top = round(centre[0] * side - d / 2), round(centre[1] * side - d / 2)
    canvas.paste(face, (left, top), face)
    image = torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()
    return image, (top + d / 2 - 0.5, left + d / 2 - 0.5, d / 2)


def disc_mask(side: int, disc: tuple[float, float, float]) -> np.ndarray:
    rows, cols = np.mgrid[:side, :side]
    return (rows - disc[0]) ** 2 + (cols - disc[1]) ** 2 <= disc[2] ** 2


@pytest.fixture(scope="module")
def trained_sign_model(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> Predictor:
    """A 64 px frozen-approach model (the suite's local backbone) whose fc learnt three signs.

    Trained as the frozen approach trains, on the backbone's features (here cached once and fitted
    by L-BFGS): 1200 signs at 40-80% of the side, anywhere in the image, on random plain
    colours. About 6 s on two cores.
    """
    side = 64
    rng = np.random.default_rng(0)
    images, labels = [], []
    for number in range(1200):
        frac = float(rng.uniform(0.4, 0.8))
        centre = tuple(float(v) for v in rng.uniform(frac / 2, 1 - frac / 2, 2))
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        image, _ = sign_scene(side, SIGN_CLASSES[number % 3], frac=frac, centre=centre, background=background,
                              variant=int(rng.integers(4)))
        images.append(image)
        labels.append(number % 3)
    config = resolve_config(approach="frozen", overrides={"img_size": side, "weights": str(weights_file)})
    model = build_model(config, num_classes=len(SIGN_CLASSES), backbone=load_weights_file(weights_file)).eval()
    with torch.no_grad():
        features = backbone_features(model, prepare_batch(torch.stack(images), config=config, train=False))
    targets = torch.tensor(labels)
    torch.manual_seed(0)
    head = torch.nn.Linear(features.shape[1], len(SIGN_CLASSES))
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.cross_entropy(head(features), targets) + 1e-3 * head.weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    assert float((head(features).argmax(1) == targets).float().mean()) > 0.9  # it did learn
    with torch.no_grad():
        model.fc.load_state_dict(head.state_dict())
    run_dir = tmp_path_factory.mktemp("trained") / "frozen-64"
    atomic_torch_save(checkpoint_payload(model, config=config, classes=SIGN_CLASSES), run_dir / "best.pt")
    predictor = Predictor(run_dir)
    freeze_backbone(predictor.model)
    return predictor


def test_a_trained_models_map_peaks_on_a_centred_sign(trained_sign_model):
    predictor = trained_sign_model
    side = predictor.config.stored_size
    right = 0
    for class_name in SIGN_CLASSES:
        for background in BACKGROUNDS:
            image, disc = sign_scene(side, class_name, frac=0.5, centre=(0.5, 0.5), background=background)
            right += predictor.predict_tensor(image).label == class_name
            inside = disc_mask(side, disc)
            heat = saliency_map(predictor, image)
            peak = np.unravel_index(heat.argmax(), heat.shape)
            assert inside[peak], (class_name, background, peak)
            # The sign (a fifth of the image) is hotter than the background throughout ...
            assert heat[inside].mean() > 1.3 * heat[~inside].mean(), (class_name, background)
            # ... and it is resolved inside it, not one upsampled blob: the map rises and falls
            # across the disc at the input's resolution.
            rows, cols = np.nonzero(inside)
            assert np.ptp(heat[rows.min():rows.max() + 1, cols.min():cols.max() + 1]) > 0.5
            # The old map (Grad-CAM on layer4, 2x2 at 64 px) can only peak near a cell centre,
            # outside the middle half of the image.
            old = grad_cam(predictor, image)
            assert not inside[np.unravel_index(old.argmax(), old.shape)]
    assert right > len(SIGN_CLASSES) * len(BACKGROUNDS) / 2  # it reads most: the maps explain real answers


# ---------------------------------------------------------------- hand-made models

class LinearNet(torch.nn.Module):
    """One linear layer on the pixels: the class score's gradient is that class's weights."""

    def __init__(self, side: int, *, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * side * side, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("approach", APPROACHES)
def test_saliency_of_a_linear_model_is_smoothed_weights_times_input(tmp_path, approach):
    predictor = hand_made_predictor(tmp_path, approach)
    predictor.model = LinearNet(64).eval()
    image = textured_image(64, patch=slice(36, 60))
    x = normalised(image)
    weights = predictor.model.fc.weight.detach().numpy().reshape(len(CLASSES), 3, 64, 64)
    assert smoothing_width(64) == 9
    for class_index in range(len(CLASSES)):
        expected = scaled(box_mean(np.abs((weights[class_index] * x).sum(axis=0)), 9))
        np.testing.assert_allclose(saliency_map(predictor, image, class_index=class_index), expected, atol=1e-5)


def test_smoothing_width_is_an_odd_eighth_of_the_side():
    assert [smoothing_width(side) for side in (16, 32, 48, 64, 224)] == [3, 5, 7, 9, 29]


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


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_default_class_is_the_predicted_one(tmp_path, method):
    predictor = hand_made_predictor(tmp_path, "finetune")
    image = textured_image(64, patch=slice(4, 28))
    predicted = predictor.classes.index(predictor.predict_tensor(image).label)
    np.testing.assert_array_equal(method(predictor, image), method(predictor, image, class_index=predicted))
    others = [method(predictor, image, class_index=c) for c in range(len(CLASSES)) if c != predicted]
    assert any(not np.array_equal(method(predictor, image), other) for other in others)


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


def texture_predictor(tmp_path: Path) -> tuple[Predictor, torch.Tensor]:
    predictor = hand_made_predictor(tmp_path, "scratch")
    predictor.model = TextureNet().eval()
    # Top-right, so a transposed or flipped map would put the heat elsewhere.
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    image[:, 4:28, 36:60] = torch.randint(0, 256, (3, 24, 24), generator=generator, dtype=torch.uint8)
    return predictor, image


def assert_top_right(heat: np.ndarray) -> None:
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert row < 32 <= col
    quadrant = heat[:32, 32:].mean()
    for other in (heat[:32, :32], heat[32:, :32], heat[32:, 32:]):
        assert quadrant > 3 * other.mean()


def test_grad_cam_localises_the_differing_content(tmp_path):
    predictor, image = texture_predictor(tmp_path)
    heat = grad_cam(predictor, image, class_index=0)
    assert_top_right(heat)
    assert heat[8:24, 40:56].min() > 0.5  # the middle of the patch is hot throughout
    assert grad_cam(predictor, image, class_index=1).max() == 0.0  # evidence against: nothing
    assert grad_cam(predictor, image, class_index=2).max() == 0.0  # no evidence: nothing


def test_saliency_localises_the_differing_content(tmp_path):
    predictor, image = texture_predictor(tmp_path)
    heat = saliency_map(predictor, image, class_index=0)
    assert_top_right(heat)
    assert heat[:, :24].max() == 0.0 and heat[36:].max() == 0.0  # flat grey moves no score
    # Evidence against is shown too (the magnitude of each pixel's share); no evidence: nothing.
    np.testing.assert_allclose(saliency_map(predictor, image, class_index=1), heat, atol=1e-6)
    assert saliency_map(predictor, image, class_index=2).max() == 0.0


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_tutorial_resize_heats_only_the_centre_crop(tmp_path, method):
    predictor = hand_made_predictor(tmp_path, "scratch", resize="tutorial")
    side = predictor.config.stored_size
    assert side > predictor.config.img_size
    image = textured_image(side, patch=slice(10, 40))
    heat = method(predictor, image, class_index=1)
    assert heat.shape == (side, side) and heat.max() == 1.0
    top = (side - predictor.config.img_size) // 2
    assert heat[:top].max() == 0.0 and heat[:, :top].max() == 0.0
    if method is grad_cam:
        np.testing.assert_allclose(heat, reference_cam(predictor, image, 1), atol=1e-5)


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_all_zero_map_stays_zero(tmp_path, method):
    predictor = hand_made_predictor(tmp_path, "scratch")
    with torch.no_grad():  # no class evidence anywhere: zero gradient, relu(0) everywhere
        predictor.model.fc.weight.zero_()
    heat = method(predictor, textured_image(64, patch=slice(4, 28)), class_index=2)
    assert heat.shape == (64, 64) and not np.isnan(heat).any() and heat.max() == 0.0


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_works_inside_a_callers_inference_mode(tmp_path, method):
    predictor = hand_made_predictor(tmp_path, "frozen")
    image = textured_image(64, patch=slice(4, 28))
    expected = method(predictor, image, class_index=1)
    with torch.inference_mode():
        np.testing.assert_array_equal(method(predictor, image, class_index=1), expected)
        inference_image = image.clone()  # an inference tensor, as a caller's would be
    np.testing.assert_array_equal(method(predictor, inference_image, class_index=1), expected)


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__)
def test_bad_arguments_are_clear_errors(tmp_path, method):
    predictor = hand_made_predictor(tmp_path, "scratch")
    image = textured_image(64, patch=slice(4, 28))
    with pytest.raises(ValueError, match="class_index"):
        method(predictor, image, class_index=3)
    with pytest.raises(ValueError, match="uint8"):
        method(predictor, image.float(), class_index=0)
    with pytest.raises(ValueError, match=r"\(3, S, S\)"):
        method(predictor, image[0], class_index=0)


def test_threads_sharing_one_predictor_get_the_same_maps(tmp_path):
    predictor = hand_made_predictor(tmp_path, "finetune")
    images = [textured_image(64, patch=slice(4 + 4 * i, 28 + 4 * i), seed=i) for i in range(4)]
    expected = [saliency_map(predictor, image) for image in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(number: int) -> None:
        try:
            if number % 2:  # predictions interleaved with saliency maps on the same model
                predictor.predict_tensor(images[number % 4])
            if number % 5 == 0:
                grad_cam(predictor, images[number % 4])
            results[number] = saliency_map(predictor, images[number % 4])
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


def test_saliency_feeds_overlay(tmp_path):
    predictor = hand_made_predictor(tmp_path, "scratch")
    image = textured_image(64, patch=slice(4, 28))
    out = overlay_heatmap(image.permute(1, 2, 0).numpy(), saliency_map(predictor, image))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
