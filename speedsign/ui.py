"""Streamlit glue: cached readers and predictors, the shared sidebar, and reusable sections.

The pages call these and nothing below them. Rules kept here:
- Nothing trains in the script thread: training is `jobs.launch` (a separate process), and
  live views poll the run store with `st.fragment(run_every=...)`.
- Everything read from disk (class names, run ids, file names) is untrusted: it goes into
  dataframes, plain text, figures from `plots` (which escape), or markdown through `md`,
  never into `unsafe_allow_html`.
- A `UserError` (bad upload, bad setting, damaged run) is a message in the page, never a
  traceback: wrap the work in `with user_errors():`.
"""

from __future__ import annotations

import contextlib
import re
import runpy
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import streamlit as st
import torch

from speedsign import jobs, plots, workspace
from speedsign.data import DatasetIndex, image_sizes, scan_dataset
from speedsign.errors import UserError
from speedsign.runs import ACTIVE_STATES, RunInfo, list_runs as read_runs, read_metrics

DATASET_KEY = "dataset"  # the sidebar's data set (a folder path), shared by every page
_PENDING_KEY = "_dataset_pending"
_EXTRA_KEY = "_extra_datasets"  # server folders chosen in this session
_NOTICE_KEY = "_notices"  # messages that must survive the rerun that follows an action
LAUNCHED_KEY = "launched_runs"
POLL_SECONDS = 2.0
MAX_DEFAULT_MODELS = 6
GALLERY_SIZE = 12

# The app process only predicts (training runs in job processes). One thread per forward
# keeps a single-image answer fast while a job keeps the cores busy: measured on 2 busy
# cores (load ~5), p95 latency was ~22 ms with one thread against 620-720 ms with two.
torch.set_num_threads(1)

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$=^&\"'])")


# ---------------------------------------------------------------- small helpers

APP_SCRIPT = Path(__file__).resolve().parents[1] / "streamlit_app.py"
_router = threading.local()


@contextlib.contextmanager
def routing() -> Iterator[None]:
    """Marks this session's script run as going through the router (streamlit_app.py)."""
    _router.active = True
    try:
        yield
    finally:
        _router.active = False


def through_router() -> None:
    """Run the router instead when Streamlit ran a page file on its own.

    Streamlit treats a `pages/` folder as the old multipage layout until some session has
    called st.navigation (a fresh server's first request for /train, or AppTest): then it
    runs pages/train.py directly, without the sidebar and data-set choice. Each page calls
    this first, so that case goes through streamlit_app.py, whose st.navigation picks the
    same page.
    """
    if getattr(_router, "active", False):
        return
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()


def md(text: object) -> str:
    """Untrusted text made literal for st.markdown / captions (every markup character escaped)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


@contextlib.contextmanager
def user_errors(prefix: str = "") -> Iterator[None]:
    """Show a UserError (bad input, damaged file) as st.error instead of a traceback."""
    try:
        yield
    except UserError as error:
        st.error(md(f"{prefix}{error}"), icon=":material/error:")


def notify(kind: str, message: str) -> None:
    """Keep a message for the next run (actions end with st.rerun, which would drop it)."""
    st.session_state.setdefault(_NOTICE_KEY, []).append((kind, message))


def show_notices() -> None:
    for kind, message in st.session_state.pop(_NOTICE_KEY, []):
        getattr(st, kind)(md(message))  # messages carry paths and names from disk


def progress_reporter(label: str) -> Callable[[int, int], None]:
    """A (done, total) callback drawing a progress bar with elapsed time and time left."""
    bar = st.progress(0.0, text=f"{label}: starting…")
    clock = workspace.ProgressClock()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 0.1:  # a few redraws per second are enough
            return
        last[0] = now
        fraction, text = clock.describe(done, total)
        bar.progress(fraction, text=f"{label}: {text}")

    return report


# ---------------------------------------------------------------- data sets, sidebar, device

def runs_dir() -> Path:
    return workspace.runs_root()


def first_start() -> None:
    """A fresh machine: render the synthetic sign set now (about 4 s), with a progress bar."""
    if workspace.list_datasets():
        return
    placeholder = st.empty()
    with placeholder.container():
        st.info("No data set yet: creating the synthetic speed-limit sign set "
                f"({9 * workspace.FIRST_RUN_PER_CLASS:,} images). The Dataset page can also import "
                "GTSRB, your own zip, or a folder on the server.")
        try:
            report = workspace.ensure_first_dataset(progress=progress_reporter("Rendering signs"))
        except (UserError, OSError) as error:
            st.error(md(f"Could not create the synthetic data set: {error}"))
            return
    placeholder.empty()
    if report is not None:
        notify("success", f"Created the synthetic sign set ({report.n_images:,} images in "
                          f"{report.seconds:.1f} s). Import GTSRB or upload your own on the Dataset page.")


def use_dataset(path: Path | str) -> None:
    """Make `path` the current data set (takes effect on the rerun this starts)."""
    st.session_state[_PENDING_KEY] = str(path)
    st.rerun()


def sidebar() -> Path | None:
    """The shared sidebar: data set choice and the device. Returns the current data folder."""
    entries = workspace.list_datasets()
    labels = {str(entry.path): entry.name for entry in entries}
    extras: list[str] = st.session_state.setdefault(_EXTRA_KEY, [])
    pending = st.session_state.pop(_PENDING_KEY, None)
    if pending and pending not in labels and pending not in extras:
        extras.append(pending)
    options = list(labels) + [path for path in extras if path not in labels]
    if pending:
        st.session_state[DATASET_KEY] = pending
    if st.session_state.get(DATASET_KEY) not in options:
        st.session_state.pop(DATASET_KEY, None)
    with st.sidebar:
        choice = None
        if options:
            choice = st.selectbox("Data set", options, key=DATASET_KEY,
                                  format_func=lambda path: labels.get(path, path),
                                  help="Create or import data sets on the Dataset page.")
        else:
            st.info("No data set yet: create one on the Dataset page.")
        st.caption(f"Device: {md(device_text())}")
    return Path(choice) if choice else None


def current_dataset() -> Path | None:
    value = st.session_state.get(DATASET_KEY)
    return Path(value) if value else None


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    """The device a job with device=auto would train on (GPU name, or CPU and its threads)."""
    from speedsign.train import describe_device, pick_device

    return describe_device(pick_device("auto"))


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@st.cache_data(ttl=10, max_entries=32, show_spinner=False)
def _scan(path: str) -> DatasetIndex:
    return scan_dataset(path)


def scan(path: Path | str) -> DatasetIndex:
    """The index of a data folder (cached for a few seconds); UserError when unusable."""
    return _scan(str(path))


def current_index() -> DatasetIndex | None:
    """The current data set's index, or None with the reason shown."""
    path = current_dataset()
    if path is None:
        return None
    try:
        return scan(path)
    except UserError as error:
        st.error(md(f"The data set {path} cannot be used: {error}"))
        return None


@st.cache_data(max_entries=8, show_spinner="Reading image sizes…")
def _sizes(root: str, fingerprint: str) -> pd.DataFrame:
    return workspace.sizes_frame(image_sizes(scan(root)))


def size_table(index: DatasetIndex) -> pd.DataFrame:
    return _sizes(str(index.root), index.fingerprint)


@st.cache_data(max_entries=8, show_spinner=False)
def _leaks(root: str, fingerprint: str, max_distance: int) -> pd.DataFrame:
    from speedsign.leaks import find_leaks

    return find_leaks(scan(root), max_distance=max_distance)


def leak_table(index: DatasetIndex, *, max_distance: int = 4) -> pd.DataFrame:
    return _leaks(str(index.root), index.fingerprint, max_distance)


@st.cache_data(max_entries=512, show_spinner=False)
def _picture(root: str, relative: str, max_side: int, fingerprint: str) -> np.ndarray | None:
    return workspace.load_picture(root, relative, max_side=max_side)


def picture(root: Path | str, relative: str, *, max_side: int = 128, fingerprint: str = "") -> np.ndarray | None:
    """A data-set image for display (None when unreadable or outside its folder), cached."""
    return _picture(str(root), str(relative), max_side, fingerprint)


def dataset_summary(index: DatasetIndex) -> None:
    """Name, layout and size of a data set, with its skipped files."""
    counts = {split: len(samples) for split, samples in index.splits.items()}
    columns = st.columns(4)
    columns[0].metric("Images", f"{sum(counts.values()):,}")
    columns[1].metric("Classes", len(index.classes))
    columns[2].metric("Train / val", f"{counts.get('train', 0):,} / {counts.get('val', 0):,}")
    columns[3].metric("Test", f"{counts.get('test', 0):,}")
    layout = {"split": "train/ and val/ given", "single": "val drawn from train by track",
              "test": "test/ only (evaluation)"}.get(index.layout, index.layout)
    st.caption(f"Folder {md(index.root)} · {md(layout)} · fingerprint {md(index.fingerprint)}")
    if index.ignored:
        with st.expander(f"{len(index.ignored)} file(s) skipped (not images, or links leaving the folder)"):
            st.dataframe(pd.DataFrame({"file": list(index.ignored)}), hide_index=True)


def create_dataset(label: str, work: Callable[[Callable[[int, int], None]], tuple[Path, str]]) -> None:
    """Run `work(progress)` with a progress bar; on success switch to the new data set.

    `work` returns the new folder and a message. A refusal (UserError: bad zip, no classes,
    offline download) or a disk error is shown here, and nothing stored before is touched.
    """
    progress = progress_reporter(label)
    try:
        path, message = work(progress)
    except (UserError, OSError) as error:
        st.error(md(error), icon=":material/error:")
        return
    notify("success", message)
    use_dataset(path)


def import_upload(name: str, data: bytes) -> None:
    """An uploaded data-set zip: checked, unpacked to uploads/<name>, then used."""
    if not data:
        st.error("The uploaded file is empty.")
        return

    def work(progress: Callable[[int, int], None]) -> tuple[Path, str]:
        out, report, index = workspace.import_zip(data, name=name, progress=progress)
        skipped = f"; skipped {report.skipped} file(s), e.g. {', '.join(report.skipped_examples)}" \
            if report.skipped else ""
        return out, (f"Imported {report.n_images:,} images in {len(index.classes)} classes into "
                     f"{out.name}{skipped}.")

    create_dataset("Unpacking the zip", work)


def render_synth(*, per_class: int, size: int, seed: int) -> None:
    def work(progress: Callable[[int, int], None]) -> tuple[Path, str]:
        out, report = workspace.create_synth(per_class=per_class, size=size, seed=seed, progress=progress)
        return out, f"Rendered {report.n_images:,} images into {out.name} in {report.seconds:.1f} s."

    create_dataset("Rendering signs", work)


def import_gtsrb(source: str) -> None:
    def work(progress: Callable[[int, int], None]) -> tuple[Path, str]:
        out, report = workspace.import_gtsrb(source, progress=progress)
        skipped = f" ({report.skipped} unreadable skipped)" if report.skipped else ""
        return out, (f"Imported {report.n_images:,} GTSRB images into {out.name} in "
                     f"{report.seconds:.1f} s{skipped}.")

    create_dataset("Importing GTSRB", work)


def leak_report(index: DatasetIndex) -> None:
    """Near-duplicates shared by train and val, as a table and a few image pairs."""
    try:
        with st.spinner("Hashing images…", show_time=True):
            leaks = leak_table(index)
    except UserError as error:
        st.error(md(error))
        return
    if leaks.empty:
        st.success("No near-duplicates between train and val.")
        return
    st.warning(f"{len(leaks)} near-duplicate pair(s) between train and val: val accuracy is inflated "
               "by these. Remove one image of each pair, or split by track.")
    st.dataframe(leaks, hide_index=True)
    for row in leaks.head(6).itertuples(index=False):
        pair = [picture(index.root, f, fingerprint=index.fingerprint) for f in (row.train_file, row.val_file)]
        if all(p is not None for p in pair):
            st.image(pair, width=72)
        st.caption(f"{md(row.train_file)} ↔ {md(row.val_file)} (distance {row.distance})")


def augmentation_preview(index: DatasetIndex, relative: str, *, approach: str, preset: str) -> None:
    try:
        original, versions, config = workspace.augmentation_preview(index.root, relative, approach=approach,
                                                                    preset=preset)
    except UserError as error:
        st.error(md(error))
        return
    st.image([original, *versions], width=96)
    st.caption(f"First: as evaluated ({config.img_size} px). Then recipe “{config.augment}”"
               + (": no augmentation, all eight are the same." if config.augment == "none" else "."))


def choose_server_folder(text: str) -> None:
    """A folder on the server, checked (layout, classes) before it becomes the data set."""
    try:
        index = workspace.check_server_folder(text)
    except (UserError, OSError) as error:
        st.error(md(error), icon=":material/error:")
        return
    notify("success", f"Using {index.root}: {sum(len(s) for s in index.splits.values()):,} images, "
                      f"{len(index.classes)} classes.")
    use_dataset(index.root)


# ---------------------------------------------------------------- runs

@st.cache_data(ttl=POLL_SECONDS, max_entries=8, show_spinner=False)
def _runs(path: str, signature: tuple) -> list[RunInfo]:
    return read_runs(Path(path))


def list_runs() -> list[RunInfo]:
    """Every run, newest first; re-read when a run's files change, and every few seconds
    anyway (a job that died changes no file, only its heartbeat's age)."""
    path = runs_dir()
    return _runs(str(path), workspace.runs_signature(path))


def find_run(run_id: str) -> RunInfo | None:
    return next((info for info in list_runs() if info.run_id == run_id), None)


@st.cache_data(max_entries=256, show_spinner=False)
def _metrics(run_dir: str, stamp: int) -> tuple[list[dict[str, Any]], str | None]:
    return read_metrics(Path(run_dir))


def metrics(info: RunInfo) -> tuple[list[dict[str, Any]], str | None]:
    """metrics.jsonl rows of a run and a note when a line is damaged (keyed by mtime)."""
    try:
        stamp = (info.run_dir / "metrics.jsonl").stat().st_mtime_ns
    except OSError:
        return [], None
    return _metrics(str(info.run_dir), stamp)


# A ResNet18 is ~45 MB: nine (three per approach) stay well inside a 2.7 GB Community Cloud box.
@st.cache_resource(max_entries=9, show_spinner="Loading the model…")
def _predictor(run_dir: str, stamp: int) -> Any:
    import torch

    from speedsign.predict import Predictor

    model = Predictor(run_dir)
    # One forward now: the first one pays for allocations, and would show as the latency.
    side = model.config.stored_size
    model.predict_tensor(torch.zeros((3, side, side), dtype=torch.uint8))
    return model


def predictor(info: RunInfo) -> Any:
    """A run's best model, loaded once per process and shared by every session (thread-safe).

    Keyed by best.pt's mtime: a retrained run (--force) gets its new weights."""
    stamp = workspace.mtime_ns(info.run_dir / "best.pt")
    return _predictor(str(info.run_dir), stamp)


def run_table(runs: Sequence[RunInfo]) -> pd.DataFrame:
    rows = []
    for info in runs:
        rows.append({
            "run": info.run_id, "approach": info.approach, "state": info.state,
            "epoch": f"{info.epoch}/{info.epochs}" if info.epochs else str(info.epoch),
            "best val acc": None if info.best_val_acc is None else round(info.best_val_acc, 4),
            "created": str(info.status.get("created", "")),
            "problem": info.damaged or (info.status.get("error") if info.state == "failed" else None) or "",
        })
    return pd.DataFrame(rows, columns=["run", "approach", "state", "epoch", "best val acc", "created", "problem"])


def damaged_note(runs: Sequence[RunInfo]) -> None:
    damaged = [info for info in runs if info.damaged]
    if damaged:
        with st.expander(f"{len(damaged)} run folder(s) are damaged and left out", icon=":material/warning:"):
            st.dataframe(pd.DataFrame({"run": [i.run_id for i in damaged], "problem": [i.damaged for i in damaged]}),
                         hide_index=True)


def goto(page: str, label: str, icon: str | None = None) -> None:
    """A link to another page (quietly nothing when the page is not registered, as in a bare test)."""
    try:
        st.page_link(page, label=label, icon=icon)
    except Exception:  # noqa: BLE001  (st.page_link raises when navigation is not set up)
        pass


# ---------------------------------------------------------------- home: the comparison

@st.cache_data(max_entries=64, show_spinner="Measuring single-image latency…")
def _latency(run_dir: str, stamp: int, data_root: str, fingerprint: str) -> dict[str, float] | None:
    from speedsign.compare import measure_latency

    image = workspace.first_image_bytes(scan(data_root))
    if image is None:
        return None
    return measure_latency(_predictor(run_dir, stamp), image)


def comparison(index: DatasetIndex) -> None:
    """The three approaches' best runs on this data set, and one sentence on who wins."""
    from speedsign.compare import best_runs, compare_runs, comparison_frame, winner_sentence

    best = best_runs(runs_dir(), data_fingerprint=index.fingerprint)
    if not best:
        active = [info for info in list_runs() if info.state in ACTIVE_STATES]
        if active:
            st.info(f"{len(active)} job(s) training now: the comparison appears when one finishes.",
                    icon=":material/hourglass_top:")
        else:
            st.info("No finished runs on this data set yet. Launch the three approaches on the Train page; "
                    "their comparison appears here.", icon=":material/model_training:")
        goto("pages/train.py", "Go to Train", ":material/model_training:")
        return
    latency: dict[str, float] = {}
    tails: list[str] = []
    for approach, info in best.items():
        try:
            measured = _latency(str(info.run_dir), workspace.mtime_ns(info.run_dir / "best.pt"),
                                str(index.root), index.fingerprint)
        except UserError as error:
            st.warning(md(f"{approach}: latency not measured ({error})"))
            continue
        if measured is not None:
            latency[info.run_id] = measured["p50"]
            tails.append(f"{approach} {measured['p95']:.1f} ms")
    rows = compare_runs(best, latency=latency)
    st.dataframe(comparison_frame(rows), hide_index=True)
    st.markdown(md(winner_sentence(rows)))
    if tails:
        st.caption("Single-image latency (decode, resize, forward on this machine) p95: " + md(", ".join(tails)))
    missing = [a for a in ("finetune", "frozen", "scratch") if a not in best]
    if missing:
        st.caption(f"No finished run yet for: {md(', '.join(missing))}.")


# ---------------------------------------------------------------- train: live jobs

def job_card(info: RunInfo) -> None:
    """One job: state, epoch, progress with time left, val accuracy, cancel, error."""
    rows, problem = metrics(info)
    view = workspace.job_view(info, rows)
    with st.container(border=True):
        head, button = st.columns([5, 1])
        head.markdown(f"**{md(view.approach)}** · {md(view.run_id)} · state **{md(view.state)}**")
        if view.active:
            if button.button("Cancel", key=f"cancel-{view.run_id}", icon=":material/cancel:"):
                if jobs.request_cancel(info.run_dir):
                    st.toast(md(f"Asked {view.run_id} to stop after this step."))
                else:
                    st.toast(md(f"{view.run_id} was not running any more."))
            text = f"epoch {view.epoch}/{view.epochs}"
            if view.phase:
                text += f" · {view.phase}"
            if view.state == "running":
                text += f" · {workspace.format_seconds(view.seconds_left)} left"
            st.progress(view.fraction, text=md(text))
        columns = st.columns(3)
        columns[0].metric("Val accuracy (last epoch)", "–" if view.val_acc is None else f"{view.val_acc:.3f}")
        columns[1].metric("Best val accuracy", "–" if view.best_val_acc is None else f"{view.best_val_acc:.3f}")
        columns[2].metric("Images/s", "–" if view.images_per_s is None else f"{view.images_per_s:,.0f}")
        if view.state == "failed":
            st.error(md(f"Failed: {view.error or 'no reason recorded (see log.txt in the run folder)'}"))
        elif view.state == "cancelled":
            st.warning("Cancelled: launching the same settings again resumes from the last finished epoch.")
        elif view.state == "done":
            st.success(f"Finished: {view.epoch} epoch(s), best val accuracy "
                       f"{(view.best_val_acc or 0):.3f}.")
        if view.damaged or problem:
            st.warning(md(f"Run folder problem: {view.damaged or problem}"))


def live_jobs(session_runs: Sequence[str]) -> None:
    """Jobs launched in this session plus every queued or running job, refreshed every 2 s."""

    @st.fragment(run_every=POLL_SECONDS)
    def panel() -> None:
        queue = jobs.queue(runs_dir())
        ids = [str(entry["run_id"]) for entry in queue]
        ids += [run_id for run_id in session_runs if run_id not in ids]
        if not ids:
            st.info("No job is running. Launch one above; jobs started from the command line "
                    "(python -m speedsign train) show here too.", icon=":material/info:")
            return
        runs = {info.run_id: info for info in list_runs()}
        for run_id in ids:
            info = runs.get(run_id)
            if info is None:
                st.warning(md(f"Run {run_id}: its folder is gone (deleted?)."))
                continue
            job_card(info)
        if queue:
            st.caption("Queue: one job per device at a time; the others wait their turn.")
            st.dataframe(workspace.queue_frame(queue), hide_index=True)

    panel()


def hyperparameter_inputs(approach: str, preset: str) -> dict[str, Any]:
    """Number inputs for the hand-set settings of one approach, starting at the preset's values."""
    from speedsign.config import OPTIMIZERS, SCHEDULES

    start = workspace.preset_defaults(approach, preset)
    key = f"hp-{approach}-{preset}"
    columns = st.columns(3)
    values: dict[str, Any] = {}
    values["epochs"] = columns[0].number_input("Epochs", 1, 10000, int(start["epochs"]), key=f"{key}-epochs")
    values["img_size"] = columns[1].number_input("Image size (px)", 16, 512, int(start["img_size"]),
                                                 key=f"{key}-img_size")
    values["batch_size"] = columns[2].number_input("Batch size", 1, 65536, int(start["batch_size"]),
                                                   key=f"{key}-batch_size")
    values["lr"] = columns[0].number_input("Learning rate", 1e-6, 10.0, float(start["lr"]), step=0.001,
                                           format="%.5f", key=f"{key}-lr")
    values["optimizer"] = columns[1].selectbox("Optimizer", OPTIMIZERS, OPTIMIZERS.index(start["optimizer"]),
                                               key=f"{key}-optimizer")
    values["schedule"] = columns[2].selectbox("LR schedule", SCHEDULES, SCHEDULES.index(start["schedule"]),
                                              key=f"{key}-schedule")
    values["label_smoothing"] = columns[0].number_input("Label smoothing", 0.0, 0.5,
                                                        float(start["label_smoothing"]), step=0.05,
                                                        key=f"{key}-label_smoothing")
    values["patience"] = columns[1].number_input("Early-stopping patience (0 = off)", 0, 10000,
                                                 int(start["patience"]), key=f"{key}-patience")
    values["seed"] = columns[2].number_input("Seed", 0, 2**31 - 1, int(start["seed"]), key=f"{key}-seed")
    return values


def launch(requests: Sequence[Any], *, nproc: int = 1) -> None:
    """Start each request as a background job; say at once which were already finished."""
    launched: list[str] = st.session_state.setdefault(LAUNCHED_KEY, [])
    for request in requests:
        approach = request.config.approach
        try:
            result = jobs.launch(request, nproc=nproc)
        except (UserError, OSError) as error:
            st.error(md(f"{approach}: {error}"))
            continue
        if result.run_id not in launched:
            launched.append(result.run_id)
        if result.cached:
            info = find_run(result.run_id)
            best = f"best val accuracy {info.best_val_acc:.3f}" if info and info.best_val_acc is not None else ""
            st.success(md(f"{approach}: these settings on this data set already finished as run "
                          f"{result.run_id} ({best}). Shown below; see Learning curves and Evaluation."))
        else:
            st.info(md(f"{approach}: run {result.run_id} is {result.state} in the background; "
                       "follow it below (closing this tab does not stop it)."))


# ---------------------------------------------------------------- learning curves

def curves(run_ids: Sequence[str]) -> None:
    """Loss, accuracy and learning rate per epoch of the chosen runs; live while any trains."""
    runs = {info.run_id: info for info in list_runs()}
    live = any(runs[r].state in ACTIVE_STATES for r in run_ids if r in runs)

    @st.fragment(run_every=POLL_SECONDS if live else None)
    def draw() -> None:
        current = {info.run_id: info for info in list_runs()}
        series: dict[str, list[dict[str, Any]]] = {}
        for run_id in run_ids:
            info = current.get(run_id)
            if info is None:
                st.warning(md(f"Run {run_id}: its folder is gone (deleted?)."))
                continue
            rows, problem = metrics(info)
            if problem:
                st.warning(md(f"{info.run_id}: {problem}; the readable epochs are shown."))
            if info.state == "failed":
                st.error(md(f"{info.run_id} failed: {info.status.get('error') or 'see its log.txt'}"))
            if not rows:
                if info.state in ACTIVE_STATES:
                    phase = info.status.get("phase") or info.state
                    st.info(md(f"{info.run_id} is {info.state} ({phase}): its first epoch is not finished yet."))
                continue
            series[info.run_id] = rows  # the id starts with the approach
        if not series:
            return
        # Full width, one under the other: run ids make long legends, which would squeeze
        # two side-by-side plots.
        frame = workspace.curves_frame(series)
        st.plotly_chart(plots.learning_curves(frame, value="loss"), key="curve-loss")
        st.plotly_chart(plots.learning_curves(frame, value="acc"), key="curve-acc")
        lr = workspace.lr_frame(series)
        if not lr.empty:
            st.plotly_chart(plots.lr_curve(lr), key="curve-lr")
        if any(current.get(r) is not None and current[r].state in ACTIVE_STATES for r in run_ids):
            st.caption(f"Updating every {POLL_SECONDS:.0f} s while a job trains.")

    draw()


# ---------------------------------------------------------------- evaluation

@st.cache_data(max_entries=16, show_spinner="Evaluating on the test split…")
def _test_evaluation(run_dir: str, stamp: int, data_dir: str, fingerprint: str) -> workspace.Evaluation:
    from speedsign.predict import evaluate_split
    from speedsign.runs import inspect_run

    info = inspect_run(Path(run_dir))
    report, probs, labels = evaluate_split(_predictor(run_dir, stamp), data_dir, split="test")
    return workspace.evaluation_from_report(info, report, probs, labels)


def evaluation(info: RunInfo, split: str) -> workspace.Evaluation:
    if split == "val":
        return workspace.load_val_evaluation(info)
    data_dir = workspace.run_data_dir(info)
    if data_dir is None or not data_dir.is_dir():
        raise UserError(f"the data folder of run {info.run_id} ({data_dir}) is gone: cannot evaluate its test split")
    index = scan_dataset(data_dir, require_train=False)
    return _test_evaluation(str(info.run_dir), workspace.mtime_ns(info.run_dir / "best.pt"), str(data_dir),
                            index.fingerprint)


def evaluation_panel(info: RunInfo, split: str, *, key: str) -> None:
    """Accuracy with its interval, confusion matrices, per-class scores, mistakes, calibration."""
    try:
        result = evaluation(info, split)
    except UserError as error:
        st.error(md(error))
        return
    tables = workspace.evaluation_tables(result)
    low, high = tables.interval
    columns = st.columns(3)
    columns[0].metric(f"{split} accuracy", f"{tables.accuracy:.3f}", help="95% Wilson interval below")
    columns[1].metric("Images", f"{tables.n:,}")
    columns[2].metric("ECE", f"{tables.ece:.3f}", help="expected calibration error (10 bins)")
    st.caption(f"95% interval {low:.3f} – {high:.3f}")
    counts, shares = st.tabs(["Confusion matrix (counts)", "Confusion matrix (row %)"])
    counts.plotly_chart(plots.confusion_heatmap(tables.confusion, class_names=result.classes),
                        key=f"{key}-confusion")
    shares.plotly_chart(plots.confusion_heatmap(tables.confusion, class_names=result.classes, normalize=True),
                        key=f"{key}-confusion-norm")
    st.subheader("Per class")
    st.dataframe(tables.scores.round(3))
    st.plotly_chart(plots.per_class_bars(tables.scores), key=f"{key}-per-class")
    st.subheader("Most confused pairs")
    if tables.confused.empty:
        st.caption("No mistakes on this split.")
    else:
        st.dataframe(tables.confused, hide_index=True)
    st.subheader("Calibration")
    st.plotly_chart(plots.reliability_diagram(tables.reliability, ece=tables.ece), key=f"{key}-reliability")
    st.subheader("Misclassified images")
    gallery(result, key=key)


def gallery(result: workspace.Evaluation, *, key: str) -> None:
    wrong = workspace.misclassified(result, k=GALLERY_SIZE)
    if wrong.empty:
        st.caption("Nothing misclassified.")
        return
    root = result.data_dir
    if root is None or not root.is_dir():
        st.warning(md(f"The data folder {root} is gone: mistakes are listed without their images."))
        st.dataframe(wrong[["file", "true", "predicted", "confidence"]], hide_index=True)
        return
    columns = st.columns(4)
    for position, row in enumerate(wrong.itertuples(index=False)):
        with columns[position % 4]:
            image = picture(root, row.file)
            if image is None:
                st.caption(f"{md(row.file)}: not readable here (moved, or outside the data folder)")
            else:
                st.image(image, width=96)
            st.caption(f"true {md(row.true)} → {md(row.predicted)} ({row.confidence:.0%})")


# ---------------------------------------------------------------- classify

def default_models(usable: Sequence[RunInfo]) -> list[str]:
    """All finished models when a few; otherwise the best of each approach."""
    if len(usable) <= MAX_DEFAULT_MODELS:
        return [info.run_id for info in usable]
    best: dict[str, RunInfo] = {}
    for info in usable:
        if info.approach not in best or (info.best_val_acc or 0) > (best[info.approach].best_val_acc or 0):
            best[info.approach] = info
    return [info.run_id for info in best.values()]


def answer_card(info: RunInfo, photo: Any, *, saliency: bool, key: str) -> None:
    """One model's answer: predicted sign, top-3 bars, latency, and where it looked."""
    st.markdown(f"**{md(info.approach)}**")
    st.caption(md(info.run_id))
    try:
        model = predictor(info)
        answer = workspace.classify(model, photo)
    except UserError as error:
        st.error(md(error))
        return
    st.metric("Prediction", md(answer.label), help=f"top-1 probability {answer.probs[0]:.1%}")
    st.plotly_chart(plots.topk_bars(answer.labels, answer.probs), key=f"{key}-top")
    st.caption(f"{answer.milliseconds:.1f} ms (resize + forward, CPU)" if model.device.type == "cpu"
               else f"{answer.milliseconds:.1f} ms")
    if saliency:
        try:
            overlay, informative = workspace.saliency_overlay(model, answer)
        except Exception as error:  # noqa: BLE001  (a saliency failure must not hide the answer)
            st.caption(f"No saliency map for this model ({type(error).__name__}).")
            return
        st.image(overlay, width=160, caption="Grad-CAM: red = where the model looked")
        if not informative:
            st.caption(f"Flat map: at {model.config.img_size} px the last block sees the image as one cell, "
                       "so Grad-CAM cannot point anywhere. Larger inputs give a map.")


def photo_bytes(upload: Any, camera: Any) -> bytes | None:
    """The bytes of the camera shot if there is one, else of the upload."""
    source = camera if camera is not None else upload
    return source.getvalue() if source is not None else None
