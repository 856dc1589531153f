"""What each benchmark gets: its options (every budget, with the full and --quick defaults),
and a context holding them with the data, weights, device, a scratch folder and a logger.

`bench.cli` builds both from the command line; the benchmark modules only read them.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.machine import load_average
from bench.workspace import Backbone, BenchData

SECTIONS: tuple[str, ...] = ("throughput", "frozen", "fastruns", "tutorial", "sizes", "latency")
APPROACHES: tuple[str, ...] = ("finetune", "frozen", "scratch")
SIZES: tuple[int, ...] = (32, 48, 64, 96, 128, 224)


@dataclass(frozen=True)
class Options:
    """Every budget of the benchmarks; FULL and QUICK below are the two starting points."""

    quick: bool = False
    data: Path | None = None
    weights: str | None = None
    device: str = "auto"
    approaches: tuple[str, ...] = APPROACHES
    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    # data
    synth_per_class: int = 300  # only when neither --data nor gtsrb-speed32 is there
    subset_tracks: int | None = None  # whole tracks per class; None = all data
    # 1. training throughput: rounds of (tutorial N steps, fast N' steps), medians
    rounds: int = 3
    tutorial_warmup: int = 5
    tutorial_steps: int = 30
    tutorial_workers: int | None = None  # None: min(4, cores), the tutorial's 4 capped
    tutorial_img_size: int = 224  # the tutorial's; smaller only in the smoke test
    fast_warmup: int = 3
    fast_steps: int = 20  # batches of the preset's size; frozen (batch 256) runs a quarter of them
    # 2. frozen: live backbone vs cached features
    frozen_images: int = 600
    frozen_epochs: int = 25
    # 3/5. fast runs in child processes (peak RSS, learning curve, final accuracy)
    fast_epochs: int | None = None  # None: the preset's
    # 1/3. tutorial accuracy on a time budget
    tutorial_budget: float = 120.0
    tutorial_evals: int = 2
    val_images: int | None = 500
    # 6. input size
    sizes: tuple[int, ...] = SIZES
    size_epochs: int = 2
    size_train_images: int | None = 600
    size_val_images: int | None = 300
    # 4. prediction latency
    predict_calls: int = 200
    predict_warmup: int = 20
    predict_px: int = 480
    thresholds: tuple[float, ...] = (0.95, 0.98)
    # output
    docs: Path | None = None
    readme: Path | None = None
    work: Path | None = None
    keep_work: bool = False
    threads: int | None = None

    def with_(self, **changes: object) -> Options:
        return dataclasses.replace(self, **changes)


FULL = Options()
QUICK = Options(
    quick=True, synth_per_class=40, subset_tracks=4, rounds=3, tutorial_warmup=2, tutorial_steps=5,
    fast_warmup=1, fast_steps=4, frozen_images=120, fast_epochs=2, tutorial_budget=6.0,
    tutorial_evals=1, val_images=64, sizes=(32, 64), size_epochs=1, size_train_images=300,
    size_val_images=100, predict_calls=40, predict_warmup=5,
)


@dataclass
class Context:
    """One bench run's shared state, handed to every benchmark's `measure`."""

    options: Options
    data: BenchData
    backbone: Backbone
    device: torch.device
    work: Path
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # failures inside a benchmark that went on
    _backbone_state: dict[str, torch.Tensor] | None = None

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        if self._backbone_state is None:
            self._backbone_state = self.backbone.state()
        return self._backbone_state

    def backbone_for(self, approach: str) -> dict[str, torch.Tensor] | None:
        return None if approach == "scratch" else self.backbone_state()

    def begin(self, section: str) -> float:
        self.loads[section] = {"before": load_average()}
        self.log(f"{section}: start (load average {self.loads[section]['before']})")
        return time.perf_counter()

    def end(self, section: str, started: float) -> None:
        self.loads[section]["after"] = load_average()
        self.loads[section]["seconds"] = round(time.perf_counter() - started, 1)
        self.log(f"{section}: done in {self.loads[section]['seconds']} s "
                 f"(load average {self.loads[section]['after']})")
