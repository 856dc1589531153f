"""Train: launch the approaches as background jobs and follow them live."""

import streamlit as st

from speedsign import ui, workspace
from speedsign.config import APPROACHES, PRESETS

ui.through_router()

st.title("Train")
st.caption("Each launch is a background process: reruns, other pages and closed tabs never stop it.")

data_dir = ui.current_dataset()
if data_dir is None:
    st.info("Choose or create a data set on the Dataset page first.")
else:
    st.markdown(f"Data set: **{ui.md(data_dir.name)}**")
    approaches = st.multiselect("Approaches", APPROACHES, default=list(APPROACHES), key="train-approaches")
    preset = st.selectbox("Preset", PRESETS, key="train-preset", format_func=lambda p: {
        "fast": "fast: tuned settings (small images, minutes on a CPU)",
        "tutorial": "tutorial: the report's settings (224 px, batch 4: slow without a GPU)"}.get(p, p))
    overrides = {}
    if st.toggle("Set hyper-parameters by hand", key="train-hand"):
        if approaches:
            for approach, tab in zip(approaches, st.tabs(list(approaches))):
                with tab:
                    overrides[approach] = ui.hyperparameter_inputs(approach, preset)
    weights = None
    if any(a != "scratch" for a in approaches):
        options = workspace.weights_options(ui.list_runs())
        option = st.selectbox("Backbone weights for finetune and frozen", options, key="train-weights",
                              format_func=lambda o: o.label)
        weights = option.spec
        if option.spec == "path":
            weights = st.text_input("Weights file (a ResNet18 state dict) on the server", key="train-weights-path")
        elif option.spec == "imagenet" and not workspace.imagenet_available():
            st.warning("ImageNet weights are not on this machine: the job downloads them, and fails in seconds "
                       "with a clear message when offline. A finished run's backbone works offline.")
    nproc = 1
    if ui.gpu_count() > 1:
        nproc = int(st.number_input("Processes (one per GPU)", 1, ui.gpu_count(), ui.gpu_count(), key="train-nproc"))
    if st.button("Launch", type="primary", icon=":material/play_arrow:", disabled=not approaches):
        with ui.user_errors():
            ui.launch(workspace.build_requests(approaches=approaches, preset=preset, data_dir=data_dir,
                                               runs_dir=ui.runs_dir(), weights=weights, overrides=overrides),
                      nproc=nproc)

st.subheader("Jobs")
ui.live_jobs(st.session_state.get(ui.LAUNCHED_KEY, []))

st.subheader("All runs")
runs = ui.list_runs()
if runs:
    st.dataframe(ui.run_table(runs), hide_index=True)
else:
    st.caption(f"No runs yet in {ui.md(ui.runs_dir())}.")
