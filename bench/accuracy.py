"""Accuracy benchmarks: the tutorial loop on a time budget (1, 3) and the input-size table (6).

The tutorial at 224 px cannot finish even one epoch of 10k images within a benchmark on 2
cores, so it trains for a fixed budget of seconds per approach and is evaluated on a fixed
random sample of the val split; the `fast` runs (bench.fastruns) are scored on the same
sample. The input-size table trains each approach with its `fast` settings at each size for
a fixed small number of epochs on a fixed subset.
"""

from __future__ import annotations

from typing import Any

from bench import tutorial
from bench.context import Context
from bench.workspace import config_overrides, sample_files, subset_index, train_fast, tutorial_folder
from speedsign.config import resolve_config


def val_sample(ctx: Context) -> list[str]:
    """The fixed val sample both sides are scored on (files relative to the data root)."""
    return sample_files(ctx.data.index.samples("val"), limit=ctx.options.val_images, seed=ctx.options.seed)


def tutorial_budget(ctx: Context, val_files: list[str]) -> dict[str, Any]:
    opts = ctx.options
    folder = tutorial_folder(ctx.data.index, ctx.work / "tutorial-budget", val_files=val_files)
    workers = opts.tutorial_workers if opts.tutorial_workers is not None else tutorial.default_workers()
    # In eval() the batch size changes no prediction, only the time: 32 keeps evaluation short.
    loaders, sizes, _ = tutorial.make_dataloaders(folder, num_workers=workers, img_size=opts.tutorial_img_size,
                                                  val_batch_size=32)
    results: dict[str, Any] = {}
    for approach in opts.approaches:
        setup = tutorial.make_model(approach, num_classes=len(ctx.data.index.classes),
                                    backbone=ctx.backbone_for(approach), device=ctx.device, seed=opts.seed)

        def report(point: dict[str, float], approach: str = approach) -> None:
            ctx.log(f"tutorial {approach}: val acc {point['val_acc']:.4f} after {point['seconds']:.0f} s "
                    f"of training ({point['images']} images)")

        outcome = tutorial.train_for(setup, loaders, device=ctx.device, budget_s=opts.tutorial_budget,
                                     evals=opts.tutorial_evals, on_point=report)
        results[approach] = {
            "budget_s": opts.tutorial_budget, "points": outcome.points, "images": outcome.images,
            "epochs_done": outcome.epochs_done, "train_images": sizes["train"],
            "epoch_fraction": round(outcome.images / max(1, sizes["train"]), 4),
            "best_val_acc": outcome.best_val_acc, "val_images": sizes["val"],
        }
        del setup
    return results


def input_sizes(ctx: Context) -> list[dict[str, Any]]:
    opts = ctx.options
    index = subset_index(ctx.data.index, train=opts.size_train_images, val=opts.size_val_images, seed=opts.seed)
    rows: list[dict[str, Any]] = []
    for size in opts.sizes:
        for approach in opts.approaches:
            config = resolve_config(approach=approach, preset="fast", overrides=config_overrides(
                approach, ctx.backbone, n_train=len(index.samples("train")), img_size=size,
                epochs=opts.size_epochs))
            fitted = train_fast(index, config, device=ctx.device, work=ctx.work / f"size-{size}-{approach}")
            train_s = fitted.train_s
            ips = [r["images_per_s"] for r in fitted.records]
            row = {
                "approach": approach, "img_size": size, "epochs": len(fitted.records),
                "train_images": fitted.n_train, "val_images": fitted.n_val,
                "best_val_acc": round(fitted.best_val_acc, 4),
                "final_val_acc": round(fitted.records[-1]["val_acc"], 4) if fitted.records else None,
                "seconds_per_epoch": round(train_s / max(1, len(fitted.records)), 3),
                "train_images_per_s": round(sum(ips) / len(ips), 1) if ips else None,
                # decode (cached), frozen's features, checkpoints and predictions: the job less its epochs
                "setup_s": round(fitted.total_s - train_s, 2), "total_s": round(fitted.total_s, 2),
                "preset_size": resolve_config(approach=approach, preset="fast",
                                              overrides=config_overrides(approach, ctx.backbone)).img_size == size,
            }
            rows.append(row)
            ctx.log(f"size {size} {approach}: best val acc {row['best_val_acc']:.4f}, "
                    f"{row['seconds_per_epoch']} s/epoch, {row['train_images_per_s']} img/s")
    return rows


def size_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per approach: the preset's size against the most accurate one and against the largest."""
    summary: dict[str, Any] = {}
    for approach in dict.fromkeys(r["approach"] for r in rows):
        mine = [r for r in rows if r["approach"] == approach]
        best = max(mine, key=lambda r: (r["best_val_acc"], -r["img_size"]))
        largest = max(mine, key=lambda r: r["img_size"])
        preset = next((r for r in mine if r["preset_size"]), None)
        entry: dict[str, Any] = {"most_accurate_size": best["img_size"], "most_accurate_acc": best["best_val_acc"]}
        if preset is not None:
            entry.update({"preset_size": preset["img_size"], "preset_acc": preset["best_val_acc"],
                          f"preset_epoch_speedup_vs_{largest['img_size']}px": round(
                              largest["seconds_per_epoch"] / max(preset["seconds_per_epoch"], 1e-9), 1)})
        summary[approach] = entry
    return summary
