"""Fewer images to the same accuracy: `python -m bench.efficiency`.

Trains one approach on a real data set (default ../shared/data/gtsrb-speed32) for a fixed
number of training images, once per lever (one change against the baseline), through the
command line a user runs (`speedsign train --steps N`), and records val accuracy after every
epoch against the images seen. Images seen do not depend on the machine; seconds do, and are
recorded with the CPU flags.

Honesty: the levers are compared on a tuning split (`--seed 1`: other val tracks and another
init); the chosen recipe is then confirmed once on the standard split (`--seed 0`), which no
choice looked at. The reported accuracy is the last epoch's, not the best epoch's: choosing the
best epoch would choose on the very images it is scored on.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.machine import describe_machine, machine_info
from bench.report import replace_block
from speedsign.runs import read_metrics

REPO = Path(__file__).resolve().parents[1]
DATA_DEFAULT = REPO.parent / "shared" / "data" / "gtsrb-speed32"
THRESHOLDS = (0.95, 0.97, 0.98)
DEFAULT_IMAGES = 60_000  # the target: 98% within 60,000 images at 64 px

# One change each against a reference recipe. The first levers were measured against the scratch
# preset as it was (batch 128, lr 0.1, no contrast stretch); the flags spell it out, so that each
# row reruns as it ran, whatever the preset is now.
OLD_PRESET = ["--batch-size", "128", "--lr", "0.1", "--contrast", "none"]
BATCH_32 = ["--batch-size", "32", "--lr", "0.05", "--contrast", "none"]  # the preset of 2026-12-04
STRETCH = ["--batch-size", "32", "--lr", "0.05", "--contrast", "stretch"]  # the preset of 2026-12-07
FINETUNE = ["--batch-size", "128", "--lr", "0.05", "--augment", "signs", "--contrast", "none"]  # as of 2026-12-07
LEVERS: dict[str, list[str]] = {
    "batch 128 lr 0.1 (old preset)": OLD_PRESET,
    "ema": [*OLD_PRESET, "--ema", "0.99"],
    "adamw": [*OLD_PRESET, "--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05"],
    "lr 0.2": [*OLD_PRESET, "--lr", "0.2"],
    "no label smoothing": [*OLD_PRESET, "--label-smoothing", "0"],
    "no augmentation": [*OLD_PRESET, "--augment", "none"],
    "batch 64": [*OLD_PRESET, "--batch-size", "64"],
    "batch 32 lr 0.05 (new preset)": BATCH_32,
    "warm-up 0.1": [*OLD_PRESET, "--warmup", "0.1"],
    "48 px same FLOPs": [*OLD_PRESET, "--img-size", "48"],
    "32 px same FLOPs": [*OLD_PRESET, "--img-size", "32"],
    "batch 32 + ema 0.998": [*BATCH_32, "--ema", "0.998"],
    "batch 32 + contrast stretch": [*BATCH_32, "--contrast", "stretch"],
    "batch 32 + contrast stretch + no label smoothing": [*BATCH_32, "--contrast", "stretch",
                                                        "--label-smoothing", "0"],
    # Against the preset of 2026-12-07 (batch 32, lr 0.05, contrast stretch), one change each:
    "stretch preset": STRETCH,
    "stretch: 48 px same FLOPs": [*STRETCH, "--img-size", "48"],
    "stretch: ema 0.998": [*STRETCH, "--ema", "0.998"],
    "stretch: no label smoothing": [*STRETCH, "--label-smoothing", "0"],
    "stretch: no augmentation": [*STRETCH, "--augment", "none"],
    "stretch: warm-up 0.1": [*STRETCH, "--warmup", "0.1"],
    "stretch: batch 64 lr 0.1": [*STRETCH, "--batch-size", "64", "--lr", "0.1"],
    "stretch: no augmentation + batch 64 lr 0.1": [*STRETCH, "--batch-size", "64", "--lr", "0.1", "--augment", "none"],
    "stretch: batch 64 lr 0.1 + warm-up 0.1": [*STRETCH, "--batch-size", "64", "--lr", "0.1", "--warmup", "0.1"],
    "stretch: no augmentation + warm-up 0.1": [*STRETCH, "--augment", "none", "--warmup", "0.1"],
    "auto preset": [*STRETCH, "--augment", "auto"],  # the preset since 2026-12-07: none below 4 passes
    "auto preset + centre levels": [*STRETCH, "--augment", "auto", "--contrast", "centre"],
    # finetune (run with --approach finetune --reference-size 48 --extra '--weights bundle:gtsrb-frozen'):
    "frozen preset": ["--batch-size", "256"],  # run with --approach frozen --extra '--weights bundle:gtsrb-frozen'
    "finetune preset": FINETUNE,
    "finetune + contrast stretch": [*FINETUNE, "--contrast", "stretch"],
    "finetune: no augmentation": [*FINETUNE, "--augment", "none"],
    "finetune + contrast stretch + no augmentation": [*FINETUNE, "--contrast", "stretch", "--augment", "none"],
}

assert not any("," in name for name in LEVERS), "--levers splits on commas: no comma in a lever's name"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.efficiency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA_DEFAULT)
    parser.add_argument("--approach", default="scratch")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="training images per run (at 64 px)")
    parser.add_argument("--seed", type=int, default=1, help="1: the tuning split; 0: the standard split")
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names of LEVERS")
    parser.add_argument("--extra", default="", help="flags added to every run (e.g. '--ema 0.99')")
    parser.add_argument("--reference-size", type=int, default=64,
                        help="runs at another --img-size get the same training FLOPs as this size")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/speedsign-efficiency"))
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "efficiency.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "benchmarks.md",
                        help="the images-to-accuracy tables go between the efficiency markers here")
    parser.add_argument("--report-only", action="store_true", help="train nothing: rewrite the docs from --json")
    parser.add_argument("--tta", type=Path, metavar="RUN_DIR",
                        help="train nothing: score RUN_DIR's last weights on its val split with test-time "
                             "shifts (never flips), and record it")
    return parser.parse_args(argv)


def flag_value(flags: list[str], name: str, default: str) -> str:
    """The last value given to `name` (argparse keeps the last), else `default`."""
    spots = [i for i, flag in enumerate(flags) if flag == name]
    return flags[spots[-1] + 1] if spots else default


def steps_for(flags: list[str], *, images: int, reference_size: int, default_batch: int = 32) -> int:
    """Steps that show `images` images at the reference size, or the same FLOPs at another size."""
    batch = int(flag_value(flags, "--batch-size", str(default_batch)))
    size = int(flag_value(flags, "--img-size", str(reference_size)))
    scaled = images * (reference_size / size) ** 2  # a ResNet's FLOPs per image grow with the pixels
    return max(1, int(scaled // batch))


def images_to(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """Images seen when val accuracy first reached `threshold` (per epoch), or None."""
    for row in curve:
        if row["val_acc"] >= threshold:
            return row["images"]
    return None


def run_lever(name: str, flags: list[str], args: argparse.Namespace) -> dict[str, Any]:
    steps = steps_for(flags, images=args.images, reference_size=args.reference_size)
    command = [sys.executable, "-m", "speedsign", "train", "--approach", args.approach, "--data", str(args.data),
               "--runs-dir", str(args.runs_dir), "--seed", str(args.seed), "--steps", str(steps),
               "--budget", "0",  # the images are fixed here, not the time
               *shlex.split(args.extra), *flags, "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"lever": name, "flags": flags, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    curve = [{"epoch": row["epoch"], "images": row.get("images"), "val_acc": row["val_acc"],
              "seconds": row["seconds"], "images_per_s": row["images_per_s"]}
             for row in read_metrics(Path(result["run_dir"]))[0]]
    return {"lever": name, "flags": flags, "command": shlex.join(command[1:]), "run_id": result["run_id"],
            "steps": steps, "images": curve[-1]["images"] if curve else None,
            "final_val_acc": curve[-1]["val_acc"] if curve else None,
            "images_to": {f"{t:.2f}": images_to(curve, t) for t in THRESHOLDS},
            "wall_s": round(seconds, 1), "curve": curve}


def shifted(batch: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch moved by (dy, dx) pixels, edges repeated (as the training augmentation pads)."""
    n, _, height, width = batch.shape
    theta = torch.tensor([[1.0, 0.0, -2 * dx / width], [0.0, 1.0, -2 * dy / height]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


def measure_tta(run_dir: Path, data: Path, shifts: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
    """Val accuracy of a run's last weights alone, and averaged over 4 shifts of each size."""
    from speedsign.augment import prepare_batch
    from speedsign.config import config_from_dict
    from speedsign.data import load_decoded, scan_dataset, select_splits
    from speedsign.models import build_untrained

    payload = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    config = config_from_dict(payload["config"])
    model = build_untrained(config.approach, num_classes=len(payload["classes"]))
    model.load_state_dict(payload["model"])
    model.eval()
    index = scan_dataset(data, val_fraction=config.val_fraction, seed=config.seed)
    decoded = load_decoded(index, size=config.stored_size, resize=config.resize)
    val = select_splits(index, decoded, decoded["images"])["val"]

    @torch.no_grad()
    def probabilities(dy: int, dx: int) -> torch.Tensor:
        parts = []
        for start in range(0, len(val.labels), 256):
            batch = prepare_batch(val.images[start:start + 256], config=config, train=False)
            parts.append(torch.softmax(model(shifted(batch, dy, dx) if dy or dx else batch), 1))
        return torch.cat(parts)

    plain = probabilities(0, 0)
    result = {"run_id": run_dir.name, "n": int(len(val.labels)),
              "none": float((plain.argmax(1) == val.labels).float().mean())}
    for size in shifts:
        total = plain.clone()
        for dy, dx in ((size, 0), (-size, 0), (0, size), (0, -size)):
            total += probabilities(dy, dx)
        result[f"shifts of {size} px"] = float((total.argmax(1) == val.labels).float().mean())
    return result


def judge_tta(row: dict[str, Any]) -> str:
    """What the best shift gained, in images and against one standard error of the plain score."""
    n, plain = row["n"], row["none"]
    name, best = max(((k, v) for k, v in row.items() if k not in ("run_id", "n", "none")), key=lambda kv: kv[1])
    gained = round((best - plain) * n)
    error = 100 * math.sqrt(plain * (1 - plain) / n)
    verdict = ("within one standard error" if abs(best - plain) * 100 <= error else "more than one standard error")
    return (f"The best, {name}, changes {gained:+d} of {n} answers ({100 * (best - plain):+.2f} pt; one standard "
            f"error of the plain score is {error:.2f} pt, so the gain is {verdict}) for 5 times the inference. "
            "The shift was chosen on these images, so its score is not an honest accuracy; the product "
            "does not use test-time shifts.")


def _images(value: int | None) -> str:
    return "not reached" if value is None else f"{value:,}"


def markdown(results: dict[str, Any]) -> str:
    """One images-to-accuracy table per recorded approach and split."""
    parts = []
    for key, record in results.items():
        if key == "tta":
            continue
        machine = describe_machine(record["machine"])
        parts.append(f"### {key}\n\n{record['approach']}, seed {record['seed']} "
                     f"({'the tuning split' if record['seed'] else 'the standard split, untouched by the choices'}), "
                     f"{record['images_budget']:,} training images at {record.get('reference_size', 64)} px or the "
                     f"same FLOPs; measured on {machine}."
                     + (" frozen trains only its head, on features computed once: its seconds and images/s are "
                        "the head's." if record["approach"] == "frozen" else "") +
                     " Val accuracy is the last epoch's (no checkpoint chosen on val); images to an accuracy are "
                     "counted at the end of the first epoch that reached it. Images do not depend on the machine or "
                     "its load; seconds do (other work shared these 2 cores at times).\n")
        parts.append("| lever | flags | images seen | last-epoch val acc | images to 95% | to 97% | to 98% "
                     "| train s | img/s |\n|---|---|---|---|---|---|---|---|---|")
        for name, row in record["levers"].items():
            if "error" in row:
                parts.append(f"| {name} | `{' '.join(row['flags'])}` | failed: {row['error']} | | | | | | |")
                continue
            speeds = [c["images_per_s"] for c in row["curve"]]
            reach = row["images_to"]
            seconds = sum(c["seconds"] for c in row["curve"])  # all epochs, a resumed run's earlier ones too
            parts.append(f"| {name} | `{' '.join(row['flags']) or '(fast preset)'}` | {row['images']:,} "
                         f"| {100 * row['final_val_acc']:.2f}% | {_images(reach['0.95'])} | {_images(reach['0.97'])} "
                         f"| {_images(reach['0.98'])} | {seconds:.0f} | {sum(speeds) / len(speeds):.0f} |")
        parts.append("")
    for run_id, row in results.get("tta", {}).items():
        scores = ", ".join(f"{name} {100 * value:.2f}%" for name, value in row.items()
                           if name not in ("run_id", "n"))
        parts.append(f"Test-time shifts (never flips) on run {run_id}'s last weights, {row['n']} val images: "
                     f"{scores}. {judge_tta(row)}\n")
    return "\n".join(parts).rstrip()


def record_key(args: argparse.Namespace, machine: dict[str, Any]) -> str:
    """One table per approach, split, extra flags and kind of CPU: seconds are only comparable
    within one kind, and a row's flags say which kernels (AVX2 or AVX512, fp32 or bf16) ran it."""
    flags = " ".join(machine.get("cpu_flags") or []) or "no flags read"
    limits = " ".join(f"{k}={v}" for k, v in (machine.get("cpu_isa_limits") or {}).items())
    extra = f" {args.extra}" if args.extra else ""
    images = f", {args.images:,} images" if args.images != DEFAULT_IMAGES else ""
    return f"{args.approach} seed {args.seed}{extra}{images}, {flags}{'; ' + limits if limits else ''}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tta:
        results = json.loads(args.json.read_text()) if args.json.exists() else {}
        results.setdefault("tta", {})[args.tta.name] = measure_tta(args.tta, args.data)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(json.dumps(results["tta"][args.tta.name]))
        args.report_only = True
    if args.report_only:
        replace_block(args.docs, markdown(json.loads(args.json.read_text())), name="efficiency",
                      heading="Images to accuracy")
        return 0
    if not args.data.is_dir():
        print(f"bench.efficiency: no data at {args.data}", file=sys.stderr)
        return 2
    machine = machine_info(torch.device("cpu"))
    print(describe_machine(machine), flush=True)
    names = [name.strip() for name in args.levers.split(",") if name.strip()]  # hence no comma in a name
    unknown = [name for name in names if name not in LEVERS]
    if unknown:
        print(f"bench.efficiency: unknown levers {unknown}; known: {list(LEVERS)}", file=sys.stderr)
        return 2
    previous = json.loads(args.json.read_text()) if args.json.exists() else {}
    key = record_key(args, machine)
    record = previous.setdefault(key, {"machine": machine, "approach": args.approach, "seed": args.seed,
                                       "extra": args.extra, "images_budget": args.images,
                                       "reference_size": args.reference_size, "levers": {}})
    for name in names:
        row = run_lever(name, LEVERS[name], args)
        record["levers"][name] = row
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(previous, indent=1) + "\n")  # after each lever: a crash keeps the rest
        print(f"{name:>22}: final val {row.get('final_val_acc')}, images to 95/97/98% "
              f"{row.get('images_to')}, {row.get('wall_s')} s {row.get('error', '')}", flush=True)
    replace_block(args.docs, markdown(previous), name="efficiency", heading="Images to accuracy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
