"""Published models (speedsign.bundles): publish, then load; hostile and damaged bundles; the
command line on bundles; a bundle's backbone as --weights."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from speedsign import bundles, cli
from speedsign.errors import UserError
from speedsign.models import file_sha256
from speedsign.predict import Predictor, evaluate_split
from speedsign.runs import RunDir, inspect_run

from conftest import APPROACHES, int8_gate_lifted

# int8 per-channel weights move a probability by far less than this on the tiny test models
# (measured: at most ~0.01); the 12 MB and 0.1-point limits are checked by publish itself.
PROB_TOLERANCE = 0.05


@pytest.fixture
def published(published_models: dict[str, Path]) -> dict[str, Path]:
    return published_models


def copy_bundle(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models" / source.name
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize("approach", APPROACHES)
def test_publish_then_load_gives_the_runs_probabilities(approach: str, published: dict[str, Path],
                                                        runs_with_results: dict[str, Path], synth_dir: Path) -> None:
    bundle, run = Predictor(published[approach]), Predictor(runs_with_results[approach])
    assert bundle.classes == run.classes and bundle.config == run.config
    _, bundle_probs, labels = evaluate_split(bundle, synth_dir, split="val", calibrated=False)
    _, run_probs, run_labels = evaluate_split(run, synth_dir, split="val", calibrated=False)
    assert np.array_equal(labels, run_labels)
    assert np.abs(bundle_probs - run_probs).max() < PROB_TOLERANCE
    # The stored predictions are the int8 model's own, and the manifest says what int8 changed.
    stored = np.load(RunDir(published[approach]).predictions)
    assert np.allclose(stored["probs"], bundle_probs, atol=1e-5)
    manifest = bundles.read_manifest(published[approach])
    change = 100 * ((bundle_probs.argmax(1) == labels).mean() - (run_probs.argmax(1) == labels).mean())
    assert manifest["accuracy_change_points"] == pytest.approx(change, abs=1e-3)
    assert manifest["source_run"] == runs_with_results[approach].name


def test_publishing_refuses_weights_whose_int8_accuracy_moves_past_the_limit(
        runs_with_results: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Any change, even none, is past a negative limit: the gate runs on every publish.
    monkeypatch.setattr(bundles, "MAX_ACCURACY_CHANGE_POINTS", -1.0)
    out = tmp_path / "models"
    with pytest.raises(UserError, match="int8 weights change val accuracy by .* not published"):
        bundles.publish_run(runs_with_results["scratch"], out_dir=out, name="refused")
    assert not out.exists() or not any(out.iterdir())  # neither the bundle nor its staging folder


@pytest.mark.parametrize("approach", APPROACHES)
def test_bundle_holds_small_weights_config_metrics_and_a_model_card(approach: str, published: dict[str, Path]) -> None:
    folder = RunDir(published[approach])
    assert folder.is_bundle and not folder.best.exists() and not folder.last.exists()
    assert folder.model.stat().st_size / 1e6 <= bundles.MAX_WEIGHTS_MB
    raw = torch.load(folder.model, weights_only=True)
    assert raw["model"]["layer1.0.conv1.weight"].dtype == torch.int8
    for name in (RunDir.CONFIG, RunDir.METRICS, RunDir.PREDICTIONS, RunDir.EVALUATION, RunDir.CALIBRATION,
                 RunDir.CARD):
        assert (folder.path / name).is_file(), name
    card = (folder.path / RunDir.CARD).read_text()
    for words in ("## Data", "## Approach", "95% Wilson interval", "## Training", "Machine:", "int8"):
        assert words in card, words
    info = bundles.inspect_bundle(folder.path)
    assert info.published and info.damaged is None and info.state == "done"
    assert info.run_id == f"bundle:tiny-{approach}"


def test_quantize_roundtrip_is_within_half_a_step_per_channel() -> None:
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(8, 3, 3, 3) * torch.linspace(0.01, 2, 8)[:, None, None, None],
             "bn.running_mean": torch.randn(8), "bn.num_batches_tracked": torch.tensor(5)}
    tensors, scales = bundles.quantize_state(state)
    back = bundles.dequantize_state(tensors, scales)
    step = scales["conv.weight"].reshape(-1, 1, 1, 1)
    assert ((back["conv.weight"] - state["conv.weight"]).abs() <= step / 2 + 1e-7).all()
    assert torch.equal(back["bn.running_mean"], state["bn.running_mean"])
    assert back["bn.num_batches_tracked"].dtype == torch.int64


class _Exploit:
    """Unpickling this creates the marker file: what a hostile bundle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def rehash(bundle: Path) -> None:
    """Rewrite bundle.json over the bundle's current files: a hostile bundle whose hashes match."""
    manifest = json.loads((bundle / RunDir.MANIFEST).read_text())
    for name in manifest["files"]:
        path = bundle / name
        manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    (bundle / RunDir.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_a_bundle_holding_a_pickle_that_runs_code_is_refused_never_executed(
        writer: str, published: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = copy_bundle(published["scratch"], tmp_path)
    marker = tmp_path / "MARKER"
    payload = {"format": bundles.WEIGHTS_FORMAT, "version": 1, "model": _Exploit(marker), "scales": {},
               "config": {}, "classes": []}
    weights = bundle / RunDir.WEIGHTS
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    rehash(bundle)
    info = bundles.list_bundles(bundle.parent)[0]
    assert info.damaged and "weights_only" in info.damaged
    with pytest.raises(UserError, match="damaged"):
        Predictor(bundle)
    assert cli.main(["predict", str(bundle), str(tmp_path / "x.png")]) == 2
    assert "damaged" in capsys.readouterr().err
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated weights", "edited eval", "missing config", "bad manifest",
                                    "manifest names a path", "newer format"])
def test_damaged_bundles_are_listed_as_damaged(damage: str, published: dict[str, Path], tmp_path: Path) -> None:
    bundle = copy_bundle(published["frozen"], tmp_path)
    manifest_path = bundle / RunDir.MANIFEST
    if damage == "truncated weights":
        (bundle / RunDir.WEIGHTS).write_bytes((bundle / RunDir.WEIGHTS).read_bytes()[:1000])
    elif damage == "edited eval":
        (bundle / RunDir.EVALUATION).write_text('{"accuracy": 1.0, "n": 10}')
    elif damage == "missing config":
        (bundle / RunDir.CONFIG).unlink()
    elif damage == "bad manifest":
        manifest_path.write_text("{not json")
    elif damage == "manifest names a path":
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
        manifest_path.write_text(json.dumps(manifest))
    else:
        manifest = json.loads(manifest_path.read_text())
        manifest["format_version"] = 99
        manifest_path.write_text(json.dumps(manifest))
    listed = bundles.list_bundles(bundle.parent)
    assert len(listed) == 1 and listed[0].published and listed[0].damaged, listed
    with pytest.raises(UserError):
        Predictor(bundle)


def test_eval_and_predict_take_a_bundle(published: dict[str, Path], synth_dir: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bundle = published["scratch"]
    assert cli.main(["eval", str(bundle), "--data", str(synth_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    stored = json.loads((bundle / RunDir.EVALUATION).read_text())
    assert report["n"] == stored["n"] and report["accuracy"] == pytest.approx(stored["accuracy"])
    image = next((synth_dir / "train").rglob("*.png"))
    assert cli.main(["predict", str(bundle), str(image), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert answer["predictions"][0]["top"][0]["label"] in Predictor(bundle).classes


def test_runs_lists_published_and_damaged_bundles(published: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good = copy_bundle(published["scratch"], tmp_path)
    bad = copy_bundle(published["frozen"], tmp_path)
    (bad / RunDir.WEIGHTS).write_bytes(b"junk")
    empty_runs = tmp_path / "runs"
    assert cli.main(["runs", "--runs-dir", str(empty_runs), "--models-dir", str(good.parent), "--json"]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"]}
    assert rows[f"bundle:{good.name}"]["published"] is True and rows[f"bundle:{good.name}"]["damaged"] is None
    assert rows[f"bundle:{bad.name}"]["damaged"]


def test_publish_refuses_bad_input_and_keeps_what_is_stored(published: dict[str, Path],
                                                            runs_with_results: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = published["scratch"].parent
    before = {p.name: p.stat().st_mtime_ns for p in published["scratch"].iterdir()}
    run = str(runs_with_results["scratch"])
    assert cli.main(["publish", run, "--out", str(out), "--name", "tiny-scratch"]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    assert cli.main(["publish", run, "--out", str(out), "--name", "../escape"]) == 2
    assert cli.main(["publish", str(published["scratch"]), "--out", str(tmp_path)]) == 2  # a bundle, not a run
    assert cli.main(["publish", str(tmp_path), "--out", str(tmp_path / "m")]) == 2  # not a run at all
    capsys.readouterr()
    assert {p.name: p.stat().st_mtime_ns for p in published["scratch"].iterdir()} == before
    assert not (tmp_path / "escape").exists() and not (out.parent / "escape").exists()


def test_publish_refuses_a_run_that_is_not_finished(runs_with_results: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs_with_results["scratch"], run)
    RunDir(run).write_status(state="failed")
    with pytest.raises(UserError, match="not a finished run"):
        bundles.publish_run(run, out_dir=tmp_path / "models")


def test_publish_with_force_replaces_a_bundle_whole(runs_with_results: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models"
    run = str(runs_with_results["frozen"])
    with int8_gate_lifted():
        assert cli.main(["publish", run, "--out", str(out), "--name", "again", "--json"]) == 0
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert first["bundles"][0]["name"] == "again" and first["total_mb"] > 0
        assert cli.main(["publish", run, "--out", str(out), "--name", "again", "--force"]) == 0
    assert [p.name for p in out.iterdir()] == ["again"]  # no staging folder left behind
    assert bundles.inspect_bundle(out / "again").damaged is None


def test_a_bundles_backbone_trains_finetune(published: dict[str, Path], synth_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    from speedsign.config import resolve_config
    from speedsign.job import TrainRequest, train_run

    monkeypatch.setenv("SPEEDSIGN_MODELS", str(published["finetune"].parent))
    config = resolve_config(approach="finetune", overrides={"img_size": 16, "epochs": 1, "batch_size": 32,
                                                            "weights": "bundle:tiny-finetune"})
    outcome = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=tmp_path / "runs", device="cpu"))
    assert outcome.state == "done"
    stored = inspect_run(outcome.run_dir).config
    assert stored["config"]["weights"] == "bundle:tiny-finetune"
    assert stored["weights_fingerprint"].startswith("bundle:")
    with pytest.raises(UserError, match="no published model"):
        bundles.bundle_dir("not-there")
    with pytest.raises(UserError, match="not a bundle name"):
        bundles.bundle_dir("../../etc")
