"""Data-parallel training under torchrun: 2 CPU processes (gloo) give a complete run whose
result equals the single-process one within tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_torchrun_ranks_share_one_budget_plan_and_stop_together(synth_dir: Path, tmp_path: Path) -> None:
    # A budget that binds (the epochs would take far longer): each rank times its own steps, so
    # unless they share rank 0's plan and stop at the same step, one waits for the other forever.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "-m", "speedsign"]
    env = {**os.environ, "SPEEDSIGN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*torchrun, "train", "--approach", "scratch", "--img-size", "16", "--batch-size", "32",
                           "--epochs", "1000", "--augment", "auto", "--budget", "20", "--json",
                           "--data", str(synth_dir), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run = inspect_run(Path(result["run_dir"]))
    assert run.state == "done" and run.status.world_size == 2
    plan = json.loads((run.run_dir / "budget.json").read_text())
    # The budget bound it (the schedule keeps pace with the clock, so the steps run may pass the plan).
    assert 0 < run.status.steps_run < 1000 * plan["steps_per_epoch"] and plan["steps"] < 1000 * plan["steps_per_epoch"]
    assert run.status.augment == plan["augment"] != ""  # "auto", decided once, for both ranks


def _agree(rank: int, port: int, answers: dict) -> None:
    import torch.distributed as dist

    from speedsign.train import Distributed, agree_clock, from_main

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx, cpu = Distributed(rank=rank, world_size=2), torch.device("cpu")
        plan = from_main({"steps": 100 + rank}, ctx, cpu)  # each rank timed its own steps
        # rank 0 is past its deadline, rank 1 not yet: both stop; and both read the slower
        # rank's training seconds, so their schedules keep the same pace
        trained, left = agree_clock(10.0 + rank, -1.0 if rank == 0 else 3600.0, ctx, cpu)
        answers[rank] = (plan["steps"], left <= 0, trained)
    finally:
        dist.destroy_process_group()


def test_ranks_take_rank_0s_plan_and_stop_when_any_rank_is_late() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    answers = mp.Manager().dict()
    mp.spawn(_agree, args=(port, answers), nprocs=2, join=True)
    assert dict(answers) == {0: (100, True, 11.0), 1: (100, True, 11.0)}
