"""``source: medmnist``: MedMNIST ``.npz`` files, read directly (the ``medmnist`` package
pulls torchvision).

A missing file is downloaded with a progress bar and an MD5 check where the network is
reachable; where it is not (or ``KDSTYLES_OFFLINE=1``), loading fails at once with the
exact file name, the folder it is expected in, and where to get it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import Field

from ...common.dims import dims
from ...errors import KDError
from ..labels import labels_of
from . import Loaded, Source, _fit_arrays, from_arrays, resolve_input
from .medmnist_info import FLAGS, FLAGS_3D, URL
from ..options import SourceOptions

SPLIT = Literal["train", "val", "test"]


class MedMNISTOptions(SourceOptions):
    flag: Optional[str] = Field(None, description="pathmnist, dermamnist, bloodmnist, ... (a flag ending in 3d holds "
                                                  "volumes)")
    size: Literal[28, 64, 128, 224] = Field(28, description="which file (image size) to read")
    root: Optional[str] = Field(None, description="folder of the npz files (default ~/.medmnist)")


class MedMNISTUnlabeled(MedMNISTOptions):
    split: SPLIT = Field("train", description="the split whose images are used")

SIZES = (28, 64, 128, 224)
SIZES_3D = (28, 64)
KEYS = tuple(f"{split}_{kind}" for split in ("train", "val", "test") for kind in ("images", "labels"))
DEFAULT_ROOT = "~/.medmnist"


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def info(flag: str) -> tuple:
    """(task, channels, class names, {size: md5}) of a 2D or 3D flag."""
    return FLAGS[flag] if flag in FLAGS else FLAGS_3D[flag]


def check_flag(flag: str, size: int, multilabel: bool | None = False, key: str = "data") -> None:
    """A known flag and size; ``multilabel`` (None: labels not used) must match the flag's labels.
    ``key``: the config section messages name (``data.unlabeled`` for images without labels)."""
    if flag not in FLAGS and flag not in FLAGS_3D:
        raise KDError(f"{key}.flag: '{flag}' is not a MedMNIST flag; allowed: {', '.join([*FLAGS, *FLAGS_3D])}")
    sizes = SIZES_3D if flag in FLAGS_3D else SIZES
    if size not in sizes:
        raise KDError(f"{key}.size: {size} is not a size of {flag}; allowed: {', '.join(map(str, sizes))}")
    if multilabel is not None and info(flag)[0].startswith("multi-label") != multilabel:
        if multilabel:
            raise KDError(f"data.flag: {flag} has one class per image; task multilabel reads chestmnist (or use "
                          "task: classification)")
        raise KDError(f"data.flag: {flag} is multi-label ({len(FLAGS[flag][2])} findings per image); set "
                      "task: multilabel")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(flag: str, size: int, root: Path, timeout: float = 20.0, key: str = "data") -> Path:
    """Fetch one file into ``root`` (temporary name, MD5 check, then rename)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    name = file_name(flag, size)
    target = root / name
    url = URL.format(name=name)
    where = (f"{key}.root: '{name}' is not in '{root}' and could not be downloaded (%s); download it from "
             f"{url} into that folder, or set {key}.root to the folder that holds it")
    if os.environ.get("KDSTYLES_OFFLINE") == "1":
        raise KDError(where % "KDSTYLES_OFFLINE=1")
    root.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(".npz.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with Progress(TextColumn(f"downloading {name}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn()) as bar:
                task = bar.add_task("dl", total=total)
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    bar.advance(task, len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise KDError(where % f"no network: {str(reason).splitlines()[0][:80]}") from None
    expected = info(flag)[3][size]
    got = _md5(part)
    if got != expected:
        part.unlink(missing_ok=True)
        raise KDError(f"downloaded '{name}' has MD5 {got}, expected {expected}; the file was discarded, try again")
    os.replace(part, target)
    return target


def locate(flag: str, size: int, root: str | None, multilabel: bool | None = False, key: str = "data") -> Path:
    check_flag(flag, size, multilabel, key)
    folder = Path(os.path.expanduser(root or DEFAULT_ROOT))
    path = folder / file_name(flag, size)
    return path if path.is_file() else download(flag, size, folder, key=key)


def load(path: Path, volumes: bool = False, multilabel: bool | None = False,
         splits: tuple[str, ...] = ("train", "val", "test"), extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every split's images (N, H, W[, C]) and labels (N,) from a MedMNIST-format npz; with
    ``volumes``, volumes (N, D, H, W[, C]); with ``multilabel``, multi-hot labels (N, K);
    ``multilabel=None``: the labels are left as they are (images without labels), and only
    the images of ``splits`` are needed. ``extra``: optional keys read too where present."""
    keys = tuple(f"{s}_{kind}" for s in splits for kind in ("images", "labels")
                 if multilabel is not None or kind == "images")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise KDError(f"npz file '{path}' lacks key '{missing[0]}'; a MedMNIST-layout file holds "
                              f"{', '.join(KEYS)}")
            arrays = {k: npz[k] for k in (*keys, *extra) if k in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise KDError(f"npz file '{path}' holds pickled Python objects and was refused unread "
                          "(allow_pickle=False); a MedMNIST file holds plain uint8 and integer arrays") from None
        raise KDError(f"npz file '{path}' is unreadable or truncated ({str(exc).splitlines()[0][:80]})") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise KDError(f"npz file '{path}' is unreadable or truncated ({str(exc).splitlines()[0][:80]})") from None
    for split in splits:
        images = arrays[f"{split}_images"]
        want = (4, 5) if volumes else (3, 4)
        if images.ndim not in want or images.dtype != np.uint8:
            expected = "(N, D, H, W) or (N, D, H, W, C)" if volumes else "(N, H, W) or (N, H, W, C)"
            raise KDError(f"npz file '{path}': {split}_images has shape {images.shape} and dtype {images.dtype}; "
                          f"expected uint8 {expected}")
        if images.ndim == want[1] and images.shape[-1] not in (1, 3):
            raise KDError(f"npz file '{path}': {split}_images has {images.shape[-1]} channels in its last axis; "
                          "expected 1 (grey) or 3 (RGB)")
        if images.ndim == want[0]:  # grey-scale: add the channel axis
            arrays[f"{split}_images"] = images[..., None]
        if multilabel is None:
            continue
        labels = arrays[f"{split}_labels"]
        if multilabel != (labels.ndim == 2 and labels.shape[1] > 1):
            raise KDError(f"npz file '{path}': {split}_labels has shape {labels.shape}; "
                          + ("task multilabel needs (N, K) yes/no labels" if multilabel else
                             "multi-label (several per image): set task: multilabel"))
        if len(labels) != len(images):
            raise KDError(f"npz file '{path}': {len(images)} {split} images but {len(labels)} labels")
        if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
            raise KDError(f"npz file '{path}': {split}_labels has dtype {labels.dtype}; expected whole numbers")
        arrays[f"{split}_labels"] = labels.astype(np.uint8) if multilabel else labels.reshape(-1).astype(np.int64)
    return arrays


class MedMNIST(Source):
    name = "medmnist"
    requires = "flag"
    Options = MedMNISTOptions
    Unlabeled = MedMNISTUnlabeled
    unlabeled_requires = "flag"  # data.unlabeled.flag

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        multilabel = labels_of(task).multi_hot
        path = locate(cfg.flag, cfg.size, cfg.root, multilabel)
        arrays = load(path, volumes=cfg.flag in FLAGS_3D, multilabel=multilabel)
        raw = {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in ("train", "val", "test")}
        images = raw["train"][0]
        return from_arrays(raw, list(info(cfg.flag)[2]), *resolve_input(cfg, task, channels=images.shape[-1]),
                           str(path), task)

    def default_input(self, cfg, task):
        return None, cfg.size  # the file's channels, at the resolution downloaded

    def describe(self, cfg, task) -> str:
        return f"MedMNIST {cfg.flag} ({cfg.size} {'voxels a side' if cfg.flag in FLAGS_3D else 'px'})"

    def spatial_dims(self, cfg) -> int | None:
        return 3 if cfg.flag in FLAGS_3D else 2  # a flag's files hold images or volumes

    def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
        """A MedMNIST file's split (``data.unlabeled.flag``, ``size``, ``split``) without its labels."""
        u = cfg.unlabeled
        path = locate(u.flag, u.size, u.root, multilabel=None, key="data.unlabeled")
        return array_split(cfg, seed, channels, size, path, u.flag in FLAGS_3D,
                           f"MedMNIST {u.flag} {u.split} (labels not used)")


def array_split(cfg, seed: int, channels: int, size: int, path: Path, volumes: bool, what: str):
    """A split's images of a MedMNIST file or of an npz file in its layout, labels unused
    (:class:`~kdstyles.data.unlabeled.Unlabeled`)."""
    from ..unlabeled import draw, from_arrays as unlabeled_arrays

    u = cfg.unlabeled
    space = dims(cfg.dims)
    if volumes != space.volumes:  # validation: a flag's files hold images or volumes
        raise KDError(f"data.unlabeled.flag: '{u.flag}' holds {dims(3 if volumes else 2).unit}, the labelled "
                      f"data {space.unit}")
    images = load(path, volumes=volumes, multilabel=None, splits=(u.split,))[f"{u.split}_images"]
    images = images[draw(len(images), u.samples, seed)]
    names = [f"'{path}' {u.split}[{i}]" for i in range(len(images))]
    return unlabeled_arrays(images, _fit_arrays(images, channels, size), names, f"data.unlabeled '{path}'",
                            f"images of {what}")
