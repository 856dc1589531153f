"""Data-parallel training under torchrun: 2 CPU processes (gloo) give a complete run whose
result equals the single-process one within tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speedsign.runs import inspect_run, read_metrics

ARGS = ["--approach", "scratch", "--img-size", "16", "--epochs", "1", "--batch-size", "32",
        "--augment", "none", "--json"]


def _train(command: list[str], data: Path, runs: Path, cache: Path) -> dict:
    env = {**os.environ, "SPEEDSIGN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "train", *ARGS, "--data", str(data), "--runs-dir", str(runs)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_torchrun_two_processes_matches_single_process(synth_dir: Path, tmp_path: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "speedsign"]
    parallel = _train(torchrun, synth_dir, tmp_path / "ddp", tmp_path / "cache")
    single = _train([sys.executable, "-m", "speedsign"], synth_dir, tmp_path / "single", tmp_path / "cache")

    # Same config and data: the same run id, and a complete run folder.
    assert parallel["run_id"] == single["run_id"]
    assert parallel["state"] == single["state"] == "done"
    run = inspect_run(Path(parallel["run_dir"]))
    assert run.state == "done" and run.damaged is None
    for name in ("config.json", "status.json", "metrics.jsonl", "best.pt", "last.pt", "predictions_val.npz"):
        assert (run.run_dir / name).exists(), name
    assert run.status.world_size == 2

    rows_parallel, problem_parallel = read_metrics(Path(parallel["run_dir"]))
    rows_single, _ = read_metrics(Path(single["run_dir"]))
    assert problem_parallel is None and len(rows_parallel) == len(rows_single) == 1
    # Every rank sees half of each global batch and gradients are averaged, so the updates
    # match the single process up to BatchNorm's per-rank batch statistics.
    assert rows_parallel[0]["train_loss"] == pytest.approx(rows_single[0]["train_loss"], abs=0.15)
    assert rows_parallel[0]["val_loss"] == pytest.approx(rows_single[0]["val_loss"], rel=0.35)
