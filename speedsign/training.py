"""Training requests as the Train page builds them: backbone choices, hand-set values, requests.

The settings themselves (types, ranges, which are hand-set) are `config.SETTINGS`; this
module only turns the page's choices into `job.TrainRequest`s, refusing bad ones with a
`UserError` that names the approach. Launching is `jobs.launch` (a separate process):
nothing here trains. No Streamlit here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedsign.config import HAND_SET, Setting, TrainConfig, preset_values, resolve_config
from speedsign.errors import UserError
from speedsign.job import TrainRequest
from speedsign.models import check_imagenet_available, imagenet_weights_path
from speedsign.run_views import is_usable
from speedsign.runs import RunInfo

FLOAT_STEP = 0.001
# The smallest value a number input offers above an open lower bound (lr > 0).
OPEN_LOW_MARGIN = 1e-6


# ---------------------------------------------------------------- backbone weights

@dataclass(frozen=True)
class WeightsOption:
    """One backbone source the Train page offers for finetune and frozen."""

    label: str
    spec: str  # "imagenet", "run:ID", or "path" (the page asks for the file)


def imagenet_cached() -> bool:
    """Whether torchvision's cache holds the ImageNet ResNet18 (no download needed)."""
    return imagenet_weights_path().is_file()


def imagenet_problem() -> str | None:
    """Why a launch with ImageNet weights would be refused here (offline, not cached), or None."""
    try:
        check_imagenet_available()
    except UserError as error:
        return str(error)
    return None


def weights_options(runs: Iterable[RunInfo]) -> list[WeightsOption]:
    """Backbone sources for finetune/frozen: ImageNet first when cached, finished runs, a file."""
    cached = imagenet_cached()
    imagenet = WeightsOption("ImageNet (torchvision)" + ("" if cached else " — not downloaded yet, needs internet"),
                             "imagenet")
    from_runs = [WeightsOption(f"backbone of run {info.run_id} ({info.approach}, val acc "
                               f"{(info.best_val_acc or 0):.3f})", f"run:{info.run_id}")
                 for info in runs if is_usable(info)]
    path = WeightsOption("a weights file on the server", "path")
    if cached or not from_runs:
        return [imagenet, *from_runs, path]
    return [*from_runs, imagenet, path]


# ---------------------------------------------------------------- hand-set settings

def preset_defaults(approach: str, preset: str) -> dict[str, Any]:
    """The hand-set settings' starting values: the preset's values for this approach."""
    values = {**TrainConfig(approach=approach).to_dict(), **preset_values(approach, preset)}
    return {setting.name: values[setting.name] for setting in HAND_SET}


def input_bounds(setting: Setting) -> tuple[float, float, float]:
    """(min, max, step) of a number input for a numeric setting, in the setting's type.

    An open lower bound (lr > 0) starts a little above it, so the input never offers a refused value.
    """
    if setting.kind is int:
        return int(setting.low), int(setting.high), 1
    low = setting.low + OPEN_LOW_MARGIN if setting.low_open else float(setting.low)
    return low, float(setting.high), FLOAT_STEP


def input_label(setting: Setting) -> str:
    """A setting's help as an input label ("Peak learning rate")."""
    return setting.help[:1].upper() + setting.help[1:]


# ---------------------------------------------------------------- requests

def gpu_count() -> int:
    """CUDA devices this machine has (the Train page offers one process per GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_requests(*, approaches: Sequence[str], preset: str, data_dir: Path, runs_dir: Path,
                   weights: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   device: str = "auto") -> list[TrainRequest]:
    """One TrainRequest per approach; UserError (naming the approach) when a setting is refused."""
    if not approaches:
        raise UserError("choose at least one approach to train")
    needs_weights = any(approach != "scratch" for approach in approaches)
    if needs_weights and weights is not None and not weights.strip():
        raise UserError("type the path of a weights file (a ResNet18 state dict) on the server, "
                        "or choose another backbone")
    requests = []
    for approach in approaches:
        values = dict((overrides or {}).get(approach, {}))
        if approach != "scratch" and weights is not None:
            values["weights"] = weights.strip()
        try:
            config = resolve_config(approach=approach, preset=preset, overrides=values)
        except UserError as error:
            raise UserError(f"{approach}: {error}") from None
        requests.append(TrainRequest(config=config, data_dir=Path(data_dir), runs_dir=Path(runs_dir), device=device))
    return requests
