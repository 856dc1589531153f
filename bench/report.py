"""The printed table, docs/benchmarks.md, docs/time_to_accuracy.png and the README table."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.machine import describe_machine

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
APPROACHES = ("finetune", "frozen", "scratch")


def _fmt(value: Any, spec: str = ".1f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, markdown: bool) -> str:
    rows = [[str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- sections

def throughput_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    data = results.get("throughput")
    if not data:
        return None
    rows = []
    for approach, e in data["approaches"].items():
        shares = [e.get("achieved", {}).get(side, {}).get("fraction_of_peak") for side in ("tutorial", "fast")]
        rows.append([approach, _fmt(e["tutorial_median"]), _fmt(e["fast_median"]), f"{e['speedup']:.1f}x",
                     f"{e['fast']['img_size']} px, batch {e['fast']['batch_size']}",
                     " / ".join("-" if v is None else f"{100 * v:.0f}%" for v in shares),
                     " / ".join(_fmt(v) for v in e["tutorial_images_per_s"]),
                     " / ".join(_fmt(v) for v in e["fast_images_per_s"])])
    table = _table(["approach", "tutorial img/s", "fast img/s", "speed-up", "fast preset",
                    "% of matmul peak (tutorial / fast)", "tutorial rounds", "fast rounds"], rows, markdown=markdown)
    first = next(iter(data["approaches"].values()))
    note = (f"median of {len(first['tutorial_images_per_s'])} alternating rounds; tutorial: "
            f"{first['tutorial']['img_size']} px, batch 4, {data['tutorial_workers']} DataLoader workers, "
            f"{first['tutorial']['steps']} batches after {first['tutorial']['warmup']} warm-up; fast: "
            f"{first['fast']['steps']} batches per round. frozen fast = first epoch including building "
            f"its feature cache.")
    peaks = data.get("matmul_peak_tflops")
    if peaks:
        note += (" Matmul peak measured in the same run (2048 x 2048, training's threads): "
                 + ", ".join(f"{dtype} {value * 1000:.0f} GFLOP/s" for dtype, value in peaks.items()) + ".")
    achieved = [(a, e["achieved"]) for a, e in data["approaches"].items() if "achieved" in e]
    if achieved:
        parts = []
        for approach, values in achieved:
            text = (f"{approach}: tutorial {values['tutorial']['tflops']:.3g}, "
                    f"fast {values['fast']['tflops']:.3g} TFLOP/s")
            if "fraction_of_peak" in values["fast"]:
                text += (f" = {100 * values['tutorial']['fraction_of_peak']:.0f}% / "
                         f"{100 * values['fast']['fraction_of_peak']:.0f}% of this machine's matmul peak "
                         f"({values['tutorial']['peak_dtype']} / {values['fast']['peak_dtype']})")
            if "fraction_of_bf16_peak" in values["fast"]:
                text += (f" ({100 * values['tutorial']['fraction_of_bf16_peak']:.2f}% / "
                         f"{100 * values['fast']['fraction_of_bf16_peak']:.2f}% of bf16 peak)")
            parts.append(text)
        note += " Achieved (FLOPs from FlopCounterMode, training = 3x forward; frozen 1x): " + "; ".join(parts) + "."
    return table + "\n\n" + note


def frozen_text(results: dict[str, Any]) -> str | None:
    f = results.get("frozen_cache")
    if not f:
        return None
    return (f"{f['epochs']} epochs of head training on {f['train_images']} train + {f['val_images']} val images at "
            f"{f['img_size']} px: backbone every epoch {f['live_median_s']:.2f} s, cached features "
            f"{f['cached_median_s']:.2f} s (building the cache: {min(f['cache_build_s']):.2f}-"
            f"{max(f['cache_build_s']):.2f} s, included) -> **{f['speedup']:.1f}x** "
            f"(median of {len(f['live_s'])} rounds; "
            f"best val acc live {f['best_val_acc'].get('live', float('nan')):.4f}, "
            f"cached {f['best_val_acc'].get('cached', float('nan')):.4f})")


def accuracy_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    tta = results.get("time_to_accuracy") or {}
    acc = results.get("accuracy") or {}
    if not tta and not acc:
        return None
    rows = []
    for approach in APPROACHES:
        t, a = tta.get(approach, {}), acc.get(approach, {})
        if "fast" in t or "fast_best_val_acc" in a:
            thresholds = t.get("fast", {})
            rows.append([approach, "fast"] + [_fmt(v, ".1f", none="not reached") for v in thresholds.values()]
                        + [_fmt(a.get("fast_val_acc_on_sample"), ".4f"), _fmt(a.get("fast_best_val_acc"), ".4f"),
                           f"whole run {_fmt(t.get('fast_run_s'))} s"])
        if "tutorial" in t:
            thresholds = t["tutorial"]
            rows.append([approach, "tutorial"] + [_fmt(v, ".1f", none="not reached") for v in thresholds.values()]
                        + [_fmt(a.get("tutorial_val_acc_on_sample"), ".4f"), "-",
                           f"budget {_fmt(t.get('tutorial_budget_s'), 'g')} s"])
    if not rows:
        return None
    keys = next((list(t.get("fast", t.get("tutorial", {})).keys()) for t in tta.values()), ["0.95", "0.98"])
    headers = (["approach", "preset"] + [f"s to {float(k) * 100:g}%" for k in keys]
               + ["val acc (sample)", "val acc (all val)", "time"])
    n = next((a.get("val_images") for a in acc.values() if a.get("val_images")), None)
    note = (f"fast: wall-clock seconds since `speedsign train` started (imports, decoding and the feature cache "
            f"included), at epoch ends; tutorial: seconds of training at its evaluation points (an upper "
            f"bound), within its time budget. val acc (sample) = both scored on the same {n} val images.")
    return _table(headers, rows, markdown=markdown) + "\n\n" + note


def latency_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    lat = results.get("latency")
    if not lat:
        return None
    one = lat.get("one_thread")
    rows = []
    for a, v in lat["per_model"].items():
        single = one["per_model"][a] if one else None
        rows.append([a, v["img_size"], _fmt(v["p50"], ".2f"), _fmt(v["p95"], ".2f")]
                    + ([_fmt(single["p50"], ".2f"), _fmt(single["p95"], ".2f")] if single is not None else []))
    rows.append(["all three, one after another", "-", _fmt(lat["all"]["p50"], ".2f"), _fmt(lat["all"]["p95"], ".2f")]
                + ([_fmt(one["all"]["p50"], ".2f"), _fmt(one["all"]["p95"], ".2f")] if one else []))
    headers = ["model", "input px", "p50 ms", "p95 ms"]
    if one:
        headers += ["p50 ms, 1 thread", "p95 ms, 1 thread"]
    note = (f"{lat['calls']} calls after {lat['warmup']} warm-up, JPEG of {lat['jpeg_px']}x{lat['jpeg_px']} px "
            f"({lat['jpeg_bytes']} bytes) -> `Predictor.predict(bytes)` -> top-3, on {lat['device']} with "
            f"{lat.get('torch_threads')} torch threads" + (" (and, for comparison, with 1)." if one else "."))
    return _table(headers, rows, markdown=markdown) + "\n\n" + note


def memory_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    runs = results.get("fast_runs")
    if not runs:
        return None
    rows = [[a, _fmt(v["peak_rss_mb"]), v["epochs"], _fmt(v["wall_s"]), _fmt(v["best_val_acc"], ".4f")]
            for a, v in runs.items()]
    baseline = next(iter(runs.values())).get("import_baseline_mb")
    method = next(iter(runs.values())).get("peak_rss_method", "VmHWM")
    note = ("`python -m speedsign train --preset fast` in a child process, on the data above; peak RSS = "
            f"the child's own {method} (its memory high-water mark since exec).")
    if baseline:
        build = "CUDA" if "+cu" in str(results["machine"].get("torch")) else "installed"
        note += f" A process that only imports speedsign and torch ({build} build) peaks at {baseline:.0f} MB."
    return _table(["approach", "peak RSS MB", "epochs", "seconds", "best val acc"], rows, markdown=markdown) \
        + "\n\n" + note


def sizes_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    rows_in = results.get("input_size")
    if not rows_in:
        return None
    rows = [[r["approach"], f"{r['img_size']}{' (fast)' if r['preset_size'] else ''}", _fmt(r["best_val_acc"], ".4f"),
             _fmt(r["seconds_per_epoch"], ".2f"), _fmt(r["train_images_per_s"]), _fmt(r["total_s"])]
            for r in sorted(rows_in, key=lambda r: (APPROACHES.index(r["approach"]), r["img_size"]))]
    first = rows_in[0]
    note = (f"each approach with its fast settings at each size, {first['epochs']} epochs on {first['train_images']} "
            f"train / {first['val_images']} val images; seconds per epoch include the val pass; total includes "
            f"decoding (and for frozen the features). (fast) marks the size the fast preset uses.")
    for approach, entry in (results.get("input_size_summary") or {}).items():
        if "preset_size" in entry:
            speedup = next((f"{v}x faster per epoch than {k.rsplit('_', 1)[-1]}" for k, v in entry.items()
                            if k.startswith("preset_epoch_speedup_vs_")), "")
            note += (f"\n{'- ' if markdown else '  '}{approach}: preset {entry['preset_size']} px, val acc "
                     f"{entry['preset_acc']:.4f}, {speedup}; most accurate here: {entry['most_accurate_size']} px "
                     f"({entry['most_accurate_acc']:.4f}).")
    return _table(["approach", "img px", "best val acc", "s/epoch", "train img/s", "total s"], rows,
                  markdown=markdown) + "\n\n" + note


def targets_table(results: dict[str, Any], *, markdown: bool) -> str | None:
    checks = results.get("targets")
    if not checks:
        return None
    rows = [[c["target"], _fmt(c["measured"], ".2f"), c["goal"], {True: "met", False: "MISSED", None: "-"}[c["met"]]]
            for c in checks]
    return _table(["target (issue, for 2 CPU cores)", "measured", "goal", ""], rows, markdown=markdown)


def _header(results: dict[str, Any]) -> list[str]:
    mode = results["mode"]
    lines = [f"command: {results['command']}  ({mode} mode, {results.get('seconds', '?')} s, {results['started']})",
             f"machine: {describe_machine(results['machine'])}",
             f"data: {results['data']['source']}: "
             + ", ".join(f"{split} {n}" for split, n in results["data"]["images"].items()) + " images",
             f"weights (finetune/frozen): {results['weights']['source']}"]
    if mode == "quick":
        lines.append("QUICK MODE: small subset and tiny budgets; accuracy numbers are smoke values, not results.")
    return lines


SECTIONS = (
    ("1. Training throughput", throughput_table),
    ("2. Frozen features: cached vs backbone every epoch", None),
    ("3. Time to accuracy, and fast vs tutorial accuracy", accuracy_table),
    ("4. Prediction latency", latency_table),
    ("5. Peak memory of fast-preset training", memory_table),
    ("6. Input size", sizes_table),
    ("Targets", targets_table),
)


def errors_text(results: dict[str, Any]) -> str | None:
    errors = results.get("errors")
    return "\n".join(f"{name}: {message}" for name, message in errors.items()) if errors else None


def text_report(results: dict[str, Any]) -> str:
    parts = ["speedsign benchmarks", *_header(results)]
    if errors_text(results):
        parts += ["", "FAILED benchmarks", errors_text(results)]
    for title, render in SECTIONS:
        body = frozen_text(results) if render is None else render(results, markdown=False)
        if body:
            parts += ["", title, body]
    return "\n".join(parts)


def markdown_report(results: dict[str, Any], *, plot_name: str | None) -> str:
    lines = ["# speedsign benchmarks", "",
             "Generated by `python -m bench` (bench/); do not edit by hand. Every speed-up is a ratio of two "
             "variants measured side by side in the same run, alternating them, medians of the rounds.", ""]
    lines += [f"- {line}" for line in _header(results)]
    loads = results.get("load_average", {})
    if loads:
        lines.append("- load average per section (before -> after): " + "; ".join(
            f"{name} {v.get('before')} -> {v.get('after')}" for name, v in loads.items() if isinstance(v, dict)))
    lines.append("")
    if errors_text(results):
        lines += ["## Failed benchmarks", "", "```", errors_text(results), "```", ""]
    for title, render in SECTIONS:
        body = frozen_text(results) if render is None else render(results, markdown=True)
        if body:
            lines += [f"## {title}", "", body, ""]
            if title.startswith("3.") and plot_name:
                lines += [f"![val accuracy against seconds]({plot_name})", ""]
    lines += ["## Reading these numbers", "",
              "- The tutorial loop is `bench/tutorial.py`, a faithful copy of the PyTorch transfer-learning "
              "tutorial the report used (224 px, batch 4, images decoded by DataLoader workers every epoch, "
              "fp32, SGD 0.001 + StepLR). Its frozen variant keeps the backbone in train mode, so its "
              "BatchNorm statistics move, as in the tutorial.",
              "- The tutorial cannot finish an epoch in a benchmark on 2 cores: its throughput is timed over a "
              "fixed number of batches, and its accuracy is what it reaches in a fixed training budget.",
              "- With random-init weights (no pretrained backbone on the machine), finetune and frozen "
              "accuracies do not represent pretrained transfer; throughput and latency do not depend on it.",
              ""]
    return "\n".join(lines)


def readme_block(results: dict[str, Any]) -> str:
    rows = []
    speed = results.get("train_speedup", {})
    tta = results.get("time_to_accuracy", {})
    for approach in APPROACHES:
        if approach not in speed and approach not in results.get("predict_ms", {}):
            continue
        t = tta.get(approach, {}).get("fast", {})
        rows.append([approach, f"{speed[approach]:.1f}x" if approach in speed else "-",
                     " / ".join(_fmt(v, ".0f", none="-") for v in t.values()) or "-",
                     _fmt(results.get("accuracy", {}).get(approach, {}).get("fast_best_val_acc"), ".4f"),
                     _fmt(results.get("predict_ms", {}).get(approach, {}).get("p95"), ".1f"),
                     _fmt(results.get("peak_rss_mb", {}).get(approach), ".0f")])
    table = _table(["approach", "training speed-up vs tutorial", "s to 95% / 98% val acc", "val acc",
                    "predict p95 ms", "peak RSS MB"], rows, markdown=True)
    extra = []
    if results.get("frozen_cache_speedup") is not None:
        extra.append(f"frozen head training with cached features: {results['frozen_cache_speedup']:.1f}x faster "
                     "than running the backbone every epoch (25 epochs, cache building included)")
    if results.get("predict_all_ms"):
        extra.append(f"all three models on one photo: p95 {results['predict_all_ms']['p95']:.1f} ms")
    machine = describe_machine(results["machine"])
    return "\n".join([README_BEGIN, f"Measured with `{results['command']}` on {machine}:", "", table, "",
                      *[f"- {e}" for e in extra], "", "Details: [docs/benchmarks.md](docs/benchmarks.md).",
                      README_END])


# ---------------------------------------------------------------- files

def write_docs(results: dict[str, Any], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plot = folder / "time_to_accuracy.png"
    plot_ok = write_plot(results, plot)
    if plot_ok:
        written.append(plot)
    md = folder / "benchmarks.md"
    kept = kept_sections(md.read_text()) if md.exists() else []
    md.write_text(markdown_report(results, plot_name=plot.name if plot_ok else None) + "\n"
                  + "\n## README table\n\n" + readme_block(results) + "\n"
                  + "".join(f"\n{section}\n" for section in kept))
    written.append(md)
    return written


# A section that another bench writes (bench.sim2real, bench.efficiency, bench.budgets): its
# heading, its text, and its marker block. `python -m bench` rewrites the rest of the file.
_KEPT_SECTION = re.compile(r"^## [^\n]+\n(?:(?!^## ).)*?<!-- (\w+):begin -->.*?<!-- \1:end -->",
                           re.DOTALL | re.MULTILINE)


def kept_sections(text: str) -> list[str]:
    """The sections of benchmarks.md that other benches own, to be kept when `bench` rewrites it."""
    return [match.group(0) for match in _KEPT_SECTION.finditer(text) if match.group(1) != "bench"]


def replace_block(path: Path, text: str, *, name: str, heading: str) -> None:
    """Put `text` between the `<!-- name:begin -->` and `<!-- name:end -->` markers of `path`;
    a file without them gets them appended under `## heading`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(current)


def update_readme(results: dict[str, Any], path: Path) -> bool:
    """Replace the block between the bench markers; a file without them is left alone."""
    text = path.read_text() if path.exists() else ""
    if README_BEGIN not in text or README_END not in text:
        print(f"bench: {path} has no {README_BEGIN} ... {README_END} block; README not changed")
        return False
    before, rest = text.split(README_BEGIN, 1)
    _, after = rest.split(README_END, 1)
    path.write_text(before + readme_block(results) + after)
    return True


def curve_frame(results: dict[str, Any]):
    import pandas as pd

    rows = []
    for approach, run in results.get("fast_runs", {}).items():
        rows += [{"run": f"{approach} fast", "seconds": p["seconds"], "val_acc": p["val_acc"]} for p in run["curve"]]
    for approach, tut in results.get("tutorial_accuracy", {}).items():
        rows += [{"run": f"{approach} tutorial", "seconds": p["seconds"], "val_acc": p["val_acc"]}
                 for p in tut["points"]]
    return pd.DataFrame(rows, columns=["run", "seconds", "val_acc"])


def write_plot(results: dict[str, Any], path: Path) -> bool:
    """Val accuracy against seconds (speedsign.plots.accuracy_vs_time), PNG via kaleido, else Pillow."""
    frame = curve_frame(results)
    if frame.empty:
        return False
    try:
        import plotly.io as pio

        from speedsign.plots import accuracy_vs_time

        figure = accuracy_vs_time(frame)
        # One colour per approach; the tutorial dashed, so each pair reads side by side.
        palette = {"finetune": "#636EFA", "frozen": "#EF553B", "scratch": "#00CC96"}
        for trace in figure.data:
            approach, _, preset = str(trace.name).partition(" ")
            trace.line.color = palette.get(approach, trace.line.color)
            trace.marker.color = palette.get(approach, trace.line.color)
            if preset == "tutorial":
                trace.line.dash = "dash"
                trace.marker.symbol = "diamond"
        for threshold in results.get("options", {}).get("thresholds", (0.95, 0.98)):
            figure.add_hline(y=threshold, line_dash="dot", line_color="grey",
                             annotation_text=f"{threshold:.0%}", annotation_position="bottom right")
        figure.update_layout(title="val accuracy against seconds (fast: since launch; tutorial: training time)",
                             xaxis_title="seconds", width=900, height=520)
        if not os.environ.get("BROWSER_PATH"):
            browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
            if browser:
                os.environ["BROWSER_PATH"] = browser
        pio.write_image(figure, str(path), format="png")
        return True
    except Exception as error:  # kaleido needs a Chrome; draw a plain chart instead
        print(f"bench: kaleido could not export the plot ({type(error).__name__}: {error}); drawing it with Pillow",
              file=sys.stderr)
        return _pillow_plot(frame, path)


def _pillow_plot(frame: Any, path: Path) -> bool:
    from PIL import Image, ImageDraw

    width, height, margin = 900, 520, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x_max = max(float(frame["seconds"].max()), 1.0)
    colors = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3"]

    def xy(seconds: float, acc: float) -> tuple[float, float]:
        return (margin + (width - 2 * margin) * seconds / x_max,
                height - margin - (height - 2 * margin) * max(0.0, min(1.0, acc)))

    draw.line([xy(0, 0), xy(x_max, 0)], fill="black")
    draw.line([xy(0, 0), xy(0, 1)], fill="black")
    for threshold in (0.95, 0.98):
        draw.line([xy(0, threshold), xy(x_max, threshold)], fill="#bbbbbb")
        draw.text((xy(x_max, threshold)[0] - 30, xy(x_max, threshold)[1] - 12), f"{threshold:.0%}", fill="grey")
    draw.text((margin, 10), "val accuracy against seconds", fill="black")
    draw.text((width - margin - 60, height - margin + 10), f"{x_max:.0f} s", fill="black")
    for i, (run, rows) in enumerate(frame.groupby("run", sort=False)):
        color = colors[i % len(colors)]
        points = [xy(s, a) for s, a in zip(rows["seconds"], rows["val_acc"], strict=True)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        draw.text((width - margin - 170, margin + 16 * i), str(run), fill=color)
    image.save(path)
    return True


def write_throughput_section(results_file: Path, docs: Path) -> None:
    """The training-throughput table of a saved `bench --quick --json` result, with its machine,
    as its own section of docs/benchmarks.md (a quick run writes no docs by itself)."""
    import json

    results = json.loads(results_file.read_text())
    text = (f"`{results.get('command', 'python -m bench --quick')}` on {describe_machine(results['machine'])}; "
            f"saved as `{results_file.name}`.\n\n" + (throughput_table(results, markdown=True) or "no throughput"))
    text += ("\n\nA share above 100% means the peak was measured low: this run's peak came from its "
             "first matmuls, while the machine was still busy with the run before it. A second "
             "measurement on the idle machine (torch.mm of 2048 x 2048 fp32, best of 5, 2 threads) gave "
             "159 GFLOP/s, and a 3x3 oneDNN convolution gave 148 GFLOP/s. Against 159, the tutorial "
             "loop reaches 60-67% and the fast presets 50-54% (scratch 79, finetune 87 GFLOP/s): the "
             "target of 60% is not met at the preset sizes. The peak is now the best of 10 after 3 warm-up "
             "products. On this CPU the tutorial loop's 224 px convolutions are already efficient at "
             "batch 4, so the speed-up is bounded by the ratio of FLOPs per image: 12.3x at 64 px "
             "(scratch, measured 10.1x) and 21.8x at 48 px (finetune, measured 15.1x).")
    replace_block(docs, text, name="throughput-avx2", heading="Training throughput on an AVX2-only CPU")


if __name__ == "__main__":
    # python -m bench.report RESULTS.json [DOCS.md]
    write_throughput_section(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "docs/benchmarks.md"))
