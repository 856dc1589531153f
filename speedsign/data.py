"""Data sources: folder scanning, class order, group-aware splits, fingerprint, tensor cache.

The flow is one way: a folder -> `scan_dataset` (an index of files, no pixels) ->
`load_split_tensors` (decoded once, in worker processes, into a uint8 cache file that a
large data set is memory-mapped from) -> batches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from speedsign.errors import UserError
from speedsign.images import ImageError, load_image_tensor
from speedsign.storage import atomic_writer, cache_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS: tuple[str, ...] = ("train", "val", "test")
# GTSRB names a file <track>_<frame>: frames of one track are the same physical sign.
TRACK_PATTERN = re.compile(r"^(\d+)_(\d+)$")
# Above this many decoded bytes the pixels stay on disk, memory-mapped, instead of being read in.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
# The decode cache file's layout (see _write_decoded); 1 was a torch.save'd dict in a .pt file.
DECODED_FORMAT = 2
_MAGIC = b"SSDECODE"
_FOOTER = struct.Struct("<8sQ")  # magic, byte length of the JSON just before it
# Below this many files decoding stays in this process. Measured on 2 cores with 32-px
# GTSRB PNGs: a file costs 0.17 ms decoded here; with 2 workers, starting them costs
# ~0.1 s and each file ~0.045 ms more (pickling through the pipe), so workers win past
# ~1,600 files. Larger photos cost more to decode, which moves the break-even lower.
PARALLEL_DECODE_MIN_FILES = 2000
# The parent's share (unpickling, writing) is ~1/10 of a worker's, so it is no bottleneck
# at 4; more would take the cores of a shared machine for little.
MAX_DECODE_WORKERS = 4
DECODE_BATCH = 256  # files per worker batch: one progress report each
GATHER_CHUNK_BYTES = 64 * 1024**2  # how much of a memory-mapped split is copied at once

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Sample:
    """One image file: its path relative to the data root, class index, and split group."""

    path: str
    label: int
    group: str


@dataclass(frozen=True)
class DatasetIndex:
    """What a data folder holds, before any pixel is decoded."""

    root: Path
    classes: tuple[str, ...]
    layout: str  # "split": train/ and val/ given; "single": val drawn from train; "test": test/ only
    splits: dict[str, tuple[Sample, ...]]
    fingerprint: str
    ignored: tuple[str, ...] = ()  # files that are not images by name, or unsafe links

    def samples(self, split: str) -> tuple[Sample, ...]:
        return self.splits.get(split, ())


@dataclass(frozen=True)
class SplitTensors:
    """A decoded split: uint8 images (N, 3, S, S), int64 labels, file names."""

    images: torch.Tensor  # memory-mapped for a data set too large for memory
    labels: torch.Tensor
    files: tuple[str, ...]
    unreadable: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def class_sort_key(name: str) -> tuple[int, int, int, str]:
    """Natural order for sign classes: by the first number, the plain sign before variants.

    speed_20 < speed_30 < ... < speed_80 < end_speed_80 < speed_100 < speed_120, then names
    without a number alphabetically. Folder listings sort speed_100 before speed_20.
    """
    match = re.search(r"\d+", name)
    if match is None:
        return (1, 0, 0, name)
    return (0, int(match.group()), len(name), name)


def sort_classes(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(names), key=class_sort_key))


def group_of(class_name: str, file_name: str) -> str:
    """The split group of a file: its GTSRB track when named like one, else the file itself."""
    stem = Path(file_name).stem
    match = TRACK_PATTERN.match(stem)
    if match:
        return f"{class_name}/track-{int(match.group(1))}"
    return f"{class_name}/file-{stem}"


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _list_class_dirs(folder: Path, root: Path, ignored: list[str]) -> dict[str, Path]:
    result: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        # Symlinks that leave the data folder are not followed: a server folder must not
        # become a way to read the rest of the disk. Checked for every class folder, not only
        # links: a linked split folder (`train -> /elsewhere`) leads outside through a parent.
        if not _is_inside(path, root):
            ignored.append(str(path.relative_to(root)))
            continue
        if entry.is_dir():
            result[entry.name] = path
    return result


def _list_images(class_dir: Path, root: Path, ignored: list[str]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of the image files of one class folder."""
    files: list[tuple[str, int, int]] = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        path = Path(entry.path)
        relative = path.relative_to(root).as_posix()
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not _is_inside(path, root):
            ignored.append(relative)
            continue
        if not entry.is_file():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(relative)
            continue
        stat = entry.stat()
        files.append((relative, stat.st_size, stat.st_mtime_ns))
    return files


def _detect_layout(root: Path) -> tuple[str, dict[str, Path]]:
    """Which folders hold class folders: {split: folder}."""
    has = {split: (root / split).is_dir() for split in SPLITS}
    if has["train"] and has["val"]:
        return "split", {s: root / s for s in SPLITS if has[s]}
    if has["train"]:
        return "single", {s: root / s for s in ("train", "test") if has[s]}
    if has["test"] and not has["val"]:
        return "test", {"test": root / "test"}
    if has["val"]:
        raise UserError(f"{root} has val/ but no train/: expected train/<class>/ next to val/")
    return "single", {"train": root}


def fingerprint_files(entries: Sequence[tuple[str, int, int]]) -> str:
    """A short hash of (path, size, mtime) of every file: changes when any file changes."""
    digest = hashlib.sha256()
    for relative, size, mtime in sorted(entries):
        digest.update(f"{relative}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def scan_dataset(root: Path | str, *, val_fraction: float = 0.2, seed: int = 0,
                 require_train: bool = True) -> DatasetIndex:
    """Index a data folder in any accepted layout; check it can be trained on.

    Accepted: DIR/train/<class> + DIR/val/<class> (+ DIR/test/<class>); DIR/train/<class>;
    DIR/<class>; DIR/test/<class> alone (evaluation only, `require_train=False`).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    layout, folders = _detect_layout(root)
    if layout == "test" and require_train:
        raise UserError(f"{root} holds only test/: training needs train/<class>/ folders")
    ignored: list[str] = []
    files_by_split: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for split, folder in folders.items():
        files_by_split[split] = {
            name: _list_images(path, root, ignored)
            for name, path in _list_class_dirs(folder, root, ignored).items()
        }
    first = "test" if layout == "test" else "train"
    classes = sort_classes(files_by_split[first])
    _check_classes(root, files_by_split, classes, first)
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, tuple[Sample, ...]] = {}
    for split, per_class in files_by_split.items():
        splits[split] = tuple(
            Sample(path=rel, label=index[name], group=group_of(name, rel))
            for name in sort_classes(per_class) for rel, _, _ in per_class[name]
        )
    if layout == "single":
        splits["train"], splits["val"] = split_by_group(
            splits["train"], n_classes=len(classes), val_fraction=val_fraction, seed=seed)
    all_files = [f for per_class in files_by_split.values() for fs in per_class.values() for f in fs]
    return DatasetIndex(root=root, classes=classes, layout=layout, splits=splits,
                        fingerprint=fingerprint_files(all_files), ignored=tuple(ignored))


def _check_classes(root: Path, files_by_split: dict[str, dict[str, list]], classes: tuple[str, ...],
                   first: str) -> None:
    """Stop before training on data that cannot make a classifier."""
    if not classes:
        raise UserError(f"no class folders in {root}: expected {root}/train/<class>/<image> "
                        f"or {root}/<class>/<image>")
    empty = [name for name in classes if not files_by_split[first][name]]
    if empty:
        raise UserError(f"class folder(s) with no images in {first}/: {', '.join(empty)}")
    if len(classes) < 2 and first == "train":
        raise UserError(f"only one class ({classes[0]}) in {root}: a classifier needs two or more")
    for split, per_class in files_by_split.items():
        unknown = sorted(set(per_class) - set(classes))
        if unknown:
            raise UserError(f"{split}/ has classes that {first}/ lacks: {', '.join(unknown)}")


def split_by_group(samples: Sequence[Sample], *, n_classes: int, val_fraction: float,
                   seed: int) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """Draw a val split by group (a GTSRB track stays whole), stratified by class, seeded.

    Per class, groups are shuffled and moved to val until it holds `val_fraction` of the
    class's images; a class with one group stays in train (it cannot be split honestly).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for sample in samples:
        by_class[sample.label][sample.group].append(sample)
    val_groups: set[str] = set()
    for label in range(n_classes):
        groups = by_class.get(label, {})
        names = sorted(groups)
        if len(names) < 2:
            continue
        target = val_fraction * sum(len(groups[g]) for g in names)
        taken = 0
        for position in rng.permutation(len(names)):
            if taken >= target or len(val_groups & set(names)) == len(names) - 1:
                break
            val_groups.add(names[position])
            taken += len(groups[names[position]])
    train = tuple(s for s in samples if s.group not in val_groups)
    val = tuple(s for s in samples if s.group in val_groups)
    return train, val


def _decode_one(root: Path, relative: str, size: int, resize: str) -> torch.Tensor | str:
    try:
        return load_image_tensor(root / relative, size=size, resize=resize)
    except ImageError as error:
        return str(error)
    except OSError as error:  # a file that vanished or cannot be read
        return f"cannot read: {error}"


class _DecodeDataset(torch.utils.data.Dataset):
    """File number i -> (i, uint8 (3, S, S) pixels, or the reason the file cannot be read)."""

    def __init__(self, root: Path, files: Sequence[str], size: int, resize: str) -> None:
        self.root, self.files, self.size, self.resize = Path(root), tuple(files), size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | str]:
        return position, _decode_one(self.root, self.files[position], self.size, self.resize)


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """(positions of the readable files, their pixels, (position, reason) of the others).

    Pixels leave a worker as a numpy array, pickled through its pipe: a tensor would travel
    through /dev/shm, which containers often cap at 64 MB, and a worker past it dies of SIGBUS.
    """
    good = [(i, r) for i, r in items if not isinstance(r, str)]
    pixels = torch.stack([r for _, r in good]).numpy() if good else np.empty((0,), dtype=np.uint8)
    return [i for i, _ in good], pixels, [(i, r) for i, r in items if isinstance(r, str)]


def _decode_workers(n_files: int) -> int:
    """Worker processes for decoding n files: none for a small data set or a single core."""
    try:
        cores = len(os.sched_getaffinity(0))  # what this process may use, e.g. in a container
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    if cores < 2 or n_files < PARALLEL_DECODE_MIN_FILES:
        return 0
    return min(MAX_DECODE_WORKERS, cores)


def _decode_batches(root: Path, files: Sequence[str], *, size: int, resize: str,
                    progress: Progress | None) -> Iterator[tuple[list[str], np.ndarray, dict[str, str]]]:
    """Decode files in order, in worker processes: (readable names, their pixels, unreadable)."""
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(root, files, size, resize), batch_size=DECODE_BATCH,
        num_workers=_decode_workers(len(files)), collate_fn=_collate)
    done = 0
    for positions, pixels, bad in loader:
        done += len(positions) + len(bad)
        yield [files[i] for i in positions], pixels, {files[i]: reason for i, reason in bad}
        if progress is not None:
            progress(done, len(files))


def decoded_cache_path(index: DatasetIndex, *, size: int, resize: str) -> Path:
    return cache_dir() / f"decoded-{index.fingerprint}-{size}-{resize}-v{DECODED_FORMAT}.u8"


def _write_decoded(path: Path, root: Path, files: Sequence[str], *, size: int, resize: str,
                   progress: Progress | None) -> None:
    """Decode into a temporary file beside `path`, then os.replace it into place.

    The file: the readable images' pixels, uint8 (N, 3, S, S) from byte 0 (so it maps without
    an offset), then a JSON of the file names and unreadable files, then _FOOTER. Written as
    batches arrive, so a large data set is never held in memory; a decode killed midway
    leaves only a `.decoded-....tmp`, which no load reads.
    """
    with atomic_writer(path) as file:
        kept: list[str] = []
        bad: dict[str, str] = {}
        for names, pixels, unreadable in _decode_batches(root, files, size=size, resize=resize, progress=progress):
            file.write(np.ascontiguousarray(pixels))
            kept += names
            bad.update(unreadable)
        meta = json.dumps({"format": DECODED_FORMAT, "shape": [len(kept), 3, size, size],
                           "files": kept, "unreadable": bad}).encode("utf-8")
        file.write(meta)
        file.write(_FOOTER.pack(_MAGIC, len(meta)))


def _read_decoded(path: Path, *, size: int) -> dict[str, object] | None:
    """A complete cache file as {"images", "files", "unreadable"}; None for anything else.

    Pixels up to IN_MEMORY_LIMIT_BYTES are read into memory; more are memory-mapped
    copy-on-write: nothing is read up front, and an in-place write to the tensor never
    reaches the cache file.
    """
    try:
        with open(path, "rb") as file:
            total = os.fstat(file.fileno()).st_size
            if total < _FOOTER.size:
                return None
            file.seek(total - _FOOTER.size)
            magic, length = _FOOTER.unpack(file.read(_FOOTER.size))
            pixels = total - _FOOTER.size - length
            if magic != _MAGIC or pixels < 0:
                return None
            file.seek(pixels)
            meta = json.loads(file.read(length))
            shape = tuple(int(n) for n in meta["shape"])
            files, unreadable = list(meta["files"]), dict(meta["unreadable"])
            if (meta["format"] != DECODED_FORMAT or shape[1:] != (3, size, size) or len(files) != shape[0]
                    or math.prod(shape) != pixels):
                return None  # truncated, or written by another version: decoded afresh
            if pixels > IN_MEMORY_LIMIT_BYTES:
                array = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
            else:
                file.seek(0)
                array = np.fromfile(file, dtype=np.uint8, count=pixels).reshape(shape)
    except (OSError, ValueError, KeyError, TypeError):  # a damaged cache entry is rebuilt, never trusted
        return None
    return {"images": torch.from_numpy(array), "files": files, "unreadable": unreadable}


def load_decoded(index: DatasetIndex, *, size: int, resize: str,
                 progress: Progress | None = None) -> dict[str, object]:
    """All files of a data set decoded once at one size into a disk cache, and read from it.

    Keyed by the data fingerprint, so a changed file means a new cache entry. Returns
    {"images": uint8 (N, 3, S, S), "files": their names, "unreadable": {name: reason}};
    images beyond IN_MEMORY_LIMIT_BYTES are memory-mapped from the cache, not read.
    """
    path = decoded_cache_path(index, size=size, resize=resize)
    cached = _read_decoded(path, size=size)
    if cached is not None:
        return cached
    files = sorted({s.path for split in index.splits.values() for s in split})
    _write_decoded(path, index.root, files, size=size, resize=resize, progress=progress)
    decoded = _read_decoded(path, size=size)
    if decoded is None:
        raise OSError(f"the decode cache {path} was removed or changed while it was being read")
    return decoded


def _take_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """values[rows]; uint8 rows beyond IN_MEMORY_LIMIT_BYTES go to a memory-mapped scratch file.

    Indexing copies, so a split of a memory-mapped data set would otherwise have to fit in
    memory. The scratch file is unlinked at once: the disk space goes with the tensor.
    """
    row_bytes = values.element_size() * math.prod(values.shape[1:])
    if (values.dtype != torch.uint8 or values.device.type != "cpu" or len(rows) == 0
            or len(rows) * row_bytes <= IN_MEMORY_LIMIT_BYTES):
        return values[rows]
    with tempfile.TemporaryFile(prefix=".split-", dir=cache_dir()) as file:
        out = np.memmap(file, dtype=np.uint8, mode="w+", shape=(len(rows), *values.shape[1:]))
    chunk = max(1, GATHER_CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = values[rows[start:start + chunk]].numpy()
    return torch.from_numpy(out)


def select_splits(index: DatasetIndex, decoded: dict[str, object], values: torch.Tensor
                  ) -> dict[str, SplitTensors]:
    """Cut per-file rows (decoded images, or backbone features of them) into the splits."""
    position = {name: i for i, name in enumerate(decoded["files"])}
    result: dict[str, SplitTensors] = {}
    for split, samples in index.splits.items():
        kept = [s for s in samples if s.path in position]
        rows = torch.tensor([position[s.path] for s in kept], dtype=torch.int64)
        result[split] = SplitTensors(
            images=_take_rows(values, rows),
            labels=torch.tensor([s.label for s in kept], dtype=torch.int64),
            files=tuple(s.path for s in kept),
            unreadable=tuple(sorted(s.path for s in samples if s.path not in position)),
        )
    return result


def load_split_tensors(index: DatasetIndex, *, size: int, resize: str = "square",
                       progress: Progress | None = None) -> dict[str, SplitTensors]:
    """Every split of the index as uint8 tensors (decoded once, cached on disk)."""
    decoded = load_decoded(index, size=size, resize=resize, progress=progress)
    return select_splits(index, decoded, decoded["images"])


def class_counts(index: DatasetIndex) -> dict[str, dict[str, int]]:
    """{split: {class: images}} in class order."""
    counts: dict[str, dict[str, int]] = {}
    for split, samples in index.splits.items():
        per = Counter(s.label for s in samples)
        counts[split] = {name: per.get(i, 0) for i, name in enumerate(index.classes)}
    return counts


def dataset_stats(root: Path | str, *, size: int = 32, progress: Progress | None = None) -> dict:
    """Images per class and split, original sizes, channel mean/std, groups, unreadable files."""
    started = time.perf_counter()
    index = scan_dataset(root, require_train=False)
    # Every file is in one split, so the decoded rows are all the splits' images, uncut.
    decoded = load_decoded(index, size=size, resize="square", progress=progress)
    sizes = image_sizes(index)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    mean, std = _channel_mean_std(decoded["images"])
    groups = {split: len({s.group for s in samples}) for split, samples in index.splits.items()}
    unreadable = sorted(decoded["unreadable"])
    return {
        "root": str(index.root),
        "layout": index.layout,
        "classes": list(index.classes),
        "fingerprint": index.fingerprint,
        "counts": class_counts(index),
        "images": sum(len(s) for s in index.splits.values()),
        "groups": groups,
        "sizes": {
            "width": _describe(widths), "height": _describe(heights),
        },
        "mean": [round(v, 4) for v in mean],
        "std": [round(v, 4) for v in std],
        "unreadable": unreadable,
        "ignored": list(index.ignored),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _channel_mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], a chunk at a time: a
    memory-mapped data set is read through once, never held as floats."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    count = 0
    for start in range(0, len(images), 1024):
        chunk = images[start:start + 1024].to(torch.float64).div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
        count += chunk[:, 0].numel()
    if count == 0:
        return [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    mean = total / count
    variance = (squares - count * mean.square()) / max(1, count - 1)
    return mean.tolist(), variance.clamp_min(0).sqrt().tolist()


def image_sizes(index: DatasetIndex) -> list[tuple[int, int]]:
    """(width, height) of every readable image, from headers only."""
    from PIL import Image

    sizes: list[tuple[int, int]] = []
    for split in index.splits.values():
        for sample in split:
            try:
                with Image.open(index.root / sample.path) as image:
                    sizes.append((image.width, image.height))
            except Exception:
                continue
    return sizes


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    array = np.asarray(values)
    return {"min": int(array.min()), "median": float(np.median(array)), "max": int(array.max())}
