"""Train: launch the approaches as background jobs and follow them live."""

from collections.abc import Sequence
from typing import Any

import streamlit as st

from speedsign import jobs, run_views, training, ui
from speedsign.config import APPROACHES, HAND_SET, PRESETS, Setting
from speedsign.errors import UserError
from speedsign.job import TrainRequest
from speedsign.runs import RunDir, RunInfo
from speedsign.storage import default_runs_dir

LAUNCHED_KEY = "launched_runs"  # run ids launched from this session: their cards stay shown
PRESET_LABELS = {"fast": "fast: tuned settings (small images, minutes on a CPU)",
                 "tutorial": "tutorial: the report's settings (224 px, batch 4: slow without a GPU)"}


@st.cache_data(ttl=30, show_spinner=False)
def imagenet_problem() -> str | None:
    # Cached: offline, the check waits on a network probe of up to a few seconds.
    return training.imagenet_problem()


def setting_input(setting: Setting, start: Any, *, key: str) -> Any:
    """One hand-set setting: a selectbox for choices, else a number input in its range."""
    label, help_text = training.input_label(setting), f"`{setting.flag}` on the command line"
    if setting.choices:
        return st.selectbox(label, setting.choices, setting.choices.index(start), key=key, help=help_text)
    low, high, step = training.input_bounds(setting)
    if setting.kind is int:
        return st.number_input(label, low, high, int(start), step, key=key, help=help_text)
    return st.number_input(label, low, high, float(start), step, format="%g", key=key, help=help_text)


def hand_set_inputs(approach: str, preset: str) -> dict[str, Any]:
    """Inputs for every hand-set setting of one approach, starting at the preset's values."""
    start = training.preset_defaults(approach, preset)
    columns = st.columns(3)
    values: dict[str, Any] = {}
    for position, setting in enumerate(HAND_SET):
        with columns[position % 3]:
            values[setting.name] = setting_input(setting, start[setting.name],
                                                 key=f"hp-{approach}-{preset}-{setting.name}")
    return values


def launch(requests: Sequence[TrainRequest], *, nproc: int = 1) -> None:
    """Start each request as a background job; say at once which were already finished."""
    launched: list[str] = st.session_state.setdefault(LAUNCHED_KEY, [])
    for request in requests:
        approach = request.config.approach
        try:
            result = jobs.launch(request, nproc=nproc)
        except (UserError, OSError) as error:
            st.error(ui.md(f"{approach}: {error}"))
            continue
        if result.run_id not in launched:
            launched.append(result.run_id)
        if result.cached:
            info = next((r for r in ui.list_runs() if r.run_id == result.run_id), None)
            best = f"best val accuracy {info.best_val_acc:.3f}" if info and info.best_val_acc is not None else ""
            st.success(ui.md(f"{approach}: these settings on this data set already finished as run "
                             f"{result.run_id} ({best}). Shown below; see Learning curves and Evaluation."))
        else:
            st.info(ui.md(f"{approach}: run {result.run_id} is {result.state} in the background; "
                          "follow it below (closing this tab does not stop it)."))


def job_card(info: RunInfo) -> None:
    """One job: state, epoch, progress with time left, val accuracy, cancel, error."""
    rows, problem = ui.metrics(info)
    view = run_views.job_view(info, rows)
    with st.container(border=True):
        head, button = st.columns([5, 1])
        head.markdown(f"**{ui.md(view.approach)}** · {ui.md(view.run_id)} · state **{ui.md(view.state)}**")
        if view.active:
            if button.button("Cancel", key=f"cancel-{view.run_id}", icon=":material/cancel:"):
                if jobs.request_cancel(info.run_dir):
                    st.toast(ui.md(f"Asked {view.run_id} to stop after this step."))
                else:
                    st.toast(ui.md(f"{view.run_id} was not running any more."))
            st.progress(view.fraction, text=ui.md(view.progress_text))
        columns = st.columns(3)
        columns[0].metric("Val accuracy (last epoch)", "–" if view.val_acc is None else f"{view.val_acc:.3f}")
        columns[1].metric("Best val accuracy", "–" if view.best_val_acc is None else f"{view.best_val_acc:.3f}")
        columns[2].metric("Images/s", "–" if view.images_per_s is None else f"{view.images_per_s:,.0f}")
        if view.state == "failed":
            reason = view.error or f"no reason recorded (see {RunDir.LOG} in the run folder)"
            st.error(ui.md(f"Failed: {reason}"))
        elif view.state == "cancelled":
            st.warning("Cancelled: launching the same settings again resumes from the last finished epoch.")
        elif view.state == "done":
            st.success(f"Finished: {view.epoch} epoch(s), best val accuracy {(view.best_val_acc or 0):.3f}.")
        if view.damaged or problem:
            st.warning(ui.md(f"Run folder problem: {view.damaged or problem}"))


@st.fragment(run_every=ui.POLL_SECONDS)
def live_jobs() -> None:
    """Jobs launched in this session plus every queued or running job, refreshed every 2 s."""
    queue = jobs.queue(default_runs_dir())
    ids = [str(entry["run_id"]) for entry in queue]
    ids += [run_id for run_id in st.session_state.get(LAUNCHED_KEY, []) if run_id not in ids]
    if not ids:
        st.info("No job is running. Launch one above; jobs started from the command line "
                "(python -m speedsign train) show here too.", icon=":material/info:")
        return
    runs = {info.run_id: info for info in ui.list_runs()}
    for run_id in ids:
        info = runs.get(run_id)
        if info is None:
            st.warning(ui.md(f"Run {run_id}: its folder is gone (deleted?)."))
            continue
        job_card(info)
    if queue:
        st.caption("Queue: one job per device at a time; the others wait their turn.")
        st.dataframe(run_views.queue_frame(queue), hide_index=True)


ui.through_router()

st.title("Train")
st.caption("Each launch is a background process: reruns, other pages and closed tabs never stop it.")

data_dir = ui.current_dataset()
if data_dir is None:
    st.info("Choose or create a data set on the Dataset page first.")
else:
    st.markdown(f"Data set: **{ui.md(data_dir.name)}**")
    approaches = st.multiselect("Approaches", APPROACHES, default=list(APPROACHES), key="train-approaches")
    preset = st.selectbox("Preset", PRESETS, key="train-preset", format_func=lambda p: PRESET_LABELS.get(p, p))
    overrides = {}
    if st.toggle("Set hyper-parameters by hand", key="train-hand") and approaches:
        for approach, tab in zip(approaches, st.tabs(list(approaches)), strict=True):
            with tab:
                overrides[approach] = hand_set_inputs(approach, preset)
    weights = None
    if any(a != "scratch" for a in approaches):
        options = training.weights_options(ui.list_runs())
        option = st.selectbox("Backbone weights for finetune and frozen", options, key="train-weights",
                              format_func=lambda o: o.label)
        weights = option.spec
        if option.spec == "path":
            weights = st.text_input("Weights file (a ResNet18 state dict) on the server", key="train-weights-path")
        elif option.spec == "imagenet" and not training.imagenet_cached():
            problem = imagenet_problem()
            if problem:
                st.warning(ui.md(problem))
            else:
                st.caption("ImageNet weights are not on this machine yet: the job downloads them (45 MB).")
    nproc = 1
    gpus = training.gpu_count()
    if gpus > 1:
        nproc = int(st.number_input("Processes (one per GPU)", 1, gpus, gpus, key="train-nproc"))
    if st.button("Launch", type="primary", icon=":material/play_arrow:", disabled=not approaches):
        with ui.user_errors():
            launch(training.build_requests(approaches=approaches, preset=preset, data_dir=data_dir,
                                           runs_dir=default_runs_dir(), weights=weights, overrides=overrides),
                   nproc=nproc)

st.subheader("Jobs")
live_jobs()

st.subheader("All runs")
runs = ui.list_runs()
if runs:
    st.dataframe(run_views.run_table(runs), hide_index=True)
else:
    st.caption(f"No runs yet in {ui.md(default_runs_dir())}.")
