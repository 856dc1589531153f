"""The three approaches' networks, where pretrained weights come from, and the freeze rules.

- scratch: our own ResNet18 (BasicBlock x [2, 2, 2, 2]), random init. Its parameter names
  match torchvision's, so a scratch run's weights can be the backbone of a later run.
- finetune / frozen: torchvision's resnet18 with a new `fc`; the backbone comes from
  `--weights` (imagenet, a file, or run:ID). Missing weights are an error, never random.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from speedsign.config import TrainConfig
from speedsign.errors import UserError
from speedsign.runs import RunDir, is_valid_run_id

IMAGENET_FILE = "resnet18-f37072fd.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"


# ---------------------------------------------------------------- our own ResNet18

class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (He et al. 2015), as in torchvision."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet18: 7x7 stem, max-pool, four stages of two BasicBlocks, average pool, fc."""

    def __init__(self, *, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(64, 64, stride=1)
        self.layer2 = self._stage(64, 128, stride=2)
        self.layer3 = self._stage(128, 256, stride=2)
        self.layer4 = self._stage(256, 512, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, *, stride: int) -> nn.Sequential:
        return nn.Sequential(BasicBlock(in_planes, planes, stride=stride), BasicBlock(planes, planes))

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Zero the last BN of each block: every block starts as identity, which trains
        # faster from scratch (Goyal et al. 2017).
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ---------------------------------------------------------------- building

def build_model(config: TrainConfig, *, num_classes: int,
                backbone: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The network of an approach, with a new `fc` for `num_classes`.

    `backbone` (a ResNet18 state dict) is required for finetune and frozen; its `fc` is
    dropped. For rebuilding a trained model from a checkpoint, pass no backbone and load
    the checkpoint's state dict afterwards (`build_untrained`).
    """
    model = build_untrained(config.approach, num_classes=num_classes)
    if config.approach != "scratch":
        if backbone is None:
            raise UserError(f"the {config.approach} approach needs backbone weights")
        load_backbone(model, backbone)
    if config.approach == "frozen":
        freeze_backbone(model)
    return model


def build_untrained(approach: str, *, num_classes: int) -> nn.Module:
    if approach == "scratch":
        return ResNet18(num_classes=num_classes)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy every ResNet18 weight but `fc`; a wrong shape or missing key is a clear error."""
    own = model.state_dict()
    wanted = {k for k in own if not k.startswith("fc.")}
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(wanted - set(given))
    if missing:
        raise UserError(f"weights do not fit ResNet18: {len(missing)} missing keys, e.g. {missing[0]}")
    for key in sorted(wanted):
        if tuple(given[key].shape) != tuple(own[key].shape):
            raise UserError(f"weights do not fit ResNet18: {key} has shape {tuple(given[key].shape)}, "
                            f"expected {tuple(own[key].shape)}")
    model.load_state_dict({**own, **{k: given[k] for k in wanted}})


def freeze_backbone(model: nn.Module) -> None:
    """Only `fc` learns; call `set_train_mode` so frozen BatchNorm statistics never move."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith("fc.")


def set_train_mode(model: nn.Module, *, approach: str) -> None:
    """train() for learning layers; a frozen backbone stays in eval() (BN uses its statistics)."""
    if approach == "frozen":
        model.eval()
        model.fc.train()
    else:
        model.train()


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 512-d pooled features of a torchvision-layout ResNet18 (everything before fc)."""
    if isinstance(model, ResNet18):
        return model.features(x)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


# ---------------------------------------------------------------- weights sources

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_weights_path() -> Path:
    """Where torchvision's own cache keeps the ImageNet ResNet18 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


# The reason alone: the dashboard finds it in a stored error and says what to do in its own
# words (`run_views.page_error`); the advice below is for the command line.
OFFLINE_REASON = ("ImageNet weights for ResNet18 are not on this machine and could not be downloaded "
                  "(no internet?)")


def _offline_message(path: Path) -> str:
    return (f"{OFFLINE_REASON}. Put {IMAGENET_URL} at {path} (torchvision's cache), or pass "
            f"--weights PATH to a ResNet18 state dict, or --weights run:ID to use an earlier run "
            f"(for example a backbone trained on other signs) as the backbone.")


def _can_reach(host: str, *, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_imagenet_available() -> None:
    """Fail at once, with what to do, when ImageNet weights are neither cached nor downloadable."""
    path = imagenet_weights_path()
    if not path.exists() and not _can_reach("download.pytorch.org"):
        raise UserError(_offline_message(path))


def load_imagenet_state() -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 weights through its own cache and download.

    Offline we check reachability first with a short timeout, so the command fails in
    seconds with a message instead of hanging.
    """
    path = imagenet_weights_path()
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    check_imagenet_available()
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # network errors, a bad hash, a damaged cached file
        raise UserError(f"{_offline_message(path)} ({type(error).__name__}: {error})") from error


def load_refusal(error: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one short line.

    torch's own text suggests retrying with weights_only=False, the one thing a file from a
    stranger must never get; we say what was found instead.
    """
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        detail = re.search(r"Unsupported [^.\n]+", text)
        what = detail.group(0).strip() if detail else "not a plain tensor pickle"
        return f"it holds pickled Python objects, not only tensors ({what})" if "global" in what else what
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-layout state dict or a speedsign checkpoint, loaded without pickle code."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickled code: say so, never execute it
        raise UserError(f"cannot load weights from {path}: not a plain tensor file "
                        f"(refused by torch.load(weights_only=True): {load_refusal(error)})") from error
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path} is not a ResNet18 state dict (a dict of tensors)")
    return dict(data)


def resolve_weights(spec: str, *, runs_dir: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict that `--weights` names (imagenet, run:ID, bundle:NAME or a file path)."""
    if spec == "imagenet":
        return load_imagenet_state()
    if spec.startswith("bundle:"):
        from speedsign.bundles import bundle_dir, load_bundle_payload

        return load_bundle_payload(bundle_dir(spec[7:]))["model"]
    if spec.startswith("run:"):
        return load_weights_file(run_weights_path(spec, runs_dir=runs_dir))
    return load_weights_file(Path(os.path.expanduser(spec)))


def run_weights_path(spec: str, *, runs_dir: Path) -> Path:
    """best.pt of the run that `run:ID` names, checked to exist."""
    run_id = spec[4:]
    if not is_valid_run_id(run_id):
        raise UserError(f"not a run id: {run_id!r}")
    path = RunDir(Path(runs_dir) / run_id).best
    if not path.exists():
        raise UserError(f"run {run_id} has no {RunDir.BEST} in {runs_dir}: train it first, or check --runs-dir")
    return path


def weights_fingerprint(spec: str, *, runs_dir: Path) -> str:
    """Cheap identity of a weights spec (no loading) for run ids."""
    if spec in ("none", "imagenet"):
        return spec
    if spec.startswith("run:"):
        path = run_weights_path(spec, runs_dir=runs_dir)
    elif spec.startswith("bundle:"):
        from speedsign.bundles import bundle_dir

        path = RunDir(bundle_dir(spec[7:])).model
    else:
        path = Path(os.path.expanduser(spec))
    if not path.is_file():
        raise UserError(f"weights not found: {spec} ({path})")
    return f"{spec.split(':')[0]}:{file_sha256(path)[:16]}"


def model_size_mb(model: nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def checkpoint_payload(model: nn.Module, *, config: TrainConfig, classes: tuple[str, ...],
                       extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What best.pt/last.pt hold: a plain state dict plus what rebuilds the model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"model": state, "config": config.to_dict(), "classes": list(classes), **(extra or {})}
