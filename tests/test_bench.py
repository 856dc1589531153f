"""The benchmark machinery (bench/): its JSON contract on tiny data, and its small parts.

Nothing here is timed: the smoke test only checks that every benchmark runs end to end and
writes the shape DESIGN.md section 4 promises, with positive ratios.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench import cli, report, tutorial
from bench.context import FULL, QUICK
from bench.workspace import copy_track_subset, subset_index, tutorial_folder
from speedsign.data import scan_dataset

APPROACHES = ("finetune", "frozen", "scratch")


def tiny_args(data: Path, weights: Path, tmp: Path) -> list[str]:
    """--quick with every budget at its smallest: a second or two per benchmark."""
    return [
        "--quick", "--data", str(data), "--weights", str(weights), "--subset-tracks", "0",
        "--rounds", "1", "--tutorial-steps", "1", "--tutorial-warmup", "0", "--tutorial-img-size", "32",
        "--tutorial-workers", "0", "--fast-steps", "1", "--fast-warmup", "0",
        "--frozen-images", "40", "--frozen-epochs", "2", "--fast-epochs", "1",
        "--tutorial-budget", "0.2", "--val-images", "10",
        "--sizes", "16", "--size-epochs", "1", "--size-train-images", "40", "--size-val-images", "10",
        "--predict-calls", "3", "--predict-warmup", "1",
        "--docs", str(tmp / "docs"), "--json", str(tmp / "bench.json"),
    ]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_bench_writes_the_json_contract(tmp_path: Path, synth_dir: Path, weights_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(tiny_args(synth_dir, weights_file, tmp_path)) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert "errors" not in data

    machine = data["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and "load_average" in machine and "gpu" in machine
    assert set(data["train_speedup"]) == set(APPROACHES)
    assert all(_positive(v) for v in data["train_speedup"].values())
    assert _positive(data["frozen_cache_speedup"])
    assert set(data["predict_ms"]) == set(APPROACHES)
    for value in data["predict_ms"].values():
        assert set(value) == {"p50", "p95"} and 0 < value["p50"] <= value["p95"]
    assert set(data["peak_rss_mb"]) == set(APPROACHES)
    assert all(_positive(v) for v in data["peak_rss_mb"].values())
    # ... and the rest of what was measured
    assert set(data["time_to_accuracy"]) == set(APPROACHES)
    assert {row["img_size"] for row in data["input_size"]} == {16}
    assert data["predict_all_ms"]["p95"] >= max(v["p50"] for v in data["predict_ms"].values())
    for approach in APPROACHES:
        run = data["fast_runs"][approach]
        assert run["epochs"] == 1 and run["curve"][0]["seconds"] > 0
        raw = data["throughput"]["approaches"][approach]
        assert len(raw["tutorial_images_per_s"]) == len(raw["fast_images_per_s"]) == 1
        for side in ("tutorial", "fast"):  # achieved FLOP/s against the matmul peak measured in this run
            share = raw["achieved"][side]
            assert share["peak_dtype"] in data["throughput"]["matmul_peak_tflops"]
            assert _positive(share["fraction_of_peak"]) and _positive(share["peak_tflops"])
    assert _positive(data["throughput"]["matmul_peak_tflops"]["fp32"])
    assert data["mode"] == "quick" and data["command"].startswith("python -m bench --quick")

    printed = capsys.readouterr().out
    assert "Training throughput" in printed and "Targets" in printed
    markdown = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "python -m bench --quick" in markdown and report.README_BEGIN in markdown
    assert (tmp_path / "docs" / "time_to_accuracy.png").stat().st_size > 0


def test_quick_mode_leaves_docs_alone_unless_asked() -> None:
    quick = cli.options_from_args(cli.build_parser().parse_args(["--quick"]))
    full = cli.options_from_args(cli.build_parser().parse_args([]))
    assert quick.docs is None and full.docs is not None and full.docs.name == "docs"
    assert cli.options_from_args(cli.build_parser().parse_args(["--no-docs"])).docs is None
    assert quick.rounds >= 3 and full.rounds >= 3  # several repeats, medians
    assert full.frozen_epochs == QUICK.frozen_epochs == 25
    assert full.sizes == (32, 48, 64, 96, 128, 224) and FULL.tutorial_img_size == 224


def test_sections_and_limits_parse() -> None:
    options = cli.options_from_args(cli.build_parser().parse_args(
        ["--only", "throughput,latency", "--skip", "latency", "--val-images", "0", "--sizes", "32,64"]))
    assert options.sections == ("throughput",)
    assert options.val_images is None and options.sizes == (32, 64)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--sizes", "8"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--only", "nonsense"])


def test_tutorial_is_the_tutorials_recipe(synth_dir: Path, weights_file: Path, tmp_path: Path) -> None:
    names = [type(t).__name__ for t in tutorial.data_transforms()["train"].transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    val = tutorial.data_transforms()["val"].transforms
    assert val[0].size == 256 and val[1].size == (224, 224)
    state = torch.load(weights_file, weights_only=True)
    frozen = tutorial.make_model("frozen", num_classes=9, backbone=state, device=torch.device("cpu"))
    trainable = {n for n, p in frozen.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert frozen.optimizer.param_groups[0]["lr"] == 0.001 and frozen.scheduler.step_size == 7
    # The tutorial's model.train() also puts the frozen backbone's BatchNorm in train mode.
    frozen.model.train()
    assert frozen.model.bn1.training

    index = scan_dataset(synth_dir)
    folder = tutorial_folder(index, tmp_path / "tut", val_files=[index.samples("val")[0].path])
    loaders, sizes, classes = tutorial.make_dataloaders(folder, num_workers=0, img_size=32)
    assert sizes == {"train": len(index.samples("train")), "val": 1}
    assert loaders["train"].batch_size == 4 and sorted(classes) == sorted(index.classes)


def test_track_subset_copies_whole_tracks(synth_dir: Path, tmp_path: Path) -> None:
    index = scan_dataset(synth_dir)
    out = copy_track_subset(index, tmp_path / "subset", tracks_per_class=2, seed=0)
    small = scan_dataset(out)
    assert small.classes == index.classes
    groups = {s.group for split in small.splits.values() for s in split}
    assert len(groups) == 2 * len(index.classes)  # whole tracks: 2 per class, every frame kept
    frames = sum(len(split) for split in small.splits.values())
    everything = [s for split in index.splits.values() for s in split]
    assert frames == sum(1 for s in everything if s.group in groups)


def test_subset_index_keeps_the_split(synth_dir: Path) -> None:
    index = scan_dataset(synth_dir)
    small = subset_index(index, train=10, val=5, seed=0)
    assert len(small.samples("train")) == 10 and len(small.samples("val")) == 5
    assert {s.path for s in small.samples("train")} <= {s.path for s in index.samples("train")}
    assert small.fingerprint != index.fingerprint


def _results() -> dict:
    return {
        "train_speedup": {"finetune": 25.0, "scratch": 12.0},
        "frozen_cache_speedup": 20.0,
        "frozen_cache": {"epochs": 25},
        "predict_ms": {"finetune": {"p50": 5.0, "p95": 9.0}},
        "predict_all_ms": {"p50": 15.0, "p95": 90.0},
        "peak_rss_mb": {"finetune": 900.0},
        "fast_runs": {"finetune": {"curve": [{"seconds": 10.0, "val_acc": 0.9}, {"seconds": 20.0, "val_acc": 0.96},
                                             {"seconds": 30.0, "val_acc": 0.99}], "wall_s": 31.0,
                                   "best_val_acc": 0.99, "peak_rss_mb": 900.0, "epochs": 3}},
        "tutorial_accuracy": {"finetune": {"points": [{"seconds": 90.0, "val_acc": 0.5}], "budget_s": 90.0,
                                           "best_val_acc": 0.5}},
        "accuracy": {"finetune": {"fast_val_acc_on_sample": 0.99, "tutorial_val_acc_on_sample": 0.5,
                                  "fast_reaches_tutorial": True, "fast_best_val_acc": 0.99, "val_images": 10}},
        "machine": {"cpu": "x", "cores": 2, "usable_cores": 2, "torch_threads": 2, "memory_gb": 4, "gpu": None,
                    "device": "cpu", "torch": "2", "load_average": [0.1, 0.1, 0.1]},
        "command": "python -m bench", "mode": "full", "started": "now",
        "data": {"source": "s", "images": {"train": 1, "val": 1}}, "weights": {"source": "w"},
    }


def test_time_to_accuracy_and_targets() -> None:
    results = _results()
    tta = cli.time_to_accuracy(results, (0.95, 0.98))
    assert tta["finetune"]["fast"] == {"0.95": 20.0, "0.98": 30.0}
    assert tta["finetune"]["tutorial"] == {"0.95": None, "0.98": None}
    results["time_to_accuracy"] = tta
    met = {c["target"]: c["met"] for c in cli.check_targets(results)}
    assert met["training speed-up, finetune"] is True and met["training speed-up, scratch"] is False
    assert met["prediction p95, all three"] is False and met["peak RSS, finetune"] is True
    assert met["frozen: cached vs live, 25 epochs"] is True


def test_readme_block_is_replaced_only_between_markers(tmp_path: Path) -> None:
    results = _results()
    results["time_to_accuracy"] = cli.time_to_accuracy(results, (0.95, 0.98))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\noutro\n")
    assert report.update_readme(results, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "`python -m bench`" in text and "25.0x" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(results, plain) and plain.read_text() == "no markers\n"


def test_plot_falls_back_to_pillow(tmp_path: Path) -> None:
    frame = report.curve_frame(_results())
    assert set(frame["run"]) == {"finetune fast", "finetune tutorial"}
    path = tmp_path / "plot.png"
    assert report._pillow_plot(frame, path) and path.stat().st_size > 0


def test_matmul_peak_is_a_positive_rate() -> None:
    from bench.machine import achieved, matmul_peak_tflops

    peak = matmul_peak_tflops(torch.device("cpu"), torch.float32, n=64, repeats=2)
    assert _positive(peak)
    share = achieved(1e9, 10.0, torch.device("cpu"), peak_tflops=0.1, peak_dtype="fp32")
    assert share == {"tflops": 0.01, "fraction_of_peak": 0.1, "peak_tflops": 0.1, "peak_dtype": "fp32"}


def test_efficiency_steps_give_the_same_flops_at_another_size() -> None:
    from bench.efficiency import images_to, steps_for

    assert steps_for(["--batch-size", "128"], images=60_000, reference_size=64) == 468  # 59,904 images
    assert steps_for(["--img-size", "32"], images=60_000, reference_size=64) == 7500  # 4x the images, batch 32
    assert steps_for(["--batch-size", "128", "--batch-size", "64"], images=60_000, reference_size=64) == 937
    curve = [{"images": 100, "val_acc": 0.9}, {"images": 200, "val_acc": 0.96}, {"images": 300, "val_acc": 0.975}]
    assert [images_to(curve, t) for t in (0.95, 0.97, 0.98)] == [200, 300, None]


def test_efficiency_and_budget_tables_read_their_records(tmp_path: Path) -> None:
    from bench import budgets, efficiency

    machine = {"cpu": "X", "cpu_flags": ["avx2"], "cores": 2, "usable_cores": 2, "torch_threads": 2,
               "memory_gb": 4, "gpu": None, "device": "cpu", "torch": "2", "load_average": None}
    levers = {"scratch seed 1": {"machine": machine, "approach": "scratch", "seed": 1, "extra": "",
                                 "images_budget": 60_000, "levers": {
                                     "baseline": {"flags": [], "images": 59_904, "final_val_acc": 0.965,
                                                  "images_to": {"0.95": 59_904, "0.97": None, "0.98": None},
                                                  "wall_s": 1015.3,
                                                  "curve": [{"images_per_s": 60.0, "seconds": 1001.2}]},
                                     "ema": {"flags": ["--ema", "0.99"], "error": ["boom"]}}}}
    table = efficiency.markdown(levers)
    assert "| baseline | `(fast preset)` | 59,904 | 96.50% | 59,904 | not reached | not reached | 1001 | 60 |" in table
    assert "| ema | `--ema 0.99` | failed: ['boom']" in table and "X [avx2]" in table
    rows = [{"budget_s": 600.0, "command": "-m speedsign train --budget 600", "wall_s": 590.2, "within": True,
             "plan": {"img_size": 48, "steps": 900, "planned_s": 575.0}, "steps_run": 900, "images": 115_200,
             "last_val_acc": 0.981, "best_val_acc": 0.982, "augment": "signs"},
            {"budget_s": 300.0, "command": "-m speedsign train --budget 300", "wall_s": 3.0, "error": "bad"}]
    table = budgets.markdown({"scratch, avx2": {"machine": machine, "avx2_only": False, "rows": rows}})
    assert "| 10 min | 590 | yes | 48 px | signs | 900 / 900 | 115,200 | 98.10% | 98.20% | 575 |" in table
    assert "| 5 min | 3.0 | failed: bad" in table
    docs = tmp_path / "benchmarks.md"
    docs.write_text("intro\n")
    report.replace_block(docs, "first", name="budgets", heading="Time budgets")
    report.replace_block(docs, "second", name="budgets", heading="Time budgets")
    assert docs.read_text() == "intro\n\n## Time budgets\n\n<!-- budgets:begin -->\nsecond\n<!-- budgets:end -->\n"


def test_bench_docs_keep_the_sections_other_benches_wrote(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# old\n\n## README table\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n")
    report.replace_block(docs, "92.1%", name="sim2real", heading="Synthetic to real")
    report.replace_block(docs, "10 min: 98%", name="budgets", heading="Time budgets")
    kept = report.kept_sections(docs.read_text())
    assert kept == ["## Synthetic to real\n\n<!-- sim2real:begin -->\n92.1%\n<!-- sim2real:end -->",
                    "## Time budgets\n\n<!-- budgets:begin -->\n10 min: 98%\n<!-- budgets:end -->"]


def test_cuda_bench_counts_training_seconds_until_each_accuracy() -> None:
    from bench.cuda import seconds_to

    curve = [{"val_acc": 0.90, "seconds": 10.0}, {"val_acc": 0.975, "seconds": 12.5},
             {"val_acc": 0.985, "seconds": 9.0}]
    assert [seconds_to(curve, t) for t in (0.95, 0.97, 0.98, 0.99)] == [22.5, 22.5, 31.5, None]
