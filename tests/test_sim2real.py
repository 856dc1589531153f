"""Synthetic signs teach a model to read real photos: a brief training, scored on real GTSRB.

A small version of `python -m bench.sim2real` (the measured figures are in docs/benchmarks.md):
the default renderer, three classes that differ only by their digits, a short scratch training
at 32 px, then a fixed sample of real photos of `../shared/data/gtsrb-speed32` that played no
part in training or in choosing the checkpoint. Skips where ../shared is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from speedsign import synth
from speedsign.config import resolve_config
from speedsign.job import TrainRequest, train_run
from speedsign.predict import Predictor, evaluate_split

CLASSES = ("speed_30", "speed_60", "speed_100")  # a red ring and black digits: only the digits tell
PER_CLASS = 200
EPOCHS = 10
REAL_PER_CLASS = 100
CHANCE = 1 / len(CLASSES)
# Measured 0.643 in 23 s (2026-12-07, 2-core AVX512 CPU held to fp32) and 0.617 in 33 s under the
# AVX2 stand-in (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2).
# Chance is 0.333, and the standard error of 300 photos is 0.027 there: 0.5 is 6 of them above
# chance, with room for another CPU's rounding.
THRESHOLD = 0.5


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def real_sample(real: Path, out: Path) -> Path:
    """REAL_PER_CLASS photos per class, every k-th file in name order, as out/test/<class>/."""
    for name in CLASSES:
        files = sorted((real / "train" / name).iterdir())
        step = max(1, len(files) // REAL_PER_CLASS)
        for path in files[::step][:REAL_PER_CLASS]:
            link_or_copy(path, out / "test" / name / path.name)
    return out


def synthetic_subset(rendered: Path, out: Path) -> Path:
    """The rendered set, CLASSES only (the renderer always draws all nine)."""
    for name in CLASSES:
        for path in sorted((rendered / "train" / name).iterdir()):
            link_or_copy(path, out / "train" / name / path.name)
    return out


@pytest.mark.slow
def test_a_brief_training_on_synthetic_signs_reads_real_photos(gtsrb_speed: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    rendered = synth.render_dataset(tmp_path / "rendered", per_class=PER_CLASS).out
    data = synthetic_subset(rendered, tmp_path / "synth3")
    real = real_sample(gtsrb_speed, tmp_path / "real3")
    # AdamW takes off in a few hundred steps where the fast preset's SGD one-cycle needs more.
    config = resolve_config(approach="scratch", overrides={
        "img_size": 32, "epochs": EPOCHS, "batch_size": 32, "optimizer": "adamw", "lr": 0.002,
        "weight_decay": 0.01, "schedule": "cosine", "label_smoothing": 0.0,
        "budget": 0.0})  # the epochs, not the fast preset's time budget: the same training on any machine
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # fp32 everywhere: the same numbers on a CPU with bf16 as on one without.
        result = train_run(TrainRequest(config=config, data_dir=data, runs_dir=tmp_path / "runs", device="cpu",
                                        precision="fp32"))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result.state == "done", result
    report, _, _ = evaluate_split(Predictor(result.run_dir), real, split="test")
    seconds = time.perf_counter() - started
    print(f"real accuracy {report['accuracy']:.3f} on {report['n']} photos (chance {CHANCE:.2f}) in {seconds:.0f} s")
    assert report["n"] == REAL_PER_CLASS * len(CLASSES)
    assert report["accuracy"] >= THRESHOLD, report["per_class"]
