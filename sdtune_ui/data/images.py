"""Open, validate and normalise one untrusted image into a plain RGB picture.

Uploads come from anyone holding a share link, so: only an allow-list of decoders is ever tried (EPS
would run Ghostscript), every image is fully decoded here (a truncated file fails now, not in the middle
of training), Pillow's decompression-bomb limit is an error (never disabled), and each refusal carries
a reason a person can act on.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, features

from sdtune_ui.data.buckets import make_buckets, nearest_bucket, upscale_factor

try:  # HEIC/AVIF from phones, when the optional plugin is installed
    import pillow_heif  # type: ignore[import-not-found]

    pillow_heif.register_heif_opener()
    _HEIF = True
except ImportError:
    _HEIF = False

# Pillow format ids (not extensions) whose decoders may run (JPEG also yields MPO, phones' multi-picture
# JPEG). Never EPS/PS/PDF (external interpreters), never formats we can't vouch for.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF", "TIFF") + (
    ("AVIF",) if features.check("avif") else ()
) + (("HEIF",) if _HEIF else ())

_EXTS = {
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
}
if "AVIF" in ALLOWED_FORMATS:
    _EXTS.add(".avif")
if _HEIF:
    _EXTS.update({".heic", ".heif", ".avif"})
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_EXTS)

# An upload bigger than this is refused before decoding (a 100 MP 16-bit TIFF is ~600 MB; phones ~10 MB).
DEFAULT_MAX_FILE_BYTES = 200 * 1024 * 1024


@dataclass
class ImageResult:
    """Outcome for one file: `image` (RGB, fully loaded) when accepted, else `reason` says why not."""

    name: str
    image: Image.Image | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    format: str | None = None
    original_size: tuple[int, int] | None = None  # after EXIF rotation
    original_mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


def is_image_name(name: str) -> bool:
    """True when the file name has an extension of a format we accept."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded pixels and size: equal for the same picture whatever its file format."""
    return hashlib.sha256(repr(image.size).encode() + image.tobytes()).hexdigest()


def small_for_resolution(width: int, height: int, resolution: int) -> bool:
    """True when training at `resolution` would have to enlarge this image to fill its aspect bucket."""
    bucket = nearest_bucket(width, height, make_buckets(resolution))
    return upscale_factor(width, height, bucket) > 1.0


def load_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    name: str | None = None,
    resolution: int | None = None,
    max_pixels: int | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ImageResult:
    """Decode an untrusted image fully and normalise it to RGB; never raises for a bad file.

    `max_pixels` lowers (never raises) Pillow's own decompression-bomb limit. `resolution` adds a
    warning when the image is smaller than the aspect bucket it would be trained in.
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    result = ImageResult(name=label)
    data = _read_bytes(source, max_file_bytes, result)
    if data is None:
        return result
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        limit = max_pixels if limit is None else min(limit, max_pixels)
    try:
        image = _decode(data, limit, result)
    except _Rejected as err:
        result.reason = str(err)
        return result
    _warn_if_small(result, image, resolution)
    result.image = image
    return result


def from_pil(
    image: Image.Image, *, name: str = "image", resolution: int | None = None, max_pixels: int | None = None
) -> ImageResult:
    """Validate and normalise an already-decoded image (e.g. a row of a Hub dataset) like `load_image`."""
    result = ImageResult(name=name, format=image.format, original_mode=image.mode)
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        limit = max_pixels if limit is None else min(limit, max_pixels)
    if limit is not None and image.width * image.height > limit:
        result.reason = _bomb_reason(image.width, image.height, limit)
        return result
    if image.width == 0 or image.height == 0:
        result.reason = "empty image (0 pixels)"
        return result
    try:
        rgb = to_rgb(_apply_exif_orientation(image, result))
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        result.reason = f"corrupt or truncated image ({_short(err)})"
        return result
    result.original_size = rgb.size
    _warn_if_small(result, rgb, resolution)
    result.image = rgb
    return result


def _warn_if_small(result: ImageResult, image: Image.Image, resolution: int | None) -> None:
    if resolution and small_for_resolution(image.width, image.height, resolution):
        result.warnings.append(
            f"{image.width}x{image.height} is smaller than training resolution {resolution}: "
            "it will be upscaled and may look soft"
        )


class _Rejected(Exception):
    """Internal: the file is refused; the message is the user-facing reason."""


def _read_bytes(
    source: str | os.PathLike[str] | bytes | BinaryIO, cap: int, result: ImageResult
) -> bytes | None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > cap:
                result.reason = f"file is too large ({size / 2**20:.0f} MB; limit {cap / 2**20:.0f} MB)"
                return None
            data = path.read_bytes()
        except OSError as err:
            result.reason = f"cannot read file: {err.strerror or err}"
            return None
    else:
        data = source.read(cap + 1)
    if len(data) > cap:
        result.reason = f"file is too large (over {cap / 2**20:.0f} MB)"
        return None
    if not data:
        result.reason = "empty file (0 bytes)"
        return None
    return data


def _decode(data: bytes, limit: int | None, result: ImageResult) -> Image.Image:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped this global; a truncated file would then decode as grey garbage.
        warnings.warn("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated files may slip through",
                      stacklevel=3)
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that. For uploads that is a refusal: the size
    # check below does it explicitly, because `warnings.catch_warnings` is not thread-safe (ingest runs in
    # a worker thread of the app) and changing the process-wide filters would affect other code.
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
            result.format = img.format
            width, height = img.size
            if limit is not None and width * height > limit:
                raise _Rejected(_bomb_reason(width, height, limit))
            n_frames = getattr(img, "n_frames", 1)
            if n_frames > 1:
                img.seek(0)
                result.warnings.append(f"animated image ({n_frames} frames): using the first frame")
            img.load()
            result.original_mode = img.mode
            oriented = _apply_exif_orientation(img, result)
            rgb = to_rgb(oriented)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Raised while opening (the Warning only where filters make warnings errors): size is in the message.
        reason = f"image too large to decode safely: possible decompression bomb ({_short(err)})"
        raise _Rejected(reason) from None
    except Image.UnidentifiedImageError:
        raise _Rejected(_unidentified_reason(data)) from None
    except _Rejected:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            ZeroDivisionError, MemoryError) as err:
        # Pillow's decoders report damaged data through all of these, depending on the plugin.
        raise _Rejected(f"corrupt or truncated image ({_short(err)})") from None
    result.original_size = rgb.size
    return rgb


def _apply_exif_orientation(img: Image.Image, result: ImageResult) -> Image.Image:
    try:
        orientation = img.getexif().get(0x0112, 1)
        oriented = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as err:
        # Broken EXIF should not cost the user the picture; keep it as stored.
        result.warnings.append(f"unreadable EXIF orientation ignored ({_short(err)})")
        return img
    if orientation not in (1, None):
        result.warnings.append(f"rotated according to its EXIF orientation ({orientation})")
    return oriented


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16-bit/float scaled (not clipped)."""
    mode = img.mode
    has_key_colour = "transparency" in img.info  # palette/grey/RGB "this colour is transparent" (tRNS)
    if mode == "RGB" and not has_key_colour:
        return img.copy()
    if mode in ("P", "L", "RGB") and has_key_colour or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(img), "L").convert("RGB")
    return img.convert("RGB")


def _scale_to_uint8(img: Image.Image) -> np.ndarray:
    # Pillow's own I;16 -> L conversion clips at 255 (most of a 16-bit image turns white); scale instead.
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    arr = arr.astype(np.float64)
    if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0 and np.nanmin(arr) >= 0.0:
        return np.rint(np.nan_to_num(arr) * 255.0).astype(np.uint8)
    hi = float(np.nanmax(arr)) if arr.size else 0.0
    if hi <= 255.0:
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if hi <= 65535.0:  # 32-bit int image holding 16-bit data (older TIFF/PNG paths)
        return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
    return np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc and features.check("littlecms2"):
        from PIL import ImageCms

        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if out is not None:
                return out
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken embedded profile: fall back to the plain formula below
    return img.convert("RGB")


def _bomb_reason(width: int, height: int, limit: int | None) -> str:
    size = f"{width}x{height} = {width * height / 1e6:.0f} MP" if width else "too many pixels"
    cap = f"{limit / 1e6:.0f} MP" if limit else "the limit"
    return f"image too large to decode safely ({size}; limit {cap}): possible decompression bomb"


def _unidentified_reason(data: bytes) -> str:
    head = data[:16]
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "EPS/PostScript files are not accepted; export the image as PNG or JPEG"
    if head.startswith(b"%PDF"):
        return "PDF files are not accepted; export the page as PNG or JPEG"
    if b"ftypheic" in data[:32] or b"ftypheix" in data[:32] or b"ftypmif1" in data[:32]:
        return "HEIC image: install pillow-heif to read it, or convert it to JPEG"
    try:
        head.decode("utf-8")
        looks_text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    except UnicodeDecodeError:
        looks_text = False
    if looks_text:
        return "not an image (the file contains text)"
    return f"not an image, or an unsupported format (accepted: {', '.join(ALLOWED_FORMATS)})"


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= 120 else text[:117] + "..."
