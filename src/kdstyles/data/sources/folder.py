"""``source: folder``: images in class folders, ``root/<class>/<image>`` (optionally inside
``root/train/``, ``val/``, ``test/``), or volume files there with ``data.spatial_dims: 3``; for dense tasks ``root/images/`` and ``root/masks/``
(Kvasir-SEG / CVC-ClinicDB layout, see :mod:`kdstyles.data.segfolder`); for detection the
same layout, boxes from the masks or ``kavsir_bboxes.json`` (:mod:`kdstyles.data.boxfiles`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

from pydantic import Field

from ...common.dims import dims
from ..checks import Problem
from ..labels import labels_of
from . import Loaded, Source, read_files
from ..options import FileSplits, MaskClasses, NoneLabel, SourceOptions


class FolderOptions(MaskClasses, NoneLabel, FileSplits):
    root: Optional[str] = Field(None, description="the image (or volume) tree: class folders, optionally inside "
                                                  "train/, val/, test/; images/ and masks/ for dense tasks")


class FolderUnlabeled(SourceOptions):
    root: Optional[str] = Field(None, description="the tree of image (or volume) files, searched at any depth "
                                                  "(labels and class folders ignored)")


def _left_out(loaded: Loaded, others: Counter, kind: str) -> Loaded:
    """A warning in the data report naming the files of the class folders that are not read."""
    if others:
        listed = ", ".join(f"{n} {suffix}" for suffix, n in others.most_common())
        loaded.report.problems.append(Problem(
            "warning", f"files in the class folders that are not {kind} kdstyles reads were left out: {listed}"))
    return loaded


class Folder(Source):
    name = "folder"
    requires = "root"
    Options = FolderOptions
    Unlabeled = FolderUnlabeled
    volume_files = True
    unlabeled_requires = "root"  # data.unlabeled.root

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        root = Path(cfg.root)
        space = dims(cfg.dims)
        records, extra, others = labels_of(task).folder(root, cfg, space)
        loaded = read_files(cfg)(cfg, seed, task, saved_splits, quiet, records, root, f"data.root '{root}'", **extra)
        return _left_out(loaded, others, space.unit) if others is not None else loaded

    def describe(self, cfg, task) -> str:
        return f"{dims(cfg.dims).item} folder {cfg.root}"

    def spatial_dims(self, cfg) -> int | None:
        return None  # image files, or volume files with spatial_dims: 3


    def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
        """Image (or volume) files anywhere under ``data.unlabeled.root``; labels and class folders ignored."""
        from ..unlabeled import folder_files, listed_files

        return listed_files(folder_files(cfg), cfg, seed, channels, size, patch, quiet)
