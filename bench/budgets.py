"""Time budgets kept: `python -m bench.budgets`.

Runs `python -m speedsign train --approach scratch --data DATA --budget B` for each budget in a
fresh process, exactly as a user would, and records the wall time of the whole command from
outside, what the budget bought (budget.json), and the val accuracy of the last epoch (no
checkpoint chosen on val) beside the best epoch's. With `--avx2`, torch is held to AVX2 kernels
and fp32 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 --precision fp32): a faster CPU
standing in for the common slower kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import describe_machine, machine_info
from bench.report import replace_block
from speedsign.budget import format_duration, parse_duration
from speedsign.runs import read_metrics

REPO = Path(__file__).resolve().parents[1]
DATA_DEFAULT = REPO.parent / "shared" / "data" / "gtsrb-speed32"
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.budgets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_DEFAULT)
    parser.add_argument("--approach", default="scratch")
    parser.add_argument("--budgets", default="10m,5m")
    parser.add_argument("--avx2", action="store_true", help="hold torch to AVX2 kernels and fp32")
    parser.add_argument("--extra", default="", help="flags added to every run")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/speedsign-budgets"))
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "budgets.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md",
                        help="the table of the runs without --extra goes between the budgets-readme markers here")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def run_budget(seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **(AVX2_ONLY if args.avx2 else {})}
    command = [sys.executable, "-m", "speedsign", "train", "--approach", args.approach, "--data", str(args.data),
               "--runs-dir", str(args.runs_dir), "--budget", f"{seconds:g}", "--force",
               *(["--precision", "fp32"] if args.avx2 else []), *shlex.split(args.extra), "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"budget_s": seconds, "command": shlex.join(command[1:]), "wall_s": round(wall, 1),
                           "avx2_only": args.avx2}
    if done.returncode != 0:
        row["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = Path(result["run_dir"])
    rows, _ = read_metrics(run_dir)
    plan = json.loads((run_dir / "budget.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    row.update(run_id=result["run_id"], plan=plan, steps_run=result.get("budget", {}).get("steps_run"),
               augment=status.get("augment"),
               last_val_acc=rows[-1]["val_acc"] if rows else None, best_val_acc=result["best_val_acc"],
               images=rows[-1].get("images") if rows else None, epochs=len(rows), within=wall <= seconds)
    return row


def markdown(results: dict[str, Any], *, plain_only: bool = False) -> str:
    """A table per record; `plain_only`: only the records trained without --extra flags."""
    parts = []
    for key, record in results.items():
        if plain_only and record.get("extra"):
            continue
        parts.append(f"### {key}\n\nMeasured on {describe_machine(record['machine'])}.\n")
        parts.append("| budget | wall s (whole command) | within | input | augmentation | steps planned / run | "
                     "images | last-epoch val acc | best-epoch val acc | planned s |\n"
                     "|---|---|---|---|---|---|---|---|---|---|")
        for row in record["rows"]:
            if "error" in row:
                parts.append(f"| {format_duration(row['budget_s'])} | {row['wall_s']} | failed: {row['error']} "
                             "| | | | | | | |")
                continue
            plan = row["plan"]
            parts.append(f"| {format_duration(row['budget_s'])} | {row['wall_s']:.0f} | "
                         f"{'yes' if row['within'] else '**no**'} | {plan['img_size']} px | "
                         f"{row.get('augment') or '?'} | "
                         f"{plan['steps']} / {row['steps_run']} | {row['images']:,} | "
                         f"{100 * row['last_val_acc']:.2f}% | {100 * row['best_val_acc']:.2f}% | "
                         f"{plan['planned_s']:.0f} |")
        parts.append(f"\nCommand: `python {record['rows'][0]['command']}` (with the budget of each row)"
                     + (", under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`" if record["avx2_only"] else "")
                     + ".\n")
    return "\n".join(parts).rstrip()


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    if not args.report_only:
        if not args.data.is_dir():
            print(f"bench.budgets: no data at {args.data}", file=sys.stderr)
            return 2
        machine = machine_info(torch.device("cpu"))
        if args.avx2:
            machine["cpu_isa_limits"] = dict(AVX2_ONLY)
        print(describe_machine(machine), flush=True)
        key = (f"{args.approach}{' ' + args.extra if args.extra else ''}"
               f"{', AVX2 kernels only' if args.avx2 else ''}, {' '.join(machine['cpu_flags'])}")
        earlier = results.get(key, {}).get("rows", [])
        record = {"machine": machine, "approach": args.approach, "avx2_only": args.avx2, "extra": args.extra,
                  "rows": earlier}
        results[key] = record
        for text in args.budgets.split(","):
            row = run_budget(parse_duration(text), args)
            # A budget measured again replaces its earlier row; the other budgets' rows stay.
            record["rows"] = [r for r in record["rows"] if r["budget_s"] != row["budget_s"]] + [row]
            args.json.write_text(json.dumps(results, indent=1) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "plan"}), flush=True)
    replace_block(args.docs, markdown(results), name="budgets", heading="Time budgets")
    if args.readme.exists() and "<!-- budgets-readme:begin -->" in args.readme.read_text():
        replace_block(args.readme, markdown(results, plain_only=True), name="budgets-readme", heading="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
