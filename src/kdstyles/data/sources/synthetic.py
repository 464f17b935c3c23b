"""``source: synthetic``: the embedded generator of the task (histology patches for
classification, mosaics of them for multi-label, endoscopy frames with polyp masks for
segmentation and with polyp boxes for detection), or with ``data.spatial_dims: 3`` its CT-like
volumes: the generator ``Task.synthetic`` names for the run's spatial dimensions."""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ...common.dims import dims
from ...errors import KDError
from ...store.fileio import read_npz, write_npz
from .. import checks
from ..generators import generator
from ..labels import labels_of
from . import Loaded, Source, from_arrays, resolve_input
from ..options import SourceOptions


class SyntheticOptions(SourceOptions):
    site: Literal[1, 2] = Field(1, description="1, the embedded data's site; 2, a shifted second site (other stain, "
                                               "intensity and blur: the data page says how)")

# Generating costs about 75 ms a 224 px image on one core (3,500 images: 4 to 5 minutes).
# Splits above these sizes are rendered by one process per core and kept on disk, so a
# second run, evaluate, export and check of the same data read them in a second.
CACHE_PIXELS = 8_000_000  # pixels (voxels) of a split worth keeping on disk: 2,000 images of 64 px
PARALLEL_PIXELS = 16_000_000  # ... worth rendering in several processes (10 to 25 s on one core)
CACHE_VERSION = 1  # bump when a generator changes what it draws


def cache_folder() -> Path:
    """``$KDSTYLES_CACHE/synthetic`` (default ``~/.cache/kdstyles/synthetic``), beside the volumes'."""
    from ...store.fileio import cache_root

    return cache_root() / "synthetic"


@lru_cache(maxsize=8)
def generate(module: str, seed: int, split: str, n: int, size: int, dims: int = 2) -> tuple[np.ndarray, Any]:
    """One split of an embedded generator (kept in memory: the demo trains twice; large splits
    also on disk, rendered in parallel). Every item is a pure function of (seed, split, index),
    so chunks rendered apart and put together equal the split rendered in one go."""
    pixels = n * size ** dims
    path = cache_folder() / f"{module}-v{CACHE_VERSION}-seed{seed}-{split}-{n}x{size}.npz"
    if pixels >= CACHE_PIXELS:
        cached = _read(path)
        if cached is not None:
            return cached
    workers = min(os.cpu_count() or 1, 16, max(1, n // 64)) if pixels >= PARALLEL_PIXELS else 1
    if workers > 1:
        out = _in_parallel(module, seed, split, n, size, workers)
    else:
        out = generator(module).generate(seed, split, n, size)
    if pixels >= CACHE_PIXELS:
        _write(path, out)
    return out


def _chunk(module: str, seed: int, split: str, n: int, size: int, start: int):
    return generator(module).generate(seed, split, n, size, start)


def _in_parallel(module: str, seed: int, split: str, n: int, size: int, workers: int):
    """The split rendered in ``workers`` processes (spawned: the parent may hold torch's
    threads), chunk by chunk, and put together in order."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    step = math.ceil(n / (workers * 4))  # a few chunks a process, so none waits long for the last
    starts = range(0, n, step)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_chunk, *zip(*[(module, seed, split, min(step, n - a), size, a) for a in starts])))
    images = np.concatenate([p[0] for p in parts])
    if isinstance(parts[0][1], list):  # boxes: one array per item
        return images, [b for p in parts for b in p[1]]
    return images, np.concatenate([p[1] for p in parts])


def _write(path: Path, out) -> None:
    """One uncompressed .npz: images, and labels as an array, or boxes as one array with each
    item's count. An unwritable cache only costs time."""
    images, labels = out
    arrays = {"images": images}
    if isinstance(labels, list):
        arrays["counts"] = np.array([len(b) for b in labels], np.int64)
        arrays["boxes"] = np.concatenate(labels) if labels else np.zeros((0, 5), np.float32)
    else:
        arrays["labels"] = labels
    try:
        write_npz(path, arrays)
    except KDError:
        pass


def _read(path: Path):
    """A cached split, or None when it is missing or damaged (rendered again then)."""
    z = read_npz(path)
    if z is None:
        return None
    try:
        if "labels" in z:
            return z["images"], z["labels"]
        counts = z["counts"]
        return z["images"], list(np.split(z["boxes"], np.cumsum(counts)[:-1])) if len(counts) else []
    except KeyError:
        return None


def _items(task, module: str, seed: int, split: str, n: int, size: int, cfg) -> tuple:
    """One split's images and labels as the task takes them, at ``cfg.site``."""
    from ..generators import at_site

    images, labels = generate(module, seed, split, n, size, cfg.dims)
    return labels_of(task).generated(at_site(images, cfg.site, seed), labels)


class Synthetic(Source):
    name = "synthetic"
    previews = True
    Options = SyntheticOptions
    external_defaults = {"site": 2}  # an external set of the embedded data: the shifted second site
    external_split = "test"
    unlabeled_requires = "samples"  # data.unlabeled.samples

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        module = task.synthetic.get(cfg.dims)
        if module is None:
            raise KDError(f"data.spatial_dims: {cfg.dims}: task {task.name} has no embedded {dims(cfg.dims).unit}; "
                          "give files (data.source: csv or folder) or another spatial_dims")
        channels, size = resolve_input(cfg, task)
        checks.check_memory("data.train_samples + val_samples + test_samples",
                            cfg.train_samples + cfg.val_samples + cfg.test_samples, size, cfg.dims, channels)
        raw = {}
        for split, n in (("train", cfg.train_samples), ("val", cfg.val_samples), ("test", cfg.test_samples)):
            raw[split] = _items(task, module, seed, split, n, size, cfg)
        names = list(generator(module).CLASS_NAMES)
        return from_arrays(raw, names, channels, size, "synthetic" + (f" site {cfg.site}" if cfg.site != 1 else ""),
                           task)

    def external(self, cfg, task, seed, split, quiet) -> Loaded:
        """An embedded external set: ``data.test_samples`` images drawn apart from every split
        (their own seed stream), at ``cfg.site`` (2: the shifted second site). ``split`` names one of
        the embedded splits instead (at that site)."""
        module = task.synthetic.get(cfg.dims)
        if module is None or cfg.site not in generator(module).SITES:
            raise KDError(f"data.external: the embedded data has no {'second site of its ' if module else ''}"
                          f"{dims(cfg.dims).unit} for task {task.name}; give files of another site (source: csv or "
                          "folder)")
        channels, size = resolve_input(cfg, task)
        stream = "external" if split in ("test", "all") else split
        checks.check_memory("data.external samples", cfg.test_samples, size, cfg.dims, channels)
        raw = {"test": _items(task, module, seed, stream, cfg.test_samples, size, cfg)}
        return from_arrays(raw, list(generator(module).CLASS_NAMES), channels, size,
                           f"synthetic site {cfg.site}", task)

    def default_input(self, cfg, task):
        module = task.synthetic.get(cfg.dims)
        return (generator(module).CHANNELS, generator(module).DEFAULT_SIZE) if module else (1, None)

    def describe(self, cfg, task) -> str:
        module = task.synthetic.get(cfg.dims)
        return generator(module).DESCRIPTION if module else f"no embedded {dims(cfg.dims).unit}"

    def spatial_dims(self, cfg) -> int | None:
        return None  # images, or volumes with spatial_dims: 3


    def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
        """The embedded generator's extra images of the task (``samples`` of them), labels withheld."""
        from .. import unlabeled as found
        from ..fit import fit_arrays

        u, space = cfg.unlabeled, dims(cfg.dims)
        module = task.synthetic.get(cfg.dims)
        if module is None:
            raise KDError(f"data.unlabeled.source: synthetic: task {task.name} has no embedded {space.unit}")
        checks.check_memory("data.unlabeled.samples", u.samples, size, cfg.dims, channels)
        images = generate(module, seed, "unlabeled", u.samples, size, cfg.dims)[0]
        names = [f"synthetic unlabeled[{i}]" for i in range(len(images))]
        what = generator(module).DESCRIPTION
        return found.from_arrays(images, fit_arrays(images, channels, size), names, "data.unlabeled (synthetic)",
                                 f"{space.unit} like {what} (labels withheld)")
