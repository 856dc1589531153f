"""Time budgets: `train --budget 5m` ends within five minutes on whatever machine runs it.

The trainer times a few throwaway steps on a copy of the model (`time_step`), picks the input
size (`choose_size`: the preset's, or a smaller one when the preset's would see too few images
in the budget; with progressive resizing it times both ends instead, `mean_step_seconds`), then
plans the steps that fit what is left once the data are loaded (`plan_steps`), evaluations and
checkpoints included. The schedule is stretched over exactly
those steps, and while the run trains it keeps pace with the clock (`speedsign.train.Pace`):
it ends sooner on a machine slower than timed, later (up to the preset's epochs) on a faster
one. The plan is saved with the run (budget.json) so that a resumed run keeps it.

A budget is part of a run's identity together with this machine (`machine.machine_key`): the
same budget buys different steps on another CPU, so it is another run, and relaunching the same
budget here returns the finished run from the cache.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speedsign.augment import costliest_recipe
from speedsign.config import TrainConfig
from speedsign.errors import UserError
from speedsign.progress import format_seconds

# The Train page's choices, in seconds (0: train the preset's epochs).
PAGE_BUDGETS: tuple[int, ...] = (0, 120, 300, 600, 1800)
# Kept back for what the plan cannot time: process exit, last writes, timer noise.
SAFETY_FRACTION = 0.04
SAFETY_SECONDS = 3.0
# Smaller input sizes tried, largest first, when the preset's size would see too few images.
SIZE_LADDER: tuple[int, ...] = (64, 48, 40, 32)
# Below this many images at the preset's size, a budget tries smaller inputs. Smaller inputs do
# not pay for themselves otherwise: scratch at 32 px with 4x the images (the same FLOPs) ended
# 2.3 points below 64 px (docs/benchmarks.md, "Images to accuracy"), so only a budget that
# cannot show two epochs at the preset's size gives up pixels for images. finetune and frozen
# keep their size (frozen's features are computed at it once).
ENOUGH_IMAGES: dict[str, int] = {"finetune": 0, "frozen": 0, "scratch": 20_000}
CHECKPOINT_SECONDS = 1.0  # writing best.pt and last.pt once (about 90 MB for ResNet18)
WARM_STEPS = 2  # first steps build kernels and caches: not timed
TIMED_STEPS = 6  # 3 timed steps misjudged a 64 px step by up to 25% (docs/benchmarks.md, "Time budgets")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'300', '300s', '5m', '1.5h' -> seconds. Anything else is refused."""
    match = _DURATION.match(str(text))
    if not match:
        raise UserError(f"a budget is a duration such as 300, 90s, 5m or 1h; got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]


def format_duration(seconds: float) -> str:
    """A budget for a person: 120 -> '2 min', 90 -> '1 min 30 s', 0 -> 'epochs' (no budget)."""
    if seconds <= 0:
        return "epochs"
    if seconds % 60 == 0 and seconds < 3600:
        return f"{int(seconds // 60)} min"
    return format_seconds(seconds)


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget bought on this machine: saved as budget.json with the run."""

    budget_s: float
    machine: str
    img_size: int
    steps: int
    steps_per_epoch: int
    step_s: float  # measured seconds per training step at img_size
    eval_s: float  # estimated seconds of one val evaluation and checkpoint
    elapsed_s: float  # seconds already spent when the steps were planned (start-up, data)
    planned_s: float  # what the plan expects the whole command to take
    sizes: dict[str, float]  # input side -> measured seconds per step, for each size tried
    augment: str = ""  # what "auto" augmentation became for these steps ("" when not auto)

    @property
    def epochs(self) -> int:
        return max(1, math.ceil(self.steps / max(1, self.steps_per_epoch)))

    def apply(self, config: TrainConfig) -> TrainConfig:
        """The config the run trains with: the planned size, steps and augmentation, epochs to match."""
        planned = replace(config, img_size=self.img_size, steps=self.steps, epochs=self.epochs)
        return replace(planned, augment=self.augment) if self.augment else planned

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> BudgetPlan:
        # Older plans lack `augment`, which has a default; any other missing field is a TypeError.
        return BudgetPlan(**{k: data[k] for k in BudgetPlan.__dataclass_fields__ if k in data})


def safety_seconds(budget_s: float) -> float:
    return SAFETY_SECONDS + SAFETY_FRACTION * budget_s


def plan_steps(*, budget_s: float, elapsed_s: float, step_s: float, eval_s: float, steps_per_epoch: int,
               max_steps: int) -> tuple[int, float]:
    """The most steps (at most `max_steps`, at least 1) whose training, one evaluation and checkpoint
    per epoch and a last evaluation fit in what is left of the budget; and the planned seconds.

    A budget too small for even one step is refused before this (`check_fits`).
    """
    left = budget_s - elapsed_s - safety_seconds(budget_s)

    def needed(steps: int) -> float:  # grows with steps: binary search the largest that fits
        evaluations = math.ceil(steps / steps_per_epoch) + 1  # one per epoch, then the saved predictions
        return steps * step_s + evaluations * eval_s

    low, high = 1, max(1, max_steps)
    while low < high:
        middle = (low + high + 1) // 2
        if needed(middle) <= left:
            low = middle
        else:
            high = middle - 1
    return low, elapsed_s + needed(low)


def check_fits(*, budget_s: float, elapsed_s: float, step_s: float, eval_s: float) -> None:
    """Refuse a budget that cannot hold one step and two evaluations, saying what it would need."""
    need = elapsed_s + step_s + 2 * eval_s + safety_seconds(budget_s)
    if need > budget_s:
        raise UserError(f"a budget of {budget_s:g} s is too short on this machine: loading and one training step "
                        f"with its evaluation take about {math.ceil(need)} s; give a longer budget")


def choose_size(step_seconds: Mapping[int, float], *, budget_s: float, batch_size: int,
                enough_images: int) -> int:
    """The largest measured size at which the budget buys `enough_images`; else the smallest.

    `step_seconds` maps input side -> seconds per step. Smaller inputs are cheaper per image,
    so when the preset's size is starved a smaller one sees more images and learns more.
    """
    sizes = sorted(step_seconds, reverse=True)
    for size in sizes:
        if budget_s / step_seconds[size] * batch_size >= enough_images:
            return size
    return sizes[-1]


def mean_step_seconds(config: TrainConfig, step_seconds: Mapping[int, float]) -> float:
    """Seconds per step averaged over the run's schedule of sides (progressive resizing).

    `step_seconds` holds the times measured at `min_size` and `img_size`; between them a step's
    time is interpolated in the pixels (side squared), which is what a convolution's work grows with.
    """
    from speedsign.train import train_size

    low, high = config.min_size, config.img_size
    if not low or low >= high:
        return step_seconds[high]

    def seconds(side: int) -> float:
        share = (side**2 - low**2) / (high**2 - low**2)
        return step_seconds[low] + (step_seconds[high] - step_seconds[low]) * share

    points = 1000
    return sum(seconds(train_size(config, step, points)) for step in range(points)) / points


def smaller_sizes(img_size: int) -> list[int]:
    """The preset's size, then the ladder's smaller sizes."""
    return [img_size, *[size for size in SIZE_LADDER if size < img_size]]


def time_step(module: nn.Module, *, config: TrainConfig, features: bool, device: torch.device,
              precision: str, img_size: int) -> float:
    """Seconds per training step at `img_size`, timed on a throwaway copy with random inputs.

    The copy and its optimizer see the same work as real training (augmentation included), so
    the time is this machine's, and the real model is untouched.
    """
    from speedsign.train import autocast, build_optimizer, prepare_inputs

    trial = copy.deepcopy(module).to(device)
    if not features:
        trial.to(memory_format=torch.channels_last)
    trial.train()
    optimizer = build_optimizer([p for p in trial.parameters() if p.requires_grad], config)
    # "auto" augmentation is decided after the plan: time the recipe that costs more.
    sized = replace(costliest_recipe(config), img_size=img_size)
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(0)
    batch_size = config.batch_size
    if features:
        raw = torch.randn(batch_size, trial.in_features, device=device)
    else:
        raw = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, trial_classes(trial), (batch_size,), device=device)
    started = 0.0
    for step in range(WARM_STEPS + TIMED_STEPS):
        if step == WARM_STEPS:
            _synchronize(device)
            started = time.perf_counter()
        batch = prepare_inputs(raw, config=sized, features=features, train=True, generator=generator)
        with autocast(device, precision):
            loss = F.cross_entropy(trial(batch).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize(device)
    return (time.perf_counter() - started) / TIMED_STEPS


@torch.no_grad()
def time_evaluation(module: nn.Module, *, config: TrainConfig, features: bool, device: torch.device,
                    precision: str, img_size: int, n_images: int) -> float:
    """Seconds to evaluate `n_images` (timed on one batch of random inputs and scaled)."""
    from speedsign.train import EVAL_BATCH, autocast, prepare_inputs

    was_training = module.training
    module.eval()
    batch_size = max(1, min(EVAL_BATCH, n_images))
    if features:
        raw = torch.randn(batch_size, module.in_features, device=device)
    else:
        raw = torch.randint(0, 256, (batch_size, 3, img_size, img_size), dtype=torch.uint8, device=device)
    sized = replace(config, img_size=img_size)
    seconds = []
    for _ in range(2):  # the first call builds kernels
        started = time.perf_counter()
        with autocast(device, precision):
            module(prepare_inputs(raw, config=sized, features=features, train=False))
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
    module.train(was_training)
    return seconds[-1] * n_images / batch_size


def trial_classes(module: nn.Module) -> int:
    head = module if isinstance(module, nn.Linear) else getattr(module, "fc", None)
    return int(head.out_features) if isinstance(head, nn.Linear) else 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
