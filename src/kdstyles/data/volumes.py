"""Volume files (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd``), read with MONAI's loaders
(nibabel, pynrrd) and prepared the one way training, evaluation and ``predict`` share:

1. reoriented to ``data.orientation`` (default RAS: array axes run to the patient's Right,
   Anterior, Superior);
2. resampled to ``data.spacing`` mm (trilinear for images, nearest for label maps), when set;
3. intensities mapped to [0, 1]: a fixed window ``data.window`` (CT in Hounsfield units,
   e.g. ``[-160, 240]`` for the abdomen) clipped, else each volume's 0.5th..99.5th
   percentiles per channel (MRI); stored as uint8 (D, H, W, C), the shape of every other
   kdstyles volume.

Checks name the file: unreadable, voxels that are not numbers (NaN, infinite), a label map
whose shape or affine differs from its image, label values that are not whole numbers or lie
outside 0..K-1.

Prepared volumes are cached (:func:`prepare_cached`): one uncompressed ``.npz`` per file
and preparation in ``$KDSTYLES_CACHE/volumes`` (default ``~/.cache/kdstyles/volumes``),
keyed by the files' paths, sizes and modification times and the preparation settings, so
evaluate, export and the next run skip reading and resampling. ``data.volume_cache: false``
turns it off; a damaged cache file is simply prepared again.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KDError
from ..store.fileio import read_npz, write_npz
from ..store.imageio import VOLUME_SUFFIXES, is_volume


def stem(path: Path) -> str:
    """The file name without its volume suffix (``liver_3.nii.gz`` -> ``liver_3``)."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


@dataclass(frozen=True)
class Preparation:
    """How volume files are prepared: the data config's ``orientation``, ``spacing`` and
    ``window``, or the same keys of an exported model's sidecar (``predict``)."""

    orientation: str | None = None
    spacing: list[float] | None = None
    window: list[float] | None = None

    @classmethod
    def of(cls, settings: dict[str, Any]) -> "Preparation":
        return cls(settings.get("orientation"), settings.get("spacing"), settings.get("window"))


@dataclass
class Prepared:
    image: np.ndarray  # uint8 (D, H, W, C), intensities mapped to [0, 255]
    mask: np.ndarray | None  # uint8 (D, H, W) class indices
    spacing: tuple[float, float, float]  # mm along each array axis
    affine: np.ndarray  # 4x4 of the prepared grid
    source_affine: np.ndarray  # 4x4 of the file as read
    source_shape: tuple[int, int, int]


# MONAI's LoadImage builds every reader it has; where pydicom is installed its DICOM reader logs
# a line per file about a GPU decoder (nvImageCodec) that a NIfTI file never needs
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def read(path: Path, what: str = "volume"):
    """A volume file as a channel-first MONAI MetaTensor (C, X, Y, Z) with its affine."""
    from monai.transforms import LoadImage

    if not path.is_file():
        raise KDError(f"{what} '{path}' does not exist")
    if not is_volume(path):
        raise KDError(f"{what} '{path}' is not a volume file; allowed: {', '.join(VOLUME_SUFFIXES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vol = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    except Exception as exc:  # noqa: BLE001 (any reader failure is the file's fault)
        cause = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
        raise KDError(f"{what} '{path}' cannot be read as a volume ({cause})") from None
    if vol.ndim != 4:  # validation: a file of another rank
        raise KDError(f"{what} '{path}' has {vol.ndim - 1} spatial dimensions; a volume has 3")
    return vol


def _affine(vol) -> np.ndarray:
    return np.asarray(vol.affine, dtype=np.float64)


def prepare(image_path: Path, label_path: Path | None, cfg: Any, num_classes: int | None = None) -> Prepared:
    """Read and prepare one volume (and its label map): see the module's steps. ``cfg``: the
    data config, or a :class:`Preparation` (``orientation``, ``spacing``, ``window``)."""
    import torch
    from monai.transforms import Orientation, Spacing

    image = read(image_path, "volume")
    bad = int((~torch.isfinite(image.as_tensor())).sum())
    if bad:  # resampling would spread them, and the percentile window of a NaN volume is all black
        raise KDError(f"volume '{image_path}' holds {bad:,} voxel(s) that are not numbers (NaN or infinite); replace "
                      "them (e.g. with the background value: numpy.nan_to_num) and save the volume again")
    source_affine, source_shape = _affine(image), tuple(int(s) for s in image.shape[1:])
    label = None
    if label_path is not None:
        label = read(label_path, "label map")
        if label.shape[0] != 1:
            raise KDError(f"label map '{label_path}' has {label.shape[0]} channels; a label map has one")
        if tuple(label.shape[1:]) != source_shape:
            raise KDError(f"label map '{label_path}' is {'x'.join(map(str, label.shape[1:]))} but its volume "
                          f"'{image_path}' is {'x'.join(map(str, source_shape))}")
        if not np.allclose(_affine(label), source_affine, atol=1e-3, rtol=1e-4):
            raise KDError(f"label map '{label_path}' is not on its volume's grid (the affines differ); "
                          "resample it onto the image first")
        values = label.as_tensor()
        if not torch.equal(values, values.round()):
            raise KDError(f"label map '{label_path}' holds values that are not whole numbers; it must hold "
                          "class indices")
        top, bottom = int(values.max()), int(values.min())
        if num_classes is not None and (top >= num_classes or bottom < 0):
            bad = top if top >= num_classes else bottom
            raise KDError(f"label map '{label_path}' has value {bad}, outside 0..{num_classes - 1} "
                          "(the labels of dataset.json, or data.num_classes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg.orientation:
            image = Orientation(axcodes=cfg.orientation)(image)
            label = Orientation(axcodes=cfg.orientation)(label) if label is not None else None
        if cfg.spacing:
            image = Spacing(pixdim=cfg.spacing, mode="bilinear")(image)
            label = Spacing(pixdim=cfg.spacing, mode="nearest")(label) if label is not None else None
    x = image.as_tensor().float()
    if cfg.window:
        lo, hi = cfg.window
        x = (x - lo) / (hi - lo)
    else:
        flat = x.flatten(1)
        sample = flat[:, ::max(1, flat.shape[1] // 2_000_000)]  # quantiles of up to 2M voxels per channel
        lo = torch.quantile(sample, 0.005, dim=1).view(-1, 1, 1, 1)
        hi = torch.quantile(sample, 0.995, dim=1).view(-1, 1, 1, 1)
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
    data = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).movedim(0, -1).numpy()
    mask = label.as_tensor()[0].round().to(torch.uint8).numpy() if label is not None else None
    affine = _affine(image)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return Prepared(np.ascontiguousarray(data), mask, spacing, affine, source_affine, source_shape)


CACHE_VERSION = 1  # bump when preparation changes what it produces


def cache_folder() -> Path:
    from ..store.fileio import cache_root

    return cache_root() / "volumes"


def _cache_key(image_path: Path, label_path: Path | None, cfg: Any) -> str:
    import hashlib
    import json

    parts: list[Any] = [CACHE_VERSION, cfg.orientation, cfg.spacing, cfg.window]
    for path in (image_path, label_path):
        if path is not None:
            st = path.stat()
            parts += [str(path.resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def select_modalities(prepared: Prepared, modalities: list[int] | None, path: Path) -> Prepared:
    """The prepared volume with only the channels ``modalities`` (``data.modalities``), in that
    order; all of them when None."""
    if modalities is None:
        return prepared
    count = prepared.image.shape[-1]
    missing = [m for m in modalities if m >= count]
    if missing:
        raise KDError(f"volume '{path}' has no channel {missing[0]} (it has {count}: 0..{count - 1}), which "
                      f"data.modalities {modalities} keeps")
    return replace(prepared, image=np.ascontiguousarray(prepared.image[..., modalities]))


def prepare_cached(image_path: Path, label_path: Path | None, cfg: Any, num_classes: int | None = None,
                   use_cache: bool = True) -> Prepared:
    """:func:`prepare`, from the cache when this file was prepared the same way before (the
    label range is checked again: the class count may have changed). Every channel: callers
    keep ``data.modalities`` with :func:`select_modalities`."""
    if not use_cache or not image_path.is_file() or (label_path is not None and not label_path.is_file()):
        return prepare(image_path, label_path, cfg, num_classes)
    path = cache_folder() / f"{_cache_key(image_path, label_path, cfg)}.npz"
    z = read_npz(path)
    if z is not None:
        try:
            hit = Prepared(z["image"], z.get("mask"), tuple(float(v) for v in z["spacing"]), z["affine"],
                           z["source_affine"], tuple(int(v) for v in z["source_shape"]))
        except (KeyError, ValueError, TypeError):
            hit = None  # damaged: prepared again below
        if hit is not None:
            if num_classes is not None and hit.mask is not None and int(hit.mask.max(initial=0)) >= num_classes:
                raise KDError(f"label map '{label_path}' has value {int(hit.mask.max())}, outside "
                              f"0..{num_classes - 1} (the labels of dataset.json, or data.num_classes)")
            return hit
    prepared = prepare(image_path, label_path, cfg, num_classes)
    arrays = {"image": prepared.image, "spacing": np.asarray(prepared.spacing), "affine": prepared.affine,
              "source_affine": prepared.source_affine, "source_shape": np.asarray(prepared.source_shape)}
    if prepared.mask is not None:
        arrays["mask"] = prepared.mask
    try:
        write_npz(path, arrays)
    except KDError:
        pass  # an unwritable cache only costs time
    return prepared


def restore(mask: np.ndarray, prepared: Prepared) -> np.ndarray:
    """A class-index map on the prepared grid put back on the file's own grid (nearest), so
    it overlays the input volume voxel for voxel."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    if prepared.affine.shape == prepared.source_affine.shape and np.allclose(prepared.affine, prepared.source_affine) \
            and mask.shape == prepared.source_shape:
        return mask
    m = MetaTensor(torch.from_numpy(mask[None].astype(np.float32)), affine=torch.from_numpy(prepared.affine))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = SpatialResample(mode="nearest")(m, dst_affine=torch.from_numpy(prepared.source_affine),
                                              spatial_size=prepared.source_shape)
    return out.as_tensor()[0].round().to(torch.uint8).numpy()


def write_nifti(path: Path, mask: np.ndarray, affine: np.ndarray) -> None:
    """A uint8 label map as NIfTI with the given affine (written atomically)."""
    import gzip

    import nibabel as nib

    from ..store.fileio import atomic_write

    img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    data = img.to_bytes()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
