"""Train: launch the approaches as background jobs and follow them live."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import streamlit as st

from speedsign import jobs, run_views, training, ui
from speedsign.budget import format_duration
from speedsign.config import APPROACHES, HAND_SET, PRESETS, Setting
from speedsign.errors import UserError
from speedsign.job import TrainRequest
from speedsign.runs import RunDir, RunInfo
from speedsign.storage import default_runs_dir

LAUNCHED_KEY = "launched_runs"  # run ids launched from this session: listed in Jobs whatever their age
WATCHED_KEY = "train-watched"  # runs this session saw queued or running (their end is announced)
ANNOUNCED_KEY = "train-announced"  # runs whose end this session announced already (one toast each)
PRESET_LABELS = {"fast": "fast: tuned settings (small images, minutes on a CPU)",
                 "tutorial": "tutorial: the report's settings (224 px, batch 4: slow without a GPU)"}


@st.cache_data(ttl=30, show_spinner=False)
def imagenet_problem() -> str | None:
    # Cached: offline, the check waits on a network probe of up to a few seconds.
    return training.imagenet_problem()


def session_set(key: str) -> set[str]:
    """A set of run ids kept in this session."""
    return st.session_state.setdefault(key, set())


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
    """Start each request as a background job; say at once which were already finished.

    Checked here, at the action: this session may write (public mode), has no job of its own
    still active, the disk budget takes the runs, and (per job) the app's cap on active jobs.
    A started job gets a toast, not a lasting notice: its card in Jobs is the lasting record,
    and it shows the live state (a notice drawn now would still say "queued" after a failure)."""
    ui.require_write("Training")
    ui.check_launch(len(requests))
    launched: list[str] = st.session_state.setdefault(LAUNCHED_KEY, [])
    watched = session_set(WATCHED_KEY)
    for request in requests:
        approach = request.config.approach
        request = dataclasses.replace(request, session=ui.session_id())  # its jobs count as this session's
        try:
            with ui.job_slot():
                result = jobs.launch(request, nproc=nproc)
        except (UserError, OSError) as error:
            st.error(ui.md(f"{approach}: {run_views.page_error(str(error))}"))
            continue
        if result.run_id not in launched:
            launched.append(result.run_id)
        if result.cached:
            info = next((r for r in ui.list_runs() if r.run_id == result.run_id), None)
            best = run_views.format_number(info.best_val_acc if info else None)
            st.success(ui.md(f"{approach}: these settings on this data set already finished as run "
                             f"{result.run_id} (best val accuracy {best}). Its card is in Jobs below; "
                             "see Learning curves and Evaluation."))
        else:
            watched.add(result.run_id)  # its end is announced, however soon it comes
            what = "queued" if result.state == "queued" else f"already {result.state}"
            st.toast(ui.md(f"{approach}: run {result.run_id} {what} in the background. Its card in Jobs "
                           "follows it; closing this tab does not stop it."), icon=":material/rocket_launch:")


def cancel(info: RunInfo, run_id: str) -> None:
    """Ask a job to stop (the owner's only, in public mode: checked here, not only at the button)."""
    try:
        ui.require_write("Cancelling a job")
    except UserError as error:
        st.error(ui.md(error))
        return
    if jobs.request_cancel(info.run_dir):
        st.toast(ui.md(f"Asked {run_id} to stop after this step."))
    else:
        st.toast(ui.md(f"{run_id} was not running any more."))


def job_card(info: RunInfo) -> None:
    """One job: state, epoch, progress with time left, val accuracy, cancel, error."""
    rows, problem = ui.metrics(info)
    view = run_views.job_view(info, rows)
    with st.container(border=True):
        head, button = st.columns([5, 1])
        head.markdown(f"**{ui.md(view.approach)}** · {ui.md(view.run_id)} · state **{ui.md(view.state)}**")
        head.caption(ui.md(run_views.job_times(info)))
        if view.active:
            if ui.can_write() and button.button("Cancel", key=f"cancel-{view.run_id}", icon=":material/cancel:"):
                cancel(info, view.run_id)
            st.progress(view.fraction, text=ui.md(view.progress_text))
        columns = st.columns(3)
        columns[0].metric("Val accuracy (last epoch)", run_views.format_number(view.val_acc))
        columns[1].metric("Best val accuracy", run_views.format_number(view.best_val_acc))
        columns[2].metric("Images/s", "–" if view.images_per_s is None else f"{view.images_per_s:,.0f}")
        if view.state == "failed":
            reason = view.error or f"no reason recorded (see {RunDir.LOG} in the run folder)"
            st.error(ui.md(f"Failed: {reason}"))
        elif view.state == "cancelled":
            st.warning("Cancelled: launching the same settings again resumes from the last finished epoch.")
        elif view.state == "done":
            st.success(f"Done: {view.epoch} epoch(s), best val accuracy {run_views.format_number(view.best_val_acc)}. "
                       "See how it learned and where it errs:", icon=":material/check_circle:")
            links = st.columns(2)
            with links[0]:
                ui.goto("pages/curves.py", "Learning curves", icon=":material/show_chart:")
            with links[1]:
                ui.goto("pages/evaluation.py", "Evaluation", icon=":material/fact_check:")
        if view.damaged or problem:
            st.warning(ui.md(f"Run folder problem: {view.damaged or problem}"))


def announce_endings(runs: Sequence[RunInfo]) -> None:
    """A toast, once, for each job this session watched that has ended since."""
    for info in run_views.newly_ended(runs, session_set(WATCHED_KEY), session_set(ANNOUNCED_KEY)):
        if info.state == "done":
            st.toast(ui.md(f"{info.run_id} is done: best val accuracy {run_views.format_number(info.best_val_acc)}. "
                           "See Learning curves and Evaluation."), icon=":material/check_circle:")
        elif info.state == "failed":
            st.toast(ui.md(f"{info.run_id} failed: its card in Jobs says why."), icon=":material/error:")
        else:
            st.toast(ui.md(f"{info.run_id} is {info.state}."), icon=":material/cancel:")


@st.fragment(run_every=ui.POLL_SECONDS)
def live_runs() -> None:
    """Jobs, the queue and All runs, refreshed every 2 s from ONE read of the run store: a card,
    the queue and the table never show two states for a run (RunInfo.state is the live state,
    so a job that died reads failed everywhere at once)."""
    runs = ui.list_runs()
    announce_endings(runs)
    st.subheader("Jobs")
    pinned = list(st.session_state.get(LAUNCHED_KEY, []))
    shown = run_views.recent_jobs(runs, pinned=pinned)
    if not any(run_views.is_active(info) for info in shown):
        if shown:
            st.caption("No job is running now. Jobs that ended in the last 24 hours:")
        else:
            st.info("No job is running. Launch one above; jobs started from the command line "
                    "(python -m speedsign train) show here too.", icon=":material/info:")
    for info in shown:
        job_card(info)
    known = {info.run_id for info in runs}
    for run_id in pinned:
        if run_id not in known:
            st.warning(ui.md(f"Run {run_id}: its folder is gone (deleted?)."))
    queue = jobs.queue_of(runs)
    if queue:
        st.caption("Queue: one job per device at a time; the others wait their turn.")
        st.dataframe(run_views.queue_frame(queue), hide_index=True)
    st.subheader("All runs")
    if runs:
        st.dataframe(run_views.run_table(runs), hide_index=True)
    else:
        st.caption(f"No runs yet in {ui.md(default_runs_dir())}.")


ui.through_router()

st.title("Train")
st.caption("Each launch is a background process: reruns, other pages and closed tabs never stop it.")

data_dir = ui.current_dataset()
if not ui.can_write():
    ui.owner_only("Training (launching and cancelling jobs)")
elif data_dir is None:
    st.info("Choose or create a data set on the Dataset page first.")
else:
    st.markdown(f"Data set: **{ui.md(data_dir.name)}**")
    known_runs = ui.list_runs()
    problem = imagenet_problem()
    # Never start from a setup known to fail: no usable backbone here means scratch alone.
    backbones = known_runs + ui.list_published()  # the shipped models make finetune and frozen train offline
    defaults = training.train_defaults(backbones, imagenet_problem=problem)
    approaches = st.multiselect("Approaches", APPROACHES, default=list(defaults.approaches), key="train-approaches")
    needs_weights = any(a != "scratch" for a in approaches)
    if defaults.note and not needs_weights:
        st.info(defaults.note, icon=":material/info:")
    preset_column, budget_column = st.columns([3, 1])
    preset = preset_column.selectbox("Preset", PRESETS, key="train-preset",
                                     format_func=lambda p: PRESET_LABELS.get(p, p))
    choices = training.budget_choices(preset)
    budget = budget_column.selectbox(
        "Time budget", choices, 0, key=f"train-budget-{preset}",
        format_func=lambda b: "preset's" if b is None else format_duration(b),
        help="Each job ends within this time on this machine: it times its first steps and plans the steps "
             "(and, if that pays, a smaller input size) to fit. \"preset's\": "
             f"{training.describe_preset_budgets(preset)}. \"epochs\": train the preset's epochs, "
             "however long they take. `--budget` on the command line.")
    overrides = {}
    if st.toggle("Set hyper-parameters by hand", key="train-hand") and approaches:
        for approach, tab in zip(approaches, st.tabs(list(approaches)), strict=True):
            with tab:
                overrides[approach] = hand_set_inputs(approach, preset)
    weights = None
    blocker = None
    option_is_path = False
    if needs_weights:
        options = training.weights_options(backbones, imagenet_ok=problem is None)
        option = st.selectbox("Backbone weights for finetune and frozen", options, defaults.weights_index(options),
                              key="train-weights", format_func=lambda o: o.label)
        weights = option.spec
        option_is_path = option.spec == "path"
        if option_is_path:
            weights = st.text_input("Weights file (a ResNet18 state dict) on the server", key="train-weights-path",
                                    help="Inside the data folder, the runs folder or a folder the owner allowed.")
        elif option.spec == "imagenet":
            blocker = training.launch_blocker(approaches, weights, imagenet_problem=problem)
            if blocker:
                st.warning(ui.md(blocker), icon=":material/warning:")
            elif not training.imagenet_cached():
                st.caption("ImageNet weights are not on this machine yet: the job downloads them (45 MB).")
    nproc = 1
    gpus = training.gpu_count()
    if gpus > 1:
        nproc = int(st.number_input("Processes (one per GPU)", 1, gpus, gpus, key="train-nproc"))
    if blocker:
        st.caption("Launch is off: finetune and frozen cannot load this backbone here. Choose another "
                   "backbone, or train scratch alone.")
    if st.button("Launch", type="primary", icon=":material/play_arrow:", disabled=not approaches or bool(blocker),
                 key="train-launch"):
        with ui.user_errors():
            ui.require_write("Training")
            if option_is_path and weights.strip():
                weights = str(ui.confined(weights))  # a file, never a spec: "imagenet" typed here is a path
            launch(training.build_requests(approaches=approaches, preset=preset, data_dir=data_dir,
                                           runs_dir=default_runs_dir(), weights=weights, overrides=overrides,
                                           budget=budget),
                   nproc=nproc)

live_runs()
