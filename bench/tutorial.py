"""The report's training loop: a faithful copy of the PyTorch transfer-learning tutorial.

https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html (the classic version
the report followed). What is copied as it is, because it is what the report timed:

- `torchvision.datasets.ImageFolder` over image files, decoded from disk by DataLoader
  workers in every epoch (the tutorial uses 4 workers; the benchmark passes
  min(4, cores), i.e. 2 on a 2-core machine, and says so);
- train: RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(ImageNet);
  val: Resize(256), CenterCrop(224), ToTensor(), Normalize(ImageNet);
- DataLoader(batch_size=4, shuffle=True), fp32, `model.train()` for the train phase;
- the report's optimiser per approach (speedsign's `tutorial` preset, `config.preset_values`):
  finetune SGD lr 0.002 momentum 0.9 + StepLR(7, 0.1); frozen the same with lr 0.001;
  scratch SGD lr 0.001 momentum 0.9 weight decay 1e-4 + CosineAnnealingLR(T_max=25);
  CrossEntropyLoss;
- finetune: resnet18 with pretrained weights and a new `fc`, every layer trained;
- frozen ("ConvNet as fixed feature extractor"): requires_grad=False on every backbone
  parameter, only `fc` in the optimizer. The tutorial still calls `model.train()`, so the
  backbone's BatchNorm layers keep updating their running statistics: copied as it is
  (speedsign keeps a frozen backbone in eval());
- scratch (not in the tutorial; the report's third approach): speedsign's own ResNet18
  from random init through the same loop.

What differs, and why: the data set is speedsign's own train/val split (a folder of links
built by `bench.workspace.tutorial_folder`); ImageFolder gets `allow_empty=True` so a class
missing from a small val sample keeps its index; the benchmark runs the train phase for a
fixed number of batches or seconds instead of 25 whole epochs (an epoch of 10k images at
224 px takes half an hour on 2 cores); evaluation may use a larger batch than 4 (in eval()
the batch size does not change a prediction, only how long it takes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.optim as optim
from torch.optim import lr_scheduler
from torchvision import datasets, models, transforms

from speedsign.config import preset_values
from speedsign.models import ResNet18, load_backbone

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
BATCH_SIZE = 4
TUTORIAL_WORKERS = 4


def data_transforms(img_size: int = 224) -> dict[str, transforms.Compose]:
    """The tutorial's transforms; `img_size` other than 224 only for the smoke test."""
    return {
        "train": transforms.Compose([
            transforms.RandomResizedCrop(img_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]),
        "val": transforms.Compose([
            transforms.Resize(round(img_size * 256 / 224)),
            transforms.CenterCrop(img_size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]),
    }


def default_workers() -> int:
    """The tutorial's 4 workers, but no more than the machine has cores."""
    return min(TUTORIAL_WORKERS, os.cpu_count() or 1)


def make_dataloaders(data_dir: Path, *, num_workers: int, img_size: int = 224,
                     val_batch_size: int = BATCH_SIZE) -> tuple[dict[str, torch.utils.data.DataLoader],
                                                                dict[str, int], list[str]]:
    transforms_ = data_transforms(img_size)
    image_datasets = {x: datasets.ImageFolder(os.path.join(data_dir, x), transforms_[x], allow_empty=True)
                      for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x],
                                                  batch_size=BATCH_SIZE if x == "train" else val_batch_size,
                                                  shuffle=True, num_workers=num_workers)
                   for x in ["train", "val"]}
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    return dataloaders, dataset_sizes, image_datasets["train"].classes


@dataclass
class Setup:
    model: nn.Module
    criterion: nn.Module
    optimizer: optim.Optimizer
    scheduler: Any


def make_model(approach: str, *, num_classes: int, backbone: dict[str, torch.Tensor] | None,
               device: torch.device, seed: int = 0) -> Setup:
    """model_ft (finetune), model_conv (frozen) or speedsign's ResNet18 (scratch), as the tutorial."""
    torch.manual_seed(seed)
    report = preset_values(approach, "tutorial")
    sgd = dict(lr=report["lr"], momentum=report["momentum"], weight_decay=report["weight_decay"])
    if approach == "scratch":
        model = ResNet18(num_classes=num_classes)
        model = model.to(device)
        optimizer = optim.SGD(model.parameters(), **sgd)
    else:
        model = models.resnet18(weights=None)
        if backbone is None:
            raise ValueError(f"the tutorial's {approach} needs backbone weights")
        load_backbone(model, backbone)  # = resnet18(weights=...): every weight but fc
        if approach == "frozen":
            for param in model.parameters():
                param.requires_grad = False
        # Parameters of newly constructed modules have requires_grad=True by default
        num_ftrs = model.fc.in_features
        model.fc = nn.Linear(num_ftrs, num_classes)
        model = model.to(device)
        params = model.fc.parameters() if approach == "frozen" else model.parameters()
        optimizer = optim.SGD(params, **sgd)
    criterion = nn.CrossEntropyLoss()
    if report["schedule"] == "cosine":
        scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=report["epochs"])
    else:  # Decay LR by a factor of 0.1 every 7 epochs
        scheduler = lr_scheduler.StepLR(optimizer, step_size=report["step_size"], gamma=report["gamma"])
    return Setup(model, criterion, optimizer, scheduler)


def train_step(setup: Setup, inputs: torch.Tensor, labels: torch.Tensor,
               device: torch.device) -> tuple[float, int]:
    """The body of the tutorial's train phase for one batch: (loss * batch, correct)."""
    model, criterion, optimizer = setup.model, setup.criterion, setup.optimizer
    inputs = inputs.to(device)
    labels = labels.to(device)

    # zero the parameter gradients
    optimizer.zero_grad()

    # forward
    # track history if only in train
    with torch.set_grad_enabled(True):
        outputs = model(inputs)
        _, preds = torch.max(outputs, 1)
        loss = criterion(outputs, labels)

        # backward + optimize only if in training phase
        loss.backward()
        optimizer.step()

    # statistics (loss.item() synchronises every step, as in the tutorial)
    return loss.item() * inputs.size(0), int(torch.sum(preds == labels.data))


@torch.no_grad()
def evaluate(setup: Setup, loader: torch.utils.data.DataLoader, device: torch.device) -> float:
    """The tutorial's val phase: model.eval(), accuracy over the val loader."""
    model = setup.model
    was_training = model.training
    model.eval()
    running_corrects, seen = 0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        outputs = model(inputs)
        _, preds = torch.max(outputs, 1)
        running_corrects += int(torch.sum(preds == labels.data))
        seen += inputs.size(0)
    model.train(was_training)
    return running_corrects / max(seen, 1)


def batches(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The train loader epoch after epoch (a tiny data set may end before the step count)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the tutorial's train split is empty")


def images_per_second(setup: Setup, loader: torch.utils.data.DataLoader, *, device: torch.device,
                      warmup: int, steps: int) -> float:
    """Train-phase throughput over `steps` batches after `warmup` (data loading included).

    A fresh loader iterator each call: its worker start-up falls in the warm-up, as it falls
    in the first batches of every tutorial epoch.
    """
    setup.model.train()  # Set model to training mode (the frozen backbone's BN too, as the tutorial)
    stream = batches(loader)
    for _ in range(warmup):
        inputs, labels = next(stream)
        train_step(setup, inputs, labels, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seen = 0
    started = time.perf_counter()
    for _ in range(steps):
        inputs, labels = next(stream)
        train_step(setup, inputs, labels, device)
        seen += inputs.size(0)
    elapsed = time.perf_counter() - started  # loss.item() already waited for the device
    stream.close()
    return seen / elapsed


@dataclass
class BudgetResult:
    """The tutorial trained for a fixed time: accuracy at checkpoints (training seconds)."""

    budget_s: float
    points: list[dict[str, float]] = field(default_factory=list)
    images: int = 0
    epochs_done: int = 0
    train_s: float = 0.0

    @property
    def best_val_acc(self) -> float:
        # The tutorial keeps the weights of its best val accuracy.
        return max((p["val_acc"] for p in self.points), default=float("nan"))


def train_for(setup: Setup, dataloaders: dict[str, torch.utils.data.DataLoader], *, device: torch.device,
              budget_s: float, evals: int, on_point: Callable[[dict[str, float]], None] | None = None
              ) -> BudgetResult:
    """The tutorial's train_model, stopped after `budget_s` seconds of training.

    Val accuracy is measured at `evals` evenly spaced moments of the budget; the clock is
    paused while evaluating (the tutorial evaluates only at the end of each epoch, which at
    224 px on a CPU comes after the budget anyway). StepLR steps at each epoch end, as there.
    """
    from bench.timing import Stopwatch

    result = BudgetResult(budget_s=budget_s)
    marks = [budget_s * (i + 1) / max(1, evals) for i in range(max(1, evals))]
    clock = Stopwatch()
    model = setup.model
    done = False
    while not done:
        model.train()
        clock.start()
        steps = 0
        for inputs, labels in dataloaders["train"]:
            steps += 1
            train_step(setup, inputs, labels, device)
            result.images += inputs.size(0)
            if clock.seconds >= marks[0]:
                elapsed = clock.stop()
                acc = evaluate(setup, dataloaders["val"], device)
                point = {"seconds": round(elapsed, 3), "val_acc": acc, "images": result.images}
                result.points.append(point)
                if on_point is not None:
                    on_point(point)
                marks.pop(0)
                if not marks:
                    done = True
                    break
                clock.start()
        else:
            if steps == 0:
                raise ValueError("the tutorial's train split is empty")
            setup.scheduler.step()
            result.epochs_done += 1
        clock.stop()
    result.train_s = clock.seconds
    return result
