"""Safe import of an uploaded data-set zip: good layouts land right, hostile zips leave nothing."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from speedsign.archive import ArchiveLimits, ExtractReport, extract_dataset_zip
from speedsign.errors import UserError


def png_bytes(colour: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def report_layout(entries: dict[str, bytes], prefix: str = "") -> dict[str, bytes]:
    return {
        f"{prefix}train/speed_30/00000_00000.png": png_bytes(1),
        f"{prefix}train/speed_30/00000_00001.png": png_bytes(2),
        f"{prefix}train/speed_100/00001_00000.jpg": png_bytes(3),  # content is not checked here
        f"{prefix}val/speed_30/00002_00000.png": png_bytes(4),
        f"{prefix}val/speed_100/00003_00000.png": png_bytes(5),
        **entries,
    }


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The folder that holds the target; after a rejection it must be empty again."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


DEFAULT_LIMITS = ArchiveLimits()


def assert_rejected(source: Path | bytes, work: Path, match: str, *,
                    limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
    out = work / "data"
    with pytest.raises(UserError, match=match):
        extract_dataset_zip(source, out, limits=limits)
    assert list(work.iterdir()) == []  # no out, no temp folder, nothing beside it
    assert not list(work.parent.rglob("evil*")) and not list(work.parent.parent.glob("evil*"))


# --- good zips ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_report_layout_with_and_without_top_folder(work: Path, prefix: str) -> None:
    junk = {
        f"__MACOSX/{prefix}train/speed_30/._00000_00000.png": b"\x00",
        f"{prefix}train/.DS_Store": b"\x00",
        f"{prefix}val/speed_30/Thumbs.db": b"\x00",
        f"{prefix}notes.txt": b"hello",
        f"{prefix}train/speed_30/labels.csv": b"a,b",
    }
    progress: list[tuple[int, int]] = []
    report = extract_dataset_zip(zip_bytes(report_layout(junk, prefix)), work / "data",
                                 progress=lambda done, total: progress.append((done, total)))
    assert isinstance(report, ExtractReport)
    assert tree(work / "data") == [
        "train/speed_100/00001_00000.jpg",
        "train/speed_30/00000_00000.png",
        "train/speed_30/00000_00001.png",
        "val/speed_100/00003_00000.png",
        "val/speed_30/00002_00000.png",
    ]
    assert (work / "data" / "train" / "speed_30" / "00000_00001.png").read_bytes() == png_bytes(2)
    assert report.n_images == 5 and report.out == work / "data"
    assert report.classes == {"train": ("speed_30", "speed_100"), "val": ("speed_30", "speed_100")}
    assert report.junk == 3 and report.skipped == 2
    assert any("notes.txt" in example for example in report.skipped_examples)
    assert progress[-1] == (5, 5)
    assert sorted(p.name for p in work.iterdir()) == ["data"]


def test_single_class_level_goes_to_train(work: Path, tmp_path: Path) -> None:
    source = tmp_path / "upload.zip"
    source.write_bytes(zip_bytes({"speed_20/a.png": png_bytes(), "speed_50/b.png": png_bytes(),
                                  "speed_50/deeper/c.png": png_bytes()}))
    report = extract_dataset_zip(source, work / "data")  # a Path this time
    assert tree(work / "data") == ["train/speed_20/a.png", "train/speed_50/b.png"]
    assert report.classes == {"train": ("speed_20", "speed_50")} and report.skipped == 1


def test_single_class_zip_and_train_only_in_top_folder(work: Path) -> None:
    with open(work.parent / "one.zip", "wb") as handle:
        handle.write(zip_bytes({"speed_20/a.png": png_bytes(), "speed_20/b.png": png_bytes()}))
    with open(work.parent / "one.zip", "rb") as handle:  # a file object, like an upload
        extract_dataset_zip(handle, work / "one")
    assert tree(work / "one") == ["train/speed_20/a.png", "train/speed_20/b.png"]
    extract_dataset_zip(zip_bytes({"ds/train/speed_20/a.png": png_bytes()}), work / "two")
    assert tree(work / "two") == ["train/speed_20/a.png"]


def test_odd_but_harmless_class_names(work: Path) -> None:
    report = extract_dataset_zip(
        zip_bytes({"train/<script>/a.png": png_bytes(), "train/Tempo 30 km·h/b.png": png_bytes()}),
        work / "data",
    )
    assert tree(work / "data") == ["train/<script>/a.png", "train/Tempo 30 km·h/b.png"]
    assert report.classes == {"train": ("<script>", "Tempo 30 km·h")}


def test_empty_existing_folder_is_fine_non_empty_refused(work: Path) -> None:
    (work / "data").mkdir()
    extract_dataset_zip(zip_bytes(report_layout({})), work / "data")
    with pytest.raises(UserError, match="not empty"):
        extract_dataset_zip(zip_bytes(report_layout({})), work / "data")
    assert sorted(p.name for p in work.iterdir()) == ["data"]


# --- hostile zips ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "../evil.png",
    "train/speed_30/../../../evil.png",
    "/abs/evil.png",
    "C:/evil.png",
    "train\\..\\..\\evil.png",
    "train//speed_30/evil.png",
    "./train/speed_30/evil.png",
    "__MACOSX/../../evil.png",  # junk folders are checked too
])
def test_zip_slip_is_refused(work: Path, name: str) -> None:
    assert_rejected(zip_bytes(report_layout({name: png_bytes()})), work, "unsafe path")


def test_symlink_entry_is_refused(work: Path) -> None:
    link = zipfile.ZipInfo("train/speed_30/evil.png")
    link.create_system = 3
    link.external_attr = 0o120777 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train/speed_30/a.png", png_bytes())
        zf.writestr(link, "/etc/passwd")
    assert_rejected(buffer.getvalue(), work, "symbolic link")


def test_zip_bomb_ratio_is_refused(work: Path) -> None:
    zeros = b"\x00" * (4 * 1024**2)  # deflates about 1000x
    source = zip_bytes(report_layout({"train/speed_30/bomb.png": zeros}))
    assert_rejected(source, work, "zip bomb")


def test_declared_sizes_over_limits_are_refused(work: Path) -> None:
    source = zip_bytes(report_layout({}))
    assert_rejected(source, work, "over the limit", limits=ArchiveLimits(max_total_bytes=200))
    assert_rejected(source, work, "per-file limit", limits=ArchiveLimits(max_member_bytes=50))


def test_lying_declared_size_is_caught_while_streaming(work: Path) -> None:
    """A member that declares 10 bytes but inflates to 100 KB is not written."""
    payload = bytes(range(256)) * 400
    data = bytearray(zip_bytes({"train/speed_30/a.png": png_bytes(), "train/speed_30/liar.png": payload}))
    true_size = struct.pack("<I", len(payload))
    # Patch the uncompressed size in the local header (offset 22) and the central one (24).
    patched = 0
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            if data[start + offset:start + offset + 4] == true_size:
                data[start + offset:start + offset + 4] = struct.pack("<I", 10)
                patched += 1
            start += 4
    assert patched == 2
    assert_rejected(bytes(data), work, "damaged|zip bomb")


def test_nested_archive_is_refused(work: Path) -> None:
    inner = zip_bytes({"speed_30/a.png": png_bytes()})
    assert_rejected(zip_bytes(report_layout({"train/speed_30/more.zip": inner})), work, "another archive")
    assert_rejected(zip_bytes(report_layout({"extra/images.tar.gz": b"x"})), work, "another archive")


def test_too_many_members_is_refused(work: Path) -> None:
    tiny = {f"train/speed_30/{i:05d}.png": b"x" for i in range(3000)}
    assert_rejected(zip_bytes(tiny, compression=zipfile.ZIP_STORED), work, "3,000 entries",
                    limits=ArchiveLimits(max_members=1000))


@pytest.mark.parametrize("entries", [
    {"a.png": b"x", "b.jpg": b"x"},                      # images but no class folder
    {"train/readme.txt": b"x", "val/x.csv": b"x"},         # class depth but no images
    {"mydata/train/a.png": b"x"},                          # image right under a split
])
def test_no_class_folders_is_refused(work: Path, entries: dict[str, bytes]) -> None:
    assert_rejected(zip_bytes(entries), work, "no class folders: expected train/<class>/<image>")


def test_encrypted_zip_is_refused(work: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train/speed_30/a.png", png_bytes())
        # writestr clears the flag; set it where the central directory is written from.
        zf.infolist()[0].flag_bits |= 0x1
    assert_rejected(buffer.getvalue(), work, "encrypted")


@pytest.mark.parametrize("data", [b"", b"\x89PNG not a zip at all", bytes(range(256)) * 50])
def test_random_bytes_are_refused(work: Path, data: bytes) -> None:
    assert_rejected(data, work, "not a readable zip")


def test_missing_file_is_refused(work: Path) -> None:
    assert_rejected(work.parent / "nope.zip", work, "no such zip file")


@pytest.mark.parametrize("label, match", [
    ("x" * 101, "too long"),
    ("Ünïcode" * 40, "too long"),
])
def test_bad_class_names_are_refused(work: Path, label: str, match: str) -> None:
    assert_rejected(zip_bytes({f"train/{label}/a.png": png_bytes()}), work, match)


def test_hidden_class_folders_are_junk(work: Path) -> None:
    report = extract_dataset_zip(
        zip_bytes({"train/.ipynb_checkpoints/a.png": png_bytes(), "train/speed_30/a.png": png_bytes()}),
        work / "data",
    )
    assert tree(work / "data") == ["train/speed_30/a.png"] and report.junk == 1


def test_failure_while_writing_leaves_nothing(work: Path) -> None:
    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_dataset_zip(zip_bytes(report_layout({})), work / "data", progress=interrupt)
    assert list(work.iterdir()) == []


def test_damaged_member_is_refused(work: Path) -> None:
    data = bytearray(zip_bytes(report_layout({}), compression=zipfile.ZIP_STORED))
    start = data.find(png_bytes(2))
    data[start + 20] ^= 0xFF  # CRC mismatch on the second image
    assert_rejected(bytes(data), work, "damaged")


def test_streaming_count_enforces_limits_on_its_own(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the declared-size check were fooled, the bytes counted while writing stop it."""
    from speedsign import archive

    monkeypatch.setattr(archive, "check_sizes", lambda plan, *, limits: None)
    source = zip_bytes(report_layout({}))
    assert_rejected(source, work, "zip bomb", limits=ArchiveLimits(max_total_bytes=200))
    assert_rejected(source, work, "zip bomb", limits=ArchiveLimits(max_member_bytes=50))
