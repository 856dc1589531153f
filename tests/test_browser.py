"""Real-browser tests: the app under `streamlit run`, driven by headless Chromium.

Debian's /usr/bin/chromium, driven by Playwright's Python package (its own browser download
is not used). The server gets the three finished tiny runs of `runs_with_results` and the
synthetic set they trained on. Without Chromium or Playwright these tests skip, unless
SPEEDSIGN_REQUIRE_BROWSER=1 (as in .ci/run).

Screenshots of every page go to tmp_path, or to $SPEEDSIGN_SCREENSHOTS (the README's
docs/screenshots). For the README's pictures, point the app at real runs and data:

    SPEEDSIGN_SCREENSHOTS=docs/screenshots SPEEDSIGN_SCREENSHOT_RUNS=/work/runs-real \
    SPEEDSIGN_SCREENSHOT_DATA=../shared/data/gtsrb-speed32 SPEEDSIGN_SCREENSHOT_MODELS=models \
    python -m pytest -q tests/test_browser.py -k screenshots
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    assert_clean,
    explain_failure,
    open_page,
    screenshot,
    streamlit_server,
    sync_playwright,
    wait_for_charts,
    wait_idle,
)

# (file name, URL path, a heading the page shows)
PAGES = (("home", "", "Speed-limit signs, three ways"), ("dataset", "dataset", "Dataset"),
         ("train", "train", "Train"), ("curves", "curves", "Learning curves"),
         ("evaluation", "evaluation", "Evaluation"), ("classify", "classify", "Classify"),
         ("compare", "compare", "Compare runs"))
SCREENSHOTS_ENV = "SPEEDSIGN_SCREENSHOTS"  # a folder: keep the screenshots there (docs/screenshots)
SCREENSHOT_RUNS_ENV = "SPEEDSIGN_SCREENSHOT_RUNS"  # a runs folder for the screenshots instead of the tiny runs
SCREENSHOT_DATA_ENV = "SPEEDSIGN_SCREENSHOT_DATA"  # a data set folder for them instead of the synthetic set
SCREENSHOT_MODELS_ENV = "SPEEDSIGN_SCREENSHOT_MODELS"  # a models folder (published models) for them, e.g. models
WAIT_MS = 60_000
PERCENT = re.compile(r"\d+%")


# Checked before any other fixture (the tiny runs take a while to train): skip or fail at once.
pytestmark = pytest.mark.usefixtures("browser_available")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def browser_available() -> Any:
    """Playwright's sync entry point; skips (fails under SPEEDSIGN_REQUIRE_BROWSER=1) without
    Playwright or Chromium."""
    return sync_playwright()


@pytest.fixture(scope="module")
def browser(browser_available: Any) -> Iterator[Any]:
    with browser_available() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def data_root_with(tmp: Path, dataset: Path) -> Path:
    """A data root holding `dataset` (a link: same files, so the same fingerprint as its runs)."""
    root = tmp / "data"
    root.mkdir()
    (root / dataset.name).symlink_to(dataset.resolve(), target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, browser: Any, runs_with_results: dict[str, Path],
        synth_dir: Path) -> Iterator[str]:
    """The app on the tiny finished runs and the synthetic set; its URL."""
    tmp = tmp_path_factory.mktemp("browser-app")
    runs = next(iter(runs_with_results.values())).parent
    with streamlit_server(runs=runs, data=data_root_with(tmp, synth_dir), cache=tmp / "cache",
                          log=tmp / "streamlit.log") as url:
        yield url


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=VIEWPORT, permissions=["camera"])
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    try:
        yield tab
    finally:
        context.close()


def a_sign(dataset: Path) -> Path:
    """A 50 km/h sign of the data set (any image when it has no speed_50 class)."""
    for split in ("val", "train", "test", "."):
        folder = dataset / split / "speed_50"
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file())
            if files:
                return files[0]
    return next(p for p in sorted(dataset.rglob("*")) if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".ppm"})


# ---------------------------------------------------------------- helpers

def answer_cards(page: Any) -> Any:
    """The innermost columns holding one model's answer (every card ends with what its model was
    trained on, whether the model is sure or not)."""
    return page.locator('[data-testid="stColumn"]').filter(
        has=page.locator('[data-testid="stCaptionContainer"]', has_text="Trained on")).filter(
        has_not=page.locator('[data-testid="stColumn"]'))


def card_label(card: Any) -> str:
    """A card's predicted class: the large "Prediction" metric when its model is sure, else the
    best guess in plain type."""
    metric = card.locator('[data-testid="stMetricValue"]')
    if metric.count():
        return metric.inner_text().strip()
    guess = card.get_by_text(re.compile(r"^Best guess: ")).inner_text().strip()
    return re.fullmatch(r"Best guess: (.+) \(\d+%\)", guess).group(1)


def wait_for_answers(page: Any, count: int) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
        ".filter(c => c.innerText.includes('Trained on')).length >= n", arg=count, timeout=WAIT_MS)
    wait_idle(page, timeout_ms=WAIT_MS)
    wait_for_charts(page)


def assert_every_model_answers(page: Any, runs: dict[str, Path], classes: set[str]) -> None:
    """One card per run: its approach, its run id, a predicted class, top-k bars with percentages."""
    cards = answer_cards(page)
    assert cards.count() == len(runs), [cards.nth(i).inner_text() for i in range(cards.count())]
    texts = [cards.nth(i).inner_text() for i in range(cards.count())]
    for approach, run_dir in runs.items():
        matching = [i for i, text in enumerate(texts) if run_dir.name in text]
        assert len(matching) == 1, (run_dir.name, texts)
        card = cards.nth(matching[0])
        assert card.locator("strong", has_text=approach).count() >= 1, texts[matching[0]]
        label = card_label(card)
        assert label in classes, (approach, label)
        bars = card.locator('[data-testid="stPlotlyChart"] .bartext, [data-testid="stPlotlyChart"] text.bartext')
        percentages = [bars.nth(i).text_content() or "" for i in range(bars.count())]
        assert any(PERCENT.fullmatch(p.strip()) for p in percentages), (approach, percentages)
        assert re.search(r"\d+\.\d ms", texts[matching[0]]), texts[matching[0]]


def upload(page: Any, image: Path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(image))


def synth_classes(synth_dir: Path) -> set[str]:
    return {p.name for p in (synth_dir / "train").iterdir() if p.is_dir()}


# ---------------------------------------------------------------- tests

def test_classify_upload_every_model_answers(app: str, page: Any, runs_with_results: dict[str, Path],
                                             synth_dir: Path, tmp_path: Path) -> None:
    with explain_failure(page, tmp_path):
        open_page(page, f"{app}/classify")
        assert_clean(page, "classify")
        page.get_by_text("Upload or take a photo").wait_for()
        upload(page, a_sign(synth_dir))
        wait_for_answers(page, len(runs_with_results))
        assert_clean(page, "classify after the upload")
        assert_every_model_answers(page, runs_with_results, synth_classes(synth_dir))


def test_classify_webcam_photo_every_model_answers(app: str, page: Any, runs_with_results: dict[str, Path],
                                                   synth_dir: Path, tmp_path: Path) -> None:
    with explain_failure(page, tmp_path):
        open_page(page, f"{app}/classify")
        page.get_by_text("Use the webcam", exact=True).click()
        camera = page.locator('[data-testid="stCameraInput"]')
        camera.wait_for()
        wait_idle(page)
        # Chromium's fake device streams a test pattern. The button is enabled once the camera
        # is granted, but a click takes nothing until the video has a frame (videoHeight > 0).
        page.wait_for_function(
            "() => { const c = document.querySelector('[data-testid=\"stCameraInput\"]');"
            " const b = c && [...c.querySelectorAll('button')].find(b => b.innerText.includes('Take Photo'));"
            " const v = c && c.querySelector('video');"
            " return b && !b.disabled && v && v.readyState >= 2 && v.videoHeight > 0; }", timeout=WAIT_MS)
        camera.get_by_role("button", name="Take Photo").click()
        wait_for_answers(page, len(runs_with_results))
        assert_clean(page, "classify after the photo")
        assert_every_model_answers(page, runs_with_results, synth_classes(synth_dir))
        # The photo is what the models saw: the framed picture is there.
        assert page.get_by_text("What the models see").count() == 1


@pytest.fixture(scope="module")
def screenshot_app(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   browser: Any) -> Iterator[tuple[str, Path]]:
    """The app to photograph and its data set: the test app, or one on real runs and data
    ($SPEEDSIGN_SCREENSHOT_RUNS, $SPEEDSIGN_SCREENSHOT_DATA; the tiny runs are trained only
    when one of them is missing)."""
    runs_env, data_env = os.environ.get(SCREENSHOT_RUNS_ENV), os.environ.get(SCREENSHOT_DATA_ENV)
    if not runs_env and not data_env:
        yield request.getfixturevalue("app"), request.getfixturevalue("synth_dir")
        return
    tmp = tmp_path_factory.mktemp("browser-shots-app")
    dataset = Path(data_env).resolve() if data_env else request.getfixturevalue("synth_dir")
    runs = (Path(runs_env).resolve() if runs_env
            else next(iter(request.getfixturevalue("runs_with_results").values())).parent)
    for name, path in ((SCREENSHOT_DATA_ENV, dataset), (SCREENSHOT_RUNS_ENV, runs)):
        if not path.is_dir():
            pytest.fail(f"{name}: {path} is not a folder")
    models = os.environ.get(SCREENSHOT_MODELS_ENV)
    with streamlit_server(runs=runs, data=data_root_with(tmp, dataset), cache=tmp / "cache",
                          log=tmp / "streamlit.log", start_s=120, one_thread=False,
                          models=Path(models).resolve() if models else None) as url:
        yield url, dataset


def test_screenshots_of_every_page(screenshot_app: tuple[str, Path], page: Any, tmp_path: Path) -> None:
    url, dataset = screenshot_app
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    with explain_failure(page, tmp_path):
        for name, path, heading in PAGES:
            open_page(page, f"{url}/{path}", timeout_ms=120_000)
            page.get_by_role("heading", name=heading).first.wait_for()
            if name == "classify":
                if page.get_by_text("No finished model yet").count():
                    pytest.fail("the Classify screenshot needs a finished run in the runs folder")
                upload(page, a_sign(dataset))
                wait_for_answers(page, 1)
            wait_idle(page, timeout_ms=120_000)
            wait_for_charts(page)
            assert_clean(page, name)
            shot = screenshot(page, folder / f"{name}.png")
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, (name, len(data))


def test_the_study_report_opens_offline_in_the_browser(page: Any, runs_with_results: dict[str, Path],
                                                       tmp_path: Path) -> None:
    """The downloaded HTML shows its charts with every request to the network refused."""
    from speedsign.runs import inspect_run
    from speedsign.study import build_study, load_study
    from speedsign.study_report import write_report

    report = tmp_path / "study.html"
    study = load_study([inspect_run(runs_with_results[a]) for a in ("finetune", "frozen", "scratch")])
    write_report(build_study(study, n_boot=500), report)
    asked: list[str] = []

    def refuse(route: Any) -> None:
        asked.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(https?|wss?)://"), refuse)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report.as_uri())
    page.get_by_role("heading", name="Conclusion").wait_for()
    page.locator(".js-plotly-plot .main-svg").first.wait_for()
    assert page.locator(".js-plotly-plot").count() >= 4
    shot = screenshot(page, tmp_path / "study.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert asked == [] and errors == []
