"""speedsign.runs and speedsign.storage: atomic writes, run folders, run ids, status, metrics, listing
(DESIGN.md section 3)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from speedsign import runs, storage
from speedsign.runs import RunDir, RunStatus


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_whole_file_and_a_failed_write_keeps_the_old_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deep" / "best.pt"
    storage.atomic_write_bytes(b"old" * 1000, path)
    storage.atomic_write_bytes(b"new", path)
    assert path.read_bytes() == b"new" and temporaries(path.parent) == []

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        storage.atomic_write_bytes(b"half" * 10**6, path)
    assert path.read_bytes() == b"new" and temporaries(path.parent) == []


def test_readers_never_see_half_a_file_while_it_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    versions = [{"state": "running", "pad": "a" * 200_000}, {"state": "done", "pad": "b" * 300_000}]
    storage.atomic_write_json(versions[0], path)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            storage.atomic_write_json(versions[i % 2], path)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            assert storage.read_json(path) in versions
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- run ids

def test_run_id_is_readable_and_same_config_same_id_any_day(tmp_path: Path) -> None:
    identity = {"config": {"approach": "scratch", "lr": 0.1}, "data": "abc", "weights": "none"}
    digest = runs.config_hash(identity)
    assert digest == runs.config_hash({"weights": "none", "data": "abc", "config": {"lr": 0.1, "approach": "scratch"}})
    assert digest != runs.config_hash({**identity, "data": "abd"})
    run_id = runs.make_run_id("scratch", digest, now=datetime(2025, 3, 4, tzinfo=UTC))
    assert run_id == f"scratch-20250304-{digest}" and runs.is_valid_run_id(run_id)
    (tmp_path / run_id).mkdir()
    assert runs.find_run_by_hash(tmp_path, digest) == tmp_path / run_id  # found on a later day too
    assert runs.find_run_by_hash(tmp_path, "0" * runs.RUN_ID_HASH_CHARS) is None
    assert runs.find_run_by_hash(tmp_path / "missing", digest) is None


# ---------------------------------------------------------------- status

def test_write_status_merges_fields_and_recovers_a_damaged_file(tmp_path: Path) -> None:
    runs.write_status(tmp_path, state="queued", epoch=0)
    status = runs.write_status(tmp_path, state="running")
    assert status.state == "running" and status.epoch == 0 and status.updated is not None
    (tmp_path / "status.json").write_text('{"state": "runn')
    assert "damaged" in (runs.read_status(tmp_path).damaged or "")  # a value, never an exception
    assert runs.write_status(tmp_path, state="failed").state == "failed"
    assert runs.read_status(tmp_path / "missing") == RunStatus()


def test_write_status_merges_into_what_is_stored_and_returns_it(tmp_path: Path) -> None:
    runs.write_status(tmp_path, state="running", epoch=3, host="h", error=None)
    merged = runs.write_status(tmp_path, epoch=4, phase="training")
    assert (merged.state, merged.epoch, merged.host, merged.phase) == ("running", 4, "h", "training")
    assert runs.read_status(tmp_path) == merged  # what it returns is what status.json now holds
    # A wrong-typed field is dropped; the readable fields survive the next write.
    storage.atomic_write_json({"state": "running", "epoch": "four", "host": "h"}, tmp_path / "status.json")
    repaired = runs.write_status(tmp_path, phase="saving")
    assert (repaired.state, repaired.host, repaired.epoch, repaired.damaged) == ("running", "h", 0, None)
    assert storage.read_json(tmp_path / "status.json")["epoch"] == 0
    # A file that is not a status at all is replaced by a fresh one.
    (tmp_path / "status.json").write_text("[1, 2]")
    fresh = runs.write_status(tmp_path, state="queued")
    assert fresh.state == "queued" and fresh.host is None and fresh.damaged is None
    assert runs.read_status(tmp_path) == fresh


def test_run_status_parse_reports_wrong_typed_fields_and_keeps_the_rest() -> None:
    status = RunStatus.parse({"state": "running", "pid": "123", "epoch": "two", "epochs": 5, "heartbeat": True,
                              "best_val_acc": float("nan"), "world_size": 2.5, "host": "h", "queued_at": 7,
                              "a_newer_field": [1]})
    assert status.exists and status.state == "running" and status.host == "h" and status.epochs == 5
    assert status.queued_at == 7.0 and type(status.queued_at) is float
    assert status.pid is None and status.heartbeat is None and status.best_val_acc is None
    assert status.world_size is None and status.epoch == 0  # a count reads as 0, never None
    assert status.damaged is not None and status.damaged.startswith("status.json holds a bad")
    for name in ("pid", "epoch", "heartbeat", "best_val_acc", "world_size"):
        assert name in status.damaged, name
    for name in ("state", "epochs", "host", "queued_at", "a_newer_field"):
        assert name not in status.damaged, name
    wrong_state = RunStatus.parse({"state": 3, "epoch": 2.0})
    assert wrong_state.state == "unknown" and "state" in wrong_state.damaged
    assert wrong_state.epoch == 2 and type(wrong_state.epoch) is int
    clean = RunStatus.parse({"state": "done", "epoch": 2, "best_val_acc": 0.5, "error": None})
    assert clean.damaged is None and RunStatus.parse(clean.to_json()) == clean
    assert "exists" not in clean.to_json() and "damaged" not in clean.to_json()


@pytest.mark.parametrize("content, words", [
    (b'{"state": "runn', "status.json is damaged"),
    (b"\xff\xfe\x00 not text", "status.json is damaged"),
    (b"[1, 2]", "status.json is not an object"),
    (b'"done"', "status.json is not an object"),
    (b"null", "status.json is not an object"),
], ids=["truncated", "binary", "list", "string", "null"])
def test_read_status_of_a_damaged_file_is_a_value_not_an_error(content: bytes, words: str, tmp_path: Path) -> None:
    (tmp_path / "status.json").write_bytes(content)
    status = runs.read_status(tmp_path)
    assert status.exists and status.state == "unknown" and words in (status.damaged or "")
    assert runs.inspect_run(tmp_path).damaged is not None and words in runs.inspect_run(tmp_path).damaged


def test_read_status_of_a_missing_file_or_folder_says_it_does_not_exist(tmp_path: Path) -> None:
    for run_dir in (tmp_path, tmp_path / "missing"):
        status = runs.read_status(run_dir)
        assert status == RunStatus() and not status.exists and status.damaged is None
        assert status.state == "unknown" and status.epoch == 0


HOSTILE_STATUS = {
    # Python's json turns these into values the number checks cannot take, or raises on them itself.
    "integer too large for a float": '{"state": "done", "epoch": 1' + "0" * 400 + "}",
    "integer past the digit limit": '{"state": "done", "epoch": 1' + "0" * 5000 + "}",
    "nesting past the recursion limit": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("content", list(HOSTILE_STATUS.values()), ids=list(HOSTILE_STATUS))
def test_read_status_and_listing_survive_absurd_numbers_and_nesting(content: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "scratch-20250101-aaaaaaaaaa"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(content)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 1' + "0" * 400 + "}\n")
    status = runs.read_status(run_dir)  # never raises
    assert status.exists and status.damaged is not None
    assert runs.list_runs(tmp_path / "runs")[0].damaged is not None


# ---------------------------------------------------------------- run folders

def test_run_dir_spells_every_file_of_a_run_folder(tmp_path: Path) -> None:
    folder = RunDir(str(tmp_path / "scratch-20250101-aaaa"))  # a str is made a Path
    assert isinstance(folder.path, Path) and folder.path == tmp_path / "scratch-20250101-aaaa"
    assert folder.run_id == "scratch-20250101-aaaa" and RunDir(folder.path) == folder
    names = {"config": "config.json", "status": "status.json", "metrics": "metrics.jsonl", "best": "best.pt",
             "last": "last.pt", "predictions": "predictions_val.npz", "evaluation": "eval_val.json",
             "log": "log.txt", "cancel_marker": "cancel.request", "lock_file": ".lock", "budget": "budget.json",
             "predictions_test": "predictions_test.npz", "evaluation_test": "eval_test.json",
             "calibration": "calibration.json"}
    for attribute, name in names.items():
        assert getattr(folder, attribute) == folder.path / name, attribute
    assert (RunDir.BEST, RunDir.LAST, RunDir.STATUS, RunDir.CONFIG) == ("best.pt", "last.pt", "status.json",
                                                                        "config.json")
    # What --force forgets: everything a training writes, never config.json or status.json.
    assert set(RunDir.OUTPUTS) == {"metrics.jsonl", "best.pt", "last.pt", "predictions_val.npz", "eval_val.json",
                                   "budget.json", "predictions_test.npz", "eval_test.json", "calibration.json"}
    assert not folder.is_finished() and not folder.read_status().exists
    assert folder.write_status(state="done").state == "done" == folder.read_status().state
    assert not folder.is_finished()  # done, but without the best.pt it promises
    folder.best.write_bytes(b"a model")
    assert folder.is_finished()


def test_cancel_marker_is_seen_and_cleared_and_clear_before_keeps_a_newer_one(tmp_path: Path) -> None:
    folder = RunDir(tmp_path)
    assert not folder.cancel_requested()
    folder.clear_cancel()  # no marker: harmless
    folder.mark_cancel()
    assert folder.cancel_requested() and folder.cancel_marker.exists()
    marked_at = float(folder.cancel_marker.read_text())
    assert abs(marked_at - time.time()) < 60
    folder.clear_cancel(before=marked_at - 10)  # pressed after that moment: kept
    assert folder.cancel_requested()
    folder.clear_cancel(before=marked_at)  # pressed at that very moment: kept too
    assert folder.cancel_requested()
    folder.clear_cancel(before=marked_at + 0.01)  # pressed before it: gone
    assert not folder.cancel_requested()
    folder.mark_cancel()
    folder.clear_cancel()
    folder.clear_cancel()  # twice is harmless
    assert not folder.cancel_requested()
    # A marker without a time in it (made by hand) is dated by the file's own time.
    folder.cancel_marker.write_text("now")
    written = folder.cancel_marker.stat().st_mtime
    folder.clear_cancel(before=written - 60)
    assert folder.cancel_requested()
    folder.clear_cancel(before=written + 60)
    assert not folder.cancel_requested()


def test_pid_alive_is_false_for_dead_and_zombie_processes() -> None:
    assert runs.pid_alive(os.getpid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while runs.pid_alive(zombie.pid) and time.monotonic() < deadline:  # exited, not reaped yet
        time.sleep(0.05)
    assert not runs.pid_alive(zombie.pid)
    zombie.wait()
    assert not runs.pid_alive(zombie.pid)
    for bad in (None, "123", -1, 0, True):
        assert not runs.pid_alive(bad)


def test_effective_state_only_overrides_active_states() -> None:
    now = time.time()
    old = now - runs.STALE_SECONDS - 10
    host = socket.gethostname()
    for state in ("done", "failed", "cancelled"):
        status = RunStatus.parse({"state": state, "heartbeat": old, "host": host, "pid": 10**7})
        assert runs.effective_state(status) == (state, None)
    state, reason = runs.effective_state(RunStatus.parse({"state": "queued", "heartbeat": old}))
    assert state == "failed" and "no heartbeat" in reason
    status = RunStatus.parse({"state": "running", "heartbeat": now, "host": host, "pid": os.getpid()})
    assert runs.effective_state(status) == ("running", None)


# ---------------------------------------------------------------- metrics

def test_metrics_append_replaces_a_repeated_epoch_and_truncate_keeps_each_once(tmp_path: Path) -> None:
    for epoch in (1, 2, 3, 2):  # epoch 2 again: a resumed run re-ran it
        runs.append_metrics(tmp_path, {"epoch": epoch, "val_acc": epoch / 10})
    rows, problem = runs.read_metrics(tmp_path)
    assert problem is None and sorted(r["epoch"] for r in rows) == [1, 2, 3]
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as file:
        file.write('{"epoch": 4, "val_')  # a crash mid-line (an older writer)
    rows, problem = runs.read_metrics(tmp_path)
    assert len(rows) == 3 and "line 4 is partial" in problem
    runs.truncate_metrics(tmp_path, last_epoch=2)
    rows, problem = runs.read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and problem is None
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
    assert runs.read_metrics(tmp_path / "missing") == ([], None)


# ---------------------------------------------------------------- listing

def test_list_runs_newest_first_skipping_hidden_and_invalid_names(tmp_path: Path) -> None:
    for name, created in (("scratch-20250101-aaaa", "2025-01-01T00:00:00+00:00"),
                          ("frozen-20250301-bbbb", "2025-03-01T00:00:00+00:00"),
                          ("finetune-20250201-cccc", "2025-02-01T00:00:00+00:00")):
        storage.atomic_write_json({"state": "done", "created": created, "epoch": 1}, tmp_path / name / "status.json")
    (tmp_path / ".slots").mkdir()
    (tmp_path / "not a run!").mkdir()
    (tmp_path / "file.txt").write_text("x")
    listed = runs.list_runs(tmp_path)
    assert [r.run_id for r in listed] == ["frozen-20250301-bbbb", "finetune-20250201-cccc", "scratch-20250101-aaaa"]
    assert all(r.damaged == "config.json is missing; best.pt is missing" for r in listed)
    assert runs.list_runs(tmp_path / "missing") == []
    json.dumps([r.to_json() for r in listed], allow_nan=False)


def test_failed_run_shows_why_even_when_status_says_error_null(tmp_path: Path) -> None:
    storage.atomic_write_json({"state": "running", "error": None, "host": socket.gethostname(), "pid": 10**7,
                            "heartbeat": time.time()}, tmp_path / "status.json")
    info = runs.inspect_run(tmp_path)
    assert info.state == "failed" and "gone" in info.status.error
    assert isinstance(info.status, RunStatus) and info.status.state == "running"  # stored state, kept as is
    assert info.error == info.status.error and info.config == {}  # no config.json
