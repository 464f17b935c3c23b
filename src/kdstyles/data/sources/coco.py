"""``source: coco``: a COCO-format detection JSON (``data.path``) with its images in
``data.root`` (default: the JSON's folder); detection only."""

from __future__ import annotations

from pathlib import Path

from . import FILE_SPLITS, Loaded, Source, from_files


class COCO(Source):
    name = "coco"
    requires = "path"
    reads = frozenset({"path", "root", "classes"}) | FILE_SPLITS

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        from ..boxfiles import read_coco

        path = Path(cfg.path)
        root = Path(cfg.root) if cfg.root else None
        records, listing = read_coco(path, root, cfg.classes)
        return from_files(cfg, seed, task, saved_splits, quiet, records, root or path.parent, f"data.path '{path}'",
                          boxes_of=listing)

    def describe(self, cfg, task) -> str:
        return f"COCO file {cfg.path}"
