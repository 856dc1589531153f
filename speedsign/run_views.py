"""What the pages show of runs: labels, which can answer, tables, job progress, curves.

`speedsign.runs` is the typed run store; this module turns its `RunInfo`s into plain values
for the dashboard (strings, DataFrames, `JobView`). Nothing here writes to a run folder or
imports Streamlit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from speedsign.errors import UserError
from speedsign.progress import format_seconds
from speedsign.runs import ACTIVE_STATES, RunDir, RunInfo

# The files whose change a page must see: a new epoch, a new state, a new best model.
_WATCHED: tuple[str, ...] = (RunDir.STATUS, RunDir.CONFIG, RunDir.METRICS, RunDir.BEST)
RUN_TABLE_COLUMNS: tuple[str, ...] = ("run", "approach", "state", "epoch", "best val acc", "created", "problem")


# ---------------------------------------------------------------- naming and choosing runs

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
    """A finished run whose model can be loaded: done, not damaged, its best checkpoint present."""
    return info.state == "done" and not info.damaged and info.folder.best.is_file()


def is_active(info: RunInfo) -> bool:
    """Queued or training now."""
    return info.state in ACTIVE_STATES


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
        for name in _WATCHED:
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


def run_table(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Every run as one row: id, approach, state, epochs, best val accuracy, and what is wrong."""
    rows = []
    for info in runs:
        rows.append({
            "run": info.run_id, "approach": info.approach, "state": info.state,
            "epoch": f"{info.epoch}/{info.epochs}" if info.epochs else str(info.epoch),
            "best val acc": None if info.best_val_acc is None else round(info.best_val_acc, 4),
            "created": info.status.created or "",
            "problem": info.damaged or (info.error if info.state == "failed" else None) or "",
        })
    return pd.DataFrame(rows, columns=list(RUN_TABLE_COLUMNS))


def damaged_frame(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """The damaged runs and why (columns run, problem)."""
    damaged = [info for info in runs if info.damaged]
    return pd.DataFrame({"run": [i.run_id for i in damaged], "problem": [i.damaged for i in damaged]},
                        columns=["run", "problem"])


# ---------------------------------------------------------------- jobs in progress

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

    @property
    def progress_text(self) -> str:
        """"epoch 1/2 · training · 8 s left" (time left only while it trains)."""
        text = f"epoch {self.epoch}/{self.epochs}"
        if self.phase:
            text += f" · {self.phase}"
        if self.state == "running":
            text += f" · {format_seconds(self.seconds_left)} left"
        return text


def _number(value: Any) -> float | None:
    """A number from a metrics row (untrusted JSON), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def job_view(info: RunInfo, rows: Sequence[Mapping[str, Any]]) -> JobView:
    """Progress of a run from its status and metrics: fraction done and an estimate of time left."""
    status = info.status
    epochs = int(status.epochs or info.epochs or 0)
    epoch = int(status.epoch or len(rows) or 0)
    partial = 0.0
    if info.state == "running" and status.steps and status.steps > 0 and status.step is not None:
        partial = min(max(status.step / status.steps, 0.0), 1.0)
    fraction = 1.0 if info.state == "done" else (min((epoch + partial) / epochs, 1.0) if epochs else 0.0)
    seconds_left = None
    durations = [float(r["seconds"]) for r in rows if _number(r.get("seconds")) is not None]
    if info.state == "running" and durations and epochs:
        seconds_left = max(0.0, (epochs - epoch - partial) * (sum(durations) / len(durations)))
    last = rows[-1] if rows else {}
    val_acc = status.val_acc if status.val_acc is not None else _number(last.get("val_acc"))
    ips = status.images_per_s if status.images_per_s is not None else _number(last.get("images_per_s"))
    return JobView(
        run_id=info.run_id, approach=info.approach, state=info.state, phase=status.phase or "", epoch=epoch,
        epochs=epochs, fraction=float(fraction), seconds_left=seconds_left, val_acc=val_acc,
        best_val_acc=info.best_val_acc, images_per_s=ips, error=info.error or None, damaged=info.damaged,
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
    """Learning rate per epoch for plots.lr_curve: run, epoch, lr."""
    rows = [{"run": run, "epoch": r["epoch"], "lr": float(r["lr"])}
            for run, records in metrics.items() for r in records
            if isinstance(r.get("epoch"), int) and isinstance(r.get("lr"), (int, float))]
    return pd.DataFrame(rows, columns=["run", "epoch", "lr"])
