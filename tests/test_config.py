"""speedsign.config: presets, validation, normalisation, the SETTINGS table behind the command line's
train flags; bad settings never reach a job."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from speedsign.cli import build_parser, config_from_args
from speedsign.config import (
    APPROACHES,
    PRESETS,
    SETTINGS,
    TrainConfig,
    config_from_dict,
    preset_values,
    resolve_config,
    validate_config,
)
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
    from speedsign.job import TrainRequest, plan_run, train_run
    from speedsign.jobs import launch

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
    for _name, (config, words) in cases.items():
        request = TrainRequest(config=config, data_dir=tiny_data, runs_dir=runs_dir)
        for start in (plan_run, train_run, launch):
            with pytest.raises(UserError, match=words):
                start(request)
    assert not runs_dir.exists()  # no run folder, so no job


def test_a_weights_file_is_made_absolute_so_the_job_finds_it_from_any_folder(
        weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(weights_file.parent)
    config = resolve_config(approach="frozen", overrides={"weights": weights_file.name})
    assert config.weights == str(weights_file.resolve()) and Path(config.weights).is_absolute()
    for spec in ("imagenet", "run:scratch-20250101-aaaaaaaaaa"):
        assert resolve_config(approach="frozen", overrides={"weights": spec}).weights == spec


# ---------------------------------------------------------------- the command line's train flags

def train_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def test_every_setting_has_a_train_flag_of_its_own() -> None:
    flags = {option: action for action in train_parser()._actions for option in action.option_strings}
    for setting in SETTINGS:
        assert setting.flag in flags, f"no {setting.flag} for {setting.name}"
        action = flags[setting.flag]
        assert action.dest == setting.name and action.help
        if setting.choices:
            assert tuple(action.choices) == setting.choices, setting.name
    assert {s.flag for s in SETTINGS} >= {"--step-size", "--gamma"}


def test_step_size_and_gamma_flags_reach_the_config(tiny_data: Path) -> None:
    args = build_parser().parse_args(["train", "--approach", "scratch", "--data", str(tiny_data),
                                      "--step-size", "3", "--gamma", "0.5", "--schedule", "step"])
    config = config_from_args(args)
    assert (config.schedule, config.step_size, config.gamma) == ("step", 3, 0.5)
    assert type(config.step_size) is int and type(config.gamma) is float
    defaults = config_from_args(build_parser().parse_args(["train", "--approach", "scratch", "--data", "d"]))
    assert (defaults.step_size, defaults.gamma) == (TrainConfig.step_size, TrainConfig.gamma)  # the preset's
    for flag, value, words in (("--step-size", "0", "step_size must be in"), ("--gamma", "0", "gamma must be in"),
                               ("--gamma", "1.5", "gamma must be in")):
        bad = build_parser().parse_args(["train", "--approach", "scratch", "--data", "d", flag, value])
        with pytest.raises(UserError, match=words):
            config_from_args(bad)


def test_step_size_and_gamma_flags_reach_the_run_a_background_job_trains(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m speedsign train --step-size 3 --gamma 0.5 --schedule step --background`, in process."""
    import json
    from types import SimpleNamespace

    from speedsign import cli, jobs
    from speedsign.job import read_request

    started: list[Path] = []
    monkeypatch.setattr(jobs, "start_job",
                        lambda run_dir, *, nproc=1: started.append(run_dir) or SimpleNamespace(pid=1))
    code = cli.main(["train", "--approach", "scratch", "--data", str(tiny_data), "--runs-dir", str(tmp_path / "runs"),
                     "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                     "--step-size", "3", "--gamma", "0.5", "--schedule", "step", "--background", "--json"])
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and answer["state"] == "queued" and started == [Path(answer["run_dir"])]
    config = read_request(Path(answer["run_dir"])).config  # what the job will train
    assert (config.schedule, config.step_size, config.gamma) == ("step", 3, 0.5)


def test_every_setting_given_as_a_flag_rebuilds_the_same_config(weights_file: Path) -> None:
    config = resolve_config(approach="finetune", overrides={
        "img_size": 40, "batch_size": 12, "epochs": 3, "optimizer": "adamw", "lr": 0.1 + 0.2, "momentum": 0.8,
        "weight_decay": 1e-3, "schedule": "step", "step_size": 3, "gamma": 0.5, "label_smoothing": 0.05,
        "patience": 2, "augment": "none", "resize": "tutorial", "weights": str(weights_file), "val_fraction": 0.3,
        "seed": 9, "steps": 40, "warmup": 0.1, "ema": 0.99, "budget": 90.0, "min_size": 24,
        "contrast": "stretch"})
    preset = resolve_config(approach="finetune")
    for setting in SETTINGS[2:]:  # every value set by hand: a flag the parser ignored would show
        assert getattr(config, setting.name) != getattr(preset, setting.name), setting.name
    argv = ["train", "--data", "d"]
    for setting in SETTINGS:
        argv += [setting.flag, str(getattr(config, setting.name))]
    assert config_from_args(build_parser().parse_args(argv)) == config


# ---------------------------------------------------------------- ImageNet weights offline

@pytest.mark.parametrize("background", [
    False,
    True,
], ids=["train", "train --background"])
def test_imagenet_weights_offline_exit_2_before_any_run_folder(
        background: bool, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from speedsign import cli, jobs, models

    if models.imagenet_weights_path().exists():
        pytest.skip("ImageNet weights are cached on this machine")
    asked: list[str] = []
    monkeypatch.setattr(models, "_can_reach", lambda host, *, timeout=5.0: asked.append(host) or False)
    monkeypatch.setattr(jobs, "start_job", lambda *a, **k: pytest.fail("a job was started"))
    runs_dir = tmp_path / "runs"
    code = cli.main(["train", "--approach", "finetune", "--weights", "imagenet", "--data", str(tiny_data),
                     "--runs-dir", str(runs_dir), "--img-size", "16", "--epochs", "1", "--batch-size", "8",
                     "--device", "cpu", *(["--background"] if background else [])])
    captured = capsys.readouterr()
    assert code == 2
    assert "ImageNet weights" in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("speedsign: error:")
    assert len(asked) <= 1  # one reachability check, never a download attempt
    assert not runs_dir.exists() or not any(path.is_dir() for path in runs_dir.iterdir())
