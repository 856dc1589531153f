"""4. Prediction latency: JPEG bytes to probabilities for one image, through `Predictor`.

One image encoded once as a JPEG (a data-set image enlarged to `--predict-px`, a stand-in for
an uploaded photo); `predictor.predict(bytes)` timed call by call, the three models
interleaved, so "all three" is the three calls for the same image one after the other, as
the dashboard's side-by-side answer does it.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.context import Context
from bench.timing import percentile
from bench.workspace import config_overrides
from speedsign.config import resolve_config
from speedsign.models import build_model, checkpoint_payload
from speedsign.predict import Predictor
from speedsign.runs import RunDir
from speedsign.storage import atomic_torch_save


def jpeg_bytes(ctx: Context) -> bytes:
    index = ctx.data.index
    sample = (index.samples("val") or index.samples("train"))[0]
    with Image.open(index.root / sample.path) as image:
        big = image.convert("RGB").resize((ctx.options.predict_px, ctx.options.predict_px), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def checkpoint_run(ctx: Context, approach: str) -> Path:
    """A run folder with a best.pt of the fast preset (untrained weights: latency does not care)."""
    config = resolve_config(approach=approach, preset="fast", overrides=config_overrides(approach, ctx.backbone))
    model = build_model(config, num_classes=len(ctx.data.index.classes), backbone=ctx.backbone_for(approach))
    run_dir = ctx.work / "latency-runs" / approach
    atomic_torch_save(checkpoint_payload(model, config=config, classes=ctx.data.index.classes), RunDir(run_dir).best)
    return run_dir


def measure(ctx: Context, run_dirs: dict[str, Path] | None = None) -> dict[str, Any]:
    opts = ctx.options
    data = jpeg_bytes(ctx)
    device = "cuda" if ctx.device.type == "cuda" else "cpu"
    predictors: dict[str, Predictor] = {}
    sources: dict[str, str] = {}
    for approach in opts.approaches:
        run_dir = (run_dirs or {}).get(approach)
        sources[approach] = "trained fast run" if run_dir else "untrained fast-preset checkpoint"
        predictors[approach] = Predictor(run_dir or checkpoint_run(ctx, approach), device=device)
    threads = torch.get_num_threads()
    per_model, together = _measure(predictors, data, calls=opts.predict_calls, warmup=opts.predict_warmup)
    result: dict[str, Any] = {
        "jpeg_bytes": len(data), "jpeg_px": opts.predict_px, "calls": opts.predict_calls,
        "warmup": opts.predict_warmup, "device": device, "torch_threads": threads,
        "per_model": {a: {**v, "img_size": predictors[a].config.img_size, "weights": sources[a]}
                      for a, v in per_model.items()},
        "all": {**together, "approaches": list(predictors)},
    }
    if device == "cpu" and threads > 1:
        # One image is a small job: with one thread no forward waits for a second core that a
        # busy machine (or a shared cloud CPU) hands out late. Measured for comparison.
        torch.set_num_threads(1)
        try:
            one_model, one_all = _measure(predictors, data, calls=opts.predict_calls, warmup=opts.predict_warmup)
        finally:
            torch.set_num_threads(threads)
        result["one_thread"] = {"per_model": one_model, "all": one_all}
    return result


def _measure(predictors: dict[str, Predictor], data: bytes, *, calls: int, warmup: int
             ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """p50/p95 ms per model and for the three in a row, the models interleaved call by call."""
    times: dict[str, list[float]] = {a: [] for a in predictors}
    together: list[float] = []
    for call in range(warmup + calls):
        total = 0.0
        for approach, predictor in predictors.items():
            started = time.perf_counter()
            predictor.predict(data)
            elapsed = (time.perf_counter() - started) * 1000
            total += elapsed
            if call >= warmup:
                times[approach].append(elapsed)
        if call >= warmup:
            together.append(total)

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3)}

    return {a: stats(v) for a, v in times.items()}, stats(together)
