"""Shared fixtures: tiny generated data, local weight files, tiny real runs of each approach.

Tests never download anything: pretrained backbones are local files (a random torchvision
ResNet18 saved to disk), data are rendered synthetic signs, and heavy cases use 16-32 px
images and one or two epochs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torchvision

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GTSRB_SPEED = SHARED / "data" / "gtsrb-speed32"
APPROACHES = ("finetune", "frozen", "scratch")

# Keep the two cores for the test itself; torch's default would oversubscribe under xdist.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets the session's private cache, never the user's ~/.cache/speedsign."""
    monkeypatch.setenv("SPEEDSIGN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _no_published_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty models folder, not the repository's shipped bundles: a test that wants those
    (tests/test_shipped.py) points SPEEDSIGN_MODELS at them itself."""
    empty = tmp_path_factory.getbasetemp() / "no-models"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("SPEEDSIGN_MODELS", str(empty))


@pytest.fixture(autouse=True)
def _owner_mode_with_test_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app in owner mode with the default quotas, whatever the shell sets, and pytest's temporary
    folders allowed as server paths (the tests type server folders and weights files there)."""
    for name in ("SPEEDSIGN_MODE", "SPEEDSIGN_PASSWORD", "SPEEDSIGN_MAX_JOBS", "SPEEDSIGN_SESSION_JOBS",
                 "SPEEDSIGN_DISK_BUDGET_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPEEDSIGN_ALLOWED_PATHS", str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic sign set (9 classes x 20 images, 32 px, tracks of 5 frames)."""
    from speedsign.synth import render_dataset

    out = tmp_path_factory.mktemp("data") / "synth"
    render_dataset(out, per_class=20, seed=0, size=32, frames_per_track=5)
    return out


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local torchvision-layout ResNet18 state dict: the offline stand-in for ImageNet weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-local.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def tiny_overrides(approach: str, weights: Path) -> dict[str, object]:
    """Settings that train in a second or two on CPU."""
    values: dict[str, object] = {"img_size": 16, "epochs": 2, "batch_size": 32}
    if approach != "scratch":
        values["weights"] = str(weights)
    return values


@pytest.fixture(scope="session")
def runs_with_results(tmp_path_factory: pytest.TempPathFactory, synth_dir: Path, weights_file: Path) -> dict[str, Path]:
    """One finished tiny run per approach in a shared runs folder: {approach: run_dir}."""
    from speedsign.config import resolve_config
    from speedsign.job import TrainRequest, train_run

    base = tmp_path_factory.getbasetemp()
    os.environ.setdefault("SPEEDSIGN_CACHE", str(base / "cache"))
    runs_dir = tmp_path_factory.mktemp("runs")
    result: dict[str, Path] = {}
    with training_in_process():
        for approach in APPROACHES:
            config = resolve_config(approach=approach, overrides=tiny_overrides(approach, weights_file))
            outcome = train_run(TrainRequest(config=config, data_dir=synth_dir, runs_dir=runs_dir, device="cpu"))
            assert outcome.state == "done", outcome
            result[approach] = outcome.run_dir
    return result


@pytest.fixture(scope="session")
def published_models(runs_with_results: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny run published into one models folder (bundles named tiny-<approach>): {approach: bundle}."""
    from speedsign.bundles import publish_run

    out = tmp_path_factory.mktemp("models")
    with int8_gate_lifted():
        return {approach: publish_run(run_dir, out_dir=out, name=f"tiny-{approach}").path
                for approach, run_dir in runs_with_results.items()}


@contextmanager
def int8_gate_lifted() -> Iterator[None]:
    """Publishing without the int8 accuracy gate, for the tiny runs only: they are near chance on
    45 val images, where int8 can flip a near-tie and one flip is 2.2 points (test_bundles tests
    the gate itself)."""
    from unittest import mock

    from speedsign import bundles

    with mock.patch.object(bundles, "MAX_ACCURACY_CHANGE_POINTS", 100.0):
        yield


@contextmanager
def training_in_process() -> Iterator[None]:
    """One torch thread (two threads on two shared cores thrash), and the SIGTERM/SIGINT
    handlers a job installs (its StopFlag) put back afterwards, so Ctrl-C still stops pytest."""
    threads = torch.get_num_threads()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process training with one torch thread, and the signal handlers a job installs put back afterwards."""
    with training_in_process():
        yield


@pytest.fixture
def gtsrb_speed() -> Path:
    if not GTSRB_SPEED.is_dir():
        pytest.skip("../shared/data/gtsrb-speed32 is not here (a user's machine)")
    return GTSRB_SPEED
