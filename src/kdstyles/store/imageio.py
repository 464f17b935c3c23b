"""Image files -> uint8 arrays of the configured channels and size (Pillow; pydicom for DICOM).

Handles the modes medical images come in: 8-bit grayscale (L), RGB, RGBA (alpha dropped),
palette (P), 16-bit grayscale (I;16, scaled to 8 bits by its own range) and 32-bit integer
or float grayscale (I, F; likewise), PNG, JPEG, BMP, TIFF and WebP; and single-frame 2D
DICOM (X-ray, mammography, dermoscopy; pydicom): the stored values through the file's
rescale (modality LUT), then its window from black to white (the same mapping for every
image; a VOI LUT or no window: the image's own range), MONOCHROME1 inverted so that bone
is bright.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..common.dims import DICOM_SUFFIXES, IMAGE_SUFFIXES, VOLUME_SUFFIXES, dims
from ..errors import KDError

warnings.filterwarnings("ignore", module="pydicom")  # a line per file for each deviation from the standard it reads past


def is_volume(path: Path) -> bool:
    """A NIfTI or NRRD file by name (macOS's ``._`` shadow files excluded)."""
    return dims(3).takes(path)


def is_image(path: Path) -> bool:
    """An image file by name; hidden files (macOS's ``._x.png`` shadows of copied images,
    which are not images) excluded."""
    return dims(2).takes(path)


def visible_dirs(folder: Path) -> list[Path]:
    """The folders directly in ``folder``, hidden ones (``.git``, ``.ipynb_checkpoints``) left
    out, sorted."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def visible_files(folder: Path) -> list[Path]:
    """The files under ``folder``, at any depth, outside hidden files and folders (``.git``,
    ``.thumbnails``, macOS's ``._`` shadows), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class NonFinite(ValueError):
    """A float image holding NaN or infinite pixels (no gray level means anything then)."""


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise NonFinite(f"holds {bad:,} pixel value(s) that are not numbers (NaN or infinite); replace them (e.g. "
                        "with numpy.nan_to_num) and save the image again")
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
    if isinstance(exc, NonFinite):
        return KDError(f"image file '{path}' {exc}")
    reason = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
    return KDError(f"image file '{path}' is unreadable or truncated ({reason})")


DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                 EOFError)


def _dicom(path: Path, pixels: bool = True):
    """A DICOM file's dataset (``pixels``: its pixels read too, or a header only); one line
    for a file that is not DICOM, is damaged, or holds what a 2D image cannot be."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ImplicitVRLittleEndian

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
        except InvalidDicomError:  # older files lack the 128-byte preamble and 'DICM': implicit VR then
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels, force=True)
            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ds.file_meta.setdefault("TransferSyntaxUID", ImplicitVRLittleEndian)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise _failure(path, exc) from None
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:100].strip() if str(exc) else type(exc).__name__
        raise KDError(f"DICOM file '{path}' is unreadable ({reason})") from None
    if "Rows" not in ds or "Columns" not in ds:
        raise KDError(f"DICOM file '{path}' is not a DICOM image (no Rows and Columns: damaged, or a report or "
                      "other non-image object)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise KDError(f"DICOM file '{path}' holds {frames} frames; kdstyles reads single-frame 2D DICOM (a CT or MR "
                      "series is a volume: convert it to NIfTI, e.g. with dcm2niix, and use data.spatial_dims: 3)")
    return ds


def _dicom_image(path: Path) -> tuple[Image.Image, str]:
    """A single-frame DICOM image as a Pillow image (8-bit L or RGB) and its mode's name."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    ds = _dicom(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith(("MONOCHROME", "RGB", "YBR")):
        raise KDError(f"DICOM file '{path}' is {photometric}; kdstyles reads MONOCHROME1/2, RGB and YBR DICOM: "
                      "save it as RGB (e.g. with pydicom's apply_color_lut) or as PNG")
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", None) or "its transfer syntax"
        compressed = syntax is not None and getattr(syntax, "is_compressed", False)
        raise KDError(f"DICOM file '{path}': " + (
            f"its pixels are compressed ({name}) and no decoder for them is installed; pip install pylibjpeg "
            "pylibjpeg-libjpeg pylibjpeg-openjpeg (or decompress it, e.g. with gdcmconv --raw)" if compressed else
            f"its pixels cannot be decoded ({str(exc).splitlines()[0][:100]})")) from None
    if photometric.startswith(("RGB", "YBR")):
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        return Image.fromarray(_to_uint8(np.asarray(arr))[..., :3], "RGB"), f"DICOM {photometric}"
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)  # stored values -> HU or the modality's
    window = _window(ds)
    if window is not None:  # the file's window: one fixed mapping, whatever the image holds
        lo, hi = window
        gray = np.clip((values - lo) / (hi - lo), 0, 1) * 255
    else:  # a VOI lookup table, or nothing: the image's own range
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        gray = _to_uint8(values).astype(np.float64)
    if photometric == "MONOCHROME1":  # low values are bright
        gray = 255 - gray
    return Image.fromarray((gray + 0.5).astype(np.uint8)), f"DICOM {photometric}"


def _window(ds) -> tuple[float, float] | None:
    """The value range a DICOM file's (first) WindowCenter/WindowWidth shows from black to
    white, by the standard's linear formula; None without a usable window."""
    def first(value) -> float:
        return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)

    try:
        centre, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(centre) and np.isfinite(width)) or width < 1:
        return None
    low = centre - 0.5 - (width - 1) / 2
    return low, low + max(width - 1, 1e-6)  # width 1: a threshold


def read_image(path: Path, channels: int, size: int) -> tuple[np.ndarray, tuple[int, int, str]]:
    """Decode a file fully (a truncated file fails here): (array, (width, height, mode))."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        img, mode = _dicom_image(path)
        return convert(img, channels, size), (img.size[0], img.size[1], mode)
    try:
        with Image.open(path) as img:
            img.load()
            info = (img.size[0], img.size[1], img.mode)
            return convert(img, channels, size), info
    except DECODE_ERRORS as exc:
        raise _failure(path, exc) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        ds = _dicom(path, pixels=False)
        return int(ds.Columns), int(ds.Rows)
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
