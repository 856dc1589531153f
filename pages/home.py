"""Home: the data set in use, the device, and how the three approaches compare."""

import streamlit as st

from speedsign import ui

ui.through_router()

st.title("Speed-limit signs, three ways")
st.caption("ResNet18 fine-tuned, frozen with a new head, and trained from scratch: which works best, and why.")

st.markdown(f"Device: **{ui.md(ui.device_text())}**")
index = ui.current_index()
if index is None:
    st.info("No usable data set: create or choose one on the Dataset page.")
    ui.goto("pages/dataset.py", "Go to Dataset", ":material/photo_library:")
else:
    st.markdown(f"Data set in use: **{ui.md(index.root.name)}**")
    ui.dataset_summary(index)
    st.subheader("Best run of each approach on this data set")
    with ui.user_errors():
        ui.comparison(index)
