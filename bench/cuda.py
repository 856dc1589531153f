"""The GPU measurement, prepared to run once on a lent CUDA machine: `python -m bench.cuda --out DIR`.

Three figures, each from the command line that a user would run:

1. images/s of each approach's fast preset, and its training FLOP/s as a share of the bf16
   matmul peak measured in the same run (`python -m bench --only throughput`);
2. scratch's time to 95%, 97% and 98% val on `gtsrb-speed32`: the fast preset without a time
   budget (`speedsign train --budget 0`), seconds counted from its per-epoch metrics;
3. the machine: `nvidia-smi`, and the bench's machine record (GPU name, torch, CUDA).

Everything lands in DIR (summary.json and the logs of each step), so that one run in a session
of a few minutes brings back all of it. `--device cpu --quick` is a smoke test on any machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.efficiency import DATA_DEFAULT, REPO, THRESHOLDS, images_to
from speedsign.runs import read_metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cuda", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.json and the logs")
    parser.add_argument("--data", type=Path, default=DATA_DEFAULT)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny bench, one epoch")
    return parser.parse_args(argv)


def run(command: list[str], log: Path) -> subprocess.CompletedProcess:
    """Run one step, its output kept in `log`; a failed step is reported, and the rest still runs."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    except OSError as error:  # a missing program (nvidia-smi on a machine without a driver)
        done = subprocess.CompletedProcess(command, 127, "", str(error))
    log.write_text(f"$ {' '.join(command)}\n# exit {done.returncode} after {time.perf_counter() - started:.1f} s\n"
                   f"{done.stdout}\n{done.stderr}", encoding="utf-8")
    return done


def seconds_to(curve: list[dict[str, Any]], threshold: float) -> float | None:
    """Training seconds (all epochs up to it) when val accuracy first reached `threshold`, or None."""
    total = 0.0
    for row in curve:
        total += float(row.get("seconds") or 0.0)
        if row["val_acc"] >= threshold:
            return round(total, 1)
    return None


def throughput_rows(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    approaches = json.loads(path.read_text())["throughput"]["approaches"]
    return {name: {"images_per_s": row["fast_median"], "share_of_peak": row["achieved"]["fast"]["fraction_of_peak"],
                   "peak_dtype": row["achieved"]["fast"]["peak_dtype"]} for name, row in approaches.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    if args.device == "cuda":
        run(["nvidia-smi"], out / "nvidia-smi.log")
    bench = [python, "-m", "bench", "--device", args.device, "--only", "throughput", "--data", str(args.data),
             "--json", str(out / "throughput.json"), "--no-docs", *(["--quick"] if args.quick else [])]
    run(bench, out / "throughput.log")
    train = [python, "-m", "speedsign", "train", "--approach", "scratch", "--data", str(args.data), "--device",
             args.device, "--budget", "0", "--runs-dir", str(out / "runs"), "--json",
             *(["--epochs", "1", "--img-size", "32"] if args.quick else [])]
    trained = run(train, out / "train_scratch.log")
    summary: dict[str, Any] = {"device": args.device, "throughput": throughput_rows(out / "throughput.json")}
    if trained.returncode == 0:
        result = json.loads(trained.stdout.strip().splitlines()[-1])
        curve, _ = read_metrics(Path(result["run_dir"]))
        summary["scratch"] = {"run_id": result["run_id"], "final_val_acc": curve[-1]["val_acc"] if curve else None,
                              "seconds_to": {f"{t:.2f}": seconds_to(curve, t) for t in THRESHOLDS},
                              "images_to": {f"{t:.2f}": images_to(curve, t) for t in THRESHOLDS},
                              "command": " ".join(train[1:])}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary))
    return 0 if summary["throughput"] and "scratch" in summary else 1


if __name__ == "__main__":
    raise SystemExit(main())
