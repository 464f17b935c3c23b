"""Image files -> uint8 arrays of the configured channels and size (Pillow only).

Handles the modes medical images come in: 8-bit grayscale (L), RGB, RGBA (alpha dropped),
palette (P), 16-bit grayscale (I;16, scaled to 8 bits by its own range) and 32-bit integer
or float grayscale (I, F; likewise), PNG, JPEG, BMP and TIFF.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import KDError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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


def read_image(path: Path, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int, str]]:
    """Decode a file fully (a truncated file fails here): (array, (width, height, mode))."""
    try:
        with Image.open(path) as img:
            img.load()
            info = (img.size[0], img.size[1], img.mode)
            return convert(img, channels, size), info
    except FileNotFoundError:
        raise KDError(f"image file '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise KDError(f"image file '{path}' is unreadable or truncated ({reason})") from None


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_digest(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).hexdigest()
