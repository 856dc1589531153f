"""Evaluation: confusion matrices, per-class scores, mistakes and calibration of a run."""

import streamlit as st

from speedsign import ui, workspace

ui.through_router()

st.title("Evaluation")

runs = ui.list_runs()
usable = [info for info in runs if workspace.is_usable(info)]
ui.damaged_note(runs)
if not usable:
    if any(info.state in ("queued", "running") for info in runs):
        st.info("A job is still running: its evaluation appears here when it finishes.")
    else:
        st.info("No finished runs yet. Train one on the Train page.")
        ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()

labels = {info.run_id: workspace.run_label(info) for info in usable}
by_id = {info.run_id: info for info in usable}
left, middle, right = st.columns([3, 1, 2])
first = left.selectbox("Run", list(labels), format_func=labels.get, key="eval-run")
split = middle.selectbox("Split", workspace.split_choices(by_id[first]), key="eval-split")
second = None
if len(usable) > 1 and right.toggle("Compare with another run", key="eval-compare"):
    others = [run_id for run_id in labels if run_id != first]
    second = right.selectbox("Second run", others, format_func=labels.get, key="eval-second")

if second is None:
    ui.evaluation_panel(by_id[first], split, key="first")
else:
    columns = st.columns(2)
    for column, run_id, key in ((columns[0], first, "first"), (columns[1], second, "second")):
        with column:
            st.markdown(f"**{ui.md(labels[run_id])}**")
            run_split = split if split in workspace.split_choices(by_id[run_id]) else "val"
            ui.evaluation_panel(by_id[run_id], run_split, key=key)
