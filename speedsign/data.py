"""Data sources: folder scanning, class order, group-aware splits, fingerprint, tensor cache.

The flow is one way: a folder -> `scan_dataset` (an index of files, no pixels) ->
`load_split_tensors` (decoded once into uint8 tensors, cached on disk) -> batches.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from speedsign.errors import UserError
from speedsign.images import ImageError, load_image_tensor
from speedsign.runs import atomic_torch_save, cache_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS: tuple[str, ...] = ("train", "val", "test")
# GTSRB names a file <track>_<frame>: frames of one track are the same physical sign.
TRACK_PATTERN = re.compile(r"^(\d+)_(\d+)$")
# Above this many decoded bytes we stream from disk instead of holding a tensor in memory.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3

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
    """A split decoded into memory: uint8 images (N, 3, S, S), int64 labels, file names."""

    images: torch.Tensor  # or StreamedImages for a data set too large for memory
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


def decode_files(root: Path, files: Sequence[str], *, size: int, resize: str,
                 progress: Progress | None = None) -> tuple[torch.Tensor, tuple[str, ...], dict[str, str]]:
    """Decode files into one uint8 tensor; unreadable ones are skipped and reported."""
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    kept: list[str] = []
    bad: dict[str, str] = {}
    # Pillow releases the GIL while decoding, so a few threads make use of both cores.
    with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
        results = pool.map(lambda rel: _decode_one(root, rel, size, resize), files, chunksize=64)
        for done, (relative, result) in enumerate(zip(files, results), start=1):
            if isinstance(result, str):
                bad[relative] = result
            else:
                images[len(kept)] = result
                kept.append(relative)
            if progress is not None and (done % 256 == 0 or done == len(files)):
                progress(done, len(files))
    return images[: len(kept)].clone(), tuple(kept), bad


class StreamedImages:
    """A data set too large to hold decoded: indexing decodes just those files, in threads.

    It stands in for the uint8 tensor wherever the training loop cuts batches
    (`images[index]`), so training code is the same for both. Unreadable files were found
    by a header check beforehand and left out, as the in-memory path does.
    """

    def __init__(self, root: Path, files: Sequence[str], *, size: int, resize: str) -> None:
        self.root, self.files, self.size, self.resize = Path(root), tuple(files), size, resize
        self.device = torch.device("cpu")
        self.shape = (len(self.files), 3, size, size)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, rows: torch.Tensor) -> "StreamedImages":
        return StreamedImages(self.root, [self.files[int(i)] for i in rows], size=self.size, resize=self.resize)

    def to(self, device: torch.device | str) -> "StreamedImages":
        return self  # pixels stay on disk; each batch is moved by the training loop

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        rows = range(len(self.files))[index] if isinstance(index, slice) else [int(i) for i in index]
        names = [self.files[i] for i in rows]
        images, kept, bad = decode_files(self.root, names, size=self.size, resize=self.resize)
        if bad:  # changed on disk since the check: a grey image keeps the batch aligned
            grey = torch.full((len(names), 3, self.size, self.size), 128, dtype=torch.uint8)
            position = {name: i for i, name in enumerate(kept)}
            for row, name in enumerate(names):
                if name in position:
                    grey[row] = images[position[name]]
            return grey
        return images


def check_readable(root: Path, files: Sequence[str]) -> dict[str, str]:
    """Files whose header Pillow cannot read (cheap: no pixel is decoded)."""
    from PIL import Image

    bad: dict[str, str] = {}
    for relative in files:
        try:
            with Image.open(root / relative) as image:
                image.verify()
        except Exception as error:  # any reason a file cannot be an image
            bad[relative] = f"unreadable: {type(error).__name__}: {error}"
    return bad


def stream_decoded(index: DatasetIndex, *, size: int, resize: str) -> dict[str, object]:
    """The `load_decoded` answer for a data set too large for memory: decoded per batch."""
    files = sorted({s.path for split in index.splits.values() for s in split})
    bad = check_readable(index.root, files)
    kept = [f for f in files if f not in bad]
    return {"images": StreamedImages(index.root, kept, size=size, resize=resize), "files": kept,
            "unreadable": bad}


def decoded_cache_path(index: DatasetIndex, *, size: int, resize: str) -> Path:
    return cache_dir() / f"decoded-{index.fingerprint}-{size}-{resize}.pt"


def load_decoded(index: DatasetIndex, *, size: int, resize: str,
                 progress: Progress | None = None) -> dict[str, object]:
    """All files of a data set decoded at one size, from the disk cache or decoded now.

    Keyed by the data fingerprint, so a changed file means a new cache entry. A data set
    whose decoded pixels would not fit in memory (IN_MEMORY_LIMIT_BYTES) is streamed instead.
    """
    if decoded_bytes(index, size=size) > IN_MEMORY_LIMIT_BYTES:
        return stream_decoded(index, size=size, resize=resize)
    path = decoded_cache_path(index, size=size, resize=resize)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if isinstance(cached, dict) and {"images", "files", "unreadable"} <= set(cached):
                return cached
        except Exception:  # a damaged cache entry is rebuilt, never trusted
            pass
    files = sorted({s.path for split in index.splits.values() for s in split})
    images, kept, bad = decode_files(index.root, files, size=size, resize=resize, progress=progress)
    decoded = {"images": images, "files": list(kept), "unreadable": bad}
    atomic_torch_save(decoded, path)
    return decoded


def decoded_bytes(index: DatasetIndex, *, size: int) -> int:
    return sum(len(v) for v in index.splits.values()) * 3 * size * size


def select_splits(index: DatasetIndex, decoded: dict[str, object], values: torch.Tensor
                  ) -> dict[str, SplitTensors]:
    """Cut per-file rows (decoded images, or backbone features of them) into the splits."""
    position = {name: i for i, name in enumerate(decoded["files"])}
    result: dict[str, SplitTensors] = {}
    for split, samples in index.splits.items():
        kept = [s for s in samples if s.path in position]
        rows = torch.tensor([position[s.path] for s in kept], dtype=torch.int64)
        result[split] = SplitTensors(
            images=values.subset(rows) if isinstance(values, StreamedImages) else values[rows],
            labels=torch.tensor([s.label for s in kept], dtype=torch.int64),
            files=tuple(s.path for s in kept),
            unreadable=tuple(sorted(s.path for s in samples if s.path not in position)),
        )
    return result


def load_split_tensors(index: DatasetIndex, *, size: int, resize: str = "square",
                       progress: Progress | None = None) -> dict[str, SplitTensors]:
    """Every split of the index as in-memory uint8 tensors (decoded once, cached on disk)."""
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
    tensors = load_split_tensors(index, size=size, progress=progress)
    sizes = image_sizes(index)
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    # A streamed data set is described by a sample: decoding all of it is what streaming avoids.
    parts = [t.images if isinstance(t.images, torch.Tensor) else t.images[torch.arange(min(len(t), 2000))]
             for t in tensors.values()]
    everything = torch.cat(parts) if parts else torch.empty(0)
    pixels = everything.float().div_(255) if everything.numel() else torch.zeros((1, 3, 1, 1))
    mean = pixels.mean(dim=(0, 2, 3)).tolist()
    std = pixels.std(dim=(0, 2, 3)).tolist() if everything.numel() else [0.0, 0.0, 0.0]
    groups = {split: len({s.group for s in samples}) for split, samples in index.splits.items()}
    unreadable = sorted({f for t in tensors.values() for f in t.unreadable})
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
