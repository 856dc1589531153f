"""Locks between processes: one per run (never train a config twice) and the device slots.

Locks are `fcntl.flock` locks on files, which the kernel releases when a process dies
however it dies, so a killed job never blocks the queue. The hand-written `FileLock` is
kept over the `filelock` package: that package's Unix lock is the same flock call, and
what we need beyond it (a non-blocking try, lock files that are never deleted, so two
processes cannot lock two different inodes of one path) is these thirty lines, with no
dependency to add.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from speedsign.runs import RunDir, effective_state, iter_run_dirs, read_status

QUEUE_POLL_SECONDS = 0.5
SLOTS_DIR = ".slots"


def default_concurrency() -> int:
    """Jobs per device at once; one by default (two trainings on 2 cores only thrash)."""
    try:
        return max(1, int(os.environ.get("SPEEDSIGN_CONCURRENCY", "1")))
    except ValueError:
        return 1


class FileLock:
    """An exclusive, non-blocking fcntl lock on a file, held until release or process death."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(run_dir: Path) -> FileLock:
    """One lock per run id: two launches of the same config never train twice."""
    return FileLock(RunDir(run_dir).lock_file)


def is_locked(run_dir: Path) -> bool:
    # No lock file, no holder (a holder creates it before locking): asking must not create
    # the run folder, or a refused launch would leave an empty run behind.
    if not RunDir(run_dir).lock_file.exists():
        return False
    lock = run_lock(run_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


def _queued_before(runs_dir: Path, run_dir: Path, device_key: str, since: float) -> bool:
    """Whether a live job for the same device has waited longer (first come, first served)."""
    for other in iter_run_dirs(runs_dir):
        if other.resolve() == Path(run_dir).resolve():
            continue
        status = read_status(other)
        if status.state != "queued" or status.device_key != device_key or status.queued_at is None:
            continue
        if effective_state(status)[0] != "queued":
            continue
        if (status.queued_at, other.name) < (since, Path(run_dir).name):
            return True
    return False


def acquire_device_slot(runs_dir: Path, run_dir: Path, *, device_key: str, queued_at: float,
                        concurrency: int | None = None,
                        should_stop: Callable[[], bool] | None = None) -> FileLock | None:
    """Wait for one of the device's slots (FIFO among queued jobs); None if asked to stop."""
    concurrency = concurrency or default_concurrency()
    slots = Path(runs_dir) / SLOTS_DIR
    while True:
        if should_stop is not None and should_stop():
            return None
        if not _queued_before(runs_dir, run_dir, device_key, queued_at):
            for slot in range(concurrency):
                lock = FileLock(slots / f"{device_key}-{slot}.lock")
                if lock.acquire():
                    return lock
        time.sleep(QUEUE_POLL_SECONDS)
