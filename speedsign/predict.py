"""Predictor: a run's (or a published bundle's) best model, the val preprocessing, top-k answers for any image.

An uploaded photo goes through exactly what the val split went through: safe decoding and
resizing (`images.load_image_tensor`), then `augment.prepare_batch(train=False)`. The
probabilities are calibrated: the logits are divided by the temperature the job fitted on
val (calibration.json; 1 for a run without one), so a shown 90% is right about 90% of the time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speedsign.augment import prepare_batch
from speedsign.calibration import temperature_and_problem
from speedsign.config import EVAL_SPLITS, TrainConfig, config_from_dict
from speedsign.errors import UserError
from speedsign.images import ImageError, load_image_tensor
from speedsign.models import build_untrained, load_refusal
from speedsign.runs import RunDir


@dataclass(frozen=True)
class Prediction:
    """Top-k labels with probabilities, and how long the answer took."""

    labels: tuple[str, ...]
    probs: tuple[float, ...]
    milliseconds: float

    @property
    def label(self) -> str:
        return self.labels[0]

    def to_json(self) -> list[dict[str, Any]]:
        return [{"label": label, "prob": round(prob, 6)} for label, prob in zip(self.labels, self.probs, strict=True)]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A speedsign checkpoint, loaded without running pickled code; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"cannot load {path}: refused by torch.load(weights_only=True) "
                        f"({load_refusal(error)})") from error
    if not isinstance(payload, dict) or not {"model", "config", "classes"} <= set(payload):
        raise UserError(f"{path} is not a speedsign checkpoint (needs model, config and classes)")
    return payload


def load_model_payload(run_dir: Path | str) -> dict[str, Any]:
    """{"model", "config", "classes"} of a run's best.pt, or of a published bundle (verified, dequantised)."""
    folder = RunDir(Path(run_dir))
    if folder.is_bundle:
        from speedsign.bundles import load_bundle_payload

        return load_bundle_payload(folder.path)
    return load_checkpoint(folder.best)


class Predictor:
    """A run's best model, or a published bundle's, loaded once; `predict` is safe to call from
    many threads at once."""

    def __init__(self, run_dir: Path | str, *, device: str = "cpu") -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint = RunDir(self.run_dir).model
        payload = load_model_payload(self.run_dir)
        self.config: TrainConfig = config_from_dict(payload["config"])
        self.classes: tuple[str, ...] = tuple(str(c) for c in payload["classes"])
        self.device = torch.device(device)
        self.model = build_untrained(self.config.approach, num_classes=len(self.classes))
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise UserError(f"{self.checkpoint} does not fit its config: "
                            f"{str(error).splitlines()[0]}") from error
        self.model.eval().to(self.device)
        # Read once with the model: a damaged calibration.json means T = 1 and a note, never a failure.
        self.temperature, self.calibration_problem = temperature_and_problem(self.run_dir)
        # One forward at a time per model: PyTorch modules are not documented thread-safe,
        # and on 2 cores parallel forwards would only fight over the same threads.
        self._lock = threading.Lock()

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @contextlib.contextmanager
    def exclusive_model(self) -> Iterator[torch.nn.Module]:
        """The model, for one caller at a time: work beyond `probabilities` (the saliency map's
        forward and backward, hooks) takes the same lock as every prediction."""
        with self._lock:
            yield self.model

    def load_tensor(self, source: bytes | str | Path) -> torch.Tensor:
        """Decode and resize exactly as the data set was (raises ImageError on bad input)."""
        return load_image_tensor(source, size=self.config.stored_size, resize=self.config.resize)

    def probabilities(self, images: torch.Tensor, *, calibrated: bool = True) -> np.ndarray:
        """Softmax over classes for a uint8 batch (N, 3, S, S): of logits / temperature, or
        with `calibrated=False` of the raw logits (what the run's stored predictions hold)."""
        batch = prepare_batch(images.to(self.device), config=self.config, train=False)
        temperature = self.temperature if calibrated else 1.0
        with self._lock, torch.inference_mode():
            logits = self.model(batch).float()
            if temperature != 1.0:
                logits = logits / temperature
            return torch.softmax(logits, 1).cpu().numpy()

    def predict(self, source: bytes | str | Path, *, top: int = 3) -> Prediction:
        """Top-k for one image: bytes of an upload, or a path."""
        started = time.perf_counter()
        probs = self.probabilities(self.load_tensor(source).unsqueeze(0))[0]
        return self._top(probs, top=top, started=started)

    def predict_tensor(self, image: torch.Tensor, *, top: int = 3) -> Prediction:
        started = time.perf_counter()
        probs = self.probabilities(image.unsqueeze(0))[0]
        return self._top(probs, top=top, started=started)

    def _top(self, probs: np.ndarray, *, top: int, started: float) -> Prediction:
        k = max(1, min(int(top), len(self.classes)))
        order = np.argsort(-probs)[:k]
        return Prediction(labels=tuple(self.classes[i] for i in order),
                          probs=tuple(float(probs[i]) for i in order),
                          milliseconds=(time.perf_counter() - started) * 1000)


def predict_files(predictor: Predictor, paths: Sequence[str], *, top: int = 3) -> list[dict[str, Any]]:
    """The `predict --json` entries: top-k per image, or an error entry for a bad file."""
    entries: list[dict[str, Any]] = []
    for path in paths:
        try:
            entries.append({"image": str(path), "top": predictor.predict(Path(path), top=top).to_json()})
        except (ImageError, UserError, OSError) as error:
            entries.append({"image": str(path), "error": str(error)})
    return entries


def merge_splits(index: Any) -> Any:
    """The same index with every sample in one split named "all"."""
    from dataclasses import replace

    return replace(index, splits={"all": tuple(s for samples in index.splits.values() for s in samples)})


def load_split(predictor: Predictor, data_dir: Path | str, *, split: str = "val") -> tuple[Any, np.ndarray]:
    """A data folder's split as the run sees it: its stored tensors and labels in the run's class
    order. The val split is drawn as the run drew it; "all" is every image. UserError for bad input."""
    from speedsign.data import load_split_tensors, scan_dataset

    if split not in EVAL_SPLITS:
        raise UserError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")
    index = scan_dataset(data_dir, val_fraction=predictor.config.val_fraction, seed=predictor.config.seed,
                         require_train=split == "val")
    if split == "all":
        index = merge_splits(index)
    if not index.samples(split):
        raise UserError(f"{data_dir} has no {split} split" + (" (expected test/<class>/)" if split == "test" else ""))
    unknown = [name for name in index.classes if name not in predictor.classes]
    if unknown:
        raise UserError(f"classes the run does not know: {', '.join(unknown)} "
                        f"(the run knows {', '.join(predictor.classes)})")
    tensors = load_split_tensors(index, size=predictor.config.stored_size, resize=predictor.config.resize)[split]
    # Data labels index the folder's classes; the model's index the run's.
    remap = torch.tensor([predictor.classes.index(name) for name in index.classes], dtype=torch.int64)
    labels = remap[tensors.labels].numpy() if len(tensors) else np.zeros(0, dtype=np.int64)
    return tensors, labels


def evaluate_split(predictor: Predictor, data_dir: Path | str, *, split: str = "val", batch_size: int = 256,
                   calibrated: bool = True) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A run's best model on a data folder's split; classes are matched to the run's by name.

    The val split is drawn as the run drew it (same val_fraction and seed). A folder that
    holds only test/ is fine for split="test"; split="all" scores every image of the folder,
    whatever its split (a data set the run never trained on, such as real photos for a model
    trained on synthetic signs). The probabilities are calibrated (the run's temperature, named
    in the report) unless `calibrated=False`; accuracy is the same either way. Returns the
    report, probabilities and labels.
    """
    from speedsign.metrics import evaluation_report

    tensors, labels = load_split(predictor, data_dir, split=split)
    chunks = [predictor.probabilities(tensors.images[i:i + batch_size], calibrated=calibrated)
              for i in range(0, len(tensors), batch_size)]
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(predictor.classes)), dtype=np.float32)
    report = evaluation_report(probs, labels, class_names=predictor.classes)
    report.update({"split": split, "files": list(tensors.files), "unreadable": list(tensors.unreadable),
                   "temperature": predictor.temperature if calibrated else 1.0})
    return report, probs, labels
