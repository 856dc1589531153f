"""What the shared app lets sessions use: jobs at once, and disk for data sets and runs.

- Jobs: a global cap on queued + running jobs in the runs folder (from every session, the
  command line's included), and a per-session rule: a browser session launches only while
  fewer of its own jobs than `session_jobs` are active (one Launch may start one job per
  chosen approach). A session is known by the id that `jobs.launch` stored in the run's
  config.json ("request" → "session").
- Disk: the data and runs folders together within a budget. Usage is measured by a walk
  that follows no link (cached a few seconds); an operation whose estimated size would pass
  the budget is refused before it writes anything, and nothing stored is ever deleted to
  make room.

Plain functions that raise `UserError` with a message saying what to do; no Streamlit here.
The command line is not limited by any of this.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from speedsign.errors import UserError
from speedsign.runs import ACTIVE_STATES, RunInfo

MB = 1024 * 1024
USAGE_SECONDS = 5.0  # how long a measured usage is reused
# What one training run leaves in its folder, from measured ResNet18 runs: best.pt 45 MB, last.pt
# 45 MB (frozen) to 90 MB (with the optimizer's momentum), predictions and metrics a few hundred KB.
RUN_BYTES = 140 * MB
# A GTSRB import: the nine speed classes at their original sizes, and the 276 MB archive when it
# has to be downloaded first.
GTSRB_IMPORT_BYTES = 150 * MB
GTSRB_DOWNLOAD_BYTES = 280 * MB
_BLOCK = 4096

_usage_lock = threading.Lock()
_usage_cache: dict[tuple[str, ...], tuple[float, int]] = {}


# ---------------------------------------------------------------- jobs

def run_session(info: RunInfo) -> str | None:
    """The browser session that launched a run from the app (None: the command line, or older runs)."""
    request = info.config.get("request") if isinstance(info.config, dict) else None
    session = request.get("session") if isinstance(request, dict) else None
    return session if isinstance(session, str) and session else None


def active_runs(runs: Iterable[RunInfo]) -> list[RunInfo]:
    """The queued and running runs (live state: a dead job is not active)."""
    return [info for info in runs if info.state in ACTIVE_STATES]


def check_session_jobs(runs: Iterable[RunInfo], *, session: str, limit: int) -> None:
    """Refuse a launch from a session that already has `limit` jobs queued or running."""
    mine = [info for info in active_runs(runs) if run_session(info) == session]
    if len(mine) >= limit:
        if limit == 0:
            raise UserError("this app takes no trainings from the dashboard (its session limit is 0)")
        names = ", ".join(info.run_id for info in mine[:3])
        raise UserError(f"this browser session already has {len(mine)} job(s) queued or running ({names}); "
                        f"the app runs {limit} launch(es) per session at a time: launch again when "
                        f"{'it ends' if len(mine) == 1 else 'they end'}, or cancel it in Jobs below")


def check_job_slots(runs: Iterable[RunInfo], *, limit: int) -> None:
    """Refuse a new job when `limit` jobs (every session's and the command line's) are active."""
    active = active_runs(runs)
    if len(active) >= limit:
        if limit == 0:
            raise UserError("this app takes no trainings from the dashboard (its job limit is 0)")
        raise UserError(f"{len(active)} job(s) are queued or running, the most this app takes at once "
                        f"({limit}): launch again when one ends")


# ---------------------------------------------------------------- disk

def _walk_bytes(root: Path) -> int:
    """Bytes on disk under `root` (allocated blocks where the system says, else sizes); links are
    counted as links, never followed."""
    total = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    blocks = getattr(info, "st_blocks", None)
                    total += blocks * 512 if blocks is not None else info.st_size
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _distinct_roots(roots: Iterable[Path]) -> list[Path]:
    """The roots resolved, without one that lies inside another (counted once)."""
    resolved = []
    for root in roots:
        try:
            path = Path(root).resolve()
        except (OSError, RuntimeError):
            continue
        if path not in resolved:
            resolved.append(path)
    return [p for p in resolved if not any(p != other and p.is_relative_to(other) for other in resolved)]


def disk_usage(roots: Iterable[Path], *, max_age: float = USAGE_SECONDS) -> int:
    """Bytes stored under the roots (data/ and runs/), measured at most `max_age` seconds ago."""
    distinct = _distinct_roots(roots)
    key = tuple(str(p) for p in distinct)
    now = time.monotonic()
    with _usage_lock:
        cached = _usage_cache.get(key)
        if cached is not None and now - cached[0] <= max_age:
            return cached[1]
    total = sum(_walk_bytes(root) for root in distinct if root.is_dir())
    with _usage_lock:
        _usage_cache[key] = (time.monotonic(), total)
    return total


def forget_usage() -> None:
    """Measure again next time (after an operation that wrote)."""
    with _usage_lock:
        _usage_cache.clear()


def format_mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.0f} MB" if n_bytes >= 10 * MB else f"{n_bytes / MB:,.1f} MB"


def check_disk(roots: Sequence[Path], *, estimate: int, budget_bytes: int, what: str) -> None:
    """Refuse `what` when the data and runs folders are at the budget, or `estimate` more bytes
    would pass it. Nothing is deleted to make room."""
    used = disk_usage(roots)
    if used >= budget_bytes:
        raise UserError(f"{what}: the data and runs folders hold {format_mb(used)}, the app's disk budget is "
                        f"{format_mb(budget_bytes)}: nothing more can be stored. The owner can free space "
                        "(delete runs or data sets) or raise the budget")
    if used + estimate > budget_bytes:
        raise UserError(f"{what} needs about {format_mb(estimate)}, and the data and runs folders hold "
                        f"{format_mb(used)} of the app's {format_mb(budget_bytes)} disk budget: choose something "
                        "smaller, or the owner can free space or raise the budget")


# ---------------------------------------------------------------- estimates

def synth_bytes(n_images: int, size: int) -> int:
    """A rendered set: a PNG per image (a 32 px sign takes about 2 KB, one block on disk)."""
    return int(n_images) * max(_BLOCK, int(size) * int(size) * 3) + 64 * 1024


def zip_bytes(data: bytes) -> int:
    """What extracting a zip writes: its members' declared sizes (their compressed size when the
    zip cannot be read: the importer then refuses it anyway)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(max(_BLOCK, info.file_size) for info in archive.infolist() if not info.is_dir())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return len(data)


def gtsrb_bytes(*, download: bool) -> int:
    return GTSRB_IMPORT_BYTES + (GTSRB_DOWNLOAD_BYTES if download else 0)


def runs_bytes(n_runs: int) -> int:
    return int(n_runs) * RUN_BYTES
