"""Data sets as the dashboard sees them: where they live, creating them, and looking at them.

Where: the data root ($SPEEDSIGN_DATA, default data/) holds synth, gtsrb, other folders and
uploads/<name>. Creating: a synthetic set, a zip upload, a GTSRB import, or a folder already
on the server. Looking: counts per class and split, samples, pictures, the augmentation
preview. Everything returns plain values (paths, DataFrames, arrays) and raises `UserError`
for input a user can fix; nothing imports Streamlit.

Paths that come from disk or a user (file names in a run's predictions, a typed server
folder) are untrusted: `inside` resolves them and refuses any that leave their data folder.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch

from speedsign.augment import costliest_recipe
from speedsign.config import TrainConfig, resolve_config
from speedsign.data import DatasetIndex, class_counts, scan_dataset
from speedsign.errors import UserError
from speedsign.images import ImageError, image_to_tensor, open_image
from speedsign.storage import default_data_dir
from speedsign.synth import DEFAULT_PER_CLASS, DEFAULT_SIZE

Progress = Callable[[int, int], None]

SYNTH_NAME = "synth"
GTSRB_NAME = "gtsrb"
UPLOADS_NAME = "uploads"
# The set rendered on first start (speedsign.synth says why this size).
FIRST_RUN_PER_CLASS = DEFAULT_PER_CLASS
FIRST_RUN_SIZE = DEFAULT_SIZE
LAYOUTS = {"split": "train/ and val/ given", "single": "val drawn from train by track",
           "test": "test/ only (evaluation)"}

_first_dataset_lock = threading.Lock()


# ---------------------------------------------------------------- where data sets live

@dataclass(frozen=True)
class DatasetEntry:
    """A data set under the data root: a name to show and its folder."""

    name: str
    path: Path


def _visible_dirs(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    # Hidden names are our temporary folders (.synth.tmp-123, .gtsrb-download): never data.
    return [p for p in entries if p.is_dir() and not p.name.startswith(".")]


def looks_like_dataset(path: Path) -> bool:
    """A cheap test (no file listing): a folder with train/, test/ or class sub-folders."""
    return bool(_visible_dirs(path))


def list_datasets(root: Path | None = None) -> list[DatasetEntry]:
    """Data sets under the root: synth first, then gtsrb, other folders, then uploads/<name>."""
    root = Path(root) if root is not None else default_data_dir()
    entries: list[DatasetEntry] = []
    for folder in _visible_dirs(root):
        if folder.name == UPLOADS_NAME:
            continue
        if looks_like_dataset(folder):
            entries.append(DatasetEntry(folder.name, folder))
    for folder in _visible_dirs(root / UPLOADS_NAME):
        if looks_like_dataset(folder):
            entries.append(DatasetEntry(f"{UPLOADS_NAME}/{folder.name}", folder))
    order = {SYNTH_NAME: 0, GTSRB_NAME: 1}
    return sorted(entries, key=lambda e: (order.get(e.name, 2), e.name.startswith(UPLOADS_NAME), e.name))


def unique_folder(parent: Path, base: str) -> Path:
    """parent/base, or parent/base-2, -3, ... : a new data set never replaces a stored one."""
    candidate = Path(parent) / base
    number = 2
    while candidate.exists():
        candidate = Path(parent) / f"{base}-{number}"
        number += 1
    return candidate


def safe_folder_name(text: str, *, default: str = "dataset") -> str:
    """A folder name made from user text (an upload's file name): letters, digits, - and _."""
    stem = Path(str(text).replace("\\", "/")).name
    stem = re.sub(r"\.zip$", "", stem, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:60]
    return name or default


def inside(root: Path | str, relative: str) -> Path | None:
    """root/relative if it stays inside root once resolved (links included), else None."""
    try:
        root_path = Path(root).resolve()
        path = (root_path / str(relative)).resolve()
        path.relative_to(root_path)
    except (ValueError, OSError, RuntimeError):
        return None
    return path


# ---------------------------------------------------------------- creating data sets

def create_synth(root: Path | None = None, *, per_class: int = FIRST_RUN_PER_CLASS, size: int = FIRST_RUN_SIZE,
                 seed: int = 0, progress: Progress | None = None) -> tuple[Path, Any]:
    """Render a synthetic sign set into a new folder (synth, synth-2, ...)."""
    from speedsign.synth import render_dataset

    root = Path(root) if root is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    out = unique_folder(root, SYNTH_NAME)
    report = render_dataset(out, per_class=per_class, size=size, seed=seed, progress=progress)
    return out, report


def ensure_first_dataset(root: Path | None = None, *, progress: Progress | None = None) -> Any | None:
    """On a fresh machine, render the default synthetic set; None when a data set exists.

    Many sessions may open at once: a lock (threads of this process) plus the re-check under
    it make sure the set is rendered once.
    """
    root = Path(root) if root is not None else default_data_dir()
    if list_datasets(root):
        return None
    with _first_dataset_lock:
        if list_datasets(root):
            return None
        # Read at call time, not as default arguments: tests make the first set tiny.
        _, report = create_synth(root, per_class=FIRST_RUN_PER_CLASS, size=FIRST_RUN_SIZE, progress=progress)
        return report


def import_zip(source: bytes | BinaryIO, *, name: str, root: Path | None = None,
               progress: Progress | None = None) -> tuple[Path, Any, DatasetIndex]:
    """Unpack an uploaded data-set zip into uploads/<name> and check it can be trained on.

    All or nothing: a refused zip leaves no folder, and an existing data set is never touched.
    """
    from speedsign.archive import extract_dataset_zip

    if isinstance(source, bytes) and not source:
        raise UserError("The uploaded file is empty.")
    root = Path(root) if root is not None else default_data_dir()
    (root / UPLOADS_NAME).mkdir(parents=True, exist_ok=True)
    out = unique_folder(root / UPLOADS_NAME, safe_folder_name(name))
    report = extract_dataset_zip(source, out, progress=progress)
    try:
        index = scan_dataset(out)
    except UserError:
        # The zip unpacked but cannot make a classifier (one class, val without train, ...):
        # what we just wrote goes, nothing else does.
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out, report, index


def import_gtsrb(source: str | None, *, root: Path | None = None, size: int | None = None,
                 progress: Progress | None = None) -> tuple[Path, Any]:
    """Import GTSRB's nine speed classes into gtsrb (or gtsrb-2, ...) from a zip, a folder, or the web."""
    from speedsign.gtsrb import import_gtsrb as run_import

    root = Path(root) if root is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    text = (source or "").strip()
    path = Path(os.path.expanduser(text)) if text else None
    if path is not None and not path.exists():
        raise UserError(f"GTSRB source not found: {path} (give GTSRB_Final_Training_Images.zip or its folder)")
    out = unique_folder(root, GTSRB_NAME)
    report = run_import(out, source=path, download_root=root / ".gtsrb-download", size=size, progress=progress)
    return out, report


def check_server_folder(text: str) -> DatasetIndex:
    """A folder on the server typed by the user, scanned and checked (UserError if unusable)."""
    text = (text or "").strip()
    if not text:
        raise UserError("type the path of a folder on the server, e.g. /data/signs")
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise UserError(f"folder not found on the server: {path}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a folder")
    return scan_dataset(path)


# ---------------------------------------------------------------- looking at a data set

def split_sizes(index: DatasetIndex) -> dict[str, int]:
    """Images per split: {"train": 1440, "val": 360, ...}."""
    return {split: len(samples) for split, samples in index.splits.items()}


def layout_description(index: DatasetIndex) -> str:
    """How the folder is split, in words ("val drawn from train by track")."""
    return LAYOUTS.get(index.layout, index.layout)


def counts_frame(index: DatasetIndex) -> pd.DataFrame:
    """Images per class and split (columns class, split, count), classes in their order."""
    rows = [{"class": name, "split": split, "count": count}
            for split, per_class in class_counts(index).items() for name, count in per_class.items()]
    return pd.DataFrame(rows, columns=["class", "split", "count"])


def counts_table(index: DatasetIndex) -> pd.DataFrame:
    """The same counts as a class x split table with a total column."""
    frame = pd.DataFrame(class_counts(index)).reindex(list(index.classes)).fillna(0).astype(int)
    frame["total"] = frame.sum(axis=1)
    frame.index.name = "class"
    return frame


def sizes_frame(sizes: Sequence[tuple[int, int]]) -> pd.DataFrame:
    """Image sizes (from data.image_sizes) as columns width, height."""
    return pd.DataFrame(list(sizes), columns=["width", "height"])


def size_summary(sizes: pd.DataFrame) -> pd.DataFrame:
    """Min, median and max of the widths and heights."""
    return sizes.describe().loc[["min", "50%", "max"]].rename(index={"50%": "median"})


def sample_files(index: DatasetIndex, *, per_class: int, seed: int = 0) -> dict[str, list[str]]:
    """A few files of every class (from train, or test for a test-only set), seeded."""
    split = "train" if index.samples("train") else "test"
    by_class: dict[int, list[str]] = {}
    for sample in index.samples(split):
        by_class.setdefault(sample.label, []).append(sample.path)
    rng = np.random.default_rng(seed)
    result: dict[str, list[str]] = {}
    for label, name in enumerate(index.classes):
        files = by_class.get(label, [])
        chosen = rng.choice(len(files), size=min(per_class, len(files)), replace=False) if files else []
        result[name] = [files[i] for i in sorted(chosen)]
    return result


def load_picture(root: Path | str, relative: str, *, max_side: int = 256) -> np.ndarray | None:
    """An image of a data folder as uint8 (H, W, 3) for display; None when unreadable or outside."""
    path = inside(root, relative)
    if path is None:
        return None
    try:
        image = open_image(path, target_size=max_side)
    except (ImageError, OSError):
        return None
    image.thumbnail((max_side, max_side))
    return np.asarray(image.convert("RGB"))


def first_image_bytes(index: DatasetIndex, *, split: str = "val") -> bytes | None:
    """The bytes of one image of a split (the latency probe of the Home page)."""
    for sample in index.samples(split) or index.samples("train"):
        path = inside(index.root, sample.path)
        if path is None:
            continue
        try:
            return path.read_bytes()
        except OSError:
            continue
    return None


def augmentation_preview(root: Path | str, relative: str, *, approach: str, preset: str,
                         n: int = 8, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], TrainConfig]:
    """One image as the model gets it (val preprocessing) and n augmented training versions."""
    from speedsign.augment import preview_augmentations

    config = resolve_config(approach=approach, preset=preset)
    path = inside(root, relative)
    if path is None:
        raise UserError(f"{relative} is not inside the data folder")
    tensor = image_to_tensor(open_image(path, target_size=config.stored_size),
                             size=config.stored_size, resize=config.resize)
    # augment "none" is exactly the val preprocessing (centre crop), drawn back as pixels.
    plain = preview_augmentations(tensor, config=dataclasses.replace(config, augment="none"), n=1, seed=seed)[0]
    # "auto" trains with "signs" on runs long enough for it (augment.resolve_augment): show those.
    versions = preview_augmentations(tensor, config=costliest_recipe(config), n=n, seed=seed)
    return _hwc(plain), [_hwc(v) for v in versions], config


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).contiguous().numpy()
