"""Compare: the study of chosen runs on one data set, and its downloads (HTML, JSON).

Accuracy with paired tests, cost, time to accuracy, calibration, robustness, where the models
differ, and a conclusion written from those numbers (speedsign.study does every computation).
"""

import json
from collections.abc import Sequence

import streamlit as st

from speedsign import plots, run_views, study_report, ui
from speedsign.compare import best_runs
from speedsign.corruptions import robustness_frame
from speedsign.errors import UserError
from speedsign.runs import RunInfo
from speedsign.storage import default_runs_dir
from speedsign.study import (
    StudyResult,
    available_splits,
    build_study,
    disagreements,
    load_study,
    measure_latency_ms,
    robustness_rows,
    sample_indices,
)

CORRUPTION_IMAGES = 300  # per corruption and severity: about 30 s for three models on 2 cores
GALLERY_IMAGES = 12


def stamps(infos: Sequence[RunInfo]) -> tuple[int, ...]:
    """The runs' predictions' mtimes: a cache key that changes when a run is retrained."""
    return tuple(run_views.mtime_ns(info.folder.predictions) for info in infos)


@st.cache_data(max_entries=16, show_spinner="Comparing the runs…")
def cached_study(run_ids: tuple[str, ...], split: str, versions: tuple[int, ...],
                 robust: dict | None) -> StudyResult:
    by_id = {info.run_id: info for info in ui.list_models()}
    study = load_study([by_id[run_id] for run_id in run_ids], split=split)
    return build_study(study, robustness=robust, latency_ms=cached_latency(run_ids, split, versions))


@st.cache_data(max_entries=16, show_spinner="Measuring each model's prediction latency…")
def cached_latency(run_ids: tuple[str, ...], split: str, versions: tuple[int, ...]) -> dict[str, float] | None:
    """p50 ms of one image end to end per run; None when the data folder is gone (said in the table)."""
    by_id = {info.run_id: info for info in ui.list_models()}
    study = load_study([by_id[run_id] for run_id in run_ids], split=split)
    try:
        return measure_latency_ms(study, predictors={r: ui.predictor(by_id[r].run_dir) for r in run_ids})
    except UserError:
        return None


@st.cache_data(max_entries=8, show_spinner="Scoring every model under each corruption…")
def cached_robustness(run_ids: tuple[str, ...], split: str, versions: tuple[int, ...], images: int) -> dict:
    by_id = {info.run_id: info for info in ui.list_models()}
    study = load_study([by_id[run_id] for run_id in run_ids], split=split)
    predictors = {run_id: ui.predictor(by_id[run_id].run_dir) for run_id in run_ids}
    return robustness_rows(study, images=images, predictors=predictors)


def choose_runs(runs: list[RunInfo]) -> list[RunInfo]:
    """The picker: this data set's best run per approach unless the user chooses others."""
    index = ui.current_index()
    fingerprint = index.fingerprint if index is not None else None
    labels = {info.run_id: run_views.run_label(info) + ("" if run_views.on_dataset(info, fingerprint)
                                                         else " · other data set") for info in runs}
    default = [info.run_id for info in best_runs(default_runs_dir(), data_fingerprint=fingerprint).values()]
    chosen = st.multiselect("Runs", list(labels), default=[r for r in default if r in labels],
                            format_func=labels.get, key="compare-runs",
                            help="Finished runs of one data set; by default the best run of each approach "
                                 "on the data set in use.")
    by_id = {info.run_id: info for info in runs}
    return [by_id[run_id] for run_id in chosen]


def show_accuracy(result: StudyResult) -> None:
    st.subheader("Accuracy")
    st.dataframe(study_report.accuracy_table(result), hide_index=True)
    st.plotly_chart(plots.accuracy_intervals(result.accuracy), key="compare-accuracy")
    if result.pairs:
        st.markdown("**Each pair, on the same images**: paired bootstrap 95% interval of the difference, "
                    "exact McNemar test, Holm-corrected over the pairs.")
        st.dataframe(study_report.pairs_table(result), hide_index=True)


def show_cost(result: StudyResult) -> None:
    st.subheader("Cost")
    st.dataframe(study_report.cost_table(result), hide_index=True)
    st.subheader("Time to accuracy")
    axis = st.radio("x-axis", list(run_views.CURVE_AXES), index=1, horizontal=True, key="compare-x",
                    format_func=run_views.CURVE_AXES.get)
    st.plotly_chart(plots.val_accuracy_against(result.curves, x=axis), key="compare-curve")


def show_calibration(result: StudyResult, figures: dict) -> None:
    st.subheader("Calibration")
    st.caption("Temperature scaling fitted on val; Classify and `predict` use the fitted temperature.")
    st.dataframe(study_report.calibration_table(result), hide_index=True)
    run_id = st.selectbox("Reliability diagram of", [r["run_id"] for r in result.calibration],
                          key="compare-reliability")
    left, right = st.columns(2)
    left.plotly_chart(figures[f"reliability_before_{run_id}"], key="compare-rel-before")
    right.plotly_chart(figures[f"reliability_after_{run_id}"], key="compare-rel-after")


def show_robustness(result: StudyResult, run_ids: tuple[str, ...], split: str, key: tuple[int, ...]) -> None:
    st.subheader("Robustness")
    if not result.robustness:
        n = len(sample_indices(result.study, images=CORRUPTION_IMAGES))
        st.caption(f"Darkness, glare, blur, motion blur, noise, JPEG, occlusion, rotation and scale at 3 "
                   f"severities, on a fixed sample of {n} images: it loads each model.")
        # Minutes of CPU for a stranger to start: the owner's, in public mode (cached once done).
        if not ui.can_write():
            ui.owner_only("Scoring under corruptions")
        elif st.button("Score the runs under corruptions", key="compare-corrupt"):
            st.session_state["compare-robust"] = (run_ids, split)
            st.rerun()
        return
    st.plotly_chart(plots.robustness_heatmap(robustness_frame(result.robustness)), key="compare-robust-map")


def show_differences(result: StudyResult) -> None:
    st.subheader("Where they differ")
    st.plotly_chart(plots.per_class_heatmap(result.per_class), key="compare-per-class")
    if len(result.study.runs) < 2:
        return
    ids = [run.run_id for run in result.study.runs]
    left, right = st.columns(2)
    a = left.selectbox("Right", ids, index=0, key="compare-a")
    b = right.selectbox("Wrong", [r for r in ids if r != a], index=0, key="compare-b")
    frame = disagreements(result.study, a, b, k=GALLERY_IMAGES)
    if frame.empty:
        st.caption(ui.md(f"No image that {a} gets right and {b} gets wrong."))
        return
    columns = st.columns(6)
    for i, row in enumerate(frame.itertuples(index=False)):
        picture = ui.picture(result.study.data_dir, row.file, max_side=96) if result.study.data_dir else None
        with columns[i % 6]:
            if picture is not None:
                st.image(picture, width=96)
            st.caption(ui.md(f"true {row.true} · {a}: {row.a_pred} {row.a_conf:.0%} · {b}: {row.b_pred} "
                             f"{row.b_conf:.0%}"))


def show_downloads(result: StudyResult) -> None:
    st.subheader("Take it away")
    left, right = st.columns(2)
    # Callables: the HTML (Plotly embedded, a few MB) is built only when someone downloads it.
    left.download_button("Download the study (HTML)", data=lambda: study_report.render_html(result),
                         file_name="study.html", mime="text/html", on_click="ignore", key="compare-html")
    right.download_button("Download the numbers (JSON)", data=lambda: json.dumps(result.to_json(), indent=1),
                          file_name="study.json", mime="application/json", on_click="ignore", key="compare-json")


ui.through_router()

st.title("Compare runs")
st.caption("Which approach wins, by how much, at what cost, and why: every model scored on the same images.")

finished = [info for info in ui.list_models() if info.state == "done" and not info.damaged]
if not finished:
    st.info("No finished runs yet. Train the approaches on the Train page, then compare them here.")
    ui.goto("pages/train.py", "Go to Train", ":material/model_training:")
    st.stop()
chosen = choose_runs(finished)
if not chosen:
    st.info("Choose one or more finished runs of one data set.")
    st.stop()
splits = available_splits(chosen)
split = st.radio("Scored on", splits, horizontal=True, key="compare-split") if len(splits) > 1 else "val"
run_ids = tuple(info.run_id for info in chosen)
try:
    key = stamps(chosen)
    robust = None
    if st.session_state.get("compare-robust") == (run_ids, split):
        ui.require_write("Scoring under corruptions")
        robust = cached_robustness(run_ids, split, key, CORRUPTION_IMAGES)
    result = cached_study(run_ids, split, key, robust)
except UserError as error:
    st.error(ui.md(str(error)), icon=":material/block:")
    st.stop()

st.subheader("Conclusion")
st.markdown("\n".join(f"- {ui.md(sentence)}" for sentence in result.conclusion))
figures = study_report.study_figures(result)
show_accuracy(result)
show_cost(result)
show_calibration(result, figures)
show_robustness(result, run_ids, split, key)
show_differences(result)
show_downloads(result)
