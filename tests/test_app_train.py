"""AppTest of the Train page: defaults that work here, one state per run, jobs that outlive a
reload, readable values, a "done" message.

The app runs in-process (streamlit.testing) on a private data root and runs folder. Every
test here is offline with no ImageNet weights (a private torch cache, no network), unless it
says otherwise, so the defaults do not depend on the machine. Jobs are faked as the run store
describes them (a pid, a heartbeat, an error), so no test waits for training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from speedsign import datasets, jobs, models, training
from speedsign.config import APPROACHES
from speedsign.jobs import Launch
from speedsign.models import OFFLINE_REASON
from speedsign.runs import list_runs

from app_support import APP, TIMEOUT, plain, texts

CLI_OFFLINE_ERROR = models._offline_message(Path("/root/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth"))
READABLE_TIME = re.compile(r"^(just now|\d+ min ago|\d{4}-\d{2}-\d{2} \d{2}:\d{2}|–)$")


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ImageNet weights and no network; the page's cached ImageNet check starts empty."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(models, "_can_reach", lambda host, timeout=5.0: False)
    st.cache_data.clear()


@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synth_dir: Path) -> dict[str, Path]:
    """A data root holding the session's synthetic set (a link) and an empty runs folder."""
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    runs.mkdir()
    (data / "synth").symlink_to(synth_dir, target_is_directory=True)
    monkeypatch.setenv("SPEEDSIGN_DATA", str(data))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    monkeypatch.setattr(datasets, "FIRST_RUN_PER_CLASS", 10)
    return {"data": data, "runs": runs}


@pytest.fixture
def with_runs(app_env: dict[str, Path], runs_with_results: dict[str, Path]) -> dict[str, Path]:
    """The three finished tiny runs (links) in the app's runs folder, so tests can add runs beside them."""
    for run_dir in runs_with_results.values():
        (app_env["runs"] / run_dir.name).symlink_to(run_dir, target_is_directory=True)
    return app_env


def fake_job(runs_dir: Path, source_run: Path, *, run_id: str, state: str = "running", error: str | None = None,
             pid: int | None = None, epoch: int = 1, ended_ago: float | None = None, metrics: bool = True) -> Path:
    """A run folder as a job leaves it: live (this process's pid, a fresh heartbeat) unless told
    otherwise; `ended_ago` seconds since its last status write, for an ended one."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    shutil.copy(source_run / "config.json", run_dir / "config.json")
    now = time.time()
    status = {"state": state, "pid": pid if pid is not None else os.getpid(), "host": socket.gethostname(),
              "heartbeat": now, "epoch": epoch, "epochs": 2, "step": 1, "steps": 4, "phase": "training",
              "created": iso(now - 600), "queued_at": now - 600, "device_key": "cpu"}
    if ended_ago is not None:
        status.update(updated=iso(now - ended_ago), finished=iso(now - ended_ago), heartbeat=now - ended_ago)
    if error:
        status["error"] = error
    (run_dir / "status.json").write_text(json.dumps(status))
    if metrics:
        rows = [json.loads(line) for line in (source_run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:epoch]))
    return run_dir


def set_status(run_dir: Path, **values: object) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    status.update(values)
    (run_dir / "status.json").write_text(json.dumps(status))


def iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def everything(at: AppTest) -> str:
    """Every text the page shows: headings, markdown, captions, notices, metrics, toasts, option labels."""
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error",
             "metric", "toast")
    parts = [plain(getattr(e, "label", "")) + " " + plain(e.value) for kind in kinds for e in getattr(at, kind)]
    for box in at.selectbox:
        parts += [plain(option) for option in box.options]
    return "\n".join(parts)


def tables(at: AppTest) -> str:
    return "\n".join(frame.value.astype(str).to_csv() for frame in at.dataframe)


def all_runs_table(at: AppTest):  # noqa: ANN201 (a DataFrame)
    """The All runs table: the page's last table."""
    return at.dataframe[-1].value


def card_states(at: AppTest) -> dict[str, str]:
    """{run id: state} from the job cards' headings ("**scratch** · ID · state **failed**")."""
    found = {}
    for text in texts(at, "markdown"):
        match = re.search(r"· (\S+) · state \*\*(\w+)\*\*", text)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def launch_button(at: AppTest):  # noqa: ANN201 (a Button)
    return next(b for b in at.button if b.label == "Launch")


# ---------------------------------------------------------------- defaults

def test_offline_without_runs_defaults_to_scratch_and_says_why_in_app_words(app_env: dict[str, Path]) -> None:
    at = start()
    assert at.multiselect(key="train-approaches").value == ["scratch"]
    note = " ".join(texts(at, "info"))
    assert "finetune and frozen need a pretrained backbone" in note and "offline" in note
    assert "--weights" not in everything(at)
    assert not launch_button(at).disabled
    # Choosing them anyway: the reason is on the page before Launch, and Launch is off.
    at.multiselect(key="train-approaches").set_value(["finetune", "scratch"]).run()
    assert not at.exception
    assert at.selectbox(key="train-weights").value.spec == "imagenet"
    warning = " ".join(texts(at, "warning"))
    assert OFFLINE_REASON in warning and "train scratch first" in warning
    assert launch_button(at).disabled
    assert "Launch is off" in everything(at)
    assert "--weights" not in everything(at)
    # Another backbone (a file): Launch is on again.
    at.selectbox(key="train-weights").select(next(o for o in training.weights_options([]) if o.spec == "path")).run()
    assert at.selectbox(key="train-weights").value.spec == "path"
    assert not launch_button(at).disabled


def test_a_usable_run_makes_all_three_the_default_with_its_backbone(with_runs: dict[str, Path]) -> None:
    best = training.usable_backbones(list_runs(with_runs["runs"]))[0]
    at = start()
    assert at.multiselect(key="train-approaches").value == list(APPROACHES)
    assert at.selectbox(key="train-weights").value.spec == f"run:{best.run_id}"
    assert not launch_button(at).disabled
    assert not at.warning and "need a pretrained backbone" not in everything(at)
    assert "--weights" not in everything(at)


def test_offline_a_published_model_makes_all_three_the_default_with_its_backbone(
        app_env: dict[str, Path], published_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_MODELS", str(published_models["frozen"].parent))
    at = start()
    assert at.multiselect(key="train-approaches").value == list(APPROACHES)
    choice = at.selectbox(key="train-weights").value
    assert choice.spec.startswith("bundle:tiny-") and "published" in choice.label
    assert not launch_button(at).disabled
    assert "need a pretrained backbone" not in everything(at)
    # The Train page's own tables list runs only: a published model is not a job to cancel or resume.
    assert "bundle:" not in " ".join(str(frame.value) for frame in at.dataframe)


def test_imagenet_is_the_default_backbone_when_it_can_be_downloaded(with_runs: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_can_reach", lambda host, timeout=5.0: True)
    at = start()
    assert at.multiselect(key="train-approaches").value == list(APPROACHES)
    assert at.selectbox(key="train-weights").value.spec == "imagenet"
    assert not launch_button(at).disabled
    assert "downloads them" in everything(at)


# ---------------------------------------------------------------- one state per run

def test_failed_runs_read_failed_in_their_card_and_the_table(with_runs: dict[str, Path],
                                                             runs_with_results: dict[str, Path]) -> None:
    runs = with_runs["runs"]
    stored = fake_job(runs, runs_with_results["frozen"], run_id="frozen-20991231-offline01", state="failed",
                      error=CLI_OFFLINE_ERROR, epoch=0, ended_ago=30)
    dead = fake_job(runs, runs_with_results["scratch"], run_id="scratch-20991231-deadjob01", pid=dead_pid())
    shutil.copy(runs_with_results["scratch"] / "last.pt", dead / "last.pt")  # what it would resume from
    at = start()
    cards = card_states(at)
    table = all_runs_table(at).set_index("run")
    for run_dir in (stored, dead):
        assert cards.get(run_dir.name) == "failed", cards
        assert table.loc[run_dir.name, "state"] == "failed"
    assert "process is gone" in table.loc[dead.name, "problem"]
    assert "No job is running" in everything(at)
    # The CLI advice of the stored error becomes the app's: no flags on the page or in the table.
    errors = " ".join(texts(at, "error"))
    assert OFFLINE_REASON in errors and "train scratch first" in errors
    assert "--weights" not in everything(at) and "--weights" not in tables(at)


def test_a_running_job_is_running_in_card_queue_and_table(with_runs: dict[str, Path],
                                                          runs_with_results: dict[str, Path]) -> None:
    live = fake_job(with_runs["runs"], runs_with_results["scratch"], run_id="scratch-20991231-livejob01")
    at = start()
    assert card_states(at)[live.name] == "running"
    queue = at.dataframe[0].value
    assert queue["run"].tolist() == [live.name] and queue["state"].tolist() == ["running"]
    assert all_runs_table(at).set_index("run").loc[live.name, "state"] == "running"


def test_launch_notice_follows_the_job_it_started(with_runs: dict[str, Path], runs_with_results: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = fake_job(with_runs["runs"], runs_with_results["scratch"], run_id="scratch-20991231-launched1",
                       state="queued", pid=0, epoch=0)
    set_status(run_dir, pid=None)
    monkeypatch.setattr(jobs, "launch", lambda request, nproc=1: Launch(run_dir.name, run_dir, "queued", False, None))
    at = start()
    at.multiselect(key="train-approaches").set_value(["scratch"]).run()
    launch_button(at).click().run()
    assert not at.exception and not at.error, texts(at, "error")
    assert any("queued in the background" in t for t in texts(at, "toast")), texts(at, "toast")
    assert not any("queued" in t for t in texts(at, "info"))  # no lasting notice that can go stale
    assert card_states(at)[run_dir.name] == "queued"
    set_status(run_dir, state="failed", error="out of memory", updated=iso(time.time()))
    at.run()
    assert card_states(at)[run_dir.name] == "failed"
    assert all_runs_table(at).set_index("run").loc[run_dir.name, "state"] == "failed"
    assert not any("queued" in t for t in texts(at, "toast") + texts(at, "info"))  # nothing says queued now
    assert any(run_dir.name in t and "failed" in t for t in texts(at, "toast"))


# ---------------------------------------------------------------- jobs outlive a reload

def test_recent_failed_jobs_are_listed_in_a_fresh_session(with_runs: dict[str, Path],
                                                          runs_with_results: dict[str, Path]) -> None:
    runs = with_runs["runs"]
    recent = fake_job(runs, runs_with_results["scratch"], run_id="scratch-20991231-failednow", state="failed",
                      error="CUDA out of memory", ended_ago=120)
    old = fake_job(runs, runs_with_results["scratch"], run_id="scratch-20991231-failedold", state="failed",
                   error="an old failure", ended_ago=3 * 24 * 3600)
    at = start()  # a fresh session: nothing launched from it
    cards = card_states(at)
    assert cards.get(recent.name) == "failed" and old.name not in cards, cards
    assert any("CUDA out of memory" in t for t in texts(at, "error"))
    assert old.name in all_runs_table(at)["run"].tolist()  # still in All runs
    # The finished runs of the fixture ended within the day: listed too, as done.
    assert sum(state == "done" for state in cards.values()) == len(runs_with_results)


# ---------------------------------------------------------------- readable values

def test_tables_and_cards_show_no_none_and_readable_times(with_runs: dict[str, Path],
                                                          runs_with_results: dict[str, Path]) -> None:
    fake_job(with_runs["runs"], runs_with_results["scratch"], run_id="scratch-20991231-nometrics", epoch=0,
             metrics=False)
    at = start()
    shown = tables(at) + everything(at)
    assert not re.search(r"\b(None|nan|NaN)\b", shown), shown
    table = all_runs_table(at)
    assert table.loc[table["run"] == "scratch-20991231-nometrics", "best val acc"].tolist() == ["–"]
    for column in ("created", "ended"):
        assert all(READABLE_TIME.match(value) for value in table[column]), table[column].tolist()
    assert not any("T" in value and "+" in value for value in table["created"])  # no raw ISO
    assert "–" in [m.value for m in at.metric if m.label == "Best val accuracy"]
    assert any(re.search(r"created (just now|\d+ min ago)", t) for t in texts(at, "caption"))


# ---------------------------------------------------------------- done

def test_a_job_that_finishes_while_watched_says_done_once(with_data_runs_and_job: tuple[AppTest, Path]) -> None:
    at, run_dir = with_data_runs_and_job
    assert card_states(at)[run_dir.name] == "running"
    assert not at.toast
    set_status(run_dir, state="done", phase=None, epoch=2, best_val_acc=0.875, finished=iso(time.time()),
               updated=iso(time.time()))
    at.run()
    assert card_states(at)[run_dir.name] == "done"
    toasts = texts(at, "toast")
    assert len(toasts) == 1 and run_dir.name in toasts[0] and "0.875" in toasts[0], toasts
    success = " ".join(texts(at, "success"))
    assert "Done: 2 epoch(s), best val accuracy 0.875" in success
    links = [link.proto.label for link in at.get("page_link")]
    assert "Learning curves" in links and "Evaluation" in links, links
    at.run()  # watched again: the toast is not repeated
    assert not at.toast


@pytest.fixture
def with_data_runs_and_job(with_runs: dict[str, Path], runs_with_results: dict[str, Path]) -> tuple[AppTest, Path]:
    """The Train page watching a running job whose best.pt is in place (done needs it)."""
    run_dir = fake_job(with_runs["runs"], runs_with_results["scratch"], run_id="scratch-20991231-finishing")
    shutil.copy(runs_with_results["scratch"] / "best.pt", run_dir / "best.pt")
    return start(), run_dir


def test_a_run_already_done_when_first_seen_gets_no_toast(with_runs: dict[str, Path]) -> None:
    at = start()
    assert not at.toast
    assert any(t.startswith("Done:") for t in texts(at, "success"))


# ---------------------------------------------------------------- time budget

def test_the_budget_beside_the_preset_reaches_every_job(app_env: dict[str, Path], weights_file: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from speedsign.config import FAST_BUDGETS

    launched: list = []
    monkeypatch.setattr(jobs, "launch", lambda request, nproc=1: launched.append(request) or Launch(
        "scratch-x", app_env["runs"] / "scratch-x", "queued", False, None))
    at = start()
    box = at.selectbox(key="train-budget-fast")
    assert box.value is None and [plain(o) for o in box.options][:2] == ["preset's", "epochs"]
    assert "5 min" in [plain(o) for o in box.options]
    at.multiselect(key="train-approaches").set_value(["scratch", "frozen"]).run()
    at.selectbox(key="train-weights").select(next(o for o in training.weights_options([]) if o.spec == "path")).run()
    at.text_input(key="train-weights-path").set_value(str(weights_file)).run()
    launch_button(at).click().run()
    # the preset's budget is each approach's own, as on the command line
    assert [r.config.budget for r in launched] == [FAST_BUDGETS["scratch"], FAST_BUDGETS["frozen"]]
    at.selectbox(key="train-budget-fast").set_value(600.0).run()
    launch_button(at).click().run()
    assert [r.config.budget for r in launched[-2:]] == [600.0, 600.0]
    at.selectbox(key="train-budget-fast").set_value(0.0).run()
    launch_button(at).click().run()
    assert launched[-1].config.budget == 0  # "epochs": no budget, whatever the preset's
    at.selectbox(key="train-preset").set_value("tutorial").run()
    assert at.selectbox(key="train-budget-tutorial").value == 0  # the report's settings have none


def test_a_budgeted_job_card_shows_its_plan_and_the_clock(with_runs: dict[str, Path],
                                                          runs_with_results: dict[str, Path]) -> None:
    run_dir = fake_job(with_runs["runs"], runs_with_results["scratch"], run_id="scratch-20991231-budget1")
    set_status(run_dir, budget_s=300.0, planned_s=287.0, planned_steps=412, deadline=time.time() + 125)
    at = start()
    shown = everything(at)
    assert "budget 5 min: 412 steps planned to take 4 min 47 s" in shown, shown
    progress = [plain(p.proto.text) for p in at.get("progress")]
    assert any(re.search(r"2 min (0[0-5]) s left", text) for text in progress), progress
