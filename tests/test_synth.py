"""Tests for the synthetic sign renderer: layout, reproducibility, atomicity, refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from speedsign import synth
from speedsign.errors import UserError

NAME = re.compile(r"^(\d{5})_(\d{5})\.png$")


def render_one(class_name: str, *, rng: np.random.Generator, size: int = 64):
    """One image of one sign: a track of a single frame."""
    return synth.render_track(class_name, rng=rng, size=size, n_frames=1)[0]



def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def test_class_names_are_the_gtsrb_subset() -> None:
    assert synth.CLASS_NAMES == (
        "speed_20", "speed_30", "speed_50", "speed_60", "speed_70",
        "speed_80", "end_speed_80", "speed_100", "speed_120",
    )


@pytest.mark.parametrize("class_name", synth.CLASS_NAMES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_sign_size_and_mode(class_name: str, size: int) -> None:
    image = render_one(class_name, rng=np.random.default_rng(0), size=size)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_render_sign_is_seeded() -> None:
    a = render_one("speed_30", rng=np.random.default_rng(7))
    b = render_one("speed_30", rng=np.random.default_rng(7))
    c = render_one("speed_30", rng=np.random.default_rng(8))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_render_sign_refuses_unknown_class() -> None:
    with pytest.raises(UserError, match="unknown class"):
        render_one("speed_90", rng=np.random.default_rng(0))


def test_track_frames_grow() -> None:
    style = synth.pick_track_style(np.random.default_rng(3))
    rngs = [np.random.default_rng(k) for k in range(5)]
    zooms = [synth.pick_frame_style(r, style, k=k, n_frames=5).zoom for k, r in enumerate(rngs)]
    assert zooms == sorted(zooms) and zooms[-1] == pytest.approx(1.0)


def test_layout_names_and_counts(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    calls: list[tuple[int, int]] = []
    report = synth.render_dataset(out, per_class=7, seed=1, size=32, frames_per_track=3,
                                  progress=lambda done, total: calls.append((done, total)))
    assert report.out == out and report.n_images == 7 * 9 and report.per_class == 7
    assert report.seed == 1 and report.seconds >= 0
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(synth.CLASS_NAMES)
    for class_name in synth.CLASS_NAMES:
        names = sorted(p.name for p in (out / "train" / class_name).iterdir())
        matches = [NAME.match(n) for n in names]
        assert all(matches)
        tracks = [(int(m.group(1)), int(m.group(2))) for m in matches]  # type: ignore[union-attr]
        # 7 images, 3 frames per track: tracks 0 and 1 full, track 2 has one frame.
        assert tracks == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    with Image.open(out / "train" / "speed_50" / "00001_00002.png") as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    info = json.loads((out / "synth.json").read_text())
    assert info["seed"] == 1 and info["per_class"] == 7 and info["size"] == 32
    assert info["classes"] == list(synth.CLASS_NAMES)
    assert "seed=1" in (out / "README.txt").read_text()
    assert calls[-1] == (63, 63)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert not list(tmp_path.glob(".synth.tmp-*"))


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    kwargs = dict(per_class=4, size=24, frames_per_track=2)
    a = read_tree(synth.render_dataset(tmp_path / "a", seed=5, **kwargs).out)
    b = read_tree(synth.render_dataset(tmp_path / "b", seed=5, **kwargs).out)
    c = read_tree(synth.render_dataset(tmp_path / "c", seed=6, **kwargs).out)
    assert a == b
    assert a.keys() == c.keys()
    pngs = [k for k in a if k.endswith(".png")]
    assert all(a[k] != c[k] for k in pngs)


def test_output_does_not_depend_on_per_class(tmp_path: Path) -> None:
    # One generator per (seed, class, track): a bigger set extends a smaller one.
    kwargs = dict(size=16, frames_per_track=2)
    small = read_tree(synth.render_dataset(tmp_path / "s", per_class=2, **kwargs).out)
    big = read_tree(synth.render_dataset(tmp_path / "b", per_class=4, **kwargs).out)
    assert all(big[k] == v for k, v in small.items() if k.endswith(".png"))


def test_failure_mid_render_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synth.render_track
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "render_track", flaky)
    out = tmp_path / "synth"
    with pytest.raises(RuntimeError, match="boom"):
        synth.render_dataset(out, per_class=4, size=16, frames_per_track=2)
    assert list(tmp_path.iterdir()) == []


def test_failure_with_overwrite_keeps_old_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("old")

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "render_track", broken)
    with pytest.raises(KeyboardInterrupt):
        synth.render_dataset(out, per_class=1, size=16, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]
    assert (out / "keep.txt").read_text() == "old"


def test_refuses_non_empty_out_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "something.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synth.render_dataset(out, per_class=1, size=16)
    assert (out / "something.txt").read_text() == "mine"
    synth.render_dataset(out, per_class=1, size=16, overwrite=True)
    assert not (out / "something.txt").exists()
    assert len(list((out / "train").rglob("*.png"))) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_empty_out_folder_is_fine(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    synth.render_dataset(out, per_class=1, size=16)
    assert len(list((out / "train").rglob("*.png"))) == 9


def test_refuses_a_file_as_out(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        synth.render_dataset(out, per_class=1, size=16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_class": 0}, {"per_class": -3}, {"per_class": 100_001}, {"per_class": 2.5},
        {"per_class": True}, {"seed": -1}, {"size": 15}, {"size": 513}, {"size": "64"}, {"frames_per_track": 0},
    ],
)
def test_bad_args_are_user_errors(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UserError):
        synth.render_dataset(tmp_path / "synth", **{"per_class": 1, "size": 16, **kwargs})
    assert list(tmp_path.iterdir()) == []
