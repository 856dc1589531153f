"""Evaluation: confusion matrices, per-class scores, mistakes and calibration of a run."""

from pathlib import Path

import streamlit as st

from speedsign import calibration, evaluation, plots, run_views, ui
from speedsign.errors import UserError
from speedsign.runs import RunInfo, inspect_run

GALLERY_SIZE = 12


@st.cache_data(max_entries=16, show_spinner="Evaluating on the test split…")
def test_split(run_dir: str, stamp: int, data_dir: str, fingerprint: str) -> evaluation.Evaluation:
    """A forward over the test split, once per model and data folder (stamp and fingerprint key it)."""
    return evaluation.evaluate_test(inspect_run(Path(run_dir)), ui.predictor(run_dir))


def evaluate(info: RunInfo, split: str) -> evaluation.Evaluation:
    """The run's saved val or test predictions, or (runs of older versions) its model on the data
    folder's test split."""
    if split == "val":
        return evaluation.val_evaluation(info)
    if info.folder.predictions_test.is_file():
        return evaluation.test_evaluation(info)
    index = evaluation.index_for_test(info)
    return test_split(str(info.run_dir), run_views.mtime_ns(info.folder.best), str(index.root), index.fingerprint)


def gallery(result: evaluation.Evaluation) -> None:
    """The worst mistakes as pictures with their true and predicted classes."""
    wrong = evaluation.misclassified(result, k=GALLERY_SIZE)
    if wrong.empty:
        st.caption("Nothing misclassified.")
        return
    root = result.data_dir
    if root is None or not root.is_dir():
        st.warning(ui.md(f"The data folder {root} is gone: mistakes are listed without their images."))
        st.dataframe(wrong[["file", "true", "predicted", "confidence"]], hide_index=True)
        return
    columns = st.columns(4)
    for position, row in enumerate(wrong.itertuples(index=False)):
        with columns[position % 4]:
            image = ui.picture(root, row.file)
            if image is None:
                st.caption(f"{ui.md(row.file)}: not readable here (moved, or outside the data folder)")
            else:
                st.image(image, width=96)
            st.caption(f"true {ui.md(row.true)} → {ui.md(row.predicted)} ({row.confidence:.0%})")


def evaluation_panel(info: RunInfo, split: str, *, key: str) -> None:
    """Accuracy with its interval, confusion matrices, per-class scores, mistakes, calibration."""
    try:
        result = evaluate(info, split)
    except UserError as error:
        st.error(ui.md(error))
        return
    tables = evaluation.evaluation_tables(result)
    low, high = tables.interval
    columns = st.columns(3)
    columns[0].metric(f"{split} accuracy", f"{tables.accuracy:.3f}", help="95% Wilson interval below")
    columns[1].metric("Images", f"{tables.n:,}")
    columns[2].metric("ECE", f"{tables.ece:.3f}", help="expected calibration error (10 bins)")
    st.caption(f"95% interval {low:.3f} – {high:.3f}")
    counts, shares = st.tabs(["Confusion matrix (counts)", "Confusion matrix (row %)"])
    counts.plotly_chart(plots.confusion_heatmap(tables.confusion, class_names=result.classes),
                        key=f"{key}-confusion")
    shares.plotly_chart(plots.confusion_heatmap(tables.confusion, class_names=result.classes, normalize=True),
                        key=f"{key}-confusion-norm")
    st.subheader("Per class")
    st.dataframe(tables.scores.round(3))
    st.plotly_chart(plots.per_class_bars(tables.scores), key=f"{key}-per-class")
    st.subheader("Most confused pairs")
    if tables.confused.empty:
        st.caption("No mistakes on this split.")
    else:
        st.dataframe(tables.confused, hide_index=True)
    st.subheader("Calibration")
    temperature, problem = calibration.temperature_and_problem(info.run_dir)
    if problem:
        st.warning(ui.md(f"{info.run_id}: {problem}"))
    scaled = evaluation.evaluation_tables(evaluation.calibrated(result, temperature))
    st.caption(f"Before and after temperature scaling fitted on val (T = {temperature:.2f}); Classify and "
               "`predict` show the calibrated confidences.")
    left, right = st.columns(2)
    left.plotly_chart(plots.reliability_diagram(tables.reliability, ece=tables.ece), key=f"{key}-reliability")
    right.plotly_chart(plots.reliability_diagram(scaled.reliability, ece=scaled.ece), key=f"{key}-reliability-t")
    st.subheader("Misclassified images")
    gallery(result)


ui.through_router()

st.title("Evaluation")

runs = ui.list_models()
usable = [info for info in runs if run_views.is_usable(info)]
ui.damaged_note(runs)
if not usable:
    if any(run_views.is_active(info) for info in runs):
        st.info("A job is still running: its evaluation appears here when it finishes.")
    else:
        st.info("No finished runs yet. Train one on the Train page.")
        ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()

labels = {info.run_id: run_views.run_label(info) for info in usable}
by_id = {info.run_id: info for info in usable}
left, middle, right = st.columns([3, 1, 2])
first = left.selectbox("Run", list(labels), format_func=labels.get, key="eval-run")
split = middle.selectbox("Split", evaluation.split_choices(by_id[first]), key="eval-split")
second = None
if len(usable) > 1 and right.toggle("Compare with another run", key="eval-compare"):
    others = [run_id for run_id in labels if run_id != first]
    second = right.selectbox("Second run", others, format_func=labels.get, key="eval-second")

if second is None:
    evaluation_panel(by_id[first], split, key="first")
else:
    columns = st.columns(2)
    for column, run_id, key in ((columns[0], first, "first"), (columns[1], second, "second")):
        with column:
            st.markdown(f"**{ui.md(labels[run_id])}**")
            run_split = split if split in evaluation.split_choices(by_id[run_id]) else "val"
            evaluation_panel(by_id[run_id], run_split, key=key)
