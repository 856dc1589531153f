"""Learning curves: loss, accuracy and learning rate against epochs, seconds or images seen,
live while a job trains."""

from collections.abc import Sequence
from typing import Any

import streamlit as st

from speedsign import plots, run_views, ui
from speedsign.runs import RunInfo

# Failed runs listed by name in the page's one error box; beyond, a count.
LISTED_FAILURES = 5


def readable_series(run_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The chosen runs' epochs, saying on the page why a run has none (gone, not started).

    Why a run failed is not said here (this redraws every few seconds): `failure_note` says it
    once, above the charts."""
    current = {info.run_id: info for info in ui.list_models()}
    series: dict[str, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        info = current.get(run_id)
        if info is None:
            st.warning(ui.md(f"Run {run_id}: its folder is gone (deleted?)."))
            continue
        rows, problem = ui.metrics(info)
        if problem:
            st.warning(ui.md(f"{info.run_id}: {problem}; the readable epochs are shown."))
        if not rows:
            if run_views.is_active(info):
                phase = info.status.phase or info.state
                st.info(ui.md(f"{info.run_id} is {info.state} ({phase}): its first epoch is not finished yet."))
            else:
                st.caption(ui.md(f"{info.run_id} ({info.state}) finished no epoch: it has no curve."))
            continue
        series[info.run_id] = rows  # the id starts with the approach
    return series


def draw_curves(run_ids: Sequence[str], x: str = "epoch") -> bool:
    """Loss, accuracy and learning rate of the runs; whether any of them is still training."""
    series = readable_series(run_ids)
    if series:
        # One figure, three panels on one epoch axis: they line up whatever their legends and
        # tick labels, and run ids make long legends (full width, one panel under the other).
        figure = plots.training_curves(run_views.curves_frame(series), run_views.lr_frame(series), x=x)
        st.plotly_chart(figure, key="curves")
    runs = {info.run_id: info for info in ui.list_models()}
    return any(run_id in runs and run_views.is_active(runs[run_id]) for run_id in run_ids)


@st.fragment(run_every=ui.POLL_SECONDS)
def live_curves(run_ids: Sequence[str], x: str = "epoch") -> None:
    """The curves, redrawn every few seconds while a chosen run trains."""
    if draw_curves(run_ids, x):
        st.caption(f"Updating every {ui.POLL_SECONDS:.0f} s while a job trains.")
    else:
        st.rerun()  # the last job ended: the whole page again, with its failure note and choices


def failure_note(failed: Sequence[RunInfo]) -> None:
    """Why runs failed, once on the page: one error box, one line per run."""
    frame = run_views.failure_frame(failed)
    if frame.empty:
        return
    lines = [f"- {ui.md(run)}: {ui.md(reason)}" for run, reason in frame.head(LISTED_FAILURES).itertuples(index=False)]
    if len(frame) > LISTED_FAILURES:
        lines.append(f"- and {len(frame) - LISTED_FAILURES} more (the Train page lists every run)")
    head = "1 run failed:" if len(frame) == 1 else f"{len(frame)} runs failed:"
    after = ("Once the cause is fixed, launching the same settings again on the Train page resumes a run "
             "from its last finished epoch.")
    st.error(head + "\n" + "\n".join(lines) + "\n\n" + after, icon=":material/error:")


def choice_label(info: RunInfo, fingerprint: str | None) -> str:
    """The picker's name of a run, saying when it trained on another data set."""
    label = run_views.run_label(info)
    return label if run_views.on_dataset(info, fingerprint) else label + " · other data set"


ui.through_router()

st.title("Learning curves")

runs = ui.list_models()
if not runs:
    st.info("No runs yet. Launch training on the Train page: curves draw here epoch by epoch while it runs.")
    ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()
index = ui.current_index()
fingerprint = index.fingerprint if index is not None else None
labels = {info.run_id: choice_label(info, fingerprint) for info in runs}
default = run_views.default_curve_runs(runs, fingerprint=fingerprint)
chosen = st.multiselect("Runs", list(labels), default=default, format_func=labels.get, key="curve-runs",
                        help="Drawn unasked: this data set's finished runs and those training now, newest first "
                             "(with none, the published models). "
                             "Failed and cancelled runs, and runs of other data sets, can be chosen too.")
axis = st.radio("x-axis", list(run_views.CURVE_AXES), format_func=run_views.CURVE_AXES.get, horizontal=True,
                key="curve-x",
                help="Seconds: the wall time of training; images: training images seen (runs of older versions "
                     "did not record it). Both compare runs of different batch sizes and input sizes fairly.")
ui.damaged_note(runs)
# The failures of this data set, and of any run chosen from another one.
failure_note([info for info in runs if info.run_id in chosen or run_views.on_dataset(info, fingerprint)])
if not chosen:
    if default:
        st.caption("Choose one or more runs.")
    else:
        st.caption("No finished or running run on this data set yet: choose runs above, or launch one on the "
                   "Train page.")
        ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
elif any(run_views.is_active(info) for info in runs if info.run_id in chosen):
    live_curves(chosen, axis)
else:
    draw_curves(chosen, axis)
