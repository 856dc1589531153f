"""The run store: `runs/<run_id>/` folders, atomic writes, run ids, listing, damage checks.

Contract (DESIGN.md section 3): config.json, status.json, metrics.jsonl, best.pt, last.pt,
predictions_val.npz, log.txt. Every file is written to a temporary name and moved into
place with `os.replace`, so a reader never sees half a file. One process (the job) writes a
run; everything else only reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

FORMAT_VERSION = 1
STATES: tuple[str, ...] = ("queued", "running", "done", "failed", "cancelled")
ACTIVE_STATES: tuple[str, ...] = ("queued", "running")
HEARTBEAT_SECONDS = 5.0
# A job whose heartbeat is older than this is dead (machine slept, process killed).
STALE_SECONDS = 25.0
RUN_ID_HASH_CHARS = 10


def default_runs_dir() -> Path:
    return Path(os.environ.get("SPEEDSIGN_RUNS", "runs"))


def cache_dir() -> Path:
    """Decoded tensors and frozen-backbone features; safe to delete at any time."""
    path = Path(os.environ.get("SPEEDSIGN_CACHE", Path.home() / ".cache" / "speedsign"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(data: Any, path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


# ---------------------------------------------------------------- run ids

def config_hash(identity: Mapping[str, Any]) -> str:
    """Hash of everything that decides a run's result (config, data and weights fingerprints)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_HASH_CHARS]


def make_run_id(approach: str, digest: str, *, now: datetime | None = None) -> str:
    day = (now or datetime.now(timezone.utc)).strftime("%Y%m%d")
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


# ---------------------------------------------------------------- status

def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json, or {} when it is missing; a damaged file raises ValueError."""
    path = Path(run_dir) / "status.json"
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ValueError(f"status.json is damaged: {error}") from error
    if not isinstance(data, dict):
        raise ValueError("status.json is not an object")
    return data


def write_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into status.json (the job is the only writer of its run)."""
    try:
        status = read_status(run_dir)
    except ValueError:
        status = {}
    status.update(fields)
    status["updated"] = now_iso()
    atomic_write_json(status, Path(run_dir) / "status.json")
    return status


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


def effective_state(status: Mapping[str, Any], *, now: float | None = None) -> tuple[str, str | None]:
    """The state to show, and why it differs from the stored one.

    A queued or running job whose process is gone, or whose heartbeat stopped, is failed:
    never a run that claims `running` forever.
    """
    state = str(status.get("state", "unknown"))
    if state not in ACTIVE_STATES:
        return state, None
    same_host = status.get("host") == socket.gethostname()
    if same_host and "pid" in status and not pid_alive(status.get("pid")):
        return "failed", "the job's process is gone (killed or crashed)"
    heartbeat = status.get("heartbeat")
    if isinstance(heartbeat, (int, float)) and (now or time.time()) - heartbeat > STALE_SECONDS:
        return "failed", f"no heartbeat for {int((now or time.time()) - heartbeat)} s"
    return state, None


# ---------------------------------------------------------------- metrics

def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Per-epoch rows of metrics.jsonl, and a note when a line is partial or damaged."""
    path = Path(run_dir) / "metrics.jsonl"
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
        except json.JSONDecodeError:
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
    atomic_write_text(text, Path(run_dir) / "metrics.jsonl")


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
    state: str
    epoch: int
    epochs: int
    best_val_acc: float | None
    damaged: str | None  # why the run cannot be trusted, or None
    config: dict[str, Any]
    status: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "approach": self.approach, "state": self.state,
            "epoch": self.epoch, "epochs": self.epochs, "best_val_acc": self.best_val_acc,
            "damaged": self.damaged,
        }


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """config.json; ValueError when missing, damaged or from a newer speedsign."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ValueError("config.json is missing")
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise ValueError(f"config.json is damaged: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError("config.json has no config")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"format version {version!r} is newer than this speedsign "
                         f"understands ({FORMAT_VERSION}): upgrade speedsign")
    return data


def _number(value: Any) -> float | None:
    """A finite number from a file we do not trust (a newer format, a hand edit), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def inspect_run(run_dir: Path) -> RunInfo:
    """Read one run folder without trusting it: damage becomes a reason, not an exception."""
    run_dir = Path(run_dir)
    problems: list[str] = []
    try:
        meta = read_run_config(run_dir)
    except ValueError as error:
        meta, problems = {}, [str(error)]
    try:
        status = read_status(run_dir)
    except ValueError as error:
        status, problems = {}, problems + [str(error)]
    config = meta.get("config", {}) if meta else {}
    state, reason = effective_state(status) if status else ("unknown", None)
    rows, metrics_problem = read_metrics(run_dir)
    if metrics_problem:
        problems.append(metrics_problem)
    if state == "done" and not (run_dir / "best.pt").exists():
        problems.append("best.pt is missing")
    if state in ("failed", "cancelled") and status.get("epoch", 0) and not (run_dir / "last.pt").exists():
        problems.append("last.pt is missing")
    best = _number(status.get("best_val_acc"))
    if best is None and rows:
        best = max((v for v in (_number(r.get("val_acc")) for r in rows) if v is not None), default=None)
    epoch, epochs = status.get("epoch", len(rows)), config.get("epochs", 0)
    if any(value is not None and _number(value) is None for value in (epoch, epochs)):
        problems.append("status.json or config.json holds an epoch count that is not a number")
    if reason and not status.get("error"):  # a live job's status holds "error": null
        status = {**status, "error": reason}
    return RunInfo(
        run_id=run_dir.name, run_dir=run_dir, approach=str(config.get("approach", "?")),
        state=state, epoch=int(_number(epoch) or 0), epochs=int(_number(epochs) or 0),
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
    return sorted(runs, key=lambda r: str(r.status.get("created", "")), reverse=True)
