"""Learning curves: loss, accuracy and learning rate per epoch, live while a job trains."""

from collections.abc import Sequence
from typing import Any

import streamlit as st

from speedsign import plots, run_views, ui
from speedsign.runs import RunDir


def readable_series(run_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The chosen runs' epochs, saying on the page why a run has none (gone, failed, not started)."""
    current = {info.run_id: info for info in ui.list_runs()}
    series: dict[str, list[dict[str, Any]]] = {}
    for run_id in run_ids:
        info = current.get(run_id)
        if info is None:
            st.warning(ui.md(f"Run {run_id}: its folder is gone (deleted?)."))
            continue
        rows, problem = ui.metrics(info)
        if problem:
            st.warning(ui.md(f"{info.run_id}: {problem}; the readable epochs are shown."))
        if info.state == "failed":
            reason = info.error or f"see its {RunDir.LOG}"
            st.error(ui.md(f"{info.run_id} failed: {reason}"))
        if not rows:
            if run_views.is_active(info):
                phase = info.status.phase or info.state
                st.info(ui.md(f"{info.run_id} is {info.state} ({phase}): its first epoch is not finished yet."))
            continue
        series[info.run_id] = rows  # the id starts with the approach
    return series


def draw_curves(run_ids: Sequence[str]) -> bool:
    """Loss, accuracy and learning rate of the runs; whether any of them is still training."""
    series = readable_series(run_ids)
    if series:
        # Full width, one under the other: run ids make long legends, which would squeeze
        # two side-by-side plots.
        frame = run_views.curves_frame(series)
        st.plotly_chart(plots.learning_curves(frame, value="loss"), key="curve-loss")
        st.plotly_chart(plots.learning_curves(frame, value="acc"), key="curve-acc")
        lr = run_views.lr_frame(series)
        if not lr.empty:
            st.plotly_chart(plots.lr_curve(lr), key="curve-lr")
    runs = {info.run_id: info for info in ui.list_runs()}
    return any(run_id in runs and run_views.is_active(runs[run_id]) for run_id in run_ids)


@st.fragment(run_every=ui.POLL_SECONDS)
def live_curves(run_ids: Sequence[str]) -> None:
    """The curves, redrawn every few seconds while a chosen run trains."""
    if draw_curves(run_ids):
        st.caption(f"Updating every {ui.POLL_SECONDS:.0f} s while a job trains.")


ui.through_router()

st.title("Learning curves")

runs = ui.list_runs()
if not runs:
    st.info("No runs yet. Launch training on the Train page: curves draw here epoch by epoch while it runs.")
    ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()
labels = {info.run_id: run_views.run_label(info) for info in runs}
chosen = st.multiselect("Runs", list(labels), default=list(labels)[:6], format_func=labels.get, key="curve-runs")
ui.damaged_note(runs)
if not chosen:
    st.caption("Choose one or more runs.")
elif any(run_views.is_active(info) for info in runs if info.run_id in chosen):
    live_curves(chosen)
else:
    draw_curves(chosen)
