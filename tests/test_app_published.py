"""AppTest: published models (models/, read-only) on the viewing pages of an app with no runs,
and damaged bundles listed as damaged."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from speedsign.runs import RunDir

from app_support import answers, fresh_app_env, plain, start, texts
from conftest import APPROACHES


@pytest.fixture
def published_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, published_models: dict[str, Path],
                  synth_dir: Path) -> dict[str, Path]:
    """An app with an empty runs folder, the session's synthetic set, and the tiny bundles."""
    env = fresh_app_env(tmp_path, monkeypatch)
    (env["data"] / "synth").symlink_to(synth_dir, target_is_directory=True)
    models = tmp_path / "models"
    shutil.copytree(published_models["scratch"].parent, models)
    monkeypatch.setenv("SPEEDSIGN_MODELS", str(models))
    return {**env, "models": models}


def sign_png(synth_dir: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(sorted((synth_dir / "train" / "speed_50").iterdir())[0]).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_home_compares_the_published_models(published_app: dict[str, Path]) -> None:
    at = start()
    assert not at.exception
    assert any(plain(h.value).startswith("Published models, trained on") for h in at.subheader)
    table = next(frame.value for frame in at.dataframe if "approach" in frame.value.columns)
    assert sorted(table["approach"]) == sorted(APPROACHES)
    assert all(str(run).startswith("bundle:") for run in table["run"])


def test_classify_answers_with_every_published_model_marked_published(published_app: dict[str, Path],
                                                                      synth_dir: Path) -> None:
    at = start("classify")
    at.file_uploader(key="classify-upload").set_value(("sign.png", sign_png(synth_dir), "image/png")).run()
    assert not at.exception and not at.error, texts(at, "error")
    assert len(answers(at)) == 3
    assert sum("published model" in text for text in texts(at, "caption")) == 3


def test_curves_draw_the_published_models_unasked(published_app: dict[str, Path]) -> None:
    at = start("curves")
    assert not at.exception
    chosen = at.multiselect(key="curve-runs").value
    assert sorted(chosen) == sorted(f"bundle:tiny-{a}" for a in APPROACHES)
    assert at.get("plotly_chart")


def test_evaluation_shows_a_published_model(published_app: dict[str, Path]) -> None:
    at = start("evaluation")
    assert not at.exception
    assert at.selectbox(key="eval-run").value.startswith("bundle:")
    assert "published" in plain(at.selectbox(key="eval-run").format_func(at.selectbox(key="eval-run").value))
    assert at.get("plotly_chart")  # the confusion matrix and reliability diagram


def test_a_damaged_bundle_is_listed_as_damaged_and_left_out(published_app: dict[str, Path],
                                                             synth_dir: Path) -> None:
    (published_app["models"] / "tiny-frozen" / RunDir.WEIGHTS).write_bytes(b"not a model")
    at = start("classify")
    assert not at.exception
    assert any("damaged" in plain(e.label) for e in at.expander)
    at.file_uploader(key="classify-upload").set_value(("sign.png", sign_png(synth_dir), "image/png")).run()
    assert not at.exception
    assert len(answers(at)) == 2
