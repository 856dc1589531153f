"""Classify: a photo (upload or webcam), framed, answered by every finished model side by side."""

import streamlit as st

from speedsign import ui, workspace
from speedsign.images import ImageError

ui.through_router()

st.title("Classify")

runs = ui.list_runs()
usable = [info for info in runs if workspace.is_usable(info)]
if not usable:
    st.info("No finished model yet: train one on the Train page, then come back with a photo.")
    if any(info.state in ("queued", "running") for info in runs):
        st.caption("A job is training now; its model answers here when it finishes.")
    st.stop()

labels = {info.run_id: workspace.run_label(info) for info in usable}
chosen = st.multiselect("Models", list(labels), default=ui.default_models(usable), format_func=labels.get,
                        key="classify-models")

upload = st.file_uploader("Upload a photo of a sign", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif",
                                                            "tiff", "ppm"], key="classify-upload")
camera = st.camera_input("Take a photo", key="classify-camera") if st.toggle("Use the webcam") else None
data = ui.photo_bytes(upload, camera)
if data is None:
    st.caption("Upload or take a photo; then frame the sign with the zoom.")
    st.stop()
try:
    photo = workspace.decode_photo(data)
except ImageError as error:
    st.error(ui.md(f"That file cannot be used: {error}"))
    st.stop()

frame, answers = st.columns([1, 3])
with frame:
    zoom = st.slider("Zoom", 1.0, workspace.MAX_ZOOM, 1.0, 0.1, key="classify-zoom")
    x = st.slider("Left ↔ right", -1.0, 1.0, 0.0, 0.05, key="classify-x", disabled=zoom == 1.0 and photo.width == photo.height)
    y = st.slider("Up ↕ down", -1.0, 1.0, 0.0, 0.05, key="classify-y", disabled=zoom == 1.0 and photo.width == photo.height)
    framed = workspace.crop_square(photo, zoom=zoom, x=x, y=y)
    st.image(framed, caption=f"What the models see ({framed.width} px square, resized per model)")
    saliency = st.toggle("Show where each model looked (Grad-CAM)", value=True, key="classify-saliency")
with answers:
    if not chosen:
        st.caption("Choose one or more models.")
    by_id = {info.run_id: info for info in usable}
    for start in range(0, len(chosen), 3):
        for column, run_id in zip(st.columns(3), chosen[start:start + 3]):
            with column:
                ui.answer_card(by_id[run_id], framed, saliency=saliency, key=f"answer-{run_id}")
