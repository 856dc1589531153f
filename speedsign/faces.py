"""The synthetic faces beside real photos: what the Dataset page shows to compare them.

For each class of `synth.CLASS_NAMES`, in that order: the flat face the renderer starts from,
a few samples as the renderer degrades them (shrunk, tilted, darkened, noisy), and a few real
photos of the same class name from a data set that is not synthetic. Everything is plain
numpy (uint8 HxWx3); nothing imports Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from speedsign import datasets, synth
from speedsign.data import DatasetIndex, scan_dataset
from speedsign.errors import UserError

BACKGROUND = (128, 128, 128)  # the neutral grey the flat face is shown on
RENDER_SIZE = 32  # rendered samples are made at GTSRB's size, then enlarged for display


@dataclass(frozen=True)
class FaceRow:
    """One class: its flat face, rendered samples and real photos (uint8 HxWx3 each)."""

    class_name: str
    face: np.ndarray  # the flat RGBA face on grey, size x size
    rendered: list[np.ndarray]  # synthetic samples as the renderer degrades them, size x size
    real: list[np.ndarray]  # real photos of this class, longer side `size`; empty when none


def is_synthetic(root: Path) -> bool:
    """Whether a data folder was made by the renderer (it has synth.json at its root)."""
    return (Path(root) / synth.INFO_NAME).is_file()


def shares_classes(index: DatasetIndex) -> bool:
    """Whether a data set has at least one class the renderer draws."""
    return bool(set(index.classes) & set(synth.CLASS_NAMES))


def is_real_match(index: DatasetIndex) -> bool:
    """A data set worth comparing with: not synthetic, and with a class the renderer draws."""
    return not is_synthetic(index.root) and shares_classes(index)


def find_real_dataset(root: Path | None, current: DatasetIndex | None) -> DatasetIndex | None:
    """The real photos to compare with: the set in use if it fits, else the first under `root`.

    Only folders are listed (no image is decoded); a folder that cannot be scanned is skipped.
    """
    if current is not None and is_real_match(current):
        return current
    skip = Path(current.root).resolve() if current is not None else None
    for entry in datasets.list_datasets(root):
        if is_synthetic(entry.path) or entry.path.resolve() == skip:
            continue
        try:
            index = scan_dataset(entry.path, require_train=False)
        except (UserError, OSError):
            continue
        if shares_classes(index):
            return index
    return None


def flat_face(class_name: str, *, size: int, variant: int = 0) -> np.ndarray:
    """The renderer's flat face composited on grey, resized to size x size."""
    face = synth.draw_face(class_name, variant)
    canvas = Image.new("RGBA", face.size, (*BACKGROUND, 255))
    canvas.alpha_composite(face)
    return np.asarray(canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def enlarge(image: Image.Image, size: int) -> np.ndarray:
    """An image scaled to `size` on its longer side with NEAREST, so its pixels show."""
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.convert("RGB").resize(shape, Image.Resampling.NEAREST))


def rendered_samples(class_name: str, *, count: int, seed: int, size: int) -> list[np.ndarray]:
    """`count` one-frame tracks of a class at 32 px, enlarged to `size` (seeded per sample)."""
    class_index = synth.CLASS_NAMES.index(class_name)
    return [enlarge(synth.render_track(class_name, rng=np.random.default_rng([seed, class_index, k]),
                                       size=RENDER_SIZE, n_frames=1)[0], size)
            for k in range(count)]


def real_photos(real: DatasetIndex | None, *, per_class: int, seed: int, size: int) -> dict[str, list[np.ndarray]]:
    """A few decoded photos per class name of `real` (readable ones only), longer side `size`."""
    if real is None:
        return {}
    photos: dict[str, list[np.ndarray]] = {}
    for class_name, files in datasets.sample_files(real, per_class=per_class, seed=seed).items():
        pictures = (datasets.load_picture(real.root, f, max_side=size) for f in files)
        photos[class_name] = [enlarge(Image.fromarray(p), size) for p in pictures if p is not None]
    return photos


def face_rows(real: DatasetIndex | None, *, per_class: int = 4, seed: int = 0, size: int = 64) -> list[FaceRow]:
    """One row per renderer class, in `synth.CLASS_NAMES` order; real photos matched by class name."""
    photos = real_photos(real, per_class=per_class, seed=seed, size=size)
    return [FaceRow(class_name=name, face=flat_face(name, size=size),
                    rendered=rendered_samples(name, count=per_class, seed=seed, size=size),
                    real=photos.get(name, []))
            for name in synth.CLASS_NAMES]


def face_sheet(rows: list[FaceRow], *, size: int = 64, gap: int = 4) -> np.ndarray:
    """All rows as one picture (the README's): per class, face, rendered samples, then real photos."""
    width = max(1 + len(r.rendered) + len(r.real) for r in rows) * (size + gap) + 4 * gap
    sheet = Image.new("RGB", (width, len(rows) * (size + gap) + gap), (255, 255, 255))
    for i, row in enumerate(rows):
        x = gap
        for k, picture in enumerate((row.face, *row.rendered, *row.real)):
            if k == 1 + len(row.rendered):
                x += 2 * gap  # a wider gap between the synthetic and the real
            sheet.paste(Image.fromarray(picture), (x, gap + i * (size + gap)))
            x += size + gap
    return np.asarray(sheet)
