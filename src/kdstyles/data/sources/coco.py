"""``source: coco``: a COCO-format detection JSON (``data.path``) with its images in
``data.root`` (default: the JSON's folder); detection only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import Field

from . import Loaded, Source, from_files
from ..options import ClassList, FileSplits


class COCOOptions(ClassList, FileSplits):
    path: Optional[str] = Field(None, description="the COCO-format JSON file")
    root: Optional[str] = Field(None, description="the folder of its images (default: the JSON file's)")


class COCO(Source):
    name = "coco"
    requires = "path"
    Options = COCOOptions

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        from ..boxfiles import read_coco

        path = Path(cfg.path)
        root = Path(cfg.root) if cfg.root else None
        records, listing = read_coco(path, root, cfg.classes)
        return from_files(cfg, seed, task, saved_splits, quiet, records, root or path.parent, f"data.path '{path}'",
                          boxes_of=listing)

    def describe(self, cfg, task) -> str:
        return f"COCO file {cfg.path}"
