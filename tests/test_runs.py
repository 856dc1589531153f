"""speedsign.runs: atomic writes, run ids, status, metrics, listing (DESIGN.md section 3)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from speedsign import runs


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_whole_file_and_a_failed_write_keeps_the_old_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deep" / "best.pt"
    runs.atomic_write_bytes(b"old" * 1000, path)
    runs.atomic_write_bytes(b"new", path)
    assert path.read_bytes() == b"new" and temporaries(path.parent) == []

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        runs.atomic_write_bytes(b"half" * 10**6, path)
    assert path.read_bytes() == b"new" and temporaries(path.parent) == []


def test_readers_never_see_half_a_file_while_it_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    versions = [{"state": "running", "pad": "a" * 200_000}, {"state": "done", "pad": "b" * 300_000}]
    runs.atomic_write_json(versions[0], path)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            runs.atomic_write_json(versions[i % 2], path)
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            assert runs.read_json(path) in versions
    finally:
        stop.set()
        thread.join()


# ---------------------------------------------------------------- run ids

def test_run_id_is_readable_and_same_config_same_id_any_day(tmp_path: Path) -> None:
    identity = {"config": {"approach": "scratch", "lr": 0.1}, "data": "abc", "weights": "none"}
    digest = runs.config_hash(identity)
    assert digest == runs.config_hash({"weights": "none", "data": "abc", "config": {"lr": 0.1, "approach": "scratch"}})
    assert digest != runs.config_hash({**identity, "data": "abd"})
    run_id = runs.make_run_id("scratch", digest, now=datetime(2025, 3, 4, tzinfo=timezone.utc))
    assert run_id == f"scratch-20250304-{digest}" and runs.is_valid_run_id(run_id)
    (tmp_path / run_id).mkdir()
    assert runs.find_run_by_hash(tmp_path, digest) == tmp_path / run_id  # found on a later day too
    assert runs.find_run_by_hash(tmp_path, "0" * runs.RUN_ID_HASH_CHARS) is None
    assert runs.find_run_by_hash(tmp_path / "missing", digest) is None


# ---------------------------------------------------------------- status

def test_write_status_merges_fields_and_recovers_a_damaged_file(tmp_path: Path) -> None:
    runs.write_status(tmp_path, state="queued", epoch=0)
    status = runs.write_status(tmp_path, state="running")
    assert status["state"] == "running" and status["epoch"] == 0 and "updated" in status
    (tmp_path / "status.json").write_text('{"state": "runn')
    with pytest.raises(ValueError, match="damaged"):
        runs.read_status(tmp_path)
    assert runs.write_status(tmp_path, state="failed")["state"] == "failed"
    assert runs.read_status(tmp_path / "missing") == {}


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
        assert runs.effective_state({"state": state, "heartbeat": old, "host": host, "pid": 10**7}) == (state, None)
    state, reason = runs.effective_state({"state": "queued", "heartbeat": old})
    assert state == "failed" and "no heartbeat" in reason
    assert runs.effective_state({"state": "running", "heartbeat": now, "host": host, "pid": os.getpid()}) == \
        ("running", None)


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
        runs.atomic_write_json({"state": "done", "created": created, "epoch": 1}, tmp_path / name / "status.json")
    (tmp_path / ".slots").mkdir()
    (tmp_path / "not a run!").mkdir()
    (tmp_path / "file.txt").write_text("x")
    listed = runs.list_runs(tmp_path)
    assert [r.run_id for r in listed] == ["frozen-20250301-bbbb", "finetune-20250201-cccc", "scratch-20250101-aaaa"]
    assert all(r.damaged == "config.json is missing; best.pt is missing" for r in listed)
    assert runs.list_runs(tmp_path / "missing") == []
    json.dumps([r.to_json() for r in listed], allow_nan=False)


def test_failed_run_shows_why_even_when_status_says_error_null(tmp_path: Path) -> None:
    runs.atomic_write_json({"state": "running", "error": None, "host": socket.gethostname(), "pid": 10**7,
                            "heartbeat": time.time()}, tmp_path / "status.json")
    info = runs.inspect_run(tmp_path)
    assert info.state == "failed" and "gone" in info.status["error"]
