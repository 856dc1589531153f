"""Safe image decoding, shared by data loading and prediction.

Every image speedsign sees (a dataset file, an upload, a webcam frame) goes through
`open_image`: it refuses files that are too big on disk, too big once decoded, truncated, or
in a format outside a small allow-list, and returns a fully loaded RGB image. Bad bytes
become an `ImageError` with a message a user can act on, never a traceback.

Nothing here touches Pillow's global settings (`MAX_IMAGE_PIXELS`, `LOAD_TRUNCATED_IMAGES`,
the warning filters): these functions run in many threads at once.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import stat
from typing import BinaryIO

import numpy as np
import torch

# Importing the plugins we accept registers them with Pillow now, at import time (which
# Python serialises), instead of lazily inside `Image.open` from 20 threads at once.
from PIL import (  # noqa: F401  (imported for their registration side effect)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

from speedsign.config import RESIZES
from speedsign.errors import UserError

MAX_FILE_BYTES: int = 64 * 1024**2
MAX_PIXELS: int = 64_000_000  # width*height allowed before decoding (decompression-bomb guard)

# Raster formats only. Restricting `Image.open` to these also keeps Pillow's other parsers
# (EPS, which hands files to Ghostscript; ICO, PSD, FITS, ...) away from untrusted bytes.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "MPO")
# MPO (multi-picture JPEG, from some cameras) has no opener of its own: Pillow's JPEG opener
# returns it, and `Image.open(formats=[..., "MPO"])` raises KeyError.
_OPEN_FORMATS: tuple[str, ...] = tuple(name for name in ACCEPTED_FORMATS if name != "MPO")

ImageSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")

# First bytes of files people upload by mistake, to say what the file is instead of only
# "cannot read". Checked only after Pillow failed, and never parsed further.
_KNOWN_NON_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", "a PostScript/EPS file"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x00\x00\x01\x00", "an ICO icon"),
    (b"8BPS", "a Photoshop document"),
)


class ImageError(UserError):
    """An image speedsign refuses to decode, with the reason in the message."""


def open_image(
    source: ImageSource,
    *,
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
    target_size: int | None = None,
) -> Image.Image:
    """Decode `source` (bytes, a path, or a binary file object) into a loaded RGB image.

    `target_size`, when given, lets JPEG decoding run at a reduced scale (at least 4x the
    target on each side), so a large photo decodes fast and in little memory.
    Raises ImageError for anything that is not a safe, complete image in an accepted format.
    """
    _check_positive("max_bytes", max_bytes)
    _check_positive("max_pixels", max_pixels)
    if target_size is not None:
        _check_positive("target_size", target_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_byte_count(len(data), max_bytes=max_bytes)
        return _decode(io.BytesIO(data), max_pixels=max_pixels, target_size=target_size)
    if isinstance(source, (str, os.PathLike)):
        with _open_file(source) as file:
            info = os.fstat(file.fileno())
            # A FIFO or a device (/dev/zero) has no size to check and may never end.
            if not stat.S_ISREG(info.st_mode):
                raise ImageError("not a regular file")
            _check_byte_count(info.st_size, max_bytes=max_bytes)
            return _decode(file, max_pixels=max_pixels, target_size=target_size)
    if hasattr(source, "read"):
        # An upload object (Streamlit's UploadedFile is a BytesIO): from the start, as
        # Image.open reads, and one byte past the limit, so an oversized stream is refused
        # without reading all of it.
        if getattr(source, "seekable", lambda: False)():
            source.seek(0)
        data = source.read(max_bytes + 1)
        if not isinstance(data, bytes):
            raise TypeError("open_image needs a binary file object, not a text one")
        _check_byte_count(len(data), max_bytes=max_bytes, at_least=True)
        return _decode(io.BytesIO(data), max_pixels=max_pixels, target_size=target_size)
    raise TypeError(f"open_image takes bytes, a path or a binary file; got {type(source).__name__}")


def image_to_tensor(image: Image.Image, *, size: int, resize: str = "square") -> torch.Tensor:
    """Resize an image to `size` x `size` and return it as a contiguous uint8 (3, H, W) tensor.

    resize "square" stretches the whole image to the square (signs are cropped tight, and no
    part of the digits is cut off); "tutorial" scales the shorter side to `size` and
    center-crops, as torchvision's Resize(size) + CenterCrop(size) do.
    """
    _check_positive("size", size)
    if resize not in RESIZES:
        raise UserError(f"resize must be one of {', '.join(RESIZES)}; got {resize!r}")
    rgb = to_rgb(image)
    if resize == "square":
        # Pillow's bilinear filter widens its support when downscaling, so it antialiases.
        # reducing_gap=None keeps the exact filter (no JPEG-style box reduction first).
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    else:
        resized = _resize_shorter_and_center_crop(rgb, size=size)
    # np.array copies into a writable array: torch.from_numpy warns on read-only ones.
    array = np.array(resized, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_image_tensor(
    source: ImageSource,
    *,
    size: int,
    resize: str = "square",
    max_bytes: int = MAX_FILE_BYTES,
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """`open_image` then `image_to_tensor`: a (3, size, size) uint8 tensor from a file or bytes."""
    image = open_image(source, max_bytes=max_bytes, max_pixels=max_pixels, target_size=size)
    return image_to_tensor(image, size=size, resize=resize)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white.

    Raises ImageError for a mode Pillow cannot convert.
    """
    mode = image.mode
    try:
        if mode in _SIXTEEN_BIT_MODES:
            return _grey_to_rgb(_scale_sixteen_bit(np.asarray(image)))
        if mode == "F":
            return _grey_to_rgb(_scale_float(np.asarray(image)))
        if _has_transparency(image):
            # Signs are photographed or drawn on light backgrounds; Pillow's plain
            # convert("RGB") drops alpha and shows whatever colour hides under it, often black.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", image.size, _WHITE)
            return Image.alpha_composite(background, rgba).convert("RGB")
        if mode == "RGB":
            return image
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ImageError(f"unsupported colour mode {mode} ({error})") from None


def _open_file(path: str | os.PathLike) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except OSError as error:
        raise ImageError(f"cannot read the file ({error.strerror or error})") from None


def _decode(file: BinaryIO, *, max_pixels: int, target_size: int | None) -> Image.Image:
    image = _open_lazily(file, max_pixels=max_pixels)
    try:
        _check_pixel_count(image.size, max_pixels=max_pixels)
        _load_pixels(image, target_size=target_size)
        upright = _apply_exif_orientation(image)
        return to_rgb(upright)
    finally:
        image.close()


def _open_lazily(file: BinaryIO, *, max_pixels: int) -> Image.Image:
    """Identify the format and read the header only; no pixel is decoded yet."""
    try:
        return Image.open(file, formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        file.seek(0)
        raise ImageError(_unreadable_message(file.read(512))) from None
    # Pillow's own guard fires inside Image.open for sizes over its global limit (an error
    # above 2x MAX_IMAGE_PIXELS, a warning above 1x that we refuse just after, or an error
    # where a caller's warning filter says so). Same answer as our own check.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(_bomb_message(str(error), max_pixels=max_pixels)) from None
    except Exception as error:  # any parser failure on bad bytes
        raise ImageError(f"not an image Pillow can read ({_reason(error)})") from None


def _load_pixels(image: Image.Image, *, target_size: int | None) -> None:
    try:
        if target_size is not None and image.format in ("JPEG", "MPO"):
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly: an 8000x6000 photo for a
            # 64 px model becomes 1000x750 without ever holding 48 Mpx in memory.
            image.draft("RGB", (target_size * 4, target_size * 4))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(_bomb_message(str(error), max_pixels=None)) from None
    except Exception as error:  # decoder failures on bad bytes
        # Pillow says "image file is truncated" for a cut file; we never set
        # LOAD_TRUNCATED_IMAGES, which would return the missing part as grey pixels.
        if "truncated" in str(error).lower():
            raise ImageError(f"truncated image: the file ends early ({_reason(error)})") from None
        raise ImageError(f"corrupt {image.format} image ({_reason(error)})") from None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """The image as a viewer shows it: phones store pixels sideways plus an EXIF rotation."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # Broken EXIF metadata does not make the pixels wrong; use them as stored.
        return image.copy()


def _has_transparency(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    palette = image.palette if image.mode == "P" else None
    return palette is not None and palette.mode == "RGBA"


def _scale_sixteen_bit(values: np.ndarray) -> np.ndarray:
    # Pillow's convert("RGB") clips 16-bit values at 255, turning almost every pixel white;
    # map the full 0..65535 range onto 0..255 with rounding instead (65535 -> 255).
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
    # Float images (TIFF) are usually normalised to 0..1; Pillow's own "F" convention is the
    # 0..255 scale of "L". Tell them apart by range; NaN and infinities become black.
    clean = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if clean.size and clean.min() >= 0.0 and clean.max() <= 1.0:
        clean = clean * 255.0
    return np.clip(np.rint(clean), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")


def _resize_shorter_and_center_crop(image: Image.Image, *, size: int) -> Image.Image:
    # The same arithmetic as torchvision's Resize(size) then CenterCrop(size) on PIL images,
    # so a "tutorial" run sees exactly the pixels the tutorial's transforms would give.
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _check_byte_count(count: int, *, max_bytes: int, at_least: bool = False) -> None:
    if count == 0:
        raise ImageError("file is empty")
    if count > max_bytes:
        if at_least:  # a stream read only up to the limit: its full size is unknown
            raise ImageError(f"file is larger than the {_megabytes(max_bytes)} limit")
        raise ImageError(f"file is {_megabytes(count)}, over the {_megabytes(max_bytes)} limit")


def _check_pixel_count(size: tuple[int, int], *, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"image is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {_megapixels(width * height)}, over the "
            f"{_megapixels(max_pixels)} limit"
        )


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be a positive whole number; got {value!r}")


def _bomb_message(pillow_message: str, *, max_pixels: int | None) -> str:
    # Pillow's error gives the pixel count but not the width and height.
    match = _BOMB_PIXELS.search(pillow_message)
    size = f"{_megapixels(int(match.group(1)))}" if match else "too many pixels"
    limit = f"the {_megapixels(max_pixels)} limit" if max_pixels else "Pillow's safety limit"
    return f"image is {size}, over {limit} (refused as a possible decompression bomb)"


def _unreadable_message(prefix: bytes) -> str:
    accepted = ", ".join(ACCEPTED_FORMATS)
    what = _describe_prefix(prefix)
    return f"not an image Pillow can read ({what}; accepted formats: {accepted})"


def _describe_prefix(prefix: bytes) -> str:
    for magic, what in _KNOWN_NON_IMAGES:
        if prefix.startswith(magic):
            return f"looks like {what}"
    head = prefix.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<?xml", b"<svg")) and b"<svg" in prefix.lower():
        return "looks like an SVG vector drawing; export it as PNG or JPEG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "looks like a web page, not an image"
    if prefix[4:8] == b"ftyp":
        return "looks like a HEIC/AVIF photo or a video; export it as JPEG"
    if prefix and _looks_like_text(prefix):
        return "looks like a text file"
    return "unknown format"


def _looks_like_text(prefix: bytes) -> bool:
    # Incremental decoding tolerates a character cut in two at the end of the prefix.
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(prefix, final=False)
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _megabytes(count: int) -> str:
    return f"{count / 1024**2:.1f} MB"


def _megapixels(count: int) -> str:
    return f"{count / 1e6:.0f} Mpx" if count >= 10_000_000 else f"{count / 1e6:.1f} Mpx"
