"""`python -m speedsign SUBCOMMAND`: everything the dashboard does, from a terminal.

With --json the last line on stdout is one JSON object. Bad input exits 2 with a one-line
message on stderr and no traceback (the contract in the README, "Command line"). A
background job of the dashboard is this command line too (`speedsign job RUN_DIR`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from speedsign.config import EVAL_SPLITS, PRECISIONS, SETTINGS, TrainConfig, resolve_config
from speedsign.errors import UserError
from speedsign.storage import default_runs_dir
from speedsign.synth import DEFAULT_PER_CLASS, DEFAULT_SIZE

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"speedsign: error: {message} (see python -m speedsign {self.prog.split()[-1]} --help)",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _duration(text: str) -> float:
    from speedsign.budget import parse_duration

    try:
        return parse_duration(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def emit(result: dict[str, Any], *, as_json: bool, text: str) -> None:
    print(json.dumps(result, sort_keys=False) if as_json else text, flush=True)


# ---------------------------------------------------------------- train

_TYPES: dict[type, Callable[[str], Any]] = {int: _int, float: _finite_float, str: str}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per training setting (config.SETTINGS), then how and where to run."""
    for setting in SETTINGS:
        extra: dict[str, Any] = {"choices": setting.choices} if setting.choices else {}
        if setting.name == "approach":
            extra["required"] = True
        elif setting.name == "preset":
            extra["default"] = "fast"
        else:
            extra["help"] = f"{setting.help} (default: the preset's)"
        kind = _duration if setting.name == "budget" else _TYPES[setting.kind]
        parser.add_argument(setting.flag, dest=setting.name, type=kind,
                            **{"help": setting.help, **extra})
    parser.add_argument("--data", required=True, type=Path, help="data folder (see README: layouts)")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--force", action="store_true", help="train afresh even if the run is finished")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training step (GPU)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="auto: bf16 autocast on CUDA and on CPUs with native bf16")
    parser.add_argument("--background", action="store_true", help="start as a background job and return")
    parser.add_argument("--nproc", type=_int, default=1, help="with --background: processes (GPUs) to use")
    parser.add_argument("--json", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {s.name: getattr(args, s.name) for s in SETTINGS if s.name not in ("approach", "preset")}
    return resolve_config(approach=args.approach, preset=args.preset, overrides=overrides)


def command_train(args: argparse.Namespace) -> int:
    from speedsign.job import TrainRequest, train_run

    request = TrainRequest(config=config_from_args(args), data_dir=args.data,
                           runs_dir=args.runs_dir or default_runs_dir(), device=args.device, force=args.force,
                           compile=args.compile, precision=args.precision)
    if args.background:
        from speedsign.jobs import launch

        return report_train(launch(request, nproc=args.nproc).to_json(), as_json=args.json)
    return report_train(train_run(request, started=args.started).to_json(), as_json=args.json)


def command_job(args: argparse.Namespace) -> int:
    """A background job: train the request that `jobs.launch` wrote into RUN_DIR/config.json."""
    from speedsign.job import read_request, train_run

    return report_train(train_run(read_request(args.run_dir), started=args.started).to_json(), as_json=True)


def report_train(result: dict[str, Any], *, as_json: bool) -> int:
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 alone reports
    text = (f"{result['run_id']}: {result['state']}"
            + (" (cached)" if result.get("cached") else "")
            + (f", best val acc {result['best_val_acc']:.4f}" if isinstance(result.get("best_val_acc"), float) else "")
            + (f" [{result['error']}]" if result.get("error") else "")
            + f"\n  {result['run_dir']}")
    emit(result, as_json=as_json, text=text)
    return 0 if result["state"] in ("done", "queued", "running") else 1


# ---------------------------------------------------------------- eval, predict

def command_eval(args: argparse.Namespace) -> int:
    from speedsign.predict import Predictor, evaluate_split

    if args.corruptions:
        return report_corruptions(Predictor(args.run_dir), args)
    report, _, _ = evaluate_split(Predictor(args.run_dir), args.data, split=args.split)
    report.pop("files", None)
    low, high = report["accuracy_ci95"]
    text = (f"{args.split}: accuracy {report['accuracy']:.4f} (95% CI {low:.3f}-{high:.3f}) on {report['n']} images\n"
            + "\n".join(f"  {name:>14}  P {s['precision']:.3f}  R {s['recall']:.3f}  F1 {s['f1']:.3f}  n {s['support']}"
                        for name, s in report["per_class"].items()))
    emit(report, as_json=args.json, text=text)
    return 0


def report_corruptions(predictor: Any, args: argparse.Namespace) -> int:
    """`eval --corruptions`: accuracy under each corruption and severity (speedsign.corruptions)."""
    from speedsign.corruptions import corruption_report, describe_corruption

    report = corruption_report(predictor, args.data, split=args.split, seed=args.seed,
                               progress=_print_progress("corrupting"))
    lines = [f"{args.split}: {report['n']} images, corruptions drawn from seed {report['seed']}"]
    for row in report["rows"]:
        name = "clean" if row["corruption"] == "clean" else describe_corruption(row["corruption"], row["severity"])
        lines.append(f"  {name:<24} accuracy {row['accuracy']:.4f}")
    lines.append(f"  mean under corruption {report['mean_corruption_accuracy']:.4f}; "
                 f"worst: {report['worst']['description']}")
    emit(report, as_json=args.json, text="\n".join(lines))
    return 0


def command_predict(args: argparse.Namespace) -> int:
    from speedsign.predict import Predictor, predict_files

    if args.top < 1:
        raise UserError("--top must be at least 1")
    entries = predict_files(Predictor(args.run_dir), args.images, top=args.top)
    lines = []
    for entry in entries:
        if "error" in entry:
            lines.append(f"{entry['image']}: error: {entry['error']}")
        else:
            lines.append(f"{entry['image']}: " + ", ".join(f"{t['label']} {t['prob']:.3f}" for t in entry["top"]))
    emit({"predictions": entries}, as_json=args.json, text="\n".join(lines))
    return 0 if all("error" not in e for e in entries) else 1


# ---------------------------------------------------------------- publish

def command_publish(args: argparse.Namespace) -> int:
    from speedsign.bundles import publish_run, publish_summary

    if args.name and len(args.run_dirs) > 1:
        raise UserError("--name names one bundle: publish one run at a time with it")
    results = [publish_run(run_dir, out_dir=args.out, name=args.name, data_dir=args.data, force=args.force)
               for run_dir in args.run_dirs]
    lines = [f"{r.name}: {r.bundle_mb:.1f} MB (weights {r.weights_mb:.1f} MB), val {r.bundle_acc:.4f} int8 against "
             f"{r.full_acc:.4f} float32 ({r.change_points:+.2f} points) on {r.n_val} images\n  {r.path}"
             for r in results]
    emit(publish_summary(results), as_json=args.json, text="\n".join(lines))
    return 0


# ---------------------------------------------------------------- study

def command_study(args: argparse.Namespace) -> int:
    from speedsign.bundles import inspect_any
    from speedsign.study import build_study, load_study, measure_latency_ms, robustness_rows
    from speedsign.study_report import write_report

    for run_dir in args.run_dirs:
        if not (Path(run_dir) / "config.json").is_file():
            raise UserError(f"not a run folder: {run_dir}")
    study = load_study([inspect_any(Path(d)) for d in args.run_dirs], split=args.split)
    robustness = (robustness_rows(study, images=args.corruption_images, seed=args.seed)
                  if args.corruptions else None)
    latency = measure_latency_ms(study) if args.latency else None
    result = build_study(study, latency_ms=latency, robustness=robustness, seed=args.seed)
    if args.out is not None:
        write_report(result, args.out)
    text = "\n".join(result.conclusion) + (f"\n  wrote {args.out}" if args.out is not None else "")
    emit(result.to_json(), as_json=args.json, text=text)
    return 0


# ---------------------------------------------------------------- data

def _print_progress(label: str) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{label} {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
    return progress


def command_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from speedsign.synth import render_dataset

        report = render_dataset(args.out, per_class=args.per_class, seed=args.seed, size=args.size,
                                overwrite=args.overwrite, progress=_print_progress("rendering"))
        result = {"out": str(report.out), "images": report.n_images, "per_class": report.per_class,
                  "seed": report.seed, "seconds": round(report.seconds, 2)}
        emit(result, as_json=args.json, text=f"wrote {report.n_images} images to {report.out} "
                                             f"in {report.seconds:.1f} s")
        return 0
    if args.data_command == "gtsrb":
        from speedsign.gtsrb import import_gtsrb

        report = import_gtsrb(args.out, source=args.source, progress=_print_progress("importing"))
        result = {"out": str(report.out), "images": report.n_images, "per_class": report.per_class,
                  "skipped": report.skipped, "seconds": round(report.seconds, 2)}
        emit(result, as_json=args.json, text=f"wrote {report.n_images} images to {report.out}")
        return 0
    from speedsign.data import dataset_stats

    stats = dataset_stats(args.dir)
    lines = [f"{stats['root']}: {stats['images']} images, {len(stats['classes'])} classes ({stats['layout']} layout)"]
    for split, counts in stats["counts"].items():
        lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                     + f"  ({stats['groups'][split]} groups)")
    lines.append(f"  size: {stats['sizes']}  mean {stats['mean']}  std {stats['std']}")
    lines.append(f"  unreadable: {len(stats['unreadable'])}  ignored: {len(stats['ignored'])}")
    emit(stats, as_json=args.json, text="\n".join(lines))
    return 0


# ---------------------------------------------------------------- runs, cancel

def command_runs(args: argparse.Namespace) -> int:
    from speedsign.bundles import list_bundles
    from speedsign.runs import list_runs

    runs = list_runs(args.runs_dir or default_runs_dir())
    if args.models_dir is not None:
        runs += list_bundles(args.models_dir)
    rows = [r.to_json() for r in runs]
    lines = [f"{r['run_id']:<36} {r['state']:<10} {r['epoch']:>3}/{r['epochs']:<3} "
             f"{(r['best_val_acc'] if r['best_val_acc'] is not None else float('nan')):.4f}"
             + ("  published" if r.get("published") else "")
             + (f"  DAMAGED: {r['damaged']}" if r["damaged"] else "") for r in rows]
    emit({"runs": rows}, as_json=args.json, text="\n".join(lines) or "no runs yet")
    return 0


def command_cancel(args: argparse.Namespace) -> int:
    from speedsign.jobs import request_cancel
    from speedsign.runs import RunDir

    if not RunDir(args.run_dir).status.exists():
        raise UserError(f"not a run folder: {args.run_dir}")
    signalled = request_cancel(args.run_dir)
    emit({"run_dir": str(args.run_dir), "signalled": signalled}, as_json=args.json,
         text="cancel requested" if signalled else "no live job for this run (cancel marker left)")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="speedsign", description="Train and compare speed-limit sign classifiers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train one approach (cached by config and data)")
    add_train_arguments(train)
    train.set_defaults(handler=command_train)

    evaluate = sub.add_parser("eval", help="evaluate a run (or a published bundle) on a data folder's val or test "
                                                   "split, or all of it")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--split", default="val", choices=EVAL_SPLITS,
                          help="val (as the run drew it), test, or all: every image of --data")
    evaluate.add_argument("--corruptions", action="store_true",
                          help="score the split under darkness, glare, blur, motion blur, noise, JPEG, occlusion, "
                               "rotation and scale at 3 severities each")
    evaluate.add_argument("--seed", type=_int, default=0, help="seed of the corruptions (with --corruptions)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=command_eval)

    predict = sub.add_parser("predict", help="classify image files with a run's (or a bundle's) best model")
    predict.add_argument("run_dir", type=Path)
    predict.add_argument("images", nargs="+")
    predict.add_argument("--top", type=_int, default=3)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=command_predict)

    publish = sub.add_parser("publish", help="write each finished run as a small bundle (int8 weights, config, "
                                             "metrics, predictions, model card) that travels with the app")
    publish.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    publish.add_argument("--out", required=True, type=Path, help="the models folder, e.g. models/")
    publish.add_argument("--name", default=None, help="the bundle's name (default: the run id); one run only")
    publish.add_argument("--data", type=Path, default=None,
                         help="the run's data folder, when it moved (the int8 weights are scored on its val split)")
    publish.add_argument("--force", action="store_true", help="replace a bundle of the same name")
    publish.add_argument("--json", action="store_true")
    publish.set_defaults(handler=command_publish)

    study = sub.add_parser("study", help="compare runs scored on the same images: paired tests, cost, "
                                         "calibration, robustness, a written conclusion")
    study.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    study.add_argument("--out", type=Path, default=None, help="write the study as one self-contained HTML file")
    study.add_argument("--split", default="val", choices=("val", "test"),
                       help="the stored predictions to compare (test: runs whose data set has test/)")
    study.add_argument("--corruptions", action="store_true",
                       help="also score every run under the corruptions (loads the models and images)")
    study.add_argument("--corruption-images", type=_int, default=500,
                       help="images of the split scored under each corruption (a fixed sample; default 500)")
    study.add_argument("--latency", action="store_true", help="also measure each model's prediction latency")
    study.add_argument("--seed", type=_int, default=0, help="seed of the bootstrap and the corruptions")
    study.add_argument("--json", action="store_true")
    study.set_defaults(handler=command_study)

    data = sub.add_parser("data", help="make, import or describe a data set")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    synth = data_sub.add_parser("synth", help="render the synthetic sign set")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--per-class", type=_int, default=DEFAULT_PER_CLASS,
                       help=f"images per class (default {DEFAULT_PER_CLASS}, the first-start set)")
    synth.add_argument("--seed", type=_int, default=0)
    synth.add_argument("--size", type=_int, default=DEFAULT_SIZE,
                       help=f"side in pixels (default {DEFAULT_SIZE}, as GTSRB)")
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("--json", action="store_true")
    gtsrb = data_sub.add_parser("gtsrb", help="import GTSRB's speed-limit classes")
    gtsrb.add_argument("--out", required=True, type=Path)
    gtsrb.add_argument("--source", type=Path, help="GTSRB_Final_Training_Images.zip or its extracted folder")
    gtsrb.add_argument("--json", action="store_true")
    stats = data_sub.add_parser("stats", help="images per class and split, sizes, mean/std, bad files")
    stats.add_argument("dir", type=Path)
    stats.add_argument("--json", action="store_true")
    data.set_defaults(handler=command_data)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--runs-dir", type=Path, default=None)
    runs.add_argument("--models-dir", type=Path, default=None,
                      help="also list the published models (bundles) in this folder, damaged ones with why")
    runs.add_argument("--json", action="store_true")
    runs.set_defaults(handler=command_runs)

    job = sub.add_parser("job", help="run the background job that a launch wrote into RUN_DIR (internal)")
    job.add_argument("run_dir", type=Path)
    job.set_defaults(handler=command_job)

    cancel = sub.add_parser("cancel", help="stop a background job cleanly")
    cancel.add_argument("run_dir", type=Path)
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(handler=command_cancel)
    return parser


def main(argv: Sequence[str] | None = None, *, started: float | None = None) -> int:
    """`started` (time.monotonic()): where a time budget starts; `python -m speedsign` passes the
    process's start. Default: now (a call from Python)."""
    started = time.monotonic() if started is None else started
    args = build_parser().parse_args(argv)
    args.started = started
    try:
        with warnings.catch_warnings():
            # torch's weights-only unpickler warns about the pickle protocol of a file it is
            # about to refuse; the refusal is the one line the user needs.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return int(args.handler(args))
    except UserError as error:
        print(f"speedsign: error: {str(error).splitlines()[0] if str(error) else 'bad input'}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("speedsign: interrupted", file=sys.stderr)
        return 130
