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
- Public mode (speedsign.access): a control that writes or touches a server path is drawn only
  when `can_write()`, and its action calls `require_write()` again before doing anything, so
  a crafted widget state cannot write. Typed server paths go through `confined()`; launches,
  renders and imports through the quota checks (speedsign.quotas).
This is the only module of speedsign that imports Streamlit.
"""

from __future__ import annotations

import contextlib
import os
import re
import runpy
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from speedsign import access, datasets, quotas, run_views
from speedsign.bundles import bundles_signature, default_models_dir, list_bundles
from speedsign.data import DatasetIndex, scan_dataset
from speedsign.errors import UserError
from speedsign.progress import ProgressClock
from speedsign.runs import RunDir, RunInfo, read_metrics
from speedsign.runs import list_runs as read_runs
from speedsign.storage import default_data_dir, default_runs_dir

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
    """The shared sidebar: data set choice, the device, and (public mode) the owner's unlock.
    Returns the current data folder."""
    current = settings()
    entries = datasets.list_datasets()
    labels = {str(entry.path): entry.name for entry in entries}
    # Folders chosen in this session that are not under the data root: kept only while inside
    # the allowed roots (a crafted session value never reaches the pages).
    roots = access.allowed_roots(current)
    extras: list[str] = [path for path in st.session_state.get(_EXTRA_KEY, [])
                         if isinstance(path, str) and access.is_inside(path, roots)]
    st.session_state[_EXTRA_KEY] = extras
    pending = st.session_state.pop(_PENDING_KEY, None)
    if pending is not None and (not isinstance(pending, str)
                                or (pending not in labels and not access.is_inside(pending, roots))):
        pending = None
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
        owner_sidebar(current)
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


# ---------------------------------------------------------------- access: owner or public mode, quotas

SESSION_ID_KEY = "_speedsign_session_id"  # this browser session's id (its jobs carry it)
UNLOCK_KEY = "_speedsign_unlock"  # the owner's unlock token (access.unlock_token), this session only
PASSWORD_KEY = "owner-password"
_UNLOCK_FAILED_KEY = "_speedsign_unlock_failed"
OWNER_HINT = "the owner can unlock it with the password in the sidebar"
_launch_lock = threading.Lock()  # one process serves every session: check and launch as one step


def read_secrets() -> tuple[dict[str, Any], str | None]:
    """Streamlit's secrets as a dict, and why they could not be read ({} and None when there is no
    secrets.toml: a local run; a file that does not parse is a problem, and the app goes public)."""
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        return st.secrets.to_dict(), None
    except StreamlitSecretNotFoundError as error:
        error_id = getattr(error, "error_id", None)
        if error_id == "no-secrets-found" or (error_id is None and "No secrets" in str(error)):
            return {}, None
        return {}, str(error)
    except Exception as error:  # any other failure to read them fails closed too
        return {}, f"{type(error).__name__}: {error}"


def settings() -> access.Settings:
    """Access and quota settings, from the environment and the secrets (read on every call: cheap)."""
    secrets, problem = read_secrets()
    return access.load_settings(os.environ, secrets, secrets_problem=problem)


def session_id() -> str:
    """This browser session's id (a reload is a new session)."""
    value = st.session_state.get(SESSION_ID_KEY)
    if not isinstance(value, str) or not value:
        value = uuid.uuid4().hex
        st.session_state[SESSION_ID_KEY] = value
    return value


def _write_allowed() -> bool:
    return settings().can_write(st.session_state.get(UNLOCK_KEY))


def can_write() -> bool:
    """Whether this session may see the controls that write or touch server paths (owner mode, or
    public mode unlocked). Draw those controls only when true; their actions call `require_write`."""
    return _write_allowed()


def require_write(what: str) -> None:
    """The check at the action itself: UserError unless this session may write. Independent of
    `can_write` (a page that drew a control by mistake, or a crafted widget state, still writes nothing)."""
    if not _write_allowed():
        raise UserError(f"{what} is for the app's owner: this app is in public mode ({OWNER_HINT}).")


def owner_only(what: str) -> None:
    """In place of the controls hidden in public mode: what is there and how to get it."""
    st.info(f"{what} is for the app's owner: this shared app is in public mode, where visitors explore, "
            f"evaluate and classify ({OWNER_HINT}).", icon=":material/lock:")


def _try_unlock() -> None:
    """The password box's callback: unlock this session, or remember that the password was wrong."""
    given = st.session_state.get(PASSWORD_KEY, "")
    st.session_state[PASSWORD_KEY] = ""  # never kept, never shown again
    if not isinstance(given, str) or not given:
        return
    current = settings()
    if access.check_password(current, given):
        st.session_state[UNLOCK_KEY] = access.unlock_token(current)
        st.session_state.pop(_UNLOCK_FAILED_KEY, None)
    else:
        st.session_state.pop(UNLOCK_KEY, None)
        st.session_state[_UNLOCK_FAILED_KEY] = True


def _lock() -> None:
    st.session_state.pop(UNLOCK_KEY, None)


def owner_sidebar(current: access.Settings) -> None:
    """The sidebar's access part: settings that were refused, and in public mode the owner's unlock."""
    for problem in current.problems:
        st.warning(md(problem), icon=":material/warning:")
    if not current.public:
        return
    if current.can_write(st.session_state.get(UNLOCK_KEY)):
        st.caption("Owner: unlocked in this browser session.")
        st.button("Lock", key="owner-lock", on_click=_lock, icon=":material/lock:")
        return
    st.caption("Public mode: explore, evaluate and classify.")
    if not current.has_password:
        st.caption("No owner password is set: training and imports are off.")
        return
    st.text_input("Owner: unlock", type="password", key=PASSWORD_KEY, on_change=_try_unlock,
                  placeholder="owner password", help="Unlocks training and imports for this browser session.")
    if st.session_state.pop(_UNLOCK_FAILED_KEY, False):
        st.error("Wrong password: still locked.", icon=":material/lock:")


def confined(text: str) -> Path:
    """A server path typed in a page, resolved, if it lies inside the allowed roots (UserError else)."""
    return access.confine(text, access.allowed_roots(settings()))


def check_disk(estimate: int, what: str) -> None:
    """Refuse `what` (UserError) when the data and runs folders would pass the disk budget."""
    quotas.check_disk((default_data_dir(), default_runs_dir()), estimate=estimate,
                      budget_bytes=settings().disk_budget_bytes, what=what)


def check_launch(n_jobs: int) -> None:
    """Before a Launch of n_jobs jobs: this session's own active jobs, and the disk they need."""
    quotas.check_session_jobs(read_runs(default_runs_dir()), session=session_id(), limit=settings().session_jobs)
    check_disk(quotas.runs_bytes(n_jobs), f"Training {n_jobs} job(s)")


@contextlib.contextmanager
def job_slot() -> Iterator[None]:
    """Around one jobs.launch: the global cap on active jobs, checked and used under one lock."""
    with _launch_lock:
        quotas.check_job_slots(read_runs(default_runs_dir()), limit=settings().max_jobs)
        try:
            yield
        finally:
            quotas.forget_usage()


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


@st.cache_data(max_entries=4, show_spinner=False)
def _published(path: str, signature: tuple) -> list[RunInfo]:
    return list_bundles(Path(path))


def list_published() -> list[RunInfo]:
    """The published models in models/ (read-only), verified once per change of their files."""
    path = default_models_dir()
    return _published(str(path), bundles_signature(path))


def list_models() -> list[RunInfo]:
    """What the viewing pages offer: every run, then every published model."""
    return list_runs() + list_published()


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
    return _predictor(str(run_dir), run_views.mtime_ns(folder.model) + calibrated)


def damaged_note(runs: Sequence[RunInfo]) -> None:
    """An expander listing the damaged run folders that the page leaves out."""
    damaged = run_views.damaged_frame(runs)
    if not damaged.empty:
        what = "folder(s)" if damaged["run"].str.startswith("bundle:").any() else "run folder(s)"
        with st.expander(f"{len(damaged)} {what} are damaged and left out", icon=":material/warning:"):
            st.dataframe(damaged, hide_index=True)
