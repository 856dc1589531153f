"""Settings as frozen dataclasses, the presets, and their validation.

A `TrainConfig` is the whole recipe of one training run. It is saved with every run and every
checkpoint (so a checkpoint alone can rebuild its model), and its hash, with the data's
fingerprint, names the run (see `runs.run_id_for`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from speedsign.errors import UserError

APPROACHES: tuple[str, ...] = ("finetune", "frozen", "scratch")
PRESETS: tuple[str, ...] = ("fast", "tutorial")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("none", "step", "cosine", "onecycle")
AUGMENTS: tuple[str, ...] = ("signs", "tutorial", "none")
RESIZES: tuple[str, ...] = ("square", "tutorial")

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
    weights: str = "none"  # "imagenet", a file path, "run:ID", or "none" (random init)
    val_fraction: float = 0.2
    seed: int = 0

    @property
    def stored_size(self) -> int:
        """Side of the decoded images kept in the tensor cache.

        The tutorial's val transform is Resize(256) + CenterCrop(224): we keep the 256 px
        square (scaled to `img_size`) so training can crop from it as the tutorial does.
        """
        if self.resize == "tutorial":
            return round(self.img_size * 256 / 224)
        return self.img_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
_FAST: dict[str, dict[str, Any]] = {
    "finetune": dict(
        img_size=48, batch_size=128, epochs=6, optimizer="sgd", lr=0.05, momentum=0.9,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment="signs",
        resize="square", weights="imagenet",
    ),
    "frozen": dict(
        img_size=64, batch_size=256, epochs=25, optimizer="adamw", lr=0.003, momentum=0.9,
        weight_decay=1e-4, schedule="cosine", augment="none", resize="square",
        weights="imagenet",
    ),
    "scratch": dict(
        img_size=64, batch_size=128, epochs=20, optimizer="sgd", lr=0.1, momentum=0.9,
        weight_decay=5e-4, schedule="onecycle", label_smoothing=0.1, augment="signs",
        resize="square", weights="none",
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
    known = {f.name for f in fields(TrainConfig)}
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
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"saved config has unknown settings: {', '.join(sorted(unknown))}")
    return validate_config(TrainConfig(**dict(data)))


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_number(name: str, value: Any, *, kind: type, low: float, high: float,
                  low_open: bool = False) -> None:
    # bool is an int in Python; a config value of True is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{name} must be a number; got {value!r}")
    if kind is int and not float(value).is_integer():
        raise UserError(f"{name} must be a whole number; got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{name} must be finite; got {value!r}")
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        bracket = "(" if low_open else "["
        raise UserError(f"{name} must be in {bracket}{low}, {high}]; got {value!r}")


def validate_config(config: TrainConfig) -> TrainConfig:
    """Reject settings that cannot train, with a message naming the setting."""
    check_choice("approach", config.approach, APPROACHES)
    check_choice("preset", config.preset, PRESETS)
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    check_choice("schedule", config.schedule, SCHEDULES)
    check_choice("augment", config.augment, AUGMENTS)
    check_choice("resize", config.resize, RESIZES)
    _check_number("img_size", config.img_size, kind=int, low=16, high=512)
    _check_number("batch_size", config.batch_size, kind=int, low=1, high=65536)
    _check_number("epochs", config.epochs, kind=int, low=1, high=10000)
    _check_number("lr", config.lr, kind=float, low=0.0, high=10.0, low_open=True)
    _check_number("momentum", config.momentum, kind=float, low=0.0, high=0.999)
    _check_number("weight_decay", config.weight_decay, kind=float, low=0.0, high=1.0)
    _check_number("step_size", config.step_size, kind=int, low=1, high=10000)
    _check_number("gamma", config.gamma, kind=float, low=0.0, high=1.0, low_open=True)
    _check_number("label_smoothing", config.label_smoothing, kind=float, low=0.0, high=0.5)
    _check_number("patience", config.patience, kind=int, low=0, high=10000)
    _check_number("val_fraction", config.val_fraction, kind=float, low=0.0, high=0.9,
                  low_open=True)
    _check_number("seed", config.seed, kind=int, low=0, high=2**31 - 1)
    if not isinstance(config.weights, str) or not config.weights:
        raise UserError("weights must be 'imagenet', 'none', a file path or 'run:ID'")
    if config.approach == "scratch" and config.weights != "none":
        raise UserError("the scratch approach trains from random init: weights must be 'none'")
    if config.approach != "scratch" and config.weights == "none":
        raise UserError(
            f"the {config.approach} approach needs pretrained weights: pass --weights imagenet, "
            "a weights file, or run:ID"
        )
    # Normalise numeric types so equal configs hash equally (2 and 2.0, "32" never gets here).
    return dataclasses.replace(
        config,
        img_size=int(config.img_size), batch_size=int(config.batch_size),
        epochs=int(config.epochs), step_size=int(config.step_size),
        patience=int(config.patience), seed=int(config.seed), lr=float(config.lr),
        momentum=float(config.momentum), weight_decay=float(config.weight_decay),
        gamma=float(config.gamma), label_smoothing=float(config.label_smoothing),
        val_fraction=float(config.val_fraction),
    )
