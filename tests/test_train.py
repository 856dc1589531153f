"""train.py and the job's loop: the frozen head on cached features equals the live backbone; resume is exact;
schedules, early stopping and the per-epoch record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speedsign import job
from speedsign.config import resolve_config
from speedsign.data import load_split_tensors, scan_dataset
from speedsign.job import TrainRequest, train_run
from speedsign.models import build_model, load_weights_file, set_train_mode, trainable_parameters
from speedsign.runs import RunDir
from speedsign.train import (
    Distributed,
    EpochRecord,
    Stopped,
    batch_indices,
    build_optimizer,
    build_scheduler,
    compute_features,
    epoch_generator,
    evaluate,
    pick_device,
    train_one_epoch,
)

APPROACHES = ("finetune", "frozen", "scratch")


def _splits(data: Path, size: int):
    index = scan_dataset(data)
    return index, load_split_tensors(index, size=size)


def _model(config, weights_file: Path):
    backbone = None if config.approach == "scratch" else load_weights_file(weights_file)
    torch.manual_seed(0)
    return build_model(config, num_classes=9, backbone=backbone)


def _train_epochs(module: torch.nn.Module, model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                  val_inputs: torch.Tensor, val_labels: torch.Tensor, *, config, features: bool) -> list[dict]:
    """The job's epoch loop in small: train_one_epoch then evaluate, with the job's generators."""
    cpu = torch.device("cpu")
    optimizer = build_optimizer(trainable_parameters(module), config)
    scheduler, per_step = build_scheduler(optimizer, config, steps_per_epoch=max(1, len(labels) // config.batch_size))
    history = []
    for epoch in range(1, config.epochs + 1):
        set_train_mode(model, approach=config.approach)
        loss, _, _ = train_one_epoch(module, inputs, labels, config=config, features=features, optimizer=optimizer,
                                     scheduler=scheduler, per_step=per_step,
                                     order=epoch_generator(config, epoch, device=cpu),
                                     generator=epoch_generator(config, epoch, device=cpu, salt=1), device=cpu)
        if not per_step:
            scheduler.step()
        _, val_acc, _ = evaluate(module, val_inputs, val_labels, config=config, features=features, device=cpu)
        history.append({"train_loss": loss, "val_acc": val_acc})
    return history


def test_frozen_head_on_cached_features_matches_live_backbone(synth_dir: Path, weights_file: Path) -> None:
    config = resolve_config(approach="frozen", overrides={"weights": str(weights_file), "img_size": 32,
                                                          "epochs": 3, "batch_size": 32})
    _, splits = _splits(synth_dir, 32)
    train, val = splits["train"], splits["val"]
    cpu = torch.device("cpu")

    cached_model = _model(config, weights_file)
    features_train = compute_features(cached_model, train.images, config=config, device=cpu)
    features_val = compute_features(cached_model, val.images, config=config, device=cpu)
    cached = _train_epochs(cached_model.fc, cached_model, features_train, train.labels, features_val, val.labels,
                           config=config, features=True)

    live_model = _model(config, weights_file)
    live = _train_epochs(live_model, live_model, train.images, train.labels, val.images, val.labels,
                         config=config, features=False)

    assert torch.allclose(cached_model.fc.weight, live_model.fc.weight, atol=1e-4)
    for a, b in zip(cached, live, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-4)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-6)
    # The backbone did not move in either.
    assert torch.equal(cached_model.conv1.weight, live_model.conv1.weight)


@pytest.mark.parametrize("approach", APPROACHES)
def test_resume_from_last_pt_gives_the_same_weights_as_an_uninterrupted_run(
        approach: str, synth_dir: Path, weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        one_thread: None) -> None:
    overrides = {"img_size": 16, "epochs": 2, "batch_size": 32}
    if approach != "scratch":
        overrides["weights"] = str(weights_file)
    config = resolve_config(approach=approach, overrides=overrides)
    # fp32, as bf16 kernels need not be bitwise repeatable across processes and runs.
    whole = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "whole", device="cpu",
                                   precision="fp32"))

    # Interrupt the same run right after epoch 1's checkpoint, as a cancel would.
    append = job.append_metrics

    def stop_after_first(run_dir: Path, row: dict) -> None:
        append(run_dir, row)
        if row["epoch"] == 1:
            raise Stopped()

    request = TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "resumed", device="cpu",
                           precision="fp32")
    monkeypatch.setattr(job, "append_metrics", stop_after_first)
    assert train_run(request).state == "cancelled"
    monkeypatch.setattr(job, "append_metrics", append)
    resumed = train_run(request)
    assert resumed.state == "done" and resumed.epochs_run == config.epochs
    expected = torch.load(RunDir(whole.run_dir).last, weights_only=True)["model"]
    actual = torch.load(RunDir(resumed.run_dir).last, weights_only=True)["model"]
    for key, value in expected.items():
        assert torch.allclose(value.float(), actual[key].float(), atol=1e-5), key


def test_early_stopping_ends_after_patience_epochs_without_progress(synth_dir: Path, tmp_path: Path,
                                                                   one_thread: None) -> None:
    # lr so small nothing improves after the first epoch: patience 1 stops at epoch 2.
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 10, "batch_size": 64,
                                                           "lr": 1e-9, "schedule": "none", "patience": 1})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    assert result.state == "done" and result.epochs_run < 10
    payload = torch.load(RunDir(result.run_dir).last, weights_only=True)
    assert payload["fit_state"]["stale_epochs"] == 1


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


def test_auto_precision_is_fp32_where_cpu_bf16_gradients_are_wrong_and_bf16_there_is_refused() -> None:
    from speedsign.errors import UserError
    from speedsign.train import CPU_BF16_MIN_EXCLUSIVE_SIDE, resolve_precision

    cpu = torch.device("cpu")
    side = CPU_BF16_MIN_EXCLUSIVE_SIDE
    assert resolve_precision("auto", cpu, img_size=side) == "fp32"
    assert resolve_precision("fp32", cpu, img_size=side) == "fp32"
    with pytest.raises(UserError, match="wrong gradients"):
        resolve_precision("bf16", cpu, img_size=side)
    assert resolve_precision("bf16", cpu, img_size=side + 8) == "bf16"


def test_a_16_px_run_with_auto_precision_trains_finite_weights(synth_dir: Path, tmp_path: Path,
                                                               one_thread: None) -> None:
    # At 16 px, bf16 on an AVX512-BF16 CPU left values of 1e9-1e28 in layer4.0.conv1 after a step.
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 2, "batch_size": 32})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    weights = torch.load(RunDir(result.run_dir).last, weights_only=True)["model"]
    for name, value in weights.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all() and value.abs().max() < 1e4, name


def test_bf16_at_16_px_on_cpu_exits_2_before_any_run_folder(synth_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from speedsign import cli

    code = cli.main(["train", "--approach", "scratch", "--data", str(synth_dir), "--img-size", "16",
                     "--precision", "bf16", "--device", "cpu", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2 and "wrong gradients" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_cpu_held_to_avx2_kernels_has_no_native_bf16() -> None:
    # The AVX2 stand-in must pick fp32 as an AVX2-only CPU would, not emulated bf16.
    # A subprocess: torch reads ATEN_CPU_CAPABILITY once, at import.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    code = ("import torch; from speedsign.train import resolve_precision; "
            "print(resolve_precision('auto', torch.device('cpu'), img_size=64))")
    answer = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "fp32", answer.stderr
