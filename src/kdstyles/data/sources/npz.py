"""``source: npz``: your own arrays in one ``.npz`` file, laid out as MedMNIST lays out its
files: ``train_images``, ``train_labels``, ``val_images``, ``val_labels``, ``test_images``,
``test_labels`` (uint8 images (N, H, W) or (N, H, W, C) with 1 or 3 channels; class indices
(N,) or (N, 1); multi-hot (N, K) for multi-label), and optionally ``class_names`` (a string
array; ``data.classes`` overrides it; default ``0 .. K-1``). Written with
``numpy.savez(path, train_images=..., ...)``; nothing in it is pickled, and a file that holds
pickled objects is refused unread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from ...errors import KDError
from ..labels import labels_of
from . import Loaded, Source, from_arrays, resolve_input
from .medmnist import SPLIT, array_split, load
from ..options import ClassList, SourceOptions


class NpzOptions(ClassList):
    path: Optional[str] = Field(None, description="your arrays in MedMNIST's layout (train/val/test images and "
                                                  "labels)")


class NpzUnlabeled(SourceOptions):
    path: Optional[str] = Field(None, description="a file of arrays in MedMNIST's layout")
    split: SPLIT = Field("train", description="the split whose images are used")

SPLITS = ("train", "val", "test")


def class_names(arrays: dict[str, np.ndarray], given: list[str] | None, path: Path, multi_hot: bool) -> list[str]:
    """``data.classes``, else the file's ``class_names``, else ``0 .. K-1`` from the labels (a
    column per class where the task's labels are multi-hot)."""
    if given is not None:
        return list(given)
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise KDError(f"npz file '{path}': class_names must be a 1-D array of strings (got {names.dtype} "
                          f"{names.shape})")
        return [str(n) for n in names]
    labels = [arrays[f"{s}_labels"] for s in SPLITS]
    if multi_hot:
        return [str(k) for k in range(labels[0].shape[1])]
    return [str(k) for k in range(int(max(lbl.max(initial=0) for lbl in labels)) + 1)]


class Npz(Source):
    name = "npz"
    requires = "path"
    Options = NpzOptions
    Unlabeled = NpzUnlabeled
    unlabeled_requires = "path"  # data.unlabeled.path

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        path = Path(cfg.path)
        if not path.is_file():
            raise KDError(f"data.path: npz file '{path}' does not exist")
        multi_hot = labels_of(task).multi_hot
        arrays = load(path, multilabel=multi_hot, extra=("class_names",))
        names = class_names(arrays, cfg.classes, path, multi_hot)
        raw = {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
        images = raw["train"][0]
        return from_arrays(raw, names, *resolve_input(cfg, task, channels=images.shape[-1], side=images.shape[1]),
                           str(path), task)

    def default_input(self, cfg, task):
        return None, None  # the file's own channels and size

    def describe(self, cfg, task) -> str:
        return f"arrays from {Path(cfg.path).name}"


    def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
        """A split of an npz file in MedMNIST's layout (``data.unlabeled.path``, ``split``), labels unused."""
        u = cfg.unlabeled
        path = Path(u.path)
        if not path.is_file():
            raise KDError(f"data.unlabeled.path: npz file '{path}' does not exist")
        return array_split(cfg, seed, channels, size, path, False, f"{path.name} {u.split} (labels not used)")
