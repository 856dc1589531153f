"""speedsign.config: presets, validation, normalisation; bad settings never reach a job."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from speedsign.config import (APPROACHES, PRESETS, TrainConfig, config_from_dict, preset_values, resolve_config,
                              validate_config)
from speedsign.errors import UserError
from speedsign.runs import config_hash


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("config") / "signs"
    render_dataset(out, per_class=6, frames_per_track=2, size=16, seed=3)
    return out


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("approach", APPROACHES)
def test_every_preset_resolves_to_a_valid_config(approach: str, preset: str) -> None:
    config = resolve_config(approach=approach, preset=preset)
    assert config.approach == approach and config.preset == preset
    assert validate_config(config) == config
    assert (config.weights == "none") == (approach == "scratch")
    assert config_from_dict(config.to_dict()) == config


def test_overrides_apply_and_none_means_keep_the_preset() -> None:
    base = preset_values("scratch", "fast")
    config = resolve_config(approach="scratch", overrides={"epochs": 3, "lr": None, "img_size": 16})
    assert config.epochs == 3 and config.lr == base["lr"] and config.img_size == 16


BAD: list[tuple[dict[str, Any], str]] = [
    ({"lr": 0}, "lr must be in"),
    ({"lr": -0.01}, "lr must be in"),
    ({"lr": math.nan}, "lr must be finite"),
    ({"lr": math.inf}, "lr must be finite"),
    ({"lr": "0.1"}, "lr must be a number"),
    ({"epochs": 0}, "epochs must be in"),
    ({"epochs": -1}, "epochs must be in"),
    ({"epochs": 1.5}, "epochs must be a whole number"),
    ({"epochs": math.inf}, "epochs must be"),
    ({"epochs": True}, "epochs must be a number"),
    ({"batch_size": 0}, "batch_size must be in"),
    ({"batch_size": -4}, "batch_size must be in"),
    ({"batch_size": math.nan}, "batch_size must be"),
    ({"img_size": 8}, "img_size must be in"),
    ({"momentum": 1.0}, "momentum must be in"),
    ({"weight_decay": -1e-4}, "weight_decay must be in"),
    ({"label_smoothing": 0.6}, "label_smoothing must be in"),
    ({"val_fraction": 0.0}, "val_fraction must be in"),
    ({"gamma": 0.0}, "gamma must be in"),
    ({"seed": -1}, "seed must be in"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"schedule": "warmup"}, "schedule must be one of"),
    ({"augment": "flip"}, "augment must be one of"),
    ({"weights": "imagenet"}, "scratch approach trains from random init"),
    ({"weights": ""}, "weights must be"),
    ({"learning_rate": 0.1}, "unknown setting 'learning_rate'"),
]


@pytest.mark.parametrize("overrides, words", BAD, ids=[f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _ in BAD])
def test_bad_setting_is_rejected_with_its_name(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        resolve_config(approach="scratch", overrides=overrides)


def test_unknown_approach_or_preset_and_missing_backbone_are_rejected() -> None:
    with pytest.raises(UserError, match="approach must be one of"):
        resolve_config(approach="transformer")
    with pytest.raises(UserError, match="preset must be one of"):
        resolve_config(approach="scratch", preset="slow")
    with pytest.raises(UserError, match="needs pretrained weights"):
        resolve_config(approach="frozen", overrides={"weights": "none"})


def test_equal_settings_hash_equally_whatever_their_number_type() -> None:
    a = resolve_config(approach="scratch", overrides={"batch_size": 32, "lr": 1, "epochs": 2})
    b = resolve_config(approach="scratch", overrides={"batch_size": 32.0, "lr": 1.0, "epochs": 2.0})
    assert a == b and type(b.batch_size) is int and type(b.lr) is float
    assert config_hash(a.to_dict()) == config_hash(b.to_dict())


def test_saved_config_with_unknown_or_bad_values_is_rejected() -> None:
    saved = resolve_config(approach="scratch").to_dict()
    with pytest.raises(UserError, match="unknown settings: future_knob"):
        config_from_dict({**saved, "future_knob": 1})
    with pytest.raises(UserError, match="lr must be finite"):
        config_from_dict({**saved, "lr": math.inf})


def test_stored_size_keeps_the_tutorial_margin() -> None:
    assert resolve_config(approach="finetune", preset="tutorial").stored_size == 256
    assert resolve_config(approach="scratch", overrides={"img_size": 48}).stored_size == 48


def test_config_built_by_hand_or_too_big_a_batch_is_rejected_before_a_job_starts(
        tiny_data: Path, tmp_path: Path) -> None:
    from speedsign.jobs import launch
    from speedsign.runner import TrainRequest, plan_run, train_run

    runs_dir = tmp_path / "runs"
    good = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 36})
    assert plan_run(TrainRequest(config=good, data_dir=tiny_data, runs_dir=runs_dir)).run_dir.parent == runs_dir
    cases = {
        "negative lr by hand": (dataclasses.replace(good, lr=-1.0), "lr must be in"),
        "NaN lr by hand": (dataclasses.replace(good, lr=math.nan), "lr must be finite"),
        "zero epochs by hand": (dataclasses.replace(good, epochs=0), "epochs must be in"),
        "unknown approach by hand": (TrainConfig(approach="magic"), "approach must be one of"),
        "batch larger than the 36 training images": (dataclasses.replace(good, batch_size=37), "larger than the 36"),
    }
    for name, (config, words) in cases.items():
        request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=runs_dir)
        for start in (plan_run, train_run, launch):
            with pytest.raises(UserError, match=words):
                start(request)
    assert not runs_dir.exists()  # no run folder, so no job
