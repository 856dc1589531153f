"""job.py + the run store contract: complete run folders, cached relaunch, --force, run ids."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speedsign import evaluation
from speedsign.calibration import read_calibration
from speedsign.config import resolve_config
from speedsign.errors import UserError
from speedsign.job import (
    Inputs,
    TrainRequest,
    launched_at,
    load_resume,
    plan_run,
    read_request,
    reserve_for_test,
    train_run,
)
from speedsign.locks import run_lock
from speedsign.metrics import evaluation_report
from speedsign.predict import Predictor
from speedsign.runs import (
    FORMAT_VERSION,
    RunDir,
    RunStatus,
    StatusWriter,
    inspect_run,
    list_runs,
    read_metrics,
    read_status,
)
from speedsign.storage import atomic_write_json, read_json

from conftest import APPROACHES, tiny_overrides, training_in_process


@pytest.mark.parametrize("approach", APPROACHES)
def test_a_finished_run_folder_holds_every_contract_file(approach: str, runs_with_results: dict[str, Path]) -> None:
    run_dir = runs_with_results[approach]
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["config"]["approach"] == approach
    assert meta["classes"][:3] == ["speed_20", "speed_30", "speed_50"] and len(meta["classes"]) == 9
    assert len(meta["data_fingerprint"]) == 16
    # How it was run, as a background job reads it back (conftest trains on the cpu).
    assert meta["request"] == {"device": "cpu", "force": False, "compile": False, "precision": "auto"}
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 2 and "heartbeat" in status
    rows, problem = read_metrics(run_dir)
    assert problem is None and [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(rows[0])
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run_dir / name, weights_only=True)
        assert {"model", "config", "classes"} <= set(payload)
    predictions = np.load(run_dir / "predictions_val.npz")
    assert predictions["probs"].shape == (len(predictions["labels"]), 9)
    assert np.allclose(predictions["probs"].sum(1), 1, atol=1e-4)
    assert (run_dir / "log.txt").exists() or True  # log.txt is written by background jobs
    calibration, problem = read_calibration(run_dir)  # the temperature fitted on val
    assert problem is None and calibration is not None and calibration.n == len(predictions["labels"])
    assert calibration.nll_after <= calibration.nll_before
    assert not (run_dir / "predictions_test.npz").exists()  # the synthetic set has no test/
    assert not (run_dir / "eval_test.json").exists()
    info = inspect_run(run_dir)
    assert info.damaged is None and info.config == meta  # RunInfo.config is config.json as stored
    assert isinstance(info.status, RunStatus) and info.status.state == "done" and info.status.epoch == 2


def test_relaunching_a_finished_config_returns_it_cached_at_once(runs_with_results: dict[str, Path],
                                                                  synth_dir: Path, weights_file: Path) -> None:
    run_dir = runs_with_results["scratch"]
    config = resolve_config(approach="scratch", overrides=tiny_overrides("scratch", weights_file))
    started = time.perf_counter()
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=run_dir.parent, device="cpu"))
    assert result.cached and result.state == "done" and result.run_dir == run_dir
    assert time.perf_counter() - started < 5


def test_run_id_names_config_and_data_and_survives_a_new_day(runs_with_results: dict[str, Path], synth_dir: Path,
                                                             weights_file: Path, tmp_path: Path) -> None:
    runs_dir = runs_with_results["scratch"].parent
    config = resolve_config(approach="scratch", overrides=tiny_overrides("scratch", weights_file))
    plan = plan_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=runs_dir))
    assert plan.run_id == runs_with_results["scratch"].name  # found by hash, whatever its date
    assert plan.run_id.startswith("scratch-")
    other = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "lr": 0.01})
    assert plan_run(TrainRequest(config=other, data_dir=synth_dir, runs_dir=runs_dir)).digest != plan.digest


def test_force_trains_the_same_config_afresh(synth_dir: Path, tmp_path: Path, weights_file: Path,
                                             one_thread) -> None:
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 1})
    request = TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "runs", device="cpu")
    first = train_run(request)
    before = (first.run_dir / "best.pt").stat().st_mtime_ns
    again = train_run(TrainRequest(**{**request.__dict__, "force": True}))
    assert not again.cached and again.state == "done" and again.run_id == first.run_id
    assert (again.run_dir / "best.pt").stat().st_mtime_ns != before
    assert len(read_metrics(again.run_dir)[0]) == 1
    assert [r.run_id for r in list_runs(tmp_path / "runs")] == [first.run_id]


def test_training_on_a_memory_mapped_data_set_completes(synth_dir: Path, tmp_path: Path, weights_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)  # every data set counts as too large for memory
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 1})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "runs", device="cpu"))
    assert result.state == "done" and len(read_metrics(result.run_dir)[0]) == 1


# ---------------------------------------------------------------- a data set with test/

TEST_CLASSES = ("speed_30", "speed_50")


@pytest.fixture(scope="module")
def runs_with_test(tmp_path_factory: pytest.TempPathFactory, weights_file: Path) -> dict[str, Path]:
    """Tiny one-epoch runs on one data set without and with a test/ split of two classes:
    {"plain": scratch without test/, "scratch": with it, "frozen": with it}."""
    from speedsign.synth import render_dataset

    os.environ.setdefault("SPEEDSIGN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    base = tmp_path_factory.mktemp("with-test")
    plain, extra = base / "plain", base / "extra"
    render_dataset(plain, per_class=6, frames_per_track=2, size=16, seed=2)
    render_dataset(extra, per_class=2, frames_per_track=2, size=16, seed=5)  # images training never sees
    with_test = base / "with_test"
    shutil.copytree(plain, with_test)
    for name in TEST_CLASSES:
        shutil.copytree(extra / "train" / name, with_test / "test" / name)
    runs: dict[str, Path] = {}
    with training_in_process():
        for key, approach, data in (("plain", "scratch", plain), ("scratch", "scratch", with_test),
                                    ("frozen", "frozen", with_test)):
            overrides = {**tiny_overrides(approach, weights_file), "epochs": 1}
            config = resolve_config(approach=approach, overrides=overrides)
            result = train_run(TrainRequest(config=config, data_dir=data, runs_dir=base / "runs", device="cpu"))
            assert result.state == "done", result
            runs[key] = result.run_dir
    return runs


@pytest.mark.parametrize("approach", ["scratch", "frozen"])
def test_a_data_set_with_test_gets_its_test_split_scored_and_stored(approach: str,
                                                                    runs_with_test: dict[str, Path]) -> None:
    run_dir = runs_with_test[approach]
    folder = RunDir(run_dir)
    saved = np.load(folder.predictions_test)
    classes = [str(c) for c in saved["classes"]]
    assert classes == json.loads(folder.config.read_text())["classes"]
    assert saved["probs"].shape == (4, 9) and np.allclose(saved["probs"].sum(1), 1, atol=1e-4)
    assert {classes[i] for i in saved["labels"]} == set(TEST_CLASSES)  # the run's indices of the test classes
    assert all(str(f).startswith("test/") for f in saved["files"])
    report = read_json(folder.evaluation_test)
    assert report == json.loads(json.dumps(evaluation_report(saved["probs"], saved["labels"], class_names=classes)))
    assert set(report) == set(read_json(folder.evaluation))  # the format of eval_val.json
    assert folder.calibration.is_file() and read_calibration(run_dir)[1] is None
    # What the pages and the study read: the stored file, without any forward (no predictor).
    info = inspect_run(run_dir)
    stored = evaluation.test_evaluation(info)
    assert stored.split == "test" and stored.report["n"] == 4 and stored.files == tuple(map(str, saved["files"]))
    assert evaluation.evaluate_test(info, None).report == stored.report
    assert evaluation.split_choices(info) == ["val", "test"]
    # The on-demand path of older runs gives the same raw numbers.
    older = run_dir.parent / "older" / run_dir.name
    older.mkdir(parents=True, exist_ok=True)
    for name in (RunDir.CONFIG, RunDir.STATUS, RunDir.BEST):  # no predictions_test.npz
        shutil.copy(run_dir / name, older / name)
    fresh = evaluation.evaluate_test(inspect_run(older), Predictor(older))
    assert np.allclose(fresh.probs, stored.probs, atol=1e-4) and fresh.report["accuracy"] == report["accuracy"]


def test_the_test_split_plays_no_part_in_training(runs_with_test: dict[str, Path]) -> None:
    plain, with_test = runs_with_test["plain"], runs_with_test["scratch"]
    assert plain.name != with_test.name  # other data, another run
    keys = ("train_loss", "train_acc", "val_loss", "val_acc")
    rows = [[{k: row[k] for k in keys} for row in read_metrics(run)[0]] for run in (plain, with_test)]
    assert rows[1] == [pytest.approx(row, rel=1e-6) for row in rows[0]]
    val = [np.load(RunDir(run).predictions) for run in (plain, with_test)]
    assert list(val[0]["files"]) == list(val[1]["files"])
    np.testing.assert_allclose(val[1]["probs"], val[0]["probs"], rtol=1e-5, atol=1e-6)
    assert not any(str(f).startswith("test/") for f in val[1]["files"])


def test_a_budget_reserves_the_test_scoring_by_image_count() -> None:
    def inputs(n_val: int, n_test: int | None) -> Inputs:
        empty = torch.zeros(0)
        test = None if n_test is None else torch.zeros(n_test, dtype=torch.int64)
        return Inputs(empty, empty, empty, torch.zeros(n_val, dtype=torch.int64), (), False,
                      test=test, test_labels=test)

    from speedsign.budget import CHECKPOINT_SECONDS

    assert reserve_for_test(5.0, inputs(10, None)) == 0.0
    assert reserve_for_test(CHECKPOINT_SECONDS + 2.0, inputs(10, 20)) == pytest.approx(CHECKPOINT_SECONDS + 4.0)


# ---------------------------------------------------------------- the job's pieces

def test_read_request_gives_back_the_request_a_run_was_trained_with(runs_with_results: dict[str, Path],
                                                                    synth_dir: Path, weights_file: Path) -> None:
    run_dir = runs_with_results["frozen"]
    config = resolve_config(approach="frozen", overrides=tiny_overrides("frozen", weights_file))
    assert read_request(run_dir) == TrainRequest(config=config, data_dir=synth_dir.resolve(),
                                                 runs_dir=run_dir.parent, device="cpu")


def test_read_request_of_an_older_config_json_uses_the_defaults_and_a_damaged_one_is_refused(
        runs_with_results: dict[str, Path], tmp_path: Path) -> None:
    meta = read_json(runs_with_results["scratch"] / "config.json")
    older = tmp_path / "runs" / "scratch-20250101-aaaaaaaaaa"
    atomic_write_json({k: v for k, v in meta.items() if k != "request"}, older / "config.json")
    request = read_request(older)
    assert (request.device, request.force, request.compile, request.precision) == ("auto", False, False, "auto")
    assert request.config.to_dict() == meta["config"] and request.runs_dir == older.parent
    for harm, words in ((lambda p: p.unlink(), "config.json is missing"),
                        (lambda p: p.write_text('{"format_ver'), "config.json is damaged")):
        harm(older / "config.json")
        with pytest.raises(UserError, match=words) as error:
            read_request(older)
        assert str(older) in str(error.value)  # names the folder


def test_launched_at_is_the_launch_time_of_a_job_that_has_not_started() -> None:
    assert launched_at(RunStatus.parse({"state": "queued", "queued_at": 12.5, "pid": None})) == 12.5
    assert launched_at(RunStatus.parse({"state": "queued", "queued_at": 12.5, "pid": 42})) is None  # the job's own
    assert launched_at(RunStatus.parse({"state": "running", "queued_at": 12.5})) is None
    assert launched_at(RunStatus.parse({"state": "failed", "queued_at": 12.5})) is None
    assert launched_at(RunStatus()) is None


def test_status_writer_stamps_pid_host_and_heartbeat_on_every_write(tmp_path: Path) -> None:
    folder = RunDir(tmp_path)
    atomic_write_json({"state": "queued", "pid": None, "host": None, "queued_at": 5.0}, folder.status)
    before = time.time()
    StatusWriter(folder).update(state="running", phase="loading data")
    status = read_status(tmp_path)
    assert (status.state, status.phase, status.queued_at) == ("running", "loading data", 5.0)
    assert status.pid == os.getpid() and status.host == socket.gethostname()
    assert status.heartbeat is not None and status.heartbeat >= before


def test_load_resume_takes_a_usable_last_pt_and_refuses_the_rest(runs_with_results: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    payload = load_resume(RunDir(runs_with_results["scratch"]))
    assert payload is not None and payload["fit_state"]["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "config", "classes"} <= set(payload)
    folder = RunDir(tmp_path)
    assert load_resume(folder) is None  # nothing to resume
    folder.last.write_bytes(b"half of a checkpoint")
    assert load_resume(folder) is None  # damaged: start over, never crash
    torch.save({"model": {}}, folder.last)
    assert load_resume(folder) is None  # a best.pt-like file without the training state


def _planned(synth_dir: Path, runs_dir: Path, weights_file: Path) -> tuple[TrainRequest, RunDir]:
    """A one-epoch scratch request and its (created, empty) run folder."""
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 1})
    request = TrainRequest(config=config, data_dir=synth_dir, runs_dir=runs_dir, device="cpu")
    folder = plan_run(request).folder
    folder.path.mkdir(parents=True)
    return request, folder


def test_a_run_another_process_trains_is_reported_never_trained_twice(
        synth_dir: Path, tmp_path: Path, weights_file: Path) -> None:
    request, folder = _planned(synth_dir, tmp_path / "runs", weights_file)
    atomic_write_json({"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                       "heartbeat": time.time(), "epoch": 3}, folder.status)
    with run_lock(folder.path) as lock:  # "another process": flock locks conflict within one process too
        assert lock.acquire()
        result = train_run(request)
    assert (result.state, result.cached, result.epochs_run) == ("running", False, 3)
    assert not folder.metrics.exists() and not folder.last.exists()


def test_a_run_in_progress_with_an_unreadable_status_is_reported_failed(
        synth_dir: Path, tmp_path: Path, weights_file: Path) -> None:
    request, folder = _planned(synth_dir, tmp_path / "runs", weights_file)
    folder.status.write_text('{"state": "runn')
    with run_lock(folder.path) as lock:
        assert lock.acquire()
        result = train_run(request)
    assert result.state == "failed" and "status.json is damaged" in (result.error or "")
    assert not folder.metrics.exists()


def test_a_diverged_training_fails_with_its_reason_instead_of_finishing_at_chance(
        synth_dir: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from speedsign import job

    epoch = job.train_one_epoch
    monkeypatch.setattr(job, "train_one_epoch", lambda *a, **k: (float("nan"), *epoch(*a, **k)[1:]))
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 2, "batch_size": 32})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    assert result.state == "failed" and "diverged" in (result.error or "")
    assert inspect_run(result.run_dir).state == "failed"
