"""speedsign.jobs: locks, the device queue, cancel, and what a launch starts (no training here)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from speedsign import jobs, runs
from speedsign.cli import build_parser, config_from_args
from speedsign.config import resolve_config
from speedsign.errors import UserError
from speedsign.runner import StopFlag, TrainRequest, plan_run


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("jobs") / "signs"
    render_dataset(out, per_class=6, frames_per_track=2, size=16, seed=4)
    return out


def live_status(run_dir: Path, state: str, **fields: object) -> None:
    runs.atomic_write_json({"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                            "heartbeat": time.time(), **fields}, run_dir / "status.json")


# ---------------------------------------------------------------- locks

def test_file_lock_is_exclusive_and_released_by_release(tmp_path: Path) -> None:
    first, second = jobs.FileLock(tmp_path / ".lock"), jobs.FileLock(tmp_path / ".lock")
    assert first.acquire() and not second.acquire() and jobs.is_locked(tmp_path)
    first.release()
    assert not jobs.is_locked(tmp_path) and second.acquire()
    second.release()
    second.release()  # twice is harmless


def test_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert jobs.is_locked(tmp_path)
        holder.kill()
        holder.wait(timeout=30)
        assert not jobs.is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# ---------------------------------------------------------------- the device queue

def test_device_slots_follow_the_configured_concurrency(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    held = [jobs.acquire_device_slot(runs_dir, runs_dir / f"r{i}", device_key="cpu", queued_at=i, concurrency=2)
            for i in range(2)]
    assert all(held)
    waits = []

    def on_wait() -> None:  # the third job waits until one of the first two finishes
        waits.append(1)
        if len(waits) == 2:
            held[0].release()

    third = jobs.acquire_device_slot(runs_dir, runs_dir / "r2", device_key="cpu", queued_at=2, concurrency=2,
                                     on_wait=on_wait)
    assert third is not None and len(waits) == 2
    # Another device has slots of its own.
    other = jobs.acquire_device_slot(runs_dir, runs_dir / "r3", device_key="cuda-0", queued_at=3, concurrency=1)
    assert other is not None
    # A job asked to stop while waiting gets no slot.
    assert jobs.acquire_device_slot(runs_dir, runs_dir / "r4", device_key="cpu", queued_at=4, concurrency=2,
                                    should_stop=lambda: True) is None
    for lock in (held[1], third, other):
        lock.release()


def test_concurrency_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("3", 3), ("0", 1), ("lots", 1)):
        monkeypatch.setenv("SPEEDSIGN_CONCURRENCY", value)
        assert jobs.default_concurrency() == expected
    monkeypatch.delenv("SPEEDSIGN_CONCURRENCY")
    assert jobs.default_concurrency() == 1


def test_queue_is_first_come_first_served(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    earlier, later = runs_dir / "scratch-20250101-aaaa", runs_dir / "scratch-20250101-bbbb"
    earlier.mkdir(parents=True)
    live_status(earlier, "queued", queued_at=100.0, device_key="cpu")
    waited = []
    slot = jobs.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1,
                                    should_stop=lambda: len(waited) >= 2, on_wait=lambda: waited.append(1))
    assert slot is None  # the slot was free, but an earlier job is waiting for it
    live_status(earlier, "running", queued_at=100.0, device_key="cpu")  # it got going elsewhere
    slot = jobs.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1)
    assert slot is not None
    slot.release()
    # A dead job's stale "queued" never blocks the queue.
    runs.atomic_write_json({"state": "queued", "queued_at": 1.0, "device_key": "cpu", "heartbeat": 0.0},
                           earlier / "status.json")
    slot = jobs.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1)
    assert slot is not None
    slot.release()


def test_queue_lists_live_jobs_running_first(tmp_path: Path) -> None:
    for name, state, queued_at in (("a-1", "queued", 5.0), ("b-2", "running", 9.0), ("c-3", "done", 1.0),
                                   ("d-4", "queued", 3.0)):
        (tmp_path / name).mkdir()
        live_status(tmp_path / name, state, queued_at=queued_at, device_key="cpu")
    (tmp_path / "e-5").mkdir()
    (tmp_path / "e-5" / "status.json").write_text("{broken")
    assert [e["run_id"] for e in jobs.queue(tmp_path)] == ["b-2", "d-4", "a-1"]


# ---------------------------------------------------------------- cancel

def test_cancel_of_a_finished_run_does_nothing(tmp_path: Path) -> None:
    runs.atomic_write_json({"state": "done"}, tmp_path / "status.json")
    assert jobs.request_cancel(tmp_path) is False and not jobs.cancel_requested(tmp_path)


def test_cancel_never_signals_an_unrelated_process_that_reused_the_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        live_status(tmp_path, "running")
        status = runs.read_status(tmp_path)
        runs.atomic_write_json({**status, "pid": stranger.pid}, tmp_path / "status.json")
        assert jobs.request_cancel(tmp_path) is False
        assert jobs.cancel_requested(tmp_path)  # the marker still asks a job on another host to stop
        time.sleep(0.2)
        assert stranger.poll() is None  # not signalled
    finally:
        stranger.kill()
        stranger.wait(timeout=30)


def test_stop_flag_sees_the_cancel_marker_and_signals(tmp_path: Path) -> None:
    flag = StopFlag(tmp_path)
    assert not flag()
    (tmp_path / jobs.CANCEL_FILE).write_text("now")
    flag._last_check = 0.0  # the marker is checked at most every half second
    assert flag()
    jobs.clear_cancel(tmp_path)
    jobs.clear_cancel(tmp_path)  # twice is harmless
    other = StopFlag(tmp_path)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        other.install()
        os.kill(os.getpid(), signal.SIGTERM)  # a job's own SIGTERM: a flag, not death
        time.sleep(0.05)
        assert other()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- launch

def test_train_arguments_rebuild_the_same_config_in_the_job(tiny_data: Path, tmp_path: Path) -> None:
    config = resolve_config(approach="frozen", overrides={"img_size": 16, "epochs": 3, "batch_size": 8,
                                                          "lr": 0.1 + 0.2, "weights": "imagenet"})
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu", force=True)
    args = build_parser().parse_args(["train", *jobs.train_arguments(request)])
    assert config_from_args(args) == config  # so the job's run id is the launcher's
    assert args.force and args.json and args.device == "cpu" and args.data == tiny_data.resolve()


def test_launch_of_a_run_in_progress_starts_nothing(tiny_data: Path, tmp_path: Path) -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 8})
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu")
    run_dir = plan_run(request).run_dir
    run_dir.mkdir(parents=True)
    live_status(run_dir, "running")
    launched = jobs.launch(request)
    assert launched.state == "running" and launched.cached is False and launched.pid == os.getpid()
    with jobs.run_lock(run_dir) as lock:  # a job holds the lock, whatever status.json says
        assert lock.acquire()
        runs.atomic_write_json({"state": "failed"}, run_dir / "status.json")
        assert jobs.launch(request).cached is False and not (run_dir / "log.txt").exists()
    with pytest.raises(UserError, match="nproc"):
        jobs.launch(request, nproc=0)


def test_relaunch_of_a_failed_run_shows_queued_and_keeps_a_cancel_pressed_meanwhile(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from speedsign.runner import _launched_at

    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 8})
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu")
    run_dir = plan_run(request).run_dir
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    runs.atomic_write_json({"state": "failed", "pid": dead.pid, "host": socket.gethostname(),
                            "heartbeat": time.time() - 3600, "epoch": 1}, run_dir / "status.json")
    (run_dir / jobs.CANCEL_FILE).write_text("an old request")
    started: list[list[str]] = []
    monkeypatch.setattr(jobs, "launch_train", lambda args, **_: started.append(args) or SimpleNamespace(pid=4242))
    launched = jobs.launch(request)
    assert launched.state == "queued" and launched.pid == 4242 and len(started) == 1
    assert not jobs.cancel_requested(run_dir)  # the old request is gone
    # Until the job writes its own status, the old attempt's dead pid must not make it look failed.
    assert runs.inspect_run(run_dir).state == "queued"
    launched_at = _launched_at(run_dir)
    assert launched_at is not None
    jobs.request_cancel(run_dir)  # pressed while the job imports torch
    jobs.clear_cancel(run_dir, before=launched_at)  # what the job does when it starts
    assert jobs.cancel_requested(run_dir)  # kept: the job will stop at once
