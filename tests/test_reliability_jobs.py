"""Jobs that die, and the run store they leave behind (the issue's "Jobs and the run store").

Real jobs are `python -m speedsign train ... --json` subprocesses (and the `python -m speedsign job
RUN_DIR` ones that `jobs.launch` starts) on a tiny data set (9 classes
x 6 images of 16 px: 36 train, 18 val) with one torch thread each, so an epoch takes about a
second even on two shared cores. Every wait has a timeout: a broken job fails the test, it
never hangs it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from speedsign import cli, jobs, locks, runs, storage
from speedsign.config import resolve_config
from speedsign.job import TrainRequest, plan_run, train_run
from speedsign.models import build_untrained
from speedsign.predict import Predictor
from speedsign.runs import RunDir, RunStatus

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 240  # seconds; a tiny job takes 5-20 s on two busy cores


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 classes x 3 tracks of 2 frames, 16 px: the val split takes one track per class."""
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("tiny") / "signs"
    render_dataset(out, per_class=6, frames_per_track=2, size=16, seed=1)
    return out


def job_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("SPEEDSIGN_CONCURRENCY", None)
    return {**env, **extra}


def overrides(*, epochs: int, seed: int = 0, batch_size: int = 4) -> dict[str, Any]:
    return {"img_size": 16, "batch_size": batch_size, "epochs": epochs, "seed": seed}


def train_argv(data: Path, runs_dir: Path, **settings: Any) -> list[str]:
    values = overrides(**settings)
    return [sys.executable, "-m", "speedsign", "train", "--approach", "scratch", "--data", str(data),
            "--img-size", str(values["img_size"]), "--batch-size", str(values["batch_size"]),
            "--epochs", str(values["epochs"]), "--seed", str(values["seed"]),
            "--runs-dir", str(runs_dir), "--device", "cpu", "--json"]


def run_dir_for(data: Path, runs_dir: Path, **settings: Any) -> Path:
    """The folder a job with these settings writes (same config + data = same run id)."""
    config = resolve_config(approach="scratch", overrides=overrides(**settings))
    return plan_run(TrainRequest(config=config, data_dir=data, runs_dir=runs_dir)).run_dir


def start_job(data: Path, runs_dir: Path, **settings: Any) -> subprocess.Popen:
    return subprocess.Popen(train_argv(data, runs_dir, **settings), cwd=REPO, env=job_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, *, timeout: float = JOB_TIMEOUT) -> tuple[int, dict[str, Any], str]:
    """Wait for a job: exit code, its --json answer (last stdout line), its stderr."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"job did not finish in {timeout} s:\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    answer = json.loads(lines[-1]) if lines else {}
    return process.returncode, answer, stderr


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str,
             process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"job exited ({process.returncode}) before {what}:\n{stderr[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def status_of(run_dir: Path) -> RunStatus:
    """status.json as every reader sees it (read_status never raises: damage is a value)."""
    return runs.read_status(run_dir)


def cancel_requested(run_dir: Path) -> bool:
    return RunDir(run_dir).cancel_requested()


def epoch_reached(run_dir: Path, epoch: int) -> Callable[[], bool]:
    return lambda: status_of(run_dir).epoch >= epoch


def metrics_epochs(run_dir: Path) -> list[int]:
    """Epochs of metrics.jsonl; every line must be whole JSON and the file must end in a newline."""
    text = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n"), "metrics.jsonl ends in a partial line"
    return [json.loads(line)["epoch"] for line in text.splitlines()]


def leftover_temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


def load_last(run_dir: Path) -> dict[str, Any]:
    """last.pt, loaded as the contract says it must load, and rebuilt into a model."""
    payload = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    model = build_untrained(payload["config"]["approach"], num_classes=len(payload["classes"]))
    model.load_state_dict(payload["model"])
    return payload


# ---------------------------------------------------------------- killed, stopped, cancelled

def test_sigkilled_job_shows_failed_and_resumes_to_same_epochs(
        tiny_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], one_thread) -> None:
    runs_dir, epochs = tmp_path / "runs", 4
    run_dir = run_dir_for(tiny_data, runs_dir, epochs=epochs)
    job = start_job(tiny_data, runs_dir, epochs=epochs)
    wait_for(epoch_reached(run_dir, 1), timeout=JOB_TIMEOUT, what="epoch 1", process=job)
    os.kill(job.pid, signal.SIGKILL)  # mid-epoch 2, or while it saves: no handler runs
    job.communicate(timeout=30)
    assert status_of(run_dir).state == "running", "the test killed the job after it finished"

    # The stored state still says running; what every reader shows is failed, at once.
    killed_at = time.monotonic()
    info = runs.inspect_run(run_dir)
    assert info.state == "failed" and "gone" in info.status.error
    assert time.monotonic() - killed_at < 30
    assert jobs.queue(runs_dir) == [] and not locks.is_locked(run_dir)
    resumable = load_last(run_dir)["fit_state"]["epoch"]
    assert 1 <= resumable < epochs

    # Relaunch: what `speedsign train` runs, here in this process (a new process costs seconds).
    capfd.readouterr()
    config = resolve_config(approach="scratch", overrides=overrides(epochs=epochs))
    answer = train_run(TrainRequest(config=config, data_dir=tiny_data, runs_dir=runs_dir, device="cpu")).to_json()
    stderr = capfd.readouterr().err
    assert answer["state"] == "done" and answer["cached"] is False and answer["epochs_run"] == epochs
    assert f"resuming from last.pt after epoch {resumable}" in stderr
    assert f"epoch 1/{epochs} " not in stderr  # the finished epochs were not trained again
    assert metrics_epochs(run_dir) == list(range(1, epochs + 1))  # no duplicate, no partial line
    assert runs.inspect_run(run_dir).state == "done" and runs.inspect_run(run_dir).damaged is None
    assert leftover_temporaries(run_dir) == []  # a half-written checkpoint of the killed job


def test_stale_heartbeat_or_dead_pid_shows_failed_within_30_seconds(tmp_path: Path) -> None:
    assert runs.HEARTBEAT_SECONDS * 3 <= runs.STALE_SECONDS <= 30
    now = time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    cases = {
        # machine slept / job on another host died: only the heartbeat tells
        "other host, old heartbeat": ({"state": "running", "host": "elsewhere", "pid": os.getpid(),
                                       "heartbeat": now - runs.STALE_SECONDS - 1}, "failed"),
        "other host, fresh heartbeat": ({"state": "running", "host": "elsewhere", "pid": 1,
                                         "heartbeat": now - 1}, "running"),
        "same host, dead pid": ({"state": "running", "host": socket.gethostname(), "pid": dead.pid,
                                 "heartbeat": now}, "failed"),
        "same host, live pid": ({"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                                 "heartbeat": now}, "running"),
        "launched, never started": ({"state": "queued", "heartbeat": now - 60}, "failed"),
        "finished long ago": ({"state": "done", "heartbeat": now - 10**6}, "done"),
    }
    for name, (status, expected) in cases.items():
        run_dir = tmp_path / name.replace(" ", "-").replace(",", "")
        run_dir.mkdir()
        storage.atomic_write_json(status, run_dir / "status.json")
        info = runs.inspect_run(run_dir)
        assert info.state == expected, name
        if expected == "failed":
            assert info.status.error, name
    # A heartbeat within the allowed age never makes a live job look dead.
    fresh = RunStatus.parse({"state": "running", "heartbeat": now - runs.STALE_SECONDS + 2})
    assert runs.effective_state(fresh, now=now)[0] == "running"


def test_sigterm_stops_job_cleanly_as_cancelled_with_usable_last_pt(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir, epochs = tmp_path / "runs", 8
    run_dir = run_dir_for(tiny_data, runs_dir, epochs=epochs, seed=1)
    job = start_job(tiny_data, runs_dir, epochs=epochs, seed=1)
    wait_for(epoch_reached(run_dir, 1), timeout=JOB_TIMEOUT, what="epoch 1", process=job)
    job.send_signal(signal.SIGTERM)
    code, answer, stderr = finish(job, timeout=120)
    assert "Traceback" not in stderr
    assert code == 1 and answer["state"] == "cancelled", stderr
    status = status_of(run_dir)
    assert status.state == "cancelled" and status.pid == job.pid
    last = load_last(run_dir)
    assert last["fit_state"]["epoch"] == status.epoch >= 1
    assert metrics_epochs(run_dir) == list(range(1, status.epoch + 1))
    assert not cancel_requested(run_dir) and not locks.is_locked(run_dir)
    assert runs.inspect_run(run_dir).damaged is None


def test_cancel_button_pressed_twice_stops_job_cleanly_as_cancelled(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir, epochs = tmp_path / "runs", 8
    run_dir = run_dir_for(tiny_data, runs_dir, epochs=epochs, seed=2)
    job = start_job(tiny_data, runs_dir, epochs=epochs, seed=2)
    wait_for(epoch_reached(run_dir, 1), timeout=JOB_TIMEOUT, what="epoch 1", process=job)
    assert jobs.request_cancel(run_dir) is True
    jobs.request_cancel(run_dir)  # the impatient second click: harmless
    code, answer, stderr = finish(job, timeout=120)
    assert code == 1 and answer["state"] == "cancelled", stderr
    assert "Traceback" not in stderr and stderr.count("cancelled: last.pt holds") == 1
    stopped_at = load_last(run_dir)["fit_state"]["epoch"]
    assert stopped_at == status_of(run_dir).epoch >= 1
    assert metrics_epochs(run_dir) == list(range(1, stopped_at + 1))
    assert jobs.request_cancel(run_dir) is False  # nothing left to cancel; no marker either
    assert not cancel_requested(run_dir)
    # (Relaunching a cancelled run resumes it: the SIGKILL test shows resuming from last.pt.)


def test_cancel_of_a_job_waiting_in_the_queue_cancels_it(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    run_dir = run_dir_for(tiny_data, runs_dir, epochs=1, seed=3)
    # Someone else holds the CPU's only slot: the job queues behind it.
    with locks.FileLock(runs_dir / ".slots" / "cpu-0.lock") as slot:
        assert slot.acquire()
        job = start_job(tiny_data, runs_dir, epochs=1, seed=3)
        wait_for(lambda: status_of(run_dir).state == "queued" and status_of(run_dir).device_key is not None,
                 timeout=JOB_TIMEOUT, what="the job to queue", process=job)
        assert [entry["run_id"] for entry in jobs.queue(runs_dir)] == [run_dir.name]
        assert jobs.request_cancel(run_dir)
        code, answer, stderr = finish(job, timeout=60)
    assert code == 1 and answer["state"] == "cancelled", stderr
    assert answer["epochs_run"] == 0 and not (run_dir / "metrics.jsonl").exists()


def test_cancel_pressed_while_a_launched_job_starts_up_is_not_lost(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in job_env().items():  # what the launched job inherits
        monkeypatch.setenv(name, value)
    config = resolve_config(approach="scratch", overrides=overrides(epochs=8, seed=7))
    launched = jobs.launch(TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs",
                                        device="cpu"))
    run_dir = launched.run_dir
    try:
        # At once: the job is still importing torch and has not written its own status yet.
        assert status_of(run_dir).pid is None
        jobs.request_cancel(run_dir)
        wait_for(lambda: runs.effective_state(status_of(run_dir))[0] not in runs.ACTIVE_STATES
                 and not runs.pid_alive(launched.pid), timeout=JOB_TIMEOUT, what="the job to stop and exit")
    finally:
        if runs.pid_alive(launched.pid):
            os.kill(launched.pid, signal.SIGKILL)
    status = status_of(run_dir)
    assert status.state == "cancelled", (run_dir / "log.txt").read_text()
    assert not status.epoch and not cancel_requested(run_dir)


# ---------------------------------------------------------------- several launches

def test_two_simultaneous_launches_of_one_config_train_it_exactly_once(tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    run_dir = run_dir_for(tiny_data, runs_dir, epochs=1, seed=4, batch_size=8)
    both = [start_job(tiny_data, runs_dir, epochs=1, seed=4, batch_size=8) for _ in range(2)]
    outcomes = [finish(job) for job in both]
    assert all(code == 0 for code, _, _ in outcomes), [stderr for _, _, stderr in outcomes]
    trained = [answer for _, answer, stderr in outcomes if "epoch 1/1 " in stderr]
    assert len(trained) == 1, [stderr for _, _, stderr in outcomes]
    assert trained[0]["state"] == "done" and trained[0]["cached"] is False
    other = next(answer for _, answer, stderr in outcomes if "epoch 1/1 " not in stderr)
    # It either found the run in progress, or (if it came late) finished and cached.
    assert (other["state"] in ("queued", "running") and other["cached"] is False) or \
        (other["state"] == "done" and other["cached"] is True), other
    assert {answer["run_id"] for _, answer, _ in outcomes} == {run_dir.name}
    assert metrics_epochs(run_dir) == [1]


LAUNCHER = """
import json, sys
from pathlib import Path
from speedsign.config import resolve_config
from speedsign.jobs import launch
from speedsign.job import TrainRequest
for seed in range(5):
    config = resolve_config(approach="scratch",
                            overrides=dict(img_size=16, batch_size=12, epochs=1, seed=100 + seed))
    request = TrainRequest(config=config, data_dir=Path(sys.argv[1]), runs_dir=Path(sys.argv[2]), device="cpu")
    print(json.dumps(launch(request).to_json()), flush=True)
"""


def test_five_jobs_launched_at_once_run_one_at_a_time_and_outlive_the_launcher(
        tiny_data: Path, tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    # The launcher (the dashboard's process, say) starts five jobs and exits at once.
    launcher = subprocess.run([sys.executable, "-c", LAUNCHER, str(tiny_data), str(runs_dir)], cwd=REPO,
                              env=job_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert launcher.returncode == 0, launcher.stderr
    launched = [json.loads(line) for line in launcher.stdout.splitlines()]
    assert len(launched) == 5 and {entry["state"] for entry in launched} == {"queued"}
    run_dirs = [Path(entry["run_dir"]) for entry in launched]
    try:
        most_running, order = 0, []
        deadline = time.monotonic() + 2 * JOB_TIMEOUT
        while True:
            states = {d.name: runs.effective_state(status_of(d))[0] for d in run_dirs}
            running = [name for name, state in states.items() if state == "running"]
            if len(running) > 1:  # one may have finished between two reads: read those again
                running = [name for name in running
                           if runs.effective_state(status_of(runs_dir / name))[0] == "running"]
            most_running = max(most_running, len(running))
            order += [name for name in running if name not in order]
            if all(state in ("done", "failed", "cancelled") for state in states.values()):
                break
            assert time.monotonic() < deadline, f"jobs did not finish: {states}"
            time.sleep(0.05)
    finally:
        for entry in launched:  # a failed test must not leave jobs training in the background
            if runs.pid_alive(entry["pid"]) and jobs._is_speedsign_process(entry["pid"]):
                os.kill(entry["pid"], signal.SIGKILL)
    logs = {d.name: (d / "log.txt").read_text() for d in run_dirs}
    assert set(states.values()) == {"done"}, logs
    assert most_running == 1  # SPEEDSIGN_CONCURRENCY defaults to one job per device
    assert len(order) >= 3  # seen running one after another (a short job may slip between polls)
    for run_dir in run_dirs:
        assert metrics_epochs(run_dir) == [1] and "Traceback" not in logs[run_dir.name]


# ---------------------------------------------------------------- damaged run folders

def make_run(runs_dir: Path, run_id: str, *, state: str = "done", epoch: int = 2) -> Path:
    """A run folder as a finished job leaves it (checkpoint contents do not matter to listing)."""
    run_dir = runs_dir / run_id
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 2}).to_dict()
    storage.atomic_write_json({"format_version": runs.FORMAT_VERSION, "run_id": run_id, "config": config,
                               "classes": ["speed_20", "speed_30"]}, run_dir / "config.json")
    storage.atomic_write_json({"state": state, "epoch": epoch, "best_val_acc": 0.5,
                               "created": runs.now_iso()}, run_dir / "status.json")
    runs.write_metrics(run_dir, [{"epoch": e, "val_acc": 0.5} for e in range(1, epoch + 1)])
    for name in ("best.pt", "last.pt"):
        torch.save({"model": {}}, run_dir / name)
    return run_dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated status.json": (lambda d: _truncate(d / "status.json"), "status.json is damaged"),
    "status.json not an object": (lambda d: (d / "status.json").write_text("[1, 2]"), "status.json is not an object"),
    "status.json is a folder": (lambda d: ((d / "status.json").unlink(), (d / "status.json").mkdir()),
                                "status.json is damaged"),
    "half-written metrics line": (lambda d: open(d / "metrics.jsonl", "a").write('{"epoch": 3, "val_a'),
                                  "metrics.jsonl line 3 is partial or damaged"),
    "binary junk in metrics": (lambda d: open(d / "metrics.jsonl", "ab").write(b"\xff\xfe\x00garbage\n"),
                               "metrics.jsonl line 3 is partial or damaged"),
    "missing best.pt": (lambda d: (d / "best.pt").unlink(), "best.pt is missing"),
    "missing last.pt of a failed run": (
        lambda d: (runs.write_status(d, state="failed"), (d / "last.pt").unlink()), "last.pt is missing"),
    "newer format version": (
        lambda d: storage.atomic_write_json({**storage.read_json(d / "config.json"),
                                             "format_version": runs.FORMAT_VERSION + 1},
                                            d / "config.json"), "newer than this speedsign understands"),
    "missing config.json": (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    "truncated config.json": (lambda d: _truncate(d / "config.json"), "config.json is damaged"),
    "wrong types in status.json": (
        lambda d: storage.atomic_write_json({"state": "done", "epoch": "two", "best_val_acc": "high"},
                                            d / "status.json"),
        "status.json holds a bad epoch, best_val_acc"),
    "wrong types in metrics": (
        lambda d: (runs.write_metrics(d, [{"epoch": 1, "val_acc": "x"}, {"epoch": 2, "val_acc": None}]),
                   storage.atomic_write_json({"state": "done", "epoch": 2}, d / "status.json")), None),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_run_folder_is_listed_with_reason_and_runs_command_keeps_working(
        damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_dir = tmp_path / "runs"
    healthy = make_run(runs_dir, "scratch-20250101-aaaaaaaaaa")
    broken = make_run(runs_dir, "scratch-20250102-bbbbbbbbbb")
    harm, reason = DAMAGE[damage]
    harm(broken)
    listed = {info.run_id: info for info in runs.list_runs(runs_dir)}
    assert set(listed) == {healthy.name, broken.name}
    assert listed[healthy.name].damaged is None and listed[healthy.name].state == "done"
    if reason is None:  # odd but harmless values: shown, not trusted
        assert listed[broken.name].best_val_acc is None
    else:
        assert reason in (listed[broken.name].damaged or ""), listed[broken.name]
    json.dumps([info.to_json() for info in listed.values()], allow_nan=False)  # what pages and --json show
    assert jobs.queue(runs_dir) == []

    for argv in (["runs", "--runs-dir", str(runs_dir), "--json"], ["runs", "--runs-dir", str(runs_dir)]):
        assert cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {row["run_id"]: row for row in json.loads(out[0])["runs"]}
    assert rows[healthy.name]["damaged"] is None
    if reason is not None:
        assert reason in rows[broken.name]["damaged"]
        assert any(broken.name in line and "DAMAGED" in line for line in out[1:])


def test_relaunching_a_run_with_truncated_status_json_trains_it(tiny_data: Path, tmp_path: Path, one_thread) -> None:
    runs_dir = tmp_path / "runs"
    config = resolve_config(approach="scratch", overrides=overrides(epochs=1, seed=5, batch_size=12))
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=runs_dir, device="cpu")
    run_dir = plan_run(request).run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text('{"state": "runn')
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"half of a checkpoint")  # a killed job's leftover
    result = train_run(request)
    assert result.state == "done" and result.epochs_run == 1
    assert runs.inspect_run(run_dir).damaged is None and leftover_temporaries(run_dir) == []


# ---------------------------------------------------------------- disk full, read-only store

def _finished_epochs_then(request: TrainRequest, patch: pytest.MonkeyPatch, *, fail: str) -> dict[str, Any]:
    """Let epoch 1 save its checkpoints, then make the run store refuse writes.

    "full": fsync of any file over 1 MB fails with ENOSPC (small status writes still fit, as
    on a disk with a few KB left; the temporary file is really written first).
    "read-only": creating any file fails with EROFS, status.json included.
    Returns what the test needs to know: the best.pt bytes just before the first refusal.
    """
    seen: dict[str, Any] = {"big_writes": 0, "last_writes": 0, "best_before": None}
    best = plan_run(request).run_dir / "best.pt"

    def remember_best() -> None:
        if seen["best_before"] is None:
            seen["best_before"] = best.read_bytes()

    if fail == "full":
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.fstat(fd).st_size > 1024**2:
                seen["big_writes"] += 1
                # last.pt before epoch 1, best.pt and last.pt of epoch 1: then the disk is full
                if seen["big_writes"] > 3:
                    remember_best()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        patch.setattr(os, "fsync", fsync)
    else:
        real_mkstemp = tempfile.mkstemp

        def mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
            if seen["last_writes"] >= 2:  # last.pt before epoch 1 and after it were saved
                remember_best()
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))
            if str(kwargs.get("prefix", "")).startswith(".last.pt."):
                seen["last_writes"] += 1
            return real_mkstemp(*args, **kwargs)

        patch.setattr(storage.tempfile, "mkstemp", mkstemp)
    return seen


@pytest.mark.parametrize("fail, reason", [("full", "No space left on device"),
                                          ("read-only", "Read-only file system")])
def test_disk_full_or_read_only_store_fails_job_with_reason_and_keeps_best_pt(
        fail: str, reason: str, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        one_thread) -> None:
    config = resolve_config(approach="scratch", overrides=overrides(epochs=3, seed=6, batch_size=12))
    request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=tmp_path / "runs", device="cpu")
    with monkeypatch.context() as patch:
        seen = _finished_epochs_then(request, patch, fail=fail)
        result = train_run(request)

    assert result.state == "failed" and reason in (result.error or ""), result
    assert seen["best_before"] is not None, "the store never refused a write"
    run_dir = result.run_dir
    assert (run_dir / "best.pt").read_bytes() == seen["best_before"]  # intact, byte for byte
    assert Predictor(run_dir).classes  # and loadable
    assert load_last(run_dir)["fit_state"]["epoch"] >= 1  # resumable
    assert leftover_temporaries(run_dir) == []
    if fail == "full":  # the small status write still fit: every reader sees the reason
        info = runs.inspect_run(run_dir)
        assert info.state == "failed" and reason in (info.status.error or "")
    assert not locks.is_locked(run_dir)
