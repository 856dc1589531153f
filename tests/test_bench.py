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
