"""data.py: layouts, natural class order, group-aware split, fingerprint, decode cache, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from speedsign.data import _decode_one as _DECODE_ONE
from speedsign.data import (
    class_sort_key,
    dataset_stats,
    decoded_cache_path,
    group_of,
    load_split_tensors,
    scan_dataset,
    sort_classes,
)
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
    for image, label in zip(train.images, train.labels, strict=True):
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


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A decode cache of this test's own, so its files can be listed."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPEEDSIGN_CACHE", str(folder))
    return folder


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file a tensor's memory is mapped from (Linux /proc/self/maps), None when it is not."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(part, 16) for part in fields[0].split("-"))
        if low <= address < high:
            path = fields[5] if len(fields) == 6 else ""
            return path if path.startswith("/") else None
    return None


def _decode_counter(monkeypatch: pytest.MonkeyPatch, *, fail_after: int | None = None) -> list[str]:
    """Count (and optionally fail) the decodes: the list grows by one name per file decoded."""
    import speedsign.data as data

    decoded: list[str] = []
    original = _DECODE_ONE  # the real one, never an earlier test double

    def counting(root: Path, relative: str, size: int, resize: str) -> torch.Tensor | str:
        if fail_after is not None and len(decoded) >= fail_after:
            raise KeyboardInterrupt("killed midway")
        decoded.append(relative)
        return original(root, relative, size, resize)

    monkeypatch.setattr(data, "_decode_one", counting)
    return decoded


def test_a_second_load_reads_the_cache_and_decodes_nothing(tmp_path: Path, cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0})
    index = scan_dataset(root)
    decoded = _decode_counter(monkeypatch)
    first = data.load_decoded(index, size=8, resize="square")
    assert len(decoded) == 24
    monkeypatch.setattr(data, "_decode_one", lambda *args: pytest.fail("decoded again"))
    second = data.load_decoded(index, size=8, resize="square")
    assert second["files"] == first["files"] and torch.equal(second["images"], first["images"])
    assert [p.name for p in cache.iterdir()] == [decoded_cache_path(index, size=8, resize="square").name]


def test_a_decode_killed_midway_leaves_no_cache_that_a_later_load_trusts(tmp_path: Path, cache: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0}, tracks=10)
    index = scan_dataset(root)
    monkeypatch.setattr(data, "DECODE_BATCH", 4)  # some batches are written before the kill
    _decode_counter(monkeypatch, fail_after=30)
    progress: list[tuple[int, int]] = []
    with pytest.raises(KeyboardInterrupt):
        data.load_decoded(index, size=8, resize="square", progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (28, 60)  # written, then killed in the batch after
    assert list(cache.iterdir()) == []  # neither a cache file nor a half-written temporary
    decoded = _decode_counter(monkeypatch)
    complete = data.load_decoded(index, size=8, resize="square")
    assert len(decoded) == 60 and complete["images"].shape == (60, 3, 8, 8)
    # A cache file cut short (a full disk, a copy stopped midway) is decoded afresh, never read.
    path = decoded_cache_path(index, size=8, resize="square")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    decoded.clear()
    again = data.load_decoded(index, size=8, resize="square")
    assert len(decoded) == 60 and torch.equal(again["images"], complete["images"])
    assert path.read_bytes() == whole


def test_unreadable_files_are_reported_with_reasons_from_worker_processes_too(tmp_path: Path, cache: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0}, tracks=3)
    (root / "train" / "speed_30" / "00098_00000.png").write_bytes(b"")
    (root / "train" / "speed_30" / "00099_00000.png").write_bytes(b"broken")
    index = scan_dataset(root)
    in_process = data.load_decoded(index, size=8, resize="square")
    assert set(in_process["unreadable"]) == {"train/speed_30/00098_00000.png", "train/speed_30/00099_00000.png"}
    assert all(isinstance(reason, str) and reason for reason in in_process["unreadable"].values())
    assert len(in_process["files"]) == len(in_process["images"]) == 18
    decode_path = decoded_cache_path(index, size=8, resize="square")
    decode_path.unlink()
    monkeypatch.setattr(data, "_decode_workers", lambda n_files: 2)
    monkeypatch.setattr(data, "DECODE_BATCH", 5)  # batches with and without a bad file
    progress: list[tuple[int, int]] = []
    workers = data.load_decoded(index, size=8, resize="square", progress=lambda *p: progress.append(p))
    assert progress == [(5, 20), (10, 20), (15, 20), (20, 20)]
    assert workers["unreadable"] == in_process["unreadable"] and workers["files"] == in_process["files"]
    assert torch.equal(workers["images"], in_process["images"])
    cached = data.load_decoded(index, size=8, resize="square")
    assert cached["unreadable"] == in_process["unreadable"]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_large_data_set_is_memory_mapped_from_the_cache_not_read_into_memory(tmp_path: Path, cache: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    root = _folder(tmp_path / "d", {"speed_30": 0, "speed_50": 0}, tracks=4)
    index = scan_dataset(root)
    path = decoded_cache_path(index, size=8, resize="square")
    small = data.load_decoded(index, size=8, resize="square")
    assert _mapped_file(small["images"]) is None  # under the limit: read into memory
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)
    large = data.load_decoded(index, size=8, resize="square")
    assert _mapped_file(large["images"]) == str(path)
    assert torch.equal(large["images"], small["images"])
    # Copy-on-write: a write to the tensor stays in this process, the cache file keeps its pixels.
    large["images"][0] = 0
    assert torch.equal(data.load_decoded(index, size=8, resize="square")["images"], small["images"])
    # Cutting a split out of it gathers into a scratch file in the cache folder, not into memory.
    splits = data.select_splits(index, large, large["images"])
    assert (_mapped_file(splits["train"].images) or "").startswith(str(cache))
    assert [p.name for p in cache.iterdir()] == [path.name]  # the scratch file has no name


def test_the_memory_mapped_cache_gives_the_same_pixels_and_training_as_memory(
        synth_dir: Path, tmp_path: Path, cache: Path, weights_file: Path, monkeypatch: pytest.MonkeyPatch,
        one_thread: None) -> None:
    import speedsign.data as data
    from speedsign.config import resolve_config
    from speedsign.job import TrainRequest, train_run
    from speedsign.runs import read_metrics

    from conftest import tiny_overrides

    index = scan_dataset(synth_dir)
    in_memory = load_split_tensors(index, size=16)
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 2})
    runs = {}
    runs["memory"] = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "a", device="cpu"))
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)
    mapped = load_split_tensors(index, size=16)
    for split in ("train", "val"):
        assert mapped[split].files == in_memory[split].files
        assert torch.equal(mapped[split].labels, in_memory[split].labels)
        assert torch.equal(mapped[split].images, in_memory[split].images)
    if Path("/proc/self/maps").exists():
        assert _mapped_file(mapped["train"].images) is not None
    runs["mapped"] = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "b", device="cpu"))
    assert all(run.state == "done" for run in runs.values())

    def learned(run_dir: Path) -> tuple[list[dict], np.ndarray]:
        rows = [{k: v for k, v in row.items() if k in ("train_loss", "train_acc", "val_loss", "val_acc")}
                for row in read_metrics(run_dir)[0]]
        return rows, np.load(run_dir / "predictions_val.npz")["probs"]

    (memory_rows, memory_probs), (mapped_rows, mapped_probs) = (learned(r.run_dir) for r in runs.values())
    # CPU training repeats only to float rounding (two in-memory runs differ by ~1e-8), hence approx.
    # The weights of last.pt are not compared: some elements of layer4.0.conv1.weight (taps that
    # only ever see padding at 16 px) differ wildly from run to run with the in-memory path alone.
    assert len(memory_rows) == 2 and mapped_rows == [pytest.approx(row, rel=1e-6) for row in memory_rows]
    assert memory_probs.shape == (len(in_memory["val"]), 9)
    np.testing.assert_allclose(mapped_probs, memory_probs, rtol=1e-5, atol=1e-6)
