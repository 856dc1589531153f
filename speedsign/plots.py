"""Plotly figures from plain arrays and DataFrames: drawing only, no metrics, no file I/O.

Two rules hold in every figure here:

- Class and run names come from folder names on disk and are untrusted. plotly.js renders
  a subset of HTML (<b>, <br>, <a href>, ...) in tick labels, legend entries, hover labels,
  text and titles, so every name is HTML-escaped before it goes into a figure (plotly.js
  turns &lt; back into a literal "<" on screen, so the name still reads as it is on disk).
  Names are never spliced into hover templates, where "%{...}" would also be interpreted.
- Class axes are categorical in the given order: speed-limit names ("20", "30", ...) look
  numeric, and plotly would otherwise draw them on a number line or sort them.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

_PALETTE: tuple[str, ...] = tuple(plotly.colors.qualitative.Plotly)
_SPLIT_DASH = {"val": "solid", "train": "dash"}
_VALUE_TITLES = {"loss": "loss", "acc": "accuracy"}
_SCORE_COLUMNS: tuple[str, ...] = ("precision", "recall", "f1")
_ACCURACY_RANGE = [0.0, 1.02]  # a little headroom so markers at 1.0 are not cut in half
# The x-axes of a training curve (run_views.CURVE_AXES) and how each is titled and hovered.
_X_TITLES = {"epoch": "epoch", "seconds": "training time (s, cumulative)", "images": "training images seen"}
_X_HOVER = {"epoch": "epoch %{x}", "seconds": "%{x:.0f} s", "images": "%{x:,} images"}


def learning_curves(metrics: pd.DataFrame, *, value: str = "loss") -> go.Figure:
    """Loss or accuracy per epoch: one colour per run, solid for val, dashed for train.

    `metrics` has columns run, epoch, split ("train"/"val"), loss, acc (long format).
    """
    if value not in _VALUE_TITLES:
        raise ValueError(f"value must be one of {', '.join(_VALUE_TITLES)}; got {value!r}")
    _require_columns(metrics, ("run", "epoch", "split", value), what="metrics")
    figure = go.Figure()
    colors = _run_colors(metrics["run"])
    for run, color in colors.items():
        for split in ("train", "val"):
            rows = metrics[(metrics["run"] == run) & (metrics["split"] == split)]
            if rows.empty:
                continue
            rows = rows.sort_values("epoch", kind="stable")
            figure.add_trace(go.Scatter(
                x=rows["epoch"].tolist(), y=rows[value].tolist(), mode="lines+markers",
                name=f"{_escape(run)} {split}", legendgroup=_escape(run),
                line={"color": color, "dash": _SPLIT_DASH[split]},
                hovertemplate=f"epoch %{{x}}<br>{_VALUE_TITLES[value]} %{{y:.4f}}",
            ))
    figure.update_layout(xaxis_title="epoch", yaxis_title=_VALUE_TITLES[value],
                         legend_title_text="run, split")
    if value == "acc":
        figure.update_yaxes(range=_ACCURACY_RANGE)
    return _tidy(figure)


def lr_curve(metrics: pd.DataFrame) -> go.Figure:
    """Learning rate per epoch, one line per run (columns run, epoch, lr)."""
    _require_columns(metrics, ("run", "epoch", "lr"), what="metrics")
    figure = go.Figure()
    for run, color in _run_colors(metrics["run"]).items():
        rows = metrics[metrics["run"] == run].sort_values("epoch", kind="stable")
        figure.add_trace(go.Scatter(
            x=rows["epoch"].tolist(), y=rows["lr"].tolist(), mode="lines+markers",
            name=_escape(run), line={"color": color},
            hovertemplate="epoch %{x}<br>lr %{y:.3g}",
        ))
    figure.update_layout(xaxis_title="epoch", yaxis_title="learning rate")
    return _tidy(figure)


def training_curves(curves: pd.DataFrame, lr: pd.DataFrame | None = None, *, x: str = "epoch") -> go.Figure:
    """Loss, accuracy and learning rate in one figure, stacked on one shared x-axis: the epoch,
    the cumulative training seconds or the images seen (`x`, a column of both frames).

    One figure, not three: the panels then have the same width, left margin and epoch range
    whatever their tick labels and legends, and zooming one zooms all. `curves` is the long
    format of `learning_curves` (run, epoch, split, loss, acc); `lr` has run, epoch, lr (the
    panel is left out when it is None or empty). One colour per run across the panels, solid
    for val, dashed for train; one legend entry per run and split, and clicking it hides that
    run in every panel.
    """
    if x not in _X_TITLES:
        raise ValueError(f"x must be one of {', '.join(_X_TITLES)}; got {x!r}")
    _require_columns(curves, ("run", x, "split", "loss", "acc"), what="curves")
    has_lr = lr is not None and not lr.empty
    if has_lr:
        _require_columns(lr, ("run", x, "lr"), what="lr")
    panels = ["loss", "acc"] + (["lr"] if has_lr else [])
    titles = {"loss": "loss", "acc": "accuracy", "lr": "learning rate"}
    figure = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.07)
    runs = pd.concat([curves["run"], lr["run"]]) if has_lr else curves["run"]
    shown: set[str] = set()
    for run, color in _run_colors(runs).items():
        group = _escape(run)
        for row, value in enumerate(panels, start=1):
            frame, splits = (lr, (None,)) if value == "lr" else (curves, ("train", "val"))
            for split in splits:
                rows = frame[frame["run"] == run]
                if split is not None:
                    rows = rows[rows["split"] == split]
                rows = rows.dropna(subset=[x])  # images: not recorded by runs of older versions
                if rows.empty:
                    continue
                rows = rows.sort_values(x, kind="stable")
                name = group if split is None else f"{group} {split}"
                # The loss panel carries the legend; a run with only lr values gets its entry there.
                show = value == "loss" or (value == "lr" and group not in shown)
                if show:
                    shown.add(group)
                figure.add_trace(go.Scatter(
                    x=rows[x].tolist(), y=rows[value].tolist(), mode="lines+markers",
                    name=name, legendgroup=group, showlegend=show,
                    line={"color": color, "dash": _SPLIT_DASH[split or "val"]},
                    hovertemplate=f"{_X_HOVER[x]}<br>{titles[value]} %{{y:.4g}}",  # the name shows beside it
                ), row=row, col=1)
    for row, value in enumerate(panels, start=1):
        figure.update_yaxes(title_text=titles[value], row=row, col=1)
    figure.update_yaxes(range=_ACCURACY_RANGE, row=panels.index("acc") + 1, col=1)
    figure.update_xaxes(title_text=_X_TITLES[x], row=len(panels), col=1)
    epochs = pd.concat([curves["epoch"], lr["epoch"]]) if has_lr else curves["epoch"]
    if x == "epoch" and not epochs.empty and epochs.max() - epochs.min() <= 15:
        figure.update_xaxes(dtick=1)  # whole epochs, not 1.5
    figure.update_layout(height=230 * len(panels) + 90, legend_title_text="run, split",
                         margin={"l": 70, "r": 20, "t": 30, "b": 50})
    return figure


def accuracy_vs_time(metrics: pd.DataFrame) -> go.Figure:
    """Validation accuracy against cumulative training seconds, one line per run."""
    _require_columns(metrics, ("run", "seconds", "val_acc"), what="metrics")
    figure = go.Figure()
    for run, color in _run_colors(metrics["run"]).items():
        rows = metrics[metrics["run"] == run].sort_values("seconds", kind="stable")
        figure.add_trace(go.Scatter(
            x=rows["seconds"].tolist(), y=rows["val_acc"].tolist(), mode="lines+markers",
            name=_escape(run), line={"color": color},
            hovertemplate="%{x:.1f} s<br>val accuracy %{y:.4f}",
        ))
    figure.update_layout(xaxis_title="training time (s, cumulative)",
                         yaxis_title="val accuracy")
    figure.update_yaxes(range=_ACCURACY_RANGE)
    return _tidy(figure)


def confusion_heatmap(
    confusion: np.ndarray, *, class_names: Sequence[str], normalize: bool = False
) -> go.Figure:
    """Rows = true class (top to bottom in class order), columns = predicted class.

    Cells show counts, or with `normalize` the share of each true class (row %), so classes
    with few images are as readable as large ones.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    size = len(class_names)
    if counts.shape != (size, size):
        raise ValueError(f"confusion must be {size}x{size} for {size} classes; "
                         f"got shape {counts.shape}")
    names = _escape_all(class_names)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        z = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals != 0)
        text = [[f"{100 * share:.0f}%" for share in row] for row in z]
        hover = "true %{y}<br>predicted %{x}<br>%{z:.1%} of the row (%{customdata})"
        color_title = "row share"
    else:
        z = counts.astype(np.float64)
        text = [[str(count) for count in row] for row in counts]
        hover = "true %{y}<br>predicted %{x}<br>%{customdata} images"
        color_title = "images"
    figure = go.Figure(go.Heatmap(
        z=z.tolist(), x=names, y=names, text=text, texttemplate="%{text}",
        customdata=counts.tolist(), hovertemplate=hover + "<extra></extra>",
        colorscale="Blues", zmin=0, zmax=1 if normalize else max(1, int(counts.max(initial=0))),
        colorbar={"title": {"text": color_title}},
    ))
    figure.update_xaxes(title_text="predicted", **_category_axis(names))
    # Reversed so the first class is the top row, as in a printed confusion matrix.
    figure.update_yaxes(title_text="true", autorange="reversed", **_category_axis(names))
    side = 160 + 28 * size
    figure.update_layout(height=min(max(side, 360), 1400))
    return _tidy(figure)


def per_class_bars(scores: pd.DataFrame) -> go.Figure:
    """Precision, recall and F1 per class as grouped bars (index = class, in order)."""
    _require_columns(scores, _SCORE_COLUMNS, what="scores")
    names = _escape_all(scores.index)
    has_support = "support" in scores.columns
    figure = go.Figure()
    for column in _SCORE_COLUMNS:
        figure.add_trace(go.Bar(
            x=names, y=scores[column].astype(float).tolist(), name=column,
            customdata=scores["support"].tolist() if has_support else None,
            hovertemplate=f"%{{x}}<br>{column} %{{y:.3f}}"
            + ("<br>support %{customdata}" if has_support else "") + "<extra></extra>",
        ))
    figure.update_layout(barmode="group", yaxis_title="score")
    figure.update_xaxes(title_text="class", **_category_axis(names))
    figure.update_yaxes(range=[0.0, 1.05])
    return _tidy(figure)


def class_counts_bar(counts: pd.DataFrame) -> go.Figure:
    """Images per class and split (columns class, split, count), classes in the given order."""
    _require_columns(counts, ("class", "split", "count"), what="counts")
    classes = list(pd.unique(counts["class"]))
    names = _escape_all(classes)
    figure = go.Figure()
    for split in pd.unique(counts["split"]):
        per_class = (counts[counts["split"] == split].groupby("class", sort=False)["count"].sum()
                     .reindex(classes, fill_value=0))
        figure.add_trace(go.Bar(
            x=names, y=[int(value) for value in per_class], name=_escape(split),
            hovertemplate="%{x}<br>%{y} images",
        ))
    figure.update_layout(barmode="group", yaxis_title="images", legend_title_text="split")
    figure.update_xaxes(title_text="class", **_category_axis(names))
    return _tidy(figure)


def size_histogram(sizes: pd.DataFrame) -> go.Figure:
    """Overlaid histograms of image widths and heights in pixels (columns width, height)."""
    _require_columns(sizes, ("width", "height"), what="sizes")
    figure = go.Figure()
    for column in ("width", "height"):
        figure.add_trace(go.Histogram(
            x=sizes[column].tolist(), name=column, opacity=0.6,
            hovertemplate=f"{column} %{{x}} px<br>%{{y}} images<extra></extra>",
        ))
    figure.update_layout(barmode="overlay", xaxis_title="pixels", yaxis_title="images")
    return _tidy(figure)


def reliability_diagram(table: pd.DataFrame, *, ece: float) -> go.Figure:
    """Accuracy per confidence bin against the diagonal of perfect calibration.

    `table` is `metrics.reliability_table` (bin_low, bin_high, confidence, accuracy, count);
    empty bins (NaN accuracy) draw no bar.
    """
    _require_columns(table, ("bin_low", "bin_high", "confidence", "accuracy", "count"),
                     what="table")
    low = table["bin_low"].to_numpy(dtype=float)
    high = table["bin_high"].to_numpy(dtype=float)
    customdata = np.column_stack([table["count"].to_numpy(), table["confidence"].to_numpy(float)])
    figure = go.Figure()
    figure.add_trace(go.Bar(
        x=((low + high) / 2).tolist(), y=table["accuracy"].astype(float).tolist(),
        width=(high - low).tolist(), name="accuracy", customdata=customdata.tolist(),
        marker={"line": {"width": 1, "color": "white"}},
        hovertemplate="accuracy %{y:.3f}<br>mean confidence %{customdata[1]:.3f}"
                      "<br>%{customdata[0]} images<extra></extra>",
    ))
    figure.add_trace(go.Scatter(
        x=[0.0, 1.0], y=[0.0, 1.0], mode="lines", name="perfect calibration",
        line={"dash": "dash", "color": "grey"}, hoverinfo="skip",
    ))
    figure.update_layout(
        title_text=f"Reliability diagram (ECE {float(ece):.3f})",
        xaxis_title="confidence", yaxis_title="accuracy",
    )
    figure.update_xaxes(range=[0.0, 1.0])
    figure.update_yaxes(range=[0.0, 1.0])
    return _tidy(figure)


def topk_bars(labels: Sequence[str], probs: Sequence[float]) -> go.Figure:
    """A model's top-k answers as small horizontal bars, best on top, on a 0..1 axis.

    Compact (no title, tight margins) to sit in one of several side-by-side columns.
    """
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} probabilities")
    order = sorted(range(len(probs)), key=lambda i: -float(probs[i]))  # stable for ties
    names = [_escape(labels[i]) for i in order]
    values = [float(probs[i]) for i in order]
    figure = go.Figure(go.Bar(
        x=values, y=names, orientation="h", text=[f"{value:.0%}" for value in values],
        textposition="auto", marker={"color": _PALETTE[0]},
        hovertemplate="%{y}: %{x:.1%}<extra></extra>",
    ))
    figure.update_xaxes(range=[0.0, 1.0], tickformat=".0%", showgrid=True)
    # Reversed: the first category (the best answer) is drawn at the top.
    figure.update_yaxes(autorange="reversed", **_category_axis(names))
    figure.update_layout(height=60 + 28 * max(len(names), 1), showlegend=False,
                         margin={"l": 10, "r": 10, "t": 10, "b": 30})
    return _tidy(figure)


def accuracy_intervals(rows: Sequence[dict]) -> go.Figure:
    """Each run's accuracy as a dot with its 95% interval; `rows` as study.accuracy_rows."""
    names = _escape_all(r["run_id"] for r in rows)
    accuracy = [float(r["accuracy"]) for r in rows]
    figure = go.Figure(go.Scatter(
        x=accuracy, y=names, mode="markers", marker={"size": 10, "color": _PALETTE[0]},
        error_x={"type": "data", "symmetric": False,
                 "array": [float(r["ci"][1]) - a for r, a in zip(rows, accuracy, strict=True)],
                 "arrayminus": [a - float(r["ci"][0]) for r, a in zip(rows, accuracy, strict=True)]},
        hovertemplate="%{y}<br>accuracy %{x:.2%}<extra></extra>",
    ))
    figure.update_xaxes(title_text="accuracy (95% Wilson interval)", tickformat=".1%")
    figure.update_yaxes(autorange="reversed", **_category_axis(names))
    figure.update_layout(height=80 + 40 * max(len(names), 1), showlegend=False)
    return _tidy(figure)


def val_accuracy_against(frame: pd.DataFrame, *, x: str) -> go.Figure:
    """Val accuracy per epoch against `x` (epoch, seconds or images), one line per run."""
    if x not in _X_TITLES:
        raise ValueError(f"x must be one of {', '.join(_X_TITLES)}; got {x!r}")
    _require_columns(frame, ("run", x, "val_acc"), what="frame")
    figure = go.Figure()
    for run, color in _run_colors(frame["run"]).items():
        rows = frame[frame["run"] == run].dropna(subset=[x]).sort_values(x, kind="stable")
        figure.add_trace(go.Scatter(
            x=rows[x].tolist(), y=rows["val_acc"].tolist(), mode="lines+markers", name=_escape(run),
            line={"color": color}, hovertemplate=f"{_X_HOVER[x]}<br>val accuracy %{{y:.4f}}",
        ))
    figure.update_layout(xaxis_title=_X_TITLES[x], yaxis_title="val accuracy")
    figure.update_yaxes(range=_ACCURACY_RANGE)
    return _tidy(figure)


def robustness_heatmap(frame: pd.DataFrame) -> go.Figure:
    """Accuracy per run (rows) and corruption at each severity (columns); `frame` has run,
    corruption, severity, accuracy (corruptions.robustness_frame)."""
    _require_columns(frame, ("run", "corruption", "severity", "accuracy"), what="frame")
    frame = frame.assign(column=[c if c == "clean" else f"{c} {s}"
                                 for c, s in zip(frame["corruption"], frame["severity"], strict=True)])
    columns = list(pd.unique(frame["column"]))
    runs = list(pd.unique(frame["run"]))
    table = frame.pivot_table(index="run", columns="column", values="accuracy", aggfunc="first")
    values = table.reindex(index=runs, columns=columns).to_numpy(dtype=float)
    figure = go.Figure(go.Heatmap(
        z=values.tolist(), x=_escape_all(columns), y=_escape_all(runs), zmin=0.0, zmax=1.0,
        colorscale="Viridis", colorbar={"title": {"text": "accuracy"}},
        text=[[f"{v:.0%}" if np.isfinite(v) else "" for v in row] for row in values],
        texttemplate="%{text}", hovertemplate="%{y}<br>%{x}<br>accuracy %{z:.3f}<extra></extra>",
    ))
    figure.update_xaxes(**_category_axis(_escape_all(columns)), tickangle=-45)
    figure.update_yaxes(**_category_axis(_escape_all(runs)), autorange="reversed")
    figure.update_layout(height=160 + 45 * max(len(runs), 1))
    return _tidy(figure)


def per_class_heatmap(recall: pd.DataFrame) -> go.Figure:
    """Recall per class (rows) and run (columns); `recall` as study.per_class_frame (a support
    column, when present, is left out)."""
    table = recall.drop(columns=["support"], errors="ignore")
    classes, runs = _escape_all(table.index), _escape_all(table.columns)
    values = table.to_numpy(dtype=float)
    figure = go.Figure(go.Heatmap(
        z=values.tolist(), x=runs, y=classes, zmin=0.0, zmax=1.0, colorscale="Viridis",
        colorbar={"title": {"text": "recall"}}, text=[[f"{v:.0%}" for v in row] for row in values],
        texttemplate="%{text}", hovertemplate="class %{y}<br>%{x}<br>recall %{z:.3f}<extra></extra>",
    ))
    figure.update_xaxes(**_category_axis(runs))
    figure.update_yaxes(**_category_axis(classes), autorange="reversed")
    figure.update_layout(height=120 + 28 * max(len(classes), 1))
    return _tidy(figure)


def _tidy(figure: go.Figure) -> go.Figure:
    """Plotly keeps a 100 px top margin for a title; without one it is an empty band."""
    has_title = bool(figure.layout.title and figure.layout.title.text)
    if figure.layout.margin.t is None:
        figure.update_layout(margin={"t": 60 if has_title else 30})
    return figure


def _escape(name: object) -> str:
    # quote=False: plotly.js decodes &lt; &gt; &amp; but not &quot; or &#x27;, which would
    # then show literally; quotes cannot start a tag once "<" is escaped.
    return html.escape(str(name), quote=False)


def _escape_all(names: Iterable[object]) -> list[str]:
    return [_escape(name) for name in names]


def _category_axis(names: list[str]) -> dict:
    return {"type": "category", "categoryorder": "array", "categoryarray": names}


def _run_colors(runs: pd.Series) -> dict[object, str]:
    """One colour per run, by first appearance, so a run keeps its colour across figures."""
    return {run: _PALETTE[i % len(_PALETTE)] for i, run in enumerate(pd.unique(runs))}


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], *, what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; "
                         f"has {', '.join(map(str, frame.columns))}")
