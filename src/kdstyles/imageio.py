"""Image files -> uint8 arrays of the configured channels and size (Pillow only).

Handles the modes medical images come in: 8-bit grayscale (L), RGB, RGBA (alpha dropped),
palette (P), 16-bit grayscale (I;16, scaled to 8 bits by its own range) and 32-bit integer
or float grayscale (I, F; likewise), PNG, JPEG, BMP and TIFF.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import KDError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd")  # volume files (read by kdstyles.data.volumes, with MONAI)


def is_volume(path: Path) -> bool:
    """A NIfTI or NRRD file by name (macOS's ``._`` shadow files excluded)."""
    return path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith("._")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if arr.dtype.kind in "ui" and lo >= 0 and hi <= 255:
        return arr.astype(np.uint8)
    scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return (scaled + 0.5).astype(np.uint8)


def convert(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """A Pillow image as a (size, size, channels) uint8 array."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        img = Image.fromarray(gray)
    if channels == 1:
        img = img.convert("L")
    else:
        img = img.convert("RGB")  # RGBA: alpha dropped; P/L/CMYK: expanded
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.array(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _failure(path: Path, exc: BaseException) -> KDError:
    """One line for a file Pillow cannot (or must not) decode."""
    if isinstance(exc, FileNotFoundError):
        return KDError(f"image file '{path}' does not exist")
    if isinstance(exc, IsADirectoryError):
        return KDError(f"image file '{path}' is a folder")
    if isinstance(exc, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        return KDError(f"image file '{path}' is too large to decode safely ({count}, above Pillow's "
                       f"decompression-bomb limit of {2 * (Image.MAX_IMAGE_PIXELS or 0):,}); downscale it or remove it")
    reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
    return KDError(f"image file '{path}' is unreadable or truncated ({reason})")


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                 EOFError)


def read_image(path: Path, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int, str]]:
    """Decode a file fully (a truncated file fails here): (array, (width, height, mode))."""
    try:
        with Image.open(path) as img:
            img.load()
            info = (img.size[0], img.size[1], img.mode)
            return convert(img, channels, size), info
    except DECODE_ERRORS as exc:
        raise _failure(path, exc) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS as exc:
        raise _failure(path, exc) from None


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()
