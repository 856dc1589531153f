"""The run store: typed run folders (`RunDir`), their status (`RunStatus`), run ids, listing.

Layout (the contract in the README, "Run store"): config.json, status.json, metrics.jsonl,
best.pt, last.pt, predictions_val.npz, eval_val.json, calibration.json, predictions_test.npz and
eval_test.json (when the data has test/), log.txt, and the cancel marker and
lock of a live job. `RunDir` is the one place that spells those names. One process (the
job) writes a run; everything else only reads, and reads without trusting: damage comes
back as a value (`RunStatus.damaged`, `RunInfo.damaged`), never as an exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from speedsign.storage import atomic_write_json, atomic_write_text, read_json

FORMAT_VERSION = 1
STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES: tuple[str, ...] = ("queued", "running")
HEARTBEAT_SECONDS = 5.0
# A job whose heartbeat is older than this is dead (machine slept, process killed).
STALE_SECONDS = 25.0
RUN_ID_HASH_CHARS = 10


# ---------------------------------------------------------------- the folder

@dataclass(frozen=True)
class RunDir:
    """One run folder and the names of everything in it."""

    path: Path

    CONFIG = "config.json"
    STATUS = "status.json"
    METRICS = "metrics.jsonl"
    BEST = "best.pt"
    LAST = "last.pt"
    PREDICTIONS = "predictions_val.npz"
    EVALUATION = "eval_val.json"
    PREDICTIONS_TEST = "predictions_test.npz"  # the best model on the data folder's test/, when it has one
    EVALUATION_TEST = "eval_test.json"
    CALIBRATION = "calibration.json"  # the temperature fitted on val (speedsign.calibration)
    BUDGET = "budget.json"  # what a time budget planned (speedsign.budget.BudgetPlan)
    LOG = "log.txt"
    # A published model (speedsign.bundles) has these instead of best.pt and last.pt.
    MANIFEST = "bundle.json"
    WEIGHTS = "weights.pt"
    CARD = "MODEL_CARD.md"
    CANCEL = "cancel.request"
    LOCK = ".lock"
    # What a training writes (and `--force` forgets); config and status stay.
    OUTPUTS: tuple[str, ...] = (METRICS, BEST, LAST, PREDICTIONS, EVALUATION, PREDICTIONS_TEST, EVALUATION_TEST,
                                CALIBRATION, BUDGET)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status(self) -> Path:
        return self.path / self.STATUS

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def is_bundle(self) -> bool:
        """A published model (models/<name>/), read-only: it has bundle.json."""
        return (self.path / self.MANIFEST).is_file()

    @property
    def model(self) -> Path:
        """The file that holds the model to load: best.pt, or a bundle's weights.pt."""
        return self.path / (self.WEIGHTS if self.is_bundle else self.BEST)

    @property
    def predictions(self) -> Path:
        return self.path / self.PREDICTIONS

    @property
    def evaluation(self) -> Path:
        return self.path / self.EVALUATION

    @property
    def predictions_test(self) -> Path:
        return self.path / self.PREDICTIONS_TEST

    @property
    def evaluation_test(self) -> Path:
        return self.path / self.EVALUATION_TEST

    @property
    def calibration(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def budget(self) -> Path:
        return self.path / self.BUDGET

    @property
    def log(self) -> Path:
        return self.path / self.LOG

    @property
    def cancel_marker(self) -> Path:
        return self.path / self.CANCEL

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    def read_status(self) -> RunStatus:
        return read_status(self.path)

    def write_status(self, **values: Any) -> RunStatus:
        return write_status(self.path, **values)

    def is_finished(self) -> bool:
        """Done, with the best checkpoint it promises."""
        return self.read_status().state == "done" and self.model.exists()

    # The cancel marker: a file, so a job sees a cancel pressed in any process, even one
    # pressed before the job started.
    def mark_cancel(self) -> None:
        atomic_write_text(repr(time.time()), self.cancel_marker)

    def cancel_requested(self) -> bool:
        return self.cancel_marker.exists()

    def clear_cancel(self, *, before: float | None = None) -> None:
        """Remove the cancel marker; with `before`, only a marker written earlier than that time."""
        try:
            if before is not None and self._cancel_time() >= before:
                return
            self.cancel_marker.unlink()
        except FileNotFoundError:
            pass

    def _cancel_time(self) -> float:
        # The time mark_cancel wrote into it: file times can lag time.time() by a clock tick.
        try:
            return float(self.cancel_marker.read_text(encoding="ascii", errors="replace"))
        except ValueError:
            return self.cancel_marker.stat().st_mtime


# ---------------------------------------------------------------- status

def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _number(value: Any) -> float | None:
    """A finite number from a file we do not trust (a newer format, a hand edit), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


@dataclass(frozen=True)
class RunStatus:
    """status.json, parsed once. A field of the wrong type reads as None and is named in `damaged`."""

    state: str = "unknown"
    exists: bool = False  # whether status.json was there at all
    damaged: str | None = None
    pid: int | None = None
    host: str | None = None
    created: str | None = None
    updated: str | None = None
    queued_at: float | None = None
    started: str | None = None
    finished: str | None = None
    heartbeat: float | None = None
    epoch: int = 0
    epochs: int = 0
    step: int | None = None
    steps: int | None = None
    phase: str | None = None
    best_val_acc: float | None = None
    best_epoch: int | None = None
    val_acc: float | None = None
    images_per_s: float | None = None
    seconds: float | None = None
    error: str | None = None
    device: str | None = None
    device_key: str | None = None
    machine: str | None = None  # the CPU that trained it (speedsign.machine.describe_machine)
    precision: str | None = None
    world_size: int | None = None
    budget_s: float | None = None  # a time budget's seconds, its plan and its deadline (time.time())
    planned_s: float | None = None
    planned_steps: int | None = None
    deadline: float | None = None
    steps_run: int | None = None
    augment: str | None = None  # the training augmentation the run used ("auto" decides it per run)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RunStatus:
        """Typed fields from an untrusted mapping; wrong types become None (or 0) and a note."""
        values: dict[str, Any] = {"exists": True}
        problems: list[str] = []
        for field in fields(cls):
            if field.name in ("exists", "damaged") or field.name not in data:
                continue
            raw = data[field.name]
            value = _coerce(field.name, raw)
            if value is _BAD:
                problems.append(field.name)
                value = 0 if field.name in ("epoch", "epochs") else None
            values[field.name] = value
        if values.get("state") is None:
            values["state"] = "unknown"
        if problems:
            values["damaged"] = f"status.json holds a bad {', '.join(problems)}"
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """What status.json stores (the parse bookkeeping stays out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("exists", "damaged")}

    @property
    def live_state(self) -> str:
        return effective_state(self)[0]


_BAD = object()
_INT_FIELDS = ("pid", "epoch", "epochs", "step", "steps", "best_epoch", "world_size", "planned_steps",
               "steps_run")
_FLOAT_FIELDS = ("queued_at", "heartbeat", "best_val_acc", "val_acc", "images_per_s", "seconds", "budget_s",
                 "planned_s", "deadline")


def _coerce(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _INT_FIELDS:
        number = _number(value)
        return int(number) if number is not None and float(number).is_integer() else _BAD
    if name in _FLOAT_FIELDS:
        number = _number(value)
        return float(number) if number is not None else _BAD
    if name == "state":
        return value if isinstance(value, str) else _BAD
    return value if isinstance(value, str) else str(value)


def read_status(run_dir: Path) -> RunStatus:
    """status.json of a run folder; missing or damaged files come back as values, not errors."""
    path = Path(run_dir) / RunDir.STATUS
    if not path.exists():
        return RunStatus()
    try:
        data = read_json(path)
    except (ValueError, RecursionError, OSError) as error:  # bad JSON, bad bytes, absurd ints or nesting
        return RunStatus(exists=True, damaged=f"status.json is damaged: {error}")
    if not isinstance(data, dict):
        return RunStatus(exists=True, damaged="status.json is not an object")
    return RunStatus.parse(data)


def write_status(run_dir: Path, **values: Any) -> RunStatus:
    """Merge values into status.json (the job is the only writer of its run)."""
    current = read_status(run_dir)
    base = current if current.damaged is None or current.state != "unknown" else RunStatus()
    updated = RunStatus.parse({**base.to_json(), **values, "updated": now_iso()})
    atomic_write_json(updated.to_json(), Path(run_dir) / RunDir.STATUS)
    return updated


def pid_alive(pid: Any) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:  # "pid": true is not pid 1
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def effective_state(status: RunStatus, *, now: float | None = None) -> tuple[str, str | None]:
    """The state to show, and why it differs from the stored one.

    A queued or running job whose process is gone, or whose heartbeat stopped, is failed:
    never a run that claims `running` forever.
    """
    if status.state not in ACTIVE_STATES:
        return status.state, None
    if status.host == socket.gethostname() and status.pid is not None and not pid_alive(status.pid):
        return "failed", "the job's process is gone (killed or crashed)"
    if status.heartbeat is not None and (now or time.time()) - status.heartbeat > STALE_SECONDS:
        return "failed", f"no heartbeat for {int((now or time.time()) - status.heartbeat)} s"
    return status.state, None


class StatusWriter:
    """A live job's status.json, with a heartbeat thread; one lock so writes never interleave."""

    def __init__(self, folder: RunDir) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **values: Any) -> None:
        # pid and host on every write: a launcher's earlier write can never leave a wrong pid.
        with self._lock:
            write_status(self.folder.path, heartbeat=time.time(), pid=os.getpid(), host=socket.gethostname(),
                         **values)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    self.update()
                except OSError:  # disk full: the main thread will fail with the reason
                    pass

        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS + 1)


# ---------------------------------------------------------------- run ids

def config_hash(identity: Mapping[str, Any]) -> str:
    """Hash of everything that decides a run's result (config, data and weights fingerprints)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_HASH_CHARS]


def make_run_id(approach: str, digest: str, *, now: datetime | None = None) -> str:
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"{approach}-{day}-{digest}"


def find_run_by_hash(runs_dir: Path, digest: str) -> Path | None:
    """The existing run folder for a config hash, whatever day it was started."""
    if not Path(runs_dir).is_dir():
        return None
    matches = sorted(p for p in Path(runs_dir).glob(f"*-{digest}") if p.is_dir())
    return matches[0] if matches else None


def is_valid_run_id(run_id: str) -> bool:
    """Run ids come from disk and URLs: only letters, digits, '-' and '_' are accepted."""
    return bool(run_id) and len(run_id) <= 100 and all(c.isalnum() or c in "-_" for c in run_id) \
        and run_id.isascii()


# ---------------------------------------------------------------- metrics

def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Per-epoch rows of metrics.jsonl, and a note when a line is partial or damaged."""
    path = Path(run_dir) / RunDir.METRICS
    if not path.exists():
        return [], None
    rows: list[dict[str, Any]] = []
    problem = None
    with open(path, encoding="utf-8", errors="replace") as file:
        lines = file.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            problem = f"metrics.jsonl line {number} is partial or damaged"
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, problem


def append_metrics(run_dir: Path, row: Mapping[str, Any]) -> None:
    """Append one epoch; rewritten whole (atomically) so no partial line can survive a crash."""
    rows, _ = read_metrics(run_dir)
    rows = [r for r in rows if r.get("epoch") != row.get("epoch")] + [dict(row)]
    write_metrics(run_dir, rows)


def write_metrics(run_dir: Path, rows: list[Mapping[str, Any]]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(text, Path(run_dir) / RunDir.METRICS)


def truncate_metrics(run_dir: Path, *, last_epoch: int) -> None:
    """Keep epochs 1..last_epoch once each: what a resumed run continues from."""
    rows, _ = read_metrics(run_dir)
    seen: dict[int, dict[str, Any]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if isinstance(epoch, int) and 1 <= epoch <= last_epoch:
            seen[epoch] = row
    write_metrics(run_dir, [seen[e] for e in sorted(seen)])


# ---------------------------------------------------------------- listing

@dataclass(frozen=True)
class RunInfo:
    """What the pages and `runs` show of one run folder."""

    run_id: str
    run_dir: Path
    approach: str
    state: str  # the live state (effective_state), not only the stored one
    epoch: int
    epochs: int
    best_val_acc: float | None
    damaged: str | None  # why the run cannot be trusted, or None
    config: dict[str, Any]  # config.json as stored ({} when unreadable)
    status: RunStatus
    published: bool = False  # a bundle in models/ (read-only: no cancel, resume or retrain)

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir)

    @property
    def error(self) -> str | None:
        """Why a run failed: the job's own message, or why its state was judged failed."""
        return self.status.error

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "approach": self.approach, "state": self.state,
            "epoch": self.epoch, "epochs": self.epochs, "best_val_acc": self.best_val_acc,
            "damaged": self.damaged, **({"published": True} if self.published else {}),
        }


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """config.json; ValueError when missing, damaged or from a newer speedsign."""
    path = Path(run_dir) / RunDir.CONFIG
    if not path.exists():
        raise ValueError("config.json is missing")
    try:
        data = read_json(path)
    except (ValueError, RecursionError, OSError) as error:  # bad JSON, bad bytes, absurd ints or nesting
        raise ValueError(f"config.json is damaged: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError("config.json has no config")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"format version {version!r} is newer than this speedsign "
                         f"understands ({FORMAT_VERSION}): upgrade speedsign")
    return data


def inspect_run(run_dir: Path) -> RunInfo:
    """Read one run folder without trusting it: damage becomes a reason, not an exception."""
    folder = RunDir(Path(run_dir))
    problems: list[str] = []
    try:
        meta = read_run_config(folder.path)
    except ValueError as error:
        meta, problems = {}, [str(error)]
    status = folder.read_status()
    if status.damaged:
        problems.append(status.damaged)
    config = meta.get("config", {}) if meta else {}
    state, reason = effective_state(status) if status.exists else ("unknown", None)
    rows, metrics_problem = read_metrics(folder.path)
    if metrics_problem:
        problems.append(metrics_problem)
    if state == "done" and not folder.model.exists():
        problems.append(f"{folder.model.name} is missing")
    if state in ("failed", "cancelled") and status.epoch and not folder.last.exists():
        problems.append(f"{RunDir.LAST} is missing")
    best = status.best_val_acc
    if best is None and rows:
        best = max((v for v in (_number(r.get("val_acc")) for r in rows) if v is not None), default=None)
    epochs = _number(config.get("epochs", 0))
    if epochs is None:
        problems.append("config.json holds an epoch count that is not a number")
    if reason and not status.error:  # a live job's status holds "error": null
        status = dataclasses.replace(status, error=reason)
    return RunInfo(
        run_id=folder.run_id, run_dir=folder.path, approach=str(config.get("approach", "?")),
        state=state, epoch=status.epoch if status.exists else len(rows), epochs=int(epochs or 0),
        best_val_acc=float(best) if best is not None else None,
        damaged="; ".join(problems) or None, config=meta, status=status,
    )


def iter_run_dirs(runs_dir: Path) -> Iterator[Path]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return
    for entry in sorted(runs_dir.iterdir()):
        if entry.is_dir() and not entry.name.startswith(".") and is_valid_run_id(entry.name):
            yield entry


def list_runs(runs_dir: Path) -> list[RunInfo]:
    """Every run folder, newest first; damaged ones included with their reason."""
    runs = [inspect_run(path) for path in iter_run_dirs(runs_dir)]
    return sorted(runs, key=lambda r: r.status.created or "", reverse=True)
