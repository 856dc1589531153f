"""The study as one self-contained HTML file, and the figures the Compare page shares with it.

Plotly's JavaScript is embedded once, inline, and pictures are data: URIs, so the file opens
offline and asks the network for nothing. Every name in it (runs, classes, files) comes from
disk and is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

from speedsign import plots
from speedsign.corruptions import robustness_frame
from speedsign.datasets import load_picture
from speedsign.study import StudyResult, disagreements, reliability_tables

GALLERY_IMAGES = 12  # per direction of a pair: enough to see a pattern, small enough to read
THUMBNAIL_SIDE = 64


def study_figures(result: StudyResult) -> dict[str, go.Figure]:
    """The study's figures by name, in reading order (robustness only when it was measured)."""
    figures: dict[str, go.Figure] = {"accuracy": plots.accuracy_intervals(result.accuracy)}
    for x in ("seconds", "images"):
        if not result.curves.dropna(subset=[x]).empty:
            figures[f"curve_{x}"] = plots.val_accuracy_against(result.curves, x=x)
    for row in result.calibration:
        run = next(r for r in result.study.runs if r.run_id == row["run_id"])
        before, after = reliability_tables(result.study, run)
        figures[f"reliability_before_{run.run_id}"] = _titled(
            plots.reliability_diagram(before, ece=row["ece_before"]),
            f"{run.run_id}: before (ECE {row['ece_before']:.3f})")
        figures[f"reliability_after_{run.run_id}"] = _titled(
            plots.reliability_diagram(after, ece=row["ece_after"]),
            f"{run.run_id}: T = {row['temperature']:.2f} (ECE {row['ece_after']:.3f})")
    if result.robustness:
        figures["robustness"] = plots.robustness_heatmap(robustness_frame(result.robustness))
    figures["per_class"] = plots.per_class_heatmap(result.per_class)
    return figures


def _titled(figure: go.Figure, title: str) -> go.Figure:
    figure.update_layout(title_text=html.escape(title, quote=False))
    return figure


# ---------------------------------------------------------------- tables

def accuracy_table(result: StudyResult) -> pd.DataFrame:
    return pd.DataFrame([{"run": r["run_id"], "approach": r["approach"], "accuracy %": round(100 * r["accuracy"], 2),
                          "95% CI %": f"{100 * r['ci'][0]:.2f}-{100 * r['ci'][1]:.2f}", "correct": r["correct"],
                          "images": r["n"]} for r in result.accuracy])


def pairs_table(result: StudyResult) -> pd.DataFrame:
    return pd.DataFrame([{
        "a": p["a"], "b": p["b"], "a - b (points)": round(100 * p["diff"], 2),
        "95% CI (points)": f"{100 * p['diff_ci'][0]:+.2f} to {100 * p['diff_ci'][1]:+.2f}",
        "b: a right, b wrong": p["mcnemar"]["b"], "c: a wrong, b right": p["mcnemar"]["c"],
        "McNemar p": _p_text(p["mcnemar"]["p"]), "Holm p": _p_text(p["p_holm"]),
        "verdict": "differs" if p["differs"] else "within noise",
    } for p in result.pairs], columns=["a", "b", "a - b (points)", "95% CI (points)", "b: a right, b wrong",
                                       "c: a wrong, b right", "McNemar p", "Holm p", "verdict"])


def cost_table(result: StudyResult) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": c["run_id"], "training s": _round(c["train_seconds"], 1), "images seen": c["images_seen"],
        "images/s": _round(c["images_per_s"], 0), "trainable params": c["trainable_params"],
        "model MB": c["model_mb"], "latency p50 ms": _round(c["latency_ms"], 1),
    } for c in result.cost])


def calibration_table(result: StudyResult) -> pd.DataFrame:
    return pd.DataFrame([{
        "run": c["run_id"], "temperature": round(c["temperature"], 3), "ECE before": round(c["ece_before"], 4),
        "ECE after": round(c["ece_after"], 4), "NLL before": round(c["nll_before"], 4),
        "NLL after": round(c["nll_after"], 4),
    } for c in result.calibration])


def _p_text(p: float) -> str:
    """0.034, or 9.4e-75: a table cell, where a float this small would show as 0.000000."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------- HTML

def render_html(result: StudyResult, *, title: str = "speedsign study") -> str:
    """The whole study as one HTML page with nothing to fetch."""
    study = result.study
    figures = study_figures(result)
    parts = [f"<h1>{_e(title)}</h1>",
             f"<p>{study.n:,} {_e(study.split)} images of data set {_e(study.data_fingerprint[:12])}, "
             f"{len(study.runs)} runs; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by speedsign.</p>",
             "<h2>Conclusion</h2><ul>" + "".join(f"<li>{_e(s)}</li>" for s in result.conclusion) + "</ul>",
             "<h2>Accuracy</h2>", _table(accuracy_table(result))]
    first = [True]

    def figure(name: str) -> str:
        if name not in figures:
            return ""
        # Plotly's JavaScript once, inline (include_plotlyjs=True); the later figures reuse it.
        text = pio.to_html(figures[name], full_html=False, include_plotlyjs=bool(first[0]),
                           config={"displaylogo": False})
        first[0] = False
        return f"<div class='figure'>{text}</div>"

    parts.append(figure("accuracy"))
    if result.pairs:
        parts += ["<h2>Differences between pairs (same images)</h2>",
                  "<p>Paired bootstrap 95% interval of the accuracy difference; exact McNemar test, "
                  "Holm-corrected over the pairs.</p>", _table(pairs_table(result))]
    parts += ["<h2>Cost</h2>", _table(cost_table(result)), "<h2>Time to accuracy</h2>",
              figure("curve_seconds"), figure("curve_images"),
              "<h2>Calibration</h2><p>Temperature fitted on val; ECE with 10 equal-width bins.</p>",
              _table(calibration_table(result)),
              "<div class='row'>" + "".join(figure(name) for name in figures if name.startswith("reliability"))
              + "</div>"]
    if result.robustness:
        parts += ["<h2>Robustness to corruptions</h2>", figure("robustness")]
    parts += ["<h2>Per class (recall)</h2>", figure("per_class"), "<h2>Where they differ</h2>",
              *_galleries(result)]
    parts.append("<h2>The numbers</h2><details><summary>JSON</summary><pre>"
                 + _e(json.dumps(result.to_json(), indent=1)) + "</pre></details>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(p for p in parts if p) + "</body></html>")


def _galleries(result: StudyResult) -> list[str]:
    study = result.study
    parts = []
    for pair in result.pairs:
        for a, b in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
            frame = disagreements(study, a, b, k=GALLERY_IMAGES)
            parts.append(f"<h3>{_e(a)} right, {_e(b)} wrong ({_count(study, a, b)} images)</h3>")
            if frame.empty:
                parts.append("<p>None.</p>")
                continue
            cells = []
            for row in frame.itertuples(index=False):
                picture = _thumbnail(study.data_dir, row.file)
                image = f"<img alt='' src='{picture}'>" if picture else "<div class='missing'>no image</div>"
                cells.append(f"<figure>{image}<figcaption>true {_e(row.true)}<br>{_e(a)}: {_e(row.a_pred)} "
                             f"{row.a_conf:.0%}<br>{_e(b)}: {_e(row.b_pred)} {row.b_conf:.0%}</figcaption></figure>")
            parts.append("<div class='gallery'>" + "".join(cells) + "</div>")
    return parts


def _count(study: Any, a: str, b: str) -> int:
    run_a = next(r for r in study.runs if r.run_id == a)
    run_b = next(r for r in study.runs if r.run_id == b)
    return int((study.correct(run_a) & ~study.correct(run_b)).sum())


def _thumbnail(data_dir: Any, relative: str) -> str | None:
    """A data: URI of the image, or None; load_picture refuses paths outside the data folder."""
    if data_dir is None:
        return None
    pixels = load_picture(data_dir, relative, max_side=THUMBNAIL_SIDE)
    if pixels is None:
        return None
    image = Image.fromarray(pixels)
    if max(image.size) < THUMBNAIL_SIDE:  # 32 px crops: shown larger, with visible pixels
        image = image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(frame: pd.DataFrame) -> str:
    # to_html escapes cell text; the frame's values are numbers or names from disk.
    return frame.to_html(index=False, escape=True, na_rep="–", border=0, classes="numbers")


def _e(text: object) -> str:
    return html.escape(str(text))


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table.numbers { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
table.numbers th, table.numbers td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }
.row { display: flex; flex-wrap: wrap; } .row .figure { width: 50%; min-width: 360px; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
.gallery figure { margin: 0; width: 140px; font-size: 0.8em; }
.gallery img { width: 64px; height: 64px; image-rendering: pixelated; }
pre { white-space: pre-wrap; font-size: 0.8em; }
"""


def write_report(result: StudyResult, path: Any, *, title: str = "speedsign study") -> None:
    from speedsign.storage import atomic_write_text

    atomic_write_text(render_html(result, title=title), path)

