"""Safe import of a user's data-set zip (the dashboard's upload) into ImageFolder layout.

The zip is hostile until proven otherwise: every entry is checked before one byte is written
(zip slip, symlinks, encryption, nested archives, declared sizes, member count), the bytes are
counted again while streaming (declared sizes can lie), and everything lands in a temporary
sibling folder that is moved onto `out` only when the whole archive passed. A rejected zip
leaves nothing behind. `ZipFile.extractall` is never used: it trusts the member names.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from speedsign.errors import UserError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
# Archives inside the archive are refused, not unpacked: each level would need its own limits.
ARCHIVE_EXTENSIONS: tuple[str, ...] = (
    ".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".7z", ".rar", ".zst",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
MAX_CLASS_NAME_CHARS = 100

# Files that desktop tools add to every zip; skipped without a word but counted.
_JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})
# The ratio test only applies above this size: small files compress erratically (a blank
# PNG can shrink 300x) and cannot fill a disk anyway.
_RATIO_MIN_BYTES = 1024**2
_CHUNK_BYTES = 1024**2
_MAX_FILENAME_BYTES = 255  # the limit of ext4, APFS and NTFS alike
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_EXAMPLES = 5


@dataclass(frozen=True)
class ArchiveLimits:
    """How much an uploaded zip may unpack to; a zip over any of them is refused whole."""

    max_members: int = 50_000
    max_total_bytes: int = 2 * 1024**3  # uncompressed, over the images we write
    max_member_bytes: int = 64 * 1024**2
    max_ratio: float = 200.0  # uncompressed/compressed per member above 1 MiB (zip bomb)


@dataclass(frozen=True)
class ExtractReport:
    """What an extraction wrote: `out/<split>/<class>/<image>`."""

    out: Path
    n_images: int
    classes: Mapping[str, tuple[str, ...]]  # split -> class names, in number order
    skipped: int  # files not written (not an image, not at the class depth, duplicates)
    skipped_examples: tuple[str, ...]
    junk: int  # __MACOSX/, .DS_Store, Thumbs.db, hidden files: skipped silently


@dataclass(frozen=True)
class PlannedMember:
    info: zipfile.ZipInfo
    split: str
    label: str
    filename: str


def extract_dataset_zip(
    zip_source: Path | bytes | BinaryIO,
    out: Path,
    *,
    limits: ArchiveLimits = ArchiveLimits(),
    progress: Callable[[int, int], None] | None = None,
) -> ExtractReport:
    """Check a data-set zip and unpack its images into `out/<split>/<class>/`, all or nothing.

    Accepts `train/<class>/<img>`, `val/...`, `test/...` (any subset), or a single `<class>/<img>`
    level (written as `train/<class>/`), either one optionally inside one top folder.
    Raises `UserError` for anything unsafe or unusable; `out` then does not exist.
    """
    out = Path(out)
    refuse_non_empty(out)
    with _open_zip(zip_source) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_members:
            raise UserError(
                f"the zip holds {len(infos):,} entries, over the limit of {limits.max_members:,}: "
                "upload fewer images or split the data set into several zips"
            )
        plan, skipped, junk = plan_extraction(infos)
        check_sizes(plan, limits=limits)
        tmp = make_temp_sibling(out)
        try:
            _write_members(zf, plan, tmp, limits=limits, progress=progress)
            publish_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ExtractReport(
        out=out,
        n_images=len(plan),
        classes=_classes_per_split(plan),
        skipped=len(skipped),
        skipped_examples=tuple(skipped[:_EXAMPLES]),
        junk=junk,
    )


def plan_extraction(infos: list[zipfile.ZipInfo]) -> tuple[list[PlannedMember], list[str], int]:
    """Decide where each member goes; return (plan, skipped descriptions, junk count).

    Raises `UserError` for an unsafe entry anywhere in the zip, even one we would skip: a zip
    that carries `../evil` is not a data set and should not be half-imported.
    """
    candidates: list[tuple[zipfile.ZipInfo, list[str]]] = []
    skipped: list[str] = []
    junk = 0
    for info in infos:
        check_entry_safe(info)
        if info.is_dir():
            continue
        parts = info.filename.split("/")
        if _is_junk(parts):
            junk += 1
            continue
        if parts[-1].lower().endswith(ARCHIVE_EXTENSIONS):
            raise UserError(
                f"the zip holds another archive ({_show(info.filename)}): archives inside the zip "
                "are not unpacked; unpack it and zip the image folders directly"
            )
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append(f"{_show(info.filename)} (not an image)")
            continue
        candidates.append((info, parts))
    candidates = _strip_common_top(candidates)
    split_mode = any(parts[0] in SPLITS and len(parts) >= 3 for _, parts in candidates)
    plan: list[PlannedMember] = []
    seen: set[tuple[str, str, str]] = set()
    for info, parts in candidates:
        if split_mode:
            if len(parts) != 3 or parts[0] not in SPLITS:
                skipped.append(f"{_show(info.filename)} (not at train|val|test/<class>/<image>)")
                continue
            split, label, filename = parts
        else:
            if len(parts) != 2:
                skipped.append(f"{_show(info.filename)} (not at <class>/<image>)")
                continue
            split, (label, filename) = "train", parts
            if label in SPLITS:  # `train/a.png`: a split without class folders
                skipped.append(f"{_show(info.filename)} (not in a class folder)")
                continue
        check_class_name(label)
        check_file_name(filename)
        if (split, label, filename) in seen:  # zips may hold the same name twice
            skipped.append(f"{_show(info.filename)} (duplicate)")
            continue
        seen.add((split, label, filename))
        plan.append(PlannedMember(info=info, split=split, label=label, filename=filename))
    if not plan:
        example = f"; found e.g. {skipped[0]}" if skipped else ""
        raise UserError(
            "the zip has no class folders: expected train/<class>/<image> (and val/<class>/<image>), "
            f"or <class>/<image>, optionally inside one top folder{example}"
        )
    return plan, skipped, junk


def check_entry_safe(info: zipfile.ZipInfo) -> None:
    """Refuse an entry that could write outside the target or that we cannot read honestly."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise UserError("the zip is encrypted (password-protected): zip the folders again without a password")
    if "\\" in name or name.startswith("/") or _DRIVE_LETTER.match(name):
        raise UserError(f"unsafe path in the zip: {_show(name)} (absolute or with backslashes); refused")
    parts = name[:-1].split("/") if name.endswith("/") else name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UserError(f"unsafe path in the zip: {_show(name)} (empty, '.' or '..' part); refused")
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise UserError(f"unsafe path in the zip: {_show(name)} (control characters); refused")
    # Unix zips keep st_mode in the high 16 bits; a link could point anywhere once written.
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"the zip holds a symbolic link ({_show(name)}): links are refused")


def check_class_name(label: str) -> None:
    """A class folder name is data that becomes a path: one plain component, not too long."""
    if label in ("", ".", "..") or "/" in label or "\\" in label or label.startswith("."):
        raise UserError(f"unusable class folder name {_show(label)}")
    if len(label) > MAX_CLASS_NAME_CHARS or len(label.encode("utf-8")) > _MAX_FILENAME_BYTES:
        raise UserError(
            f"class folder name too long ({len(label)} characters, at most {MAX_CLASS_NAME_CHARS}): "
            f"{_show(label)}"
        )


def check_file_name(filename: str) -> None:
    """An image's file name must fit the file system as one component."""
    if len(filename.encode("utf-8")) > _MAX_FILENAME_BYTES:
        raise UserError(f"file name too long in the zip: {_show(filename)}")


def check_sizes(plan: list[PlannedMember], *, limits: ArchiveLimits) -> None:
    """Refuse a zip whose declared sizes are too big or too well compressed (zip bomb)."""
    total = sum(item.info.file_size for item in plan)
    if total > limits.max_total_bytes:
        raise UserError(
            f"the zip unpacks to {_mib(total)}, over the limit of {_mib(limits.max_total_bytes)}: "
            "upload a smaller data set (e.g. images resized to 64 px)"
        )
    for item in plan:
        size, packed = item.info.file_size, item.info.compress_size
        if size > limits.max_member_bytes:
            raise UserError(
                f"{_show(item.info.filename)} unpacks to {_mib(size)}, over the per-file limit of "
                f"{_mib(limits.max_member_bytes)}"
            )
        if size > _RATIO_MIN_BYTES and size > limits.max_ratio * max(packed, 1):
            raise UserError(
                f"{_show(item.info.filename)} is compressed {size / max(packed, 1):,.0f}x, over "
                f"{limits.max_ratio:,.0f}x: this looks like a zip bomb, refused"
            )


def refuse_non_empty(out: Path) -> None:
    """Refuse to import into a file or a folder that already holds something."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new folder or remove it")


def make_temp_sibling(out: Path) -> Path:
    """A fresh hidden folder next to `out`, on the same file system so `os.replace` is atomic."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0o700; the data set should read like any other folder
    return tmp


def publish_folder(tmp: Path, out: Path, *, overwrite: bool = False) -> None:
    """Move the finished `tmp` onto `out` in one step; with `overwrite`, replace a non-empty `out`."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty: choose a new folder or remove it")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    if out.is_dir():
        out.rmdir()  # os.replace onto an empty folder works on POSIX only
    os.replace(tmp, out)


def natural_key(name: str) -> list[int | str]:
    """Sort key that puts speed_20 before speed_100 (numbers compared as numbers)."""
    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", name)]


@contextlib.contextmanager
def _open_zip(zip_source: Path | bytes | BinaryIO) -> Iterator[zipfile.ZipFile]:
    with contextlib.ExitStack() as stack:
        if isinstance(zip_source, (bytes, bytearray, memoryview)):
            handle: BinaryIO = io.BytesIO(bytes(zip_source))
        elif isinstance(zip_source, (str, os.PathLike)):
            path = Path(zip_source)
            if not path.is_file():
                raise UserError(f"no such zip file: {path}")
            handle = stack.enter_context(open(path, "rb"))
        else:
            handle = zip_source  # e.g. Streamlit's UploadedFile; the caller closes it
        try:
            zf = stack.enter_context(zipfile.ZipFile(handle))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise UserError(f"not a readable zip file ({exc}): upload a .zip of the image folders") from exc
        yield zf


def _strip_common_top(
    candidates: list[tuple[zipfile.ZipInfo, list[str]]],
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Drop one top folder shared by every image (`mydata/train/...`), unless it is a split."""
    tops = {parts[0] for _, parts in candidates}
    if len(tops) != 1 or tops.pop() in SPLITS:
        return candidates
    # Only strip when something sits below it: `speed_20/a.png` alone is one class, not a top.
    if not any(len(parts) >= 3 for _, parts in candidates):
        return candidates
    return [(info, parts[1:]) for info, parts in candidates]


def _write_members(
    zf: zipfile.ZipFile,
    plan: list[PlannedMember],
    tmp: Path,
    *,
    limits: ArchiveLimits,
    progress: Callable[[int, int], None] | None,
) -> None:
    root = tmp.resolve()
    written = 0
    for done, item in enumerate(plan, start=1):
        target = tmp / item.split / item.label / item.filename
        # Names were checked already; this is the last line of defence against a slip.
        if os.path.commonpath([root, target.resolve()]) != str(root):
            raise UserError(f"unsafe path in the zip: {_show(item.info.filename)}; refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        member_bytes = 0
        try:
            with zf.open(item.info) as source, open(target, "xb") as sink:
                while chunk := source.read(_CHUNK_BYTES):
                    member_bytes += len(chunk)
                    written += len(chunk)
                    # Count what really comes out: the declared sizes are the attacker's words.
                    if (
                        member_bytes > item.info.file_size
                        or member_bytes > limits.max_member_bytes
                        or written > limits.max_total_bytes
                    ):
                        raise UserError(
                            f"{_show(item.info.filename)} unpacks to more than it declares or allows: "
                            "refused as a zip bomb"
                        )
                    sink.write(chunk)
        except FileExistsError as exc:  # e.g. Speed_20 vs speed_20 on a case-insensitive disk
            raise UserError(f"two files in the zip map to the same name: {_show(item.info.filename)}") from exc
        except NotImplementedError as exc:
            raise UserError(
                f"{_show(item.info.filename)} uses a compression method Python cannot read ({exc}): "
                "zip the folders again with standard deflate"
            ) from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:
            raise UserError(f"the zip is damaged: {_show(item.info.filename)} could not be read ({exc})") from exc
        if progress is not None:
            progress(done, len(plan))


def _classes_per_split(plan: list[PlannedMember]) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for item in plan:
        found.setdefault(item.split, set()).add(item.label)
    return {split: tuple(sorted(found[split], key=natural_key)) for split in SPLITS if split in found}


def _is_junk(parts: list[str]) -> bool:
    # Any hidden component (.DS_Store, ._resource forks, .ipynb_checkpoints/) counts as junk.
    return any(part in _JUNK_NAMES or part.startswith(".") for part in parts)


def _show(name: str, limit: int = 80) -> str:
    """A hostile name, quoted and cut short, safe to put in a one-line message."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mib(n_bytes: int) -> str:
    return f"{n_bytes / 1024**2:,.1f} MiB"
