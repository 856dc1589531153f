"""`python -m bench [--quick] [--json FILE]`: run the benchmarks, print a table, write the files.

Full mode (default) measures on all the data and writes docs/benchmarks.md and
docs/time_to_accuracy.png; --quick uses a small subset and tiny budgets (under 5 minutes on
2 cores) and writes docs only when --docs is given, so it never overwrites real results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench import accuracy, fastruns, frozen, latency, report, throughput
from bench.context import APPROACHES, FULL, QUICK, SECTIONS, Context, Options
from bench.machine import load_average, machine_info
from bench.workspace import REPO, resolve_backbone, resolve_data
from speedsign.errors import UserError
from speedsign.train import pick_device

TARGETS = {"train_speedup": 20.0, "frozen_cache_speedup": 15.0, "predict_p95_ms": 30.0,
           "predict_all_p95_ms": 80.0, "peak_rss_mb": 2048.0}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas; got {text!r}") from None
    if not values or any(v < 16 or v > 512 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be 16-512 px; got {text!r}")
    return values


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
        return values
    return parse


def _positive(kind: type):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data subset and tiny budgets (< 5 min on 2 cores)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all results as JSON")
    p.add_argument("--data", type=Path,
                   help="data folder (default: ../shared/data/gtsrb-speed32, else generated signs)")
    p.add_argument("--weights", help="backbone for finetune/frozen: a file or run:ID "
                                     "(default: $SPEEDSIGN_BENCH_WEIGHTS, cached ImageNet, else random init)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--approaches", type=_choices(APPROACHES), help="comma list (default: all three)")
    p.add_argument("--only", type=_choices(SECTIONS), help=f"run only these sections: {','.join(SECTIONS)}")
    p.add_argument("--skip", type=_choices(SECTIONS), help="skip these sections")
    p.add_argument("--threads", type=_positive(int), help="torch threads (default: torch's)")
    p.add_argument("--seed", type=_count)
    g = p.add_argument_group("data")
    g.add_argument("--subset-tracks", type=_count,
                   help="use only N whole tracks (GTSRB: 30 frames of one sign) per class (0 = all)")
    g.add_argument("--synth-per-class", type=_positive(int), help="images per class when signs are generated")
    g = p.add_argument_group("1. training throughput")
    g.add_argument("--rounds", type=_positive(int), help="alternating rounds per comparison (medians)")
    g.add_argument("--tutorial-steps", type=_positive(int), help="timed tutorial batches per round")
    g.add_argument("--tutorial-warmup", type=_count, help="untimed tutorial batches before each round")
    g.add_argument("--tutorial-workers", type=_count, help="DataLoader workers (default: min(4, cores))")
    g.add_argument("--tutorial-img-size", type=_positive(int), help=argparse.SUPPRESS)
    g.add_argument("--fast-steps", type=_positive(int), help="timed fast-preset batches per round")
    g.add_argument("--fast-warmup", type=_count, help="untimed fast-preset batches before the rounds")
    g = p.add_argument_group("2. frozen features")
    g.add_argument("--frozen-images", type=_positive(int), help="images (train+val) of the live-vs-cached comparison")
    g.add_argument("--frozen-epochs", type=_positive(int), help="head-training epochs (default 25)")
    g = p.add_argument_group("3/5. fast runs (child processes: learning curve, peak RSS)")
    g.add_argument("--fast-epochs", type=_positive(int), help="epochs of the fast runs (default: the preset's)")
    g = p.add_argument_group("1/3. tutorial accuracy")
    g.add_argument("--tutorial-budget", type=_positive(float), help="seconds of tutorial training per approach")
    g.add_argument("--tutorial-evals", type=_positive(int), help="val evaluations within the budget")
    g.add_argument("--val-images", type=_count, help="val sample both sides are scored on (0 = whole val split)")
    g = p.add_argument_group("6. input size")
    g.add_argument("--sizes", type=_ints, help="comma list of sizes (default 32,48,64,96,128,224)")
    g.add_argument("--size-epochs", type=_positive(int))
    g.add_argument("--size-train-images", type=_count, help="train subset (0 = all)")
    g.add_argument("--size-val-images", type=_count, help="val subset (0 = all)")
    g = p.add_argument_group("4. prediction latency")
    g.add_argument("--predict-calls", type=_positive(int))
    g.add_argument("--predict-warmup", type=_count)
    g.add_argument("--predict-px", type=_positive(int), help="side of the JPEG (default 480)")
    g = p.add_argument_group("output")
    g.add_argument("--docs", type=Path, help="folder for benchmarks.md and time_to_accuracy.png "
                                             "(default: docs/ in full mode, none with --quick)")
    g.add_argument("--no-docs", action="store_true")
    g.add_argument("--readme", type=Path, help="also replace the table between <!-- bench:begin --> and "
                                               "<!-- bench:end --> in this file")
    g.add_argument("--work", type=Path, help="parent of the scratch folder (default: the system's temp)")
    g.add_argument("--keep-work", action="store_true", help="keep the scratch folder (runs, caches, logs)")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    simple = ("data", "weights", "device", "approaches", "threads", "seed", "synth_per_class", "rounds",
              "tutorial_steps", "tutorial_warmup", "tutorial_workers", "tutorial_img_size", "fast_steps",
              "fast_warmup", "frozen_images", "frozen_epochs", "fast_epochs", "tutorial_budget",
              "tutorial_evals", "sizes", "size_epochs", "predict_calls", "predict_warmup", "predict_px",
              "readme", "work")
    for name in simple:
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    for name in ("subset_tracks", "val_images", "size_train_images", "size_val_images"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value or None  # 0 = no limit
    sections = args.only or SECTIONS
    if args.skip:
        sections = tuple(s for s in sections if s not in args.skip)
    changes["sections"] = sections
    changes["keep_work"] = args.keep_work
    if args.no_docs:
        changes["docs"] = None
    elif args.docs is not None:
        changes["docs"] = args.docs
    elif not args.quick:
        changes["docs"] = REPO / "docs"
    return base.with_(**changes)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        results = run(options, command="python -m bench " + shlex.join(argv))
    except UserError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2
    print(report.text_report(results), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if options.docs is not None:
        written = report.write_docs(results, options.docs)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if options.readme is not None:
        report.update_readme(results, options.readme)
    if results.get("errors"):
        print(f"bench: {len(results['errors'])} benchmark(s) failed: {', '.join(results['errors'])}", file=sys.stderr)
        return 1
    return 0


def run(options: Options, *, command: str) -> dict[str, Any]:
    """Every selected benchmark, in order; returns the JSON document."""
    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    device = pick_device(options.device)
    work = Path(tempfile.mkdtemp(prefix="speedsign-bench-", dir=options.work))
    saved_cache = os.environ.get("SPEEDSIGN_CACHE")
    # A private cache: every decode is measured from files, and the user's cache is untouched.
    os.environ["SPEEDSIGN_CACHE"] = str(work / "cache")
    try:
        return _run(options, command=command, device=device, work=work, started=started)
    finally:
        if saved_cache is None:
            os.environ.pop("SPEEDSIGN_CACHE", None)
        else:
            os.environ["SPEEDSIGN_CACHE"] = saved_cache
        if options.keep_work:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(options: Options, *, command: str, device: torch.device, work: Path, started: float) -> dict[str, Any]:
    data = resolve_data(options.data, work=work, synth_per_class=options.synth_per_class,
                        subset_tracks=options.subset_tracks, seed=options.seed)
    backbone = resolve_backbone(options.weights, work=work)
    ctx = Context(options=options, data=data, backbone=backbone, device=device, work=work)
    results: dict[str, Any] = {
        "machine": machine_info(device), "command": command, "mode": "quick" if options.quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "data": data.describe(),
        "weights": {"source": backbone.source, "pretrained": backbone.pretrained},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        "train_speedup": {}, "frozen_cache_speedup": None, "predict_ms": {}, "peak_rss_mb": {},
    }
    ctx.log(f"data: {data.source} ({data.describe()['images']}); weights: {backbone.source}; device {device}")
    sections = options.sections
    errors: dict[str, str] = {}

    def section(name: str, measure: Callable[[], Any]) -> Any:
        """One benchmark; a failure is recorded and the others still run (a full run is long)."""
        if name not in sections:
            return None
        started_at = ctx.begin(name)
        try:
            return measure()
        except Exception as error:  # any failure: reported in the results and the exit code
            errors[name] = f"{type(error).__name__}: {error}"
            ctx.log(f"{name}: FAILED: {errors[name]}\n{traceback.format_exc()}")
            return None
        finally:
            ctx.end(name, started_at)

    measured = section("throughput", lambda: throughput.measure(ctx))
    if measured:
        results["throughput"] = measured
        results["train_speedup"] = {a: v["speedup"] for a, v in measured["approaches"].items()}
    if "frozen" in options.approaches:
        measured = section("frozen", lambda: frozen.measure(ctx))
        if measured:
            results["frozen_cache"] = measured
            results["frozen_cache_speedup"] = measured["speedup"]
    run_dirs: dict[str, Path] = {}
    measured = section("fastruns", lambda: fastruns.measure(ctx))
    if measured:  # (an approach that failed is missing here and named in errors)
        results["fast_runs"] = measured
        results["peak_rss_mb"] = {a: v["peak_rss_mb"] for a, v in measured.items()}
        run_dirs = {a: Path(v["run_dir"]) for a, v in measured.items()}
    val_files = accuracy.val_sample(ctx)
    measured = section("tutorial", lambda: accuracy.tutorial_budget(ctx, val_files))
    if measured:
        results["tutorial_accuracy"] = measured
    measured = section("sizes", lambda: accuracy.input_sizes(ctx))
    if measured:
        results["input_size"] = measured
        results["input_size_summary"] = accuracy.size_summary(measured)
    measured = section("latency", lambda: latency.measure(ctx, run_dirs))
    if measured:
        results["latency"] = measured
        results["predict_ms"] = {a: {"p50": v["p50"], "p95": v["p95"]} for a, v in measured["per_model"].items()}
        results["predict_all_ms"] = {k: measured["all"][k] for k in ("p50", "p95")}
    errors.update(ctx.errors)
    if errors:
        results["errors"] = errors

    results["accuracy"] = compare_accuracy(results, run_dirs, val_files)
    results["time_to_accuracy"] = time_to_accuracy(results, options.thresholds)
    results["targets"] = check_targets(results)
    results["load_average"] = {**ctx.loads, "end": load_average()}
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results


def compare_accuracy(results: dict[str, Any], run_dirs: dict[str, Path], val_files: list[str]) -> dict[str, Any]:
    """Fast preset vs tutorial on the same val sample, per approach (when both ran)."""
    comparison: dict[str, Any] = {}
    tutorial_acc = results.get("tutorial_accuracy", {})
    for approach in set(run_dirs) | set(tutorial_acc):
        entry: dict[str, Any] = {"val_images": len(val_files)}
        if approach in run_dirs:
            fast = results["fast_runs"][approach]
            entry["fast_best_val_acc"] = fast["best_val_acc"]
            entry["fast_val_acc_on_sample"] = fastruns.accuracy_on(run_dirs[approach], val_files)
            entry["fast_wall_s"] = fast["wall_s"]
        if approach in tutorial_acc:
            entry["tutorial_val_acc_on_sample"] = tutorial_acc[approach]["best_val_acc"]
            entry["tutorial_budget_s"] = tutorial_acc[approach]["budget_s"]
        if entry.get("fast_val_acc_on_sample") is not None and "tutorial_val_acc_on_sample" in entry:
            entry["fast_reaches_tutorial"] = entry["fast_val_acc_on_sample"] >= entry["tutorial_val_acc_on_sample"]
        comparison[approach] = entry
    return dict(sorted(comparison.items(), key=lambda kv: APPROACHES.index(kv[0])))


def time_to_accuracy(results: dict[str, Any], thresholds: Sequence[float]) -> dict[str, Any]:
    """Seconds until val accuracy first reaches each threshold; None = not within the run/budget.

    fast: wall-clock seconds since `speedsign train` was launched (imports, decoding and the
    feature cache included), at epoch ends. tutorial: seconds of training at its evaluation
    checkpoints (an upper bound: it may have crossed earlier).
    """
    out: dict[str, Any] = {}
    for approach in APPROACHES:
        entry: dict[str, Any] = {}
        fast = results.get("fast_runs", {}).get(approach)
        if fast:
            entry["fast"] = {f"{t:.2f}": next((p["seconds"] for p in fast["curve"] if p["val_acc"] >= t), None)
                             for t in thresholds}
            entry["fast_run_s"] = fast["wall_s"]
        tut = results.get("tutorial_accuracy", {}).get(approach)
        if tut:
            entry["tutorial"] = {f"{t:.2f}": next((p["seconds"] for p in tut["points"] if p["val_acc"] >= t), None)
                                 for t in thresholds}
            entry["tutorial_budget_s"] = tut["budget_s"]
        if entry:
            out[approach] = entry
    return out


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets (stated for 2 CPU cores), each with its measured value."""
    checks: list[dict[str, Any]] = []

    def add(name: str, value: Any, target: str, ok: bool | None) -> None:
        checks.append({"target": name, "measured": value, "goal": target, "met": ok})

    for approach in ("finetune", "scratch"):
        value = results["train_speedup"].get(approach)
        if value is not None:
            add(f"training speed-up, {approach}", value, f">= {TARGETS['train_speedup']:g}x",
                value >= TARGETS["train_speedup"])
    for approach, entry in results.get("accuracy", {}).items():
        if "fast_reaches_tutorial" in entry:
            add(f"fast val acc >= tutorial's, {approach}",
                f"{entry['fast_val_acc_on_sample']:.4f} vs {entry['tutorial_val_acc_on_sample']:.4f}",
                "fast >= tutorial", entry["fast_reaches_tutorial"])
    if results.get("frozen_cache_speedup") is not None:
        value = results["frozen_cache_speedup"]
        epochs = results.get("frozen_cache", {}).get("epochs", "?")
        add(f"frozen: cached vs live, {epochs} epochs", value, f">= {TARGETS['frozen_cache_speedup']:g}x",
            value >= TARGETS["frozen_cache_speedup"])
    for approach, value in results.get("predict_ms", {}).items():
        add(f"prediction p95, {approach}", value["p95"], f"< {TARGETS['predict_p95_ms']:g} ms",
            value["p95"] < TARGETS["predict_p95_ms"])
    if results.get("predict_all_ms"):
        value = results["predict_all_ms"]["p95"]
        add("prediction p95, all three", value, f"< {TARGETS['predict_all_p95_ms']:g} ms",
            value < TARGETS["predict_all_p95_ms"])
    for approach, value in results.get("peak_rss_mb", {}).items():
        add(f"peak RSS, {approach}", value, f"< {TARGETS['peak_rss_mb']:g} MB", value < TARGETS["peak_rss_mb"])
    return checks
