"""The published models that ship in the repository's models/, and the one command that rebuilds them.

    python -m speedsign.shipped [--shared ../shared] [--out models] [--runs-dir runs] [--force]

Chosen by measurement (README, "Published models"): real GTSRB photos beat the synthetic set on
real photos (97.0% against 92.1% for scratch), so the three models train on
`../shared/data/gtsrb-speed32`, each with its `fast` preset and default time budget, and finetune
and frozen start from a backbone that speedsign trains for 5 minutes on the 34 other GTSRB signs
(`gtsrb-other32`): the only honest pretrained weights on a machine without internet. Each step is
the command a user would type; a run already trained on this machine is reused (runs are cached
by config, data and machine), so a second rebuild only republishes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from speedsign.bundles import MAX_WEIGHTS_MB, Published, publish_run, publish_summary
from speedsign.config import APPROACHES
from speedsign.errors import UserError

SOURCE_DATA = "gtsrb-other32"  # the backbone's data: every GTSRB sign that is not a speed limit
TARGET_DATA = "gtsrb-speed32"
PRESET = "fast"
MAX_TOTAL_MB = 40.0  # every shipped bundle together, as committed


def bundle_name(approach: str) -> str:
    """models/gtsrb-<approach>: the name `--weights bundle:NAME` and the pages use."""
    return f"gtsrb-{approach}"


# The Train page's backbone when ImageNet weights are not on the machine: the frozen bundle, whose
# backbone is exactly the one learned on the other GTSRB signs (frozen never changes it).
DEFAULT_BACKBONE = f"bundle:{bundle_name('frozen')}"


def train(approach: str, data: Path, *, runs_dir: Path, weights: str | None = None, force: bool = False) -> Path:
    """`python -m speedsign train ...` as a user runs it (its own process: the budget is the command's)."""
    command = [sys.executable, "-m", "speedsign", "train", "--approach", approach, "--data", str(data),
               "--preset", PRESET, "--runs-dir", str(runs_dir), "--json"]
    if weights:
        command += ["--weights", weights]
    if force:
        command.append("--force")
    print("$ python " + " ".join(command[1:]), file=sys.stderr, flush=True)
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    lines = finished.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    if finished.returncode != 0 or result.get("state") != "done":
        raise UserError(f"training {approach} on {data.name} did not finish: {result or finished.returncode}")
    print(f"  {result['run_id']}: best val acc {result.get('best_val_acc')}, {result.get('seconds')} s"
          + (" (cached)" if result.get("cached") else ""), file=sys.stderr, flush=True)
    return Path(result["run_dir"])


def rebuild(*, shared: Path, out: Path, runs_dir: Path, force: bool = False) -> list[Published]:
    """Train (or reuse) the backbone and the three approaches, and publish them into `out`."""
    source, target = shared / "data" / SOURCE_DATA, shared / "data" / TARGET_DATA
    for folder in (source, target):
        if not folder.is_dir():
            raise UserError(f"{folder} is not here: the shipped models are trained on the GTSRB photos in "
                            f"{shared}/data (pass --shared)")
    backbone = train("scratch", source, runs_dir=runs_dir, force=force)
    published = []
    for approach in APPROACHES:
        weights = None if approach == "scratch" else f"run:{backbone.name}"
        run_dir = train(approach, target, runs_dir=runs_dir, weights=weights, force=force)
        published.append(publish_run(run_dir, out_dir=out, name=bundle_name(approach), runs_dir=runs_dir,
                                     force=True))
    total = sum(p.bundle_mb for p in published)
    if total > MAX_TOTAL_MB or any(p.weights_mb > MAX_WEIGHTS_MB for p in published):
        raise UserError(f"the shipped bundles take {total:.1f} MB, over the {MAX_TOTAL_MB:.0f} MB allowed")
    return published


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m speedsign.shipped", description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="the folder that holds data/gtsrb-*")
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--force", action="store_true", help="retrain every run instead of reusing it")
    args = parser.parse_args(argv)
    try:
        published = rebuild(shared=args.shared, out=args.out, runs_dir=args.runs_dir, force=args.force)
    except UserError as error:
        print(f"speedsign: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(publish_summary(published)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
