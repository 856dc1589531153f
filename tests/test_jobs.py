"""speedsign.jobs and speedsign.locks: locks, the device queue, cancel, and what a launch starts
(no training here)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from speedsign import jobs, locks, runs, storage
from speedsign.config import SETTINGS, resolve_config
from speedsign.errors import UserError
from speedsign.job import TrainRequest, launched_at, plan_run, read_request
from speedsign.runs import RunDir
from speedsign.train import StopFlag


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("jobs") / "signs"
    render_dataset(out, per_class=6, frames_per_track=2, size=16, seed=4)
    return out


def live_status(run_dir: Path, state: str, **fields: object) -> None:
    storage.atomic_write_json({"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                            "heartbeat": time.time(), **fields}, run_dir / "status.json")


# ---------------------------------------------------------------- locks

def test_file_lock_is_exclusive_and_released_by_release(tmp_path: Path) -> None:
    first, second = locks.FileLock(tmp_path / ".lock"), locks.FileLock(tmp_path / ".lock")
    assert first.acquire() and not second.acquire() and locks.is_locked(tmp_path)
    first.release()
    assert not locks.is_locked(tmp_path) and second.acquire()
    second.release()
    second.release()  # twice is harmless


def test_lock_of_a_killed_process_is_released_by_the_kernel(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)", str(tmp_path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert locks.is_locked(tmp_path)
        holder.kill()
        holder.wait(timeout=30)
        assert not locks.is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# ---------------------------------------------------------------- the device queue

def test_device_slots_follow_the_configured_concurrency(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    held = [locks.acquire_device_slot(runs_dir, runs_dir / f"r{i}", device_key="cpu", queued_at=i, concurrency=2)
            for i in range(2)]
    assert all(held)
    released_at: list[float] = []

    def finish_first() -> None:  # one of the first two jobs finishes a second from now
        released_at.append(time.monotonic())
        held[0].release()

    timer = threading.Timer(1.0, finish_first)
    started = time.monotonic()
    timer.start()
    try:
        # The third job waits until then: both slots are taken.
        third = locks.acquire_device_slot(runs_dir, runs_dir / "r2", device_key="cpu", queued_at=2, concurrency=2)
        got_at = time.monotonic()
    finally:
        timer.cancel()
        timer.join()
    assert third is not None and len(released_at) == 1
    assert got_at >= released_at[0] and got_at - started >= 0.9  # it waited for the release
    # Another device has slots of its own.
    other = locks.acquire_device_slot(runs_dir, runs_dir / "r3", device_key="cuda-0", queued_at=3, concurrency=1)
    assert other is not None
    # A job asked to stop while waiting gets no slot.
    assert locks.acquire_device_slot(runs_dir, runs_dir / "r4", device_key="cpu", queued_at=4, concurrency=2,
                                    should_stop=lambda: True) is None
    for lock in (held[1], third, other):
        lock.release()


def test_concurrency_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("3", 3), ("0", 1), ("lots", 1)):
        monkeypatch.setenv("SPEEDSIGN_CONCURRENCY", value)
        assert locks.default_concurrency() == expected
    monkeypatch.delenv("SPEEDSIGN_CONCURRENCY")
    assert locks.default_concurrency() == 1


def test_queue_is_first_come_first_served(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    earlier, later = runs_dir / "scratch-20250101-aaaa", runs_dir / "scratch-20250101-bbbb"
    earlier.mkdir(parents=True)
    live_status(earlier, "queued", queued_at=100.0, device_key="cpu")
    checks: list[int] = []

    def after_two_waits() -> bool:  # asked before every try: stop once it has waited twice
        checks.append(1)
        return len(checks) > 2

    slot = locks.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1,
                                     should_stop=after_two_waits)
    assert slot is None and len(checks) == 3  # the slot was free, but an earlier job is waiting for it
    live_status(earlier, "running", queued_at=100.0, device_key="cpu")  # it got going elsewhere
    slot = locks.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1)
    assert slot is not None
    slot.release()
    # A dead job's stale "queued" never blocks the queue.
    storage.atomic_write_json({"state": "queued", "queued_at": 1.0, "device_key": "cpu", "heartbeat": 0.0},
                           earlier / "status.json")
    slot = locks.acquire_device_slot(runs_dir, later, device_key="cpu", queued_at=200.0, concurrency=1)
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
    storage.atomic_write_json({"state": "done"}, tmp_path / "status.json")
    assert jobs.request_cancel(tmp_path) is False and not RunDir(tmp_path).cancel_requested()


def test_cancel_never_signals_an_unrelated_process_that_reused_the_pid(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        live_status(tmp_path, "running")
        status = storage.read_json(tmp_path / "status.json")
        storage.atomic_write_json({**status, "pid": stranger.pid}, tmp_path / "status.json")
        assert runs.read_status(tmp_path).pid == stranger.pid
        assert jobs.request_cancel(tmp_path) is False
        assert RunDir(tmp_path).cancel_requested()  # the marker still asks a job on another host to stop
        time.sleep(0.2)
        assert stranger.poll() is None  # not signalled
    finally:
        stranger.kill()
        stranger.wait(timeout=30)


def test_stop_flag_sees_the_cancel_marker_and_signals(tmp_path: Path) -> None:
    folder = RunDir(tmp_path)
    flag = StopFlag(folder)
    assert not flag()
    folder.cancel_marker.write_text("now")
    flag._last_check = 0.0  # the marker is checked at most every half second
    assert flag()
    folder.clear_cancel()
    folder.clear_cancel()  # twice is harmless
    other = StopFlag(folder)
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

def test_the_job_reads_back_exactly_the_request_that_was_launched(
        tiny_data: Path, tmp_path: Path, weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    config = resolve_config(approach="frozen", overrides={
        "img_size": 16, "epochs": 3, "batch_size": 8, "lr": 0.1 + 0.2, "weights": str(weights_file),
        "schedule": "step", "step_size": 3, "gamma": 0.5})
    assert (config.step_size, config.gamma) == (3, 0.5)  # set by hand, not the preset's
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu", force=True,
                           compile=True, precision="fp32")
    started: list[Path] = []
    monkeypatch.setattr(jobs, "start_job",
                        lambda run_dir, *, nproc=1: started.append(run_dir) or SimpleNamespace(pid=7))
    launched = jobs.launch(request)
    assert launched.state == "queued" and started == [launched.run_dir]
    job_request = read_request(launched.run_dir)  # what `speedsign job RUN_DIR` trains
    assert job_request == replace(request, data_dir=tiny_data.resolve())
    assert job_request.config == config and job_request.config.lr == 0.1 + 0.2  # not a rounded repr
    assert plan_run(job_request).run_id == launched.run_id  # so the job's run id is the launcher's


def test_launch_of_a_run_in_progress_starts_nothing(tiny_data: Path, tmp_path: Path) -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 8})
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu")
    run_dir = plan_run(request).run_dir
    run_dir.mkdir(parents=True)
    live_status(run_dir, "running")
    launched = jobs.launch(request)
    assert launched.state == "running" and launched.cached is False and launched.pid == os.getpid()
    with locks.run_lock(run_dir) as lock:  # a job holds the lock, whatever status.json says
        assert lock.acquire()
        storage.atomic_write_json({"state": "failed"}, run_dir / "status.json")
        assert jobs.launch(request).cached is False and not (run_dir / "log.txt").exists()
    with pytest.raises(UserError, match="nproc"):
        jobs.launch(request, nproc=0)


def test_relaunch_of_a_failed_run_shows_queued_and_keeps_a_cancel_pressed_meanwhile(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 8})
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu")
    run_dir = plan_run(request).run_dir
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    storage.atomic_write_json({"state": "failed", "pid": dead.pid, "host": socket.gethostname(),
                               "heartbeat": time.time() - 3600, "epoch": 1}, run_dir / "status.json")
    folder = RunDir(run_dir)
    folder.cancel_marker.write_text("an old request")
    started: list[tuple[Path, int]] = []
    monkeypatch.setattr(jobs, "start_job",
                        lambda run_dir, *, nproc=1: started.append((run_dir, nproc)) or SimpleNamespace(pid=4242))
    launched = jobs.launch(request)
    assert launched.state == "queued" and launched.pid == 4242 and len(started) == 1
    assert started == [(run_dir, 1)]  # the job gets its run folder, and reads the request from it
    meta = storage.read_json(folder.config)
    assert meta["config"]["approach"] == "scratch"
    assert meta["config"] == config.to_dict() and set(meta["config"]) == {s.name for s in SETTINGS}
    assert meta["request"]["device"] == "cpu" and meta["request"]["precision"] == "auto"
    assert not folder.cancel_requested()  # the old request is gone
    # Until the job writes its own status, the old attempt's dead pid must not make it look failed.
    assert runs.inspect_run(run_dir).state == "queued"
    queued_at = launched_at(runs.read_status(run_dir))
    assert queued_at is not None
    jobs.request_cancel(run_dir)  # pressed while the job imports torch
    folder.clear_cancel(before=queued_at)  # what the job does when it starts
    assert folder.cancel_requested()  # kept: the job will stop at once
