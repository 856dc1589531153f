"""Home: the data set in use, the device, and how the three approaches compare."""

import streamlit as st

from speedsign import datasets, run_views, ui
from speedsign.compare import (
    FRAME_COLUMNS,
    FRAME_LABELS,
    best_runs,
    compare_runs,
    comparison_frame,
    measure_latency,
    published_groups,
    winner_sentence,
)
from speedsign.config import APPROACHES
from speedsign.data import DatasetIndex
from speedsign.errors import UserError
from speedsign.storage import default_runs_dir

# Mostly the same for every run on one data set, and said in the winner sentence ("on 2,760 val images").
HIDDEN_COLUMNS = ("val images",)


@st.cache_data(max_entries=64, show_spinner="Measuring single-image latency…")
def latency(run_dir: str, stamp: int, data_root: str, fingerprint: str) -> dict[str, float] | None:
    """p50/p95 of one upload end to end for a run's model, on an image of the data set."""
    image = datasets.first_image_bytes(ui.scan(data_root))
    if image is None:
        return None
    return measure_latency(ui.predictor(run_dir), image)


def comparison(index: DatasetIndex, *, published: bool) -> None:
    """The three approaches' best runs on this data set, and one sentence on who wins."""
    best = best_runs(default_runs_dir(), data_fingerprint=index.fingerprint)
    if not best:
        active = [info for info in ui.list_runs() if run_views.is_active(info)]
        if active:
            st.info(f"{len(active)} job(s) training now: the comparison appears when one finishes.",
                    icon=":material/hourglass_top:")
        else:
            st.info("No finished runs on this data set yet. Launch the three approaches on the Train page; "
                    "their comparison appears here."
                    + (" The published models below answer on Classify meanwhile." if published else ""),
                    icon=":material/model_training:")
        ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
        return
    comparison_table(best, index)


def comparison_table(best: dict, index: DatasetIndex) -> None:
    """The table of the best runs given, with latency measured on an image of the data set in use."""
    measured: dict[str, float] = {}
    tails: list[str] = []
    for approach, info in best.items():
        try:
            timing = latency(str(info.run_dir), run_views.mtime_ns(info.folder.model), str(index.root),
                             index.fingerprint)
        except UserError as error:
            st.warning(ui.md(f"{approach}: latency not measured ({error})"))
            continue
        if timing is not None:
            measured[info.run_id] = timing["p50"]
            tails.append(f"{approach} {timing['p95']:.1f} ms")
    rows = compare_runs(best, latency=measured)
    # Short headers (their meaning on hover), and the val size said in the sentence below
    # instead of a column: every column fits 1280 px wide without scrolling.
    columns = {name: st.column_config.Column(label, help=meaning) for name, (label, meaning) in FRAME_LABELS.items()}
    st.dataframe(comparison_frame(rows), hide_index=True, width="stretch", column_config=columns,
                 column_order=[name for name in FRAME_COLUMNS if name not in HIDDEN_COLUMNS])
    st.markdown(ui.md(winner_sentence(rows)))
    if tails:
        st.caption("Single-image latency (decode, resize, forward on this machine) p95: " + ui.md(", ".join(tails)))
    missing = [approach for approach in APPROACHES if approach not in best]
    if missing:
        st.caption(f"No finished run yet for: {ui.md(', '.join(missing))}.")


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
    groups = published_groups(ui.list_published())
    st.subheader("Best run of each approach on this data set")
    with ui.user_errors():
        comparison(index, published=bool(groups))
    for data_name, best in groups:
        st.subheader(f"Published models, trained on {ui.md(data_name)}")
        st.caption("Shipped with the app in models/ (read-only, int8 weights): they answer on Classify at once, "
                   "and their curves and evaluations are on the other pages. Their model cards are in "
                   "models/<name>/MODEL_CARD.md.")
        with ui.user_errors():
            comparison_table(best, index)
    ui.damaged_note(ui.list_published())
