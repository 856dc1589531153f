"""Classify: a photo (upload or webcam), framed, answered by every finished model side by side."""

from typing import Any

import streamlit as st

from speedsign import classify, plots, run_views, ui
from speedsign.errors import UserError
from speedsign.images import ImageError
from speedsign.runs import RunInfo

PHOTO_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm"]


def photo_bytes(upload: Any, camera: Any) -> bytes | None:
    """The bytes of the camera shot if there is one, else of the upload."""
    source = camera if camera is not None else upload
    return source.getvalue() if source is not None else None


def trained_on(info: RunInfo) -> None:
    """What the model learnt from: a warning line when only synthetic signs."""
    data = classify.training_data(info)
    st.caption((":material/warning: " if data.synthetic else "") + ui.md(data.description))


def answer_card(info: RunInfo, photo: Any, *, saliency: bool, key: str) -> None:
    """One model's answer: predicted sign (large only when the model is sure), top-3 bars,
    latency, what it was trained on, and where it looked."""
    st.markdown(f"**{ui.md(info.approach)}**")
    st.caption(ui.md(info.run_id) + (" · published model (read-only, int8)" if info.published else ""))
    try:
        model = ui.predictor(info.run_dir)
        answer = classify.answer(model, photo)
    except UserError as error:
        st.error(ui.md(error))
        return
    if not answer.finite:
        st.warning("No answer: this model's output is not a number (its training diverged). "
                   "Retrain it, for example with a lower learning rate.")
        trained_on(info)
        return
    if answer.confident:
        st.metric("Prediction", ui.md(answer.label), help=f"top-1 probability {answer.top_prob:.1%}")
    else:  # normal type: a guess must not look like an answer
        st.markdown(f"Best guess: {ui.md(answer.label)} ({answer.top_prob:.0%})")
        st.warning(f"Low confidence (under {classify.CONFIDENT_PROB:.0%}): the model is unsure; "
                   "try framing the sign tighter.")
        st.caption(f"Top {len(answer.labels)}: " + ui.md(answer.top_text))
    st.plotly_chart(plots.topk_bars(answer.labels, answer.probs), key=f"{key}-top")
    st.caption(f"{answer.milliseconds:.1f} ms (resize + forward, CPU)" if model.device.type == "cpu"
               else f"{answer.milliseconds:.1f} ms")
    trained_on(info)
    if saliency:
        try:
            overlay, informative = classify.saliency_overlay(model, answer)
        except Exception as error:  # a saliency failure must not hide the answer
            st.caption(f"No saliency map for this model ({type(error).__name__}).")
            return
        st.image(overlay, width=160, caption="Gradient × input: red = the pixels that moved the answer most")
        if not informative:
            st.caption("Flat map: no pixel of this photo moves the model's answer measurably.")


ui.through_router()

st.title("Classify")

runs = ui.list_models()
usable = [info for info in runs if run_views.is_usable(info)]
ui.damaged_note(runs)
if not usable:
    st.info("No finished model yet: train one on the Train page, then come back with a photo.")
    if any(run_views.is_active(info) for info in runs):
        st.caption("A job is training now; its model answers here when it finishes.")
    st.stop()

labels = {info.run_id: run_views.run_label(info) for info in usable}
chosen = st.multiselect("Models", list(labels), default=classify.default_models(usable), format_func=labels.get,
                        key="classify-models")

upload = st.file_uploader("Upload a photo of a sign", type=PHOTO_TYPES, key="classify-upload")
camera = st.camera_input("Take a photo", key="classify-camera") if st.toggle("Use the webcam") else None
data = photo_bytes(upload, camera)
if data is None:
    st.caption("Upload or take a photo; then frame the sign with the zoom.")
    st.stop()
try:
    photo = classify.decode_photo(data)
except ImageError as error:
    st.error(ui.md(f"That file cannot be used: {error}"))
    st.stop()

frame, answers = st.columns([1, 3])
with frame:
    zoom = st.slider("Zoom", 1.0, classify.MAX_ZOOM, 1.0, 0.1, key="classify-zoom")
    fixed = not classify.can_move(photo, zoom)
    x = st.slider("Left ↔ right", -1.0, 1.0, 0.0, 0.05, key="classify-x", disabled=fixed)
    y = st.slider("Up ↕ down", -1.0, 1.0, 0.0, 0.05, key="classify-y", disabled=fixed)
    framed = classify.crop_square(photo, zoom=zoom, x=x, y=y)
    st.image(framed, caption=f"What the models see ({framed.width} px square, resized per model)")
    saliency = st.toggle("Show where each model looked (gradient × input)", value=True, key="classify-saliency")
with answers:
    if not chosen:
        st.caption("Choose one or more models.")
    by_id = {info.run_id: info for info in usable}
    for start in range(0, len(chosen), 3):
        for column, run_id in zip(st.columns(3), chosen[start:start + 3], strict=False):
            with column:
                answer_card(by_id[run_id], framed, saliency=saliency, key=f"answer-{run_id}")
