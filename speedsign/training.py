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

from speedsign.budget import PAGE_BUDGETS, format_duration
from speedsign.config import APPROACHES, HAND_SET, Setting, TrainConfig, preset_values, resolve_config
from speedsign.errors import UserError
from speedsign.job import TrainRequest
from speedsign.models import check_imagenet_available, imagenet_weights_path
from speedsign.run_views import format_number, is_usable, page_error
from speedsign.runs import RunInfo

FLOAT_STEP = 0.001
# The smallest value a number input offers above an open lower bound (lr > 0).
OPEN_LOW_MARGIN = 1e-6


# ---------------------------------------------------------------- backbone weights

@dataclass(frozen=True)
class WeightsOption:
    """One backbone source the Train page offers for finetune and frozen."""

    label: str
    spec: str  # "imagenet", "run:ID", "bundle:NAME", or "path" (the page asks for the file)


def imagenet_cached() -> bool:
    """Whether torchvision's cache holds the ImageNet ResNet18 (no download needed)."""
    return imagenet_weights_path().is_file()


def imagenet_problem() -> str | None:
    """Why a launch with ImageNet weights would be refused here (offline, not cached), in the
    page's words (no command-line flags), or None when the weights are cached or downloadable."""
    try:
        check_imagenet_available()
    except UserError as error:
        return page_error(str(error))
    return None


def usable_backbones(runs: Iterable[RunInfo]) -> list[RunInfo]:
    """Finished runs whose model can be a backbone, best val accuracy first; then the published
    models, the shipped default backbone (speedsign.shipped.DEFAULT_BACKBONE) first."""
    from speedsign.shipped import DEFAULT_BACKBONE

    usable = [info for info in runs if is_usable(info)]
    own = sorted((info for info in usable if not info.published),
                 key=lambda info: -1.0 if info.best_val_acc is None else info.best_val_acc, reverse=True)
    published = sorted((info for info in usable if info.published),
                       key=lambda info: (info.run_id != DEFAULT_BACKBONE, info.run_id))
    return own + published


def backbone_label(info: RunInfo) -> str:
    """How the backbone list names a run or a published model."""
    accuracy = format_number(info.best_val_acc)
    if not info.published:
        return f"backbone of run {info.run_id} ({info.approach}, val acc {accuracy})"
    data = Path(str(info.config.get("data_dir", "?"))).name
    if info.approach == "frozen":
        # A frozen model's backbone is the one it started from, unchanged: say where that was learned.
        from speedsign.bundles import read_manifest

        try:
            origin = (read_manifest(info.run_dir).get("backbone") or {}).get("data") or "?"
        except UserError:
            origin = "?"
        return f"published {info.run_id}: a backbone learned on {origin} (frozen in that model, so unchanged)"
    return f"published {info.run_id} ({info.approach} on {data}, val acc {accuracy})"


def weights_options(runs: Iterable[RunInfo], *, imagenet_ok: bool | None = None) -> list[WeightsOption]:
    """Backbone sources for finetune/frozen: ImageNet first when it can be used, else the finished
    runs (best first); then the other sources and a file.

    imagenet_ok: whether ImageNet weights are cached or downloadable (`imagenet_problem() is None`);
    None when not checked, where only a cached file counts."""
    cached = imagenet_cached()
    ok = cached if imagenet_ok is None else imagenet_ok
    if cached:
        note = ""
    elif imagenet_ok is None:
        note = " — not downloaded yet, needs internet"
    elif imagenet_ok:
        note = " — downloads on first use (45 MB)"
    else:
        note = " — not available: offline, and not on this machine"
    imagenet = WeightsOption("ImageNet (torchvision)" + note, "imagenet")
    from_runs = [WeightsOption(backbone_label(info), backbone_spec(info)) for info in usable_backbones(runs)]
    path = WeightsOption("a weights file on the server", "path")
    if ok or not from_runs:
        return [imagenet, *from_runs, path]
    return [*from_runs, imagenet, path]


def backbone_spec(info: RunInfo) -> str:
    """--weights for a run ("run:ID") or a published model (its id is already "bundle:NAME")."""
    return info.run_id if info.published else f"run:{info.run_id}"


@dataclass(frozen=True)
class TrainDefaults:
    """What the Train page starts with: never a setup it knows fails."""

    approaches: tuple[str, ...]
    weights: str | None  # the backbone spec ("imagenet", "run:ID", "bundle:NAME"); None when none is usable
    note: str | None  # why finetune and frozen are not selected, in plain words

    def weights_index(self, options: Sequence[WeightsOption]) -> int:
        """Position of the default backbone among `options` (0 when it is not there)."""
        return next((i for i, option in enumerate(options) if option.spec == self.weights), 0)


NO_BACKBONE_NOTE = ("finetune and frozen need a pretrained backbone. This machine is offline and has no "
                    "ImageNet weights. Train scratch first (or on another data set, e.g. the other GTSRB "
                    "signs), then choose its backbone here.")


def train_defaults(runs: Iterable[RunInfo], *, imagenet_problem: str | None) -> TrainDefaults:
    """ImageNet when it can be used, else the best finished run as the backbone, else a published
    model's (the shipped default first); all three approaches when there is a backbone, else
    scratch alone with a note saying why."""
    if imagenet_problem is None:
        return TrainDefaults(tuple(APPROACHES), "imagenet", None)
    usable = usable_backbones(runs)
    if usable:
        return TrainDefaults(tuple(APPROACHES), backbone_spec(usable[0]), None)
    return TrainDefaults(("scratch",), None, NO_BACKBONE_NOTE)


def launch_blocker(approaches: Sequence[str], weights: str | None, *, imagenet_problem: str | None) -> str | None:
    """Why Launch must stay off for this choice (a job known to fail), or None.

    Today one case: finetune or frozen on ImageNet weights that are neither cached nor downloadable."""
    needs_weights = any(approach != "scratch" for approach in approaches)
    if needs_weights and weights == "imagenet" and imagenet_problem:
        return imagenet_problem
    return None


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


def preset_budgets(preset: str) -> dict[str, float]:
    """Each approach's own budget in the preset (0: none; frozen needs less time than the others)."""
    return {approach: float(preset_values(approach, preset).get("budget", 0.0)) for approach in APPROACHES}


def budget_choices(preset: str) -> list[float | None]:
    """The page's budgets in seconds (0: the preset's epochs); None first, the page's default,
    keeps each approach's budget from the preset, so the page asks for what the command line does."""
    choices: list[float | None] = [float(b) for b in PAGE_BUDGETS]
    return [None, *choices] if any(preset_budgets(preset).values()) else choices


def describe_preset_budgets(preset: str) -> str:
    """'finetune 5 min · frozen 2 min · scratch 5 min' for the budget's help text."""
    return " · ".join(f"{approach} {format_duration(seconds)}" for approach, seconds in preset_budgets(preset).items())


def build_requests(*, approaches: Sequence[str], preset: str, data_dir: Path, runs_dir: Path,
                   weights: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                   device: str = "auto", budget: float | None = None) -> list[TrainRequest]:
    """One TrainRequest per approach; UserError (naming the approach) when a setting is refused.

    `budget`: seconds each job may take (0: train the epochs); None keeps the preset's."""
    if not approaches:
        raise UserError("choose at least one approach to train")
    needs_weights = any(approach != "scratch" for approach in approaches)
    if needs_weights and weights is not None and not weights.strip():
        raise UserError("type the path of a weights file (a ResNet18 state dict) on the server, "
                        "or choose another backbone")
    requests = []
    for approach in approaches:
        values = dict((overrides or {}).get(approach, {}))
        if budget is not None:
            values["budget"] = budget
        if approach != "scratch" and weights is not None:
            values["weights"] = weights.strip()
        try:
            config = resolve_config(approach=approach, preset=preset, overrides=values)
        except UserError as error:
            raise UserError(f"{approach}: {error}") from None
        requests.append(TrainRequest(config=config, data_dir=Path(data_dir), runs_dir=Path(runs_dir), device=device))
    return requests
