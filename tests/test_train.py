"""train.py: the frozen head on cached features equals the live backbone; resume is exact;
schedules, early stopping and the per-epoch record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedsign.config import resolve_config
from speedsign.data import load_split_tensors, scan_dataset
from speedsign.models import build_model, load_weights_file
from speedsign.train import (EpochRecord, FitHooks, FitInputs, batch_indices, build_optimizer, build_scheduler,
                             compute_features, Distributed, fit, pick_device)

APPROACHES = ("finetune", "frozen", "scratch")


def _splits(data: Path, size: int):
    index = scan_dataset(data)
    return index, load_split_tensors(index, size=size)


def _model(config, weights_file: Path):
    backbone = None if config.approach == "scratch" else load_weights_file(weights_file)
    torch.manual_seed(0)
    return build_model(config, num_classes=9, backbone=backbone)


def test_frozen_head_on_cached_features_matches_live_backbone(synth_dir: Path, weights_file: Path) -> None:
    config = resolve_config(approach="frozen", overrides={"weights": str(weights_file), "img_size": 32,
                                                          "epochs": 3, "batch_size": 32})
    _, splits = _splits(synth_dir, 32)
    train, val = splits["train"], splits["val"]
    cpu = torch.device("cpu")

    cached_model = _model(config, weights_file)
    features_train = compute_features(cached_model, train.images, config=config, device=cpu)
    features_val = compute_features(cached_model, val.images, config=config, device=cpu)
    cached = fit(cached_model, FitInputs(features_train, train.labels, features_val, val.labels, True),
                 config=config, device=cpu)

    live_model = _model(config, weights_file)
    live = fit(live_model, FitInputs(train.images, train.labels, val.images, val.labels, False),
               config=config, device=cpu)

    assert torch.allclose(cached_model.fc.weight, live_model.fc.weight, atol=1e-4)
    for a, b in zip(cached.history, live.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    # The backbone did not move in either.
    assert torch.equal(cached_model.conv1.weight, live_model.conv1.weight)


@pytest.mark.parametrize("approach", APPROACHES)
def test_resume_from_a_snapshot_gives_the_same_weights_as_an_uninterrupted_run(
        approach: str, synth_dir: Path, weights_file: Path) -> None:
    overrides = {"img_size": 16, "epochs": 2, "batch_size": 32}
    if approach != "scratch":
        overrides["weights"] = str(weights_file)
    config = resolve_config(approach=approach, overrides=overrides)
    _, splits = _splits(synth_dir, 16)
    features = approach == "frozen"
    model_for_features = _model(config, weights_file)

    def inputs() -> FitInputs:
        train, val = splits["train"], splits["val"]
        if features:
            cpu = torch.device("cpu")
            return FitInputs(compute_features(model_for_features, train.images, config=config, device=cpu),
                             train.labels,
                             compute_features(model_for_features, val.images, config=config, device=cpu),
                             val.labels, True)
        return FitInputs(train.images, train.labels, val.images, val.labels, False)

    whole = _model(config, weights_file)
    fit(whole, inputs(), config=config, device=torch.device("cpu"))

    snapshots: list[dict] = []
    first = _model(config, weights_file)
    keep_first = FitHooks(on_epoch_end=lambda record, state, best, snapshot:
                          snapshots.append(snapshot()) if record.epoch == 1 else None)
    fit(first, inputs(), config=config, device=torch.device("cpu"), hooks=keep_first)
    resumed = _model(config, weights_file)
    state = fit(resumed, inputs(), config=config, device=torch.device("cpu"), resume=snapshots[0])
    assert state.epoch == config.epochs
    for key, value in whole.state_dict().items():
        assert torch.allclose(value.float(), resumed.state_dict()[key].float(), atol=1e-5), key


def test_early_stopping_ends_after_patience_epochs_without_progress(synth_dir: Path) -> None:
    # lr so small nothing improves after the first epoch: patience 1 stops at epoch 2.
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 10, "batch_size": 64,
                                                           "lr": 1e-9, "schedule": "none", "patience": 1})
    _, splits = _splits(synth_dir, 16)
    state = fit(_model(config, Path()), FitInputs(splits["train"].images, splits["train"].labels,
                                                  splits["val"].images, splits["val"].labels, False),
                config=config, device=torch.device("cpu"))
    assert state.epoch < 10
    assert state.stale_epochs == 1


@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "onecycle"])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_optimizer_and_schedule_builds_and_steps(schedule: str, optimizer: str) -> None:
    config = resolve_config(approach="scratch", overrides={"schedule": schedule, "optimizer": optimizer,
                                                           "epochs": 1})
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, config)
    scheduler, per_step = build_scheduler(opt, config, steps_per_epoch=1)
    opt.step()
    scheduler.step()
    assert per_step == (schedule == "onecycle")
    assert opt.param_groups[0]["lr"] >= 0


def test_each_rank_takes_its_slice_of_every_global_batch() -> None:
    order = torch.Generator().manual_seed(0)
    whole = list(batch_indices(10, 4, generator=order, ctx=Distributed(), drop_last=True))
    parts = [list(batch_indices(10, 4, generator=torch.Generator().manual_seed(0),
                                ctx=Distributed(rank=r, world_size=2), drop_last=True)) for r in range(2)]
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batch)


def test_pick_device_auto_is_cpu_here_and_cuda_without_a_gpu_is_an_error() -> None:
    from speedsign.errors import UserError

    if not torch.cuda.is_available():
        assert pick_device("auto").type in ("cpu", "mps")
        with pytest.raises(UserError, match="no CUDA GPU"):
            pick_device("cuda")


def test_epoch_record_rounds_for_json() -> None:
    record = EpochRecord(epoch=1, train_loss=1 / 3, train_acc=0.5, val_loss=0.25, val_acc=0.75, lr=0.1,
                         seconds=1.23456789, images_per_s=100.0)
    assert record.to_dict()["train_loss"] == 0.333333
