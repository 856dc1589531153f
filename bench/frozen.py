"""2. Frozen features: 25 epochs of head training, backbone run every epoch vs cached features.

Same model, data, optimizer and schedule (the frozen `fast` preset), both through speedsign's
own `fit`:

- live: `fit` on the decoded uint8 images: the backbone (in eval(), frozen) runs on every
  train and val image in every epoch, only `fc` learns;
- cached: `compute_features` once (saved to disk as the runner does), then `fit` on the
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
from speedsign.config import resolve_config
from speedsign.data import select_splits
from speedsign.models import build_model
from speedsign.runs import atomic_torch_save
from speedsign.train import FitInputs, compute_features, fit


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
        model = fresh_model()
        inputs = FitInputs(train.images, train.labels, val.images, val.labels, features=False).to(ctx.device)
        synchronize(ctx.device)
        started = time.perf_counter()
        state = fit(model, inputs, config=config, device=ctx.device)
        synchronize(ctx.device)
        return time.perf_counter() - started, state.best_val_acc

    def cached(round_: int) -> tuple[float, float, float]:
        model = fresh_model().to(ctx.device)  # compute_features expects the model on the device
        images = torch.cat([train.images, val.images])
        synchronize(ctx.device)
        started = time.perf_counter()
        features = compute_features(model, images, config=config, device=ctx.device)
        atomic_torch_save(features, ctx.work / f"features-{round_}.pt")
        cache_s = time.perf_counter() - started
        n = len(train)
        inputs = FitInputs(features[:n], train.labels, features[n:], val.labels, features=True).to(ctx.device)
        state = fit(model, inputs, config=config, device=ctx.device)
        synchronize(ctx.device)
        return time.perf_counter() - started, cache_s, state.best_val_acc

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
