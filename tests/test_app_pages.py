"""AppTest of every dashboard page: empty state, finished runs, a running job, bad input.

The app runs in-process (streamlit.testing), on a private data root and runs folder set by
environment variables. Finished runs come from the session fixture `runs_with_results`
(tiny real trainings); a running job is faked as the run store describes one (a live pid
on this host, a fresh heartbeat), so no test waits for training.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from speedsign import evaluation, training
from speedsign.runs import inspect_run

from app_support import answers, fresh_app_env, plain, start, texts

PAGES = ("home", "dataset", "train", "curves", "evaluation", "classify", "compare")


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture
def app_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Empty data root and runs folder for the app; first-start synth made tiny and fast."""
    return fresh_app_env(tmp_path, monkeypatch)


@pytest.fixture
def with_data(app_env: dict[str, Path], synth_dir: Path) -> dict[str, Path]:
    """The session's synthetic set as data/synth (a link: same files, same fingerprint)."""
    (app_env["data"] / "synth").symlink_to(synth_dir, target_is_directory=True)
    return app_env


@pytest.fixture
def with_runs(with_data: dict[str, Path], runs_with_results: dict[str, Path],
              monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The three finished tiny runs as the app's runs folder (read only)."""
    runs = next(iter(runs_with_results.values())).parent
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    return {**with_data, "runs": runs}


def link_runs(runs_with_results: dict[str, Path], target: Path) -> None:
    """The finished runs inside another runs folder (links), so a test can add runs beside them."""
    for run_dir in runs_with_results.values():
        (target / run_dir.name).symlink_to(run_dir, target_is_directory=True)


def fake_job(runs_dir: Path, source_run: Path, *, state: str = "running", run_id: str = "scratch-20990101-fakejob01",
             error: str | None = None, epoch: int = 1, pid: int | None = None) -> Path:
    """A run folder that says a job is at work (live pid on this host, fresh heartbeat)."""
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True)
    shutil.copy(source_run / "config.json", run_dir / "config.json")
    status = {"state": state, "pid": pid if pid is not None else os.getpid(), "host": socket.gethostname(),
              "heartbeat": time.time(), "epoch": epoch, "epochs": 2, "step": 1, "steps": 4, "phase": "training",
              "created": "2099-01-01T00:00:00+00:00", "queued_at": time.time(), "device_key": "cpu"}
    if error:
        status["error"] = error
    (run_dir / "status.json").write_text(json.dumps(status))
    rows = [json.loads(line) for line in (source_run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:epoch]))
    return run_dir


def everything(at: AppTest) -> str:
    kinds = ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error", "metric")
    parts = []
    for kind in kinds:
        for element in getattr(at, kind):
            parts.append(plain(getattr(element, "label", "")) + " " + plain(element.value))
    return "\n".join(parts)


def assert_clean(at: AppTest) -> None:
    """No traceback on the page."""
    assert not at.exception, [e.value for e in at.exception]


def png_bytes(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def a_sign(synth_dir: Path) -> Path:
    return sorted((synth_dir / "train" / "speed_50").iterdir())[0]


def plotly_charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def curve_panels(at: AppTest) -> list[str]:
    """The panels of the Learning curves figure (one figure, panels on one epoch axis): y titles."""
    (chart,) = plotly_charts(at)
    layout = json.loads(chart.proto.spec)["layout"]
    return [layout[name]["title"]["text"] for name in sorted(layout) if name.startswith("yaxis")]


# ---------------------------------------------------------------- first start and empty states

def test_first_start_creates_the_synthetic_set_and_every_page_renders(app_env: dict[str, Path]) -> None:
    at = start()
    assert_clean(at)
    assert (app_env["data"] / "synth" / "train").is_dir()
    assert any("Created the synthetic sign set" in s for s in texts(at, "success"))
    assert at.sidebar.selectbox(key="dataset").value == str(app_env["data"] / "synth")
    assert "No finished runs on this data set yet" in everything(at)
    for page in PAGES[1:]:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
        assert at.sidebar.selectbox(key="dataset").value == str(app_env["data"] / "synth"), page
    # Empty states say what to do next.
    at.switch_page("pages/curves.py").run()
    assert "No runs yet" in everything(at)
    at.switch_page("pages/evaluation.py").run()
    assert "No finished runs yet" in everything(at)
    at.switch_page("pages/classify.py").run()
    assert "No finished model yet" in everything(at)
    at.switch_page("pages/train.py").run()
    assert "No job is running" in everything(at)


def test_dataset_page_shows_counts_sizes_samples_augmentations_and_leaks(with_data: dict[str, Path]) -> None:
    at = start("dataset")
    assert_clean(at)
    assert "In use: synth" in everything(at)
    assert len(plotly_charts(at)) >= 2  # class counts, image sizes
    assert len(at.image) >= 9 + 1  # a row per class, and the augmentation strip
    at.toggle(key="leak-check").set_value(True).run()
    assert_clean(at)
    assert any("near-duplicate" in s for s in texts(at, "success") + texts(at, "warning"))
    # Another preset's augmentation: still a picture, no traceback.
    at.selectbox(key="aug-preset").set_value("tutorial").run()
    assert_clean(at)


# ---------------------------------------------------------------- data sets: good and bad input

def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload_zip(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="dataset-zip").set_value((name, data, "application/zip")).run()
    button = next(b for b in at.button if b.label == "Import the zip")
    return button.click().run()


def test_zip_upload_in_report_layout_becomes_the_data_set(with_data: dict[str, Path], synth_dir: Path) -> None:
    image = png_bytes(a_sign(synth_dir))
    files = {f"signs/{split}/{name}/{i}.png": image
             for split in ("train", "val") for name in ("speed_30", "speed_50") for i in range(3)}
    at = upload_zip(start("dataset"), "my signs.zip", zip_bytes(files))
    assert_clean(at)
    assert not at.error, texts(at, "error")
    out = with_data["data"] / "uploads" / "my-signs"
    assert (out / "val" / "speed_50").is_dir()
    assert at.sidebar.selectbox(key="dataset").value == str(out)
    assert any("Imported 12 images in 2 classes" in s for s in texts(at, "success"))


@pytest.mark.parametrize("files, message", [
    ({"../evil/a.png": b"x", "train/a/1.png": b"x"}, "unsafe path"),
    ({"readme.txt": b"hello", "1.png": b"x"}, "class"),
    (None, "zip"),
])
def test_bad_zip_uploads_are_refused_and_nothing_stored_is_lost(
        with_data: dict[str, Path], files: dict[str, bytes] | None, message: str) -> None:
    data = zip_bytes(files) if files is not None else b"this is not a zip at all"
    before = sorted(p.name for p in with_data["data"].iterdir())
    at = upload_zip(start("dataset"), "bad.zip", data)
    assert_clean(at)
    errors = " ".join(texts(at, "error")).lower()
    assert errors and message in errors, errors
    assert sorted(p.name for p in with_data["data"].iterdir() if p.name != "uploads") == before
    assert not any((with_data["data"] / "uploads").glob("*")), "a refused zip left files behind"
    assert at.sidebar.selectbox(key="dataset").value == str(with_data["data"] / "synth")


def test_import_upload_function_handles_empty_bytes(with_data: dict[str, Path]) -> None:
    at = upload_zip(start("dataset"), "empty.zip", b"")
    assert_clean(at)
    assert "empty" in " ".join(texts(at, "error"))


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nowhere", "not found"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no class folders"),
    (lambda root: (root / "one" / "speed_30").mkdir(parents=True) or root / "one", "no images"),
])
def test_server_folder_that_cannot_be_used_says_why(with_data: dict[str, Path], tmp_path: Path, make,
                                                    message: str) -> None:
    folder = make(tmp_path)
    at = start("dataset")
    at.text_input(key="server-folder").set_value(str(folder)).run()
    next(b for b in at.button if b.label == "Use this folder").click().run()
    assert_clean(at)
    assert message in " ".join(texts(at, "error")), texts(at, "error")
    assert at.sidebar.selectbox(key="dataset").value == str(with_data["data"] / "synth")


def test_server_folder_with_classes_becomes_the_data_set(with_data: dict[str, Path], synth_dir: Path) -> None:
    at = start("dataset")
    at.text_input(key="server-folder").set_value(str(synth_dir)).run()
    next(b for b in at.button if b.label == "Use this folder").click().run()
    assert_clean(at)
    assert at.sidebar.selectbox(key="dataset").value == str(synth_dir)
    at.switch_page("pages/train.py").run()  # the choice holds on every page
    assert at.sidebar.selectbox(key="dataset").value == str(synth_dir)


def test_hostile_class_names_are_shown_literally(with_data: dict[str, Path], synth_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hostile"
    image = png_bytes(a_sign(synth_dir))
    names = ["[30](javascript:alert(1))", "<img src=x onerror=alert(1)>"]
    for name in names:
        for split in ("train", "val"):
            (folder / split / name).mkdir(parents=True)
            for i in range(2):
                (folder / split / name / f"{i}.png").write_bytes(image)
    at = start("dataset")
    at.text_input(key="server-folder").set_value(str(folder)).run()
    next(b for b in at.button if b.label == "Use this folder").click().run()
    assert_clean(at)
    captions = [c.value for c in at.caption]
    assert r"\[30\]\(javascript\:alert\(1\)\)" in captions
    assert r"\<img src\=x onerror\=alert\(1\)\>" in captions
    assert not any("<img" in c and r"\<img" not in c for c in captions)


def test_gtsrb_import_offline_without_source_is_a_clear_error(with_data: dict[str, Path], tmp_path: Path) -> None:
    at = start("dataset")
    next(t for t in at.text_input if "GTSRB" in t.label).set_value(str(tmp_path / "missing.zip")).run()
    next(b for b in at.button if b.label == "Import GTSRB").click().run()
    assert_clean(at)
    assert "not found" in " ".join(texts(at, "error"))


# ---------------------------------------------------------------- pages with finished runs

def test_home_compares_the_three_approaches(with_runs: dict[str, Path]) -> None:
    at = start()
    assert_clean(at)
    table = at.dataframe[0].value
    assert len(table) == 3
    text = everything(at)
    assert "CPU" in text  # the device
    assert any(word in text for word in ("finetune", "frozen", "scratch"))


def test_curves_page_draws_every_chosen_run(with_runs: dict[str, Path]) -> None:
    at = start("curves")
    assert_clean(at)
    assert len(at.multiselect(key="curve-runs").value) == 3
    assert curve_panels(at) == ["loss", "accuracy", "learning rate"]


def test_evaluation_page_single_and_side_by_side(with_runs: dict[str, Path]) -> None:
    at = start("evaluation")
    assert_clean(at)
    assert not at.error, texts(at, "error")
    assert any(m.label == "val accuracy" for m in at.metric)
    assert len(plotly_charts(at)) == 5  # confusion x2, per class, reliability before and after temperature
    assert "95% interval" in everything(at)
    assert "temperature scaling fitted on val" in everything(at)
    at.toggle(key="eval-compare").set_value(True).run()
    assert_clean(at)
    assert sum(m.label == "val accuracy" for m in at.metric) == 2


def test_evaluation_gallery_when_the_data_folder_is_gone(with_data: dict[str, Path],
                                                         runs_with_results: dict[str, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs2"
    shutil.copytree(runs_with_results["scratch"], runs / runs_with_results["scratch"].name,
                    ignore=shutil.ignore_patterns("last.pt"))
    config = json.loads((runs / runs_with_results["scratch"].name / "config.json").read_text())
    config["data_dir"] = str(tmp_path / "deleted-data")
    (runs / runs_with_results["scratch"].name / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    if evaluation.misclassified(evaluation.val_evaluation(inspect_run(runs / runs_with_results["scratch"].name))).empty:
        pytest.skip("the tiny run made no mistakes: no gallery to show")
    at = start("evaluation")
    assert_clean(at)
    assert any("is gone" in s for s in texts(at, "warning"))


def test_classify_page_every_model_answers(with_runs: dict[str, Path], synth_dir: Path) -> None:
    at = start("classify")
    assert_clean(at)
    assert "Upload or take a photo" in everything(at)
    at.file_uploader(key="classify-upload").set_value(("sign.png", png_bytes(a_sign(synth_dir)), "image/png")).run()
    assert_clean(at)
    assert not at.error, texts(at, "error")
    assert len(answers(at)) == 3
    assert len(plotly_charts(at)) == 3  # top-3 bars per model
    assert "ms" in everything(at)
    at.slider(key="classify-zoom").set_value(2.0).run()  # framing the sign: still three answers
    assert_clean(at)
    assert len(answers(at)) == 3


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"just some text, not a picture", "not an image"),
    ("cut.png", None, "truncated"),
    ("empty.png", b"", "empty"),
])
def test_classify_bad_uploads_are_messages(with_runs: dict[str, Path], synth_dir: Path, name: str,
                                           data: bytes | None, message: str) -> None:
    if data is None:
        whole = png_bytes(a_sign(synth_dir))
        data = whole[: len(whole) // 2]
    at = start("classify")
    at.file_uploader(key="classify-upload").set_value((name, data, "image/png")).run()
    assert_clean(at)
    assert message in " ".join(texts(at, "error")).lower(), texts(at, "error")
    assert not answers(at)


def test_train_launch_of_a_finished_config_is_shown_at_once(with_data: dict[str, Path],
                                                             runs_with_results: dict[str, Path], weights_file: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs-linked"  # links to the shared runs: a wrong launch must not add to them
    runs.mkdir()
    link_runs(runs_with_results, runs)
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    at = start("train")
    assert_clean(at)
    at.multiselect(key="train-approaches").set_value(["scratch", "frozen"]).run()
    at.toggle(key="train-hand").set_value(True).run()
    for approach in ("scratch", "frozen"):
        at.number_input(key=f"hp-{approach}-fast-epochs").set_value(2)
        at.number_input(key=f"hp-{approach}-fast-img_size").set_value(16)
        at.number_input(key=f"hp-{approach}-fast-batch_size").set_value(32)
    at.run()
    _choose_weights_file(at, weights_file)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert_clean(at)
    assert not at.error, texts(at, "error")
    done = [s for s in texts(at, "success") if "already finished" in s]
    assert len(done) == 2, texts(at, "success") + texts(at, "info")
    assert sorted(p.name for p in runs.iterdir()) == sorted(d.name for d in runs_with_results.values())
    assert not list(runs.glob("*/cancel.request"))


def _choose_weights_file(at: AppTest, weights_file: Path) -> None:
    path_option = next(o for o in training.weights_options([]) if o.spec == "path")
    at.selectbox(key="train-weights").set_value(path_option).run()
    at.text_input(key="train-weights-path").set_value(str(weights_file)).run()


def test_train_bad_settings_are_messages_not_tracebacks(with_runs: dict[str, Path], tmp_path: Path) -> None:
    at = start("train")
    at.multiselect(key="train-approaches").set_value(["frozen"]).run()
    at.toggle(key="train-hand").set_value(True).run()
    at.number_input(key="hp-frozen-fast-batch_size").set_value(32).run()
    _choose_weights_file(at, tmp_path / "no-such-weights.pth")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert_clean(at)
    assert "not found" in " ".join(texts(at, "error")), texts(at, "error")
    at.text_input(key="train-weights-path").set_value("").run()
    next(b for b in at.button if b.label == "Launch").click().run()
    assert_clean(at)
    assert "weights" in " ".join(texts(at, "error")), texts(at, "error")


# ---------------------------------------------------------------- a running job, a failed one

@pytest.fixture
def with_running_job(with_data: dict[str, Path], runs_with_results: dict[str, Path], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "runs-live"
    runs.mkdir()
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    return fake_job(runs, runs_with_results["scratch"])


def test_every_page_with_only_a_running_job(with_running_job: Path) -> None:
    at = start()
    assert_clean(at)
    assert "training now" in everything(at)
    at.switch_page("pages/train.py").run()
    assert_clean(at)
    assert any(b.label == "Cancel" for b in at.button)
    bars = at.get("progress")
    assert bars and "left" in everything(at) + " ".join(str(b.proto.text) for b in bars)
    at.switch_page("pages/curves.py").run()
    assert_clean(at)
    assert curve_panels(at) == ["loss", "accuracy", "learning rate"]
    assert "Updating every" in everything(at)
    at.switch_page("pages/evaluation.py").run()
    assert_clean(at)
    assert "still running" in everything(at)
    at.switch_page("pages/classify.py").run()
    assert_clean(at)
    assert "training now" in everything(at)


def test_cancel_button_asks_the_job_to_stop(with_data: dict[str, Path], runs_with_results: dict[str, Path],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    runs = tmp_path / "runs-cancel"
    runs.mkdir()
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    stand_in = subprocess.Popen(["sleep", "60"])  # a live pid that is not a speedsign job: never signalled
    try:
        run_dir = fake_job(runs, runs_with_results["scratch"], pid=stand_in.pid)
        at = start("train")
        next(b for b in at.button if b.label == "Cancel").click().run()
        assert_clean(at)
        assert (run_dir / "cancel.request").exists()
        assert stand_in.poll() is None
    finally:
        stand_in.kill()
        stand_in.wait()


def test_failed_job_shows_its_error(with_data: dict[str, Path], runs_with_results: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs-failed"
    runs.mkdir()
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    message = "ImageNet weights for ResNet18 are not on this machine and could not be downloaded (no internet?)"
    run_dir = fake_job(runs, runs_with_results["frozen"], state="failed", error=message)
    at = start("train")
    at.session_state["launched_runs"] = [run_dir.name]  # launched from this session
    at.run()
    assert_clean(at)
    assert any(message in s for s in texts(at, "error")), texts(at, "error")
    at.switch_page("pages/curves.py").run()
    assert_clean(at)
    assert any(message in s for s in texts(at, "error"))


def test_dead_job_is_failed_not_running_forever(with_data: dict[str, Path], runs_with_results: dict[str, Path],
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs-dead"
    runs.mkdir()
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    run_dir = fake_job(runs, runs_with_results["scratch"])
    status = json.loads((run_dir / "status.json").read_text())
    status["heartbeat"] = time.time() - 3600
    (run_dir / "status.json").write_text(json.dumps(status))
    at = start("train")
    assert_clean(at)
    assert "No job is running" in everything(at)
    assert "failed" in at.dataframe[-1].value["state"].tolist()


# ---------------------------------------------------------------- damaged and deleted run folders

@pytest.fixture
def damaged_runs(with_data: dict[str, Path], runs_with_results: dict[str, Path], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """Beside the three good runs: truncated status.json, half a metrics line, a newer format."""
    runs = tmp_path / "runs-damaged"
    runs.mkdir()
    link_runs(runs_with_results, runs)
    source = runs_with_results["scratch"]
    copies = {}
    for name in ("scratch-20990101-truncated", "scratch-20990101-halfline", "scratch-20990101-newformat"):
        copies[name] = runs / name
        shutil.copytree(source, copies[name], ignore=shutil.ignore_patterns("last.pt"))
    status = (copies["scratch-20990101-truncated"] / "status.json").read_text()
    (copies["scratch-20990101-truncated"] / "status.json").write_text(status[: len(status) // 2])
    with open(copies["scratch-20990101-halfline"] / "metrics.jsonl", "a") as file:
        file.write('{"epoch": 3, "train_lo')
    config = json.loads((copies["scratch-20990101-newformat"] / "config.json").read_text())
    config["format_version"] = 99
    (copies["scratch-20990101-newformat"] / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    return runs


@pytest.mark.parametrize("page", PAGES)
def test_damaged_run_folders_never_break_a_page(damaged_runs: Path, synth_dir: Path, page: str) -> None:
    at = start(page)
    assert_clean(at)
    if page == "classify":
        at.file_uploader(key="classify-upload").set_value(("s.png", png_bytes(a_sign(synth_dir)), "image/png")).run()
        assert_clean(at)
        assert len(answers(at)) == 3  # only the sound runs answer
    if page == "train":
        table = at.dataframe[-1].value
        problems = " ".join(table["problem"].astype(str))
        assert "status.json is damaged" in problems and "partial or damaged" in problems
        assert "newer" in problems
    if page == "evaluation":
        assert "damaged" in everything(at) or any("damaged" in e.label for e in at.expander)


def test_run_folder_deleted_while_the_app_runs(with_data: dict[str, Path], runs_with_results: dict[str, Path],
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs-deleted"
    shutil.copytree(runs_with_results["scratch"], runs / runs_with_results["scratch"].name,
                    ignore=shutil.ignore_patterns("last.pt"))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    at = start("evaluation")
    assert_clean(at)
    at.session_state["launched_runs"] = [runs_with_results["scratch"].name]
    shutil.rmtree(runs / runs_with_results["scratch"].name)
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert_clean(at)
    at.switch_page("pages/train.py").run()
    assert "folder is gone" in everything(at)


# ---------------------------------------------------------------- shared helpers (speedsign.ui)

def test_markdown_escaping_of_untrusted_names() -> None:
    from speedsign.ui import md

    assert md("[x](http://e.vil)") == r"\[x\]\(http\://e\.vil\)"
    assert md("<b>*x*</b>") == r"\<b\>\*x\*\</b\>"


def test_process_count_control_only_with_several_gpus(with_runs: dict[str, Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    at = start("train")
    assert not [n for n in at.number_input if n.key == "train-nproc"]
    monkeypatch.setattr(training, "gpu_count", lambda: 4)
    at.run()
    assert_clean(at)
    assert at.number_input(key="train-nproc").value == 4


def test_evaluation_on_the_test_split(with_data: dict[str, Path], runs_with_results: dict[str, Path],
                                      synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "with-test"
    for class_dir in sorted((synth_dir / "train").iterdir()):
        (data / "train" / class_dir.name).mkdir(parents=True)
        (data / "test" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.iterdir())[:3]:
            shutil.copy(image, data / "train" / class_dir.name / image.name)  # links out would be skipped
            shutil.copy(image, data / "test" / class_dir.name / image.name)
    runs = tmp_path / "runs-test-split"
    run_dir = runs / runs_with_results["scratch"].name
    shutil.copytree(runs_with_results["scratch"], run_dir, ignore=shutil.ignore_patterns("last.pt"))
    config = json.loads((run_dir / "config.json").read_text())
    config["data_dir"] = str(data)
    (run_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("SPEEDSIGN_RUNS", str(runs))
    at = start("evaluation")
    assert at.selectbox(key="eval-split").options == ["val", "test"]
    at.selectbox(key="eval-split").set_value("test").run()
    assert_clean(at)
    assert not at.error, texts(at, "error")
    accuracy = next(m for m in at.metric if m.label == "test accuracy")
    assert next(m for m in at.metric if m.label == "Images").value == "27"
    assert 0.0 <= float(accuracy.value) <= 1.0
