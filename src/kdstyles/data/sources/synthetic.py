"""``source: synthetic``: the embedded generator of the task (histology patches for
classification, mosaics of them for multi-label, endoscopy frames with polyp masks for
segmentation and with polyp boxes for detection; ``Task.synthetic``), or with
``data.spatial_dims: 3`` its CT-like volumes (``Task.synthetic_volumes``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import import_module

import numpy as np

from ...errors import KDError
from . import Loaded, Source, from_arrays


@lru_cache(maxsize=8)
def generate(module: str, seed: int, split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One split of an embedded generator (kept in memory: the demo trains twice)."""
    return import_module(f"kdstyles.data.{module}").generate(seed, split, n, size)


class Synthetic(Source):
    name = "synthetic"

    def load(self, cfg, seed, task, run_dir, quiet) -> Loaded:
        module = task.synthetic_volumes if cfg.dims == 3 else task.synthetic
        if module is None:
            raise KDError(f"data.spatial_dims: 3: task {task.name} has no embedded volumes; give volume files "
                          "(data.source: csv) or use spatial_dims: 2")
        size = cfg.image_size or (import_module(f"kdstyles.data.{module}").DEFAULT_SIZE if cfg.dims == 3
                                  else task.synthetic_size)
        raw = {}
        for split, n in (("train", cfg.train_samples), ("val", cfg.val_samples), ("test", cfg.test_samples)):
            images, labels = generate(module, seed, split, n, size)
            if task.boxes:  # labels are boxes; the image-level label says whether there are any
                raw[split] = (images, np.array([len(b) > 0 for b in labels], dtype=np.int64), None, labels)
            elif task.dense:  # labels are masks; the image-level label says whether there is foreground
                raw[split] = (images, (labels.reshape(n, -1).max(1) > 0).astype(np.int64), labels)
            else:
                raw[split] = (images, labels)
        names = list(import_module(f"kdstyles.data.{module}").CLASS_NAMES)
        return from_arrays(raw, names, cfg.channels or (1 if cfg.dims == 3 else 3), size, "synthetic")

    def describe(self, cfg, task) -> str:
        return "the embedded synthetic CT-like volumes" if cfg.dims == 3 else task.description

    def volumes(self, cfg) -> bool | None:
        return None  # images, or volumes with spatial_dims: 3
