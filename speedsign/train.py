"""The training engine: devices, precision, optimizers, train_one_epoch and evaluate.

Data arrive as uint8 tensors (decoded once); batches are cut by index and augmented on the
training device. The frozen approach trains its head on cached backbone features instead.
Under `torchrun` the same code runs data-parallel (DistributedDataParallel).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from speedsign.augment import prepare_batch
from speedsign.config import PRECISIONS, TrainConfig
from speedsign.errors import UserError
from speedsign.machine import isa_limits
from speedsign.models import backbone_features
from speedsign.runs import RunDir, StatusWriter

EVAL_BATCH = 512


# ---------------------------------------------------------------- devices and processes

def pick_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. Asking for cuda on a machine without one is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible here (try --device auto)")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps: Apple's GPU is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"device must be auto, cpu, cuda or mps; got {name!r}")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    return device.type.upper()


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job (rank 0 of 1 when alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def distributed_from_env() -> Distributed:
    """Join the process group that torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size())


def from_main(value: Any, ctx: Distributed, device: torch.device) -> Any:
    """Rank 0's `value` on every rank: decisions timed on one machine (a budget's plan) must be
    one decision, or ranks that planned different steps wait for each other forever."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def agree_clock(train_seconds: float, left: float, ctx: Distributed, device: torch.device) -> tuple[float, float]:
    """One reading of a budget's clock for every rank: the most training seconds any rank has
    spent, and the least time any rank has left. Ranks that read their own clocks would stop,
    or move their schedules, at different steps (and then wait for each other forever)."""
    if not ctx.active:
        return train_seconds, left
    values = torch.tensor([train_seconds, -left], dtype=torch.float64, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return float(values[0]), -float(values[1])


# Under torchrun, ranks agree on the budget's clock every this many steps (an all-reduce each).
CLOCK_CHECK_STEPS = 8
PACE_MIN_STEPS = 20  # steps timed before the pace may move the schedule: the first ones build caches


@dataclass
class Pace:
    """A budgeted run's schedule keeps pace with the clock as well as the steps.

    The plan times a few steps at the start, and the machine's speed then drifts (other work,
    heat, a shared host: 10-40% here). A run that slowed reached the guard with the schedule
    unfinished: runs stopped after 62-92% of their steps with the learning rate still at 10-40%
    of its peak. A run that sped up ended early (504 s of a 600 s budget). So at each check the
    trainer estimates, at the pace seen so far, how many steps still fit before `end` (the
    epoch-end evaluations included, and never past `max_steps`, the preset's length), and moves
    the schedule at the speed that makes it end when the time does: faster on a slower machine,
    slower (more training steps than planned) on a faster one.
    """

    end: float  # time.monotonic() past which no step starts (the budget's guard)
    eval_s: float  # one epoch-end evaluation and checkpoint
    steps_per_epoch: int
    first_step: int = 0  # the run's steps before this process (a resumed run)
    max_steps: int = 2**62  # training steps the run may take in all (the preset's epochs)
    train_seconds: float = 0.0  # seconds spent in training passes by this process, evaluations excluded
    finished: bool = False  # the time is up, or the schedule has run its course
    clock: Callable[[], float] = time.monotonic  # what `end` is read against
    _speed: float = 1.0  # schedule steps per training step
    _owed: float = 0.0  # schedule steps owed, not yet taken

    def check(self, scheduler: Any, *, steps_done: int, pass_seconds: float, ctx: Distributed,
              device: torch.device) -> None:
        """Read the clock (agreed over ranks); set `finished`, or the schedule's speed."""
        trained, left = agree_clock(self.train_seconds + pass_seconds, self.end - self.clock(), ctx, device)
        length = schedule_length(scheduler)
        if left <= 0 or scheduler.last_epoch >= length or steps_done >= self.max_steps:
            self.finished = True
            return
        timed = steps_done - self.first_step
        if timed < PACE_MIN_STEPS:
            return
        step_s = max(trained, 1e-9) / timed
        fit = left / step_s
        for _ in range(2):  # the epoch ends that the steps which fit would cross, each with its evaluation
            crossed = (steps_done + int(fit)) // self.steps_per_epoch - steps_done // self.steps_per_epoch
            fit = max(0.0, left - crossed * self.eval_s) / step_s
        fit = min(fit, float(self.max_steps - steps_done))
        self._speed = (length - scheduler.last_epoch) / max(fit, 1.0)

    def step(self, scheduler: Any) -> None:
        """In place of the training step's `scheduler.step()`: the schedule steps owed at this speed
        (none, one or several), never past the schedule's end."""
        self._owed += self._speed
        length = schedule_length(scheduler)
        while self._owed >= 1.0 and scheduler.last_epoch < length:
            scheduler.step()
            self._owed -= 1.0
        if scheduler.last_epoch >= length:
            self.finished = True


def schedule_length(scheduler: Any) -> int:
    """Steps of a per-step schedule: past them one-cycle refuses to step and cosine climbs again."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        return int(scheduler.total_steps)
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        return int(scheduler.T_max)
    return 2**62  # a constant schedule never ends


def _all_sum(values: list[float], device: torch.device, ctx: Distributed) -> list[float]:
    if not ctx.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------- optimisation

def build_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=False)


def total_steps(config: TrainConfig, *, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: `steps` when set (a budget sets it), else epochs' worth."""
    return config.steps or config.epochs * max(1, steps_per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, *,
                    steps_per_epoch: int) -> tuple[Any, bool]:
    """The schedule, and whether it steps per batch (one-cycle; cosine over `steps`) or per epoch.

    With `steps` set, the schedule spans exactly those steps, whatever the epochs.
    """
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma), False
    if config.schedule == "cosine":
        if config.steps:
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps), True
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs), False
    if config.schedule == "onecycle":
        # OneCycleLR divides by (warm-up steps - 1): very short runs need a floor. Never
        # stepping past the end is fine; stepping beyond total_steps is an error.
        total = max(10, total_steps(config, steps_per_epoch=steps_per_epoch))
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total,
                                                   pct_start=config.warmup), True
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), False


def build_ema(model: nn.Module, config: TrainConfig) -> torch.optim.swa_utils.AveragedModel | None:
    """A moving average of the weights and BatchNorm statistics (None when `ema` is 0).

    torch's own AveragedModel: evaluated and saved instead of the raw weights, it smooths the
    noise of the last steps, which a short run has not annealed away.
    """
    if not config.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)


def epoch_generator(config: TrainConfig, epoch: int, *, device: torch.device, salt: int = 0) -> torch.Generator:
    """A generator seeded by (seed, epoch): a resumed run draws exactly what it would have."""
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(config.seed * 1_000_003 + epoch * 7919 + salt)
    return generator


def batch_indices(n: int, batch_size: int, *, generator: torch.Generator | None, ctx: Distributed,
                  drop_last: bool) -> Iterator[torch.Tensor]:
    """Index batches of one epoch; each rank takes its own slice of every global batch."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        chunk = order[start:start + batch_size]
        if ctx.active:
            chunk = chunk.tensor_split(ctx.world_size)[ctx.rank]
        if len(chunk):
            yield chunk




# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which it has no native bf16 instructions.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                      "AVX512_CORE_VNNI"})


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower.

    A CPU held to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2: the stand-in
    for an AVX2-only machine) answers no, as that machine would.
    """
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        return False
    if isa_limits().get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


# At this input side and below, ResNet18's last stage sees 1x1 maps. There the CPU's bf16
# convolution returns garbage weight gradients for the taps that only touch padding
# (measured: values of 1e9 to 1e28 in layer4.0.conv1 after one step, a NaN loss soon after;
# fp32 and 24 px or more are exact).
CPU_BF16_MIN_EXCLUSIVE_SIDE = 16


def resolve_precision(name: str, device: torch.device, *, img_size: int) -> str:
    """auto: bf16 on CUDA and on CPUs with native bf16, else fp32.

    bf16 autocast keeps fp32 weights and BatchNorm; measured on this project's 2-core
    AVX512-BF16 CPU it trains ResNet18 1.55x faster at 48 and 64 px (docs/benchmarks.md).
    On a CPU, inputs of 16 px or less train in fp32 (see CPU_BF16_MIN_EXCLUSIVE_SIDE), and
    asking for bf16 there is refused rather than trained wrong.
    """
    if name not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}; got {name!r}")
    degenerate = device.type == "cpu" and img_size <= CPU_BF16_MIN_EXCLUSIVE_SIDE
    if name == "bf16" and degenerate:
        raise UserError(f"bf16 on a CPU computes wrong gradients at {img_size} px (the last stage sees 1x1 "
                        f"maps): use --precision fp32, or an image size above {CPU_BF16_MIN_EXCLUSIVE_SIDE}")
    if name != "auto":
        return name
    if device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16() and not degenerate):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    # bf16: twice the tensor-core rate on a GPU, no loss scaling needed; fp32 otherwise.
    if precision == "bf16" and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- one epoch, evaluation

@dataclass(frozen=True)
class EpochRecord:
    """One line of metrics.jsonl."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    images: int = 0  # training images seen so far, this epoch's included


    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Stopped(Exception):
    """Raised inside an epoch when the job was asked to stop (cancel button, SIGTERM)."""


class StopFlag:
    """Set by SIGTERM/SIGINT or the run's cancel marker; checked at every training step."""

    def __init__(self, folder: RunDir) -> None:
        self.folder = folder
        self.signalled = False
        self._last_check = 0.0
        self._marker = False

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last_check > 0.5:  # a stat() per step is cheap, but not free
            self._last_check = now
            self._marker = self.folder.cancel_requested()
        return self.signalled or self._marker


def prepare_inputs(batch: torch.Tensor, *, config: TrainConfig, features: bool, train: bool,
                   generator: torch.Generator | None = None, size: int | None = None) -> torch.Tensor:
    """What the module sees: frozen features as they are, images augmented (train) and normalised."""
    if features:
        return batch
    return prepare_batch(batch, config=config, train=train, generator=generator, channels_last=True, size=size)


GROW_SHARE = 0.75  # progressive resizing reaches the full side after this share of the steps
SIZE_STEP = 8  # sides grow in multiples of this


def smallest_side(config: TrainConfig) -> int:
    """The smallest input side a run trains at: `min_size` under progressive resizing. Precision is
    chosen for it, as bf16 on a CPU is wrong at 16 px and below."""
    return min(config.img_size, config.min_size or config.img_size)


def train_size(config: TrainConfig, step: int, total: int) -> int:
    """The training side at global step `step` (0-based) of `total`: `min_size` growing linearly to
    `img_size` over the first GROW_SHARE of the steps (FFCV's progressive resizing), else `img_size`.

    Small images early are cheap, and the net learns coarse shapes first; the last quarter
    trains at the side that evaluation uses, so the statistics of BatchNorm match it."""
    if not config.min_size or config.min_size >= config.img_size:
        return config.img_size
    fraction = min(1.0, step / max(1.0, GROW_SHARE * total))
    side = config.min_size + (config.img_size - config.min_size) * fraction
    return min(config.img_size, max(config.min_size, int(side) // SIZE_STEP * SIZE_STEP))


def train_one_epoch(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, config: TrainConfig,
                    features: bool, optimizer: torch.optim.Optimizer, scheduler: Any, per_step: bool,
                    order: torch.Generator, generator: torch.Generator, device: torch.device,
                    ctx: Distributed = Distributed(), stop: StopFlag | None = None,
                    status: StatusWriter | None = None, precision: str = "fp32", max_steps: int | None = None,
                    ema: Any = None, ema_source: nn.Module | None = None,
                    pace: Pace | None = None, first_step: int = 0,
                    total_steps: int | None = None) -> tuple[float, float, int]:
    """One pass over the training inputs; returns mean loss, accuracy and images seen (all ranks).

    `order` shuffles (the same on every rank); `generator` draws the augmentation. `stop` is
    checked before every step; `status` gets the step count every 20 steps. `max_steps` ends
    the pass early (the last epoch of a run with `steps`); `ema` is updated from `ema_source`
    after every step. `pace` (a time budget) ends the pass when the time is up or the schedule
    is over, and steps the schedule at the speed that makes it end with the time.
    `first_step` and `total_steps` place the pass in the run, for progressive resizing.
    """
    n = int(labels.shape[0])
    batch_size = config.batch_size
    total = math.ceil(n / batch_size)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    if max_steps is not None:
        total = min(total, max_steps)
    pass_started = time.perf_counter()
    for step, index in enumerate(batch_indices(n, batch_size, generator=order, ctx=ctx,
                                               drop_last=n > batch_size), start=1):
        if max_steps is not None and step > max_steps:
            break
        checked = not ctx.active or step % CLOCK_CHECK_STEPS == 1  # every rank checks at the same steps
        if pace is not None and checked:
            pace.check(scheduler, steps_done=first_step + step - 1, pass_seconds=time.perf_counter() - pass_started,
                       ctx=ctx, device=device)
        if pace is not None and pace.finished:
            break
        if stop is not None and stop():
            raise Stopped()
        index = index.to(inputs.device)
        side = train_size(config, first_step + step - 1, total_steps or total) if config.min_size else None
        batch = prepare_inputs(inputs[index].to(device, non_blocking=True), config=config, features=features,
                               train=True, generator=generator, size=side)
        target = labels[index].to(device, non_blocking=True)
        with autocast(device, precision):
            logits = module(batch)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if per_step and pace is not None:
            pace.step(scheduler)
        elif per_step:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(ema_source)
        # Sums stay on the device: reading them every step would synchronise a GPU.
        loss_sum += loss.detach() * len(target)
        correct += (logits.argmax(1) == target).sum()
        seen += len(target)
        if status is not None and step % 20 == 0:
            status.update(step=step, steps=total)
    if pace is not None:
        pace.train_seconds += time.perf_counter() - pass_started
    loss_total, correct_total, seen_total = _all_sum([float(loss_sum), float(correct), float(seen)], device, ctx)
    return loss_total / max(seen_total, 1), correct_total / max(seen_total, 1), int(seen_total)


@torch.no_grad()
def evaluate(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, config: TrainConfig,
             features: bool, device: torch.device, batch_size: int = EVAL_BATCH, ctx: Distributed = Distributed(),
             precision: str = "fp32") -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and (on one process) the softmax probabilities of every input."""
    was_training = module.training
    module.eval()
    n = int(labels.shape[0])
    loss_sum, correct, count = 0.0, 0.0, 0
    probabilities: list[torch.Tensor] = []
    for index in batch_indices(n, batch_size, generator=None, ctx=ctx, drop_last=False):
        index = index.to(inputs.device)
        batch = prepare_inputs(inputs[index].to(device), config=config, features=features, train=False)
        target = labels[index].to(device)
        with autocast(device, precision):
            logits = module(batch).float()
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += float((logits.argmax(1) == target).sum())
        count += len(target)
        probabilities.append(torch.softmax(logits, 1).cpu())
    module.train(was_training)
    loss_sum, correct, count = _all_sum([loss_sum, correct, float(count)], device, ctx)
    probs = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, 0), dtype=np.float32)
    return loss_sum / max(count, 1), correct / max(count, 1), probs


@torch.no_grad()
def compute_features(model: nn.Module, images: torch.Tensor, *, config: TrainConfig, device: torch.device,
                     batch_size: int = 256, on_batch: Callable[[int, int], None] | None = None,
                     precision: str = "fp32") -> torch.Tensor:
    """Backbone features (N, 512) of uint8 images, backbone in eval(): what `frozen` trains on."""
    model.to(device).eval()
    features = []
    total = math.ceil(len(images) / batch_size) if len(images) else 0
    for step, start in enumerate(range(0, len(images), batch_size), start=1):
        batch = prepare_batch(images[start:start + batch_size].to(device), config=config, train=False,
                              channels_last=True)
        with autocast(device, precision):
            features.append(backbone_features(model, batch).float().cpu())
        if on_batch is not None:
            on_batch(step, total)
    return torch.cat(features) if features else torch.zeros((0, 512))
