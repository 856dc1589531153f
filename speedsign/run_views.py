"""What the pages show of runs: labels, which can answer, tables, job progress, curves.

`speedsign.runs` is the typed run store; this module turns its `RunInfo`s into plain values
for the dashboard (strings, DataFrames, `JobView`). Nothing here writes to a run folder or
imports Streamlit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from speedsign.budget import format_duration
from speedsign.errors import UserError
from speedsign.models import IMAGENET_URL, OFFLINE_REASON, imagenet_weights_path
from speedsign.progress import MISSING, format_seconds, format_time, parse_time
from speedsign.runs import ACTIVE_STATES, RunDir, RunInfo

# The files whose change a page must see: a new epoch, a new state, a new best model (of runs:
# bundles have their own signature, speedsign.bundles.bundles_signature).
_WATCHED: tuple[str, ...] = (RunDir.STATUS, RunDir.CONFIG, RunDir.METRICS, RunDir.BEST)
RUN_TABLE_COLUMNS: tuple[str, ...] = ("run", "approach", "state", "epoch", "best val acc", "created", "ended",
                                      "problem")
ENDED_STATES: tuple[str, ...] = ("done", "failed", "cancelled")
RECENT_SECONDS = 24 * 3600.0  # how long an ended job stays in the Train page's Jobs list
RECENT_LIMIT = 10  # at most this many jobs listed (active ones are never left out)


# ---------------------------------------------------------------- messages in the app's words

def imagenet_offline_text() -> str:
    """Why ImageNet weights cannot be used here and what to do, in the app's words (no CLI flags)."""
    return (f"{OFFLINE_REASON}. finetune and frozen need a pretrained backbone: train scratch first (on this "
            "data set, or on another one such as the other GTSRB signs), then choose its backbone under "
            "\"Backbone weights\" on the Train page, or choose a weights file on the server. To use ImageNet "
            f"here, put {IMAGENET_URL} at {imagenet_weights_path()}.")


def page_error(text: str | None) -> str | None:
    """A run's or launch's error as a page shows it. The offline-ImageNet message is written for
    the command line (it says which flags to pass): a page says what to do in the app instead."""
    if text and OFFLINE_REASON in text:
        return imagenet_offline_text()
    return text


# ---------------------------------------------------------------- naming and choosing runs

def run_label(info: RunInfo) -> str:
    """How a run is named in pickers: its id (which starts with the approach), its state unless done,
    and its best val accuracy when known."""
    label = info.run_id
    if info.published:
        label += " · published"
    if info.best_val_acc is not None:
        label += f" · val {info.best_val_acc:.3f}"
    if info.state != "done":
        label += f" · {info.state}"
    return label


def is_usable(info: RunInfo) -> bool:
    """A finished run (or published model) that can be loaded: done, not damaged, its model file present."""
    return info.state == "done" and not info.damaged and info.folder.model.is_file()


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


def format_number(value: float | None, digits: int = 3) -> str:
    """A metric for a table or card: "0.978", or "–" when there is none (never "None" or "nan")."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return MISSING
    return f"{value:.{digits}f}"


def ended_at(info: RunInfo) -> float | None:
    """When a run stopped (seconds since the epoch), for done, failed and cancelled runs; else None.

    A job that died wrote no `finished`: its last status write (`updated`, renewed by every
    heartbeat) is when it stopped."""
    if info.state not in ENDED_STATES:
        return None
    status = info.status
    for value in (status.finished, status.updated, status.heartbeat, status.started, status.created):
        moment = parse_time(value)
        if moment is not None:
            return moment
    return None


def run_table(runs: Sequence[RunInfo], *, now: float | None = None) -> pd.DataFrame:
    """Every run as one row: id, approach, state, epochs, best val accuracy, times, and what is wrong.

    Text cells only: a missing value is "–", a time is local and readable (`format_time`)."""
    rows = []
    for info in runs:
        rows.append({
            "run": info.run_id, "approach": info.approach, "state": info.state,
            "epoch": f"{info.epoch}/{info.epochs}" if info.epochs else str(info.epoch),
            "best val acc": format_number(info.best_val_acc, 4),
            "created": format_time(info.status.created, now=now),
            "ended": format_time(ended_at(info), now=now) if info.state in ENDED_STATES else MISSING,
            "problem": info.damaged or (page_error(info.error) if info.state == "failed" else None) or "",
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
    if info.state == "running" and status.deadline is not None:
        seconds_left = max(0.0, status.deadline - time.time())  # a budget's plan is a clock, not a guess
    last = rows[-1] if rows else {}
    val_acc = status.val_acc if status.val_acc is not None else _number(last.get("val_acc"))
    ips = status.images_per_s if status.images_per_s is not None else _number(last.get("images_per_s"))
    return JobView(
        run_id=info.run_id, approach=info.approach, state=info.state, phase=status.phase or "", epoch=epoch,
        epochs=epochs, fraction=float(fraction), seconds_left=seconds_left, val_acc=val_acc,
        best_val_acc=info.best_val_acc, images_per_s=ips, error=page_error(info.error) or None, damaged=info.damaged,
    )


def queue_frame(entries: Sequence[Mapping[str, Any]], *, now: float | None = None) -> pd.DataFrame:
    """Queue entries as a table: position, run, state, epoch, device, waiting or running for how long."""
    now = time.time() if now is None else now
    rows = []
    for position, entry in enumerate(entries, start=1):
        since = entry.get("queued_at")
        age = now - since if isinstance(since, (int, float)) and not isinstance(since, bool) and since > 0 else None
        epoch = entry.get("epoch")
        rows.append({"#": position, "run": str(entry.get("run_id", "")), "state": str(entry.get("state", "")),
                     "epoch": str(epoch) if isinstance(epoch, int) and not isinstance(epoch, bool) else MISSING,
                     "device": str(entry.get("device") or MISSING),
                     "since": format_seconds(age) + " ago" if age is not None else MISSING})
    return pd.DataFrame(rows, columns=["#", "run", "state", "epoch", "device", "since"])


def recent_jobs(runs: Sequence[RunInfo], *, now: float | None = None, pinned: Sequence[str] = (),
                max_age: float = RECENT_SECONDS, limit: int = RECENT_LIMIT) -> list[RunInfo]:
    """The Train page's Jobs: every queued or running run, then runs that ended (done, failed,
    cancelled) within `max_age` seconds, newest first, at most `limit` in all.

    Read from the run store, not from a session: a job that failed stays listed after a reload,
    whoever launched it (this tab, another, the command line). `pinned` run ids (launched from
    this session) are listed whatever their age or state. Active runs are never left out."""
    now = time.time() if now is None else now
    wanted = set(pinned)
    active = sorted((info for info in runs if is_active(info)),
                    key=lambda i: (i.state != "running", i.status.queued_at or 0))
    ended = []
    for info in runs:
        if is_active(info):
            continue
        moment = ended_at(info)
        # A moment in the future (another machine's clock) counts as recent.
        recent = moment is not None and now - moment <= max_age
        if recent or info.run_id in wanted:
            ended.append((moment or 0.0, info))
    ended.sort(key=lambda pair: pair[0], reverse=True)
    room = max(limit - len(active) - sum(info.run_id in wanted for _, info in ended), 0)
    kept = []
    for _, info in ended:
        if info.run_id in wanted:
            kept.append(info)
        elif room > 0:
            kept.append(info)
            room -= 1
    return active + kept


def job_times(info: RunInfo, *, now: float | None = None) -> str:
    """When a job was created, started and ended, for its card: "created 14:05 · ended 5 min ago",
    and a time budget's plan: "budget 5 min: 412 steps planned to take 4 min 48 s"."""
    status = info.status
    parts = [f"created {format_time(status.created, now=now)}"]
    if status.started:
        parts.append(f"started {format_time(status.started, now=now)}")
    moment = ended_at(info)
    if moment is not None:
        parts.append(f"ended {format_time(moment, now=now)}")
    if status.budget_s:
        plan = f"budget {format_duration(status.budget_s)}"
        if status.planned_steps and status.planned_s:
            plan += f": {status.planned_steps} steps planned to take {format_seconds(status.planned_s)}"
        if info.state == "done" and status.steps_run is not None:
            plan += f", {status.steps_run} run"
        parts.append(plan)
    return " · ".join(parts)


def newly_ended(runs: Sequence[RunInfo], watched: set[str], announced: set[str]) -> list[RunInfo]:
    """Runs seen queued or running earlier (`watched`) that have ended since, each returned once.

    Updates both sets in place: active runs join `watched`, returned runs join `announced`.
    The page keeps the sets in its session, so a "done" message shows once, and only for a
    job that finished while someone watched it."""
    ended = []
    for info in runs:
        if is_active(info):
            watched.add(info.run_id)
        elif info.run_id in watched and info.run_id not in announced and info.state in ENDED_STATES:
            announced.add(info.run_id)
            ended.append(info)
    return ended


# ---------------------------------------------------------------- learning curves

# The x-axes a curve can be drawn on (every metrics row carries all three), as pages name them.
CURVE_AXES: dict[str, str] = {"epoch": "epoch", "seconds": "wall seconds", "images": "images seen"}


def curves_frame(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Long format for plots.training_curves: run, epoch, seconds, images, split, loss, acc.

    seconds: wall seconds of training up to the end of that epoch; images: training images
    seen by then (None for runs stored before it was recorded)."""
    rows = []
    for run, records in metrics.items():
        for record, seconds, images in _with_progress(records):
            for split in ("train", "val"):
                loss, acc = record.get(f"{split}_loss"), record.get(f"{split}_acc")
                if isinstance(loss, (int, float)) and isinstance(acc, (int, float)):
                    rows.append({"run": run, "epoch": record["epoch"], "seconds": seconds, "images": images,
                                 "split": split, "loss": float(loss), "acc": float(acc)})
    return pd.DataFrame(rows, columns=["run", *CURVE_AXES, "split", "loss", "acc"])


def lr_frame(metrics: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Learning rate per epoch for plots.training_curves: run, epoch, seconds, images, lr."""
    rows = [{"run": run, "epoch": r["epoch"], "seconds": seconds, "images": images, "lr": float(r["lr"])}
            for run, records in metrics.items() for r, seconds, images in _with_progress(records)
            if isinstance(r.get("lr"), (int, float))]
    return pd.DataFrame(rows, columns=["run", *CURVE_AXES, "lr"])


def _with_progress(records: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], float, int | None]]:
    """Each readable epoch with the cumulative seconds and images seen at its end."""
    total = 0.0
    for record in records:
        if not isinstance(record.get("epoch"), int):
            continue
        seconds = record.get("seconds")
        total += float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else 0.0
        images = record.get("images")
        yield record, total, (int(images) if isinstance(images, int) and images > 0 else None)


# Drawn unasked on the Learning curves page: a legend of 2 x 6 entries still reads.
CURVES_DEFAULT_RUNS = 6


def on_dataset(info: RunInfo, fingerprint: str | None) -> bool:
    """Whether a run trained on the data set with this fingerprint (config.json's
    data_fingerprint); every run counts when there is no current data set (None)."""
    return fingerprint is None or info.config.get("data_fingerprint") == fingerprint


def default_curve_runs(runs: Sequence[RunInfo], *, fingerprint: str | None,
                       limit: int = CURVES_DEFAULT_RUNS) -> list[str]:
    """The runs Learning curves draws before anyone chooses: the current data set's runs
    training now, then its finished ones, newest first within each (`runs` comes newest
    first), at most `limit`. Failed, cancelled and damaged runs, and runs of other data sets,
    can be chosen but are not drawn unasked. With none of those, the published models are drawn,
    so a first visit to a shared app sees curves."""
    mine = [info for info in runs if not info.damaged and on_dataset(info, fingerprint)]
    active = [info.run_id for info in mine if is_active(info)]
    done = [info.run_id for info in mine if info.state == "done"]
    picked = active + done or [info.run_id for info in runs
                               if info.published and info.state == "done" and not info.damaged]
    return picked[:max(0, limit)]


def failure_frame(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """The failed runs among `runs` and why, as a page says it (columns run, reason), each once,
    in their order."""
    failed = {info.run_id: page_error(info.error) or f"no reason recorded (see its {RunDir.LOG})"
              for info in runs if info.state == "failed"}
    return pd.DataFrame({"run": list(failed), "reason": list(failed.values())}, columns=["run", "reason"])
