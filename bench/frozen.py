"""2. Frozen features: 25 epochs of head training, backbone run every epoch vs cached features.

Same model, data, optimizer and schedule (the frozen `fast` preset), both through speedsign's
own `train_one_epoch` and `evaluate`, epoch after epoch as the training job runs them:

- live: on the decoded uint8 images: the backbone (in eval(), frozen) runs on every train and
  val image in every epoch, only `fc` learns;
- cached: `compute_features` once (saved to disk as the job does), then the epochs on the
  512-d features. Its time includes building the cache.

The decoding of the images is common to both and not timed. A subset of the images keeps the
live side within budget (`--frozen-images`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.context import Context
from bench.timing import median, ratio, synchronize
from bench.workspace import config_overrides, decoded_splits, subset_index
from speedsign.config import TrainConfig, resolve_config
from speedsign.data import select_splits
from speedsign.models import build_model, set_train_mode, trainable_parameters
from speedsign.storage import atomic_torch_save
from speedsign.train import (
    build_optimizer,
    build_scheduler,
    compute_features,
    epoch_generator,
    evaluate,
    train_one_epoch,
)


def train_head(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
               *, config: TrainConfig, features: bool, device: torch.device) -> float:
    """config.epochs of the frozen approach (only `fc` learns); returns the best val accuracy."""
    module = model.fc if features else model
    optimizer = build_optimizer(trainable_parameters(module), config)
    scheduler, per_step = build_scheduler(optimizer, config, steps_per_epoch=max(1, len(train[1]) // config.batch_size))
    best = 0.0
    for epoch in range(1, config.epochs + 1):
        set_train_mode(model, approach=config.approach)
        train_one_epoch(module, *train, config=config, features=features, optimizer=optimizer, scheduler=scheduler,
                        per_step=per_step, order=epoch_generator(config, epoch, device=torch.device("cpu")),
                        generator=epoch_generator(config, epoch, device=device, salt=1), device=device)
        if not per_step:
            scheduler.step()
        best = max(best, evaluate(module, *val, config=config, features=features, device=device)[1])
    return best


def measure(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    n_train = max(2, round(opts.frozen_images * 0.8))
    index = subset_index(ctx.data.index, train=n_train, val=max(1, opts.frozen_images - n_train), seed=opts.seed)
    config = resolve_config(approach="frozen", preset="fast", overrides=config_overrides(
        "frozen", ctx.backbone, n_train=len(index.samples("train")), epochs=opts.frozen_epochs))
    decoded, _ = decoded_splits(index, config)
    splits = select_splits(index, decoded, decoded["images"])
    train, val = splits["train"], splits["val"]
    backbone = ctx.backbone_state()

    def fresh_model() -> torch.nn.Module:
        torch.manual_seed(config.seed)
        return build_model(config, num_classes=len(index.classes), backbone=backbone)

    def live() -> tuple[float, float]:
        model = fresh_model().to(ctx.device).to(memory_format=torch.channels_last)
        device = ctx.device
        synchronize(device)
        started = time.perf_counter()
        best = train_head(model, (train.images.to(device), train.labels.to(device)),
                          (val.images.to(device), val.labels.to(device)), config=config, features=False, device=device)
        synchronize(device)
        return time.perf_counter() - started, best

    def cached(round_: int) -> tuple[float, float, float]:
        model = fresh_model().to(ctx.device)  # compute_features expects the model on the device
        images = torch.cat([train.images, val.images])
        synchronize(ctx.device)
        started = time.perf_counter()
        features = compute_features(model, images, config=config, device=ctx.device)
        atomic_torch_save(features, ctx.work / f"features-{round_}.pt")
        cache_s = time.perf_counter() - started
        n, device = len(train), ctx.device
        best = train_head(model, (features[:n].to(device), train.labels.to(device)),
                          (features[n:].to(device), val.labels.to(device)), config=config, features=True, device=device)
        synchronize(device)
        return time.perf_counter() - started, cache_s, best

    live_s: list[float] = []
    cached_s: list[float] = []
    cache_build_s: list[float] = []
    accs: dict[str, float] = {}
    for round_ in range(opts.rounds):
        seconds, accs["live"] = live()
        live_s.append(seconds)
        seconds, build, accs["cached"] = cached(round_)
        cached_s.append(seconds)
        cache_build_s.append(build)
        ctx.log(f"frozen round {round_ + 1}/{opts.rounds}: live {live_s[-1]:.2f} s, "
                f"cached {cached_s[-1]:.2f} s (cache {build:.2f} s)")
    return {
        "epochs": config.epochs, "img_size": config.img_size, "batch_size": config.batch_size,
        "train_images": len(train), "val_images": len(val),
        "live_s": [round(v, 3) for v in live_s], "cached_s": [round(v, 3) for v in cached_s],
        "cache_build_s": [round(v, 3) for v in cache_build_s],
        "live_median_s": round(median(live_s), 3), "cached_median_s": round(median(cached_s), 3),
        "speedup": round(ratio(median(live_s), median(cached_s)), 2),
        "best_val_acc": {k: round(v, 4) for k, v in accs.items()},
    }
