"""What each benchmark gets: options, data, weights, device, a scratch folder, a logger."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.machine import load_average
from bench.options import Options
from bench.workspace import Backbone, BenchData


@dataclass
class Context:
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
