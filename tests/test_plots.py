"""Figures from tiny inputs: traces, values, class order, and escaping of untrusted names."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from speedsign import plots

EVIL = "<script>alert(1)</script>"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
LINK = '<a href="https://example.com">x</a>'
CLASSES = ["80", "20", "120", EVIL]  # numeric-looking, deliberately not sorted


def all_strings(value) -> list[str]:
    """Every string anywhere in a figure's JSON (as plotly.js will receive it)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in all_strings(key) + all_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in all_strings(item)]
    return []


def assert_no_raw_html(figure: go.Figure) -> None:
    strings = all_strings(json.loads(figure.to_json()))
    assert not any("<script" in s or "<a " in s for s in strings)


def metrics_frame() -> pd.DataFrame:
    rows = []
    for run in ["scratch-1", EVIL]:
        for epoch in (1, 2):
            for split in ("train", "val"):
                rows.append({"run": run, "epoch": epoch, "split": split,
                             "loss": 1.0 / epoch + (split == "val"), "acc": 0.4 * epoch})
    return pd.DataFrame(rows)


def test_learning_curves_traces_and_styles():
    figure = plots.learning_curves(metrics_frame(), value="loss")
    assert isinstance(figure, go.Figure)
    assert len(figure.data) == 4
    names = [trace.name for trace in figure.data]
    assert names == ["scratch-1 train", "scratch-1 val", f"{EVIL_ESCAPED} train",
                     f"{EVIL_ESCAPED} val"]
    dashes = {trace.name.rsplit(" ", 1)[1]: trace.line.dash for trace in figure.data}
    assert dashes == {"train": "dash", "val": "solid"}
    assert figure.data[0].line.color == figure.data[1].line.color  # same run, same colour
    assert figure.data[0].line.color != figure.data[2].line.color
    assert list(figure.data[1].y) == [2.0, 1.5]
    assert figure.layout.yaxis.title.text == "loss"
    assert_no_raw_html(figure)


def test_learning_curves_accuracy_and_bad_value():
    figure = plots.learning_curves(metrics_frame(), value="acc")
    assert list(figure.data[0].y) == [0.4, 0.8]
    assert figure.layout.yaxis.title.text == "accuracy"
    with pytest.raises(ValueError, match="value"):
        plots.learning_curves(metrics_frame(), value="f1")
    with pytest.raises(ValueError, match="lacks column"):
        plots.learning_curves(metrics_frame().drop(columns="loss"))


def test_learning_curves_empty_frame():
    empty = pd.DataFrame(columns=["run", "epoch", "split", "loss", "acc"])
    assert len(plots.learning_curves(empty).data) == 0


def test_lr_curve_and_accuracy_vs_time():
    frame = pd.DataFrame({"run": ["a", "a", "b"], "epoch": [2, 1, 1], "lr": [0.01, 0.1, 0.5],
                          "seconds": [20.0, 10.0, 5.0], "val_acc": [0.9, 0.5, 0.7]})
    lr = plots.lr_curve(frame)
    assert [trace.name for trace in lr.data] == ["a", "b"]
    assert list(lr.data[0].x) == [1, 2] and list(lr.data[0].y) == [0.1, 0.01]
    timed = plots.accuracy_vs_time(frame)
    assert list(timed.data[0].x) == [10.0, 20.0] and list(timed.data[0].y) == [0.5, 0.9]
    assert list(timed.layout.yaxis.range) == [0.0, 1.02]


def test_confusion_heatmap_counts():
    confusion = np.array([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]])
    figure = plots.confusion_heatmap(confusion, class_names=CLASSES)
    heatmap = figure.data[0]
    assert isinstance(heatmap, go.Heatmap)
    escaped = ["80", "20", "120", EVIL_ESCAPED]
    assert list(heatmap.x) == escaped and list(heatmap.y) == escaped
    assert [list(row) for row in heatmap.z][0] == [3, 1, 0, 0]
    assert heatmap.text[2][2] == "4"
    assert figure.layout.yaxis.autorange == "reversed"  # first class on the top row
    for axis in (figure.layout.xaxis, figure.layout.yaxis):
        assert axis.type == "category" and axis.categoryorder == "array"
        assert list(axis.categoryarray) == escaped
    assert figure.layout.xaxis.title.text == "predicted"
    assert figure.layout.yaxis.title.text == "true"
    assert_no_raw_html(figure)


def test_confusion_heatmap_normalized_rows():
    confusion = np.array([[3, 1], [0, 0]])
    figure = plots.confusion_heatmap(confusion, class_names=["a", "b"], normalize=True)
    heatmap = figure.data[0]
    assert [list(row) for row in heatmap.z] == [[0.75, 0.25], [0.0, 0.0]]  # empty row: 0, no NaN
    assert list(heatmap.text[0]) == ["75%", "25%"]
    assert [list(row) for row in heatmap.customdata] == [[3, 1], [0, 0]]
    with pytest.raises(ValueError, match="2x2"):
        plots.confusion_heatmap(np.zeros((3, 3)), class_names=["a", "b"])


def test_per_class_bars():
    scores = pd.DataFrame({"precision": [1.0, 0.5, 0.0, 0.2], "recall": [0.5, 1.0, 0.0, 0.2],
                           "f1": [0.66, 0.66, 0.0, 0.2], "support": [2, 1, 0, 5]},
                          index=pd.Index(CLASSES, name="class"))
    figure = plots.per_class_bars(scores)
    assert [trace.name for trace in figure.data] == ["precision", "recall", "f1"]
    assert list(figure.data[1].y) == [0.5, 1.0, 0.0, 0.2]
    assert list(figure.data[0].x) == ["80", "20", "120", EVIL_ESCAPED]
    assert figure.layout.barmode == "group"
    assert figure.layout.xaxis.type == "category"
    assert list(figure.layout.xaxis.categoryarray) == ["80", "20", "120", EVIL_ESCAPED]
    assert_no_raw_html(figure)


def test_class_counts_bar_keeps_given_order():
    counts = pd.DataFrame({
        "class": ["80", "20", "120", LINK, "80", "120"],
        "split": ["train", "train", "train", "train", "val", "val"],
        "count": [10, 5, 7, 1, 3, 2],
    })
    figure = plots.class_counts_bar(counts)
    assert [trace.name for trace in figure.data] == ["train", "val"]
    order = ["80", "20", "120", '&lt;a href="https://example.com"&gt;x&lt;/a&gt;']
    assert list(figure.data[0].x) == order
    assert list(figure.data[0].y) == [10, 5, 7, 1]
    assert list(figure.data[1].y) == [3, 0, 2, 0]  # missing classes in a split count 0
    assert figure.layout.xaxis.type == "category"
    assert figure.layout.xaxis.categoryorder == "array"
    assert list(figure.layout.xaxis.categoryarray) == order
    assert_no_raw_html(figure)


def test_size_histogram():
    figure = plots.size_histogram(pd.DataFrame({"width": [30, 40, 50], "height": [31, 41, 90]}))
    assert [trace.name for trace in figure.data] == ["width", "height"]
    assert all(isinstance(trace, go.Histogram) for trace in figure.data)
    assert list(figure.data[1].x) == [31, 41, 90]
    assert figure.layout.barmode == "overlay"


def test_reliability_diagram():
    table = pd.DataFrame({"bin_low": [0.0, 0.5], "bin_high": [0.5, 1.0],
                          "confidence": [np.nan, 0.8], "accuracy": [np.nan, 0.6],
                          "count": [0, 10]})
    figure = plots.reliability_diagram(table, ece=0.2)
    bars, diagonal = figure.data
    assert isinstance(bars, go.Bar) and list(bars.x) == [0.25, 0.75]
    assert list(bars.width) == [0.5, 0.5] and bars.y[1] == 0.6
    assert list(diagonal.x) == [0.0, 1.0] and list(diagonal.y) == [0.0, 1.0]
    assert "ECE 0.200" in figure.layout.title.text
    json.loads(figure.to_json())  # NaN for an empty bin serialises (as null)


def test_topk_bars_best_on_top():
    figure = plots.topk_bars(["30", EVIL, "50"], [0.2, 0.7, 0.1])
    bar = figure.data[0]
    assert bar.orientation == "h"
    assert list(bar.y) == [EVIL_ESCAPED, "30", "50"] and list(bar.x) == [0.7, 0.2, 0.1]
    axis = figure.layout.yaxis
    assert axis.autorange == "reversed" and axis.type == "category"
    assert list(axis.categoryarray) == [EVIL_ESCAPED, "30", "50"]
    assert list(figure.layout.xaxis.range) == [0.0, 1.0]
    assert figure.layout.height <= 200
    assert_no_raw_html(figure)
    with pytest.raises(ValueError):
        plots.topk_bars(["a"], [0.5, 0.5])


def test_every_figure_escapes_names_in_json():
    # The JSON plotly.js receives holds the escaped name, wherever the name appears.
    figure = plots.confusion_heatmap(np.eye(4, dtype=int), class_names=CLASSES)
    assert EVIL_ESCAPED in all_strings(json.loads(figure.to_json()))


def test_training_curves_are_one_figure_of_panels_on_one_epoch_axis():
    lr = pd.DataFrame({"run": ["scratch-1", "scratch-1", EVIL, "lr-only"], "epoch": [2, 1, 1, 1],
                       "lr": [0.01, 0.1, 0.5, 0.2]})
    figure = plots.training_curves(metrics_frame(), lr)
    layout = figure.layout
    assert [layout.yaxis.title.text, layout.yaxis2.title.text, layout.yaxis3.title.text] == \
        ["loss", "accuracy", "learning rate"]
    # One x axis for the three panels (same range and width), titled once at the bottom.
    assert layout.xaxis.matches == "x3" and layout.xaxis2.matches == "x3"
    assert layout.xaxis.domain == layout.xaxis2.domain == layout.xaxis3.domain
    assert layout.xaxis3.title.text == "epoch" and not layout.xaxis.title.text
    assert list(layout.yaxis2.range) == [0.0, 1.02] and layout.xaxis.dtick == 1
    by_panel = {axis: [t for t in figure.data if t.yaxis == axis] for axis in ("y", "y2", "y3")}
    assert [t.name for t in by_panel["y"]] == ["scratch-1 train", "scratch-1 val", f"{EVIL_ESCAPED} train",
                                               f"{EVIL_ESCAPED} val"]
    assert list(by_panel["y3"][0].x) == [1, 2] and list(by_panel["y3"][0].y) == [0.1, 0.01]
    # A legend entry per run and split, from the loss panel; a run known only by its lr gets one.
    legend = [t.name for t in figure.data if t.showlegend is not False]
    assert legend == [t.name for t in by_panel["y"]] + ["lr-only"]
    colours = {t.legendgroup: {u.line.color for u in figure.data if u.legendgroup == t.legendgroup}
               for t in figure.data}
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 3
    assert_no_raw_html(figure)


def test_training_curves_without_learning_rates_have_two_panels():
    figure = plots.training_curves(metrics_frame(), pd.DataFrame(columns=["run", "epoch", "lr"]))
    assert {t.yaxis for t in figure.data} == {"y", "y2"} and "yaxis3" not in figure.layout
    assert figure.layout.xaxis2.title.text == "epoch"
    assert len(plots.training_curves(pd.DataFrame(columns=["run", "epoch", "split", "loss", "acc"])).data) == 0
    with pytest.raises(ValueError, match="lacks column"):
        plots.training_curves(metrics_frame(), pd.DataFrame({"run": ["a"], "epoch": [1]}))
