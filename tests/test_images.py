"""Safe decoding: every hostile or odd input is generated here, in memory or under tmp_path."""

from __future__ import annotations

import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from speedsign.errors import UserError
from speedsign.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    image_to_tensor,
    load_image_tensor,
    open_image,
    to_rgb,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height (the decompression-bomb shape).

    Pillow reads the size from IHDR without decoding, so this stays a few bytes on disk and
    in memory however large the claim.
    """
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_bytes(size=(64, 48), color=RED) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG", quality=95)


def assert_close(pixel, expected, tol=6):
    assert all(abs(a - b) <= tol for a, b in zip(pixel, expected, strict=True)), (pixel, expected)


# --- inputs that must be refused, each with a message that says why ---------------------------

def test_image_error_is_a_user_error():
    assert issubclass(ImageError, UserError) and issubclass(ImageError, ValueError)
    assert MAX_FILE_BYTES == 64 * 1024**2 and MAX_PIXELS == 64_000_000


def test_zero_bytes(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(empty)


def test_random_bytes():
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        open_image(noise)


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is not a photo\nreally not\n")
    with pytest.raises(ImageError, match="not an image Pillow can read.*text file"):
        open_image(fake)


def test_svg_is_refused_clearly(tmp_path):
    svg = tmp_path / "sign.svg"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
                   'width="10" height="10"><circle r="4"/></svg>')
    with pytest.raises(ImageError, match="not an image Pillow can read.*SVG") as caught:
        open_image(svg)
    assert "PNG" in str(caught.value)  # says what would be accepted


def test_eps_is_refused_even_though_pillow_knows_it():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match="PostScript"):
        open_image(eps)


def test_other_pillow_formats_are_refused():
    ico = encode(Image.new("RGB", (16, 16), RED), "ICO")
    with pytest.raises(ImageError, match="not an image Pillow can read"):
        open_image(ico)


def test_truncated_jpeg():
    pixels = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        open_image(data[: len(data) // 2])


def test_truncated_png(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        open_image(path)


def test_decompression_bomb_over_pillows_own_limit():
    bomb = png_claiming_size(30000, 30000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="900 Mpx, over the 64 Mpx limit"):
        open_image(bomb)


def test_bomb_between_our_limit_and_pillows_gives_size(recwarn):
    # 72 Mpx: under Pillow's 89 Mpx warning threshold, over ours: refused by our own check.
    with pytest.raises(ImageError, match=r"9000x8000 = 72 Mpx, over the 64 Mpx limit"):
        open_image(png_claiming_size(9000, 8000))
    assert len(recwarn) == 0


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_in_pillows_warning_range():
    with pytest.raises(ImageError, match=r"10000x10000 = 100 Mpx, over the 64 Mpx limit"):
        open_image(png_claiming_size(10000, 10000))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_turned_error_by_caller_is_still_an_image_error():
    with pytest.raises(ImageError, match="100 Mpx, over the 64 Mpx limit"):
        open_image(png_claiming_size(10000, 10000))


def test_small_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError, match=r"64x48 = .* over the .* limit"):
        open_image(jpeg_bytes(), max_pixels=100)


def test_file_over_max_bytes(tmp_path):
    data = jpeg_bytes()
    with pytest.raises(ImageError, match="over the .* MB limit"):
        open_image(data, max_bytes=len(data) - 1)
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match="over the .* MB limit"):
        open_image(path, max_bytes=100)
    with pytest.raises(ImageError, match="larger than the .* MB limit"):
        open_image(io.BytesIO(data), max_bytes=100)
    assert open_image(path, max_bytes=len(data)).size == (64, 48)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        open_image(tmp_path)


def test_bad_arguments():
    with pytest.raises(TypeError):
        open_image(12345)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="target_size"):
        open_image(jpeg_bytes(), target_size=0)
    with pytest.raises(UserError, match="resize"):
        image_to_tensor(Image.new("RGB", (4, 4)), size=4, resize="crop")
    with pytest.raises(UserError, match="size"):
        image_to_tensor(Image.new("RGB", (4, 4)), size=0)


# --- odd but valid inputs, decoded right -------------------------------------------------------

def test_sources_bytes_path_str_stream(tmp_path):
    data = jpeg_bytes(color=BLUE)
    path = tmp_path / "blue.jpg"
    path.write_bytes(data)
    stream = io.BytesIO(data)
    stream.seek(10)  # an upload read once already: decoded from the start anyway
    for source in (data, bytearray(data), memoryview(data), path, str(path), stream):
        image = open_image(source)
        assert image.mode == "RGB" and image.size == (64, 48)
        assert_close(image.getpixel((5, 5)), BLUE)


def test_result_is_loaded_and_independent_of_the_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    image = open_image(path)
    path.unlink()
    assert image.getpixel((0, 0)) == RED
    assert not hasattr(image, "fp") or image.fp is None


def test_animated_gif_gives_first_frame():
    first = Image.new("P", (8, 8), 0)
    first.putpalette([*RED, *BLUE] + [0] * 762)
    second = first.copy()
    second.paste(1, (0, 0, 8, 8))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert open_image(data).getpixel((3, 3)) == RED


def test_animated_webp_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert open_image(data).getpixel((3, 3)) == RED


def test_mpo_gives_first_picture():
    data = encode(Image.new("RGB", (8, 8), RED), "MPO", save_all=True,
                  append_images=[Image.new("RGB", (8, 8), BLUE)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert_close(open_image(data).getpixel((3, 3)), RED)


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_close(open_image(data).getpixel((8, 8)), RED)


def test_sixteen_bit_png_gradient_maps_full_range():
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = np.asarray(open_image(data))
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


@pytest.mark.parametrize("mode,raw,expected", [
    ("I;16B", np.array([0, 32768, 65535], dtype=">u2"), [0, 128, 255]),
    ("I;16", np.array([0, 32768, 65535], dtype="<u2"), [0, 128, 255]),
    ("I", np.array([-5, 32768, 70000], dtype="<i4"), [0, 128, 255]),
    ("F", np.array([0.0, 0.5, 1.0], dtype="<f4"), [0, 128, 255]),
    ("F", np.array([0.0, 100.0, 300.0], dtype="<f4"), [0, 100, 255]),
    ("F", np.array([np.nan, 2.0, np.inf], dtype="<f4"), [0, 2, 0]),
])
def test_wide_modes_scale_properly(mode, raw, expected):
    image = Image.frombytes(mode, (3, 1), raw.tobytes())
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (1, 3, 3)
    assert rgb[0, :, 0].tolist() == expected


def test_rgba_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black
    image.putpixel((0, 0), (*RED, 255))
    image.putpixel((1, 0), (*BLUE, 128))
    result = open_image(encode(image, "PNG"))
    assert result.getpixel((3, 3)) == WHITE
    assert result.getpixel((0, 0)) == RED
    assert_close(result.getpixel((1, 0)), (127, 127, 255), tol=2)  # half blue over white


def test_palette_with_transparency_becomes_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * 762)  # index 0 is black but transparent
    image.putpixel((0, 0), 1)
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    result = open_image(data)
    assert result.getpixel((3, 3)) == WHITE and result.getpixel((0, 0)) == RED


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, (77, 77, 77)),
    ("1", 1, WHITE),
    ("LA", (50, 0), WHITE),
    ("LA", (50, 255), (50, 50, 50)),
])
def test_grey_modes(mode, value, expected):
    result = open_image(encode(Image.new(mode, (4, 4), value), "PNG"))
    assert result.mode == "RGB" and result.getpixel((2, 2)) == expected


def test_grey_with_colour_key_transparency():
    data = encode(Image.new("L", (4, 4), 0), "PNG", transparency=0)
    assert open_image(data).getpixel((1, 1)) == WHITE


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV", "CMYK", "RGBX", "PA", "RGBa"])
def test_other_modes_convert_to_rgb(mode):
    image = Image.new("RGB", (4, 4), RED).convert(mode) if mode != "PA" else Image.new(mode, (4, 4))
    result = to_rgb(image)
    assert result.mode == "RGB" and result.size == (4, 4)
    if mode in ("YCbCr", "LAB", "HSV", "CMYK", "RGBX"):
        assert_close(result.getpixel((0, 0)), RED, tol=8)


def test_lab_tiff_decodes():
    lab = Image.new("RGB", (4, 4), RED).convert("LAB")
    assert_close(open_image(encode(lab, "TIFF")).getpixel((1, 1)), RED, tol=8)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 4, 4))  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    result = open_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert result.size == (20, 40)
    assert_close(result.getpixel((18, 1)), RED, tol=10)  # marker now top-right
    assert_close(result.getpixel((1, 1)), WHITE, tol=10)


def test_broken_exif_does_not_refuse_the_pixels():
    data = encode(Image.new("RGB", (8, 8), RED), "JPEG", exif=b"Exif\x00\x00garbage-garbage")
    assert_close(open_image(data).getpixel((4, 4)), RED)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """An 8000 x 6000 (48 Mpx) JPEG, blue in its top-left tenth."""
    photo = Image.new("RGB", (8000, 6000), (200, 30, 30))
    photo.paste(BLUE, (0, 0, 800, 600))
    return encode(photo, "JPEG", quality=90)


def test_big_jpeg_decodes_in_draft_mode(big_jpeg: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    load = JpegImagePlugin.JpegImageFile.load

    def spy(self: JpegImagePlugin.JpegImageFile):
        if self.tile:  # pixels still to decode (a loaded image has none): what libjpeg is asked for
            decoded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
    image = open_image(big_jpeg, target_size=64)
    # Drafted at 1/8 scale: libjpeg only ever decodes 1000x750, never the 48 Mpx (bounded
    # memory and time), and the picture is still the picture.
    assert decoded == [(1000, 750)]
    assert image.size == (1000, 750)
    assert_close(image.getpixel((10, 10)), BLUE, tol=10)
    decoded.clear()
    tensor = load_image_tensor(big_jpeg, size=64)
    assert tensor.shape == (3, 64, 64)
    assert decoded == [(1000, 750)]


@pytest.mark.slow
def test_big_jpeg_decodes_fast(big_jpeg: bytes) -> None:
    start = time.perf_counter()
    image = open_image(big_jpeg, target_size=64)
    seconds = time.perf_counter() - start
    assert image.size == (1000, 750)
    assert seconds < 2.0  # drafted: hundredths of a second on two cores


def test_draft_keeps_at_least_four_times_the_target():
    data = encode(Image.new("RGB", (1600, 1200), RED), "JPEG")
    assert open_image(data, target_size=100).size == (800, 600)  # 1/2: 1/4 would be < 400
    assert open_image(data).size == (1600, 1200)


# --- tensors -----------------------------------------------------------------------------------

def test_image_to_tensor_square():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    tensor = image_to_tensor(image, size=16)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, 16, 16) and tensor.is_contiguous()
    expected = np.asarray(image.resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=None))
    assert torch.equal(tensor, torch.from_numpy(expected.copy()).permute(2, 0, 1))


@pytest.mark.parametrize("shape", [(30, 50), (50, 30), (37, 37), (101, 23), (16, 16), (9, 12)])
@pytest.mark.parametrize("size", [16, 21])
def test_image_to_tensor_tutorial_matches_torchvision(shape, size):
    from torchvision import transforms

    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    reference = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])(image)
    expected = torch.from_numpy(np.array(reference)).permute(2, 0, 1)
    assert torch.equal(image_to_tensor(image, size=size, resize="tutorial"), expected)


def test_image_to_tensor_accepts_any_mode():
    tensor = image_to_tensor(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), size=4)
    assert tensor.shape == (3, 4, 4) and int(tensor.min()) == 255  # transparent -> white


def test_load_image_tensor_from_path(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.new("RGB", (20, 10), BLUE), "PNG"))
    tensor = load_image_tensor(path, size=8, resize="tutorial")
    assert tensor.shape == (3, 8, 8)
    assert tensor[:, 4, 4].tolist() == list(BLUE)


def test_no_global_pillow_or_warnings_state_changes():
    import warnings

    from PIL import ImageFile

    def state():
        return Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters)

    before = state()
    for source in (jpeg_bytes(), b"junk", png_claiming_size(30000, 30000)):
        try:
            open_image(source)
        except ImageError:
            pass
    assert state() == before


# --- threads -----------------------------------------------------------------------------------

def decode_outcome(source) -> tuple[str, object]:
    try:
        return "ok", load_image_tensor(source, size=12).numpy().tobytes()
    except ImageError as error:
        return "error", str(error)


def test_twenty_threads_match_single_threaded(tmp_path):
    rng = np.random.default_rng(4)
    good = [encode(Image.fromarray(rng.integers(0, 256, (40 + i, 30, 3), dtype=np.uint8)), fmt)
            for i, fmt in enumerate(["JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF"])]
    cut = good[0][: len(good[0]) // 2]
    path = tmp_path / "rgba.png"
    path.write_bytes(encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0)), "PNG"))
    bad = [b"", b"not an image", cut, png_claiming_size(30000, 30000), b"<svg></svg>"]
    sources = (good + bad + [path]) * 5
    expected = [decode_outcome(source) for source in sources]
    assert {kind for kind, _ in expected} == {"ok", "error"}
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(decode_outcome, sources))
    assert results == expected
