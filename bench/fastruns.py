"""3 and 5. Each approach trained with the `fast` preset, as a user runs it, in a child process.

`python -m speedsign train --preset fast ...` with an empty cache (so decoding, and for
frozen the feature cache, are part of the time). Measured from outside:

- peak RSS of the child: its own VmHWM, reported by the `bench.child` wrapper (see there why
  not ru_maxrss);
- the learning curve in wall-clock seconds since launch (imports, decoding and features
  included): the parent watches metrics.jsonl and stamps each epoch as it appears;
- its best val accuracy, and on the tutorial's val sample (from predictions_val.npz).

The run folders then serve the latency benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import Context
from bench.workspace import REPO, config_overrides
from speedsign.errors import UserError
from speedsign.evaluation import read_predictions
from speedsign.runs import RunDir, read_metrics

POLL_SECONDS = 0.1


def child_command(ctx: Context, approach: str, runs_dir: Path) -> list[str]:
    command = ["train", "--approach", approach, "--data", str(ctx.data.root),
               "--preset", "fast", "--runs-dir", str(runs_dir), "--device", ctx.options.device, "--force", "--json"]
    if approach != "scratch":
        command += ["--weights", str(ctx.backbone.path)]
    if ctx.options.fast_epochs is not None:
        command += ["--epochs", str(ctx.options.fast_epochs)]
    batch = config_overrides(approach, ctx.backbone, n_train=len(ctx.data.index.samples("train"))).get("batch_size")
    if batch is not None:
        command += ["--batch-size", str(batch)]
    return command


def child_env(ctx: Context, cache: Path | None = None) -> dict[str, str]:
    """The children run in the repository (cwd=REPO), so `-m speedsign` is this checkout's."""
    env = dict(os.environ)
    if cache is not None:
        env["SPEEDSIGN_CACHE"] = str(cache)
    if ctx.options.threads:
        env["OMP_NUM_THREADS"] = str(ctx.options.threads)
    return env


def read_peak(path: Path) -> tuple[float, str]:
    data = json.loads(path.read_text())
    return float(data["peak_rss_mb"]), str(data["method"])


def run_child(ctx: Context, approach: str) -> dict[str, Any]:
    runs_dir = ctx.work / f"runs-{approach}"
    env = child_env(ctx, cache=ctx.work / f"child-cache-{approach}")
    arguments = child_command(ctx, approach, runs_dir)
    peak_file = ctx.work / f"child-{approach}.peak.json"
    command = [sys.executable, "-m", "bench.child", str(peak_file), *arguments]
    out_path, err_path = ctx.work / f"child-{approach}.out", ctx.work / f"child-{approach}.err"
    arrivals: list[float] = []
    seen_sizes: dict[Path, int] = {}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO, env=env)
        while process.poll() is None:
            _stamp(runs_dir, arrivals, seen_sizes, time.perf_counter() - started)
            time.sleep(POLL_SECONDS)
        _stamp(runs_dir, arrivals, seen_sizes, time.perf_counter() - started)
    wall = time.perf_counter() - started
    stdout = out_path.read_text(errors="replace").strip().splitlines()
    if process.returncode != 0 or not stdout:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"speedsign train --approach {approach} failed ({process.returncode}): "
                           + " | ".join(tail))
    result = json.loads(stdout[-1])
    peak_mb, method = read_peak(peak_file)
    run_dir = Path(result["run_dir"])
    rows, _ = read_metrics(run_dir)
    curve = []
    train_clock = 0.0
    for i, row in enumerate(rows):
        train_clock += row["seconds"]
        curve.append({"epoch": row["epoch"], "val_acc": row["val_acc"],
                      "seconds": round(arrivals[i] if i < len(arrivals) else wall, 3),
                      "train_seconds": round(train_clock, 3), "images_per_s": row["images_per_s"]})
    return {
        "command": "python -m speedsign " + " ".join(arguments),
        "run_dir": str(run_dir),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_rss_method": method,
        "wall_s": round(wall, 2),
        "epochs": len(rows),
        "best_val_acc": result.get("best_val_acc"),
        "final_val_acc": rows[-1]["val_acc"] if rows else None,
        "curve": curve,
        "first_epoch_start_s": round(curve[0]["seconds"] - rows[0]["seconds"], 2) if rows else None,
    }


def _stamp(runs_dir: Path, arrivals: list[float], seen_sizes: dict[Path, int], now: float) -> None:
    """Record when each new metrics.jsonl line appeared (one run folder per runs_dir)."""
    for path in runs_dir.glob(f"*/{RunDir.METRICS}"):
        try:
            size = path.stat().st_size
            if seen_sizes.get(path) == size:  # unchanged: no need to read it again
                continue
            seen_sizes[path] = size
            lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        except OSError:
            return
        while len(arrivals) < lines:
            arrivals.append(now)


def accuracy_on(run_dir: Path, files: list[str]) -> float | None:
    """Accuracy of the run's best model on the given val files (from its val predictions)."""
    try:
        saved = read_predictions(RunDir(run_dir).predictions)
    except UserError:
        return None
    wanted = set(files)
    keep = np.array([name in wanted for name in saved.files])
    if not keep.any():
        return None
    return float((saved.probs[keep].argmax(1) == saved.labels[keep]).mean())


def import_baseline_mb(ctx: Context) -> float:
    """Peak RSS of a process that only imports what `speedsign train` imports (torch & co):
    the floor under every training's peak (the CUDA build of torch maps far more than the
    CPU build Streamlit Cloud installs)."""
    peak_file = ctx.work / "child-imports.peak.json"
    subprocess.run([sys.executable, "-m", "bench.child", str(peak_file)], cwd=REPO, env=child_env(ctx), check=True)
    return round(read_peak(peak_file)[0], 1)


def measure(ctx: Context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    baseline = import_baseline_mb(ctx)
    ctx.log(f"importing speedsign + torch alone: peak RSS {baseline} MB")
    for approach in ctx.options.approaches:
        try:
            entry = results[approach] = run_child(ctx, approach)
        except (RuntimeError, OSError, ValueError) as error:  # one approach failing spoils not the others
            ctx.errors[f"fastruns {approach}"] = str(error)
            ctx.log(f"fast {approach}: FAILED: {error}")
            continue
        entry["import_baseline_mb"] = baseline
        ctx.log(f"fast {approach}: {entry['epochs']} epochs in {entry['wall_s']} s, best val acc "
                f"{entry['best_val_acc']:.4f}, peak RSS {entry['peak_rss_mb']} MB")
    return results
