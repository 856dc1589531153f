"""The training job: one request in, one finished run folder out.

`train_run` is what `python -m speedsign train` executes, and so every background job
(`python -m speedsign job RUN_DIR`, which reads the request that `jobs.launch` wrote into
config.json). Like torchvision's reference `train.py`, `train` reads top to bottom: load
the data, build the model and optimizer, resume, then epochs of train, evaluate and
`save_checkpoint`, then the val predictions. `train_run` around it plans the run, holds its
lock, waits for the device and records the outcome in status.json.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speedsign import __version__
from speedsign.augment import resolve_augment
from speedsign.budget import (
    CHECKPOINT_SECONDS,
    ENOUGH_IMAGES,
    BudgetPlan,
    check_fits,
    choose_size,
    mean_step_seconds,
    plan_steps,
    safety_seconds,
    smaller_sizes,
    time_evaluation,
    time_step,
)
from speedsign.calibration import calibrate_run
from speedsign.config import TrainConfig, config_from_dict, validate_config
from speedsign.data import DatasetIndex, load_decoded, scan_dataset, select_splits
from speedsign.errors import UserError
from speedsign.locks import acquire_device_slot, run_lock
from speedsign.machine import describe_machine, machine_key
from speedsign.metrics import evaluation_report
from speedsign.models import (
    build_model,
    build_untrained,
    check_imagenet_available,
    checkpoint_payload,
    resolve_weights,
    set_train_mode,
    trainable_parameters,
    weights_fingerprint,
)
from speedsign.runs import (
    FORMAT_VERSION,
    RunDir,
    RunStatus,
    StatusWriter,
    append_metrics,
    config_hash,
    effective_state,
    find_run_by_hash,
    make_run_id,
    now_iso,
    read_run_config,
    truncate_metrics,
    write_metrics,
)
from speedsign.storage import atomic_torch_save, atomic_write_bytes, atomic_write_json, cache_dir, remove_temporaries
from speedsign.train import (
    Distributed,
    EpochRecord,
    Pace,
    StopFlag,
    Stopped,
    build_ema,
    build_optimizer,
    build_scheduler,
    compute_features,
    describe_device,
    distributed_from_env,
    epoch_generator,
    evaluate,
    from_main,
    pick_device,
    resolve_precision,
    schedule_length,
    smallest_side,
    total_steps,
    train_one_epoch,
)


@dataclass(frozen=True)
class TrainRequest:
    """A training launch: the recipe plus where and how to run it (not part of the run id)."""

    config: TrainConfig
    data_dir: Path
    runs_dir: Path
    device: str = "auto"
    force: bool = False
    compile: bool = False  # torch.compile the training step (pays on a GPU)
    precision: str = "auto"  # auto, fp32 or bf16 (see train.resolve_precision)
    session: str | None = None  # the dashboard session that launched it (speedsign.quotas counts its jobs)

    def options(self) -> dict[str, Any]:
        """How to run it, as config.json's "request" stores it for a background job."""
        options: dict[str, Any] = {"device": self.device, "force": self.force, "compile": self.compile,
                                   "precision": self.precision}
        if self.session:
            options["session"] = self.session
        return options


@dataclass(frozen=True)
class RunPlan:
    """What a request resolves to before any training: the run's id and folder."""

    run_id: str
    run_dir: Path
    digest: str
    index: DatasetIndex
    identity: dict[str, Any]

    @property
    def folder(self) -> RunDir:
        return RunDir(self.run_dir)


@dataclass(frozen=True)
class TrainResult:
    """The `train --json` answer (the command-line contract)."""

    run_id: str
    run_dir: Path
    state: str
    cached: bool
    best_val_acc: float | None
    epochs_run: int
    seconds: float
    error: str | None = None
    budget: dict[str, Any] | None = None  # a budgeted run: its plan, and the steps it ran

    def to_json(self) -> dict[str, Any]:
        data = {"run_id": self.run_id, "run_dir": str(self.run_dir), "state": self.state,
                "cached": self.cached, "best_val_acc": self.best_val_acc,
                "epochs_run": self.epochs_run, "seconds": round(self.seconds, 2)}
        if self.error:
            data["error"] = self.error
        if self.budget:
            data["budget"] = self.budget
        return data


@dataclass
class FitState:
    """What a resumed run needs besides the weights and the optimizer."""

    epoch: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    stale_epochs: int = 0
    steps_run: int = 0
    images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Inputs:
    """What the job trains on: uint8 images, or backbone features for frozen."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    val_files: tuple[str, ...]
    features: bool
    # The data folder's test/, kept on the CPU: scored once by the best model after training,
    # never seen by training or the choice of checkpoint. None when the data has no test split.
    test: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    test_files: tuple[str, ...] = ()

    @property
    def n_test(self) -> int:
        return 0 if self.test_labels is None else int(self.test_labels.shape[0])


# ---------------------------------------------------------------- planning

def plan_run(request: TrainRequest) -> RunPlan:
    """Scan the data and name the run: same config + same data = same id (any day)."""
    config = validate_config(request.config)  # a TrainConfig built by hand has not been checked
    index = scan_dataset(request.data_dir, val_fraction=config.val_fraction, seed=config.seed)
    n_train = len(index.samples("train"))
    if config.batch_size > n_train:
        raise UserError(f"batch size {config.batch_size} is larger than the {n_train} training images: "
                        f"use a batch size of at most {n_train}")
    identity = {"config": config.identity_dict(), "data": index.fingerprint,
                "weights": weights_fingerprint(config.weights, runs_dir=request.runs_dir)}
    if config.budgeted:
        # A budget buys different steps on another machine: there it is another run.
        identity["machine"] = machine_key(describe_device(pick_device(request.device)))
    digest = config_hash(identity)
    existing = find_run_by_hash(request.runs_dir, digest)
    run_id = existing.name if existing else make_run_id(config.approach, digest)
    return RunPlan(run_id=run_id, run_dir=Path(request.runs_dir) / run_id, digest=digest, index=index,
                   identity=identity)


def check_weights(request: TrainRequest) -> None:
    """Refuse a backbone that cannot load, before any run folder or job exists.

    A file that torch.load(weights_only=True) refuses (pickled code), one of the wrong
    shape, or ImageNet weights on an offline machine without them is bad input: the
    command line exits 2 at once.
    """
    config = request.config
    if config.approach == "scratch":
        return
    if config.weights == "imagenet":
        check_imagenet_available()  # the job loads them: a 45 MB download is no work for a page
        return
    build_model(config, num_classes=2, backbone=resolve_weights(config.weights, runs_dir=request.runs_dir))


def check_request(request: TrainRequest) -> None:
    """Everything that refuses a request before a run folder exists: backbone, device, precision."""
    check_weights(request)
    resolve_precision(request.precision, pick_device(request.device), img_size=smallest_side(request.config))


def write_run_config(plan: RunPlan, request: TrainRequest) -> None:
    """config.json: the recipe, the data, and how to run it (what a background job reads)."""
    atomic_write_json({
        "format_version": FORMAT_VERSION,
        "run_id": plan.run_id,
        "config": request.config.to_dict(),
        "request": request.options(),
        "classes": list(plan.index.classes),
        "data_dir": str(Path(request.data_dir).resolve()),
        "data_fingerprint": plan.index.fingerprint,
        "data_layout": plan.index.layout,
        "weights_fingerprint": plan.identity["weights"],
        "config_hash": plan.digest,
        "code_version": __version__,
        "created": now_iso(),
    }, plan.folder.config)


def read_request(run_dir: Path) -> TrainRequest:
    """The request that `jobs.launch` wrote into a run's config.json."""
    run_dir = Path(run_dir)
    try:
        meta = read_run_config(run_dir)
    except ValueError as error:
        raise UserError(f"{run_dir}: {error}") from None
    options = meta.get("request") if isinstance(meta.get("request"), dict) else {}
    return TrainRequest(config=config_from_dict(meta["config"]), data_dir=Path(str(meta.get("data_dir", ""))),
                        runs_dir=run_dir.parent, device=str(options.get("device", "auto")),
                        force=options.get("force") is True, compile=options.get("compile") is True,
                        precision=str(options.get("precision", "auto")),
                        session=options["session"] if isinstance(options.get("session"), str) else None)


def launched_at(status: RunStatus) -> float | None:
    """When `jobs.launch` queued this job (its status has no pid yet), else None."""
    if status.state == "queued" and status.pid is None:
        return status.queued_at
    return None


def device_key(device: torch.device) -> str:
    return f"{device.type}-{device.index or 0}" if device.type == "cuda" else device.type


# ---------------------------------------------------------------- status and stop requests

def log(message: str) -> None:
    """A line on stderr (the job's log.txt when launched in the background)."""
    print(f"[{now_iso()}] {message}", file=sys.stderr, flush=True)


def result_from_status(plan: RunPlan, *, cached: bool) -> TrainResult:
    status = plan.folder.read_status()
    state, reason = effective_state(status) if status.exists else ("queued", None)
    if status.damaged and status.state == "unknown":  # status.json unreadable: nothing to trust
        state = "failed"
    return TrainResult(run_id=plan.run_id, run_dir=plan.run_dir, state=state, cached=cached,
                       best_val_acc=status.best_val_acc, epochs_run=status.epoch,
                       seconds=status.seconds or 0.0, error=status.error or reason or status.damaged)


# ---------------------------------------------------------------- the job

def train_run(request: TrainRequest, *, started: float | None = None) -> TrainResult:
    """Train a request into its run folder, or return the finished or in-progress run.

    `started` (time.monotonic()): where a time budget starts counting; the command line passes
    its process start (speedsign.STARTED), so the budget covers the whole command. Default: now.
    """
    started = time.monotonic() if started is None else started
    ctx = distributed_from_env()
    plan = plan_run(request)
    if not request.force and plan.folder.is_finished():
        return result_from_status(plan, cached=True)
    check_request(request)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_lock(plan.run_dir) if ctx.is_main else None
    if lock is not None and not lock.acquire():
        # Another process trains this config right now: report it, never train twice.
        return result_from_status(plan, cached=False)
    try:
        if not request.force and plan.folder.is_finished():  # finished while we waited for the lock
            return result_from_status(plan, cached=True)
        return run_job(request, plan, ctx, started=started)
    finally:
        if lock is not None:
            lock.release()


def run_job(request: TrainRequest, plan: RunPlan, ctx: Distributed, *, started: float) -> TrainResult:
    """Queue for the device, train, and record how it ended: done, cancelled or failed."""
    folder, config = plan.folder, request.config
    device = pick_device(request.device)
    status = StatusWriter(folder) if ctx.is_main else None
    # A marker left by an earlier, already cancelled attempt goes; one written since `launch`
    # queued this job is a cancel pressed while it started up, and stops it at once.
    previous = folder.read_status()
    folder.clear_cancel(before=launched_at(previous))
    stop = StopFlag(folder)
    stop.install()
    queued_at = previous.queued_at if previous.state == "queued" and previous.queued_at else time.time()
    if status is not None:
        if request.force:
            for name in RunDir.OUTPUTS:
                (folder.path / name).unlink(missing_ok=True)
        remove_temporaries(folder.path, RunDir.OUTPUTS)
        write_run_config(plan, request)
        status.update(state="queued", queued_at=queued_at, device_key=device_key(device),
                      device=describe_device(device), machine=describe_machine(), error=None,
                      created=previous.created or now_iso(),
                      epochs=config.epochs, world_size=ctx.world_size)
        status.start_heartbeat()
    slot = None
    budget_start = started  # a budget counts from the command's start...
    try:
        if not ctx.active:
            waited = time.monotonic()
            slot = acquire_device_slot(request.runs_dir, folder.path, device_key=device_key(device),
                                       queued_at=queued_at, should_stop=stop)
            if slot is None:
                raise Stopped()
            if time.monotonic() - waited > 1.0:
                budget_start = time.monotonic()  # ...or, after a wait in the queue, from getting the device
        if status is not None:
            status.update(state="running", started=now_iso(), phase="loading data")
        return train(request, plan, ctx, device=device, status=status, stop=stop, budget_start=budget_start)
    except Stopped:
        if status is not None:
            status.update(state="cancelled", phase=None, finished=now_iso())
        folder.clear_cancel()
        log(f"cancelled: {RunDir.LAST} holds the last finished epoch")
        return result_from_status(plan, cached=False)
    except BaseException as error:
        message = describe_error(error)
        if status is not None:
            try:
                status.update(state="failed", error=message, phase=None, finished=now_iso())
            except OSError:
                pass
        log(f"failed: {message}")
        if isinstance(error, (UserError, OSError)):
            # Not read back from status.json: on a full or read-only disk the write above
            # may have failed, and the file would still say running.
            return replace(result_from_status(plan, cached=False), state="failed", error=message)
        raise
    finally:
        if status is not None:
            status.stop_heartbeat()
        if slot is not None:
            slot.release()


def describe_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return f"{os.strerror(error.errno)} ({getattr(error, 'filename', '') or type(error).__name__})"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return f"{type(error).__name__}: {error}" if not isinstance(error, UserError) else str(error)


def train(request: TrainRequest, plan: RunPlan, ctx: Distributed, *, device: torch.device,
          status: StatusWriter | None, stop: StopFlag, budget_start: float) -> TrainResult:
    """The training itself, from data to the best model's val predictions."""
    started = time.perf_counter()  # once the device is ours: time spent queued is not training
    config, folder, classes = request.config, plan.folder, plan.index.classes
    torch.manual_seed(config.seed)

    def report(phase: str) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            if status is not None:
                status.update(phase=f"{phase} {done}/{total}")
        return progress

    backbone = resolve_weights(config.weights, runs_dir=request.runs_dir) if config.approach != "scratch" else None
    model = build_model(config, num_classes=len(classes), backbone=backbone)
    precision = resolve_precision(request.precision, device, img_size=smallest_side(config))
    features = config.approach == "frozen"
    resume = None if request.force else load_resume(folder)

    # A budget: the input size first (it decides what to decode), then the steps that fit.
    preset_epochs = config.epochs  # a budget never trains longer than this, however fast the machine
    budget = read_budget(folder) if resume is not None and config.budgeted else None
    if config.budgeted and budget is None:
        if status is not None:
            status.update(phase="timing this machine")
        sizes: dict[int, float] = {}
        if not features and config.min_size:  # progressive resizing: time both ends of its sides
            sizes = {side: time_step(model, config=config, features=False, device=device, precision=precision,
                                     img_size=side) for side in (config.img_size, config.min_size)}
        elif not features:  # frozen trains a head on features of the preset's size
            # Enough: what the approach needs, or all the preset would show, when that is less.
            enough = min(ENOUGH_IMAGES[config.approach], config.epochs * len(plan.index.samples("train")))
            sizes = measure_sizes(model, config=config, device=device, precision=precision, enough_images=enough)
            config = replace(config, img_size=from_main(
                choose_size(sizes, budget_s=config.budget, batch_size=config.batch_size, enough_images=enough),
                ctx, device))
    elif budget is not None:
        config = budget.apply(config)

    # Data: decoded once (cached on disk); for frozen, backbone features once (cached too).
    inputs = load_inputs(plan, model, config=config, device=device, report=report)
    n_train = int(inputs.train_labels.shape[0])
    steps_per_epoch = max(1, n_train // config.batch_size) if n_train > config.batch_size else 1
    if config.steps:  # steps decide the length; the epochs follow (the last one may be partial)
        config = replace(config, epochs=math.ceil(config.steps / steps_per_epoch))
    if config.budgeted and budget is None:
        budget = plan_budget(model, config=config, inputs=inputs, device=device, precision=precision,
                             steps_per_epoch=steps_per_epoch, budget_start=budget_start,
                             sizes=sizes, device_name=describe_device(device))
        if config.augment == "auto":
            budget = plan_auto_augment(budget, model, config=config, inputs=inputs, device=device,
                                       precision=precision, steps_per_epoch=steps_per_epoch,
                                       budget_start=budget_start)
        budget = BudgetPlan.from_dict(from_main(budget.to_dict(), ctx, device))  # torchrun: rank 0's plan
        config = budget.apply(config)
        if ctx.is_main:
            atomic_write_json(budget.to_dict(), folder.budget)
        log(f"budget {config.budget:g} s: {budget.steps} steps at {budget.img_size} px "
            f"({budget.step_s:.3f} s each), planned {budget.planned_s:.0f} s")
    # "auto" augmentation is decided now that the run's steps (and so its passes over the data) are known.
    augment = resolve_augment(config, images=total_steps(config, steps_per_epoch=steps_per_epoch) * config.batch_size,
                              n_train=n_train)
    if augment != config.augment:
        log(f"augmentation auto: {augment} ({total_steps(config, steps_per_epoch=steps_per_epoch)} steps of "
            f"{config.batch_size} over {n_train} training images)")
        config = replace(config, augment=augment)
    if status is not None:
        status.update(epochs=config.epochs, planned_steps=total_steps(config, steps_per_epoch=steps_per_epoch),
                      augment=config.augment)
    if budget is not None and status is not None:
        status.update(budget_s=budget.budget_s, planned_s=round(budget.planned_s, 2),
                      deadline=time.time() + budget_start + budget.planned_s - time.monotonic())

    # Model, optimizer, schedule: the frozen approach trains the head alone.
    model.to(device)
    if not inputs.features:
        model.to(memory_format=torch.channels_last)
    module: nn.Module = model.fc if inputs.features else model
    wrapped = module
    if ctx.active:
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    if request.compile:
        wrapped = torch.compile(wrapped)
    params = trainable_parameters(module)
    if not params:
        raise UserError("nothing to train: every parameter is frozen")
    optimizer = build_optimizer(params, config)
    scheduler, per_step = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    ema = build_ema(model, config)
    total = total_steps(config, steps_per_epoch=steps_per_epoch)

    # Resume from last.pt when an earlier attempt was interrupted.
    state, earlier_seconds = FitState(), 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if ema is not None and isinstance(resume.get("ema"), dict):
            ema.load_state_dict(resume["ema"])
        state = FitState(**resume["fit_state"])
        earlier_seconds = float(resume.get("seconds", 0.0) or 0.0)
        log(f"resuming from {RunDir.LAST} after epoch {state.epoch}")
        if ctx.is_main:
            truncate_metrics(folder.path, last_epoch=state.epoch)
    elif ctx.is_main:
        write_metrics(folder.path, [])

    # The evaluated model: the weights' moving average when there is one.
    evaluated = model if ema is None else ema.module
    evaluated_module = evaluated.fc if inputs.features else evaluated
    # Past this, the run stops training and finishes (an overrun guard; the plan aims earlier). What
    # is left after it: an evaluation and checkpoint, the saved predictions, and the process's exit,
    # each slower than timed when the machine got busier; hence twice the evaluation. Then the
    # test split's scoring, when the data has one.
    # After each epoch the guard moves earlier when that epoch's evaluation and checkpoint took
    # longer than timed at the start (a machine that got busy), never later.
    def guard(eval_s: float) -> float:
        assert budget is not None
        return (budget_start + budget.budget_s - 2 * eval_s - reserve_for_test(eval_s, inputs)
                - safety_seconds(budget.budget_s))

    # A budget's per-step schedule keeps pace with the clock: it may end before the planned steps
    # (a machine slower than timed) or after them (a faster one), up to the preset's length.
    pace, epochs, limit = None, config.epochs, total
    if budget is not None:
        if per_step:
            epochs = max(config.epochs, preset_epochs)
            limit = max(total, epochs * steps_per_epoch)
        pace = Pace(end=guard(budget.eval_s), eval_s=budget.eval_s, steps_per_epoch=steps_per_epoch,
                    first_step=state.steps_run, max_steps=limit)
    if status is not None:
        status.update(phase="training", step=0, precision=precision)
    while state.epoch < epochs and state.steps_run < limit:
        epoch = state.epoch + 1
        epoch_started = time.perf_counter()
        set_train_mode(model, approach=config.approach)
        train_loss, train_acc, seen = train_one_epoch(
            wrapped, inputs.train, inputs.train_labels, config=config, features=inputs.features,
            optimizer=optimizer, scheduler=scheduler, per_step=per_step,
            order=epoch_generator(config, epoch, device=torch.device("cpu")),
            generator=epoch_generator(config, epoch, device=device, salt=1 + ctx.rank), device=device, ctx=ctx,
            stop=stop, status=status, precision=precision, max_steps=limit - state.steps_run,
            ema=ema, ema_source=model, pace=pace, first_step=state.steps_run, total_steps=total)
        train_seconds = time.perf_counter() - epoch_started
        lr = optimizer.param_groups[0]["lr"]
        if not per_step:
            scheduler.step()
        finish_started = time.perf_counter()
        val_loss, val_acc, _ = evaluate(evaluated_module, inputs.val, inputs.val_labels, config=config,
                                        features=inputs.features, device=device, ctx=ctx, precision=precision)
        if pace is not None:  # every rank alike: the evaluation, not rank 0's checkpoint, is timed
            observed = CHECKPOINT_SECONDS + time.perf_counter() - finish_started
            pace.eval_s = max(pace.eval_s, observed)
            pace.end = min(pace.end, guard(pace.eval_s))
            # Time for another epoch? Without this check, an epoch could start past the guard and
            # spend an evaluation on no step at all.
            pace.check(scheduler, steps_done=state.steps_run + math.ceil(seen / config.batch_size),
                       pass_seconds=0.0, ctx=ctx, device=device)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            # NaN or inf weights answer nothing: a failed run, not a finished one at chance.
            loss = train_loss if not math.isfinite(train_loss) else val_loss
            raise UserError(f"training diverged: the loss became {loss} in epoch {epoch}; "
                            f"try a lower learning rate than {config.lr:g}")
        record = EpochRecord(epoch=epoch, train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                             val_acc=val_acc, lr=lr, seconds=time.perf_counter() - epoch_started,
                             images_per_s=seen / max(train_seconds, 1e-9), images=state.images + seen)
        is_best = val_acc > state.best_val_acc
        state.epoch = epoch
        state.steps_run += math.ceil(seen / config.batch_size)  # a global batch is split over the ranks
        state.images += seen
        state.history.append(record.to_dict())
        if is_best:
            state.best_val_acc, state.best_epoch, state.stale_epochs = val_acc, epoch, 0
        else:
            state.stale_epochs += 1
        seconds = earlier_seconds + time.perf_counter() - started
        if ctx.is_main:
            save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                            config=config, classes=classes, seconds=seconds, is_best=is_best, ema=ema)
            append_metrics(folder.path, record.to_dict())
            shown = max(config.epochs, epoch if pace is None or pace.finished else epoch + 1)
            # Under a budget the schedule ends with the time: at the guard, then the last evaluation.
            deadline = {} if pace is None else {"deadline": time.time() + pace.end - time.monotonic() + pace.eval_s}
            status.update(epoch=epoch, epochs=shown, best_val_acc=state.best_val_acc, val_acc=val_acc,
                          images_per_s=record.images_per_s, phase="training", seconds=round(seconds, 2),
                          steps_run=state.steps_run, **deadline)
            log(f"epoch {epoch}/{shown} train_loss {train_loss:.4f} train_acc {train_acc:.4f} "
                f"val_loss {val_loss:.4f} val_acc {val_acc:.4f} {record.images_per_s:.0f} img/s")
        if config.patience and state.stale_epochs >= config.patience:
            break
        if pace is not None and pace.finished:
            if state.steps_run != total:
                log(f"budget: {state.steps_run} steps run, {total} planned; the machine was "
                    f"{'slower' if state.steps_run < total else 'faster'} than timed, and the schedule kept pace "
                    f"(it reached step {scheduler.last_epoch} of {schedule_length(scheduler)})")
            break

    seconds = earlier_seconds + time.perf_counter() - started
    if ctx.is_main:
        save_predictions(folder, inputs, classes=classes, config=config, device=device)
        # Under a budget the clock, not the plan, decided how many epochs ran.
        ran = {} if pace is None else {"epochs": state.epoch}
        status.update(state="done", phase=None, finished=now_iso(), seconds=round(seconds, 2),
                      epoch=state.epoch, best_val_acc=state.best_val_acc, best_epoch=state.best_epoch,
                      steps_run=state.steps_run, **ran)
    if ctx.active:
        torch.distributed.barrier()
    summary = None
    if budget is not None:
        summary = {"budget_s": budget.budget_s, "img_size": budget.img_size, "planned_steps": budget.steps,
                   "planned_s": budget.planned_s, "steps_run": state.steps_run,
                   "elapsed_s": round(time.monotonic() - budget_start, 2)}
    return TrainResult(run_id=plan.run_id, run_dir=plan.run_dir, state="done", cached=False,
                       best_val_acc=state.best_val_acc, epochs_run=state.epoch, seconds=seconds, budget=summary)


# ---------------------------------------------------------------- a time budget

def measure_sizes(model: nn.Module, *, config: TrainConfig, device: torch.device, precision: str,
                  enough_images: int) -> dict[int, float]:
    """Seconds per step at the preset's size, then at smaller sizes until one buys enough images."""
    sizes: dict[int, float] = {}
    for size in smaller_sizes(config.img_size):
        sizes[size] = time_step(model, config=config, features=False, device=device, precision=precision,
                                img_size=size)
        if config.budget / sizes[size] * config.batch_size >= enough_images:
            break
    return sizes


def plan_budget(model: nn.Module, *, config: TrainConfig, inputs: Inputs, device: torch.device, precision: str,
                steps_per_epoch: int, budget_start: float, sizes: dict[int, float], device_name: str) -> BudgetPlan:
    """The steps that fit in what is left of the budget, with this machine's step and eval times."""
    module = model.fc if inputs.features else model
    if config.min_size and sizes:
        step_s = mean_step_seconds(config, sizes)
    else:
        step_s = sizes.get(config.img_size) or time_step(module, config=config, features=inputs.features,
                                                          device=device, precision=precision,
                                                          img_size=config.img_size)
    eval_s = CHECKPOINT_SECONDS + time_evaluation(module.to(device), config=config, features=inputs.features,
                                                  device=device, precision=precision, img_size=config.img_size,
                                                  n_images=int(inputs.val_labels.shape[0]))
    elapsed_s = time.monotonic() - budget_start
    # The test split's one scoring after training is part of the command: reserved like start-up.
    reserved_s = elapsed_s + reserve_for_test(eval_s, inputs)
    check_fits(budget_s=config.budget, elapsed_s=reserved_s, step_s=step_s, eval_s=eval_s)
    max_steps = config.epochs * steps_per_epoch  # a budget never trains longer than the preset
    steps, planned = plan_steps(budget_s=config.budget, elapsed_s=reserved_s, step_s=step_s, eval_s=eval_s,
                                steps_per_epoch=steps_per_epoch, max_steps=max_steps)
    return BudgetPlan(budget_s=config.budget, machine=machine_key(device_name), img_size=config.img_size,
                      steps=steps, steps_per_epoch=steps_per_epoch, step_s=round(step_s, 5),
                      eval_s=round(eval_s, 3), elapsed_s=round(elapsed_s, 2), planned_s=round(planned, 2),
                      sizes={str(k): round(v, 5) for k, v in sizes.items()})


def plan_auto_augment(budget: BudgetPlan, model: nn.Module, *, config: TrainConfig, inputs: Inputs,
                      device: torch.device, precision: str, steps_per_epoch: int,
                      budget_start: float) -> BudgetPlan:
    """Decide "auto" augmentation on the plan, which timed the costlier recipe (signs); when that
    is "none", plan again with the time of a step without augmentation, so that the run uses its
    whole budget. The decision stays: more steps of "none" never turn it back into "signs"."""
    augment = resolve_augment(budget.apply(config), images=budget.steps * config.batch_size,
                              n_train=int(inputs.train_labels.shape[0]))
    if augment == "none" and not inputs.features and not config.min_size:
        again = plan_budget(model, config=replace(config, augment="none"), inputs=inputs, device=device,
                            precision=precision, steps_per_epoch=steps_per_epoch, budget_start=budget_start,
                            sizes={}, device_name=describe_device(device))
        budget = replace(again, sizes=budget.sizes)
    log(f"augmentation auto: {augment} ({budget.steps} steps of {config.batch_size} over "
        f"{int(inputs.train_labels.shape[0])} training images)")
    return replace(budget, augment=augment)


def reserve_for_test(eval_s: float, inputs: Inputs) -> float:
    """The test split's scoring, estimated from one val evaluation's seconds (`eval_s`) by image count."""
    if not inputs.n_test:
        return 0.0
    per_image = max(0.0, eval_s - CHECKPOINT_SECONDS) / max(1, int(inputs.val_labels.shape[0]))
    return CHECKPOINT_SECONDS + per_image * inputs.n_test


def read_budget(folder: RunDir) -> BudgetPlan | None:
    """The plan an interrupted budgeted run made (a resume keeps it), or None."""
    try:
        return BudgetPlan.from_dict(json.loads(folder.budget.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- pieces of the job

def load_inputs(plan: RunPlan, model: nn.Module, *, config: TrainConfig, device: torch.device,
                report: Callable[[str], Callable[[int, int], None]]) -> Inputs:
    """Decoded images (or frozen features) of the train and val splits, on the training device."""
    decoded = load_decoded(plan.index, size=config.stored_size, resize=config.resize,
                           progress=report("decoding images"))
    unreadable = decoded["unreadable"]
    if unreadable:
        log(f"skipped {len(unreadable)} unreadable files, e.g. "
            f"{next(iter(unreadable))}: {next(iter(unreadable.values()))}")
    values = decoded["images"]
    features = config.approach == "frozen"
    if features:
        values = cached_features(plan, decoded, model, config=config, device=device,
                                 progress=report("computing backbone features"))
    splits = select_splits(plan.index, decoded, values)
    train_split, val_split = splits["train"], splits["val"]
    if len(val_split) == 0:
        raise UserError("the val split is empty: add images to val/, or use more groups per class")
    if len(train_split) < 1:
        raise UserError("the training split is empty (all files unreadable?)")
    test_split = splits.get("test")
    test = test_split if test_split is not None and len(test_split) else None
    # On a GPU the whole (small) data set lives on the device: no copies per step. The test
    # split stays on the CPU: it is scored once, at the end.
    return Inputs(train_split.images.to(device), train_split.labels.to(device), val_split.images.to(device),
                  val_split.labels.to(device), tuple(val_split.files), features,
                  test=None if test is None else test.images, test_labels=None if test is None else test.labels,
                  test_files=() if test is None else tuple(test.files))


def cached_features(plan: RunPlan, decoded: dict, model: nn.Module, *, config: TrainConfig,
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
        except Exception:  # a damaged cache entry is recomputed, never trusted
            pass
    features = compute_features(model, decoded["images"], config=config, device=device, on_batch=progress)
    atomic_torch_save(features, path)
    return features


def save_checkpoint(folder: RunDir, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: FitState, config: TrainConfig, classes: tuple[str, ...], seconds: float,
                    is_best: bool, ema: Any = None) -> None:
    """last.pt (everything a resume needs) and, for a new best epoch, best.pt (the model alone).

    Plain tensors and containers only: both load with torch.load(weights_only=True).
    """
    common = checkpoint_payload(model, config=config, classes=classes)
    if is_best:  # the evaluated weights: the moving average when there is one
        best = common if ema is None else checkpoint_payload(ema.module, config=config, classes=classes)
        atomic_torch_save({**best, "epoch": state.epoch, "val_acc": state.best_val_acc}, folder.best)
    extra = {} if ema is None else {"ema": ema.state_dict()}
    atomic_torch_save({**common, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "fit_state": asdict(state), "seconds": seconds, **extra}, folder.last)


def load_resume(folder: RunDir) -> dict[str, Any] | None:
    """last.pt of an interrupted run, or None when there is nothing usable to resume."""
    if not folder.last.exists():
        return None
    try:
        payload = torch.load(folder.last, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged last.pt: start over rather than crash
        log(f"{RunDir.LAST} is unusable ({error}); starting from epoch 1")
        return None
    if not isinstance(payload, dict) or "fit_state" not in payload:
        return None
    return payload


def save_predictions(folder: RunDir, inputs: Inputs, *, classes: tuple[str, ...], config: TrainConfig,
                     device: torch.device) -> None:
    """The best model's raw (T = 1) probabilities and report on val, the temperature fitted on
    them (calibration.json), and, when the data has test/, the same probabilities and report on test."""
    best = torch.load(folder.best, map_location="cpu", weights_only=True)
    model = build_untrained(config.approach, num_classes=len(classes))
    model.load_state_dict(best["model"])
    model.to(device)
    module = model.fc if inputs.features else model.to(memory_format=torch.channels_last)
    splits = [(inputs.val, inputs.val_labels, inputs.val_files, folder.predictions, folder.evaluation)]
    if inputs.test is not None and inputs.test_labels is not None:
        splits.append((inputs.test, inputs.test_labels, inputs.test_files, folder.predictions_test,
                       folder.evaluation_test))
    for images, labels, files, predictions_path, evaluation_path in splits:
        _, _, probs = evaluate(module, images, labels, config=config, features=inputs.features, device=device)
        write_predictions(probs, labels.cpu().numpy(), files=files, classes=classes,
                          predictions_path=predictions_path, evaluation_path=evaluation_path)
        if predictions_path == folder.predictions:
            # Fitted on what was just stored, so a later `calibrate_run` gives the same number.
            calibration = calibrate_run(folder.path)
            log(f"calibration: temperature {calibration.temperature:.3f}, val NLL {calibration.nll_before:.4f} -> "
                f"{calibration.nll_after:.4f}, ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}")
    if inputs.test is not None:
        log(f"scored the best model on {inputs.n_test} test images ({RunDir.EVALUATION_TEST})")


def write_predictions(probs: np.ndarray, labels: np.ndarray, *, files: tuple[str, ...], classes: tuple[str, ...],
                      predictions_path: Path, evaluation_path: Path) -> None:
    """One split's predictions file (probs, labels, files, classes) and its evaluation report."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=probs.astype(np.float32), labels=labels.astype(np.int64),
                        files=np.array(files, dtype=str), classes=np.array(classes, dtype=str))
    atomic_write_bytes(buffer.getvalue(), predictions_path)
    atomic_write_json(evaluation_report(probs, labels, class_names=classes), evaluation_path)
