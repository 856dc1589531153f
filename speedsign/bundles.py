"""Published models (bundles): a finished run as a small, read-only folder that travels with the app.

A bundle, `models/<name>/`, is laid out like a run folder without its checkpoints, so every page
and command that reads a run reads a bundle the same way (`RunDir`, `inspect_run`, `Predictor`):

- the run's config.json, status.json, metrics.jsonl (the per-epoch curves) and budget.json;
- weights.pt: the best model with every conv and linear weight quantised to int8 per output
  channel (dequantised at load), everything else float32: 11.3 MB for a ResNet18 against 45 MB;
- predictions_val.npz, eval_val.json (and the test split's, when the data has test/): scored with
  the bundle's own int8 weights at publish time, with calibration.json refitted on them;
- MODEL_CARD.md: the data and its terms, the approach, accuracy with its interval, training time,
  the machine, and the accuracy change that quantisation made;
- bundle.json: the format, the source run, the quantisation, that change, and the sha256 and size
  of every file.

Reading trusts nothing: a file whose hash or size differs from bundle.json, a weights file that
`torch.load(weights_only=True)` refuses (a pickle that would run code), or one of the wrong shape
marks the bundle damaged (`RunInfo.damaged`); it is listed as such and never loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from speedsign.errors import UserError
from speedsign.models import file_sha256, load_refusal
from speedsign.runs import RunDir, RunInfo, inspect_run, read_metrics, read_run_config
from speedsign.storage import atomic_torch_save, atomic_write_json, atomic_write_text, read_json

BUNDLE_FORMAT = 1
WEIGHTS_FORMAT = "speedsign-bundle-weights"
QUANTIZATION = ("int8 per output channel (symmetric) for every conv and linear weight but the stem and the head; "
                "float32 for the rest")
# The first and last layers are the most sensitive to rounding and hold 0.1% of a ResNet18's weights:
# kept in float32 they halve the accuracy change (measured on the shipped scratch model: -0.07 -> -0.04
# points on 2,760 val photos) for 40 kB.
FLOAT_LAYERS: tuple[str, ...] = ("conv1.", "fc.")
# The run's own files that a bundle carries as they are (predictions are re-scored, see above).
COPIED: tuple[str, ...] = (RunDir.CONFIG, RunDir.STATUS, RunDir.METRICS, RunDir.BUDGET)
SCORED: tuple[str, ...] = (RunDir.PREDICTIONS, RunDir.EVALUATION, RunDir.PREDICTIONS_TEST,
                           RunDir.EVALUATION_TEST, RunDir.CALIBRATION)
# What the issue allows: a ResNet18 bundle small enough to commit, and the quantisation's cost.
MAX_WEIGHTS_MB = 12.0
MAX_ACCURACY_CHANGE_POINTS = 0.1
# A bundle's files are small; anything larger is not hashed or loaded at all.
MAX_FILE_BYTES = 64 * 1024 * 1024
BUNDLE_PREFIX = "bundle:"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


# ---------------------------------------------------------------- names and places

def default_models_dir() -> Path:
    """Where published models live: $SPEEDSIGN_MODELS, default the repository's models/ (read-only)."""
    configured = os.environ.get("SPEEDSIGN_MODELS")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "models"


def check_name(name: str) -> str:
    """A bundle name from a user: lower-case letters, digits, '-' and '_' (no path can hide in it)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"not a bundle name: {name!r} (lower-case letters, digits, '-' and '_', at most 64)")
    return name


def bundle_dir(name: str, *, models_dir: Path | None = None) -> Path:
    """The folder of `bundle:NAME`, checked to be a bundle."""
    path = Path(models_dir or default_models_dir()) / check_name(name)
    if not RunDir(path).is_bundle:
        raise UserError(f"no published model {name!r} in {path.parent}: publish one with "
                        f"`python -m speedsign publish RUN_DIR --out {path.parent}`")
    return path


# ---------------------------------------------------------------- int8 weights

def is_quantized(name: str, tensor: torch.Tensor) -> bool:
    """Conv and linear weights (floating, at least 2-D) but FLOAT_LAYERS': 99.8% of a ResNet18's bytes."""
    return (tensor.is_floating_point() and tensor.ndim >= 2 and name.endswith("weight")
            and not name.startswith(FLOAT_LAYERS))


def quantize_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(tensors, scales): int8 weights with one float32 scale per output channel, the rest float32."""
    tensors: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if is_quantized(name, tensor):
            flat = tensor.float().reshape(tensor.shape[0], -1)
            scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            tensors[name] = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(tensor.shape)
            scales[name] = scale
        else:
            tensors[name] = tensor.float() if tensor.is_floating_point() else tensor.clone()
    return tensors, scales


def dequantize_state(tensors: Mapping[str, torch.Tensor],
                     scales: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict back from `quantize_state`'s output (checked: a bad shape is a UserError)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in scales:
            scale = scales[name]
            if tensor.dtype != torch.int8 or scale.ndim != 1 or tensor.ndim < 2 or scale.shape[0] != tensor.shape[0]:
                raise UserError(f"weights.pt: {name} does not match its scales")
            state[name] = tensor.float() * scale.float().reshape(-1, *([1] * (tensor.ndim - 1)))
        else:
            state[name] = tensor
    unknown = sorted(set(scales) - set(tensors))
    if unknown:
        raise UserError(f"weights.pt: scales for unknown tensors, e.g. {unknown[0]}")
    return state


def weights_payload(state: Mapping[str, torch.Tensor], *, config: Mapping[str, Any],
                    classes: tuple[str, ...]) -> dict[str, Any]:
    tensors, scales = quantize_state(state)
    return {"format": WEIGHTS_FORMAT, "version": BUNDLE_FORMAT, "model": tensors, "scales": scales,
            "config": dict(config), "classes": list(classes)}


def load_bundle_payload(path: Path | str) -> dict[str, Any]:
    """A bundle's model as a checkpoint payload ({"model", "config", "classes"}, float32 weights).

    Verified first: a damaged or hostile bundle raises UserError and nothing in it is executed."""
    folder = RunDir(Path(path))
    problems, raw = check_bundle(folder.path)
    if raw is None:
        raise UserError(f"published model {folder.run_id} is damaged: {'; '.join(problems)}")
    return {"model": dequantize_state(raw["model"], raw["scales"]), "config": raw["config"],
            "classes": raw["classes"]}


def _load_weights(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickled code: say so, never execute it
        raise UserError(f"{path.name} refused by torch.load(weights_only=True) ({load_refusal(error)})") from error
    if not isinstance(raw, dict) or raw.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path.name} is not a speedsign bundle's weights")
    if not isinstance(raw.get("version"), int) or raw["version"] > BUNDLE_FORMAT:
        raise UserError(f"{path.name} has format version {raw.get('version')!r}, newer than this speedsign: upgrade")
    for key in ("model", "scales"):
        if not isinstance(raw.get(key), dict) or not all(isinstance(v, torch.Tensor) for v in raw[key].values()):
            raise UserError(f"{path.name}: {key} is not a dict of tensors")
    if not isinstance(raw.get("config"), dict) or not isinstance(raw.get("classes"), list):
        raise UserError(f"{path.name} has no config or classes")
    return raw


# ---------------------------------------------------------------- verifying and listing

def read_manifest(path: Path) -> dict[str, Any]:
    """bundle.json, checked for shape; UserError saying what is wrong."""
    manifest_path = Path(path) / RunDir.MANIFEST
    try:
        if manifest_path.stat().st_size > 1024 * 1024:
            raise UserError(f"{RunDir.MANIFEST} is too large")
        manifest = read_json(manifest_path)
    except FileNotFoundError:
        raise UserError(f"{RunDir.MANIFEST} is missing") from None
    except (ValueError, RecursionError, OSError) as error:
        raise UserError(f"{RunDir.MANIFEST} is damaged ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise UserError(f"{RunDir.MANIFEST} lists no files")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT:
        raise UserError(f"{RunDir.MANIFEST} has format version {version!r}, newer than this speedsign: upgrade")
    return manifest


def verify_bundle(path: Path | str) -> list[str]:
    """What is wrong with a bundle ([] when nothing): manifest, every file's size and sha256, weights."""
    return check_bundle(path)[0]


def check_bundle(path: Path | str) -> tuple[list[str], dict[str, Any] | None]:
    """(problems, the loaded weights.pt): the weights only when nothing is wrong."""
    folder = RunDir(Path(path))
    try:
        manifest = read_manifest(folder.path)
    except UserError as error:
        return [str(error)], None
    problems: list[str] = []
    files: dict[str, Any] = manifest["files"]
    for required in (RunDir.CONFIG, RunDir.STATUS, RunDir.WEIGHTS):
        if required not in files:
            problems.append(f"{RunDir.MANIFEST} does not list {required}")
    for name, entry in sorted(files.items()):
        problem = _file_problem(folder.path, name, entry)
        if problem:
            problems.append(problem)
    if problems:
        return problems, None
    try:
        return [], _load_weights(folder.model)
    except UserError as error:
        return [str(error)], None


def _file_problem(root: Path, name: str, entry: Any) -> str | None:
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith(".") or name == RunDir.MANIFEST:
        return f"{RunDir.MANIFEST} names a file that may not be in a bundle: {name!r}"
    if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
        return f"{RunDir.MANIFEST} has no hash for {name}"
    path = root / name
    if path.is_symlink() or not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != entry["bytes"] or size > MAX_FILE_BYTES:
        return f"{name} has {size} bytes, not the {entry['bytes']} it was published with"
    if file_sha256(path) != entry["sha256"]:
        return f"{name} differs from what was published (sha256)"
    return None


def inspect_bundle(path: Path | str) -> RunInfo:
    """A bundle as the pages see a run: `published`, and damaged when anything fails to verify."""
    info = inspect_run(Path(path))
    problems = [info.damaged] if info.damaged else []
    problems += verify_bundle(path)
    # "bundle:NAME", as --weights spells it: never the same as a run id (no ':' in those), so a
    # bundle published from a run sits beside that run in every picker.
    return dataclasses.replace(info, run_id=f"{BUNDLE_PREFIX}{info.run_id}", published=True,
                               damaged="; ".join(problems) or None)


def inspect_any(path: Path | str) -> RunInfo:
    """A run folder or a bundle, whichever `path` is."""
    return inspect_bundle(path) if RunDir(Path(path)).is_bundle else inspect_run(Path(path))


def iter_bundle_dirs(models_dir: Path) -> list[Path]:
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return [entry for entry in sorted(models_dir.iterdir())
            if entry.is_dir() and not entry.is_symlink() and _NAME.fullmatch(entry.name)]


def list_bundles(models_dir: Path | None = None) -> list[RunInfo]:
    """Every bundle folder in models/, by name; damaged ones included with their reason."""
    return [inspect_bundle(path) for path in iter_bundle_dirs(models_dir or default_models_dir())]


def bundles_signature(models_dir: Path) -> tuple:
    """Changes when a bundle is added, removed or rewritten (for the app's cache)."""
    entries = []
    for path in iter_bundle_dirs(models_dir):
        try:
            entries.append((path.name, (path / RunDir.MANIFEST).stat().st_mtime_ns,
                            (path / RunDir.WEIGHTS).stat().st_mtime_ns))
        except OSError:
            entries.append((path.name, 0, 0))
    return tuple(entries)


# ---------------------------------------------------------------- publishing

@dataclass(frozen=True)
class Published:
    """What `publish` did for one run."""

    name: str
    path: Path
    run_id: str
    weights_mb: float
    bundle_mb: float
    n_val: int
    full_acc: float  # the run's best model in float32, scored now on the same images
    bundle_acc: float  # the int8 bundle
    max_prob_diff: float  # the largest change of any probability, over every val image and class

    @property
    def change_points(self) -> float:
        return (self.bundle_acc - self.full_acc) * 100

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["path"] = str(self.path)
        values["change_points"] = round(self.change_points, 4)
        return values


def publish_run(run_dir: Path | str, *, out_dir: Path | str, name: str | None = None,
                data_dir: Path | str | None = None, runs_dir: Path | str | None = None,
                force: bool = False) -> Published:
    """Write `out_dir/<name>/` from a finished run (UserError for bad input; nothing stored is touched
    until the new bundle is whole, and then it replaces the old one in one rename)."""
    from speedsign.predict import Predictor

    source = RunDir(Path(run_dir))
    info = inspect_run(source.path)
    if source.is_bundle:
        raise UserError(f"{source.path} is already a published model")
    if info.damaged or info.state != "done" or not source.best.is_file():
        raise UserError(f"{source.path} is not a finished run ({info.damaged or info.state}): only a done run "
                        "with its best.pt can be published")
    name = check_name(name or source.run_id.lower())
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not force:
        raise UserError(f"{final} exists: pass --force to replace it")
    data = Path(data_dir) if data_dir else Path(str(info.config.get("data_dir", "")))
    if not data.is_dir():
        raise UserError(f"the run's data folder {data} is not here: pass --data DIR (quantisation is scored on it)")
    full = Predictor(source.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        for file_name in COPIED:
            if (source.path / file_name).is_file():
                shutil.copyfile(source.path / file_name, staging / file_name)
        payload = torch.load(source.best, map_location="cpu", weights_only=True)
        atomic_torch_save(weights_payload(payload["model"], config=payload["config"], classes=full.classes),
                          staging / RunDir.WEIGHTS)
        # A manifest first, so the staged folder reads as a bundle while it is scored.
        write_manifest(staging, source=info, data_dir=data)
        result = score_bundle(staging, full=full, data_dir=data)
        published = Published(name=name, path=final, run_id=source.run_id,
                              weights_mb=(staging / RunDir.WEIGHTS).stat().st_size / 1e6, bundle_mb=0.0,
                              n_val=result["n"], full_acc=result["full_acc"], bundle_acc=result["bundle_acc"],
                              max_prob_diff=result["max_prob_diff"])
        _check_limits(published)
        backbone = describe_backbone(info, runs_dir=Path(runs_dir) if runs_dir else source.path.parent)
        atomic_write_text(model_card(staging, name=name, info=info, published=published, data_dir=data,
                                     backbone=backbone), staging / RunDir.CARD)
        write_manifest(staging, source=info, data_dir=data, published=published, backbone=backbone)
        # Readable by whoever serves the app (mkdtemp and the atomic writes make owner-only files).
        os.chmod(staging, 0o755)
        for entry in staging.iterdir():
            os.chmod(entry, 0o644)
        size = sum(p.stat().st_size for p in staging.iterdir()) / 1e6
        published = dataclasses.replace(published, bundle_mb=size)
        _swap_into_place(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return published


def _check_limits(published: Published) -> None:
    if published.weights_mb > MAX_WEIGHTS_MB:
        raise UserError(f"weights.pt is {published.weights_mb:.1f} MB, over the {MAX_WEIGHTS_MB:.0f} MB "
                        "a bundle may hold")
    if abs(published.change_points) > MAX_ACCURACY_CHANGE_POINTS:
        raise UserError(f"int8 weights change val accuracy by {published.change_points:+.2f} points "
                        f"(at most {MAX_ACCURACY_CHANGE_POINTS} allowed): not published")


def _swap_into_place(staging: Path, final: Path) -> None:
    """Replace `final` by the staged folder: a reader sees the old bundle or the new one, whole."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


def score_bundle(path: Path, *, full: Any, data_dir: Path) -> dict[str, Any]:
    """Score the staged bundle's int8 weights on val (and test when the data has it), store those
    predictions and refit the temperature on them; compare with the float32 run on the same images."""
    import numpy as np

    from speedsign.calibration import calibrate_run
    from speedsign.job import write_predictions
    from speedsign.predict import Predictor, evaluate_split

    folder = RunDir(path)
    bundle = Predictor(folder.path)
    outcome: dict[str, Any] = {}
    splits = [("val", folder.predictions, folder.evaluation)]
    if (data_dir / "test").is_dir():
        splits.append(("test", folder.predictions_test, folder.evaluation_test))
    for split, predictions_path, evaluation_path in splits:
        report, probs, labels = evaluate_split(bundle, data_dir, split=split, calibrated=False)
        files = tuple(str(f) for f in report["files"])
        write_predictions(probs, labels, files=files, classes=bundle.classes,
                          predictions_path=predictions_path, evaluation_path=evaluation_path)
        if split == "val":
            full_report, full_probs, _ = evaluate_split(full, data_dir, split="val", calibrated=False)
            outcome = {"n": int(report["n"]), "bundle_acc": float(report["accuracy"]),
                       "full_acc": float(full_report["accuracy"]),
                       "max_prob_diff": float(np.abs(probs - full_probs).max()) if len(probs) else 0.0}
    calibrate_run(folder.path)
    return outcome


def describe_backbone(info: RunInfo, *, runs_dir: Path) -> dict[str, Any] | None:
    """Where a finetune/frozen run's starting weights came from, as far as this machine knows."""
    spec = str(info.config.get("config", {}).get("weights", "none"))
    if info.approach == "scratch" or spec == "none":
        return None
    described: dict[str, Any] = {"weights": spec, "fingerprint": info.config.get("weights_fingerprint")}
    if spec.startswith("run:"):
        try:
            meta = read_run_config(runs_dir / spec[4:])
        except (ValueError, OSError):
            return described
        backbone = inspect_run(runs_dir / spec[4:])
        described.update({"data": Path(str(meta.get("data_dir", "?"))).name, "classes": len(meta.get("classes", [])),
                          "approach": backbone.approach, "best_val_acc": backbone.best_val_acc,
                          "seconds": backbone.status.seconds})
    return described


def describe_data(data_dir: Path) -> dict[str, Any]:
    """What a bundle says of its training data: folder name, title and terms of its README, synthetic or not."""
    from speedsign.synth import INFO_NAME

    return {"name": data_dir.name, "title": data_title(data_dir), "terms": data_terms(data_dir),
            "synthetic": (data_dir / INFO_NAME).is_file()}


def bundle_data(path: Path | str) -> dict[str, Any]:
    """The "data" entry of a bundle's manifest ({} when it cannot be read)."""
    try:
        data = read_manifest(Path(path)).get("data")
    except UserError:
        return {}
    if not isinstance(data, dict):
        return {}
    synthetic = data.get("synthetic")
    return {"name": str(data.get("name") or ""), "title": data.get("title"),
            "synthetic": synthetic if isinstance(synthetic, bool) else None}


def write_manifest(path: Path, *, source: RunInfo, data_dir: Path, published: Published | None = None,
                   backbone: Mapping[str, Any] | None = None) -> None:
    """bundle.json: what the bundle is, and the size and sha256 of every other file in it."""
    files = {entry.name: {"bytes": entry.stat().st_size, "sha256": file_sha256(entry)}
             for entry in sorted(Path(path).iterdir())
             if entry.is_file() and entry.name != RunDir.MANIFEST and not entry.name.startswith(".")}
    manifest: dict[str, Any] = {
        "format_version": BUNDLE_FORMAT, "source_run": source.run_id, "approach": source.approach,
        "published": datetime.now(UTC).isoformat(timespec="seconds"), "quantization": QUANTIZATION,
        "data": describe_data(data_dir), "backbone": dict(backbone) if backbone else None, "files": files,
    }
    if published is not None:
        manifest.update({"val_acc_float32": published.full_acc, "val_acc_int8": published.bundle_acc,
                         "accuracy_change_points": round(published.change_points, 4),
                         "max_prob_diff": published.max_prob_diff, "n_val": published.n_val})
    atomic_write_json(manifest, Path(path) / RunDir.MANIFEST)


# ---------------------------------------------------------------- the model card

def data_terms(data_dir: Path) -> str | None:
    """The "Terms:" paragraph of the data folder's README.md, when it has one (GTSRB's does)."""
    readme = data_dir / "README.md"
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")[:20000]
    except OSError:
        return None
    match = re.search(r"^Terms:(.+?)(?:\n\s*\n|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    return " ".join(match.group(1).split()) if match else None


def data_title(data_dir: Path) -> str | None:
    try:
        first = (data_dir / "README.md").read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.lstrip("# ").strip() or None


APPROACH_TEXT = {
    "finetune": "torchvision ResNet18 from pretrained weights, a new `fc`, every layer trained",
    "frozen": "torchvision ResNet18 backbone frozen (BatchNorm statistics too), only a new linear head trained",
    "scratch": "speedsign's own ResNet18 (BasicBlock x [2,2,2,2]) trained from random initialisation",
}


def model_card(path: Path, *, name: str, info: RunInfo, published: Published, data_dir: Path,
               backbone: Mapping[str, Any] | None) -> str:
    """MODEL_CARD.md, written from the numbers stored in the bundle."""
    from speedsign.compare import median_throughput
    from speedsign.metrics import wilson_interval

    config = info.config.get("config", {})
    classes = info.config.get("classes", [])
    correct = round(published.bundle_acc * published.n_val)
    low, high = wilson_interval(correct, published.n_val)
    evaluation = read_json(Path(path) / RunDir.EVALUATION)
    calibration = read_json(Path(path) / RunDir.CALIBRATION)
    has_test = (Path(path) / RunDir.EVALUATION_TEST).is_file()
    status = info.status
    throughput = median_throughput(read_metrics(Path(path))[0], fallback=status.images_per_s)
    lines = [
        f"# {name}",
        "",
        f"A speed-limit sign classifier published by speedsign from run `{info.run_id}`.",
        "",
        "## Data",
        "",
        f"- Trained on `{data_dir.name}`" + (f" ({data_title(data_dir)})" if data_title(data_dir) else "") + ".",
        f"- Data fingerprint `{info.config.get('data_fingerprint', '?')}`; {len(classes)} classes, in this order: "
        + ", ".join(f"`{c}`" for c in classes) + ".",
        f"- Validation: {published.n_val} images held out by group (GTSRB track: physical sign), "
        f"val fraction {config.get('val_fraction')}, seed {config.get('seed')}; they played no part in training.",
    ]
    terms = data_terms(data_dir)
    lines.append(f"- Terms of the data (its README's words): {terms}" if terms else
                 "- Terms of the data: not stated in the data folder; check them before you share this model.")
    lines += ["", "## Approach", "", f"- `{info.approach}`: {APPROACH_TEXT.get(info.approach, info.approach)}."]
    if backbone:
        where = backbone.get("weights")
        if backbone.get("data"):
            accuracy = backbone.get("best_val_acc")
            where = (f"a {backbone.get('approach')} ResNet18 that speedsign trained on `{backbone['data']}` "
                     f"({backbone.get('classes')} classes" + (f", {accuracy:.1%} val" if accuracy else "") + ")")
        lines.append(f"- Starting weights: {where}.")
    lines += [
        f"- Preset `{config.get('preset')}`, {config.get('img_size')} px input, batch {config.get('batch_size')}, "
        f"{config.get('optimizer')} lr {config.get('lr')}, {config.get('schedule')} schedule, "
        f"label smoothing {config.get('label_smoothing')}, augmentation `{config.get('augment')}`"
        + (f", time budget {config.get('budget'):.0f} s" if config.get("budget") else "") + ".",
        "",
        "## Accuracy",
        "",
        f"- Val accuracy of these int8 weights: **{published.bundle_acc:.2%}** "
        f"(95% Wilson interval {low:.2%}-{high:.2%}, {correct}/{published.n_val}); "
        f"ECE {evaluation.get('ece', float('nan')):.3f} before temperature scaling, "
        f"{calibration.get('ece_after', float('nan')):.3f} after (T = {calibration.get('temperature', 1.0):.2f}, "
        "fitted on val; Classify and `predict` apply it).",
        f"- The run's float32 weights on the same images: {published.full_acc:.2%}; int8 changes accuracy by "
        f"{published.change_points:+.2f} points and any probability by at most {published.max_prob_diff:.4f}.",
        f"- The checkpoint is the run's best epoch on val ({status.best_epoch} of {status.epoch}), so the val "
        "figure can be slightly optimistic; "
        + ("the test split's score, which played no part in choosing it, is in eval_test.json."
           if has_test else "this data set has no test split."),
        "",
        "## Training",
        "",
        f"- {_seconds(status.seconds)} on {status.device or 'an unrecorded device'}"
        + (f", {status.precision}" if status.precision else "") + f"; {status.epoch} epochs"
        + (f", median {throughput:,.0f} training images/s" if throughput else "")
        + (" through the head (the backbone's features computed once and cached)" if info.approach == "frozen" else "")
        + ".",
        f"- Machine: {status.machine or 'not recorded by this run'}.",
        f"- Finished {status.finished or '?'}; speedsign {info.config.get('code_version', '?')}.",
        "",
        "## Files",
        "",
        f"- `{RunDir.WEIGHTS}`: {QUANTIZATION}; {published.weights_mb:.1f} MB. Loads with "
        "`torch.load(weights_only=True)`; speedsign checks every file's sha256 in `bundle.json` first.",
        "- `config.json`, `metrics.jsonl` (per-epoch curves), `predictions_val.npz` and `eval_val.json` "
        "(of these int8 weights), `calibration.json` (temperature fitted on val).",
        "",
        "Use: `python -m speedsign predict models/" + name + " photo.jpg`, or as starting weights: "
        "`--weights bundle:" + name + "`.",
        "",
    ]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "an unrecorded time"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def publish_summary(results: list[Published]) -> dict[str, Any]:
    return {"bundles": [r.to_json() for r in results],
            "total_mb": round(sum(r.bundle_mb for r in results), 2)}
