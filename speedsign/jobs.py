"""Background training jobs: launch detached processes, list the queue, cancel them.

A job is `python -m speedsign job RUN_DIR` started in its own session, so it outlives the
dashboard's script thread, a closed tab, and the process that launched it. `launch` writes
the run's config.json (recipe and request) first; the job reads it back, so the page and
the job can never disagree on a setting. A job talks to the world only through its run
folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from speedsign.errors import UserError
from speedsign.job import TrainRequest, check_request, device_key, plan_run, write_run_config
from speedsign.locks import is_locked
from speedsign.runs import ACTIVE_STATES, RunDir, RunInfo, effective_state, list_runs, now_iso, pid_alive
from speedsign.train import pick_device

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


def start_job(run_dir: Path, *, nproc: int = 1) -> subprocess.Popen:
    """Start `speedsign job RUN_DIR` as a detached process whose output goes to log.txt.

    With nproc > 1 the job runs under torchrun (one process per GPU).
    """
    folder = RunDir(run_dir)
    job = ["-m", "speedsign", "job", str(folder.path.resolve())]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *job]
    else:
        command = [sys.executable, *job]
    log = open(folder.log, "ab")
    try:
        # start_new_session: the job is not in the launcher's process group, so closing
        # the dashboard (or Ctrl-C in its terminal) does not kill training.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=_package_parent())
    finally:
        log.close()


def _package_parent() -> str:
    """The folder that holds this speedsign: `-m speedsign` in the job finds the same code."""
    return str(Path(__file__).resolve().parents[1])


def request_cancel(run_dir: Path) -> bool:
    """Ask a job to stop at its next step: a marker file, and SIGTERM to its process.

    Pressing cancel twice is harmless. Returns whether a live job was signalled.
    """
    folder = RunDir(run_dir)
    status = folder.read_status()
    if status.state not in ACTIVE_STATES:
        return False
    folder.mark_cancel()
    pid = status.pid
    if pid is not None and pid_alive(pid) and _is_speedsign_process(pid):
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


def queue_of(runs: Sequence[RunInfo]) -> list[dict[str, object]]:
    """The queued and running runs among `runs`, running first, then first come first served.

    From the caller's one read of the runs, so a page's queue shows the same state as its
    job cards and runs table built from that read.
    """
    entries = [{"run_id": info.run_id, "state": info.state, "queued_at": info.status.queued_at or 0,
                "epoch": info.epoch, "device": info.status.device_key or ""}
               for info in runs if info.state in ACTIVE_STATES]
    return sorted(entries, key=lambda e: (e["state"] != "running", e["queued_at"]))


def queue(runs_dir: Path) -> list[dict[str, object]]:
    """Jobs waiting or training in a runs folder, oldest first (`queue_of` its runs)."""
    return queue_of(list_runs(runs_dir))


def launch(request: TrainRequest, *, nproc: int = 1) -> Launch:
    """Start a training as a background job, unless its run is finished or already going."""
    if nproc < 1:
        raise UserError("nproc must be at least 1")
    plan = plan_run(request)
    folder = plan.folder
    if not request.force and folder.is_finished():
        return Launch(plan.run_id, plan.run_dir, "done", True, None)
    status = folder.read_status()
    state = effective_state(status)[0] if status.exists else ""
    if is_locked(plan.run_dir) or state in ACTIVE_STATES:
        return Launch(plan.run_id, plan.run_dir, state or "running", False, status.pid)
    check_request(request)  # a refused backbone or precision is bad input, not a job that fails
    device = pick_device(request.device)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    # config.json and the device now, not when the job starts: the run lists as a real run
    # at once, queue order (first come, first served) counts from this moment, and the job
    # reads its request from this file.
    write_run_config(plan, request)
    folder.clear_cancel()
    # The job replaces this with its own pid and host (an earlier attempt's dead pid would
    # show this launch as failed); the heartbeat makes a job that never starts show as
    # failed instead of queued forever.
    folder.write_status(state="queued", queued_at=time.time(), heartbeat=time.time(),
                        created=status.created or now_iso(), error=None, pid=None, host=None,
                        epochs=request.config.epochs, device_key=device_key(device))
    process = start_job(plan.run_dir, nproc=nproc)
    return Launch(plan.run_id, plan.run_dir, "queued", False, process.pid)
