"""What the pages show of runs: labels, usability, tables, job progress, recent jobs, messages, curves."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from speedsign import jobs, models, run_views
from speedsign.errors import UserError
from speedsign.progress import format_seconds
from speedsign.runs import FORMAT_VERSION, RunDir, RunInfo, RunStatus, inspect_run
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


def run_info(run_id: str, state: str, *, ended: float | None = None, queued_at: float | None = None,
             best: float | None = None, created: str | None = None) -> RunInfo:
    """A RunInfo as inspect_run gives it, without a folder (recent_jobs reads only the values)."""
    status = RunStatus(state=state, exists=True, queued_at=queued_at, created=created,
                       updated=None if ended is None else datetime.fromtimestamp(ended, UTC).isoformat())
    return RunInfo(run_id=run_id, run_dir=Path("/nowhere") / run_id, approach="scratch", state=state, epoch=1,
                   epochs=2, best_val_acc=best, damaged=None, config={}, status=status)


def test_recent_jobs_every_active_run_then_recent_ended_ones_newest_first() -> None:
    now = 1_000_000.0
    runs = [
        run_info("scratch-a-old", "failed", ended=now - 3 * 24 * 3600),
        run_info("scratch-b-done", "done", ended=now - 3600),
        run_info("scratch-c-queued", "queued", queued_at=now - 10),
        run_info("scratch-d-failed", "failed", ended=now - 60),
        run_info("scratch-e-running", "running", queued_at=now - 100),
        run_info("scratch-f-cancelled", "cancelled", ended=now - 7200),
        run_info("scratch-g-damaged", "unknown"),
    ]
    ids = [info.run_id for info in run_views.recent_jobs(runs, now=now)]
    assert ids == ["scratch-e-running", "scratch-c-queued", "scratch-d-failed", "scratch-b-done",
                   "scratch-f-cancelled"]
    # Launched from this session: listed whatever its age.
    pinned = run_views.recent_jobs(runs, now=now, pinned=["scratch-a-old"])
    assert [info.run_id for info in pinned][-1] == "scratch-a-old"
    # At most `limit`, but an active run is never left out, nor a pinned one.
    assert [i.run_id for i in run_views.recent_jobs(runs, now=now, limit=3)] == \
        ["scratch-e-running", "scratch-c-queued", "scratch-d-failed"]
    assert [i.run_id for i in run_views.recent_jobs(runs, now=now, limit=1, pinned=["scratch-b-done"])] == \
        ["scratch-e-running", "scratch-c-queued", "scratch-b-done"]
    assert run_views.recent_jobs([], now=now) == []


def test_recent_jobs_ended_time_falls_back_to_older_fields() -> None:
    now = 1_000_000.0
    created_only = run_info("scratch-x", "failed", created=datetime.fromtimestamp(now - 50, UTC).isoformat())
    future = run_info("scratch-y", "failed", created="2099-01-01T00:00:00+00:00")  # another machine's clock
    nothing = run_info("scratch-z", "failed")
    assert run_views.ended_at(created_only) == pytest.approx(now - 50)
    assert [i.run_id for i in run_views.recent_jobs([created_only, future, nothing], now=now)] == \
        ["scratch-y", "scratch-x"]
    assert run_views.ended_at(run_info("scratch-r", "running", queued_at=now)) is None


def test_newly_ended_announces_a_watched_job_once() -> None:
    watched: set[str] = set()
    announced: set[str] = set()
    running = run_info("scratch-a", "running")
    already_done = run_info("scratch-b", "done", ended=10.0)
    assert run_views.newly_ended([running, already_done], watched, announced) == []
    assert watched == {"scratch-a"}  # a run first seen done is never announced
    done = run_info("scratch-a", "done", ended=20.0)
    assert [i.run_id for i in run_views.newly_ended([done, already_done], watched, announced)] == ["scratch-a"]
    assert run_views.newly_ended([done], watched, announced) == []


def test_queue_entries_come_from_the_same_read_as_the_cards(tmp_path: Path) -> None:
    live = inspect_run(fake_job(tmp_path))
    dead = inspect_run(fake_job(tmp_path, run_id="scratch-20990101-fakejob02"))
    dead = dataclasses.replace(dead, state="failed")  # as effective_state reads a dead job
    entries = jobs.queue_of([run_info("scratch-q", "queued", queued_at=5.0), dead, live])
    assert [e["run_id"] for e in entries] == [live.run_id, "scratch-q"]
    frame = run_views.queue_frame([{"run_id": "a", "state": "queued", "epoch": None}])
    assert frame.iloc[0][["epoch", "device", "since"]].tolist() == ["–", "–", "–"]


def test_run_table_has_no_none_and_readable_times(tmp_path: Path) -> None:
    info = inspect_run(fake_job(tmp_path, state="failed", error="out of memory", epoch=0))
    no_metrics = run_info("scratch-20990101-nothing", "done", ended=1_000_000.0,
                          created="2026-12-03T14:05:00+00:00")
    table = run_views.run_table([info, no_metrics], now=1_000_000.0 + 120)
    assert "None" not in table.to_csv() and "nan" not in table.to_csv()
    row = table.set_index("run").loc["scratch-20990101-nothing"]
    assert row["best val acc"] == "–" and row["ended"] == "2 min ago"
    assert row["created"] == datetime(2026, 12, 3, 14, 5, tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    assert table.set_index("run").loc[info.run_id, "ended"] != "–"
    assert run_views.format_number(0.97864) == "0.979" and run_views.format_number(None) == "–"
    assert run_views.format_number(float("nan")) == "–"
    assert run_views.job_times(no_metrics, now=1_000_000.0 + 120).startswith("created 2026-12-03")


def test_offline_imagenet_errors_are_shown_in_the_apps_words(tmp_path: Path) -> None:
    cli = models._offline_message(models.imagenet_weights_path())
    assert "--weights" in cli  # the command line keeps its advice
    page = run_views.page_error(cli)
    assert page and models.OFFLINE_REASON in page and "--weights" not in page and "train scratch first" in page
    assert run_views.page_error(f"{cli} (URLError: no route)") == page
    assert run_views.page_error("out of memory") == "out of memory" and run_views.page_error(None) is None
    info = inspect_run(fake_job(tmp_path, state="failed", error=cli, epoch=0))
    assert run_views.job_view(info, []).error == page
    assert "--weights" not in run_views.run_table([info]).to_csv()


def curve_run(run_id: str, state: str, *, fingerprint: str = "mine", damaged: str | None = None,
              error: str | None = None) -> RunInfo:
    return RunInfo(run_id=run_id, run_dir=Path(run_id), approach=run_id.split("-")[0], state=state, epoch=1,
                   epochs=2, best_val_acc=0.5, damaged=damaged, config={"data_fingerprint": fingerprint},
                   status=RunStatus(state=state, exists=True, error=error))


def test_curves_draw_unasked_this_data_sets_running_then_finished_runs() -> None:
    runs = [curve_run("scratch-9", "done", fingerprint="theirs"), curve_run("frozen-8", "failed", error="boom"),
            curve_run("scratch-7", "done"), curve_run("scratch-6", "cancelled"), curve_run("finetune-5", "running"),
            curve_run("frozen-4", "done", damaged="last.pt is missing"), curve_run("frozen-3", "done")]
    assert run_views.default_curve_runs(runs, fingerprint="mine") == ["finetune-5", "scratch-7", "frozen-3"]
    assert run_views.default_curve_runs(runs, fingerprint="mine", limit=2) == ["finetune-5", "scratch-7"]
    # No data set chosen: every data set's runs count.
    assert run_views.default_curve_runs(runs, fingerprint=None) == ["finetune-5", "scratch-9", "scratch-7", "frozen-3"]
    assert run_views.default_curve_runs(runs, fingerprint="nobody's") == []
    assert run_views.on_dataset(runs[0], "theirs") and not run_views.on_dataset(runs[0], "mine")
    assert len(run_views.default_curve_runs([curve_run(f"scratch-{i}", "done") for i in range(9)],
                                            fingerprint="mine")) == run_views.CURVES_DEFAULT_RUNS


def test_failure_frame_lists_each_failed_run_once_with_its_reason() -> None:
    runs = [curve_run("frozen-8", "failed", error="out of memory"), curve_run("scratch-7", "done"),
            curve_run("scratch-6", "failed"), curve_run("frozen-8", "failed", error="out of memory"),
            curve_run("finetune-5", "failed", error=models.OFFLINE_REASON)]
    frame = run_views.failure_frame(runs)
    assert list(frame.columns) == ["run", "reason"]
    assert frame["run"].tolist() == ["frozen-8", "scratch-6", "finetune-5"]
    assert frame["reason"].tolist()[:2] == ["out of memory", f"no reason recorded (see its {RunDir.LOG})"]
    assert frame["reason"].tolist()[2] == run_views.page_error(models.OFFLINE_REASON)  # the app's advice
    assert run_views.failure_frame([]).empty
