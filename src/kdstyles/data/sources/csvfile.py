"""``source: csv``: a CSV file with columns ``path,label[,split]`` (multi-label: the label
column names every class of the image joined by ``|``, empty for none; detection:
``path,x1,y1,x2,y2,label[,split]``, one row per box); paths relative to the CSV file's folder.
With ``data.spatial_dims: 3`` the paths are volume files (NIfTI/NRRD): a class each, or for
detection ``path,x1,y1,z1,x2,y2,z2,label[,split]`` boxes in world millimetres."""

from __future__ import annotations

from pathlib import Path

from ...errors import KDError
from ...fileio import read_csv
from ..files import SPLITS, Record
from . import Loaded, Source, from_files, from_volume_files


def list_csv(path: Path, empty_labels: bool = False) -> list[Record]:
    """The rows as records; ``empty_labels``: an empty label is allowed (multi-label: no finding)."""
    if not path.is_file():
        raise KDError(f"data.path: CSV file '{path}' does not exist")
    rows = read_csv(path, "give columns path,label[,split]", required=("path", "label"))
    records = []
    for line, row in enumerate(rows, start=2):
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise KDError(f"CSV file '{path}' line {line}: split '{split}' is not one of {', '.join(SPLITS)}")
        if not row["path"] or not (row["label"] or empty_labels):
            raise KDError(f"CSV file '{path}' line {line}: empty path or label")
        records.append(Record((path.parent / row["path"]), row["label"], split))
    if not records:
        raise KDError(f"CSV file '{path}' has no rows")
    return records


class CSV(Source):
    name = "csv"
    requires = "path"

    def load(self, cfg, seed, task, run_dir, quiet) -> Loaded:
        path = Path(cfg.path)
        if cfg.dims == 3:
            if task.boxes:
                from ..boxfiles import read_box_csv

                records, boxes, names = read_box_csv(path, cfg.classes, dims=3)
                return from_volume_files(cfg, seed, task, run_dir, quiet, records, path.parent,
                                         f"data.path '{path}'", boxes_of=(boxes, names))
            return from_volume_files(cfg, seed, task, run_dir, quiet, list_csv(path), path.parent,
                                     f"data.path '{path}'")
        if task.boxes:
            from ..boxfiles import read_box_csv

            records, boxes, names = read_box_csv(path, cfg.classes)
            return from_files(cfg, seed, task, run_dir, quiet, records, path.parent, f"data.path '{path}'",
                              boxes_of=(boxes, names))
        return from_files(cfg, seed, task, run_dir, quiet, list_csv(path, empty_labels=task.multilabel), path.parent,
                          f"data.path '{path}'")

    def describe(self, cfg, task) -> str:
        return f"CSV {cfg.path}"

    def volumes(self, cfg) -> bool | None:
        return None  # image files, or volume files with spatial_dims: 3
