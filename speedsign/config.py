"""Settings as frozen dataclasses, the presets, and their validation.

A `TrainConfig` is the whole recipe of one training run. It is saved with every run and every
checkpoint (so a checkpoint alone can rebuild its model), and its hash, with the data's
fingerprint, names the run (see `job.plan_run`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from speedsign.errors import UserError

APPROACHES: tuple[str, ...] = ("finetune", "frozen", "scratch")
PRESETS: tuple[str, ...] = ("fast", "tutorial")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("none", "step", "cosine", "onecycle")
# "auto": "signs" when the run sees every training image several times, else "none" (see augment.resolve_augment)
AUGMENTS: tuple[str, ...] = ("auto", "signs", "tutorial", "none")
# Below this many passes over the training images, augmentation costs more than it gives: the model
# still underfits, and harder images slow it down. Measured on gtsrb-speed32 (scratch, 64 px, the
# tuning split; docs/benchmarks.md, "Images to accuracy"): after 26,000 images (2.5 passes) no
# augmentation reached 97.5% val against 94.3% with it; after 100,000 (9.6 passes) augmentation won.
# finetune (48 px, other-signs backbone) agrees: 91.4% against 88.1% after 26,000 images, a tie
# (94.7% each) after 60,000 (5.7 passes).
AUTO_MIN_EPOCHS = 4.0
RESIZES: tuple[str, ...] = ("square", "tutorial")
# "stretch": each image's own levels to [0, 1]; "centre": the levels of its middle, where a sign crop has the sign
CONTRASTS: tuple[str, ...] = ("none", "stretch", "centre")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")  # how to run, not part of the recipe
EVAL_SPLITS: tuple[str, ...] = ("val", "test", "all")  # "all": every image of a folder

# ImageNet statistics: the pretrained backbones expect them, and using them for every
# approach keeps one preprocessing for all three.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes (not where or on what device)."""

    approach: str
    preset: str = "fast"
    img_size: int = 32
    batch_size: int = 128
    epochs: int = 20
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    step_size: int = 7
    gamma: float = 0.1
    label_smoothing: float = 0.0
    patience: int = 0  # early stopping: epochs without a better val accuracy; 0 = off
    augment: str = "signs"
    resize: str = "square"
    weights: str = "none"  # "imagenet", a file path, "run:ID", "bundle:NAME", or "none" (random init)
    val_fraction: float = 0.2
    seed: int = 0
    # Added after the first runs were stored: left out of a run's identity at their defaults,
    # so the ids (and the cache) of earlier runs stay valid (see `identity_dict`).
    steps: int = 0  # optimizer steps in all; 0: epochs x steps per epoch
    warmup: float = 0.25  # share of the steps in the one-cycle warm-up
    ema: float = 0.0  # decay of the weights' moving average evaluated instead of the weights; 0: off
    budget: float = 0.0  # seconds the whole command may take; 0: no budget (see speedsign.budget)
    min_size: int = 0  # progressive resizing: the side training starts at; 0: off (see train.train_size)
    contrast: str = "none"  # per-image contrast stretch before the network (see augment.stretch_contrast)

    @property
    def stored_size(self) -> int:
        """Side of the decoded images kept in the tensor cache.

        The tutorial's val transform is Resize(256) + CenterCrop(224): we keep the 256 px
        square (scaled to `img_size`) so training can crop from it as the tutorial does.
        """
        if self.resize == "tutorial":
            return round(self.img_size * 256 / 224)
        return self.img_size

    @property
    def budgeted(self) -> bool:
        return self.budget > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity_dict(self) -> dict[str, Any]:
        """to_dict without the later fields at their defaults: what names a run."""
        return {k: v for k, v in self.to_dict().items() if k not in LATER_DEFAULTS or LATER_DEFAULTS[k] != v}


MIN_BUDGET_S = 10.0  # below this, starting Python and torch alone would not fit

# Fields added after runs were first stored, and their defaults.
LATER_FIELDS: tuple[str, ...] = ("steps", "warmup", "ema", "budget", "min_size", "contrast")
LATER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig) if f.name in LATER_FIELDS}


@dataclass(frozen=True)
class Setting:
    """One field of `TrainConfig`: its type, allowed values and help.

    `SETTINGS` is the one list of training settings: validation, the command line's flags,
    the Train page's inputs and the job all read it.
    """

    name: str
    kind: type  # int, float or str
    help: str
    choices: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 0.0
    low_open: bool = False  # the range excludes `low`
    hand_set: bool = False  # offered on the Train page's "set by hand" inputs

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("approach", str, "which of the three approaches to train", choices=APPROACHES),
    Setting("preset", str, "tuned settings (fast) or the report's (tutorial)", choices=PRESETS),
    Setting("img_size", int, "input side in pixels", low=16, high=512, hand_set=True),
    Setting("batch_size", int, "images per training step", low=1, high=65536, hand_set=True),
    Setting("epochs", int, "passes over the training split", low=1, high=10000, hand_set=True),
    Setting("optimizer", str, "optimizer", choices=OPTIMIZERS, hand_set=True),
    Setting("lr", float, "peak learning rate", low=0.0, high=10.0, low_open=True, hand_set=True),
    Setting("momentum", float, "SGD momentum", low=0.0, high=0.999),
    Setting("weight_decay", float, "weight decay", low=0.0, high=1.0),
    Setting("schedule", str, "learning-rate schedule", choices=SCHEDULES, hand_set=True),
    Setting("step_size", int, "epochs between drops of the step schedule", low=1, high=10000),
    Setting("gamma", float, "factor of each drop of the step schedule", low=0.0, high=1.0, low_open=True),
    Setting("label_smoothing", float, "label smoothing of the loss", low=0.0, high=0.5, hand_set=True),
    Setting("patience", int, "early stopping after N epochs without a better val accuracy (0: off)",
            low=0, high=10000, hand_set=True),
    Setting("augment", str, "training augmentation (auto: signs when the run sees every image several times, "
            "else none)", choices=AUGMENTS),
    Setting("resize", str, "square, or the tutorial's resize + center crop", choices=RESIZES),
    Setting("weights", str,
            "backbone: imagenet, a weights file, run:ID, bundle:NAME (a published model), or none (scratch)"),
    Setting("val_fraction", float, "share of tracks held out for val when the data has no val/",
            low=0.0, high=0.9, low_open=True),
    Setting("seed", int, "random seed", low=0, high=2**31 - 1, hand_set=True),
    Setting("steps", int, "optimizer steps in all (0: epochs x the training split; a budget plans them)",
            low=0, high=10**9),
    Setting("warmup", float, "share of the steps that warm the learning rate up (one-cycle)",
            low=0.0, high=0.9, low_open=True),
    Setting("ema", float, "decay of a moving average of the weights, evaluated and saved instead (0: off)",
            low=0.0, high=0.99999),
    Setting("budget", float, "seconds the whole command may take, e.g. 300, 5m or 1h (0: none, train the "
            "epochs)", low=0.0, high=7 * 24 * 3600.0),
    Setting("min_size", int, "progressive resizing: start training at this side, grow to the input side over "
            "the first 3/4 of the steps (0: off)", low=0, high=512),
    Setting("contrast", str, "per-image contrast: stretch each image's own dark and light levels to black and "
            "white (centre: the levels of its middle, where the sign is), in training, evaluation and prediction "
            "alike (none: off)", choices=CONTRASTS),
)
# Hand-set inputs appear on the Train page in this order.
HAND_SET: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.hand_set)
assert tuple(s.name for s in SETTINGS) == tuple(f.name for f in fields(TrainConfig)), \
    "SETTINGS must list TrainConfig's fields, in order"


# The report's exact settings (PyTorch transfer-learning tutorial), per approach.
_TUTORIAL: dict[str, dict[str, Any]] = {
    "finetune": dict(
        img_size=224, batch_size=4, epochs=25, optimizer="sgd", lr=0.002, momentum=0.9,
        weight_decay=0.0, schedule="step", step_size=7, gamma=0.1, augment="tutorial",
        resize="tutorial", weights="imagenet",
    ),
    "frozen": dict(
        img_size=224, batch_size=4, epochs=25, optimizer="sgd", lr=0.001, momentum=0.9,
        weight_decay=0.0, schedule="step", step_size=7, gamma=0.1, augment="tutorial",
        resize="tutorial", weights="imagenet",
    ),
    "scratch": dict(
        img_size=224, batch_size=4, epochs=25, optimizer="sgd", lr=0.001, momentum=0.9,
        weight_decay=1e-4, schedule="cosine", augment="tutorial", resize="tutorial",
        weights="none",
    ),
}

# Our tuned defaults, chosen by measurement (docs/benchmarks.md has the numbers behind them).
# Each has a time budget, so that "fast" is the same wait on every machine: the epochs are the
# most it trains, and a slower machine trains fewer steps, or smaller inputs (speedsign.budget).
FAST_BUDGETS: dict[str, float] = {"finetune": 300.0, "frozen": 120.0, "scratch": 300.0}
_FAST: dict[str, dict[str, Any]] = {
    "finetune": dict(
        img_size=48, batch_size=128, epochs=6, optimizer="sgd", lr=0.05, momentum=0.9,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment="auto",
        resize="square", weights="imagenet", budget=FAST_BUDGETS["finetune"],
    ),
    "frozen": dict(
        img_size=64, batch_size=256, epochs=25, optimizer="adamw", lr=0.003, momentum=0.9,
        weight_decay=1e-4, schedule="cosine", augment="none", resize="square",
        weights="imagenet", budget=FAST_BUDGETS["frozen"],
    ),
    "scratch": dict(
        img_size=64, batch_size=32, epochs=20, optimizer="sgd", lr=0.05, momentum=0.9,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment="auto",
        resize="square", weights="none", budget=FAST_BUDGETS["scratch"], contrast="stretch",
    ),
}


def preset_values(approach: str, preset: str) -> dict[str, Any]:
    """The settings a preset gives an approach, before any override."""
    check_choice("approach", approach, APPROACHES)
    check_choice("preset", preset, PRESETS)
    table = _TUTORIAL if preset == "tutorial" else _FAST
    return dict(table[approach])


def resolve_config(
    *, approach: str, preset: str = "fast", overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Preset values for `approach`, then `overrides` (None values ignored), validated."""
    values: dict[str, Any] = preset_values(approach, preset)
    known = {s.name for s in SETTINGS}
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise UserError(f"unknown setting {key!r}; known settings: {', '.join(sorted(known))}")
        values[key] = value
    values["approach"], values["preset"] = approach, preset
    return validate_config(TrainConfig(**values))


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a config saved with a run or checkpoint; unknown keys are an error."""
    known = {s.name for s in SETTINGS}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"saved config has unknown settings: {', '.join(sorted(unknown))}")
    return validate_config(TrainConfig(**dict(data)))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_number(setting: Setting, value: Any) -> None:
    name = setting.name
    # bool is an int in Python; a config value of True is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number; got {value!r}")
    if setting.kind is int and not float(value).is_integer():
        raise UserError(f"{name} must be a whole number; got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be finite; got {value!r}")
    low, high = setting.low, setting.high
    too_low = value <= low if setting.low_open else value < low
    if too_low or value > high:
        bracket = "(" if setting.low_open else "["
        raise UserError(f"{name} must be in {bracket}{low}, {high}]; got {value!r}")


def validate_config(config: TrainConfig) -> TrainConfig:
    """Reject settings that cannot train, with a message naming the setting."""
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.choices:
            check_choice(setting.name, value, setting.choices)
        elif setting.kind in (int, float):
            _check_number(setting, value)
    if not isinstance(config.weights, str) or not config.weights:
        raise UserError("weights must be 'imagenet', 'none', a file path, 'run:ID' or 'bundle:NAME'")
    if config.min_size and not 16 <= config.min_size <= config.img_size:
        raise UserError(f"min_size must be 0 (off) or between 16 and the input side {config.img_size}; "
                        f"got {config.min_size}")
    if 0 < config.budget < MIN_BUDGET_S:
        raise UserError(f"a budget must be at least {MIN_BUDGET_S:g} s (or 0 for none); got {config.budget:g} s")
    if config.approach == "scratch" and config.weights != "none":
        raise UserError("the scratch approach trains from random init: weights must be 'none'")
    if config.approach != "scratch" and config.weights == "none":
        raise UserError(
            f"the {config.approach} approach needs pretrained weights: pass --weights imagenet, "
            "a weights file, run:ID, or bundle:NAME"
        )
    # Normalise so equal configs hash equally: 2 and 2.0, and a weights file named from any
    # folder (a background job runs in the package's folder, not the launcher's).
    numbers = {s.name: s.kind(getattr(config, s.name)) for s in SETTINGS if s.kind in (int, float)}
    return dataclasses.replace(config, **numbers, weights=_absolute_weights(config.weights))


def _absolute_weights(spec: str) -> str:
    if spec in ("imagenet", "none") or spec.startswith(("run:", "bundle:")):
        return spec
    return str(Path(spec).expanduser().resolve())
