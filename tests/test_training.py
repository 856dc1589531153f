"""Training requests from the Train page: hand-set settings, backbone choices, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedsign import models, training
from speedsign.config import APPROACHES, HAND_SET, SETTINGS, preset_values, resolve_config
from speedsign.errors import UserError
from speedsign.runs import RunDir, RunInfo, RunStatus


def test_preset_defaults_are_the_hand_set_settings_of_the_preset() -> None:
    defaults = training.preset_defaults("frozen", "fast")
    assert list(defaults) == [s.name for s in HAND_SET]
    for name, value in preset_values("frozen", "fast").items():
        if name in defaults:
            assert defaults[name] == value
    assert training.preset_defaults("scratch", "tutorial")["img_size"] == 224


def test_input_bounds_never_offer_a_refused_value() -> None:
    for setting in HAND_SET:
        if setting.choices:
            continue
        low, high, step = training.input_bounds(setting)
        assert isinstance(low, setting.kind) and isinstance(high, setting.kind) and step > 0
        resolve_config(approach="scratch", overrides={setting.name: low})
        resolve_config(approach="scratch", overrides={setting.name: high})
        assert training.input_label(setting)[0].isupper()
    lr = next(s for s in SETTINGS if s.name == "lr")
    assert training.input_bounds(lr)[0] > 0.0


def test_build_requests_one_per_approach_with_the_weights(tmp_path: Path, weights_file: Path) -> None:
    requests = training.build_requests(approaches=["scratch", "frozen"], preset="fast", data_dir=tmp_path,
                                       runs_dir=tmp_path / "runs", weights=str(weights_file),
                                       overrides={"scratch": {"epochs": 3}})
    assert [r.config.approach for r in requests] == ["scratch", "frozen"]
    assert requests[0].config.epochs == 3 and requests[0].config.weights == "none"
    assert requests[1].config.weights == str(weights_file.resolve())


def test_build_requests_refusals_name_the_approach(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="at least one"):
        training.build_requests(approaches=[], preset="fast", data_dir=tmp_path, runs_dir=tmp_path)
    with pytest.raises(UserError, match="weights file"):
        training.build_requests(approaches=["finetune"], preset="fast", data_dir=tmp_path, runs_dir=tmp_path,
                                weights="  ")
    with pytest.raises(UserError, match="^scratch: .*batch_size"):
        training.build_requests(approaches=["scratch"], preset="fast", data_dir=tmp_path, runs_dir=tmp_path,
                                overrides={"scratch": {"batch_size": 0}})


def finished(run_id: str, *, tmp_path: Path, best: float | None = 0.9) -> RunInfo:
    run_dir = tmp_path / run_id
    run_dir.mkdir()
    RunDir(run_dir).best.write_bytes(b"stand-in")
    return RunInfo(run_id=run_id, run_dir=run_dir, approach="scratch", state="done", epoch=2, epochs=2,
                   best_val_acc=best, damaged=None, config={}, status=RunStatus(state="done", exists=True))


def test_weights_options_put_imagenet_first_only_when_cached(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [finished("scratch-20990101-one", tmp_path=tmp_path)]
    monkeypatch.setattr(training, "imagenet_cached", lambda: False)
    assert [o.spec for o in training.weights_options(runs)] == ["run:scratch-20990101-one", "imagenet", "path"]
    assert [o.spec for o in training.weights_options([])] == ["imagenet", "path"]
    assert "needs internet" in training.weights_options([])[0].label
    monkeypatch.setattr(training, "imagenet_cached", lambda: True)
    assert [o.spec for o in training.weights_options(runs)] == ["imagenet", "run:scratch-20990101-one", "path"]


def test_weights_options_put_usable_runs_first_when_imagenet_cannot_be_used(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "imagenet_cached", lambda: False)
    runs = [finished("scratch-20990101-low", tmp_path=tmp_path, best=0.5),
            finished("scratch-20990101-high", tmp_path=tmp_path, best=0.9),
            finished("scratch-20990101-none", tmp_path=tmp_path, best=None)]
    options = training.weights_options(runs, imagenet_ok=False)
    assert [o.spec for o in options] == ["run:scratch-20990101-high", "run:scratch-20990101-low",
                                         "run:scratch-20990101-none", "imagenet", "path"]
    assert "not available" in options[3].label and "val acc –" in options[2].label
    online = training.weights_options(runs, imagenet_ok=True)
    assert online[0].spec == "imagenet" and "downloads" in online[0].label


def test_defaults_never_start_from_a_setup_known_to_fail(tmp_path: Path) -> None:
    problem = "ImageNet weights are not here"
    runs = [finished("scratch-20990101-low", tmp_path=tmp_path, best=0.5),
            finished("scratch-20990101-high", tmp_path=tmp_path, best=0.9)]
    online = training.train_defaults(runs, imagenet_problem=None)
    assert online.approaches == APPROACHES and online.weights == "imagenet" and online.note is None
    with_run = training.train_defaults(runs, imagenet_problem=problem)
    assert with_run.approaches == APPROACHES and with_run.weights == "run:scratch-20990101-high"
    options = training.weights_options(runs, imagenet_ok=False)
    assert options[with_run.weights_index(options)].spec == "run:scratch-20990101-high"
    nothing = training.train_defaults([], imagenet_problem=problem)
    assert nothing.approaches == ("scratch",) and nothing.weights is None
    assert nothing.note and "finetune and frozen need a pretrained backbone" in nothing.note
    assert "--" not in nothing.note  # no command-line flags on a page
    assert nothing.weights_index(training.weights_options([], imagenet_ok=False)) == 0


def test_launch_is_blocked_only_for_a_backbone_known_to_fail() -> None:
    problem = "offline"
    assert training.launch_blocker(["finetune", "scratch"], "imagenet", imagenet_problem=problem) == problem
    assert training.launch_blocker(["scratch"], None, imagenet_problem=problem) is None
    assert training.launch_blocker(["frozen"], "run:scratch-20990101-one", imagenet_problem=problem) is None
    assert training.launch_blocker(["frozen"], "imagenet", imagenet_problem=None) is None


def test_imagenet_problem_offline_speaks_the_apps_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(models, "_can_reach", lambda host, timeout=5.0: False)
    problem = training.imagenet_problem()
    assert problem and models.OFFLINE_REASON in problem and "--weights" not in problem
    monkeypatch.setattr(models, "_can_reach", lambda host, timeout=5.0: True)
    assert training.imagenet_problem() is None
