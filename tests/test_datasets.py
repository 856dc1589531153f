"""Data sets under the data root: listing, safe names and paths, creating, looking at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedsign import datasets
from speedsign.data import scan_dataset
from speedsign.errors import UserError


def test_inside_refuses_paths_leaving_the_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"x")
    (tmp_path / "a" / "out").symlink_to(tmp_path)
    assert datasets.inside(tmp_path / "a", "x.png") == (tmp_path / "a" / "x.png").resolve()
    assert datasets.inside(tmp_path / "a", "../a/x.png") is not None
    assert datasets.inside(tmp_path / "a", "../secret") is None
    assert datasets.inside(tmp_path / "a", "/etc/passwd") is None
    assert datasets.inside(tmp_path / "a", "out/secret") is None


def test_safe_folder_names_and_unique_folders(tmp_path: Path) -> None:
    assert datasets.safe_folder_name("../../My Signs!.zip") == "My-Signs"
    assert datasets.safe_folder_name("...zip") == "dataset"
    (tmp_path / "synth").mkdir()
    assert datasets.unique_folder(tmp_path, "synth").name == "synth-2"


def test_list_datasets_order_and_hidden_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("other", "gtsrb", "synth", ".synth.tmp-1", "uploads/mine", "empty"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("other", "gtsrb", "synth", ".synth.tmp-1", "uploads/mine"):
        (tmp_path / name / "speed_30").mkdir()
    assert [e.name for e in datasets.list_datasets(tmp_path)] == ["synth", "gtsrb", "other", "uploads/mine"]
    monkeypatch.setenv("SPEEDSIGN_DATA", str(tmp_path))
    assert datasets.list_datasets()[0].path == tmp_path / "synth"


def test_first_dataset_is_rendered_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FIRST_RUN_PER_CLASS", 5)
    monkeypatch.setattr(datasets, "FIRST_RUN_SIZE", 16)
    report = datasets.ensure_first_dataset(tmp_path)
    assert report is not None and report.n_images == 9 * 5
    assert datasets.ensure_first_dataset(tmp_path) is None
    assert [e.name for e in datasets.list_datasets(tmp_path)] == ["synth"]


def test_empty_upload_and_bad_server_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty"):
        datasets.import_zip(b"", name="empty.zip", root=tmp_path)
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").iterdir())
    with pytest.raises(UserError, match="type the path"):
        datasets.check_server_folder("  ")
    with pytest.raises(UserError, match="not found"):
        datasets.check_server_folder(str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        datasets.check_server_folder(str(tmp_path / "file"))


def test_counts_samples_pictures_and_preview(synth_dir: Path) -> None:
    index = scan_dataset(synth_dir)
    counts = datasets.counts_frame(index)
    table = datasets.counts_table(index)
    assert list(counts.columns) == ["class", "split", "count"]
    assert list(table.index) == list(index.classes)
    assert table["total"].sum() == counts["count"].sum() == sum(datasets.split_sizes(index).values())
    assert datasets.layout_description(index)
    samples = datasets.sample_files(index, per_class=3)
    assert list(samples) == list(index.classes) and all(len(files) == 3 for files in samples.values())
    assert samples == datasets.sample_files(index, per_class=3)  # seeded
    picture = datasets.load_picture(index.root, samples[index.classes[0]][0], max_side=16)
    assert picture is not None and picture.shape[2] == 3 and max(picture.shape[:2]) <= 16
    assert datasets.load_picture(index.root, "../outside.png") is None
    assert datasets.first_image_bytes(index)
    original, versions, config = datasets.augmentation_preview(index.root, samples[index.classes[0]][0],
                                                               approach="scratch", preset="fast", n=4)
    assert len(versions) == 4 and original.shape == versions[0].shape == (config.img_size, config.img_size, 3)
    sizes = datasets.sizes_frame([(32, 32), (40, 30)])
    assert list(datasets.size_summary(sizes).index) == ["min", "median", "max"]
