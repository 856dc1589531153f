"""Synthetic to real: `python -m bench.sim2real`.

Renders the default synthetic set (what a fresh machine renders on first start), trains each
approach that can train offline on it with the `fast` preset through the command line a user
runs, and scores every model on every real photo of a GTSRB folder (default
../shared/data/gtsrb-speed32). No real photo is used for training or for choosing a
checkpoint: the checkpoint is picked on the synthetic val split (by track).

The real photos are reported in two parts as well as in all: the "tuning" tracks (the real val
split by track, seed 0, 20%), on which renderer variants were compared while the renderer was
built, and the "untouched" tracks, which no choice ever looked at.

finetune and frozen need a pretrained backbone; offline there is none unless one is given
(`--weights run:ID` or a file, e.g. a backbone trained on the other GTSRB signs), so without
`--weights` only scratch trains, and the report says so.
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

import numpy as np
import torch

from bench.machine import describe_machine, machine_info
from bench.report import replace_block
from speedsign import synth
from speedsign.data import scan_dataset
from speedsign.metrics import wilson_interval
from speedsign.predict import Predictor, evaluate_split

REPO = Path(__file__).resolve().parents[1]
REAL_DEFAULT = REPO.parent / "shared" / "data" / "gtsrb-speed32"
FACES_PICTURE = REPO / "docs" / "synth_faces.png"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.sim2real", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=REAL_DEFAULT, help="folder of real photos to score on")
    parser.add_argument("--work", type=Path, default=Path("/tmp/speedsign-sim2real"))
    parser.add_argument("--per-class", type=int, default=synth.DEFAULT_PER_CLASS)
    parser.add_argument("--frames-per-track", type=int, default=synth.DEFAULT_FRAMES_PER_TRACK)
    parser.add_argument("--render-seed", type=int, default=0, help="seed of the rendered set")
    parser.add_argument("--weights", help="backbone for finetune and frozen (run:ID or a file); "
                                          "without it only scratch trains offline")
    parser.add_argument("--approaches", default="scratch,finetune,frozen")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra flag for every `speedsign train` (e.g. --train-arg=--epochs=2)")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "sim2real.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="replace the section between the sim2real markers here")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--no-write", action="store_true", help="print only: write neither --json nor the docs")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rewrite the docs from the --json file of an earlier run")
    return parser.parse_args(argv)


def save_faces_picture(real: Path, out: Path) -> None:
    """docs/synth_faces.png: per class the flat face, rendered samples, and real photos of the
    tuning tracks only (the untouched tracks stay unseen)."""
    from dataclasses import replace

    from PIL import Image

    from speedsign.faces import face_rows, face_sheet

    index = scan_dataset(real, val_fraction=0.2, seed=0)
    tuning = replace(index, splits={"train": index.samples("val")})
    Image.fromarray(face_sheet(face_rows(tuning, per_class=5))).save(out, optimize=True)


def render(out: Path, per_class: int, frames_per_track: int = synth.DEFAULT_FRAMES_PER_TRACK,
           seed: int = 0) -> dict[str, Any]:
    """The default set, as first start renders it (unless told otherwise), timed."""
    report = synth.render_dataset(out, per_class=per_class, frames_per_track=frames_per_track, seed=seed,
                                  overwrite=True)
    return {"images": report.n_images, "per_class": per_class, "frames_per_track": frames_per_track,
            "seed": seed, "size": report.size, "render_s": report.seconds, "workers": synth.default_workers()}


def train(approach: str, data: Path, runs: Path, *, weights: str | None, extra: list[str]) -> dict[str, Any]:
    """`python -m speedsign train ... --json` as a user runs it; returns its JSON and wall time."""
    command = [sys.executable, "-m", "speedsign", "train", "--approach", approach, "--preset", "fast",
               "--data", str(data), "--runs-dir", str(runs), "--force", "--json", *extra]
    if weights and approach != "scratch":
        command += ["--weights", weights]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "command": shlex.join(command), "wall_s": round(wall, 1)}


def score(run_dir: Path, real: Path) -> dict[str, Any]:
    """Accuracy on every real photo, and on the tuning and untouched tracks separately."""
    predictor = Predictor(run_dir)
    report, probs, labels = evaluate_split(predictor, real, split="all")
    tuning = {s.path for s in scan_dataset(real, val_fraction=0.2, seed=0).samples("val")}
    in_tuning = np.array([f in tuning for f in report["files"]])
    right = probs.argmax(axis=1) == labels

    def part(mask: np.ndarray) -> dict[str, Any]:
        n, k = int(mask.sum()), int(right[mask].sum())
        return {"n": n, "accuracy": k / n if n else None, "ci95": list(wilson_interval(k, n)) if n else None}

    recall = {name: round(s["recall"], 4) for name, s in report["per_class"].items()}
    return {"all": part(np.ones_like(right)), "tuning": part(in_tuning), "untouched": part(~in_tuning),
            "recall": recall, "most_confused": report.get("most_confused", [])[:3]}


def run_approach(approach: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    if approach != "scratch" and not args.weights:
        return {"approach": approach, "skipped": "needs a pretrained backbone: offline there is none "
                                                 "unless --weights gives one"}
    result = train(approach, data, args.work / "runs", weights=args.weights, extra=args.train_arg)
    status = json.loads((Path(result["run_dir"]) / "status.json").read_text())
    config = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    return {"approach": approach, "run_id": result["run_id"], "command": result["command"],
            "wall_s": result["wall_s"], "train_s": status.get("seconds"), "epochs": status.get("epoch"),
            "img_size": config["config"]["img_size"], "images_per_s": status.get("images_per_s"),
            "synthetic_val": status.get("best_val_acc"), "real": score(Path(result["run_dir"]), args.real)}


def percent(part: dict[str, Any]) -> str:
    if not part or part.get("accuracy") is None:
        return "-"
    low, high = part["ci95"]
    return f"{100 * part['accuracy']:.1f}% ({100 * low:.1f}-{100 * high:.1f}%)"


def tracks(data: dict[str, Any]) -> str:
    """'in tracks of 2 frames, ' where the run recorded it (older runs did not)."""
    return f"in tracks of {data['frames_per_track']} frames, " if "frames_per_track" in data else ""


def markdown(results: dict[str, Any]) -> str:
    """The section for README.md and docs/benchmarks.md."""
    data = results["data"]
    lines = [f"Measured with `{results['command']}` on {results['machine_text']}. "
             f"The default set: {data['images']:,} rendered images ({data['per_class']} per class, "
             f"{tracks(data)}{data['size']} px), rendered in {data['render_s']:.1f} s with {data['workers']} workers. "
             f"Scored on every real photo of `{results['real_name']}` ({results['real_n']:,} photos); "
             "no real photo was used for training or for choosing a checkpoint (synthetic val, by "
             "track). \"Untouched\": the 80% of real tracks that no measurement scored while the renderer "
             "was built.",
             "",
             "| approach | real photos, all | untouched tracks | synthetic val | training | weakest classes (recall) |",
             "|---|---|---|---|---|---|"]
    for row in results["approaches"]:
        if "skipped" in row:
            lines.append(f"| {row['approach']} | not trained: {row['skipped']} | | | | |")
            continue
        weakest = sorted(row["real"]["recall"].items(), key=lambda kv: kv[1])[:2]
        lines.append(
            f"| {row['approach']} | {percent(row['real']['all'])} | {percent(row['real']['untouched'])} | "
            f"{100 * (row['synthetic_val'] or 0):.1f}% | {row['train_s']:.0f} s, {row['epochs']} epochs at "
            f"{row['img_size']} px | " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in weakest) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        write_docs(args, json.loads(args.json.read_text()))
        return 0
    if not (args.real / "train").is_dir():
        print(f"bench.sim2real: no real photos at {args.real} (expected train/<class>/)", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = args.work / "synth"
    results: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "bench.sim2real", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(torch.device("cpu")), "real_name": args.real.name,
        "real_n": sum(len(v) for v in scan_dataset(args.real).splits.values()),
        "data": render(data, args.per_class, args.frames_per_track, args.render_seed), "approaches": [],
    }
    results["machine_text"] = describe_machine(results["machine"])
    print(f"rendered {results['data']['images']} images in {results['data']['render_s']:.1f} s", flush=True)
    for approach in args.approaches.split(","):
        row = run_approach(approach.strip(), args, data)
        results["approaches"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(results))
    if not args.no_write:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        write_docs(args, results)
    return 0


def write_docs(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The table into docs/benchmarks.md and the README, and the faces picture."""
    text = markdown(results)
    replace_block(args.docs, text, name="sim2real", heading="Synthetic to real")
    replace_block(args.readme, text, name="sim2real", heading="Synthetic to real")
    save_faces_picture(args.real, FACES_PICTURE)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
