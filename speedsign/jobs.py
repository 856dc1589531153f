"""Background training jobs: launch detached processes, queue them per device, cancel them.

A job is `python -m speedsign train ... --json` started in its own session, so it outlives
the dashboard's script thread, a closed tab, and the process that launched it. It talks to
the world only through its run folder. Locks are `fcntl` locks on files, which the kernel
releases when a process dies however it dies, so a killed job never blocks the queue.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from speedsign.errors import UserError
from speedsign.runs import (ACTIVE_STATES, effective_state, iter_run_dirs, now_iso, pid_alive, read_status,
                            write_status)

CANCEL_FILE = "cancel.request"
LOCK_FILE = ".lock"
QUEUE_POLL_SECONDS = 0.5


def default_concurrency() -> int:
    """Jobs per device at once; one by default (two trainings on 2 cores only thrash)."""
    try:
        return max(1, int(os.environ.get("SPEEDSIGN_CONCURRENCY", "1")))
    except ValueError:
        return 1


# ---------------------------------------------------------------- locks

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

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock(run_dir: Path) -> FileLock:
    """One lock per run id: two launches of the same config never train twice."""
    return FileLock(Path(run_dir) / LOCK_FILE)


def is_locked(run_dir: Path) -> bool:
    lock = run_lock(run_dir)
    if lock.acquire():
        lock.release()
        return False
    return True


# ---------------------------------------------------------------- the device queue

def _queued_before(runs_dir: Path, run_dir: Path, device_key: str, since: float) -> bool:
    """Whether a live job for the same device has waited longer (first come, first served)."""
    for other in iter_run_dirs(runs_dir):
        if other.resolve() == Path(run_dir).resolve():
            continue
        try:
            status = read_status(other)
        except ValueError:
            continue
        if status.get("state") != "queued" or status.get("device_key") != device_key:
            continue
        if effective_state(status)[0] != "queued":
            continue
        queued_at = status.get("queued_at")
        if isinstance(queued_at, (int, float)) and (queued_at, other.name) < (since, Path(run_dir).name):
            return True
    return False


def acquire_device_slot(runs_dir: Path, run_dir: Path, *, device_key: str, queued_at: float,
                        concurrency: int | None = None, should_stop: Callable[[], bool] | None = None,
                        on_wait: Callable[[], None] | None = None) -> FileLock | None:
    """Wait for one of the device's slots (FIFO among queued jobs); None if asked to stop."""
    concurrency = concurrency or default_concurrency()
    slots = Path(runs_dir) / ".slots"
    while True:
        if should_stop is not None and should_stop():
            return None
        if not _queued_before(runs_dir, run_dir, device_key, queued_at):
            for slot in range(concurrency):
                lock = FileLock(slots / f"{device_key}-{slot}.lock")
                if lock.acquire():
                    return lock
        if on_wait is not None:
            on_wait()
        time.sleep(QUEUE_POLL_SECONDS)


# ---------------------------------------------------------------- launch and cancel

@dataclass(frozen=True)
class Launch:
    """What launching a job gave: its run, and whether it was already done or running."""

    run_id: str
    run_dir: Path
    state: str
    cached: bool
    pid: int | None

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "run_dir": str(self.run_dir), "state": self.state,
                "cached": self.cached, "pid": self.pid}


def launch_train(args: Sequence[str], *, run_dir: Path, nproc: int = 1,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `speedsign train ARGS` as a detached process whose output goes to log.txt.

    With nproc > 1 the job runs under torchrun (one process per GPU).
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nproc}", "-m", "speedsign", "train", *args]
    else:
        command = [sys.executable, "-m", "speedsign", "train", *args]
    log = open(Path(run_dir) / "log.txt", "ab")
    try:
        # start_new_session: the job is not in the launcher's process group, so closing
        # the dashboard (or Ctrl-C in its terminal) does not kill training.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": _python_path(),
                                     **(env or {})},
                                cwd=os.getcwd())
    finally:
        log.close()


def _python_path() -> str:
    """This speedsign first on the job's path, whatever folder the launcher runs in."""
    package_parent = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)


def request_cancel(run_dir: Path) -> bool:
    """Ask a job to stop at its next step: a marker file, and SIGTERM to its process.

    Pressing cancel twice is harmless. Returns whether a live job was signalled.
    """
    run_dir = Path(run_dir)
    try:
        status = read_status(run_dir)
    except ValueError:
        status = {}
    if status.get("state") not in ACTIVE_STATES:
        return False
    (run_dir / CANCEL_FILE).write_text(str(time.time()))
    pid = status.get("pid")
    if pid_alive(pid) and _is_speedsign_process(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True
    return False


def _is_speedsign_process(pid: int) -> bool:
    """Never signal an unrelated process that reused a dead job's pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return b"speedsign" in file.read()
    except OSError:
        return sys.platform != "linux"


def cancel_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / CANCEL_FILE).exists()


def clear_cancel(run_dir: Path, *, before: float | None = None) -> None:
    """Remove the cancel marker; with `before`, only a marker written earlier than that time."""
    path = Path(run_dir) / CANCEL_FILE
    try:
        if before is not None and _requested_at(path) >= before:
            return
        path.unlink()
    except FileNotFoundError:
        pass


def _requested_at(marker: Path) -> float:
    # The time request_cancel wrote into it: file times can lag time.time() by a clock tick.
    try:
        return float(marker.read_text(encoding="ascii", errors="replace"))
    except ValueError:
        return marker.stat().st_mtime


def queue(runs_dir: Path) -> list[dict[str, object]]:
    """Jobs waiting or training, oldest first: what the Train page shows as the queue."""
    entries = []
    for run_dir in iter_run_dirs(runs_dir):
        try:
            status = read_status(run_dir)
        except ValueError:
            continue
        state, _ = effective_state(status)
        if state in ACTIVE_STATES:
            entries.append({"run_id": run_dir.name, "state": state, "queued_at": status.get("queued_at", 0),
                            "epoch": status.get("epoch", 0), "device": status.get("device_key", "")})
    return sorted(entries, key=lambda e: (e["state"] != "running", e["queued_at"]))


def train_arguments(request: "TrainRequest") -> list[str]:  # noqa: F821 (runner imports jobs)
    """The `speedsign train` arguments that reproduce a request exactly."""
    config = request.config
    args = ["--approach", config.approach, "--data", str(Path(request.data_dir).resolve()),
            "--preset", config.preset, "--runs-dir", str(Path(request.runs_dir).resolve()),
            "--device", request.device, "--precision", request.precision, "--json"]
    flags = {"epochs": config.epochs, "img-size": config.img_size, "batch-size": config.batch_size,
             "lr": repr(config.lr), "optimizer": config.optimizer, "schedule": config.schedule,
             "momentum": repr(config.momentum), "weight-decay": repr(config.weight_decay),
             "label-smoothing": repr(config.label_smoothing), "patience": config.patience,
             "augment": config.augment, "resize": config.resize, "val-fraction": repr(config.val_fraction),
             "seed": config.seed,
             "weights": config.weights}
    for name, value in flags.items():
        args += [f"--{name}", str(value)]
    if request.force:
        args.append("--force")
    if request.compile:
        args.append("--compile")
    return args


def launch(request: "TrainRequest", *, nproc: int = 1) -> Launch:  # noqa: F821
    """Start a training as a background job, unless its run is finished or already going."""
    from speedsign.runner import check_weights, device_key, is_finished, plan_run, write_run_config
    from speedsign.train import pick_device

    if nproc < 1:
        raise UserError("nproc must be at least 1")
    plan = plan_run(request)
    if not request.force and is_finished(plan):
        return Launch(plan.run_id, plan.run_dir, "done", True, None)
    try:
        status = read_status(plan.run_dir)
    except ValueError:
        status = {}
    state, _ = effective_state(status) if status else ("", None)
    if is_locked(plan.run_dir) or state in ACTIVE_STATES:
        return Launch(plan.run_id, plan.run_dir, state or "running", False, status.get("pid"))
    check_weights(request)  # a refused weights file is bad input, not a job that fails
    device = pick_device(request.device)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    # config.json and the device now, not when the job starts: the run lists as a real run
    # at once, and queue order (first come, first served) counts it from this moment.
    write_run_config(plan, request)
    clear_cancel(plan.run_dir)
    # The job replaces this with its own pid and host (an earlier attempt's dead pid would
    # show this launch as failed); the heartbeat makes a job that never starts show as
    # failed instead of queued forever.
    write_status(plan.run_dir, state="queued", queued_at=time.time(), heartbeat=time.time(),
                 created=status.get("created") or now_iso(), error=None, pid=None, host=None,
                 epochs=request.config.epochs, device_key=device_key(device))
    process = launch_train(train_arguments(request), run_dir=plan.run_dir, nproc=nproc)
    return Launch(plan.run_id, plan.run_dir, "queued", False, process.pid)
