"""data.py: layouts, natural class order, group-aware split, fingerprint, decode cache, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from speedsign.data import (class_sort_key, dataset_stats, decoded_cache_path, group_of, load_split_tensors,
                            scan_dataset, sort_classes)
from speedsign.errors import UserError


def _image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _folder(root: Path, layout: dict[str, int], *, split: str = "train", tracks: int = 4, frames: int = 3) -> Path:
    for name, _ in layout.items():
        for track in range(tracks):
            for frame in range(frames):
                _image(root / split / name / f"{track:05d}_{frame:05d}.png")
    return root


def test_classes_are_ordered_by_number_never_by_folder_listing() -> None:
    names = ["speed_100", "speed_120", "speed_20", "end_speed_80", "speed_80", "speed_30", "stop", "speed_50"]
    assert sort_classes(names) == ("speed_20", "speed_30", "speed_50", "speed_80", "end_speed_80",
                                   "speed_100", "speed_120", "stop")
    assert class_sort_key("yield") > class_sort_key("speed_120")


def test_gtsrb_track_names_group_by_class_and_track_other_files_alone() -> None:
    assert group_of("speed_30", "00012_00029.png") == group_of("speed_30", "00012_00001.png")
    assert group_of("speed_30", "00012_00029.png") != group_of("speed_50", "00012_00029.png")
    assert group_of("speed_30", "photo.jpg") != group_of("speed_30", "photo2.jpg")


def test_single_folder_val_split_keeps_tracks_whole_is_stratified_and_seeded(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"speed_20": 0, "speed_30": 0, "speed_50": 0}, tracks=10)
    index = scan_dataset(root, val_fraction=0.2, seed=3)
    train_groups = {s.group for s in index.samples("train")}
    val_groups = {s.group for s in index.samples("val")}
    assert train_groups.isdisjoint(val_groups)
    assert {s.label for s in index.samples("val")} == {0, 1, 2}  # every class has val images
    again = scan_dataset(root, val_fraction=0.2, seed=3)
    assert again.samples("val") == index.samples("val")
    other = scan_dataset(root, val_fraction=0.2, seed=4)
    assert other.samples("val") != index.samples("val")


def test_report_layout_with_train_val_and_test(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for split in ("train", "val", "test"):
        _folder(root, {"speed_30": 0, "speed_50": 0}, split=split, tracks=2, frames=2)
    index = scan_dataset(root)
    assert index.layout == "split"
    assert [len(index.samples(s)) for s in ("train", "val", "test")] == [8, 8, 8]


def test_direct_class_folders_and_test_only_folders(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ("speed_30", "speed_50"):
        for i in range(4):
            _image(root / name / f"{i:05d}_00000.png")
    assert scan_dataset(root).classes == ("speed_30", "speed_50")
    test_only = tmp_path / "t"
    _folder(test_only, {"speed_30": 0}, split="test", tracks=1, frames=2)
    assert scan_dataset(test_only, require_train=False).layout == "test"
    with pytest.raises(UserError, match="only test"):
        scan_dataset(test_only)


@pytest.mark.parametrize("problem, message", [
    ("empty_class", "no images"),
    ("single_class", "only one class"),
    ("val_class_missing_in_train", "lacks"),
    ("no_classes", "no class folders"),
    ("missing", "not found"),
])
def test_data_that_cannot_train_stops_with_a_clear_error(tmp_path: Path, problem: str, message: str) -> None:
    root = tmp_path / "d"
    if problem == "empty_class":
        _folder(root, {"speed_30": 0})
        (root / "train" / "speed_50").mkdir()
    elif problem == "single_class":
        _folder(root, {"speed_30": 0})
    elif problem == "val_class_missing_in_train":
        _folder(root, {"speed_30": 0, "speed_50": 0})
        _folder(root, {"speed_30": 0, "speed_70": 0}, split="val")
    elif problem == "no_classes":
        root.mkdir()
        (root / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match=message):
        scan_dataset(root)


def test_unreadable_truncated_empty_and_non_image_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0}, tracks=3)
    folder = root / "train" / "speed_30"
    (folder / "00090_00000.png").write_bytes(b"")
    (folder / "00091_00000.png").write_bytes(b"not a png at all")
    good = (folder / "00000_00000.png").read_bytes()
    (folder / "00092_00000.png").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image")
    index = scan_dataset(root, val_fraction=0.3)
    assert "train/speed_30/notes.txt" in index.ignored
    splits = load_split_tensors(index, size=16)
    unreadable = set(splits["train"].unreadable) | set(splits["val"].unreadable)
    assert {"train/speed_30/00090_00000.png", "train/speed_30/00091_00000.png",
            "train/speed_30/00092_00000.png"} <= unreadable
    assert len(splits["train"]) + len(splits["val"]) == 18
    stats = dataset_stats(root, size=16)
    assert len(stats["unreadable"]) == 3 and stats["ignored"] == ["train/speed_30/notes.txt"]


def test_symlinks_leaving_the_data_folder_are_not_followed(tmp_path: Path) -> None:
    outside = _folder(tmp_path / "outside", {"secret": 0}, tracks=1, frames=2)
    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0})
    os.symlink(outside / "train" / "secret", root / "train" / "secret")
    os.symlink(outside / "train" / "secret" / "00000_00000.png", root / "train" / "speed_30" / "00077_00000.png")
    index = scan_dataset(root)
    assert "secret" not in index.classes
    assert all("00077" not in s.path for split in index.splits.values() for s in split)
    assert set(index.ignored) == {"train/secret", "train/speed_30/00077_00000.png"}


def test_fingerprint_changes_with_any_file_and_keys_the_decode_cache(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0})
    first = scan_dataset(root)
    load_split_tensors(first, size=16)
    assert decoded_cache_path(first, size=16, resize="square").exists()
    _image(root / "train" / "speed_30" / "00000_00000.png", colour=(0, 0, 255))
    os.utime(root / "train" / "speed_30" / "00000_00000.png", ns=(1, 1))
    second = scan_dataset(root)
    assert second.fingerprint != first.fingerprint
    assert not decoded_cache_path(second, size=16, resize="square").exists()


def test_decoded_tensors_are_uint8_in_class_order_and_cached(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name, colour in (("speed_50", (0, 255, 0)), ("speed_30", (255, 0, 0))):
        for track in range(3):
            _image(root / "train" / name / f"{track:05d}_00000.png", colour=colour)
    index = scan_dataset(root, val_fraction=0.34)
    splits = load_split_tensors(index, size=8)
    train = splits["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 8, 8)
    for image, label in zip(train.images, train.labels):
        expected = (255, 0, 0) if int(label) == 0 else (0, 255, 0)  # speed_30 is class 0
        assert tuple(int(c) for c in image[:, 4, 4]) == expected
    again = load_split_tensors(index, size=8)
    assert torch.equal(again["train"].images, train.images)


def test_a_damaged_decode_cache_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0})
    index = scan_dataset(root)
    expected = load_split_tensors(index, size=8)["train"].images
    decoded_cache_path(index, size=8, resize="square").write_bytes(b"garbage")
    assert torch.equal(load_split_tensors(index, size=8)["train"].images, expected)


def test_real_gtsrb_speed_split_is_by_track_and_in_number_order(gtsrb_speed: Path) -> None:
    index = scan_dataset(gtsrb_speed)
    assert index.classes == ("speed_20", "speed_30", "speed_50", "speed_60", "speed_70", "speed_80",
                             "end_speed_80", "speed_100", "speed_120")
    assert len(index.samples("train")) + len(index.samples("val")) == 13200
    assert {s.group for s in index.samples("train")}.isdisjoint({s.group for s in index.samples("val")})
    fraction = len(index.samples("val")) / 13200
    assert 0.15 < fraction < 0.25


def test_a_data_set_too_large_for_memory_streams_the_same_pixels(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0}, tracks=4)
    (root / "train" / "speed_30" / "00099_00000.png").write_bytes(b"broken")
    index = scan_dataset(root)
    in_memory = load_split_tensors(index, size=8)
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)
    streamed = load_split_tensors(index, size=8)
    assert isinstance(streamed["train"].images, data.StreamedImages)
    for split in ("train", "val"):
        assert streamed[split].files == in_memory[split].files
        assert torch.equal(streamed[split].labels, in_memory[split].labels)
        rows = torch.arange(len(streamed[split]))
        assert torch.equal(streamed[split].images[rows], in_memory[split].images)
    assert "train/speed_30/00099_00000.png" in streamed["train"].unreadable + streamed["val"].unreadable
