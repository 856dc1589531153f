"""The synthetic faces beside real photos: rows per class, real photos matched by name, the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedsign import datasets, faces, synth
from speedsign.data import scan_dataset

from app_support import fresh_app_env, plain, start, texts

# Solid colours per class, so a test can tell whose photo landed in which row.
COLOURS = {"speed_30": (200, 30, 30), "speed_80": (30, 30, 200), "stop": (30, 200, 30)}


def real_folder(folder: Path, classes: tuple[str, ...] = ("speed_30", "speed_80"), *,
                tracks: int = 3, frames: int = 2) -> Path:
    """A tiny GTSRB-like set: train/<class>/<track>_<frame>.png, 20x24 px solid colours."""
    for name in classes:
        (folder / "train" / name).mkdir(parents=True)
        for track in range(tracks):
            for frame in range(frames):
                Image.new("RGB", (20, 24), COLOURS.get(name, (90, 90, 90))).save(
                    folder / "train" / name / f"{track:05d}_{frame:05d}.png")
    return folder


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces") / "synth"
    synth.render_dataset(out, per_class=2, size=16, workers=1)
    return out


def check_picture(picture: np.ndarray, shape: tuple[int, int, int]) -> None:
    assert picture.dtype == np.uint8
    assert picture.shape == shape


# ---------------------------------------------------------------- rows

def test_rows_cover_every_class_in_renderer_order_without_real_photos() -> None:
    rows = faces.face_rows(None, per_class=2, size=48)
    assert [row.class_name for row in rows] == list(synth.CLASS_NAMES)
    for row in rows:
        check_picture(row.face, (48, 48, 3))
        assert len(row.rendered) == 2
        for picture in row.rendered:
            check_picture(picture, (48, 48, 3))
        assert row.real == []


def test_the_flat_face_sits_on_grey_and_the_samples_are_the_renderers_own() -> None:
    row = faces.face_rows(None, per_class=2, seed=7, size=64)[2]
    assert tuple(row.face[0, 0]) == faces.BACKGROUND  # a corner is outside the disc
    assert row.face[32, 32].tolist() != list(faces.BACKGROUND)
    for k, picture in enumerate(row.rendered):
        expected = synth.render_track("speed_50", rng=np.random.default_rng([7, 2, k]), size=32, n_frames=1)[0]
        np.testing.assert_array_equal(picture[::2, ::2], np.asarray(expected))  # NEAREST: 2x2 blocks
        np.testing.assert_array_equal(picture[1::2, 1::2], np.asarray(expected))
    again = faces.face_rows(None, per_class=2, seed=7, size=64)[2]
    np.testing.assert_array_equal(again.rendered[1], row.rendered[1])


def test_real_photos_are_matched_by_class_name(tmp_path: Path) -> None:
    real = scan_dataset(real_folder(tmp_path / "photos", ("speed_30", "speed_80", "stop")))
    rows = {row.class_name: row for row in faces.face_rows(real, per_class=3, size=48)}
    assert set(rows) == set(synth.CLASS_NAMES)  # "stop" is not a renderer class: no row
    for name in ("speed_30", "speed_80"):
        assert len(rows[name].real) == 3
        for picture in rows[name].real:
            check_picture(picture, (48, 40, 3))  # 20x24 keeps its shape, longer side 48
            assert tuple(picture[10, 10]) == COLOURS[name]
    assert all(not row.real for name, row in rows.items() if name not in ("speed_30", "speed_80"))


def test_an_unreadable_real_photo_is_left_out(tmp_path: Path) -> None:
    folder = real_folder(tmp_path / "photos", tracks=1, frames=2)
    (folder / "train" / "speed_30" / "00000_00000.png").write_bytes(b"not a png")
    rows = {row.class_name: row for row in faces.face_rows(scan_dataset(folder), per_class=4, size=32)}
    assert len(rows["speed_30"].real) == 1
    assert len(rows["speed_80"].real) == 2


# ---------------------------------------------------------------- which real set

def test_the_set_in_use_is_chosen_when_it_is_real(tmp_path: Path, tiny_synth: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "synth").symlink_to(tiny_synth, target_is_directory=True)
    other = scan_dataset(real_folder(root / "other"))
    mine = scan_dataset(real_folder(tmp_path / "elsewhere" / "mine"))
    assert faces.find_real_dataset(root, mine).root == mine.root
    assert faces.find_real_dataset(root, None).root == other.root


def test_a_synthetic_set_is_never_the_real_one(tmp_path: Path, tiny_synth: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "synth").symlink_to(tiny_synth, target_is_directory=True)
    current = scan_dataset(tiny_synth)
    assert faces.is_synthetic(tiny_synth)
    assert faces.find_real_dataset(root, current) is None
    assert faces.find_real_dataset(root, None) is None
    found = faces.find_real_dataset(root.parent / "missing", current)  # no data root at all
    assert found is None
    real = real_folder(root / "gtsrb")
    assert faces.find_real_dataset(root, current).root == real


def test_sets_without_shared_classes_or_unscannable_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    real_folder(root / "animals", ("cats", "dogs"))
    (root / "broken" / "val" / "speed_30").mkdir(parents=True)  # val without train: refused
    assert [e.name for e in datasets.list_datasets(root)] == ["animals", "broken"]
    assert faces.find_real_dataset(root, scan_dataset(root / "animals")) is None
    real = real_folder(root / "uploads" / "signs")
    assert faces.find_real_dataset(root, None).root == real


# ---------------------------------------------------------------- the Dataset page

@pytest.fixture
def app_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data root (first start renders a tiny synthetic set) and runs folder."""
    return fresh_app_env(tmp_path, monkeypatch)["data"]


def test_dataset_page_shows_faces_and_says_when_no_real_photo_is_here(app_root: Path) -> None:
    at = start("dataset")
    assert not at.exception
    assert not any("No real photos" in text for text in texts(at, "info"))  # built only when asked
    before = len(at.image)
    at.toggle(key="faces-toggle").set_value(True).run()
    assert not at.exception
    assert any(text.startswith("No real photos here to compare with") for text in texts(at, "info"))
    assert len(at.image) == before + len(synth.CLASS_NAMES)
    strips = at.image[:len(synth.CLASS_NAMES)]  # the section comes before "In use"
    assert [len(image.value) for image in strips] == [1 + 4] * len(synth.CLASS_NAMES)  # face, 4 rendered
    assert texts(at, "caption").count("flat face · as rendered") == len(synth.CLASS_NAMES)


def test_dataset_page_shows_real_photos_of_the_real_set(app_root: Path) -> None:
    real_folder(app_root / "photos")
    at = start("dataset")
    at.toggle(key="faces-toggle").set_value(True).run()
    assert not at.exception
    assert not any("No real photos" in text for text in texts(at, "info"))
    captions = [plain(text) for text in texts(at, "caption")]
    assert captions.count("flat face · as rendered · real photos from photos") == 2
    counts = [len(image.value) for image in at.image[:len(synth.CLASS_NAMES)]]
    assert counts == [1 + 4 + (4 if name in ("speed_30", "speed_80") else 0) for name in synth.CLASS_NAMES]
