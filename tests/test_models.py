"""models.py: our ResNet18 equals torchvision's in size and shape; weights sources; freezing."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from speedsign.config import resolve_config
from speedsign.errors import UserError
from speedsign.models import (
    ResNet18,
    backbone_features,
    build_model,
    count_parameters,
    freeze_backbone,
    imagenet_weights_path,
    load_imagenet_state,
    load_weights_file,
    resolve_weights,
    set_train_mode,
    trainable_parameters,
)

APPROACHES = ("finetune", "frozen", "scratch")


@pytest.mark.parametrize("num_classes", [9, 1000])
def test_own_resnet18_has_torchvision_parameter_count_names_and_shapes(num_classes: int) -> None:
    ours, theirs = ResNet18(num_classes=num_classes), torchvision.models.resnet18(num_classes=num_classes)
    assert count_parameters(ours) == count_parameters(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    ours.eval(), theirs.eval()
    for size in (32, 64, 224):
        x = torch.randn(2, 3, size, size)
        assert ours(x).shape == theirs(x).shape == (2, num_classes)
        assert backbone_features(ours, x).shape == backbone_features(theirs, x).shape == (2, 512)


def test_own_resnet18_computes_what_torchvision_computes_with_the_same_weights() -> None:
    ours, theirs = ResNet18(num_classes=9).eval(), torchvision.models.resnet18(num_classes=9).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("approach", APPROACHES)
def test_build_model_gives_each_approach_its_trainable_parameters(approach: str, weights_file: Path) -> None:
    overrides = {} if approach == "scratch" else {"weights": str(weights_file)}
    config = resolve_config(approach=approach, overrides=overrides)
    backbone = None if approach == "scratch" else resolve_weights(config.weights, runs_dir=Path("runs"))
    model = build_model(config, num_classes=9, backbone=backbone)
    trainable = {id(p) for p in trainable_parameters(model)}
    fc = {id(p) for p in model.fc.parameters()}
    if approach == "frozen":
        assert trainable == fc
    else:
        assert trainable == {id(p) for p in model.parameters()}
    if approach != "scratch":
        # The backbone came from the file; the new fc did not.
        state = torch.load(weights_file, weights_only=True)
        assert torch.equal(model.conv1.weight, state["conv1.weight"])
        assert model.fc.out_features == 9


def test_frozen_backbone_stays_in_eval_so_batchnorm_statistics_never_move(weights_file: Path) -> None:
    config = resolve_config(approach="frozen", overrides={"weights": str(weights_file)})
    model = build_model(config, num_classes=9, backbone=load_weights_file(weights_file))
    set_train_mode(model, approach="frozen")
    before = model.bn1.running_mean.clone()
    model(torch.randn(8, 3, 32, 32))
    assert not model.bn1.training and model.fc.training
    assert torch.equal(before, model.bn1.running_mean)


def test_weights_of_the_wrong_shape_get_a_clear_error(tmp_path: Path) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = torchvision.models.resnet18(num_classes=9)
    from speedsign.models import load_backbone

    with pytest.raises(UserError, match="layer1.0.conv1.weight has shape"):
        load_backbone(model, load_weights_file(path))


class _Boom:
    def __reduce__(self):  # what a malicious checkpoint does: run code on load
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_that_runs_code_is_refused_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    boom = _Boom()
    boom.marker = str(marker)
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": boom}))
    with pytest.raises(UserError, match="weights_only"):
        load_weights_file(path)
    assert not marker.exists()


def test_speedsign_checkpoint_works_as_a_backbone_file(runs_with_results: dict[str, Path]) -> None:
    state = load_weights_file(runs_with_results["scratch"] / "best.pt")
    model = torchvision.models.resnet18(num_classes=9)
    from speedsign.models import load_backbone

    load_backbone(model, state)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_run_id_weights_load_the_runs_best_model(runs_with_results: dict[str, Path]) -> None:
    run_dir = runs_with_results["scratch"]
    state = resolve_weights(f"run:{run_dir.name}", runs_dir=run_dir.parent)
    assert "layer4.1.bn2.weight" in state
    with pytest.raises(UserError, match="no best.pt"):
        resolve_weights("run:scratch-19990101-0000000000", runs_dir=run_dir.parent)
    with pytest.raises(UserError, match="not a run id"):
        resolve_weights("run:../../etc", runs_dir=run_dir.parent)


def test_missing_imagenet_weights_offline_fail_fast_with_what_to_do(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("speedsign.models._can_reach", lambda host, timeout=5.0: False)
    with pytest.raises(UserError) as error:
        load_imagenet_state()
    message = str(error.value)
    assert str(imagenet_weights_path()) in message and "--weights" in message and "run:ID" in message


def test_freeze_backbone_leaves_only_fc_trainable() -> None:
    model = torchvision.models.resnet18(num_classes=9)
    freeze_backbone(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
