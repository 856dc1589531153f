"""The dashboard's plain helpers: where data sets and runs live, and values the pages show.

Everything here returns plain values (paths, DataFrames, arrays, dataclasses) and raises
`UserError` for input a user can fix; nothing imports Streamlit (that is `speedsign.ui`).
Paths that come from disk (file names in a run's predictions, a typed server folder) are
untrusted: `inside` resolves them and refuses any that leave their data folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from speedsign import config as config_module
from speedsign.config import TrainConfig, resolve_config
from speedsign.data import DatasetIndex, class_counts, scan_dataset
from speedsign.errors import UserError
from speedsign.images import ImageError, image_to_tensor, open_image
from speedsign.runs import ACTIVE_STATES, RunInfo, default_runs_dir

Progress = Callable[[int, int], None]

DATA_ENV = "SPEEDSIGN_DATA"
SYNTH_NAME = "synth"
GTSRB_NAME = "gtsrb"
UPLOADS_NAME = "uploads"
# The set rendered on first start: 9 classes x 200 = 1,800 images at 64 px, about 4 s.
FIRST_RUN_PER_CLASS = 200
FIRST_RUN_SIZE = 64
# Hyper-parameters the Train page lets a user set by hand, in the order shown.
HAND_SET_FIELDS: tuple[str, ...] = (
    "epochs", "img_size", "batch_size", "lr", "optimizer", "schedule", "label_smoothing", "patience", "seed",
)
MAX_ZOOM = 4.0

_first_dataset_lock = threading.Lock()


# ---------------------------------------------------------------- where things live

def data_root() -> Path:
    """Where data sets live: $SPEEDSIGN_DATA, default data/."""
    return Path(os.environ.get(DATA_ENV, "data"))


def runs_root() -> Path:
    """Where runs live: $SPEEDSIGN_RUNS, default runs/."""
    return default_runs_dir()


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
    root = Path(root) if root is not None else data_root()
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


# ---------------------------------------------------------------- creating data sets

def create_synth(root: Path | None = None, *, per_class: int = FIRST_RUN_PER_CLASS, size: int = FIRST_RUN_SIZE,
                 seed: int = 0, progress: Progress | None = None) -> tuple[Path, Any]:
    """Render a synthetic sign set into a new folder (synth, synth-2, ...)."""
    from speedsign.synth import render_dataset

    root = Path(root) if root is not None else data_root()
    root.mkdir(parents=True, exist_ok=True)
    out = unique_folder(root, SYNTH_NAME)
    report = render_dataset(out, per_class=per_class, size=size, seed=seed, progress=progress)
    return out, report


def ensure_first_dataset(root: Path | None = None, *, progress: Progress | None = None) -> Any | None:
    """On a fresh machine, render the default synthetic set; None when a data set exists.

    Many sessions may open at once: a lock (threads of this process) plus the re-check under
    it make sure the set is rendered once.
    """
    root = Path(root) if root is not None else data_root()
    if list_datasets(root):
        return None
    with _first_dataset_lock:
        if list_datasets(root):
            return None
        _, report = create_synth(root, per_class=FIRST_RUN_PER_CLASS, size=FIRST_RUN_SIZE, progress=progress)
        return report


def import_zip(source: bytes | BinaryIO, *, name: str, root: Path | None = None,
               progress: Progress | None = None) -> tuple[Path, Any, DatasetIndex]:
    """Unpack an uploaded data-set zip into uploads/<name> and check it can be trained on.

    All or nothing: a refused zip leaves no folder, and an existing data set is never touched.
    """
    from speedsign.archive import extract_dataset_zip

    root = Path(root) if root is not None else data_root()
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

    root = Path(root) if root is not None else data_root()
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
    return pd.DataFrame(list(sizes), columns=["width", "height"])


def inside(root: Path | str, relative: str) -> Path | None:
    """root/relative if it stays inside root once resolved (links included), else None."""
    try:
        root_path = Path(root).resolve()
        path = (root_path / str(relative)).resolve()
        path.relative_to(root_path)
    except (ValueError, OSError, RuntimeError):
        return None
    return path


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
    versions = preview_augmentations(tensor, config=config, n=n, seed=seed)
    return _hwc(plain), [_hwc(v) for v in versions], config


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).contiguous().numpy()


# ---------------------------------------------------------------- runs

def run_label(info: RunInfo) -> str:
    """How a run is named in pickers: its id (which starts with the approach), its state unless done,
    and its best val accuracy when known."""
    label = info.run_id
    if info.best_val_acc is not None:
        label += f" · val {info.best_val_acc:.3f}"
    if info.state != "done":
        label += f" · {info.state}"
    return label


def is_usable(info: RunInfo) -> bool:
    """A finished run whose model can be loaded: done, not damaged, best.pt present."""
    return info.state == "done" and not info.damaged and (info.run_dir / "best.pt").is_file()


def runs_signature(runs_dir: Path) -> tuple:
    """Cheap change detector of a runs folder: names and mtimes of the files pages read."""
    runs_dir = Path(runs_dir)
    try:
        entries = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return ()
    signature = []
    for entry in entries:
        stamps = []
        for name in ("status.json", "config.json", "metrics.jsonl", "best.pt"):
            try:
                stamps.append((entry / name).stat().st_mtime_ns)
            except OSError:
                stamps.append(0)
        signature.append((entry.name, *stamps))
    return tuple(signature)


def run_data_dir(info: RunInfo) -> Path | None:
    """The data folder a run trained on (from config.json), if it says."""
    text = info.config.get("data_dir") if info.config else None
    return Path(text) if isinstance(text, str) and text else None


def mtime_ns(path: Path) -> int:
    """A file's mtime (cache key); UserError when the file is gone."""
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        raise UserError(f"{path} is gone (the run folder was deleted or moved?)") from None


# ---------------------------------------------------------------- training

@dataclass(frozen=True)
class WeightsOption:
    label: str
    spec: str  # "imagenet", "run:ID", or "path" (the page asks for the file)


def imagenet_available() -> bool:
    from speedsign.models import imagenet_weights_path

    return imagenet_weights_path().is_file()


def weights_options(runs: Iterable[RunInfo]) -> list[WeightsOption]:
    """Backbone sources for finetune/frozen: ImageNet first when cached, finished runs, a file."""
    imagenet = WeightsOption(
        "ImageNet (torchvision)" + ("" if imagenet_available() else " — not downloaded yet, needs internet"),
        "imagenet")
    from_runs = [WeightsOption(f"backbone of run {info.run_id} ({info.approach}, val acc "
                               f"{(info.best_val_acc or 0):.3f})", f"run:{info.run_id}")
                 for info in runs if is_usable(info)]
    path = WeightsOption("a weights file on the server", "path")
    if imagenet_available() or not from_runs:
        return [imagenet, *from_runs, path]
    return [*from_runs, imagenet, path]


def preset_defaults(approach: str, preset: str) -> dict[str, Any]:
    """The hand-set fields' starting values: the preset's values for this approach."""
    values = {**TrainConfig(approach=approach).to_dict(), **config_module.preset_values(approach, preset)}
    return {name: values[name] for name in HAND_SET_FIELDS}


def build_requests(*, approaches: Sequence[str], preset: str, data_dir: Path, runs_dir: Path,
                   weights: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   device: str = "auto") -> list[Any]:
    """One TrainRequest per approach; UserError (naming the approach) when a setting is refused."""
    from speedsign.runner import TrainRequest

    if not approaches:
        raise UserError("choose at least one approach to train")
    needs_weights = any(approach != "scratch" for approach in approaches)
    if needs_weights and weights is not None and not weights.strip():
        raise UserError("type the path of a weights file (a ResNet18 state dict) on the server, "
                        "or choose another backbone")
    requests = []
    for approach in approaches:
        values = dict((overrides or {}).get(approach, {}))
        if approach != "scratch" and weights is not None:
            values["weights"] = weights.strip()
        try:
            config = resolve_config(approach=approach, preset=preset, overrides=values)
        except UserError as error:
            raise UserError(f"{approach}: {error}") from None
        requests.append(TrainRequest(config=config, data_dir=Path(data_dir), runs_dir=Path(runs_dir), device=device))
    return requests


@dataclass(frozen=True)
class JobView:
    """What the Train page shows of one job."""

    run_id: str
    approach: str
    state: str
    phase: str
    epoch: int
    epochs: int
    fraction: float  # 0..1 of the planned epochs
    seconds_left: float | None
    val_acc: float | None
    best_val_acc: float | None
    images_per_s: float | None
    error: str | None
    damaged: str | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def job_view(info: RunInfo, rows: Sequence[Mapping[str, Any]]) -> JobView:
    """Progress of a run from its status and metrics: fraction done and an estimate of time left."""
    status = info.status or {}
    epochs = int(status.get("epochs") or info.epochs or 0)
    epoch = int(status.get("epoch") or len(rows) or 0)
    steps = status.get("steps")
    step = status.get("step")
    partial = 0.0
    if info.state == "running" and isinstance(steps, int) and steps > 0 and isinstance(step, int):
        partial = min(max(step / steps, 0.0), 1.0)
    fraction = 1.0 if info.state == "done" else (min((epoch + partial) / epochs, 1.0) if epochs else 0.0)
    seconds_left = None
    durations = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), (int, float))]
    if info.state == "running" and durations and epochs:
        seconds_left = max(0.0, (epochs - epoch - partial) * (sum(durations) / len(durations)))
    last = rows[-1] if rows else {}
    val_acc = status.get("val_acc", last.get("val_acc"))
    ips = status.get("images_per_s", last.get("images_per_s"))
    phase = status.get("phase") or ""
    return JobView(
        run_id=info.run_id, approach=info.approach, state=info.state, phase=str(phase), epoch=epoch,
        epochs=epochs, fraction=float(fraction), seconds_left=seconds_left,
        val_acc=float(val_acc) if isinstance(val_acc, (int, float)) else None,
        best_val_acc=info.best_val_acc,
        images_per_s=float(ips) if isinstance(ips, (int, float)) else None,
        error=str(status["error"]) if status.get("error") else None, damaged=info.damaged,
    )


def queue_frame(entries: Sequence[Mapping[str, Any]], *, now: float | None = None) -> pd.DataFrame:
    """jobs.queue() as a table: position, run, state, epoch, device, waiting or running for how long."""
    now = time.time() if now is None else now
    rows = []
    for position, entry in enumerate(entries, start=1):
        since = entry.get("queued_at")
        age = now - since if isinstance(since, (int, float)) and since > 0 else None
        rows.append({"#": position, "run": str(entry.get("run_id", "")), "state": str(entry.get("state", "")),
                     "epoch": entry.get("epoch", 0), "device": str(entry.get("device", "")),
                     "since": format_seconds(age) + " ago" if age is not None else ""})
    return pd.DataFrame(rows, columns=["#", "run", "state", "epoch", "device", "since"])


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "estimating…"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressClock:
    """Elapsed time and a linear estimate of time left for a (done, total) progress callback."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def describe(self, done: int, total: int) -> tuple[float, str]:
        elapsed = time.perf_counter() - self.started
        fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        text = f"{done:,}/{total:,} · {elapsed:.1f} s elapsed"
        if fraction < 1:
            text += f" · {format_seconds(left)} left"
        return fraction, text


# ---------------------------------------------------------------- learning curves

def curves_frame(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Long format for plots.learning_curves: run, epoch, split, loss, acc."""
    rows = []
    for run, records in metrics.items():
        for record in records:
            epoch = record.get("epoch")
            if not isinstance(epoch, int):
                continue
            for split in ("train", "val"):
                loss, acc = record.get(f"{split}_loss"), record.get(f"{split}_acc")
                if isinstance(loss, (int, float)) and isinstance(acc, (int, float)):
                    rows.append({"run": run, "epoch": epoch, "split": split, "loss": float(loss), "acc": float(acc)})
    return pd.DataFrame(rows, columns=["run", "epoch", "split", "loss", "acc"])


def lr_frame(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    rows = [{"run": run, "epoch": r["epoch"], "lr": float(r["lr"])}
            for run, records in metrics.items() for r in records
            if isinstance(r.get("epoch"), int) and isinstance(r.get("lr"), (int, float))]
    return pd.DataFrame(rows, columns=["run", "epoch", "lr"])


# ---------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class Evaluation:
    """A run's predictions on one split: probabilities, labels, files (relative to data_dir)."""

    run_id: str
    split: str
    classes: tuple[str, ...]
    probs: np.ndarray
    labels: np.ndarray
    files: tuple[str, ...]
    data_dir: Path | None


def load_val_evaluation(info: RunInfo) -> Evaluation:
    """The run's saved val predictions (predictions_val.npz), checked before use."""
    path = info.run_dir / "predictions_val.npz"
    if not path.is_file():
        raise UserError(f"run {info.run_id} has no predictions_val.npz (it has not finished, or its folder "
                        "was changed)")
    try:
        with np.load(path, allow_pickle=False) as saved:
            probs, labels = np.asarray(saved["probs"], dtype=np.float64), np.asarray(saved["labels"])
            files = tuple(str(f) for f in saved["files"])
            classes = tuple(str(c) for c in saved["classes"])
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"predictions_val.npz of run {info.run_id} is damaged ({error})") from None
    if probs.ndim != 2 or probs.shape != (len(labels), len(classes)) or len(files) != len(labels):
        raise UserError(f"predictions_val.npz of run {info.run_id} is inconsistent "
                        f"(probs {probs.shape}, {len(labels)} labels, {len(files)} files, {len(classes)} classes)")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise UserError(f"predictions_val.npz of run {info.run_id} has labels outside its classes")
    return Evaluation(info.run_id, "val", classes, probs, labels.astype(np.int64), files, run_data_dir(info))


def split_choices(info: RunInfo) -> list[str]:
    """val always; test when the run's data folder has test/."""
    data_dir = run_data_dir(info)
    return ["val", "test"] if data_dir is not None and (data_dir / "test").is_dir() else ["val"]


def evaluation_from_report(info: RunInfo, report: Mapping[str, Any], probs: np.ndarray,
                           labels: np.ndarray) -> Evaluation:
    """An Evaluation from predict.evaluate_split's answer (the test split)."""
    return Evaluation(info.run_id, str(report.get("split", "test")), tuple(report["classes"]),
                      np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64),
                      tuple(report.get("files", ())), run_data_dir(info))


@dataclass(frozen=True)
class EvaluationTables:
    accuracy: float
    n: int
    interval: tuple[float, float]
    ece: float
    confusion: np.ndarray
    scores: pd.DataFrame
    confused: pd.DataFrame
    reliability: pd.DataFrame


def evaluation_tables(evaluation: Evaluation) -> EvaluationTables:
    from speedsign import metrics

    n_classes = len(evaluation.classes)
    preds = evaluation.probs.argmax(axis=1) if len(evaluation.labels) else np.zeros(0, dtype=np.int64)
    confusion = metrics.confusion_matrix(evaluation.labels, preds, n_classes=n_classes)
    correct, n = int(np.trace(confusion)), int(len(evaluation.labels))
    return EvaluationTables(
        accuracy=correct / n if n else 0.0, n=n, interval=metrics.wilson_interval(correct, n),
        ece=metrics.expected_calibration_error(evaluation.probs, evaluation.labels),
        confusion=confusion,
        scores=metrics.per_class_scores(confusion, class_names=evaluation.classes),
        confused=metrics.most_confused(confusion, class_names=evaluation.classes).head(10),
        reliability=metrics.reliability_table(evaluation.probs, evaluation.labels),
    )


def misclassified(evaluation: Evaluation, *, k: int = 24) -> pd.DataFrame:
    """The k worst mistakes (wrong predictions only), worst first: file, true, predicted, confidence."""
    from speedsign.metrics import top_losses

    table = top_losses(evaluation.probs, evaluation.labels, files=evaluation.files,
                       class_names=evaluation.classes, k=len(evaluation.labels))
    return table[table["true"] != table["predicted"]].head(k).reset_index(drop=True)


# ---------------------------------------------------------------- classify

def crop_square(image: Image.Image, *, zoom: float = 1.0, x: float = 0.0, y: float = 0.0) -> Image.Image:
    """A square cut of the photo: side = shorter side / zoom, moved by x, y in [-1, 1].

    x = -1 puts the square at the left edge, +1 at the right (y likewise, top to bottom);
    0 centres it. Zoom 1 is the largest centred square.
    """
    zoom = min(max(float(zoom), 1.0), MAX_ZOOM)
    x, y = (min(max(float(v), -1.0), 1.0) for v in (x, y))
    width, height = image.size
    side = max(1, int(round(min(width, height) / zoom)))
    left = (width - side) / 2 * (1 + x)
    top = (height - side) / 2 * (1 + y)
    left, top = int(round(left)), int(round(top))
    return image.crop((left, top, left + side, top + side))


def decode_photo(data: bytes) -> Image.Image:
    """An uploaded or camera photo, decoded safely (ImageError with the reason otherwise)."""
    if not data:
        raise ImageError("the file is empty")
    return open_image(data)


@dataclass(frozen=True)
class Answer:
    """One model's answer to a photo."""

    run_id: str
    approach: str
    labels: tuple[str, ...]
    probs: tuple[float, ...]
    milliseconds: float
    tensor: torch.Tensor  # the uint8 (3, S, S) image the model saw

    @property
    def label(self) -> str:
        return self.labels[0]


def classify(predictor: Any, image: Image.Image, *, top: int = 3) -> Answer:
    """Top-k of one model for a framed photo; the time covers resizing and the forward pass."""
    started = time.perf_counter()
    tensor = image_to_tensor(image, size=predictor.config.stored_size, resize=predictor.config.resize)
    prediction = predictor.predict_tensor(tensor, top=top)
    return Answer(predictor.run_id, predictor.config.approach, prediction.labels, prediction.probs,
                  (time.perf_counter() - started) * 1000, tensor)


def saliency_overlay(predictor: Any, answer: Answer) -> tuple[np.ndarray, bool]:
    """Grad-CAM of the predicted class over the image the model saw (uint8 H, W, 3), and whether
    the map shows anything: at small inputs the last block is one cell, and the map is flat."""
    from speedsign.saliency import grad_cam, overlay_heatmap

    heat = grad_cam(predictor, answer.tensor)
    informative = bool(heat.size) and float(heat.max() - heat.min()) > 1e-3
    return overlay_heatmap(answer.tensor.permute(1, 2, 0).numpy(), heat), informative
