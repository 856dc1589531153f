"""What every benchmark shares: the data, the backbone weights, a scratch folder, and an
in-process `fast` training (the library's own decode -> features -> fit path)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from speedsign.config import TrainConfig
from speedsign.data import DatasetIndex, Sample, load_decoded, scan_dataset
from speedsign.errors import UserError
from speedsign.job import TrainRequest, train_run
from speedsign.models import imagenet_weights_path, load_weights_file
from speedsign.runs import RunDir, read_metrics
from speedsign.storage import default_runs_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "gtsrb-speed32"
WEIGHTS_ENV = "SPEEDSIGN_BENCH_WEIGHTS"


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class BenchData:
    """The folder every benchmark trains on, its speedsign index, and where it came from."""

    root: Path
    index: DatasetIndex
    source: str

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "source": self.source, "classes": list(self.index.classes),
                "images": {split: len(s) for split, s in self.index.splits.items()},
                "groups": {split: len({x.group for x in s}) for split, s in self.index.splits.items()}}


def resolve_data(data: Path | None, *, work: Path, synth_per_class: int, subset_tracks: int | None,
                 seed: int = 0) -> BenchData:
    """--data, else ../shared/data/gtsrb-speed32, else rendered synthetic signs; then a subset."""
    if data is not None:
        root, source = Path(data), f"given: {data}"
    elif SHARED_DATA.is_dir():
        root, source = SHARED_DATA, "gtsrb-speed32 (real GTSRB photos, 32 px)"
    else:
        from speedsign.synth import render_dataset

        root = work / "synth"
        render_dataset(root, per_class=synth_per_class, seed=seed, size=32)
        source = f"synthetic signs (generated: {synth_per_class} per class, 32 px)"
    index = scan_dataset(root)
    if subset_tracks:
        root = copy_track_subset(index, work / "data-subset", tracks_per_class=subset_tracks, seed=seed)
        source += f"; subset: {subset_tracks} whole tracks per class"
        index = scan_dataset(root)
    return BenchData(root=root, index=index, source=source)


def copy_track_subset(index: DatasetIndex, out: Path, *, tracks_per_class: int, seed: int) -> Path:
    """A small copy of a data folder: whole tracks (groups), a few per class (and per given split).

    A single-folder layout is subset as one pool (speedsign draws the val split from the copy
    again); with train/ and val/ given, each keeps its own tracks. Copied (or hard-linked), not
    symlinked: speedsign does not follow links that leave the data folder.
    """
    rng = np.random.default_rng(seed)
    pools = ([s for split in index.splits.values() for s in split],) if index.layout == "single" \
        else tuple(index.splits.values())
    files: list[str] = []
    for samples in pools:
        by_class: dict[int, dict[str, list[Sample]]] = {}
        for sample in samples:
            by_class.setdefault(sample.label, {}).setdefault(sample.group, []).append(sample)
        for groups in by_class.values():
            names = sorted(groups)
            chosen = rng.permutation(len(names))[:tracks_per_class]
            files += [s.path for i in sorted(chosen) for s in groups[names[i]]]
    shutil.rmtree(out, ignore_errors=True)
    for relative in files:
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(index.root / relative, target)
        except OSError:
            shutil.copy2(index.root / relative, target)
    return out


def subset_index(index: DatasetIndex, *, train: int | None, val: int | None, seed: int) -> DatasetIndex:
    """The same index with at most `train`/`val` samples drawn at random (split kept as is)."""
    rng = np.random.default_rng(seed)
    limits = {"train": train, "val": val}
    splits: dict[str, tuple[Sample, ...]] = {}
    for split, samples in index.splits.items():
        limit = limits.get(split)
        if split not in limits:
            continue
        if limit is not None and len(samples) > limit:
            keep = sorted(rng.choice(len(samples), size=limit, replace=False).tolist())
            samples = tuple(samples[i] for i in keep)
        splits[split] = samples
    digest = hashlib.sha256("\n".join(s.path for v in splits.values() for s in v).encode()).hexdigest()[:8]
    return dataclasses.replace(index, splits=splits, fingerprint=f"{index.fingerprint}-{digest}")


# ---------------------------------------------------------------- weights

@dataclass(frozen=True)
class Backbone:
    """A ResNet18 state dict on disk that `speedsign train --weights PATH` accepts."""

    path: Path
    source: str
    pretrained: bool

    def state(self) -> dict[str, torch.Tensor]:
        return load_weights_file(self.path)


def resolve_backbone(spec: str | None, *, work: Path) -> Backbone:
    """--weights / $SPEEDSIGN_BENCH_WEIGHTS (a file or run:ID), else cached ImageNet, else random.

    Throughput and latency do not depend on the weight values; accuracy does, and the report
    says which weights were used.
    """
    spec = spec or os.environ.get(WEIGHTS_ENV) or None
    if spec == "imagenet" or (spec is None and imagenet_weights_path().is_file()):
        path = imagenet_weights_path()
        if not path.is_file():
            raise UserError(f"--weights imagenet: {path} is not on this machine")
        return Backbone(path=path, source="imagenet (torchvision IMAGENET1K_V1)", pretrained=True)
    if spec is not None:
        if spec.startswith("run:"):
            path = RunDir(default_runs_dir() / spec[4:]).best
        else:
            path = Path(os.path.expanduser(spec))
        load_weights_file(path)  # fail now, with speedsign's message, not in a child process
        return Backbone(path=path.resolve(), source=f"{spec}", pretrained=True)
    torch.manual_seed(0)
    path = work / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return Backbone(path=path, source="random init (no pretrained weights on this machine: accuracy of "
                                      "finetune/frozen is not representative)", pretrained=False)


def config_overrides(approach: str, backbone: Backbone, *, n_train: int | None = None,
                     **values: Any) -> dict[str, Any]:
    """Overrides of the fast preset: the benchmark's backbone, and a batch no larger than the
    training split (speedsign refuses a larger one; only tiny smoke-test data get there)."""
    from speedsign.config import preset_values

    overrides = dict(values)
    if approach != "scratch":
        overrides["weights"] = str(backbone.path)
    batch = overrides.get("batch_size") or preset_values(approach, "fast")["batch_size"]
    if n_train is not None and batch > n_train:
        overrides["batch_size"] = max(1, n_train)
    return overrides


# ---------------------------------------------------------------- the tutorial's folder

def tutorial_folder(index: DatasetIndex, out: Path, *, val_files: Sequence[str] | None = None) -> Path:
    """An ImageFolder tree `out/{train,val}/<class>/` of links to speedsign's own split.

    The tutorial then reads exactly speedsign's train/val split (by track). Every class folder
    exists in both splits so ImageFolder gives both the same class indices. `val_files`
    restricts val to a fixed sample (the tutorial's evaluation at 224 px is slow).
    """
    shutil.rmtree(out, ignore_errors=True)
    wanted = set(val_files) if val_files is not None else None
    for split in ("train", "val"):
        for name in index.classes:
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for sample in index.samples(split):
            if split == "val" and wanted is not None and sample.path not in wanted:
                continue
            link = out / split / index.classes[sample.label] / sample.path.replace("/", "__")
            os.symlink((index.root / sample.path).resolve(), link)
    return out


def sample_files(samples: Sequence[Sample], *, limit: int | None, seed: int) -> list[str]:
    if limit is None or len(samples) <= limit:
        return [s.path for s in samples]
    rng = np.random.default_rng(seed)
    return sorted(samples[i].path for i in rng.choice(len(samples), size=limit, replace=False))


# ---------------------------------------------------------------- in-process fast training

@dataclass(frozen=True)
class FastFit:
    """One run of the product's own training job, in this process."""

    config: TrainConfig
    total_s: float  # the whole job: decode (cached), features for frozen, epochs, checkpoints
    records: list[dict[str, Any]]
    best_val_acc: float
    n_train: int
    n_val: int

    @property
    def train_s(self) -> float:
        return sum(float(r["seconds"]) for r in self.records)


def decoded_splits(index: DatasetIndex, config: TrainConfig) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    decoded = load_decoded(index, size=config.stored_size, resize=config.resize)
    return decoded, time.perf_counter() - started


def split_folder(index: DatasetIndex, out: Path) -> Path:
    """`out/{train,val}/<class>/` holding exactly `index`'s split, as hard links (or copies).

    The job then trains on that split as given; not symlinks, which speedsign does not follow
    out of a data folder.
    """
    shutil.rmtree(out, ignore_errors=True)
    for split in ("train", "val"):
        for sample in index.samples(split):
            target = out / split / index.classes[sample.label] / Path(sample.path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(index.root / sample.path, target)
            except OSError:
                shutil.copy2(index.root / sample.path, target)
    return out


def train_fast(index: DatasetIndex, config: TrainConfig, *, device: torch.device, work: Path) -> FastFit:
    """`speedsign train` itself (job.train_run) on `index`'s exact train/val split."""
    folder = split_folder(index, work / f"split-{index.fingerprint}")
    request = TrainRequest(config=config, data_dir=folder, runs_dir=work / "fast-runs", device=device.type,
                           force=True)
    started = time.perf_counter()
    result = train_run(request)
    total_s = time.perf_counter() - started
    if result.state != "done":
        raise UserError(f"the benchmark's {config.approach} training ended {result.state}: {result.error}")
    records, _ = read_metrics(result.run_dir)
    return FastFit(config=config, total_s=total_s, records=records, best_val_acc=float(result.best_val_acc or 0.0),
                   n_train=len(index.samples("train")), n_val=len(index.samples("val")))
