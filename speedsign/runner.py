"""From a training request to a finished run folder: plan, lock, queue, train, save.

`train_run` is what `python -m speedsign train` (and so every background job) executes;
`plan_run` is the cheap part (scan the data, hash the config) that also tells the
dashboard whether a launch would hit a finished run.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from speedsign import __version__
from speedsign.config import TrainConfig, validate_config
from speedsign.data import DatasetIndex, load_decoded, scan_dataset, select_splits
from speedsign.errors import UserError
from speedsign.jobs import (FileLock, acquire_device_slot, cancel_requested, clear_cancel, run_lock)
from speedsign.metrics import evaluation_report
from speedsign.models import (build_model, build_untrained, resolve_weights,
                              weights_fingerprint)
from speedsign.runs import (FORMAT_VERSION, HEARTBEAT_SECONDS, atomic_torch_save, atomic_write_bytes,
                            atomic_write_json, cache_dir, config_hash, effective_state, find_run_by_hash,
                            make_run_id, now_iso, read_status, truncate_metrics, write_metrics,
                            write_status, append_metrics)
from speedsign.train import (Distributed, EpochRecord, FitHooks, FitInputs, FitState, Stopped,
                             compute_features, describe_device, distributed_from_env, evaluate, fit,
                             pick_device, resolve_precision)
from speedsign.augment import prepare_batch


@dataclass(frozen=True)
class TrainRequest:
    """A training launch: the recipe plus where and how to run it (not part of the run id)."""

    config: TrainConfig
    data_dir: Path
    runs_dir: Path
    device: str = "auto"
    force: bool = False
    compile: bool = False  # torch.compile the training step (see train.fit)
    precision: str = "auto"  # auto, fp32 or bf16 (see train.resolve_precision)


@dataclass(frozen=True)
class RunPlan:
    """What a request resolves to before any training: the run's id and folder."""

    run_id: str
    run_dir: Path
    digest: str
    index: DatasetIndex
    identity: dict[str, Any]


@dataclass(frozen=True)
class TrainResult:
    """The `train --json` answer (DESIGN.md section 4)."""

    run_id: str
    run_dir: Path
    state: str
    cached: bool
    best_val_acc: float | None
    epochs_run: int
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"run_id": self.run_id, "run_dir": str(self.run_dir), "state": self.state,
                "cached": self.cached, "best_val_acc": self.best_val_acc,
                "epochs_run": self.epochs_run, "seconds": round(self.seconds, 2)}
        if self.error:
            data["error"] = self.error
        return data


def plan_run(request: TrainRequest) -> RunPlan:
    """Scan the data and name the run: same config + same data = same id (any day)."""
    config = request.config
    validate_config(config)  # a TrainConfig built by hand has not been through resolve_config
    index = scan_dataset(request.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    n_train = len(index.samples("train"))
    if config.batch_size > n_train:
        raise UserError(f"batch size {config.batch_size} is larger than the {n_train} training images: "
                        f"use a batch size of at most {n_train}")
    identity = {"config": config.to_dict(), "data": index.fingerprint,
                "weights": weights_fingerprint(config.weights, runs_dir=request.runs_dir)}
    digest = config_hash(identity)
    existing = find_run_by_hash(request.runs_dir, digest)
    run_id = existing.name if existing else make_run_id(config.approach, digest)
    return RunPlan(run_id=run_id, run_dir=Path(request.runs_dir) / run_id, digest=digest, index=index,
                   identity=identity)


def check_weights(request: TrainRequest) -> None:
    """Refuse a weights file or run:ID that cannot be the backbone, before any job starts.

    A file that torch.load(weights_only=True) refuses (pickled code) or of the wrong shape is
    bad input: the command line exits 2 and no run folder is made. ImageNet weights come from
    torchvision's hash-checked cache and are loaded by the job itself.
    """
    config = request.config
    if config.approach == "scratch" or config.weights == "imagenet":
        return
    build_model(config, num_classes=2, backbone=resolve_weights(config.weights, runs_dir=request.runs_dir))


def device_key(device: torch.device) -> str:
    return f"{device.type}-{device.index or 0}" if device.type == "cuda" else device.type


# ---------------------------------------------------------------- status while running

class StatusWriter:
    """The job's status.json, with a heartbeat thread; one lock so writes never interleave."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, **fields: Any) -> None:
        # pid and host on every write: a launcher's earlier write can never leave a wrong pid.
        with self._lock:
            write_status(self.run_dir, heartbeat=time.time(), pid=os.getpid(), host=socket.gethostname(),
                         **fields)

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    self.update()
                except OSError:  # disk full: the main thread will fail with the reason
                    pass

        self._thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS + 1)


class StopFlag:
    """Set by SIGTERM/SIGINT or the run's cancel marker; checked at every training step."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
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
            self._marker = cancel_requested(self.run_dir)
        return self.signalled or self._marker


# ---------------------------------------------------------------- the job

def log(message: str) -> None:
    """A line on stderr (the job's log.txt when launched in the background)."""
    print(f"[{now_iso()}] {message}", file=sys.stderr, flush=True)


def write_run_config(plan: RunPlan, request: TrainRequest) -> None:
    atomic_write_json({
        "format_version": FORMAT_VERSION,
        "run_id": plan.run_id,
        "config": request.config.to_dict(),
        "classes": list(plan.index.classes),
        "data_dir": str(Path(request.data_dir).resolve()),
        "data_fingerprint": plan.index.fingerprint,
        "data_layout": plan.index.layout,
        "weights_fingerprint": plan.identity["weights"],
        "config_hash": plan.digest,
        "code_version": __version__,
        "created": now_iso(),
    }, plan.run_dir / "config.json")


def _result_from_status(plan: RunPlan, *, cached: bool) -> TrainResult:
    try:
        status = read_status(plan.run_dir)
    except ValueError as error:
        status = {"state": "failed", "error": str(error)}
    state, reason = effective_state(status) if status else ("queued", None)
    return TrainResult(run_id=plan.run_id, run_dir=plan.run_dir, state=state, cached=cached,
                       best_val_acc=status.get("best_val_acc"), epochs_run=int(status.get("epoch", 0) or 0),
                       seconds=float(status.get("seconds", 0.0) or 0.0), error=status.get("error") or reason)


def is_finished(plan: RunPlan) -> bool:
    try:
        status = read_status(plan.run_dir)
    except ValueError:
        return False
    return status.get("state") == "done" and (plan.run_dir / "best.pt").exists()


def clear_outputs(run_dir: Path) -> None:
    """--force: forget an earlier result of this config before training it afresh."""
    for name in ("metrics.jsonl", "best.pt", "last.pt", "predictions_val.npz", "eval_val.json"):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass


def _launched_at(run_dir: Path) -> float | None:
    """When `jobs.launch` queued this job (its status has no pid yet), else None."""
    try:
        status = read_status(run_dir)
    except ValueError:
        return None
    queued_at = status.get("queued_at")
    if status.get("state") == "queued" and status.get("pid") is None and isinstance(queued_at, (int, float)):
        return float(queued_at)
    return None


def remove_stale_temporaries(run_dir: Path) -> None:
    """Half-written files of a killed attempt (its os.replace never came), 90 MB each for last.pt.

    Only the holder of the run lock writes these names, so none of them is in use now.
    """
    for name in ("best.pt", "last.pt", "metrics.jsonl", "predictions_val.npz", "eval_val.json"):
        for path in run_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)


def load_resume(run_dir: Path) -> dict[str, Any] | None:
    """last.pt of an interrupted run, or None when there is nothing usable to resume."""
    path = run_dir / "last.pt"
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged last.pt: start over rather than crash
        log(f"last.pt is unusable ({error}); starting from epoch 1")
        return None
    if not isinstance(payload, dict) or "fit_state" not in payload:
        return None
    return payload


def train_run(request: TrainRequest, *, plan: RunPlan | None = None,
              progress: Callable[[str, float], None] | None = None) -> TrainResult:
    """Train a request into its run folder, or return the finished/in-progress run."""
    ctx = distributed_from_env()
    plan = plan or plan_run(request)
    if not request.force and is_finished(plan):
        return _result_from_status(plan, cached=True)
    check_weights(request)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    lock: FileLock | None = None
    if ctx.is_main:
        lock = run_lock(plan.run_dir)
        if not lock.acquire():
            # Another process trains this config right now: report it, never train twice.
            return _result_from_status(plan, cached=False)
    try:
        if not request.force and is_finished(plan):  # finished while we waited for the lock
            return _result_from_status(plan, cached=True)
        return _train_locked(request, plan, ctx)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(request: TrainRequest, plan: RunPlan, ctx: Distributed) -> TrainResult:
    run_dir, config = plan.run_dir, request.config
    device = pick_device(request.device)
    status = StatusWriter(run_dir) if ctx.is_main else None
    # A marker left by an earlier, already cancelled attempt goes; one written since `launch`
    # queued this job is a cancel pressed while it started up, and stops it at once.
    clear_cancel(run_dir, before=_launched_at(run_dir))
    stop = StopFlag(run_dir)
    stop.install()
    if ctx.is_main:
        if request.force:
            clear_outputs(run_dir)
        remove_stale_temporaries(run_dir)
        write_run_config(plan, request)
        try:
            previous = read_status(run_dir)
        except ValueError:  # truncated by a crash: this attempt writes it afresh
            previous = {}
        queued_at = previous.get("queued_at") if previous.get("state") == "queued" else None
        queued_at = queued_at if isinstance(queued_at, (int, float)) else time.time()
        status.update(state="queued", queued_at=queued_at,
                      device_key=device_key(device), device=describe_device(device), error=None,
                      created=previous.get("created", now_iso()), epochs=config.epochs,
                      world_size=ctx.world_size)
        status.start_heartbeat()
    slot = None
    queued_at = queued_at if ctx.is_main else time.time()
    try:
        if not ctx.active:
            slot = acquire_device_slot(request.runs_dir, run_dir, device_key=device_key(device),
                                       queued_at=queued_at, should_stop=stop)
            if slot is None:
                raise Stopped()
        if ctx.is_main:
            status.update(state="running", started=now_iso(), phase="loading data")
        # The clock starts once the device is ours: time spent queued is not training time.
        result = _execute(request, plan, ctx, device, status, stop, time.perf_counter())
        return result
    except Stopped:
        if status is not None:
            status.update(state="cancelled", phase=None, finished=now_iso())
        clear_cancel(run_dir)
        log("cancelled: last.pt holds the last finished epoch")
        return _result_from_status(plan, cached=False)
    except BaseException as error:
        message = _describe_error(error)
        if status is not None:
            try:
                status.update(state="failed", error=message, phase=None, finished=now_iso())
            except OSError:
                pass
        log(f"failed: {message}")
        if isinstance(error, (UserError, OSError)):
            # Not read back from status.json: on a full or read-only disk the write above
            # may have failed, and the file would still say running.
            return replace(_result_from_status(plan, cached=False), state="failed", error=message)
        raise
    finally:
        if status is not None:
            status.stop_heartbeat()
        if slot is not None:
            slot.release()


def _describe_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return f"{os.strerror(error.errno)} ({getattr(error, 'filename', '') or type(error).__name__})"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}" if not isinstance(error, UserError) else str(error)


def _fit_inputs(request: TrainRequest, plan: RunPlan, model: torch.nn.Module, device: torch.device,
                status: StatusWriter | None) -> tuple[FitInputs, Any]:
    """Decode once (cached), and for frozen compute backbone features once (cached)."""
    config = request.config

    def report(phase: str) -> Callable[[int, int], None]:
        def on_progress(done: int, total: int) -> None:
            if status is not None:
                status.update(phase=f"{phase} {done}/{total}")
        return on_progress

    decoded = load_decoded(plan.index, size=config.stored_size, resize=config.resize,
                           progress=report("decoding images"))
    unreadable = decoded["unreadable"]
    if unreadable:
        log(f"skipped {len(unreadable)} unreadable files, e.g. "
                          f"{next(iter(unreadable))}: {next(iter(unreadable.values()))}")
    values = decoded["images"]
    use_features = config.approach == "frozen"
    if use_features:
        values = cached_features(plan, decoded, model, config=config, device=device,
                                 progress=report("computing backbone features"))
    splits = select_splits(plan.index, decoded, values)
    train, val = splits["train"], splits["val"]
    if len(val) == 0:
        raise UserError("the val split is empty: add images to val/, or use more groups per class")
    if len(train) < 1:
        raise UserError("the train split is empty")
    return FitInputs(train.images, train.labels, val.images, val.labels, use_features).to(device), splits


def cached_features(plan: RunPlan, decoded: dict, model: torch.nn.Module, *, config: TrainConfig,
                    device: torch.device, progress: Callable[[int, int], None]) -> torch.Tensor:
    """Backbone features of every decoded image, keyed by (data, weights, size, resize)."""
    key = config_hash({"data": plan.index.fingerprint, "weights": plan.identity["weights"],
                       "size": config.img_size, "stored": config.stored_size, "resize": config.resize})
    path = cache_dir() / f"features-{key}.pt"
    if path.exists():
        try:
            features = torch.load(path, weights_only=True)
            if isinstance(features, torch.Tensor) and features.shape[0] == len(decoded["files"]):
                return features
        except Exception:
            pass
    features = compute_features(model, decoded["images"], config=config, device=device, on_batch=progress)
    atomic_torch_save(features, path)
    return features


def _execute(request: TrainRequest, plan: RunPlan, ctx: Distributed, device: torch.device,
             status: StatusWriter | None, stop: StopFlag, started: float) -> TrainResult:
    config, run_dir, classes = request.config, plan.run_dir, plan.index.classes
    torch.manual_seed(config.seed)
    backbone = resolve_weights(config.weights, runs_dir=request.runs_dir) if config.approach != "scratch" else None
    model = build_model(config, num_classes=len(classes), backbone=backbone)
    precision = resolve_precision(request.precision, device)
    inputs, splits = _fit_inputs(request, plan, model, device, status)
    resume = load_resume(run_dir) if not request.force else None
    earlier_seconds = 0.0
    if resume is not None:
        earlier_seconds = float(resume.get("seconds", 0.0) or 0.0)
        epoch = int(resume["fit_state"]["epoch"])
        truncate_metrics(run_dir, last_epoch=epoch) if ctx.is_main else None
        log(f"resuming from last.pt after epoch {epoch}")
    elif ctx.is_main:
        write_metrics(run_dir, [])
    extra = {"classes": list(classes)}

    def elapsed() -> float:
        """Training seconds of this run, earlier (resumed) sessions included."""
        return earlier_seconds + time.perf_counter() - started

    def on_start(snapshot: Callable[[], dict]) -> None:
        if ctx.is_main:
            atomic_torch_save({**snapshot(), "config": config.to_dict(), **extra, "seconds": 0.0},
                              run_dir / "last.pt")

    def on_epoch_end(record: EpochRecord, state: FitState, is_best: bool, snapshot: Callable[[], dict]) -> None:
        if not ctx.is_main:
            return
        payload = {**snapshot(), "config": config.to_dict(), **extra, "seconds": elapsed()}
        append_metrics(run_dir, record.to_dict())
        if is_best:
            atomic_torch_save({"model": payload["model"], "config": payload["config"], **extra,
                               "epoch": record.epoch, "val_acc": record.val_acc}, run_dir / "best.pt")
        atomic_torch_save(payload, run_dir / "last.pt")
        status.update(epoch=record.epoch, best_val_acc=state.best_val_acc, val_acc=record.val_acc,
                      images_per_s=record.images_per_s, phase="training", seconds=round(elapsed(), 2))
        log(f"epoch {record.epoch}/{config.epochs} train_loss {record.train_loss:.4f} "
                     f"train_acc {record.train_acc:.4f} val_loss {record.val_loss:.4f} "
                     f"val_acc {record.val_acc:.4f} {record.images_per_s:.0f} img/s")

    def on_step(step: int, total: int) -> None:
        if status is not None and step % 20 == 0:
            status.update(step=step, steps=total)

    if status is not None:
        status.update(phase="training", step=0, precision=precision)
    state = fit(model, inputs, config=config, device=device, resume=resume, ctx=ctx,
                compile_model=request.compile, precision=precision,
                hooks=FitHooks(on_epoch_end=on_epoch_end, on_start=on_start, on_step=on_step, should_stop=stop))
    seconds = elapsed()
    if ctx.is_main:
        save_val_predictions(run_dir, splits["val"].files, classes=classes, config=config, device=device,
                             inputs=inputs)
        status.update(state="done", phase=None, finished=now_iso(), seconds=round(seconds, 2),
                      epoch=state.epoch, best_val_acc=state.best_val_acc, best_epoch=state.best_epoch)
    if ctx.active:
        torch.distributed.barrier()
    return TrainResult(run_id=plan.run_id, run_dir=run_dir, state="done", cached=False,
                       best_val_acc=state.best_val_acc, epochs_run=state.epoch, seconds=seconds)


def save_val_predictions(run_dir: Path, files: tuple[str, ...], *, classes: tuple[str, ...],
                         config: TrainConfig, device: torch.device, inputs: FitInputs) -> None:
    """Probabilities of the best model on the val split, and its evaluation report."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    model = build_untrained(config.approach, num_classes=len(classes))
    model.load_state_dict(best["model"])
    model.to(device)
    if inputs.features:
        module, prepare = model.fc, (lambda batch: batch)
    else:
        module = model.to(memory_format=torch.channels_last)
        prepare = lambda batch: prepare_batch(batch, config=config, train=False, channels_last=True)  # noqa: E731
    _, _, probs = evaluate(module, inputs.val_inputs, inputs.val_labels, prepare=prepare, device=device)
    labels = inputs.val_labels.cpu().numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float32), labels=labels.astype(np.int64),
                        files=np.array(files, dtype=str), classes=np.array(classes, dtype=str))
    atomic_write_bytes(buffer.getvalue(), run_dir / "predictions_val.npz")
    atomic_write_json(evaluation_report(probs, labels, class_names=classes), run_dir / "eval_val.json")
