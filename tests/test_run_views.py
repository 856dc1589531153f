"""What the pages show of runs: labels, usability, tables, job progress, curves."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from speedsign import run_views
from speedsign.errors import UserError
from speedsign.progress import format_seconds
from speedsign.runs import FORMAT_VERSION, RunDir, inspect_run
from speedsign.storage import atomic_write_json, atomic_write_text


def fake_job(runs_dir: Path, *, state: str = "running", run_id: str = "scratch-20990101-fakejob01",
             error: str | None = None, epoch: int = 1) -> Path:
    """A run folder that says a job is at work (live pid on this host, fresh heartbeat)."""
    folder = RunDir(runs_dir / run_id)
    atomic_write_json({"format_version": FORMAT_VERSION, "run_id": run_id,
                       "config": {"approach": "scratch", "epochs": 2}, "classes": ["a", "b"]}, folder.config)
    status = {"state": state, "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(),
              "epoch": epoch, "epochs": 2, "step": 1, "steps": 4, "phase": "training",
              "created": "2099-01-01T00:00:00+00:00", "queued_at": time.time(), "device_key": "cpu"}
    if error:
        status["error"] = error
    atomic_write_json(status, folder.status)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 1.2 / e, "val_acc": 0.4,
             "lr": 0.1 / e, "seconds": 10.0} for e in range(1, epoch + 1)]
    atomic_write_text("".join(json.dumps(row) + "\n" for row in rows), folder.metrics)
    return folder.path


def test_job_view_estimates_time_left_from_epoch_durations(tmp_path: Path) -> None:
    run_dir = fake_job(tmp_path)
    info = inspect_run(run_dir)
    rows = [{"epoch": 1, "seconds": 10.0, "val_acc": 0.5, "images_per_s": 100.0}]
    view = run_views.job_view(info, rows)
    assert view.state == "running" and view.active
    assert view.epoch == 1 and view.epochs == 2
    assert view.fraction == pytest.approx((1 + 1 / 4) / 2)
    assert view.seconds_left == pytest.approx(10.0 * (2 - 1 - 0.25))
    assert format_seconds(view.seconds_left) == "8 s"
    assert view.progress_text == "epoch 1/2 · training · 8 s left"
    frame = run_views.queue_frame([{"run_id": "a", "state": "queued", "queued_at": 100.0, "epoch": 0,
                                    "device": "cpu"}], now=190.0)
    assert frame.iloc[0]["since"] == "1 min 30 s ago"


def test_failed_job_view_carries_its_error(tmp_path: Path) -> None:
    info = inspect_run(fake_job(tmp_path, state="failed", error="out of memory", epoch=0))  # no last.pt due
    view = run_views.job_view(info, [])
    assert view.state == "failed" and not view.active and view.error == "out of memory"
    table = run_views.run_table([info])
    assert list(table.columns) == list(run_views.RUN_TABLE_COLUMNS)
    assert table.iloc[0]["problem"] == "out of memory" and table.iloc[0]["epoch"] == "0/2"


def test_labels_usable_and_damage(tmp_path: Path) -> None:
    info = inspect_run(fake_job(tmp_path))
    assert run_views.run_label(info) == "scratch-20990101-fakejob01 · val 0.400 · running"
    assert run_views.is_active(info) and not run_views.is_usable(info)
    damaged = tmp_path / "scratch-20990101-broken"
    damaged.mkdir()
    (damaged / RunDir.STATUS).write_text('{"state": "do')
    frame = run_views.damaged_frame([info, inspect_run(damaged)])
    assert frame["run"].tolist() == ["scratch-20990101-broken"] and "damaged" in frame.iloc[0]["problem"]


def test_runs_signature_changes_with_a_new_epoch(tmp_path: Path) -> None:
    run_dir = fake_job(tmp_path)
    before = run_views.runs_signature(tmp_path)
    assert [entry[0] for entry in before] == [run_dir.name]
    time.sleep(0.01)
    atomic_write_text(RunDir(run_dir).metrics.read_text() + '{"epoch": 2}\n', RunDir(run_dir).metrics)
    assert run_views.runs_signature(tmp_path) != before
    assert run_views.runs_signature(tmp_path / "missing") == ()


def test_mtime_of_a_deleted_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is gone"):
        run_views.mtime_ns(tmp_path / RunDir.BEST)


def test_curves_and_lr_frames_skip_unreadable_rows() -> None:
    metrics = {"run-a": [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4,
                          "lr": 0.1}, {"epoch": "two", "train_loss": 0.5}, {"epoch": 2, "val_loss": None}]}
    curves = run_views.curves_frame(metrics)
    assert curves[["run", "epoch", "split"]].values.tolist() == [["run-a", 1, "train"], ["run-a", 1, "val"]]
    assert run_views.lr_frame(metrics)["lr"].tolist() == [0.1]
