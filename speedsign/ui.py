"""What the dashboard's pages share: cached loaders, the sidebar, routing, messages.

Each page (pages/*.py) draws its own widgets top to bottom and calls the library for
values; this module holds only what two or more pages use. Rules kept here:
- Nothing trains in the script thread: training is `jobs.launch` (a separate process), and
  live views poll the run store with `st.fragment(run_every=...)`.
- Everything read from disk (class names, run ids, file names) is untrusted: it goes into
  dataframes, plain text, figures from `plots` (which escape), or markdown through `md`,
  never into `unsafe_allow_html`.
- A `UserError` (bad upload, bad setting, damaged run) is a message in the page, never a
  traceback: wrap the work in `with user_errors():`.
This is the only module of speedsign that imports Streamlit.
"""

from __future__ import annotations

import contextlib
import re
import runpy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from speedsign import datasets, run_views
from speedsign.data import DatasetIndex, scan_dataset
from speedsign.errors import UserError
from speedsign.progress import ProgressClock
from speedsign.runs import RunDir, RunInfo, read_metrics
from speedsign.runs import list_runs as read_runs
from speedsign.storage import default_runs_dir

DATASET_KEY = "dataset"  # the sidebar's data set (a folder path), shared by every page
_PENDING_KEY = "_dataset_pending"
_EXTRA_KEY = "_extra_datasets"  # server folders chosen in this session
_NOTICE_KEY = "_notices"  # messages that must survive the rerun that follows an action
POLL_SECONDS = 2.0

# The app process only predicts (training runs in job processes). One thread per forward
# keeps a single-image answer fast while a job keeps the cores busy: measured on 2 busy
# cores (load ~5), p95 latency was ~22 ms with one thread against 620-720 ms with two.
torch.set_num_threads(1)

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$=^&\"'])")


# ---------------------------------------------------------------- routing and messages

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
    """The messages kept by `notify`, shown once."""
    for kind, message in st.session_state.pop(_NOTICE_KEY, []):
        getattr(st, kind)(md(message))  # messages carry paths and names from disk


def progress_reporter(label: str) -> Callable[[int, int], None]:
    """A (done, total) callback drawing a progress bar with elapsed time and time left."""
    bar = st.progress(0.0, text=f"{label}: starting…")
    clock = ProgressClock()
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - last[0] < 0.1:  # a few redraws per second are enough
            return
        last[0] = now
        fraction, text = clock.describe(done, total)
        bar.progress(fraction, text=f"{label}: {text}")

    return report


def goto(page: str, label: str, icon: str | None = None) -> None:
    """A link to another page (quietly nothing when the page is not registered, as in a bare test)."""
    try:
        st.page_link(page, label=label, icon=icon)
    except Exception:  # st.page_link raises when navigation is not set up
        pass


# ---------------------------------------------------------------- the sidebar: data set and device

def use_dataset(path: Path | str) -> None:
    """Make `path` the current data set (takes effect on the rerun this starts)."""
    st.session_state[_PENDING_KEY] = str(path)
    st.rerun()


def sidebar() -> Path | None:
    """The shared sidebar: data set choice and the device. Returns the current data folder."""
    entries = datasets.list_datasets()
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
    """The data folder chosen in the sidebar, if any."""
    value = st.session_state.get(DATASET_KEY)
    return Path(value) if value else None


@st.cache_resource(show_spinner=False)
def device_text() -> str:
    """The device a job with device=auto would train on (GPU name, or CPU and its threads)."""
    from speedsign.train import describe_device, pick_device

    return describe_device(pick_device("auto"))


# ---------------------------------------------------------------- data sets

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


@st.cache_data(max_entries=512, show_spinner=False)
def _picture(root: str, relative: str, max_side: int, fingerprint: str) -> np.ndarray | None:
    return datasets.load_picture(root, relative, max_side=max_side)


def picture(root: Path | str, relative: str, *, max_side: int = 128, fingerprint: str = "") -> np.ndarray | None:
    """A data-set image for display (None when unreadable or outside its folder), cached."""
    return _picture(str(root), str(relative), max_side, fingerprint)


def dataset_summary(index: DatasetIndex) -> None:
    """Name, layout and size of a data set, with its skipped files."""
    counts = datasets.split_sizes(index)
    columns = st.columns(4)
    columns[0].metric("Images", f"{sum(counts.values()):,}")
    columns[1].metric("Classes", len(index.classes))
    columns[2].metric("Train / val", f"{counts.get('train', 0):,} / {counts.get('val', 0):,}")
    columns[3].metric("Test", f"{counts.get('test', 0):,}")
    st.caption(f"Folder {md(index.root)} · {md(datasets.layout_description(index))} · "
               f"fingerprint {md(index.fingerprint)}")
    if index.ignored:
        with st.expander(f"{len(index.ignored)} file(s) skipped (not images, or links leaving the folder)"):
            st.dataframe({"file": list(index.ignored)}, hide_index=True)


# ---------------------------------------------------------------- runs and models

@st.cache_data(ttl=POLL_SECONDS, max_entries=8, show_spinner=False)
def _runs(path: str, signature: tuple) -> list[RunInfo]:
    return read_runs(Path(path))


def list_runs() -> list[RunInfo]:
    """Every run, newest first; re-read when a run's files change, and every few seconds
    anyway (a job that died changes no file, only its heartbeat's age)."""
    path = default_runs_dir()
    return _runs(str(path), run_views.runs_signature(path))


@st.cache_data(max_entries=256, show_spinner=False)
def _metrics(run_dir: str, stamp: int) -> tuple[list[dict[str, Any]], str | None]:
    return read_metrics(Path(run_dir))


def metrics(info: RunInfo) -> tuple[list[dict[str, Any]], str | None]:
    """A run's per-epoch metrics rows and a note when a line is damaged (keyed by mtime)."""
    try:
        stamp = info.folder.metrics.stat().st_mtime_ns
    except OSError:
        return [], None
    return _metrics(str(info.run_dir), stamp)


# A ResNet18 is ~45 MB: nine (three per approach) stay well inside a 2.7 GB Community Cloud box.
@st.cache_resource(max_entries=9, show_spinner="Loading the model…")
def _predictor(run_dir: str, stamp: int) -> Any:
    from speedsign.predict import Predictor

    model = Predictor(run_dir)
    # One forward now: the first one pays for allocations, and would show as the latency.
    side = model.config.stored_size
    model.predict_tensor(torch.zeros((3, side, side), dtype=torch.uint8))
    return model


def predictor(run_dir: Path | str) -> Any:
    """A run's best model, loaded once per process and shared by every session (thread-safe).

    Keyed by the best checkpoint's and the calibration's mtimes: a retrained run (--force) gets
    its new weights, and a refitted temperature is used at once."""
    folder = RunDir(run_dir)
    calibrated = folder.calibration.stat().st_mtime_ns if folder.calibration.is_file() else 0
    return _predictor(str(run_dir), run_views.mtime_ns(folder.best) + calibrated)


def damaged_note(runs: Sequence[RunInfo]) -> None:
    """An expander listing the damaged run folders that the page leaves out."""
    damaged = run_views.damaged_frame(runs)
    if not damaged.empty:
        with st.expander(f"{len(damaged)} run folder(s) are damaged and left out", icon=":material/warning:"):
            st.dataframe(damaged, hide_index=True)
