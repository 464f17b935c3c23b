"""Images without labels (``data.unlabeled``): a second source the distillation edges learn
from, beside the labelled training split (the supervised loss never sees them).

Every source gives uint8 arrays fitted to the labelled data's channels and size (or, for
files that do not fit ``data.cache_gb``, paths decoded on access), checked as labelled files
are (one line naming an unreadable file), with two digests per item: its bytes (file) or raw
array, and its pixels as the networks see them. :func:`check_overlap` compares them with
every labelled split: an unlabelled image that is also a validation or test image is an
error naming both files (every test number would be a lie), one that is also a labelled
training image a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.dims import dims
from ..errors import KDError
from ..store.imageio import array_digest, visible_files
from . import checks

EVALUATED = ("val", "test")  # splits whose images must never be learned from


@dataclass
class Unlabeled:
    images: np.ndarray | list | None  # (N, H, W, C) / (N, D, H, W, C) uint8, a list of volumes, or None: ``paths``
    paths: list[Path] | None
    names: list[str]  # how messages name each item
    digests: list[set[str]]  # per item: its file's or raw array's digest and its pixels' (as trained)
    where: str  # the config key and place messages name
    description: str  # for run.json and model cards, e.g. "10000 images from folder data/unlabelled"

    def __len__(self) -> int:
        return len(self.names)


def draw(n: int, samples: int | None, seed: int) -> np.ndarray:
    """Which of ``n`` items to keep: all, or a seeded draw of ``samples`` (in their order)."""
    if samples is None or samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 31]).permutation(n)[:samples])


def from_arrays(raw: np.ndarray | list, fitted: np.ndarray | list, names: list[str], where: str, what: str
                ) -> Unlabeled:
    """In-memory images: ``raw`` as read, ``fitted`` to the labelled data; ``what`` (after the
    count) says what they are in run.json and model cards."""
    digests = [{array_digest(r), array_digest(f)} for r, f in zip(raw, fitted)]
    return Unlabeled(fitted, None, names, digests, where, f"{len(names)} {what}")


def from_files(paths: list[Path], cfg: Any, channels: int, size: int, patch: int | None, where: str, what: str,
               quiet: bool) -> Unlabeled:
    """Image (or volume) files, each decoded once and checked; one error line naming the first
    unreadable file. ``where``: the config key and place messages name; ``what``: where they
    are from, as run.json and model cards say it ("N images from WHAT")."""
    if not paths:
        raise KDError(f"{where}: holds no {dims(cfg.dims).item} files")
    return READ[cfg.dims](paths, cfg, channels, size, patch, where, what, quiet)


def _image_files(paths: list[Path], cfg: Any, channels: int, size: int, patch: int | None, where: str, what: str,
                 quiet: bool) -> Unlabeled:
    """Image files, decoded (kept in memory where they fit ``data.cache_gb``) and checked."""
    from ..common.progress import Steps as progress

    names = [f"'{p}'" for p in paths]
    report = checks.DataReport([])
    keep = len(paths) * size * size * channels <= cfg.cache_gb * 1e9
    with progress(quiet) as bar:
        task_id = bar.add_task(f"checking {len(paths)} unlabelled images", total=len(paths))
        images, files = checks.decode_files(paths, channels, size, keep, report, lambda n: bar.advance(task_id, n))
    bad = report.errors
    if bad:
        more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
        raise KDError(f"{where}: {bad[0].message}{more}")
    digests = [{f} | ({array_digest(images[i])} if images is not None else set()) for i, f in enumerate(files)]
    return Unlabeled(images, list(paths), names, digests, where, f"{len(paths)} images from {what}")


def _volume_files(paths: list[Path], cfg: Any, channels: int, size: int, patch: int | None, where: str, what: str,
                  quiet: bool) -> Unlabeled:
    """Volume files, each prepared as the labelled ones (cached), fitted to the input's channels
    (and size, unless training takes patches of whole volumes)."""
    from ..common.progress import Steps as progress
    from ..store.imageio import file_digest
    from . import volumes
    from .fit import fit_volumes

    arrays, digests = [], []
    with progress(quiet) as bar:
        task_id = bar.add_task(f"reading {len(paths)} unlabelled volumes", total=len(paths))
        for p in paths:
            prepared = volumes.select_modalities(volumes.prepare_cached(p, None, cfg, use_cache=cfg.volume_cache),
                                                 cfg.modalities, p)
            vol = fit_volumes(prepared.image[None], channels, None if patch else size)[0]
            arrays.append(vol)
            digests.append({file_digest(p), array_digest(vol)})
            bar.advance(task_id)
    images = arrays if patch else np.stack(arrays)
    return Unlabeled(images, list(paths), [f"'{p}'" for p in paths], digests, where,
                     f"{len(paths)} volumes from {what}")


READ = {2: _image_files, 3: _volume_files}  # how files without labels are read, by spatial dimensions


def folder_files(cfg: Any) -> tuple[list[Path], str, str]:
    """The image (or volume) files anywhere under ``data.unlabeled.root`` (class folders and
    labels ignored), the key messages name, and what they are."""
    root = Path(cfg.unlabeled.root)
    where = f"data.unlabeled.root '{root}'"
    if not root.is_dir():
        raise KDError(f"{where}: folder does not exist")
    return [p for p in visible_files(root) if dims(cfg.dims).takes(p)], where, f"folder {root}"


def csv_files(cfg: Any) -> tuple[list[Path], str, str]:
    """The files a CSV's ``path`` column lists (``data.unlabeled.path``; paths relative to it)."""
    from ..store.fileio import read_csv

    csv_path = Path(cfg.unlabeled.path)
    where = f"data.unlabeled.path '{csv_path}'"
    rows = read_csv(csv_path, "an unlabelled CSV needs a path column (other columns are ignored)", required=("path",))
    empty = next((i for i, r in enumerate(rows, start=2) if not r["path"]), None)
    if empty is not None:
        raise KDError(f"CSV file '{csv_path}' line {empty}: empty path")
    paths = [csv_path.parent / r["path"] for r in rows]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise KDError(f"{where}: lists '{missing}', which does not exist")
    return paths, where, f"CSV {csv_path}"


def listed_files(listing: tuple[list[Path], str, str], cfg: Any, seed: int, channels: int, size: int,
                 patch: int | None, quiet: bool) -> Unlabeled:
    """Files of a listing (:func:`folder_files`, :func:`csv_files`), at most
    ``data.unlabeled.samples`` of them (a seeded draw), read and checked."""
    paths, where, what = listing
    paths = [paths[i] for i in draw(len(paths), cfg.unlabeled.samples, seed)]
    return from_files(paths, cfg, channels, size, patch, where, what, quiet)


def split_digests(split: Any) -> list[set[str]]:
    """Per item of a labelled split (:class:`~kdstyles.data.sources.Split`): its stored digest
    (file or raw array) and, where it is in memory, its pixels' as trained."""
    images = split.images
    out = []
    for i, d in enumerate(split.digests):
        found = {d} if d is not None else set()
        if images is not None and i < len(images):
            found.add(array_digest(images[i]))
        out.append(found)
    return out


def check_overlap(unlabeled: Unlabeled, splits: dict[str, Any]) -> list[str]:
    """One error line when an unlabelled image is also a validation or test image (naming both
    and the count); warnings (returned) when some are labelled training images."""
    index: dict[str, tuple[str, str]] = {}
    for name in ("train", *EVALUATED):
        if name not in splits:
            continue
        for digests, item in zip(split_digests(splits[name]), splits[name].names):
            for d in digests:
                index.setdefault(d, (name, item))
    found: dict[str, list[tuple[str, str]]] = {}
    for digests, item in zip(unlabeled.digests, unlabeled.names):
        hit = next((index[d] for d in digests if d in index), None)
        if hit is not None:
            found.setdefault(hit[0], []).append((item, hit[1]))
    for split in EVALUATED:
        if found.get(split):
            item, other = found[split][0]
            more = f" (and {len(found[split]) - 1} more)" if len(found[split]) > 1 else ""
            raise KDError(f"{unlabeled.where}: {item} is the same image as {split} image {other}{more}; learning from "
                          f"an evaluated image makes its {split} numbers a lie: remove it from the unlabelled source")
    if found.get("train"):
        item, other = found["train"][0]
        return [f"{unlabeled.where}: {len(found['train'])} unlabelled image(s) are also labelled training images "
                f"(e.g. {item} = {other}); harmless for the test numbers, but usually a mistake"]
    return []
