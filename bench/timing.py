"""Small statistics and clocks shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or nan when the denominator is not positive (a broken
    measurement never reads as a speed-up)."""
    return float(numerator / denominator) if denominator > 0 else float("nan")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it measures the work, not the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """perf_counter seconds that can be paused (the tutorial's clock stops while it is evaluated)."""

    def __init__(self) -> None:
        self._total = 0.0
        self._since: float | None = None

    def start(self) -> Stopwatch:
        if self._since is None:
            self._since = time.perf_counter()
        return self

    def stop(self) -> float:
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None
        return self._total

    @property
    def seconds(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self._total + running
