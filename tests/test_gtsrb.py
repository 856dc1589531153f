"""The GTSRB importer, on tiny fake archives and folders built here (never the network)."""

from __future__ import annotations

import csv
import io
import socket
import threading
import time
import urllib.error
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from speedsign import gtsrb
from speedsign.errors import UserError
from speedsign.gtsrb import SPEED_CLASSES, import_gtsrb

OFFICIAL_PREFIX = "GTSRB/Final_Training/Images"
GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
CLASSES = (0, 1, 6, 9)  # 9 (no passing) is not a speed sign and must be dropped
FRAMES = ("00012_00028", "00012_00029", "00003_00000")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: any connection attempt fails at once."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def ppm_bytes(class_id: int, size: tuple[int, int] = (30, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (class_id * 20, 100, 200)).save(buffer, format="PPM")
    return buffer.getvalue()


def gt_csv(class_id: int) -> str:
    return GT_HEADER + "".join(f"{frame}.ppm;30;32;2;3;27;29;{class_id}\n" for frame in FRAMES)


def class_files(*, corrupt: bool = False) -> dict[str, bytes]:
    """Relative paths below the images folder -> bytes, for CLASSES."""
    files: dict[str, bytes] = {}
    for class_id in CLASSES:
        folder = f"{class_id:05d}"
        for frame in FRAMES:
            files[f"{folder}/{frame}.ppm"] = ppm_bytes(class_id)
        files[f"{folder}/GT-{folder}.csv"] = gt_csv(class_id).encode()
    if corrupt:
        files["00001/00099_00000.ppm"] = b"P6\n30 32\n255\n" + b"\x00" * 10  # truncated
    return files


def make_zip(path: Path, *, prefix: str = OFFICIAL_PREFIX, corrupt: bool = False,
             extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("GTSRB/Readme-Images.txt", "readme")
        for relative, data in class_files(corrupt=corrupt).items():
            zf.writestr(f"{prefix}/{relative}", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def make_folder(root: Path, relative: str) -> None:
    for name, data in class_files().items():
        target = root / relative / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def assert_speed_set(out: Path, *, per_image_size: tuple[int, int] = (30, 32)) -> None:
    assert sorted(p.name for p in (out / "train").iterdir()) == ["end_speed_80", "speed_20", "speed_30"]
    for name in ("speed_20", "speed_30", "end_speed_80"):
        files = sorted(p.name for p in (out / "train" / name).iterdir())
        assert files == sorted(f"{frame}.png" for frame in FRAMES)
    with Image.open(out / "train" / "speed_30" / "00012_00029.png") as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == per_image_size
        assert image.getpixel((0, 0)) == (20, 100, 200)  # class 1's colour


def leftovers(parent: Path, out: Path) -> list[str]:
    """Anything next to `out` that an import should not have left (temp folders)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_speed_classes_table() -> None:
    assert SPEED_CLASSES == {
        0: "speed_20", 1: "speed_30", 2: "speed_50", 3: "speed_60", 4: "speed_70",
        5: "speed_80", 6: "end_speed_80", 7: "speed_100", 8: "speed_120",
    }


def test_official_zip_keeps_speed_classes_and_track_names(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "GTSRB_Final_Training_Images.zip")
    seen: list[tuple[int, int]] = []
    out = tmp_path / "gtsrb"
    report = import_gtsrb(out, source=source, progress=lambda done, total: seen.append((done, total)))
    assert_speed_set(out)
    assert report.out == out and report.n_images == 9 and report.skipped == 0
    assert report.per_class == {**{name: 0 for name in SPEED_CLASSES.values()},
                                "speed_20": 3, "speed_30": 3, "end_speed_80": 3}
    assert list(report.per_class) == list(SPEED_CLASSES.values())
    assert seen[-1] == (9, 9)
    assert report.seconds >= 0 and report.source == str(source)
    readme = (out / "README.txt").read_text()
    assert "Stallkamp" in readme and "Neural Networks 32 (2012) 323-332" in readme
    assert "research and teaching" in readme and str(source) in readme
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert len(rows) == 9
    row = next(r for r in rows if r["path"] == "train/speed_30/00012_00029.png")
    assert row["gtsrb_class_id"] == "1" and row["track_id"] == "00012"
    assert (row["orig_width"], row["orig_height"]) == ("30", "32")
    assert (row["orig_roi_x1"], row["orig_roi_y1"], row["orig_roi_x2"], row["orig_roi_y2"]) == ("2", "3", "27", "29")
    assert leftovers(tmp_path, out) == []


def test_size_resizes_to_a_square(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "g.zip")
    import_gtsrb(tmp_path / "out", source=source, size=16)
    assert_speed_set(tmp_path / "out", per_image_size=(16, 16))
    with pytest.raises(UserError, match="size"):
        import_gtsrb(tmp_path / "other", source=source, size=0)


def test_corrupt_image_is_skipped_and_counted(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "g.zip", corrupt=True)
    report = import_gtsrb(tmp_path / "out", source=source)
    assert report.skipped == 1 and report.n_images == 9
    assert "00099_00000.ppm" in report.skipped_examples[0]
    assert not (tmp_path / "out" / "train" / "speed_30" / "00099_00000.png").exists()


def test_torchvision_zip_layout(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "GTSRB-Training_fixed.zip", prefix="GTSRB/Training")
    report = import_gtsrb(tmp_path / "out", source=source)
    assert report.n_images == 9
    assert_speed_set(tmp_path / "out")


def test_hostile_members_are_ignored_or_bounded(tmp_path: Path) -> None:
    big = zipfile.ZipInfo(f"{OFFICIAL_PREFIX}/00002/00000_00000.ppm")
    source = make_zip(tmp_path / "g.zip", extra={
        "../../evil.ppm": ppm_bytes(1),
        f"{OFFICIAL_PREFIX}/00001/../../../evil2.ppm": ppm_bytes(1),
        f"{OFFICIAL_PREFIX}/00001/evil.txt": b"x",
    })
    with zipfile.ZipFile(source, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(big, b"\x00" * (5 * 1024**2))  # over the per-image bound: skipped unread
    report = import_gtsrb(tmp_path / "work" / "out", source=source)
    assert report.n_images == 9 and report.skipped == 1
    assert not list(tmp_path.rglob("evil*"))
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]


@pytest.mark.parametrize("relative, pass_as", [
    ("GTSRB/Final_Training/Images", "."),                    # the parent of GTSRB/
    ("GTSRB/Final_Training/Images", "GTSRB"),
    ("GTSRB/Final_Training/Images", "GTSRB/Final_Training"),
    ("GTSRB/Final_Training/Images", "GTSRB/Final_Training/Images"),
    ("gtsrb/GTSRB/Training", "."),                           # torchvision's root
    ("gtsrb/GTSRB/Training", "gtsrb"),
])
def test_extracted_folder_layouts(tmp_path: Path, relative: str, pass_as: str) -> None:
    make_folder(tmp_path / "src", relative)
    report = import_gtsrb(tmp_path / "out", source=tmp_path / "src" / pass_as)
    assert report.n_images == 9
    assert_speed_set(tmp_path / "out")
    row = next(csv.DictReader((tmp_path / "out" / "labels.csv").open()))
    assert row["orig_roi_x2"] == "27"


def test_folder_without_class_folders_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "photos").mkdir(parents=True)
    with pytest.raises(UserError, match="no GTSRB class folders"):
        import_gtsrb(tmp_path / "out", source=tmp_path / "src")
    assert not (tmp_path / "out").exists()


def test_bad_sources_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip" * 10)
    with pytest.raises(UserError, match="not a readable zip"):
        import_gtsrb(tmp_path / "out", source=junk)
    with pytest.raises(UserError, match="no such file"):
        import_gtsrb(tmp_path / "out", source=tmp_path / "missing.zip")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("GTSRB/Final_Training/Images/00009/00000_00000.ppm", ppm_bytes(9))
    with pytest.raises(UserError, match="no readable GTSRB training images"):
        import_gtsrb(tmp_path / "out", source=empty)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, tmp_path / "out") == []


def test_failure_midway_leaves_no_partial_data_set(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "g.zip")
    out = tmp_path / "out"

    def interrupt(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_gtsrb(out, source=source, progress=interrupt)
    assert not out.exists() and leftovers(tmp_path, out) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    source = make_zip(tmp_path / "g.zip")
    out = tmp_path / "out"
    out.mkdir()
    import_gtsrb(out, source=source)  # an empty folder is fine
    with pytest.raises(UserError, match="not empty"):
        import_gtsrb(out, source=source)
    (out / "train" / "speed_20" / "stale.png").write_bytes(b"old")
    report = import_gtsrb(out, source=source, overwrite=True, size=8)
    assert report.n_images == 9 and not (out / "train" / "speed_20" / "stale.png").exists()
    assert leftovers(tmp_path, out) == []


def test_offline_without_source_fails_fast_with_instructions(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, the one quick probe fails and that is the answer: no download is tried."""
    import torchvision.datasets

    attempts: list[tuple[object, object]] = []

    def unreachable(address: object, timeout: object = None, *args: object, **kwargs: object) -> None:
        attempts.append((address, timeout))
        raise OSError("[Errno 101] Network is unreachable")

    def download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the download must not start when the probe failed")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(torchvision.datasets, "GTSRB", download)
    with pytest.raises(UserError) as caught:
        import_gtsrb(tmp_path / "out")
    # One connection attempt, to the download host, under the probe's short timeout: the
    # failure is reported at once, not after a download's 20 s socket timeout or retries.
    assert attempts == [((gtsrb._DOWNLOAD_HOST, 443), gtsrb._PROBE_SECONDS)]
    assert 2 * gtsrb._PROBE_SECONDS <= 10  # the probe's deadline: the most a stalled lookup can cost
    message = str(caught.value)
    assert "Network is unreachable" in message  # the real reason, not a deadline
    assert message.startswith("could not download GTSRB (no internet?")
    assert "GTSRB_Final_Training_Images.zip" in message and "--source" in message
    assert "https://benchmark.ini.rub.de/gtsrb_dataset.html" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("error", [
    urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
    TimeoutError("timed out"),
    RuntimeError("File not found or corrupted."),
])
def test_download_errors_become_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            error: Exception) -> None:
    import torchvision.datasets

    def fail(*args: object, **kwargs: object) -> None:
        assert socket.getdefaulttimeout() is not None  # a stalled download cannot hang
        raise error

    monkeypatch.setattr(gtsrb, "_probe_host", lambda *args, **kwargs: None)
    monkeypatch.setattr(torchvision.datasets, "GTSRB", fail)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError, match=r"could not download GTSRB .*--source"):
        import_gtsrb(tmp_path / "out")
    assert socket.getdefaulttimeout() == before
    assert not (tmp_path / "out").exists()


def test_download_then_import_torchvision_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls: list[dict[str, object]] = []

    def fake_gtsrb(root: str, split: str, download: bool) -> None:
        calls.append({"root": root, "split": split, "download": download})
        make_folder(Path(root), "gtsrb/GTSRB/Training")

    monkeypatch.setattr(gtsrb, "_probe_host", lambda *args, **kwargs: None)
    monkeypatch.setattr(torchvision.datasets, "GTSRB", fake_gtsrb)
    report = import_gtsrb(tmp_path / "data" / "gtsrb")
    assert calls == [{"root": str(tmp_path / "data" / ".gtsrb-download"), "split": "train", "download": True}]
    assert report.n_images == 9
    assert_speed_set(tmp_path / "data" / "gtsrb")
    # An explicit download_root is used as given.
    import_gtsrb(tmp_path / "again", download_root=tmp_path / "dl")
    assert calls[-1]["root"] == str(tmp_path / "dl")


def test_probe_gives_up_on_a_stalled_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution ignores socket timeouts; the probe's own deadline still holds."""
    release, gave_up = threading.Event(), threading.Event()

    def stall(*args: object, **kwargs: object) -> None:
        release.wait(60)  # a lookup that hangs until the test lets it go
        gave_up.set()
        raise OSError("stalled lookup gave up")

    monkeypatch.setattr(socket, "create_connection", stall)
    try:
        with pytest.raises(TimeoutError, match="example.invalid did not answer"):
            gtsrb._probe_host("example.invalid", 443, timeout=0.2)
        assert not gave_up.is_set()  # the probe returned while the lookup was still stuck
    finally:
        release.set()


@pytest.mark.slow
def test_probe_deadline_is_about_twice_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wall-clock side of the test above: 0.2 s of timeout waits 0.4 s, well under 2 s."""
    release = threading.Event()

    def stall(*args: object, **kwargs: object) -> None:
        release.wait(60)
        raise OSError("stalled lookup gave up")

    monkeypatch.setattr(socket, "create_connection", stall)
    started = time.perf_counter()
    try:
        with pytest.raises(TimeoutError):
            gtsrb._probe_host("example.invalid", 443, timeout=0.2)
        assert time.perf_counter() - started < 2
    finally:
        release.set()
