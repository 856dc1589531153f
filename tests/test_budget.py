"""Time budgets (speedsign.budget and the job): parsing, planning, size choice, the run's record,
its identity, the overrun guard, and the steps, warm-up and EMA settings a budget builds on."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from speedsign import budget, job, train
from speedsign.budget import BudgetPlan, check_fits, choose_size, format_duration, parse_duration, plan_steps
from speedsign.cli import main as cli_main
from speedsign.config import FAST_BUDGETS, LATER_DEFAULTS, TrainConfig, resolve_config
from speedsign.errors import UserError
from speedsign.job import TrainRequest, plan_run, train_run
from speedsign.runs import RunDir, read_metrics, read_status
from speedsign.train import Distributed, Pace

TINY = {"img_size": 16, "batch_size": 16, "epochs": 3}


# ---------------------------------------------------------------- durations

@pytest.mark.parametrize("text, seconds", [
    ("300", 300), ("90s", 90), ("5m", 300), ("5 min", 300), ("1.5h", 5400), (" 2M ", 120), ("0", 0),
])
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5m", "abc", "1e3", "5m30s", "nan", "inf"])
def test_bad_durations_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(UserError, match="such as 300, 90s, 5m or 1h"):
        parse_duration(text)


def test_a_bad_budget_flag_exits_2_with_one_line(synth_dir: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--approach", "scratch", "--data", str(synth_dir), "--runs-dir", str(tmp_path),
                  "--budget", "soon"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1 and "5m" in error
    assert not any(tmp_path.iterdir())


def test_durations_read_as_people_say_them() -> None:
    assert [format_duration(s) for s in (0, 120, 300, 90, 3600)] == ["epochs", "2 min", "5 min", "1 min 30 s",
                                                                     "1 h 00 min"]


# ---------------------------------------------------------------- planning

def needed(steps: int, *, step_s: float, eval_s: float, per_epoch: int) -> float:
    return steps * step_s + (math.ceil(steps / per_epoch) + 1) * eval_s


@pytest.mark.parametrize("budget_s, elapsed_s, step_s, eval_s, per_epoch, max_steps", [
    (300, 20, 1.5, 8, 81, 1620),    # the 5-minute scratch run of an AVX2 laptop
    (600, 20, 0.25, 3, 81, 1620),   # a fast CPU: the preset's steps fit, and are the cap
    (60, 5, 0.01, 0.1, 10, 50),
    (40, 12, 0.27, 1.1, 12, 240),
    (10, 2, 2.0, 0.5, 5, 100),      # one step is all that fits
])
def test_plan_steps_takes_the_most_steps_that_fit(budget_s: float, elapsed_s: float, step_s: float, eval_s: float,
                                                  per_epoch: int, max_steps: int) -> None:
    steps, planned = plan_steps(budget_s=budget_s, elapsed_s=elapsed_s, step_s=step_s, eval_s=eval_s,
                                steps_per_epoch=per_epoch, max_steps=max_steps)
    left = budget_s - elapsed_s - budget.safety_seconds(budget_s)
    assert 1 <= steps <= max_steps
    assert planned == pytest.approx(elapsed_s + needed(steps, step_s=step_s, eval_s=eval_s, per_epoch=per_epoch))
    if steps > 1:
        assert needed(steps, step_s=step_s, eval_s=eval_s, per_epoch=per_epoch) <= left
        assert planned <= budget_s
    if steps < max_steps:  # one more step would not fit
        assert needed(steps + 1, step_s=step_s, eval_s=eval_s, per_epoch=per_epoch) > left


def test_a_budget_too_short_for_one_step_is_refused_with_what_it_needs() -> None:
    with pytest.raises(UserError, match="too short on this machine.*about 2[0-9] s"):
        check_fits(budget_s=20, elapsed_s=15, step_s=2, eval_s=2)
    check_fits(budget_s=60, elapsed_s=15, step_s=2, eval_s=2)


def test_choose_size_keeps_the_largest_size_that_sees_enough_images() -> None:
    seconds = {64: 1.5, 48: 0.85, 32: 0.4}  # per step of 128 images
    assert choose_size(seconds, budget_s=600, batch_size=128, enough_images=50_000) == 64
    assert choose_size(seconds, budget_s=300, batch_size=128, enough_images=50_000) == 32
    assert choose_size(seconds, budget_s=400, batch_size=128, enough_images=50_000) == 48
    assert choose_size(seconds, budget_s=60, batch_size=128, enough_images=50_000) == 32  # none: the smallest
    assert budget.smaller_sizes(64) == [64, 48, 40, 32] and budget.smaller_sizes(16) == [16]


def test_a_plan_round_trips_and_sets_size_steps_and_epochs() -> None:
    plan = BudgetPlan(budget_s=300.0, machine="abc", img_size=48, steps=250, steps_per_epoch=81, step_s=0.9,
                      eval_s=4.0, elapsed_s=18.0, planned_s=290.0, sizes={"64": 1.5, "48": 0.9})
    assert BudgetPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    config = plan.apply(resolve_config(approach="scratch"))
    assert (config.img_size, config.steps, config.epochs) == (48, 250, 4)


# ---------------------------------------------------------------- identity

def test_later_settings_at_their_defaults_leave_a_run_id_as_it_was() -> None:
    config = resolve_config(approach="scratch", overrides={"budget": 0, "contrast": "none"})
    assert not set(LATER_DEFAULTS) & set(config.identity_dict())
    # A later setting that a preset sets (scratch stretches contrast) names its runs, as it should.
    assert resolve_config(approach="scratch", overrides={"budget": 0}).identity_dict()["contrast"] == "stretch"
    changed = resolve_config(approach="scratch", overrides={"budget": 0, "ema": 0.99, "steps": 10})
    assert changed.identity_dict()["ema"] == 0.99 and changed.identity_dict()["steps"] == 10


def test_the_fast_presets_have_a_budget_and_the_tutorial_none() -> None:
    for approach, seconds in FAST_BUDGETS.items():
        assert resolve_config(approach=approach, overrides={"weights": "none"} if approach == "scratch" else None
                              ).budget == seconds
        assert resolve_config(approach=approach, preset="tutorial").budget == 0


def test_a_budget_enters_the_run_id_with_this_machine(synth_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def request(seconds: float) -> TrainRequest:
        config = resolve_config(approach="scratch", overrides={**TINY, "budget": seconds})
        return TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu")

    here = plan_run(request(60)).run_id
    assert plan_run(request(60)).run_id == here  # the same budget here: the same run (cached)
    assert plan_run(request(120)).run_id != here
    assert plan_run(request(0)).run_id != here
    monkeypatch.setattr(job, "machine_key", lambda device: "another-cpu")
    assert plan_run(request(60)).run_id != here  # another machine buys other steps: another run
    assert plan_run(request(0)).run_id == plan_run(request(0)).run_id  # without a budget it travels


# ---------------------------------------------------------------- budgeted runs

def budgeted(synth_dir: Path, runs: Path, seconds: float, **overrides: object) -> TrainRequest:
    config = resolve_config(approach="scratch", overrides={**TINY, "epochs": 50, "budget": seconds, **overrides})
    return TrainRequest(config=config, data_dir=synth_dir, runs_dir=runs, device="cpu", precision="fp32")


def test_a_budgeted_run_ends_within_its_budget_and_records_its_plan(synth_dir: Path, tmp_path: Path,
                                                                    one_thread: None) -> None:
    started = time.monotonic()
    result = train_run(budgeted(synth_dir, tmp_path, 25))
    wall = time.monotonic() - started
    assert result.state == "done" and wall <= 25
    folder = RunDir(result.run_dir)
    plan = json.loads(folder.budget.read_text())
    status = read_status(folder.path)
    rows, problem = read_metrics(folder.path)
    assert problem is None and plan["budget_s"] == 25 and plan["machine"]
    assert plan["steps"] == status.planned_steps == result.budget["planned_steps"]
    assert status.budget_s == 25 and status.planned_s == pytest.approx(plan["planned_s"])
    # More steps than planned when the machine got faster than timed, never more than the preset's 50 epochs.
    assert status.steps_run == result.budget["steps_run"] and 1 <= status.steps_run <= 50 * plan["steps_per_epoch"]
    assert plan["planned_s"] <= 25 and result.budget["elapsed_s"] <= 25
    assert rows[-1]["images"] == status.steps_run * 16  # every step a full batch
    assert all(row["images"] > 0 for row in rows)  # no epoch starts past the guard to train nothing
    assert all(later["images"] > row["images"] for row, later in zip(rows, rows[1:], strict=False))
    best = torch.load(folder.best, weights_only=True)
    assert best["config"]["steps"] == plan["steps"] and best["config"]["img_size"] == plan["img_size"]
    # Relaunching the same budget here is the cached run.
    again = train_run(budgeted(synth_dir, tmp_path, 25))
    assert again.cached and again.run_id == result.run_id


def test_an_optimistic_plan_still_stops_at_the_budget(synth_dir: Path, tmp_path: Path, one_thread: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # A machine that slowed down after timing: the plan asks for every step of 2000 epochs, far
    # more than 20 s hold on any CPU, and believes they take a second.
    monkeypatch.setattr(job, "plan_steps", lambda **k: (k["max_steps"], k["elapsed_s"] + 1.0))
    started = time.monotonic()
    result = train_run(budgeted(synth_dir, tmp_path, 20, epochs=2000))
    assert result.state == "done" and time.monotonic() - started <= 20
    status = read_status(result.run_dir)
    assert status.steps_run < status.planned_steps  # stopped by the guard, not by the plan
    assert "slower than timed" in capsys.readouterr().err
    # ... and the schedule kept pace: it ended annealed, not cut off near its peak.
    rows, _ = read_metrics(result.run_dir)
    assert rows[-1]["lr"] < 0.01 * resolve_config(approach="scratch").lr


def test_a_pessimistic_plan_trains_more_steps_and_uses_its_time(synth_dir: Path, tmp_path: Path, one_thread: None,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A machine that got faster after timing: the plan holds a third of the steps that fit. The
    # schedule stretches over the time instead of ending early, and still ends annealed.
    real = job.plan_steps

    def pessimistic(**k: float) -> tuple[int, float]:
        steps, planned = real(**k)
        return max(1, steps // 3), planned

    monkeypatch.setattr(job, "plan_steps", pessimistic)
    monkeypatch.setattr(train, "PACE_MIN_STEPS", 4)  # a 20 s run plans about 11 steps here
    result = train_run(budgeted(synth_dir, tmp_path, 20, epochs=2000))
    assert result.state == "done" and result.budget["elapsed_s"] <= 20
    status = read_status(result.run_dir)
    assert status.steps_run > 1.5 * status.planned_steps  # the time, not the short plan, ended it
    err = capsys.readouterr().err
    assert "faster than timed" in err
    reached = re.search(r"reached step (\d+) of (\d+)", err)
    assert reached and reached[1] == reached[2]  # the whole schedule ran: it ended annealed
    rows, _ = read_metrics(result.run_dir)
    assert status.epochs == status.epoch == len(rows)  # the page's "epoch n/m" grew with the run


def one_cycle(length: int, lr: float = 0.1) -> torch.optim.lr_scheduler.OneCycleLR:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=length)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def paced(left: float, *, eval_s: float = 0.0, steps_per_epoch: int = 1000, max_steps: int = 2**62) -> Pace:
    """A pace whose time runs out `left` seconds from now, on a clock the test moves."""
    return Pace(end=left, eval_s=eval_s, steps_per_epoch=steps_per_epoch, max_steps=max_steps, clock=FakeClock())


def run_paced(scheduler: torch.optim.lr_scheduler.OneCycleLR, pace: Pace, *, steps: int, step_s: float,
              done: int = 0) -> int:
    """Training steps of `step_s` seconds each (and an evaluation of `pace.eval_s` at each epoch's
    end), `done` of them before this pass, until the pace says stop or `steps` ran; returns the
    steps run."""
    clock, cpu = pace.clock, torch.device("cpu")
    assert isinstance(clock, FakeClock)
    for step in range(steps):
        pace.check(scheduler, steps_done=done + step, pass_seconds=step_s * (done + step), ctx=Distributed(),
                   device=cpu)
        if pace.finished:
            return step
        scheduler.optimizer.step()
        pace.step(scheduler)
        clock.now += step_s
        if (done + step + 1) % pace.steps_per_epoch == 0:
            clock.now += pace.eval_s  # the epoch-end evaluation
    return steps


def test_pace_leaves_the_schedule_alone_when_the_steps_fit_exactly() -> None:
    scheduler = one_cycle(100)
    pace = paced(1.0, steps_per_epoch=100)
    assert run_paced(scheduler, pace, steps=200, step_s=0.01) == 100
    assert scheduler.last_epoch == 100 and pace.finished  # one schedule step per training step


def test_pace_stretches_the_schedule_when_more_steps_fit_than_planned() -> None:
    # Planned 100 steps; the machine is twice as fast as timed, so 200 steps fit in the time: the
    # schedule moves at half speed and ends annealed at about step 200, not at step 100.
    scheduler = one_cycle(100)
    pace = paced(2.0, steps_per_epoch=1000)
    ran = run_paced(scheduler, pace, steps=1000, step_s=0.01)
    assert 190 <= ran <= 201 and pace.finished
    assert scheduler.last_epoch == 100 and scheduler.get_last_lr()[0] < 1e-4


def test_a_stretched_schedule_never_runs_past_the_presets_length() -> None:
    # Time for 1000 steps, but the preset allows 150: the schedule ends at the 150th.
    scheduler = one_cycle(100)
    pace = paced(10.0, steps_per_epoch=1000, max_steps=150)
    ran = run_paced(scheduler, pace, steps=1000, step_s=0.01)
    assert 145 <= ran <= 150 and pace.finished and scheduler.last_epoch == 100


def test_pace_hurries_the_schedule_when_fewer_steps_fit_than_it_has_left() -> None:
    # After 30 steps of 1 s, 35 s are left for the other 70 scheduled steps: about half fit, so
    # the schedule moves about twice as fast, and ends annealed when the time does.
    scheduler = one_cycle(100)
    for _ in range(30):
        scheduler.optimizer.step()
        scheduler.step()
    pace = paced(35.0)
    ran = run_paced(scheduler, pace, steps=70, step_s=1.0, done=30)
    assert 30 <= ran <= 40 and pace.finished
    assert scheduler.last_epoch == 100  # never past the end: one-cycle would refuse that step
    assert scheduler.get_last_lr()[0] < 1e-4


def test_pace_counts_the_evaluations_still_to_come() -> None:
    # The same, but three epoch-end evaluations of 5 s are due before the end: fewer steps fit.
    scheduler, free = one_cycle(100), one_cycle(100)
    for _ in range(30):
        for schedule in (scheduler, free):
            schedule.optimizer.step()
            schedule.step()
    busy = run_paced(scheduler, paced(35.0, eval_s=5.0, steps_per_epoch=25), steps=70, step_s=1.0, done=30)
    idle = run_paced(free, paced(35.0, steps_per_epoch=25), steps=70, step_s=1.0, done=30)
    assert busy < idle and 28 <= busy <= 31  # 35 s less the evaluation at step 50
    assert scheduler.last_epoch == free.last_epoch == 100


def test_pace_stops_when_the_time_is_up() -> None:
    scheduler = one_cycle(100)
    pace = paced(-1.0, steps_per_epoch=100)
    assert run_paced(scheduler, pace, steps=100, step_s=0.01) == 0 and pace.finished


def test_evaluations_that_slow_down_move_the_guard_earlier(synth_dir: Path, tmp_path: Path, one_thread: None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine gets busy after the plan: every evaluation during training takes 5 s more than
    # timed, and so do the final ones. The guard must leave room for them.
    real = job.evaluate

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(5.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "evaluate", slow)
    started = time.monotonic()
    result = train_run(budgeted(synth_dir, tmp_path, 20, epochs=2000))
    assert result.state == "done" and time.monotonic() - started <= 20
    assert result.budget["elapsed_s"] <= 20


def test_a_budget_too_short_for_this_machine_fails_before_training_with_its_reason(
        synth_dir: Path, tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job, "time_step", lambda *a, **k: 100.0)  # a step takes longer than the budget
    result = train_run(budgeted(synth_dir, tmp_path, 30))
    assert result.state == "failed" and "too short on this machine" in result.error
    assert not (Path(result.run_dir) / RunDir.BEST).exists()


@pytest.mark.parametrize("seconds", [0.5, 9])
def test_a_budget_under_ten_seconds_is_refused_at_once(seconds: float, synth_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="at least 10 s"):
        resolve_config(approach="scratch", overrides={"budget": seconds})
    code = cli_main(["train", "--approach", "scratch", "--data", str(synth_dir), "--runs-dir", str(tmp_path),
                     "--budget", f"{seconds}s"])
    assert code == 2 and "at least 10 s" in capsys.readouterr().err and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- steps, warm-up, EMA

def test_steps_set_the_run_length_and_the_schedule(synth_dir: Path, tmp_path: Path, one_thread: None) -> None:
    config = resolve_config(approach="scratch", overrides={**TINY, "budget": 0, "steps": 7, "warmup": 0.5})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    status = read_status(result.run_dir)
    rows, _ = read_metrics(Path(result.run_dir))
    assert result.state == "done" and status.steps_run == 7
    assert rows[-1]["images"] == 7 * 16 and [r["images"] for r in rows] == sorted(r["images"] for r in rows)


def test_ema_weights_are_the_ones_evaluated_and_saved(synth_dir: Path, tmp_path: Path, one_thread: None) -> None:
    config = resolve_config(approach="scratch", overrides={**TINY, "budget": 0, "epochs": 1, "ema": 0.5})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    folder = RunDir(result.run_dir)
    best = torch.load(folder.best, weights_only=True)
    last = torch.load(folder.last, weights_only=True)
    assert "ema" in last and best["config"]["ema"] == 0.5
    # One epoch: best.pt holds the average that was evaluated, last.pt the raw weights beside it.
    name = "conv1.weight"
    assert not torch.equal(best["model"][name], last["model"][name])
    assert torch.equal(best["model"][name], last["ema"]["module." + name])


def test_no_ema_by_default() -> None:
    from speedsign.train import build_ema

    assert build_ema(torch.nn.Linear(2, 2), TrainConfig(approach="scratch")) is None


@pytest.mark.parametrize("approach", ["finetune", "frozen", "scratch"])
def test_every_approach_trains_to_a_budget_and_stops_at_its_epochs(approach: str, synth_dir: Path, tmp_path: Path,
                                                                   weights_file: Path, one_thread: None) -> None:
    overrides: dict[str, object] = {**TINY, "epochs": 2, "budget": 60}
    if approach != "scratch":
        overrides["weights"] = str(weights_file)
    config = resolve_config(approach=approach, overrides=overrides)
    started = time.monotonic()
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    assert result.state == "done" and time.monotonic() - started <= 60
    plan = json.loads(RunDir(result.run_dir).budget.read_text())
    # A fast machine: the preset's 2 epochs fit, and are the most a budget trains.
    assert plan["steps"] == 2 * plan["steps_per_epoch"] and result.epochs_run == 2
    assert plan["img_size"] == 16 and (approach == "frozen") == (plan["sizes"] == {})


# ---------------------------------------------------------------- progressive resizing

def test_progressive_sides_grow_from_min_size_to_the_input_side() -> None:
    from speedsign.train import train_size

    config = resolve_config(approach="scratch", overrides={"img_size": 64, "min_size": 32})
    sides = [train_size(config, step, 100) for step in range(100)]
    assert sides[0] == 32 and sides[-1] == 64 and sides == sorted(sides)
    assert all(side % 8 == 0 for side in sides) and set(sides[75:]) == {64}  # the last quarter at full size
    assert train_size(resolve_config(approach="scratch"), 0, 100) == 64  # off by default
    with pytest.raises(UserError, match="min_size"):
        resolve_config(approach="scratch", overrides={"img_size": 32, "min_size": 48})


def test_mean_step_seconds_lies_between_the_two_ends() -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 64, "min_size": 32})
    mean = budget.mean_step_seconds(config, {32: 0.1, 64: 0.4})
    assert 0.1 < mean < 0.4
    assert budget.mean_step_seconds(resolve_config(approach="scratch"), {64: 0.4}) == 0.4


def test_a_smaller_training_side_shrinks_the_whole_image() -> None:
    from speedsign.augment import prepare_batch

    config = resolve_config(approach="scratch", overrides={"img_size": 32, "min_size": 16, "augment": "signs"})
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    assert prepare_batch(images, config=config, train=True, generator=generator, size=16).shape == (4, 3, 16, 16)
    assert prepare_batch(images, config=config, train=False).shape == (4, 3, 32, 32)  # evaluation: full side
    flat = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    small = prepare_batch(flat, config=config, train=False, size=16)
    assert torch.allclose(small, prepare_batch(flat, config=config, train=False)[..., :16, :16])


def test_a_progressive_run_trains_and_is_evaluated_at_full_size(synth_dir: Path, tmp_path: Path,
                                                               one_thread: None) -> None:
    config = resolve_config(approach="scratch", overrides={"img_size": 32, "min_size": 16, "batch_size": 16,
                                                           "epochs": 2, "budget": 0})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    assert result.state == "done"
    assert torch.load(RunDir(result.run_dir).best, weights_only=True)["config"]["min_size"] == 16


def test_a_progressive_run_chooses_its_precision_for_its_smallest_side(tmp_path: Path) -> None:
    # bf16 on a CPU is wrong at 16 px: a run growing from 16 to 32 px diverged with a NaN loss
    # when its precision was chosen for 32 px.
    from speedsign.train import resolve_precision, smallest_side

    config = resolve_config(approach="scratch", overrides={"img_size": 32, "min_size": 16})
    assert smallest_side(config) == 16 and smallest_side(resolve_config(approach="scratch")) == 64
    assert resolve_precision("auto", torch.device("cpu"), img_size=smallest_side(config)) == "fp32"
    request = TrainRequest(config=config, data_dir=tmp_path, runs_dir=tmp_path, device="cpu", precision="bf16")
    with pytest.raises(UserError, match="16 px"):
        job.check_request(request)


# ---------------------------------------------------------------- "auto" augmentation

@pytest.mark.parametrize("steps, expected", [(7, "none"), (60, "signs")])
def test_auto_augmentation_is_decided_by_the_run_length_and_recorded(steps: int, expected: str, synth_dir: Path,
                                                                      tmp_path: Path, one_thread: None) -> None:
    # Steps of 16 images against the set's training split: 7 steps are well under a pass, 60 are
    # over six passes (the tiny set holds about 140 training images).
    config = resolve_config(approach="scratch", overrides={**TINY, "budget": 0, "steps": steps, "augment": "auto",
                                                           "img_size": 16})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    folder = RunDir(result.run_dir)
    assert result.state == "done" and read_status(result.run_dir).augment == expected
    assert torch.load(folder.best, weights_only=True)["config"]["augment"] == expected  # what it trained with
    assert json.loads(folder.config.read_text())["config"]["augment"] == "auto"  # what was asked: the run's identity


@pytest.mark.parametrize("budget_s, expected, step_s", [(30, "none", 0.5), (100, "signs", 1.0)])
def test_a_budget_that_turns_auto_augmentation_off_plans_again_with_the_cheaper_steps(
        budget_s: int, expected: str, step_s: float, synth_dir: Path, tmp_path: Path, one_thread: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend a step takes 1 s with augmentation and 0.5 s without: the first plan times "signs"
    # (the costlier recipe); a run too short for it is planned again at the time of "none".
    def fake_time_step(module: torch.nn.Module, *, config: TrainConfig, features: bool, device: torch.device,
                       precision: str, img_size: int) -> float:
        return 0.5 if config.augment == "none" else 1.0

    monkeypatch.setattr(job, "time_step", fake_time_step)
    config = resolve_config(approach="scratch", overrides={**TINY, "epochs": 20, "augment": "auto",
                                                           "budget": budget_s})
    result = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu"))
    assert result.state == "done"
    folder = RunDir(result.run_dir)
    plan = BudgetPlan.from_dict(json.loads(folder.budget.read_text()))
    assert (plan.augment, plan.step_s, plan.sizes) == (expected, step_s, {"16": 1.0})
    assert read_status(result.run_dir).augment == expected
    assert torch.load(folder.best, weights_only=True)["config"]["augment"] == expected
    assert BudgetPlan.from_dict({k: v for k, v in plan.to_dict().items() if k != "augment"}).augment == ""  # old plans
