"""Where things live on disk, and writes that a reader never sees half-done.

Every file of the run store, the decode cache and the feature cache is written to a
temporary name in its own folder, fsynced, then moved into place with `os.replace`: a
crash leaves either the old file or the new one, never a mix. The lowest layer of the
library: it imports nothing else of speedsign.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

RUNS_ENV = "SPEEDSIGN_RUNS"
DATA_ENV = "SPEEDSIGN_DATA"
CACHE_ENV = "SPEEDSIGN_CACHE"


def default_runs_dir() -> Path:
    """Where runs live: $SPEEDSIGN_RUNS, default runs/."""
    return Path(os.environ.get(RUNS_ENV, "runs"))


def default_data_dir() -> Path:
    """Where data sets live: $SPEEDSIGN_DATA, default data/."""
    return Path(os.environ.get(DATA_ENV, "data"))


def cache_dir() -> Path:
    """Decoded tensors and frozen-backbone features; safe to delete at any time."""
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "speedsign"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path` through: a temporary in the same folder, fsynced and moved into
    place with os.replace when the block ends, deleted if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def atomic_write_bytes(data: bytes, path: Path) -> None:
    with atomic_writer(path) as file:
        file.write(data)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(data: Any, path: Path) -> None:
    atomic_write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def remove_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Half-written files of a killed writer (its os.replace never came).

    Call only while holding the lock that guards `folder`: then none of them is in use.
    """
    for name in names:
        for path in Path(folder).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
