"""AppTest of the shared app's limits: public mode (no control that writes, and a crafted widget
state writes nothing), the owner's unlock, server paths confined to the allowed roots, and the
quotas (one active launch per session, a cap on active jobs, a disk budget).

No test trains: jobs.launch is replaced by a recorder, and active jobs are run folders that
say so (config.json as launch writes it, a live pid on this host, a fresh heartbeat).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from speedsign import jobs, models, ui
from speedsign.config import resolve_config
from speedsign.job import TrainRequest, plan_run, write_run_config
from speedsign.jobs import Launch

from app_support import APP, TIMEOUT, plain, texts

PAGES = ("home", "dataset", "train", "curves", "evaluation", "classify", "compare")
WRITING_BUTTONS = {"Launch", "Cancel", "Render a synthetic set", "Import GTSRB", "Import the zip", "Use this folder"}
WRITING_INPUTS = {"server-folder", "gtsrb-source", "train-weights-path", "dataset-zip-name"}
PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ImageNet weights and no network (the Train page then defaults to scratch alone)."""
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
    return {"data": data, "runs": runs}


@pytest.fixture
def public(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_MODE", "public")
    monkeypatch.setenv("SPEEDSIGN_PASSWORD", PASSWORD)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[TrainRequest]:
    """Every request that reached jobs.launch (none trains)."""
    seen: list[TrainRequest] = []

    def record(request: TrainRequest, nproc: int = 1) -> Launch:
        seen.append(request)
        return Launch("scratch-20990101-recorded1", request.runs_dir / "scratch-20990101-recorded1", "queued",
                      False, None)

    monkeypatch.setattr(jobs, "launch", record)
    return seen


def active_run(runs: Path, data: Path, *, seed: int = 0, session: str | None = None) -> Path:
    """A run folder as launch leaves it for a job at work (nothing trains)."""
    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 2, "batch_size": 16,
                                                           "seed": seed})
    request = TrainRequest(config=config, data_dir=data, runs_dir=runs, device="cpu", session=session)
    plan = plan_run(request)
    plan.run_dir.mkdir(parents=True)
    write_run_config(plan, request)
    now = time.time()
    status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now,
              "epoch": 0, "epochs": 2, "created": "2099-01-01T00:00:00+00:00", "queued_at": now,
              "device_key": "cpu", "phase": "training"}
    (plan.run_dir / "status.json").write_text(json.dumps(status))
    return plan.run_dir


def start(page: str = "home", *, secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if secrets:
        at.secrets.update(secrets)
    at.run()
    if page != "home":
        at.switch_page(f"pages/{page}.py").run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def button(at: AppTest, label: str):  # noqa: ANN201 (a Button)
    return next(b for b in at.button if b.label == label)


def writing_controls(at: AppTest) -> list[str]:
    """The controls on the page (sidebar included) that write or touch a server path."""
    found = [f"button {b.label}" for b in at.button if b.label in WRITING_BUTTONS]
    found += [f"text_input {t.key}" for t in at.text_input if t.key in WRITING_INPUTS or "GTSRB" in t.label]
    found += [f"file_uploader {u.proto.label}" for u in at.get("file_uploader") if u.proto.label == "Data-set zip"]
    return found


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def unlock(at: AppTest, password: str) -> AppTest:
    return at.sidebar.text_input(key=ui.PASSWORD_KEY).input(password).run()


# ---------------------------------------------------------------- public mode: nothing that writes

def test_public_mode_shows_no_writing_control_on_any_page(public: None, app_env: dict[str, Path],
                                                          synth_dir: Path) -> None:
    active_run(app_env["runs"], synth_dir)
    at = start()
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
        assert not writing_controls(at), (page, writing_controls(at))
        assert at.sidebar.text_input(key=ui.PASSWORD_KEY).label == "Owner: unlock"
        if page in ("dataset", "train"):
            assert any("for the app's owner" in t for t in texts(at, "info")), texts(at, "info")
    at.switch_page("pages/train.py").run()
    assert any(m.label == "Best val accuracy" for m in at.metric)  # the job is shown, without Cancel


def test_the_same_page_in_owner_mode_has_the_controls(app_env: dict[str, Path], synth_dir: Path) -> None:
    """The check above would see the controls: owner mode (the default) draws them all."""
    active_run(app_env["runs"], synth_dir)
    at = start("dataset")
    shown = writing_controls(at)
    assert {"button Render a synthetic set", "button Import GTSRB", "button Use this folder",
            "text_input server-folder", "text_input gtsrb-source", "file_uploader Data-set zip"} <= set(shown), shown
    at.switch_page("pages/train.py").run()
    assert {"button Launch", "button Cancel"} <= set(writing_controls(at)), writing_controls(at)
    assert not [t for t in at.text_input if t.key == ui.PASSWORD_KEY]  # no unlock box in owner mode


def test_a_crafted_widget_state_writes_nothing_in_public_mode(public: None, app_env: dict[str, Path],
                                                             synth_dir: Path, tmp_path: Path,
                                                             launches: list[TrainRequest]) -> None:
    data, runs = app_env["data"], app_env["runs"]
    live = active_run(runs, synth_dir)
    before_data, before_runs = listing(data), listing(runs)
    at = start("dataset")
    # Values for the hidden widgets' keys, as a crafted client would send them, then reruns.
    at.session_state["server-folder"] = str(synth_dir)
    at.session_state["server-folder-use"] = True
    at.session_state["synth-render"] = True
    at.session_state["gtsrb-source"] = str(tmp_path)
    at.session_state["gtsrb-import"] = True
    at.session_state["_dataset_pending"] = "/etc"  # a data set outside every allowed root
    at.run()
    assert_clean(at)
    at.switch_page("pages/train.py").run()
    at.session_state["train-approaches"] = ["scratch"]
    at.session_state["train-launch"] = True
    at.session_state[f"cancel-{live.name}"] = True
    at.run()
    assert_clean(at)
    assert listing(data) == before_data and listing(runs) == before_runs
    assert not launches and not (live / "cancel.request").exists()
    assert at.sidebar.selectbox(key="dataset").value == str(data / "synth")


def test_the_action_refuses_even_where_a_control_is_drawn(public: None, app_env: dict[str, Path],
                                                          synth_dir: Path, launches: list[TrainRequest],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A page that drew a writing control by mistake still writes nothing: the check is at the action."""
    data, runs = app_env["data"], app_env["runs"]
    live = active_run(runs, synth_dir)
    before_data, before_runs = listing(data), listing(runs)
    monkeypatch.setattr(ui, "can_write", lambda: True)  # every control drawn; the actions still check
    at = start("dataset")
    for label, setup in (("Use this folder", lambda: at.text_input(key="server-folder").set_value(str(synth_dir))),
                         ("Render a synthetic set", lambda: None),
                         ("Import GTSRB", lambda: at.text_input(key="gtsrb-source").set_value(str(synth_dir)))):
        setup()
        button(at, label).click().run()
        assert_clean(at)
        assert any("for the app's owner" in e for e in texts(at, "error")), (label, texts(at, "error"))
    at.switch_page("pages/train.py").run()
    button(at, "Launch").click().run()
    assert any("Training is for the app's owner" in e for e in texts(at, "error")), texts(at, "error")
    button(at, "Cancel").click().run()
    assert any("Cancelling a job is for the app's owner" in e for e in texts(at, "error")), texts(at, "error")
    assert listing(data) == before_data and listing(runs) == before_runs
    assert not launches and not (live / "cancel.request").exists()
    assert at.sidebar.selectbox(key="dataset").value == str(data / "synth")


# ---------------------------------------------------------------- the owner's unlock

def test_wrong_password_stays_locked_the_right_one_unlocks_this_session_only(
        public: None, app_env: dict[str, Path], launches: list[TrainRequest]) -> None:
    at = start("train")
    unlock(at, "wrong password")
    assert_clean(at)
    assert "Wrong password: still locked." in texts(at, "error")
    assert not writing_controls(at)
    assert at.sidebar.text_input(key=ui.PASSWORD_KEY).value == ""  # never kept in the box
    unlock(at, PASSWORD)
    assert_clean(at)
    assert not at.error, texts(at, "error")
    assert "Owner: unlocked in this browser session." in texts(at, "caption")
    button(at, "Launch").click().run()
    assert_clean(at)
    assert len(launches) == 1 and launches[0].session == at.session_state[ui.SESSION_ID_KEY]
    at.switch_page("pages/dataset.py").run()
    assert "button Use this folder" in writing_controls(at)
    other = start("train")  # another browser session: still locked
    assert not writing_controls(other)
    button(at, "Lock").click().run()  # and the owner can lock again
    at.switch_page("pages/train.py").run()
    assert not writing_controls(at)


def test_a_forged_unlock_flag_does_not_unlock(public: None, app_env: dict[str, Path]) -> None:
    at = start("train")
    at.session_state[ui.UNLOCK_KEY] = True
    at.run()
    assert not writing_controls(at)


def test_public_mode_without_a_password_cannot_be_unlocked(app_env: dict[str, Path],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_MODE", "public")
    at = start("train")
    assert not [t for t in at.text_input if t.key == ui.PASSWORD_KEY]
    assert any("No owner password is set" in c for c in texts(at, "caption"))
    assert not writing_controls(at)


def test_an_unknown_mode_is_public_with_a_message(app_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_MODE", "pubic")
    at = start("dataset")
    assert any("pubic" in w and "public mode" in w for w in texts(at, "warning")), texts(at, "warning")
    assert not writing_controls(at)


def test_public_mode_and_password_from_the_secrets(app_env: dict[str, Path]) -> None:
    secrets = {"speedsign": {"mode": "public", "password": "from-secrets"}}
    at = start("dataset", secrets=secrets)
    assert not writing_controls(at)
    unlock(at, "from-secrets")
    assert "button Use this folder" in writing_controls(at)


# ---------------------------------------------------------------- server paths confined to the allowed roots

def use_folder(at: AppTest, text: str) -> AppTest:
    at.text_input(key="server-folder").set_value(text).run()
    return button(at, "Use this folder").click().run()


def test_server_folders_outside_the_allowed_roots_are_refused(app_env: dict[str, Path], synth_dir: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_ALLOWED_PATHS", "")  # only the data and runs folders
    data = app_env["data"]
    (data / "escape").symlink_to(synth_dir.parent, target_is_directory=True)
    at = start("dataset")
    for text in (str(synth_dir),  # outside
                 f"{data}/../../{synth_dir.relative_to(tmp_path.parent)}",  # .. out of the data folder
                 str(data / "synth"),  # a link in the data folder to a folder outside
                 str(data / "escape" / "synth")):
        use_folder(at, text)
        assert_clean(at)
        errors = " ".join(texts(at, "error"))
        assert "outside the folders this app may read" in errors and str(data.resolve()) in errors, (text, errors)
        assert str(app_env["runs"].resolve()) in errors
        assert at.sidebar.selectbox(key="dataset").value == str(data / "synth"), text
    # Inside the data folder: taken (resolved).
    shutil.copytree(synth_dir, data / "copied")
    use_folder(at, f"{data}/./copied/../copied")
    assert_clean(at)
    assert not at.error, texts(at, "error")
    assert at.sidebar.selectbox(key="dataset").value == str((data / "copied").resolve())
    # A folder the owner allows: taken too.
    monkeypatch.setenv("SPEEDSIGN_ALLOWED_PATHS", str(synth_dir.parent))
    use_folder(at, str(synth_dir))
    assert not at.error, texts(at, "error")
    assert at.sidebar.selectbox(key="dataset").value == str(synth_dir)


def test_gtsrb_source_and_weights_file_outside_are_refused(app_env: dict[str, Path], synth_dir: Path,
                                                           launches: list[TrainRequest],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from speedsign import training

    monkeypatch.setenv("SPEEDSIGN_ALLOWED_PATHS", "")
    at = start("dataset")
    at.text_input(key="gtsrb-source").set_value("/etc").run()
    button(at, "Import GTSRB").click().run()
    assert any("outside the folders this app may read" in e for e in texts(at, "error")), texts(at, "error")
    assert sorted(p.name for p in app_env["data"].iterdir()) == ["synth"]
    at.switch_page("pages/train.py").run()
    at.multiselect(key="train-approaches").set_value(["frozen"]).run()
    path_option = next(o for o in training.weights_options([]) if o.spec == "path")
    at.selectbox(key="train-weights").set_value(path_option).run()
    for text in ("/etc/passwd", "imagenet", f"{app_env['runs']}/../../x.pth"):
        at.text_input(key="train-weights-path").set_value(text).run()
        button(at, "Launch").click().run()
        assert_clean(at)
        assert any("outside the folders this app may read" in e for e in texts(at, "error")), (text, texts(at, "error"))
    assert not launches


# ---------------------------------------------------------------- quotas

def test_one_active_launch_per_session(app_env: dict[str, Path], synth_dir: Path,
                                       launches: list[TrainRequest]) -> None:
    at = start("train")
    at.session_state[ui.SESSION_ID_KEY] = "session-one"
    at.run()
    active_run(app_env["runs"], synth_dir, session="session-one")
    active_run(app_env["runs"], synth_dir, seed=1, session="someone-else")
    button(at, "Launch").click().run()
    assert_clean(at)
    errors = " ".join(texts(at, "error"))
    assert "this browser session already has 1 job(s) queued or running" in plain(errors), errors
    assert not launches
    other = start("train")  # another session (someone-else's job is not its own either)
    button(other, "Launch").click().run()
    assert not other.error, texts(other, "error")
    assert len(launches) == 1 and launches[0].session not in (None, "session-one")


def test_a_cap_on_active_jobs_from_every_session(app_env: dict[str, Path], synth_dir: Path,
                                                 launches: list[TrainRequest],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_MAX_JOBS", "2")
    active_run(app_env["runs"], synth_dir, session="a")
    at = start("train")
    button(at, "Launch").click().run()
    assert not at.error and len(launches) == 1  # 1 active of 2: taken
    active_run(app_env["runs"], synth_dir, seed=1, session=None)  # e.g. started from the command line
    other = start("train")
    button(other, "Launch").click().run()
    assert_clean(other)
    errors = " ".join(texts(other, "error"))
    assert "2 job(s) are queued or running, the most this app takes at once (2)" in errors, errors
    assert len(launches) == 1


def test_the_disk_budget_refuses_a_render_and_a_launch_and_deletes_nothing(
        app_env: dict[str, Path], synth_dir: Path, launches: list[TrainRequest],
        monkeypatch: pytest.MonkeyPatch) -> None:
    data, runs = app_env["data"], app_env["runs"]
    (runs / "kept.bin").write_bytes(b"x" * 100_000)
    monkeypatch.setenv("SPEEDSIGN_DISK_BUDGET_MB", "0.05")
    before_data, before_runs = listing(data), listing(runs)
    at = start("dataset")
    button(at, "Render a synthetic set").click().run()
    assert_clean(at)
    errors = " ".join(texts(at, "error"))
    assert "Rendering a synthetic set" in errors and "disk budget" in errors, errors
    at.switch_page("pages/train.py").run()
    button(at, "Launch").click().run()
    errors = " ".join(texts(at, "error"))
    assert "disk budget" in errors, errors
    assert not launches
    assert listing(data) == before_data and listing(runs) == before_runs
    assert (runs / "kept.bin").stat().st_size == 100_000
    # With room for it, the estimate alone decides: a small render is taken.
    monkeypatch.setenv("SPEEDSIGN_DISK_BUDGET_MB", "50")
    at.switch_page("pages/dataset.py").run()
    next(n for n in at.number_input if n.label == "Images per class").set_value(10).run()
    button(at, "Render a synthetic set").click().run()
    assert_clean(at)
    assert not at.error, texts(at, "error")
    assert (data / "synth-2" / "train").is_dir()
