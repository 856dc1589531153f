"""Difference hashes, Hamming distances, and train/val near-duplicates on made-up and real data."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from speedsign import leaks
from speedsign.data import DatasetIndex, scan_dataset
from speedsign.leaks import find_leaks, hamming_distances, nearest_hashes, perceptual_hashes, popcount


def split_by_image(index: DatasetIndex, *, seed: int = 0) -> DatasetIndex:
    """The same train+val images split at random per image (the tutorial's split), val the same size."""
    samples = index.samples("train") + index.samples("val")
    n_val = len(index.samples("val"))
    order = np.random.default_rng(seed).permutation(len(samples))
    val = tuple(samples[i] for i in sorted(order[:n_val]))
    train = tuple(samples[i] for i in sorted(order[n_val:]))
    return dataclasses.replace(index, splits={**index.splits, "train": train, "val": val})



def noise_image(seed: int, size: int = 32) -> np.ndarray:
    """Smooth random blobs in 40-200: structure for the hash, headroom for brightening."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, size=(8, 8, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR))


def save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def leaky_dir(tmp_path: Path) -> Path:
    """train/ and val/ given; val holds an exact copy, a brightened copy, a copy filed under the
    other class, and unrelated images."""
    root = tmp_path / "leaky"
    for i in range(6):
        save(noise_image(i), root / "train" / "a" / f"a{i}.png")
        save(noise_image(100 + i), root / "train" / "b" / f"b{i}.png")
    save(noise_image(0), root / "val" / "a" / "copy_of_a0.png")
    brighter = ImageEnhance.Brightness(Image.fromarray(noise_image(3))).enhance(1.15)
    save(np.asarray(brighter), root / "val" / "a" / "brighter_a3.png")
    save(noise_image(101), root / "val" / "a" / "b1_filed_as_a.png")
    for i in range(4):
        save(noise_image(1000 + i), root / "val" / "a" / f"new_a{i}.png")
        save(noise_image(2000 + i), root / "val" / "b" / f"new_b{i}.png")
    return root


# ---------------------------------------------------------------- hashes

def test_hash_bits_follow_horizontal_gradients():
    ramp = torch.linspace(255, 0, 32).round().to(torch.uint8)
    falling = ramp.view(1, 1, 1, 32).expand(1, 3, 32, 32)  # every left pixel brighter
    rising = falling.flip(-1)
    flat = torch.full((1, 3, 32, 32), 90, dtype=torch.uint8)
    hashes = perceptual_hashes(torch.cat([falling, rising, flat]))
    assert hashes.dtype == np.uint64 and hashes.shape == (3,)
    assert hashes.tolist() == [2**64 - 1, 0, 0]


def test_hash_is_stable_under_brightness_and_differs_between_images():
    images = torch.stack([torch.from_numpy(noise_image(s)).permute(2, 0, 1) for s in range(20)])
    brighter = (images.int() + 30).clamp(max=255).to(torch.uint8)
    same = hamming_distances(perceptual_hashes(images), perceptual_hashes(brighter))
    assert np.diag(same).max() <= 2
    assert np.median(same[~np.eye(20, dtype=bool)]) > 20  # unrelated images: about half the bits


def test_hash_rejects_wrong_shapes_and_handles_empty():
    with pytest.raises(ValueError, match="N, 3, S, S"):
        perceptual_hashes(torch.zeros((3, 32, 32), dtype=torch.uint8))
    assert perceptual_hashes(torch.zeros((0, 3, 32, 32), dtype=torch.uint8)).shape == (0,)


# ---------------------------------------------------------------- distances

def test_hamming_distances_known_values():
    a = np.array([0, 2**64 - 1, 0b1011], dtype=np.uint64)
    b = np.array([0, 0b1], dtype=np.uint64)
    table = hamming_distances(a, b)
    assert table.dtype == np.uint8 and table.shape == (3, 2)
    assert table.tolist() == [[0, 1], [64, 63], [3, 2]]
    assert hamming_distances(np.array([], dtype=np.uint64), b).shape == (0, 2)


def test_hamming_distances_match_python_popcount_and_chunking(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**63, 57, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 57, dtype=np.uint64)
    b = rng.integers(0, 2**63, 31, dtype=np.uint64) * np.uint64(2)
    expected = np.array([[bin(int(x) ^ int(y)).count("1") for y in b] for x in a])
    np.testing.assert_array_equal(hamming_distances(a, b), expected)
    monkeypatch.setattr(leaks, "CHUNK_CELLS", 100)  # several row chunks
    np.testing.assert_array_equal(hamming_distances(a, b), expected)
    index, distance = nearest_hashes(a, b)
    np.testing.assert_array_equal(index, expected.argmin(axis=1))
    np.testing.assert_array_equal(distance, expected.min(axis=1))


def test_popcount_without_numpy_bitwise_count(monkeypatch):
    values = np.array([[0, 1, 2**64 - 1], [0b1010, 2**63, 12345678901234]], dtype=np.uint64)
    expected = [[bin(int(v)).count("1") for v in row] for row in values]
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # numpy < 2.0
    assert popcount(values).tolist() == expected


def test_distances_ten_thousand_by_three_thousand_are_vectorised_in_bounded_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, 10_000, dtype=np.uint64)
    b = rng.integers(0, 2**63, 3_000, dtype=np.uint64)
    chunks: list[tuple[int, ...]] = []

    def counting_popcount(values: np.ndarray) -> np.ndarray:
        chunks.append(values.shape)
        return popcount(values)

    monkeypatch.setattr(leaks, "popcount", counting_popcount)
    table = hamming_distances(a, b)
    index, distance = nearest_hashes(a, b)
    assert table.nbytes == 30_000_000  # one byte per pair
    # Whole blocks of rows at once, never a Python loop over rows or pairs: 16 numpy calls per
    # function for 30 million pairs, each within the CHUNK_CELLS bound on the xor temporaries.
    rows_per_chunk = leaks.CHUNK_CELLS // b.size
    assert len(chunks) == 2 * -(-a.size // rows_per_chunk) == 32
    assert all(cols == b.size and rows * cols <= leaks.CHUNK_CELLS for rows, cols in chunks)
    # And the numbers are right: spot checks against Python's popcount, and the nearest agrees.
    for i, j in zip(rng.integers(0, a.size, 200), rng.integers(0, b.size, 200), strict=True):
        assert table[i, j] == bin(int(a[i]) ^ int(b[j])).count("1")
    np.testing.assert_array_equal(index, table.argmin(axis=1))
    np.testing.assert_array_equal(distance, table.min(axis=1))


@pytest.mark.slow
def test_distances_ten_thousand_by_three_thousand_are_fast():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, 10_000, dtype=np.uint64)
    b = rng.integers(0, 2**63, 3_000, dtype=np.uint64)
    started = time.perf_counter()
    hamming_distances(a, b)
    nearest_hashes(a, b)
    assert time.perf_counter() - started < 5.0  # under 0.1 s on two cores; the docs promise "a second"


# ---------------------------------------------------------------- find_leaks

def test_find_leaks_finds_copies_and_not_unrelated(leaky_dir):
    frame = find_leaks(scan_dataset(leaky_dir), max_distance=4)
    assert list(frame.columns[:3]) == ["train_file", "val_file", "distance"]
    found = dict(zip(frame["val_file"], zip(frame["train_file"], frame["distance"], strict=True), strict=True))
    assert found["val/a/copy_of_a0.png"] == ("train/a/a0.png", 0)
    assert found["val/a/brighter_a3.png"][0] == "train/a/a3.png"
    assert found["val/a/brighter_a3.png"][1] <= 4
    assert not any("new_" in name for name in found)
    # A copy filed under another class is no leak of the answer by default...
    assert "val/a/b1_filed_as_a.png" not in found
    assert frame["distance"].is_monotonic_increasing
    assert frame.attrs == {"total": 2, "n_val": 11}


def test_find_leaks_across_classes_and_limit(leaky_dir):
    index = scan_dataset(leaky_dir)
    frame = find_leaks(index, same_class=False)
    row = frame.set_index("val_file").loc["val/a/b1_filed_as_a.png"]
    assert row["train_file"] == "train/b/b1.png" and row["distance"] == 0 and not row["same_class"]
    assert frame.attrs["total"] == 3
    limited = find_leaks(index, same_class=False, limit=1)
    assert len(limited) == 1 and limited.attrs["total"] == 3 and limited["distance"].iloc[0] == 0
    assert len(find_leaks(index, max_distance=0)) == 1 + int(
        frame.set_index("val_file").loc["val/a/brighter_a3.png", "distance"] == 0)


def test_find_leaks_arguments(leaky_dir):
    index = scan_dataset(leaky_dir)
    with pytest.raises(ValueError, match="max_distance"):
        find_leaks(index, max_distance=65)
    with pytest.raises(ValueError, match="limit"):
        find_leaks(index, limit=-1)


def test_split_by_image_keeps_the_images_and_val_size(leaky_dir):
    index = scan_dataset(leaky_dir)
    mixed = split_by_image(index, seed=3)
    before = {s.path for s in index.samples("train") + index.samples("val")}
    after = {s.path for s in mixed.samples("train") + mixed.samples("val")}
    assert before == after and len(mixed.samples("val")) == len(index.samples("val"))
    assert mixed.fingerprint == index.fingerprint
    assert split_by_image(index, seed=3) == mixed


def test_gtsrb_track_split_leaks_far_less_than_a_per_image_split(gtsrb_speed):
    index = scan_dataset(gtsrb_speed)
    per_image = split_by_image(index, seed=0)
    counts = {}
    for distance in (2, 4):
        counts[distance] = (find_leaks(index, max_distance=distance).attrs["total"],
                            find_leaks(per_image, max_distance=distance).attrs["total"])
    n_val = len(index.samples("val"))
    for distance, (track, image) in counts.items():
        print(f"\nval images with a same-class train near-duplicate (dHash <= {distance} bits) of {n_val}: "
              f"track split {track}, per-image split {image} ({image / max(track, 1):.1f}x)")
    assert counts[2][1] >= 3 * counts[2][0]
    assert counts[4][1] >= 1.5 * counts[4][0]
