"""Specification of `sdtune_ui.data.images`: what happens to each odd image a user may upload."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sdtune_ui.data import images
from sdtune_ui.data.images import is_image_name, load_image, small_for_resolution, to_rgb

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def close(pixel, expected, tol=12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size: what a decompression bomb looks like from outside."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_plain_rgb_png_is_accepted_unchanged():
    img = Image.new("RGB", (40, 30), (12, 34, 56))
    result = load_image(encode(img, "PNG"), name="a.png")
    assert result.ok and result.reason is None
    assert result.image.mode == "RGB" and result.image.size == (40, 30)
    assert result.image.getpixel((5, 5)) == (12, 34, 56)
    assert result.format == "PNG" and result.warnings == []


def test_exif_rotated_jpeg_is_turned_upright():
    # Stored landscape 40x20 with a red top-left block; orientation 6 means "display rotated 90° clockwise",
    # so the viewer sees a 20x40 portrait whose red block sits at the top-right.
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    result = load_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert result.ok
    assert result.image.size == (20, 40)
    assert close(result.image.getpixel((17, 2)), RED)
    assert close(result.image.getpixel((2, 2)), BLUE)
    assert any("EXIF orientation" in w for w in result.warnings)


def test_rgba_transparent_half_is_composited_on_white():
    img = Image.new("RGBA", (20, 10), (255, 0, 0, 255))
    img.paste((255, 0, 0, 0), (10, 0, 20, 10))  # right half fully transparent
    img.paste((255, 0, 0, 128), (0, 5, 10, 10))  # bottom-left half transparent
    result = load_image(encode(img, "PNG"))
    assert result.ok and result.image.mode == "RGB"
    assert result.image.getpixel((2, 2)) == RED
    assert result.image.getpixel((15, 2)) == WHITE
    assert close(result.image.getpixel((2, 7)), (255, 127, 127), tol=2)


def test_grey_with_alpha_la_is_composited_on_white():
    img = Image.new("LA", (10, 10), (0, 255))
    img.paste((0, 0), (5, 0, 10, 10))
    result = load_image(encode(img, "PNG"))
    assert result.image.getpixel((1, 1)) == (0, 0, 0)
    assert result.image.getpixel((8, 1)) == WHITE


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_becomes_the_expected_rgb(fmt):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure magenta+yellow ink = red
    img.paste((0, 0, 0, 255), (8, 0, 16, 16))  # black ink
    result = load_image(encode(img, fmt, **({"quality": 95} if fmt == "JPEG" else {})))
    assert result.ok and result.original_mode == "CMYK"
    assert close(result.image.getpixel((2, 8)), RED)
    assert close(result.image.getpixel((13, 8)), (0, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_gradient_is_scaled_to_8_bit_not_clipped(fmt):
    ramp = np.tile(np.linspace(0, 65535, 256), (4, 1)).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    result = load_image(encode(img, fmt))
    assert result.ok and result.original_mode.startswith("I")
    row = [result.image.getpixel((x, 0))[0] for x in (0, 64, 128, 255)]
    # Clipping would make everything past 1/256 of the range white (255).
    assert row == [0, 64, 128, 255]
    assert result.image.getpixel((128, 0)) == (128, 128, 128)


def test_palette_image_keeps_its_colours_and_transparent_index_becomes_white():
    img = Image.new("P", (30, 10))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.paste(0, (0, 0, 10, 10))
    img.paste(1, (10, 0, 20, 10))
    img.paste(2, (20, 0, 30, 10))
    result = load_image(encode(img, "PNG"))
    assert [result.image.getpixel((x, 5)) for x in (5, 15, 25)] == [RED, GREEN, BLUE]
    with_key = load_image(encode(img, "GIF", transparency=2))
    assert [with_key.image.getpixel((x, 5)) for x in (5, 15, 25)] == [RED, GREEN, WHITE]


def test_animated_gif_takes_the_first_frame_and_says_so():
    frames = [Image.new("RGB", (16, 16), colour) for colour in (GREEN, RED, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    result = load_image(data)
    assert result.ok
    assert close(result.image.getpixel((8, 8)), GREEN, tol=4)
    assert any("3 frames" in w for w in result.warnings)


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF"])
def test_other_allowed_formats_decode(fmt):
    img = Image.new("RGB", (16, 16), (200, 100, 50))
    result = load_image(encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert result.ok and result.image.getpixel((3, 3)) == (200, 100, 50)


def test_truncated_jpeg_is_rejected_as_truncated():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, "JPEG", quality=90)
    result = load_image(data[: len(data) // 2], name="half.jpg")
    assert not result.ok and result.image is None
    assert "truncated" in result.reason or "corrupt" in result.reason


def test_truncated_png_is_rejected():
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, "PNG")
    result = load_image(data[: len(data) // 2])
    assert not result.ok and "truncated" in result.reason


def test_zero_byte_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = load_image(empty)
    assert not result.ok and result.reason == "empty file (0 bytes)"


def test_text_file_renamed_png_is_rejected_as_not_an_image(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are my shopping notes\n")
    result = load_image(fake)
    assert not result.ok and "not an image" in result.reason


def test_eps_is_never_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    result = load_image(eps, name="x.eps")
    assert not result.ok and "EPS" in result.reason
    assert "EPS" not in images.ALLOWED_FORMATS and not is_image_name("x.eps")


def test_image_over_the_given_pixel_limit_is_rejected_as_a_bomb():
    img = Image.new("RGB", (200, 200), RED)
    result = load_image(encode(img, "PNG"), max_pixels=10_000)
    assert not result.ok and "decompression bomb" in result.reason
    assert load_image(encode(img, "PNG"), max_pixels=40_000).ok


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own notice, expected
@pytest.mark.parametrize("side", [10_000, 30_000])  # warning zone (1-2x Pillow's limit) and error zone
def test_header_claiming_huge_size_is_rejected_and_pillow_limit_untouched(side):
    before = Image.MAX_IMAGE_PIXELS
    result = load_image(png_header_only(side, side))
    assert not result.ok and "decompression bomb" in result.reason
    assert Image.MAX_IMAGE_PIXELS == before and before is not None


def test_file_over_the_byte_cap_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(encode(Image.new("RGB", (64, 64)), "PNG") + b"\0" * 5000)
    result = load_image(big, max_file_bytes=1000)
    assert not result.ok and "too large" in result.reason


def test_small_image_is_kept_with_a_warning_for_the_resolution():
    result = load_image(encode(Image.new("RGB", (100, 80), RED), "PNG"), resolution=512)
    assert result.ok and any("smaller than training resolution 512" in w for w in result.warnings)
    assert not load_image(encode(Image.new("RGB", (600, 600), RED), "PNG"), resolution=512).warnings


def test_small_for_resolution_uses_the_aspect_bucket():
    assert not small_for_resolution(1024, 512, 512)  # lands in a wide bucket smaller than 1024x512
    assert small_for_resolution(300, 300, 512)
    assert not small_for_resolution(512, 512, 512)


def test_to_rgb_handles_bilevel_and_float_images():
    bilevel = Image.new("1", (4, 4), 1)
    assert to_rgb(bilevel).getpixel((0, 0)) == WHITE
    float_img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    assert to_rgb(float_img).getpixel((0, 0)) == (128, 128, 128)


def test_is_image_name_checks_the_extension_case_insensitively():
    assert is_image_name("A.JPG") and is_image_name("b.webp") and not is_image_name("c.txt")
