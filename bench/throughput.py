"""1. Training throughput: the report's tutorial loop against the `fast` preset, per approach.

Both sides train the same approach on the same split and device, alternating in rounds
(tutorial N batches, then fast N' batches); the speed-up is the ratio of the median images/s.

- tutorial: `bench.tutorial` (224 px, batch 4, images decoded from disk by DataLoader
  workers in every batch, fp32), train phase only;
- fast, finetune/scratch: speedsign's `train_one_epoch` + `prepare_batch` with the preset's
  settings on the decoded uint8 tensors (decoding happens once per data set and is cached;
  its one-off time is reported separately);
- fast, frozen: the first epoch, building the feature cache included: backbone features of the
  batch's images (`compute_features`), then the head's epoch on them. Later epochs only
  train the head and are far faster; item 2 measures those 25 epochs end to end.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from bench import tutorial
from bench.context import Context
from bench.machine import achieved, forward_flops, matmul_peak_tflops
from bench.timing import median, ratio, synchronize
from bench.workspace import config_overrides, decoded_splits, tutorial_folder
from speedsign.augment import costliest_recipe
from speedsign.config import TrainConfig, resolve_config
from speedsign.data import select_splits
from speedsign.models import build_model, set_train_mode, trainable_parameters
from speedsign.train import (
    build_optimizer,
    build_scheduler,
    compute_features,
    epoch_generator,
    resolve_precision,
    train_one_epoch,
)


class FastSide:
    """The fast preset of one approach, ready to run N' training steps at a time."""

    def __init__(self, ctx: Context, approach: str, images: torch.Tensor, labels: torch.Tensor,
                 *, total_steps: int) -> None:
        self.ctx, self.approach = ctx, approach
        # "auto" augmentation is decided per run by its length; time the costlier recipe it may pick.
        self.config: TrainConfig = costliest_recipe(
            resolve_config(approach=approach, preset="fast", overrides=config_overrides(approach, ctx.backbone)))
        self.device = ctx.device
        torch.manual_seed(self.config.seed)
        self.model = build_model(self.config, num_classes=len(ctx.data.index.classes),
                                 backbone=ctx.backbone_for(approach)).to(self.device)
        self.features = approach == "frozen"
        if not self.features:
            self.model.to(memory_format=torch.channels_last)  # as the training job does
        self.module = self.model.fc if self.features else self.model
        self.optimizer = build_optimizer(trainable_parameters(self.module), self.config)
        n_train = int(labels.shape[0])
        # One-cycle must not run out of steps however many rounds we time.
        steps = max(n_train // self.config.batch_size, total_steps, 1)
        self.scheduler, self.per_step = build_scheduler(self.optimizer, self.config, steps_per_epoch=steps)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.draw = torch.Generator().manual_seed(self.config.seed)
        self.precision = resolve_precision("auto", self.device, img_size=self.config.img_size)  # as `train` picks
        self.epoch = 0

    def _pick(self, count: int) -> torch.Tensor:
        n = int(self.labels.shape[0])
        if n >= count:
            return torch.randperm(n, generator=self.draw)[:count]
        return torch.randint(n, (count,), generator=self.draw)

    def run(self, steps: int) -> float:
        """Train `steps` batches of the preset's size; returns images/s."""
        count = steps * self.config.batch_size
        index = self._pick(count).to(self.images.device)
        images, labels = self.images[index], self.labels[index]
        self.epoch += 1
        order = epoch_generator(self.config, self.epoch, device=torch.device("cpu"))
        generator = epoch_generator(self.config, self.epoch, device=self.device, salt=1)
        synchronize(self.device)
        started = time.perf_counter()
        inputs = images
        if self.features:
            inputs = compute_features(self.model, images, config=self.config, device=self.device).to(self.device)
        set_train_mode(self.model, approach=self.approach)
        _, _, seen = train_one_epoch(
            self.module, inputs, labels, config=self.config, features=self.features, optimizer=self.optimizer,
            scheduler=self.scheduler, per_step=self.per_step, order=order, generator=generator, device=self.device,
            precision=self.precision)
        synchronize(self.device)
        return seen / (time.perf_counter() - started)


def measure(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    index = ctx.data.index
    folder = tutorial_folder(index, ctx.work / "tutorial-data")
    workers = opts.tutorial_workers if opts.tutorial_workers is not None else tutorial.default_workers()
    loaders, sizes, _ = tutorial.make_dataloaders(folder, num_workers=workers, img_size=opts.tutorial_img_size)
    # The peak each side could reach, measured here and now: fp32 for the tutorial, and the
    # dtype that `speedsign train` picks (bf16 on a GPU or a CPU with native bf16).
    fast_dtype = resolve_precision("auto", ctx.device, img_size=64)
    peaks = {"fp32": matmul_peak_tflops(ctx.device, torch.float32)}
    if fast_dtype == "bf16":
        peaks["bf16"] = matmul_peak_tflops(ctx.device, torch.bfloat16)
    ctx.log("matmul peak (TFLOP/s): " + ", ".join(f"{k} {v:.3g}" for k, v in peaks.items()))
    results: dict[str, Any] = {"tutorial_workers": workers, "tutorial_img_size": opts.tutorial_img_size,
                               "matmul_peak_tflops": {k: round(v, 4) for k, v in peaks.items()}, "approaches": {}}
    decoded_cache: dict[tuple[int, str], tuple[dict, float]] = {}
    for approach in opts.approaches:
        fast_config = resolve_config(approach=approach, preset="fast",
                                     overrides=config_overrides(approach, ctx.backbone))
        key = (fast_config.stored_size, fast_config.resize)
        if key not in decoded_cache:
            decoded_cache[key] = decoded_splits(index, fast_config)
        decoded, decode_s = decoded_cache[key]
        train = select_splits(index, decoded, decoded["images"])["train"]
        # frozen's batches are 4x larger (256): a quarter of the steps keeps the rounds alike in length.
        steps = max(1, opts.fast_steps // 4) if approach == "frozen" else opts.fast_steps
        fast = FastSide(ctx, approach, train.images, train.labels,
                        total_steps=(opts.fast_warmup + steps) * (opts.rounds + 1))
        tut = tutorial.make_model(approach, num_classes=len(index.classes),
                                  backbone=ctx.backbone_for(approach), device=ctx.device, seed=opts.seed)
        if opts.fast_warmup:
            fast.run(opts.fast_warmup)
        tutorial_ips: list[float] = []
        fast_ips: list[float] = []
        for round_ in range(opts.rounds):
            tutorial_ips.append(tutorial.images_per_second(tut, loaders["train"], device=ctx.device,
                                                           warmup=opts.tutorial_warmup, steps=opts.tutorial_steps))
            fast_ips.append(fast.run(steps))
            ctx.log(f"throughput {approach} round {round_ + 1}/{opts.rounds}: tutorial "
                    f"{tutorial_ips[-1]:.1f} img/s, fast {fast_ips[-1]:.1f} img/s")
        entry = {
            "tutorial_images_per_s": [round(v, 2) for v in tutorial_ips],
            "fast_images_per_s": [round(v, 2) for v in fast_ips],
            "tutorial_median": round(median(tutorial_ips), 2),
            "fast_median": round(median(fast_ips), 2),
            "speedup": round(ratio(median(fast_ips), median(tutorial_ips)), 2),
            "tutorial": {"img_size": opts.tutorial_img_size, "batch_size": tutorial.BATCH_SIZE,
                         "warmup": opts.tutorial_warmup, "steps": opts.tutorial_steps},
            "fast": {"img_size": fast_config.img_size, "batch_size": fast_config.batch_size,
                     "warmup": opts.fast_warmup, "steps": steps,
                     "measures": "first epoch incl. building the feature cache" if approach == "frozen"
                     else "training steps on decoded tensors",
                     "decode_once_s": round(decode_s, 2), "decoded_images": len(decoded["files"])},
        }
        entry.update(_flops(ctx, approach, tut.model, fast, entry, peaks=peaks))
        results["approaches"][approach] = entry
        del fast, tut
    return results


def _flops(ctx: Context, approach: str, tutorial_model: torch.nn.Module, fast: FastSide,
           entry: dict[str, Any], *, peaks: dict[str, float]) -> dict[str, Any]:
    """FLOPs per training image of each side (forward x3, or x1 when only the head learns)."""
    factor = 1 if approach == "frozen" else 3
    tut_flops = factor * forward_flops(tutorial_model, img_size=ctx.options.tutorial_img_size)
    fast_flops = factor * forward_flops(fast.model, img_size=fast.config.img_size)
    if not all(map(math.isfinite, (entry["tutorial_median"], entry["fast_median"]))):
        return {}
    return {"flops_per_image": {"tutorial": tut_flops, "fast": fast_flops},
            "achieved": {"tutorial": achieved(tut_flops, entry["tutorial_median"], ctx.device,
                                              peak_tflops=peaks["fp32"], peak_dtype="fp32"),
                         "fast": achieved(fast_flops, entry["fast_median"], ctx.device,
                                          peak_tflops=peaks[fast.precision], peak_dtype=fast.precision)}}
