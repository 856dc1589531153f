"""The bundles the repository ships in models/ (speedsign.shipped): whole, small, documented, and
what a fresh clone shows on Home with no runs at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speedsign import bundles, shipped
from speedsign.config import APPROACHES
from speedsign.predict import Predictor, evaluate_split
from speedsign.runs import RunDir

from app_support import fresh_app_env, plain, start

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def shipped_models(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SPEEDSIGN_MODELS", str(MODELS))
    return MODELS


def test_the_three_approaches_ship_verified_and_within_the_size_limits(shipped_models: Path) -> None:
    listed = {info.run_id: info for info in bundles.list_bundles(shipped_models)}
    names = [f"bundle:{shipped.bundle_name(approach)}" for approach in APPROACHES]
    assert sorted(listed) == sorted(names)
    for name in names:
        info = listed[name]
        assert info.damaged is None and info.state == "done" and info.published
        assert RunDir(info.run_dir).model.stat().st_size / 1e6 <= bundles.MAX_WEIGHTS_MB
        manifest = bundles.read_manifest(info.run_dir)
        assert abs(manifest["accuracy_change_points"]) <= bundles.MAX_ACCURACY_CHANGE_POINTS
        assert manifest["data"]["name"] == shipped.TARGET_DATA and manifest["data"]["synthetic"] is False
    total = sum(path.stat().st_size for path in shipped_models.rglob("*") if path.is_file()) / 1e6
    assert total <= shipped.MAX_TOTAL_MB


def test_each_model_card_names_the_data_and_its_terms(shipped_models: Path) -> None:
    for approach in APPROACHES:
        card = (shipped_models / shipped.bundle_name(approach) / RunDir.CARD).read_text()
        assert "GTSRB" in card and "Stallkamp" in card and "research and teaching" in card
        assert "95% Wilson interval" in card and "Machine:" in card
        if approach != "scratch":
            assert shipped.SOURCE_DATA in card  # the backbone's data


def test_a_fresh_clone_shows_the_three_way_comparison_on_home_with_no_runs(
        shipped_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = fresh_app_env(tmp_path, monkeypatch)
    at = start()
    assert not at.exception
    assert list(env["runs"].iterdir()) == []
    headers = [plain(h.value) for h in at.subheader]
    assert any(h.startswith(f"Published models, trained on {shipped.TARGET_DATA}") for h in headers), headers
    tables = [frame.value for frame in at.dataframe]
    compared = next(t for t in tables if "approach" in t.columns and len(t) == 3)
    assert sorted(compared["approach"]) == sorted(APPROACHES)
    # One sentence on who wins, written from the published models' numbers.
    assert any("val accuracy" in plain(m.value) and ("wins" in plain(m.value) or "leads" in plain(m.value)
                                                     or "equally" in plain(m.value)) for m in at.markdown)


def test_shipped_models_answer_a_real_photo_and_their_stored_scores_hold(shipped_models: Path,
                                                                       gtsrb_speed: Path) -> None:
    photo = next(iter(sorted((gtsrb_speed / "train" / "speed_50").iterdir())))
    for approach in APPROACHES:
        bundle = shipped_models / shipped.bundle_name(approach)
        predictor = Predictor(bundle)
        assert predictor.predict(photo).label in predictor.classes
        if approach == "finetune":  # the same torchvision network as frozen: 10 s saved
            continue
        report, _, _ = evaluate_split(predictor, gtsrb_speed, split="val")
        stored = json.loads((bundle / RunDir.EVALUATION).read_text())
        assert report["n"] == stored["n"] and report["accuracy"] == pytest.approx(stored["accuracy"], abs=1e-9)
