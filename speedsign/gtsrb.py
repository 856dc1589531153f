"""Import the real GTSRB training photos of the nine speed classes into ImageFolder layout.

Sources: the official `GTSRB_Final_Training_Images.zip` (read member by member, never
extracted whole), a folder holding its extracted `Final_Training/Images/000NN/`, or
torchvision's `gtsrb/GTSRB/Training/000NN/` (downloaded here when no source is given).
The result is `out/train/<class>/<track>_<frame>.png`, the same shape as the shipped
`gtsrb-speed32` set: file names keep the track, because validation must be split by track.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import re
import shutil
import socket
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from speedsign.archive import make_temp_sibling, publish_folder, refuse_non_empty
from speedsign.errors import UserError

SPEED_CLASSES: dict[int, str] = {
    0: "speed_20",
    1: "speed_30",
    2: "speed_50",
    3: "speed_60",
    4: "speed_70",
    5: "speed_80",
    6: "end_speed_80",
    7: "speed_100",
    8: "speed_120",
}

GTSRB_PAGE = "https://benchmark.ini.rub.de/gtsrb_dataset.html"
GTSRB_ZIP_URL = (
    "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/GTSRB_Final_Training_Images.zip"
)
CITATION = (
    'J. Stallkamp, M. Schlipsing, J. Salmen, C. Igel, "Man vs. computer: Benchmarking machine '
    'learning algorithms for traffic sign recognition", Neural Networks 32 (2012) 323-332.'
)
LABEL_COLUMNS: tuple[str, ...] = (
    "split", "path", "gtsrb_class_id", "class_name", "track_id", "orig_width", "orig_height",
    "orig_roi_x1", "orig_roi_y1", "orig_roi_x2", "orig_roi_y2",
)

_DOWNLOAD_HOST = "sid.erda.dk"  # where torchvision fetches GTSRB-Training_fixed.zip from
_PROBE_SECONDS = 5.0
_DOWNLOAD_SOCKET_SECONDS = 20.0  # per blocking socket call, not for the whole 190 MB
_COMPLETE_MARKER = ".speedsign-extracted"
# The official archive holds 39,209 images and 43 CSVs; GTSRB frames are at most 250x250 px
# (188 KB as PPM). Bounds far above that keep a hostile archive from costing much.
_MAX_MEMBERS = 200_000
_MAX_IMAGES = 60_000  # of classes 0-8; the archive has about 13,000
_MAX_TOTAL_BYTES = 2 * 1024**3  # declared, which zipfile enforces on every read
_MAX_IMAGE_BYTES = 4 * 1024**2
_MAX_CSV_BYTES = 4 * 1024**2
_MAX_PIXELS = 512 * 512
_IMAGE_DIRS = ("Images", "Training")  # official zip vs torchvision's re-packed one
_CLASS_DIR = re.compile(r"\d{5}")
_IMAGE_NAME = re.compile(r"(\d{5})_(\d{5})\.ppm")
_CSV_NAME = re.compile(r"GT-\d{5}\.csv")
# Where the class folders may sit below a source folder, most specific first.
_FOLDER_LAYOUTS = (
    "",
    "Images",
    "Training",
    "Final_Training/Images",
    "GTSRB/Final_Training/Images",
    "GTSRB/Training",
    "gtsrb/GTSRB/Training",
)
_EXAMPLES = 5

Roi = tuple[int, int, int, int]


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote: `out/train/<class>/<track>_<frame>.png`."""

    out: Path
    n_images: int
    per_class: Mapping[str, int]  # every class in SPEED_CLASSES order, zeros included
    skipped: int  # images of the nine classes that could not be read or decoded
    seconds: float
    source: str
    skipped_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Item:
    class_id: int
    stem: str  # "<track>_<frame>"
    where: str  # for messages
    read: Callable[[], bytes]


class _Unreadable(Exception):
    """One image we skip and count."""


def import_gtsrb(
    out: Path,
    *,
    source: Path | None = None,
    download_root: Path | None = None,
    size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> ImportReport:
    """Write GTSRB's speed-limit training images (classes 0-8) to `out/train/<class>/`.

    Without `source`, torchvision downloads GTSRB into `download_root` (default
    `<out>.parent/.gtsrb-download`) first; offline that fails fast with a `UserError` that
    says how to pass the archive by hand. `size` resizes to `size` x `size` px; the default
    keeps the original pixels. All or nothing: `out` appears only when the import succeeded.
    """
    started = time.perf_counter()
    out = Path(out)
    if size is not None and not 8 <= size <= 1024:
        raise UserError(f"size must be between 8 and 1024 px, got {size}")
    if not overwrite:
        refuse_non_empty(out)
    elif out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder")
    if source is None:
        root = Path(download_root) if download_root is not None else out.parent / ".gtsrb-download"
        source = download_gtsrb(root=root)
    source = Path(source)
    with _open_source(source) as (items, rois):
        tmp = make_temp_sibling(out)
        try:
            counts, skipped = _write_images(items, rois, tmp, size=size, progress=progress)
            n_images = sum(counts.values())
            if n_images == 0:
                raise UserError(
                    f"no readable GTSRB training images of classes 0-8 in {source}: expected "
                    "GTSRB_Final_Training_Images.zip or its Final_Training/Images/000NN/*.ppm folders"
                )
            _write_readme(tmp, source=source, counts=counts, size=size)
            publish_folder(tmp, out, overwrite=overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ImportReport(
        out=out,
        n_images=n_images,
        per_class=counts,
        skipped=len(skipped),
        seconds=time.perf_counter() - started,
        source=str(source),
        skipped_examples=tuple(skipped[:_EXAMPLES]),
    )


def download_gtsrb(*, root: Path) -> Path:
    """Let torchvision fetch GTSRB's training split into `root`; return its image folder.

    Checks that the server answers within seconds first, so an offline machine gets a
    clear `UserError` instead of a long hang.
    """
    root = Path(root)
    try:
        _probe_host(_DOWNLOAD_HOST, 443, timeout=_PROBE_SECONDS)
    except OSError as exc:
        raise UserError(_offline_message(exc)) from exc
    base = root / "gtsrb"
    images = base / "GTSRB" / "Training"
    marker = base / _COMPLETE_MARKER
    # torchvision trusts any existing Training/ folder, even one a killed extraction left
    # half-written. Without our marker, re-extract from its (md5-checked) zip if that is there.
    if images.is_dir() and not marker.exists() and (base / "GTSRB-Training_fixed.zip").is_file():
        shutil.rmtree(images)
    import torchvision.datasets  # slow import, only needed here

    previous = socket.getdefaulttimeout()
    # torchvision's urlopen has no timeout of its own; a stalled connection would hang forever.
    socket.setdefaulttimeout(_DOWNLOAD_SOCKET_SECONDS)
    try:
        torchvision.datasets.GTSRB(root=str(root), split="train", download=True)
    except (OSError, RuntimeError, http.client.HTTPException, zipfile.BadZipFile) as exc:
        raise UserError(_offline_message(exc)) from exc
    finally:
        socket.setdefaulttimeout(previous)
    marker.touch()
    return images


def find_images_dir(folder: Path) -> Path:
    """The folder that holds the `000NN` class folders, searched in the known layouts."""
    for layout in _FOLDER_LAYOUTS:
        candidate = folder / layout if layout else folder
        if candidate.is_dir() and any(
            child.is_dir() and _CLASS_DIR.fullmatch(child.name) for child in candidate.iterdir()
        ):
            return candidate
    raise UserError(
        f"no GTSRB class folders (00000, 00001, ...) in {folder}: pass GTSRB_Final_Training_Images.zip "
        "or the folder that holds GTSRB/Final_Training/Images/ (or torchvision's gtsrb/GTSRB/Training/)"
    )


@contextlib.contextmanager
def _open_source(source: Path) -> Iterator[tuple[list[_Item], dict[tuple[int, str], Roi]]]:
    if source.is_dir():
        yield _folder_items(find_images_dir(source))
        return
    if not source.is_file():
        raise UserError(f"no such file or folder: {source}")
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(
            f"{source} is not a readable zip ({exc}): pass GTSRB_Final_Training_Images.zip or a folder"
        ) from exc
    with zf:
        yield _zip_items(zf)


def _zip_items(zf: zipfile.ZipFile) -> tuple[list[_Item], dict[tuple[int, str], Roi]]:
    """The archive's speed-class images and ROIs, matched by name pattern only.

    Member names are never used as output paths (those are rebuilt from the matched digits),
    so a hostile name can at worst be ignored.
    """
    infos = zf.infolist()
    if len(infos) > _MAX_MEMBERS:
        raise UserError(f"the zip holds {len(infos):,} entries: this is not the GTSRB training archive")
    if any(info.flag_bits & 0x1 for info in infos):
        raise UserError("the zip is encrypted (password-protected): pass the original GTSRB archive")
    items: list[_Item] = []
    rois: dict[tuple[int, str], Roi] = {}
    declared = 0
    csv_read: set[int] = set()
    for info in infos:
        parts = info.filename.split("/")
        if len(parts) < 3 or parts[-3] not in _IMAGE_DIRS or not _CLASS_DIR.fullmatch(parts[-2]):
            continue
        class_id = int(parts[-2])
        if class_id not in SPEED_CLASSES:
            continue
        if match := _IMAGE_NAME.fullmatch(parts[-1]):
            stem = f"{match[1]}_{match[2]}"
            items.append(_Item(class_id, stem, info.filename, _member_reader(zf, info, _MAX_IMAGE_BYTES)))
            declared += min(info.file_size, _MAX_IMAGE_BYTES)  # bigger ones are skipped unread
        elif _CSV_NAME.fullmatch(parts[-1]) and class_id not in csv_read:
            csv_read.add(class_id)  # one per class: a hostile zip could repeat it 100,000 times
            with contextlib.suppress(_Unreadable):
                text = _member_reader(zf, info, _MAX_CSV_BYTES)().decode("utf-8", errors="replace")
                rois.update(_parse_rois(text, class_id=class_id))
    if len(items) > _MAX_IMAGES or declared > _MAX_TOTAL_BYTES:
        raise UserError(
            f"the zip holds {len(items):,} images of classes 0-8 ({declared / 1024**2:,.0f} MiB): "
            "far more than GTSRB's training archive; refused"
        )
    return items, rois


def _folder_items(images_dir: Path) -> tuple[list[_Item], dict[tuple[int, str], Roi]]:
    items: list[_Item] = []
    rois: dict[tuple[int, str], Roi] = {}
    for class_dir in sorted(images_dir.iterdir()):
        if not (class_dir.is_dir() and _CLASS_DIR.fullmatch(class_dir.name)):
            continue
        class_id = int(class_dir.name)
        if class_id not in SPEED_CLASSES:
            continue
        for path in sorted(class_dir.iterdir()):
            if match := _IMAGE_NAME.fullmatch(path.name):
                items.append(_Item(class_id, f"{match[1]}_{match[2]}", str(path), _file_reader(path)))
            elif _CSV_NAME.fullmatch(path.name) and path.stat().st_size <= _MAX_CSV_BYTES:
                text = path.read_text(encoding="utf-8", errors="replace")
                rois.update(_parse_rois(text, class_id=class_id))
    return items, rois


def _member_reader(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        if info.file_size > limit:
            raise _Unreadable("too large")
        try:
            with zf.open(info) as member:
                data = member.read(limit + 1)  # never more than the bound, whatever it declares
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            raise _Unreadable(f"damaged in the zip: {exc}") from exc
        if len(data) > limit:
            raise _Unreadable("too large")
        return data

    return read


def _file_reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            if path.stat().st_size > _MAX_IMAGE_BYTES:
                raise _Unreadable("too large")
            return path.read_bytes()
        except OSError as exc:
            raise _Unreadable(str(exc)) from exc

    return read


def _parse_rois(text: str, *, class_id: int) -> dict[tuple[int, str], Roi]:
    """`GT-000NN.csv` rows (Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId)."""
    rois: dict[tuple[int, str], Roi] = {}
    for row in csv.DictReader(io.StringIO(text), delimiter=";"):
        match = _IMAGE_NAME.fullmatch(row.get("Filename") or "")
        try:
            roi = tuple(int(row[key]) for key in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
        except (KeyError, TypeError, ValueError):
            continue
        if match:
            rois[(class_id, f"{match[1]}_{match[2]}")] = roi  # type: ignore[assignment]
    return rois


def _write_images(
    items: list[_Item],
    rois: dict[tuple[int, str], Roi],
    tmp: Path,
    *,
    size: int | None,
    progress: Callable[[int, int], None] | None,
) -> tuple[dict[str, int], list[str]]:
    counts = {name: 0 for name in SPEED_CLASSES.values()}
    skipped: list[str] = []
    rows: list[dict[str, object]] = []
    for done, item in enumerate(items, start=1):
        name = SPEED_CLASSES[item.class_id]
        try:
            image = _decode(item.read())
        except _Unreadable as exc:
            skipped.append(f"{item.where} ({exc})")
        else:
            orig_w, orig_h = image.size
            if size is not None:
                image = image.resize((size, size), Image.Resampling.LANCZOS)
            folder = tmp / "train" / name
            folder.mkdir(parents=True, exist_ok=True)
            relative = f"train/{name}/{item.stem}.png"
            image.save(tmp / relative, format="PNG")
            counts[name] += 1
            roi = rois.get((item.class_id, item.stem), ("", "", "", ""))
            values = ("train", relative, item.class_id, name, item.stem.split("_")[0], orig_w, orig_h, *roi)
            rows.append(dict(zip(LABEL_COLUMNS, values, strict=True)))
        if progress is not None:
            progress(done, len(items))
    with open(tmp / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return counts, skipped


def _decode(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Check the header's size before decoding: a PPM header may claim any size.
            if image.width * image.height > _MAX_PIXELS:
                raise _Unreadable(f"{image.width}x{image.height} px is not a GTSRB frame")
            return image.convert("RGB")
    except _Unreadable:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise _Unreadable(f"not a readable image: {exc}") from exc


def _write_readme(tmp: Path, *, source: Path, counts: Mapping[str, int], size: int | None) -> None:
    lines = [
        "Real speed-limit sign photos from the German Traffic Sign Recognition Benchmark (GTSRB),",
        "classes 0-8, official training split, imported by speedsign.gtsrb.",
        "",
        f"source: {source}",
        f"imported: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"pixels: {f'resized to {size}x{size}' if size else 'original (15-250 px, whole frame with border)'}",
        "layout: train/<class>/<track>_<frame>.png; one track = one physical sign, so split by track",
        "labels.csv: original size and sign box (ROI) in original pixels, where the archive gave them",
        "",
        "class (GTSRB id): images",
        *(f"  {name} ({class_id}): {counts[name]}" for class_id, name in SPEED_CLASSES.items()),
        f"  total: {sum(counts.values())}",
        "",
        "Terms: GTSRB is given out by its authors for research and teaching; cite",
        CITATION,
        f"Data set page: {GTSRB_PAGE}",
        "",
    ]
    (tmp / "README.txt").write_text("\n".join(lines), encoding="utf-8")


def _probe_host(host: str, port: int, *, timeout: float) -> None:
    """Raise OSError unless `host:port` accepts a connection within about `timeout` seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts and can stall.
    """
    outcome: list[OSError | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=connect, daemon=True, name="gtsrb-probe")
    thread.start()
    thread.join(timeout * 2)
    if not outcome:
        raise TimeoutError(f"{host} did not answer within {timeout * 2:.0f} s")
    if outcome[0] is not None:
        raise outcome[0]


def _offline_message(exc: BaseException) -> str:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return (
        f"could not download GTSRB (no internet? {reason}): download GTSRB_Final_Training_Images.zip "
        f"from {GTSRB_PAGE} (or {GTSRB_ZIP_URL}) on a machine with internet and pass it: "
        "python -m speedsign data gtsrb --out DIR --source GTSRB_Final_Training_Images.zip"
    )
