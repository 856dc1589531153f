"""Access and quotas as plain functions: the settings, the owner's password, server paths
confined to the allowed roots, the job limits and the disk budget (speedsign.access, speedsign.quotas)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from speedsign import access, quotas
from speedsign.errors import UserError
from speedsign.job import TrainRequest, plan_run, read_request, write_run_config
from speedsign.runs import RunInfo, RunStatus

# ---------------------------------------------------------------- settings


def test_nothing_set_is_owner_mode_with_the_default_quotas() -> None:
    settings = access.load_settings({}, {})
    assert settings.mode == "owner" and not settings.public and settings.can_write()
    assert (settings.max_jobs, settings.session_jobs, settings.disk_budget_mb) == (4, 1, 2000.0)
    assert settings.allowed_paths == () and not settings.problems and not settings.has_password


@pytest.mark.parametrize("environ, secrets", [
    ({"SPEEDSIGN_MODE": "public"}, {}),
    ({"SPEEDSIGN_MODE": " Public "}, {}),
    ({}, {"speedsign": {"mode": "public"}}),
    ({"SPEEDSIGN_MODE": "owner"}, {"speedsign": {"mode": "public"}}),  # the stricter source wins
    ({"SPEEDSIGN_MODE": "public"}, {"speedsign": {"mode": "owner"}}),
])
def test_public_mode_from_the_environment_or_the_secrets(environ: dict, secrets: dict) -> None:
    settings = access.load_settings(environ, secrets)
    assert settings.public and not settings.can_write() and not settings.problems


@pytest.mark.parametrize("environ, secrets", [
    ({"SPEEDSIGN_MODE": "pubic"}, {}),
    ({"SPEEDSIGN_MODE": "open"}, {}),
    ({}, {"speedsign": {"mode": "everyone"}}),
    ({}, {"speedsign": {"mode": 1}}),
])
def test_an_unknown_mode_fails_closed_with_a_message(environ: dict, secrets: dict) -> None:
    settings = access.load_settings(environ, secrets)
    assert settings.public and not settings.can_write()
    assert len(settings.problems) == 1 and "public mode" in settings.problems[0]


def test_secrets_that_cannot_be_read_fail_closed() -> None:
    settings = access.load_settings({}, {}, secrets_problem="Error parsing secrets file")
    assert settings.public and "secrets could not be read" in settings.problems[0]


def test_numbers_from_the_environment_win_and_bad_ones_keep_the_default() -> None:
    secrets = {"speedsign": {"max_jobs": 2, "session_jobs": 3, "disk_budget_mb": 50}}
    settings = access.load_settings({"SPEEDSIGN_MAX_JOBS": "7"}, secrets)
    assert (settings.max_jobs, settings.session_jobs, settings.disk_budget_mb) == (7, 3, 50.0)
    assert settings.disk_budget_bytes == 50 * 1024 * 1024
    bad = access.load_settings({"SPEEDSIGN_MAX_JOBS": "lots", "SPEEDSIGN_SESSION_JOBS": "1.5",
                                "SPEEDSIGN_DISK_BUDGET_MB": "-1"}, {"speedsign": {"max_jobs": True}})
    assert (bad.max_jobs, bad.session_jobs, bad.disk_budget_mb) == (4, 1, 2000.0)
    assert len(bad.problems) == 3 and all("using" in p for p in bad.problems)
    assert access.load_settings({"SPEEDSIGN_DISK_BUDGET_MB": "nan"}, {}).disk_budget_mb == 2000.0


def test_allowed_paths_from_both_sources(tmp_path: Path) -> None:
    environ = {"SPEEDSIGN_ALLOWED_PATHS": os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")])}
    settings = access.load_settings(environ, {"speedsign": {"allowed_paths": [str(tmp_path / "c"), 3]}})
    assert settings.allowed_paths == (tmp_path / "a", tmp_path / "b", tmp_path / "c")


def test_allowed_roots_are_data_runs_and_the_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEEDSIGN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(tmp_path / "runs"))
    settings = access.load_settings({"SPEEDSIGN_ALLOWED_PATHS": str(tmp_path / "extra")}, {})
    assert access.allowed_roots(settings) == ((tmp_path / "data").resolve(), (tmp_path / "runs").resolve(),
                                              (tmp_path / "extra").resolve())


# ---------------------------------------------------------------- the owner's password

def test_password_check_and_unlock_token() -> None:
    settings = access.load_settings({"SPEEDSIGN_MODE": "public", "SPEEDSIGN_PASSWORD": "right horse"}, {})
    assert "right horse" not in repr(settings)
    assert access.check_password(settings, "right horse")
    for wrong in ("wrong", "", "right horse ", None, 1, "right hors"):
        assert not access.check_password(settings, wrong)
    token = access.unlock_token(settings)
    assert settings.can_write(token) and not settings.can_write(True) and not settings.can_write("x")
    changed = access.load_settings({"SPEEDSIGN_MODE": "public", "SPEEDSIGN_PASSWORD": "new one"}, {})
    assert not changed.can_write(token)  # a new password locks every session again


def test_password_from_the_secrets_and_none_never_unlocks() -> None:
    settings = access.load_settings({}, {"speedsign": {"mode": "public", "password": "s3cret"}})
    assert access.check_password(settings, "s3cret")
    none = access.load_settings({"SPEEDSIGN_MODE": "public"}, {})
    assert not none.has_password
    assert not access.check_password(none, "")
    assert not none.can_write(access.unlock_token(none))  # the token of an empty password unlocks nothing


# ---------------------------------------------------------------- server paths

def test_confine_accepts_paths_inside_and_resolves_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "signs" / "train").mkdir(parents=True)
    assert access.confine(str(root / "signs"), [root]) == (root / "signs").resolve()
    assert access.confine(f"{root}/signs/train/../train", [root]) == (root / "signs" / "train").resolve()
    assert access.confine(str(root / "not-yet"), [root]) == (root / "not-yet").resolve()  # missing: said later
    (root / "inner").symlink_to(root / "signs")  # a link that stays inside
    assert access.confine(str(root / "inner"), [root]) == (root / "signs").resolve()


def test_confine_refuses_outside_dotdot_and_symlink_escapes(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    (outside / "train").mkdir(parents=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    for text in (str(outside), f"{root}/../outside", str(root / "escape"), str(root / "escape" / "train"),
                 "/etc", "/", str(tmp_path / "root-sibling"), str(root / "loop")):
        with pytest.raises(UserError) as caught:
            access.confine(text, [root])
        message = str(caught.value)
        assert str(root.resolve()) in message or "resolved" in message, message
    with pytest.raises(UserError, match="outside"):
        access.confine(str(outside), [])
    for text in ("", "   ", "a\x00b"):
        with pytest.raises(UserError):
            access.confine(text, [root])
    assert not access.is_inside(str(root / "escape"), [root]) and access.is_inside(str(root), [root])


# ---------------------------------------------------------------- job limits

def run_info(run_id: str, state: str, session: str | None) -> RunInfo:
    request = {"device": "cpu"} | ({"session": session} if session else {})
    return RunInfo(run_id=run_id, run_dir=Path(run_id), approach="scratch", state=state, epoch=0, epochs=2,
                   best_val_acc=None, damaged=None, config={"request": request}, status=RunStatus(state=state))


def test_one_active_job_per_session() -> None:
    runs = [run_info("a", "running", "me"), run_info("b", "done", "me"), run_info("c", "queued", "other")]
    with pytest.raises(UserError, match="this browser session already has 1 job"):
        quotas.check_session_jobs(runs, session="me", limit=1)
    quotas.check_session_jobs(runs, session="someone", limit=1)
    quotas.check_session_jobs(runs, session="me", limit=2)
    quotas.check_session_jobs([run_info("b", "done", "me"), run_info("d", "failed", "me")], session="me", limit=1)
    with pytest.raises(UserError, match="no trainings"):
        quotas.check_session_jobs([], session="me", limit=0)


def test_global_cap_on_active_jobs() -> None:
    runs = [run_info("a", "running", None), run_info("b", "queued", "x"), run_info("c", "done", "y")]
    quotas.check_job_slots(runs, limit=3)
    with pytest.raises(UserError, match=r"2 job\(s\) are queued or running, the most this app takes at once \(2\)"):
        quotas.check_job_slots(runs, limit=2)
    assert quotas.run_session(run_info("z", "running", None)) is None


def test_the_launching_session_is_stored_with_the_run(synth_dir: Path, tmp_path: Path) -> None:
    from speedsign.config import resolve_config

    config = resolve_config(approach="scratch", overrides={"img_size": 16, "epochs": 1, "batch_size": 16})
    plain = TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu")
    assert "session" not in plain.options()
    request = TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path, device="cpu", session="abc123")
    plan = plan_run(request)
    assert plan.run_id == plan_run(plain).run_id  # the session is not part of the run's identity
    write_run_config(plan, request)
    assert read_request(plan.run_dir).session == "abc123"  # the job writes config.json again from this


# ---------------------------------------------------------------- disk

def test_disk_usage_counts_files_and_never_follows_links(tmp_path: Path) -> None:
    data, runs, elsewhere = tmp_path / "data", tmp_path / "runs", tmp_path / "elsewhere"
    for folder in (data, runs, elsewhere):
        folder.mkdir()
    (elsewhere / "big.bin").write_bytes(b"x" * 3_000_000)
    (data / "linked").symlink_to(elsewhere, target_is_directory=True)
    (runs / "a.bin").write_bytes(b"x" * 200_000)
    used = quotas.disk_usage([data, runs], max_age=0)
    assert 200_000 <= used < 1_000_000
    (data / "more.bin").write_bytes(b"x" * 1_000_000)
    assert quotas.disk_usage([data, runs]) == used  # measured a moment ago: reused
    assert quotas.disk_usage([data, runs], max_age=0) >= used + 1_000_000
    # A root named twice, or inside another root, is counted once.
    assert quotas.disk_usage([data, data / ".", runs, runs], max_age=0) == quotas.disk_usage([data, runs], max_age=0)
    assert quotas.disk_usage([tmp_path, data], max_age=0) == quotas.disk_usage([tmp_path], max_age=0)


def test_disk_budget_refuses_when_full_or_when_the_estimate_would_pass_it(tmp_path: Path) -> None:
    (tmp_path / "stored.bin").write_bytes(b"x" * 2_000_000)
    quotas.forget_usage()
    roots = [tmp_path]
    quotas.check_disk(roots, estimate=1_000_000, budget_bytes=10 * quotas.MB, what="Rendering")
    with pytest.raises(UserError, match="Rendering needs about"):
        quotas.check_disk(roots, estimate=9 * quotas.MB, budget_bytes=10 * quotas.MB, what="Rendering")
    with pytest.raises(UserError, match="nothing more can be stored"):
        quotas.check_disk(roots, estimate=0, budget_bytes=1_000_000, what="Importing")
    assert (tmp_path / "stored.bin").stat().st_size == 2_000_000  # nothing deleted to make room


def test_size_estimates() -> None:
    assert quotas.synth_bytes(9 * 1500, 32) > 13_500 * 2000
    assert quotas.synth_bytes(90, 128) > quotas.synth_bytes(90, 32)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/a/1.png", b"\0" * 100_000)
    data = buffer.getvalue()
    assert len(data) < 10_000 and quotas.zip_bytes(data) >= 100_000  # what it unpacks to, not its size
    assert quotas.zip_bytes(b"not a zip") == len(b"not a zip")
    assert quotas.gtsrb_bytes(download=True) > quotas.gtsrb_bytes(download=False) > 0
    assert quotas.runs_bytes(3) == 3 * quotas.RUN_BYTES


def test_nothing_here_imports_streamlit() -> None:
    import subprocess
    import sys

    code = "import sys, speedsign.access, speedsign.quotas; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"

