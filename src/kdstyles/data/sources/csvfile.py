"""``source: csv``: a CSV file with columns ``path,label[,split]``, or a column per class
(one-hot, ``data.classes`` naming them) (multi-label: the label column names every class of
the image joined by ``|``, empty for none, or a column per class holding 1/0/-1 as CheXpert
ships; detection:
``path,x1,y1,x2,y2,label[,split]``, one row per box); paths relative to the CSV file's folder.
With ``data.spatial_dims: 3`` the paths are volume files (NIfTI/NRRD): a class each (or any
number of them, multi-label, either layout), or for detection
``path,x1,y1,z1,x2,y2,z2,label[,split]`` boxes in world millimetres."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from ...common.dims import dims
from ..labels import labels_of
from . import Loaded, Source, read_files
from ..options import FileSplits, MaskClasses, NoneLabel, SourceOptions


class CSVOptions(MaskClasses, NoneLabel, FileSplits):
    path: Optional[str] = Field(None, description="the CSV file (image paths relative to it)")
    uncertain: Literal["error", "zeros", "ones"] = Field("error", description="multi-label CSV with a column per "
                                                         "class: what a -1 (uncertain) becomes (CheXpert's "
                                                         "U-Zeros, U-Ones); error: stop at the first")
    groups: list[str] = Field([], description="columns (e.g. site, sex, age_band) whose values split every test "
                                              "metric per group, with the worst group and the gap between groups")


class CSVUnlabeled(SourceOptions):
    path: Optional[str] = Field(None, description="a CSV file with a path column (paths relative to it)")


class CSV(Source):
    name = "csv"
    requires = "path"
    Options = CSVOptions
    Unlabeled = CSVUnlabeled
    volume_files = True
    unlabeled_requires = "path"  # data.unlabeled.path

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        path = Path(cfg.path)
        records, extra = labels_of(task).csv(path, cfg, dims(cfg.dims))
        return read_files(cfg)(cfg, seed, task, saved_splits, quiet, records, path.parent, f"data.path '{path}'",
                               **extra)

    def describe(self, cfg, task) -> str:
        return f"CSV {cfg.path}"

    def spatial_dims(self, cfg) -> int | None:
        return None  # image files, or volume files with spatial_dims: 3


    def unlabeled(self, cfg, task, seed, channels, size, patch, quiet):
        """The files in a CSV's ``path`` column (``data.unlabeled.path``); other columns ignored."""
        from ..unlabeled import csv_files, listed_files

        return listed_files(csv_files(cfg), cfg, seed, channels, size, patch, quiet)
