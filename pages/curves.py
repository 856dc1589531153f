"""Learning curves: loss, accuracy and learning rate per epoch, live while a job trains."""

import streamlit as st

from speedsign import ui, workspace

ui.through_router()

st.title("Learning curves")

runs = ui.list_runs()
if not runs:
    st.info("No runs yet. Launch training on the Train page: curves draw here epoch by epoch while it runs.")
    ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()
labels = {info.run_id: workspace.run_label(info) for info in runs}
chosen = st.multiselect("Runs", list(labels), default=list(labels)[:6], format_func=labels.get, key="curve-runs")
ui.damaged_note(runs)
if chosen:
    ui.curves(chosen)
else:
    st.caption("Choose one or more runs.")
