"""Home: the data set in use, the device, and how the three approaches compare."""

import streamlit as st

from speedsign import ui

st.title("Speed-limit signs, three ways")
st.caption("ResNet18 fine-tuned, frozen with a new head, and trained from scratch: which works best, and why.")

index = ui.current_index()
device, data = st.columns([1, 3])
device.metric("Device", ui.device_text())
if index is None:
    data.info("No usable data set: create or choose one on the Dataset page.")
    ui.goto("app_pages/dataset.py", "Go to Dataset", ":material/photo_library:")
else:
    with data:
        ui.dataset_summary(index)
    st.subheader("Best run of each approach on this data set")
    with ui.user_errors():
        ui.comparison(index)
