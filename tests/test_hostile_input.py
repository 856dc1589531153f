"""Input from strangers (the issue's "Hostile input"): uploads, zips, folders, checkpoints,
settings, names. Each gets a clear message or a correct answer; nothing runs code, nothing is
written outside its folder, memory stays bounded, and the process stays up.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, JpegImagePlugin

from speedsign import cli, runs
from speedsign.archive import ArchiveLimits, extract_dataset_zip
from speedsign.data import dataset_stats, scan_dataset
from speedsign.errors import UserError
from speedsign.images import ImageError, image_to_tensor
from speedsign.job import load_resume
from speedsign.models import resolve_weights
from speedsign.predict import Predictor
from speedsign.runs import RunDir

# ---------------------------------------------------------------- helpers

def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR for a huge 1-bit image, with a few bytes of pixels:
    a decompression bomb of a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) \
        + chunk(b"IEND", b"")


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Resident memory growth over a block, sampled every few milliseconds."""

    def __enter__(self) -> PeakMemory:
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth_mb = (self.peak - self.baseline) / 1024**2


@pytest.fixture(scope="module")
def sign(synth_dir: Path) -> Image.Image:
    """A sign at 64 px whose digits make it asymmetric, so a wrong rotation shows: the brightest
    rendered 30, 50 or 80 (a near-black one would be mostly clipped noise in the big photo)."""
    paths = sorted(path for name in ("speed_30", "speed_50", "speed_80")
                   for path in (synth_dir / "train" / name).iterdir())
    images = [Image.open(path).convert("RGB") for path in paths]
    brightest = max(images, key=lambda image: float(np.asarray(image).mean()))
    return brightest.resize((64, 64), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def predictor(runs_with_results: dict[str, Path]) -> Predictor:
    return Predictor(runs_with_results["scratch"])


@pytest.fixture(scope="module")
def big_photo(sign: Image.Image, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4000 x 4000 photo of the sign, over 50 MB as a JPEG (sensor noise does not compress)."""
    side = 4000
    base = np.asarray(sign.resize((side, side), Image.Resampling.BILINEAR), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-96, 97, base.shape, dtype=np.int16)
    photo = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    photo.save(path, "JPEG", quality=100, subsampling=0)
    assert path.stat().st_size > 50 * 1024**2
    return path


# ---------------------------------------------------------------- uploads and predict

def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def refused_uploads() -> dict[str, tuple[Callable[[], bytes], str]]:
    """name: (bytes, words the message must contain)."""
    rng = np.random.default_rng(1)
    return {
        "zero bytes": (lambda: b"", "empty"),
        "random bytes": (lambda: rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image"),
        "text file named .jpg": (lambda: b"hello, this is not a photo\n" * 20, "text file"),
        "truncated JPEG": (lambda: _half(encode(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")),
                           "truncated"),
        "JPEG cut inside its header": (lambda: encode(Image.new("RGB", (256, 256), "red"), "JPEG")[:300],
                                       "truncated"),
        "decompression bomb 30000x30000": (lambda: png_header_only(30000, 30000), "decompression bomb"),
        "SVG": (lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)'
                        b'</script><circle r="5"/></svg>', "SVG"),
        "HTML page": (lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "web page"),
        "PDF": (lambda: b"%PDF-1.7\n" + b"\0" * 100, "PDF"),
        "over 64 MB": (lambda: b"\xff\xd8\xff" + bytes(65 * 1024**2), "limit"),
    }


def test_refused_uploads_get_a_clear_message_in_bounded_memory(predictor: Predictor) -> None:
    for name, (make, words) in refused_uploads().items():
        data = make()
        with PeakMemory() as memory:
            with pytest.raises(ImageError) as caught:
                predictor.predict(data)
        message = str(caught.value)
        assert words.lower() in message.lower() and "\n" not in message and len(message) < 300, (name, message)
        assert memory.growth_mb < 200, (name, memory.growth_mb)  # the bomb is never decoded (900 Mpx)


def _upload_variants(sign: Image.Image) -> dict[str, tuple[bytes, Image.Image, float]]:
    """name: (upload bytes, the upright RGB picture it shows, largest mean pixel error allowed)."""
    grey = sign.convert("L")
    rgba = sign.convert("RGBA")
    palette = sign.quantize(colors=64)
    sixteen = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)  # I;16: full 16-bit range
    cmyk = encode(sign.convert("CMYK"), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the camera stored the pixels turned left
    sideways = encode(sign.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    other = ImageOps.invert(sign)
    gif = io.BytesIO()
    sign.save(gif, "GIF", save_all=True, append_images=[other, sign], duration=100, loop=0)
    return {
        "RGBA": (encode(rgba, "PNG"), sign, 0.0),
        "palette": (encode(palette, "PNG"), palette.convert("RGB"), 0.0),
        "greyscale": (encode(grey, "PNG"), grey.convert("RGB"), 0.0),
        "16-bit PNG": (encode(sixteen, "PNG"), grey.convert("RGB"), 0.0),
        "CMYK JPEG": (cmyk, sign, 6.0),
        "EXIF-rotated JPEG": (sideways, sign, 6.0),
        "animated GIF (first frame)": (gif.getvalue(), sign, 6.0),
    }


def test_every_image_kind_gets_the_prediction_of_its_upright_rgb_picture(
        predictor: Predictor, sign: Image.Image) -> None:
    size, resize = predictor.config.stored_size, predictor.config.resize
    for name, (data, picture, tolerance) in _upload_variants(sign).items():
        tensor = predictor.load_tensor(data)
        expected = image_to_tensor(picture, size=size, resize=resize)
        error = (tensor.float() - expected.float()).abs().mean().item()
        assert error <= tolerance, (name, error)
        if name.startswith("EXIF"):  # upright, not as stored
            stored = image_to_tensor(sign.transpose(Image.Transpose.ROTATE_90), size=size, resize=resize)
            assert error < (tensor.float() - stored.float()).abs().mean().item() / 3, name
        answer = predictor.predict(data, top=3)
        # The answer is exactly what the same pixels get: the model sees what a viewer sees.
        same = predictor.predict_tensor(tensor, top=3)
        assert answer.labels == same.labels and np.allclose(answer.probs, same.probs, atol=1e-6), name
        if tolerance == 0.0:
            reference = predictor.predict(encode(picture, "PNG"), top=3)
            assert answer.labels == reference.labels and np.allclose(answer.probs, reference.probs, atol=1e-6), name


def test_fifty_megabyte_photo_is_predicted_in_bounded_memory(
        predictor: Predictor, sign: Image.Image, big_photo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = big_photo.read_bytes()
    decoded: list[tuple[int, int]] = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self: JpegImagePlugin.JpegImageFile):
        if self.tile:  # pixels still to decode: what libjpeg is asked for
            decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    with PeakMemory() as memory:
        tensor = predictor.load_tensor(data)
        answer = predictor.predict(data)
    # 16 Mpx would be 48 MB decoded; JPEG draft mode decodes it at 1/8 scale (500 x 500).
    assert decoded == [(500, 500)] * 2, decoded
    assert memory.growth_mb < 150, memory.growth_mb
    expected = image_to_tensor(sign, size=predictor.config.stored_size, resize=predictor.config.resize)
    assert (tensor.float() - expected.float()).abs().mean().item() < 12  # the sign, through the noise
    assert answer.labels == predictor.predict_tensor(tensor).labels


@pytest.mark.slow
def test_fifty_megabyte_photo_is_predicted_in_seconds(predictor: Predictor, big_photo: Path) -> None:
    data = big_photo.read_bytes()
    started = time.perf_counter()
    predictor.load_tensor(data)
    predictor.predict(data)
    assert time.perf_counter() - started < 30  # two drafted decodes: about a second on two cores


def test_predict_command_answers_every_file_and_names_each_bad_one(
        predictor: Predictor, sign: Image.Image, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files: dict[str, bytes | None] = {"good.png": encode(sign, "PNG")}
    for name, (make, _) in refused_uploads().items():
        if name != "over 64 MB":
            files[name.replace(" ", "_") + ".jpg"] = make()
    paths = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    paths += [str(tmp_path / "missing.jpg"), str(tmp_path), "/dev/zero"]
    code = cli.main(["predict", str(predictor.run_dir), *paths, "--json"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    entries = json.loads(captured.out.splitlines()[-1])["predictions"]
    assert [entry["image"] for entry in entries] == paths
    assert [t["label"] for t in entries[0]["top"]] == list(predictor.predict(tmp_path / "good.png").labels)
    for entry in entries[1:]:
        assert entry["error"] and "\n" not in entry["error"], entry


# ---------------------------------------------------------------- data-set zips

def make_zip(entries: dict[str, bytes], *, links: dict[str, str] | None = None,
             method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def _png() -> bytes:
    return encode(Image.new("RGB", (8, 8), "red"), "PNG")


def hostile_zips() -> dict[str, tuple[Callable[[], bytes], str, ArchiveLimits]]:
    """name: (zip bytes, words of the refusal, limits)."""
    good = {"train/speed_20/a.png": _png(), "train/speed_30/b.png": _png()}
    default = ArchiveLimits()
    return {
        "../ entry (zip slip)": (lambda: make_zip({**good, "train/speed_20/../../../evil.png": _png()}),
                                 "unsafe path", default),
        "absolute path": (lambda: make_zip({**good, "/tmp/evil.png": _png()}), "unsafe path", default),
        "backslash path": (lambda: make_zip({**good, "train\\..\\..\\evil.png": _png()}), "unsafe path", default),
        "symlink entry": (lambda: make_zip(good, links={"train/speed_20/link.png": "/etc/passwd"}),
                          "symbolic link", default),
        "zip bomb": (lambda: make_zip({**good, **{f"train/speed_20/bomb{i}.png": bytes(20 * 1024**2)
                                                  for i in range(5)}}), "zip bomb", default),
        "nested zip": (lambda: make_zip({**good, "train/more.zip": make_zip(good)}), "another archive", default),
        "thousands of tiny files": (
            lambda: make_zip({f"train/speed_{i % 2}0/{i}.png": b"x" for i in range(3000)}, method=zipfile.ZIP_STORED),
            "3,000 entries, over the limit", ArchiveLimits(max_members=1000)),
        "no class folders": (lambda: make_zip({"a.png": _png(), "b.png": _png()}), "no class folders", default),
        "not a zip": (lambda: b"PK\x03\x04 this is not really a zip", "not a readable zip", default),
    }


@pytest.mark.parametrize("name", list(hostile_zips()))
def test_hostile_dataset_zip_is_refused_whole_and_writes_nothing(name: str, tmp_path: Path) -> None:
    make, words, limits = hostile_zips()[name]
    upload = tmp_path / "uploads" / "data.zip"
    upload.parent.mkdir()
    upload.write_bytes(make())
    target = tmp_path / "datasets" / "mine"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=words):
        extract_dataset_zip(upload, target, limits=limits)
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    # Nothing outside the target, and no partial data set (nor its temporary folder) inside.
    assert [p for p in after if p not in before] in ([], [str(target.parent)]), after
    assert not target.exists() and not Path("/tmp/evil.png").exists()


def test_thousands_of_tiny_files_within_the_limits_are_imported_whole(tmp_path: Path) -> None:
    entries = {f"speed_{i % 3}0/{i}.png": b"x" for i in range(2000)}
    report = extract_dataset_zip(make_zip(entries, method=zipfile.ZIP_STORED), tmp_path / "out")
    assert report.n_images == 2000
    assert sum(1 for _ in (tmp_path / "out").rglob("*.png")) == 2000
    assert ArchiveLimits().max_members <= 50_000  # and a default limit exists


# ---------------------------------------------------------------- server folders

def test_server_folder_symlinks_pointing_outside_are_not_followed(synth_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secret_class").mkdir(parents=True)
    secret = outside / "secret_class" / "secret.png"
    secret.write_bytes(_png())
    data = tmp_path / "data"
    for name in ("speed_20", "speed_30"):
        (data / name).mkdir(parents=True)
        for source in sorted((synth_dir / "train" / name).iterdir())[:10]:
            (data / name / source.name).write_bytes(source.read_bytes())
    (data / "secret_class").symlink_to(outside / "secret_class")  # a class folder leading out
    (data / "speed_20" / "stolen.png").symlink_to(secret)  # an image leading out
    (data / "speed_30" / "inside.png").symlink_to(data / "speed_30" / sorted(os.listdir(data / "speed_30"))[0])

    index = scan_dataset(data)
    files = {s.path for split in index.splits.values() for s in split}
    assert index.classes == ("speed_20", "speed_30")
    assert "speed_20/stolen.png" not in files and "speed_30/inside.png" in files
    assert set(index.ignored) >= {"secret_class", "speed_20/stolen.png"}
    assert set(dataset_stats(data)["ignored"]) >= {"secret_class", "speed_20/stolen.png"}

    # A linked split folder: every class in it lies outside, so there is nothing to train on.
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "train").symlink_to(data)
    with pytest.raises(UserError, match="no class folders"):
        scan_dataset(linked)


# ---------------------------------------------------------------- checkpoints and --weights

class _Exploit:
    """Unpickling this creates the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.fixture(params=["torch.save", "raw pickle"])
def evil_checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    payload = {"model": _Exploit(marker), "config": {}, "classes": ["a", "b"]}
    path = tmp_path / "evil.pt"
    if request.param == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    return path, marker


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("speedsign: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_weights_file_is_refused_and_never_executed(
        evil_checkpoint: tuple[Path, Path], synth_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil_checkpoint
    runs_dir = tmp_path / "runs"
    for approach in ("finetune", "frozen"):
        code = cli.main(["train", "--approach", approach, "--data", str(synth_dir), "--img-size", "16",
                         "--epochs", "1", "--batch-size", "32", "--weights", str(path),
                         "--runs-dir", str(runs_dir), "--json"])
        assert code == 2
        assert "weights_only" in one_line_error(capsys)
    assert not marker.exists() and not runs_dir.exists()  # no job, no run folder
    with pytest.raises(UserError):
        resolve_weights(str(path), runs_dir=runs_dir)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_in_a_run_is_refused_by_predict_eval_resume_and_run_weights(
        evil_checkpoint: tuple[Path, Path], runs_with_results: dict[str, Path], synth_dir: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil_checkpoint
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "scratch-20250101-0123456789"
    run_dir.mkdir(parents=True)
    for name in ("config.json", "status.json"):
        (run_dir / name).write_bytes((runs_with_results["scratch"] / name).read_bytes())
    for name in ("best.pt", "last.pt"):
        (run_dir / name).write_bytes(path.read_bytes())

    with pytest.raises(UserError, match="weights_only"):
        Predictor(run_dir)
    assert cli.main(["predict", str(run_dir), str(path)]) == 2
    assert "weights_only" in one_line_error(capsys)
    assert cli.main(["eval", str(run_dir), "--data", str(synth_dir), "--json"]) == 2
    assert "weights_only" in one_line_error(capsys)
    assert load_resume(RunDir(run_dir)) is None  # a relaunch starts over instead
    capsys.readouterr()
    code = cli.main(["train", "--approach", "finetune", "--data", str(synth_dir), "--img-size", "16",
                     "--epochs", "1", "--batch-size", "32", "--weights", f"run:{run_dir.name}",
                     "--runs-dir", str(runs_dir)])
    assert code == 2 and "weights_only" in one_line_error(capsys)
    assert not marker.exists()


def test_weights_and_checkpoints_of_the_wrong_shape_get_a_clear_error(
        runs_with_results: dict[str, Path], synth_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from torchvision.models import resnet18

    cases = {
        "resnet34-like conv1": ({**resnet18().state_dict(), "conv1.weight": torch.zeros(64, 3, 3, 3)},
                                "conv1.weight has shape (64, 3, 3, 3), expected (64, 3, 7, 7)"),
        "missing layers": ({"conv1.weight": torch.zeros(64, 3, 7, 7)}, "missing keys"),
        "not a dict of tensors": ({"a": [1, 2, 3]}, "not a ResNet18 state dict"),
        "a bare tensor": (torch.zeros(3), "not a ResNet18 state dict"),
    }
    for name, (payload, words) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(payload, path)
        code = cli.main(["train", "--approach", "frozen", "--data", str(synth_dir), "--img-size", "16",
                         "--epochs", "1", "--batch-size", "32", "--weights", str(path),
                         "--runs-dir", str(tmp_path / "runs"), "--json"])
        assert code == 2 and words in one_line_error(capsys), name
    assert not (tmp_path / "runs").exists()

    # A run whose best.pt does not fit its own config (10 classes instead of 9), or is cut short.
    source = runs_with_results["scratch"]
    best = torch.load(source / "best.pt", weights_only=True)
    best["model"]["fc.weight"] = torch.zeros(10, 512)
    for name, write in {"wrong shape": lambda p: torch.save(best, p),
                        "truncated": lambda p: p.write_bytes((source / "best.pt").read_bytes()[:5000]),
                        "not a checkpoint": lambda p: torch.save({"weights": 1}, p)}.items():
        run_dir = tmp_path / name.replace(" ", "-")
        run_dir.mkdir()
        write(run_dir / "best.pt")
        with pytest.raises(UserError) as caught:
            Predictor(run_dir)
        assert str(run_dir / "best.pt") in str(caught.value) and "\n" not in str(caught.value), name


# ---------------------------------------------------------------- settings

BAD_SETTINGS = {
    "zero learning rate": (["--lr", "0"], "lr must be in"),
    "negative learning rate": (["--lr", "-0.1"], "lr must be in"),
    "NaN learning rate": (["--lr", "nan"], "not a finite number"),
    "infinite learning rate": (["--lr", "inf"], "not a finite number"),
    "zero epochs": (["--epochs", "0"], "epochs must be in"),
    "negative epochs": (["--epochs", "-1"], "epochs must be in"),
    "zero batch size": (["--batch-size", "0"], "batch_size must be in"),
    "negative batch size": (["--batch-size", "-8"], "batch_size must be in"),
    "batch larger than the data set": (["--batch-size", "5000"], "larger than the"),
    "fractional epochs": (["--epochs", "1.5"], "not a whole number"),
    "unknown approach": (["--approach", "magic"], "invalid choice"),
    "NaN momentum": (["--momentum", "nan"], "not a finite number"),
    "tiny images": (["--img-size", "4"], "img_size must be in"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_setting_is_rejected_before_a_job_starts(
        name: str, synth_dir: Path, weights_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, words = BAD_SETTINGS[name]
    argv = ["train", "--approach", "frozen", "--data", str(synth_dir), "--weights", str(weights_file),
            "--img-size", "16", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"), "--json"]
    for background in ([], ["--background"]):
        try:
            code = cli.main(argv + extra + background)
        except SystemExit as exit_:  # argparse's own checks (choices, types)
            code = exit_.code
        assert code == 2, name
        assert words in one_line_error(capsys), name
        assert capsys.readouterr().out == ""
    assert not (tmp_path / "runs").exists()  # no run folder, no job


# ---------------------------------------------------------------- names from disk

def test_run_ids_from_disk_and_urls_are_data_not_paths(runs_with_results: dict[str, Path], tmp_path: Path) -> None:
    for bad in ("", "../etc", "a/b", "<script>alert(1)</script>", "run id", "x" * 101, "ＡＢＣ", ".hidden", "a\\b"):
        assert not runs.is_valid_run_id(bad), bad
        with pytest.raises(UserError):
            resolve_weights(f"run:{bad}", runs_dir=tmp_path)
    runs_dir = tmp_path / "runs"
    (runs_dir / "<img src=x onerror=alert(1)>").mkdir(parents=True)
    (runs_dir / "<img src=x onerror=alert(1)>" / "status.json").write_text('{"state": "running"}')
    good = runs_dir / runs_with_results["scratch"].name
    good.mkdir()
    for name in ("config.json", "status.json", "metrics.jsonl"):
        (good / name).write_bytes((runs_with_results["scratch"] / name).read_bytes())
    assert [info.run_id for info in runs.list_runs(runs_dir)] == [good.name]


def test_class_folder_names_are_data_that_cannot_write_elsewhere(tmp_path: Path) -> None:
    # Separators and dot-dot cannot name a class: refused before anything is written.
    for label in ("..", "a\\..\\..\\b"):
        with pytest.raises(UserError):
            extract_dataset_zip(make_zip({f"train/{label}/a.png": _png(), "train/ok/b.png": _png()}),
                                tmp_path / "refused")
        assert not (tmp_path / "refused").exists()
    # Markup is a legal folder name: it stays one folder inside the data set, and a name.
    # ("<script>...</script>" holds a "/": it is a deeper path, not a class, and is skipped.)
    script, quote = "<img src=x onerror=alert(1)>", 'a&b "quoted" \'x\''
    report = extract_dataset_zip(make_zip({f"train/{script}/a.png": _png(), f"train/{script}/b.png": _png(),
                                           f"train/{quote}/c.png": _png(), f"train/{quote}/d.png": _png(),
                                           "train/<script>alert(1)</script>/e.png": _png()}),
                                 tmp_path / "data")
    assert set(report.classes["train"]) == {script, quote} and report.skipped == 1
    assert sorted(p.name for p in (tmp_path / "data" / "train").iterdir()) == sorted([script, quote])
    assert set(scan_dataset(tmp_path / "data").classes) == {script, quote}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
