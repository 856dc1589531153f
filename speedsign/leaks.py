"""Near-duplicates shared by train and val: the leak that inflates val accuracy.

GTSRB holds 30 frames of each physical sign (a track). Split by image, frames of one sign
land on both sides and val accuracy measures memory, not generalisation; split by track,
few should remain. A 64-bit difference hash (dHash) per image and Hamming distances between
hashes find them in a second for ten thousand images.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from speedsign.data import DatasetIndex, load_split_tensors

HASH_WIDTH, HASH_HEIGHT = 9, 8  # 8 comparisons per row x 8 rows = 64 bits
# ITU-R BT.601 luma, as Pillow's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)
# Rows of the (a x b) distance table computed at once: bounds the xor temporaries to
# about 8 bytes x rows x len(b) (16 MB for 3,000 columns).
CHUNK_CELLS = 2_000_000
HASH_BATCH = 4096

LEAK_COLUMNS = ("train_file", "val_file", "distance")


def perceptual_hashes(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, S, S) -> uint64 (N,) difference hashes (Krawetz's dHash).

    Grey, area-resized to 9x8, one bit per horizontal neighbour pair (left brighter than
    right). Brightness and contrast changes keep the bits; a different sign changes many.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, S, S); got shape {tuple(images.shape)}")
    hashes = np.zeros(images.shape[0], dtype=np.uint64)
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)
    for start in range(0, images.shape[0], HASH_BATCH):
        grey = (images[start:start + HASH_BATCH].cpu().float() * weights).sum(dim=1, keepdim=True)
        small = F.interpolate(grey, size=(HASH_HEIGHT, HASH_WIDTH), mode="area")[:, 0]
        bits = (small[:, :, :-1] > small[:, :, 1:]).reshape(small.shape[0], 64).numpy()
        # packbits puts the first bit highest; eight bytes read big-endian are one uint64.
        packed = np.packbits(bits, axis=1)
        hashes[start:start + len(packed)] = packed.view(">u8").ravel()
    return hashes


def hamming_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between every hash of `a` and every hash of `b`: uint8 (len(a), len(b))."""
    a, b = _as_hashes(a), _as_hashes(b)
    out = np.empty((a.size, b.size), dtype=np.uint8)
    for rows in _row_chunks(a.size, b.size):
        out[rows] = popcount(a[rows, None] ^ b[None, :])
    return out


def nearest_hashes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every hash of `a`: the index of its nearest hash in `b` and their distance.

    The same numbers as `hamming_distances(a, b).argmin(1)`, without holding the whole table.
    Ties go to the lowest index of `b`.
    """
    a, b = _as_hashes(a), _as_hashes(b)
    if b.size == 0:
        raise ValueError("nearest_hashes needs at least one hash to compare against")
    index = np.empty(a.size, dtype=np.int64)
    distance = np.empty(a.size, dtype=np.uint8)
    for rows in _row_chunks(a.size, b.size):
        table = popcount(a[rows, None] ^ b[None, :])
        index[rows] = table.argmin(axis=1)
        distance[rows] = np.take_along_axis(table, index[rows, None], axis=1)[:, 0]
    return index, distance


def popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, as uint8."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one instruction per element
        return np.bitwise_count(values).astype(np.uint8, copy=False)
    as_bytes = values[..., None].view(np.uint8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def find_leaks(index: DatasetIndex, *, max_distance: int = 4, size: int = 32,
               limit: int | None = 200, same_class: bool = True) -> pd.DataFrame:
    """Val images whose nearest train image is a near-duplicate (distance <= max_distance).

    One row per such val image: columns train_file, val_file, distance, plus matches (how
    many train images are that close) and same_class; nearest first, at most `limit` rows
    (None: all). `frame.attrs` holds "total" (leaks before the limit) and "n_val".

    With `same_class` (the default) only train images of the val image's class count: a
    look-alike of another class cannot hand the model the answer, and on GTSRB speed signs
    (all red rings on white) about half of the 64-bit matches within 4 bits are such
    look-alikes. `same_class=False` searches all of train (finds mislabelled copies too).
    """
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in [0, 64]; got {max_distance}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None; got {limit}")
    splits = load_split_tensors(index, size=size)
    train, val = splits.get("train"), splits.get("val")
    if train is None or val is None or len(train) == 0 or len(val) == 0:
        return _leak_frame([], total=0, n_val=len(val) if val is not None else 0)
    train_hashes, val_hashes = perceptual_hashes(train.images), perceptual_hashes(val.images)
    train_labels, val_labels = train.labels.numpy(), val.labels.numpy()
    # Search all of train at once, or each class's val images against that class's train.
    groups = [np.unique(val_labels)] if not same_class else [[label] for label in np.unique(val_labels)]
    rows: list[dict] = []
    for labels in groups:
        val_rows = np.flatnonzero(np.isin(val_labels, labels))
        train_rows = np.flatnonzero(np.isin(train_labels, labels)) if same_class else np.arange(len(train))
        if train_rows.size == 0:
            continue
        nearest, distance = nearest_hashes(val_hashes[val_rows], train_hashes[train_rows])
        close = np.flatnonzero(distance <= max_distance)
        matches = _count_within(val_hashes[val_rows[close]], train_hashes[train_rows], max_distance=max_distance)
        for position, count in zip(close, matches, strict=True):
            v, t = val_rows[position], train_rows[nearest[position]]
            rows.append({"train_file": train.files[t], "val_file": val.files[v],
                         "distance": int(distance[position]), "matches": int(count),
                         "same_class": bool(train_labels[t] == val_labels[v])})
    rows.sort(key=lambda row: (row["distance"], row["val_file"]))
    return _leak_frame(rows if limit is None else rows[:limit], total=len(rows), n_val=len(val))


def _count_within(a: np.ndarray, b: np.ndarray, *, max_distance: int) -> np.ndarray:
    counts = np.zeros(a.size, dtype=np.int64)
    for rows in _row_chunks(a.size, b.size):
        counts[rows] = (popcount(a[rows, None] ^ b[None, :]) <= max_distance).sum(axis=1)
    return counts


def _leak_frame(rows: list[dict], *, total: int, n_val: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[*LEAK_COLUMNS, "matches", "same_class"])
    frame = frame.astype({"distance": "int64", "matches": "int64", "same_class": "bool"})
    frame.attrs.update({"total": int(total), "n_val": int(n_val)})
    return frame


def _as_hashes(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"hashes must be one-dimensional; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"hashes must be integers (uint64); got {array.dtype}")
    return array.astype(np.uint64, copy=False)


def _row_chunks(n_rows: int, n_cols: int) -> Iterator[slice]:
    step = max(1, CHUNK_CELLS // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))
