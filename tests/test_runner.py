"""runner.py + the run store contract: complete run folders, cached relaunch, --force, run ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from speedsign.config import resolve_config
from speedsign.runner import TrainRequest, plan_run, train_run
from speedsign.runs import FORMAT_VERSION, inspect_run, list_runs, read_metrics

from conftest import APPROACHES, tiny_overrides


@pytest.mark.parametrize("approach", APPROACHES)
def test_a_finished_run_folder_holds_every_contract_file(approach: str, runs_with_results: dict[str, Path]) -> None:
    run_dir = runs_with_results[approach]
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["config"]["approach"] == approach
    assert meta["classes"][:3] == ["speed_20", "speed_30", "speed_50"] and len(meta["classes"]) == 9
    assert len(meta["data_fingerprint"]) == 16
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
    assert inspect_run(run_dir).damaged is None


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


def test_force_trains_the_same_config_afresh(synth_dir: Path, tmp_path: Path, weights_file: Path) -> None:
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 1})
    request = TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "runs", device="cpu")
    first = train_run(request)
    before = (first.run_dir / "best.pt").stat().st_mtime_ns
    again = train_run(TrainRequest(**{**request.__dict__, "force": True}))
    assert not again.cached and again.state == "done" and again.run_id == first.run_id
    assert (again.run_dir / "best.pt").stat().st_mtime_ns != before
    assert len(read_metrics(again.run_dir)[0]) == 1
    assert [r.run_id for r in list_runs(tmp_path / "runs")] == [first.run_id]


def test_training_on_a_streamed_data_set_completes(synth_dir: Path, tmp_path: Path, weights_file: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import speedsign.data as data

    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)
    config = resolve_config(approach="scratch", overrides={**tiny_overrides("scratch", weights_file), "epochs": 1})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "runs", device="cpu"))
    assert result.state == "done" and len(read_metrics(result.run_dir)[0]) == 1
