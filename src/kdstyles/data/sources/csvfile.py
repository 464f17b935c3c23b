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

from ...dims import dims
from ...errors import KDError
from ...fileio import read_csv
from ..files import Record, split_value
from . import Loaded, Source, from_files, from_volume_files


POSITIVE, NEGATIVE, UNCERTAIN = {"1", "1.0"}, {"0", "0.0", ""}, {"-1", "-1.0"}


def list_csv(path: Path, multilabel: bool = False, classes: list[str] | None = None,
             uncertain: str = "error") -> list[Record]:
    """The rows as records. A file without a label column has a column per class, named by
    ``classes`` (others, such as age or view, are ignored): one-hot for classification (ISIC's
    ground truth: exactly one 1 per row), or as CheXpert ships it for ``multilabel`` (1
    present, 0 or empty absent, -1 uncertain: ``uncertain`` says zeros, ones or error), each
    record's label joining the present ones with ``|``. ``multilabel``: the label (names
    joined by ``|``) may be empty."""
    if not path.is_file():
        raise KDError(f"data.path: CSV file '{path}' does not exist")
    rows = read_csv(path, "give columns path,label[,split] or path and a column per class", required=("path",))
    wide = _class_columns(path, rows, classes, multilabel) if rows and "label" not in rows[0] else None
    records = []
    for line, row in enumerate(rows, start=2):
        split = split_value(row.get("split", ""), f"CSV file '{path}' line {line}")
        label = _present(path, line, row, wide, uncertain) if wide is not None else row["label"]
        if wide is not None and not multilabel and (not label or "|" in label):
            raise KDError(f"CSV file '{path}' line {line}: {'no class column' if not label else label.replace('|', ', ')}"
                          f"{' are' if '|' in label else ' is'} 1; a row of one class has exactly one class column at "
                          "1 (several per image: task: multilabel)")
        if not row["path"] or not (label or multilabel):
            raise KDError(f"CSV file '{path}' line {line}: empty {'path' if multilabel else 'path or label'}")
        records.append(Record((path.parent / row["path"]), label, split))
    if not records:
        raise KDError(f"CSV file '{path}' has no rows")
    return records


def _class_columns(path: Path, rows: list[dict[str, str]], classes: list[str] | None, multilabel: bool
                   ) -> list[str]:
    """``data.classes``, checked to be columns of a CSV with a column per class (one-hot for
    classification, as ISIC's ground truth: a 1 in the image's class; multi-hot for
    multi-label)."""
    columns = [c for c in rows[0] if c not in ("path", "split")]
    if classes is None:
        raise KDError(f"data.classes: CSV file '{path}' has no label column; name its class columns in data.classes "
                      f"(of {', '.join(columns)}), or give a label column" + (
                          " of names joined by |" if multilabel else " (columns path,label[,split])"))
    absent = [c for c in classes if c not in columns]
    if absent:
        raise KDError(f"data.classes: '{absent[0]}' is not a column of CSV file '{path}' "
                      f"(columns: {', '.join(columns)})")
    return list(classes)


def _present(path: Path, line: int, row: dict[str, str], classes: list[str], uncertain: str) -> str:
    """The classes whose column holds 1 (or -1 under ``uncertain: ones``), joined by ``|``."""
    present = []
    for c in classes:
        value = row[c]
        if value in UNCERTAIN and uncertain != "error":
            value = "1" if uncertain == "ones" else "0"
        if value in UNCERTAIN:
            raise KDError(f"CSV file '{path}' line {line}: '{c}' is -1 (uncertain); set data.uncertain: zeros or "
                          "ones (CheXpert's U-Zeros / U-Ones)")
        if value not in POSITIVE | NEGATIVE:
            raise KDError(f"CSV file '{path}' line {line}: '{c}' is '{value}'; a class column holds 1, 0, empty or -1")
        if value in POSITIVE:
            present.append(c)
    return "|".join(present)


class CSV(Source):
    name = "csv"
    requires = "path"

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        path = Path(cfg.path)
        if dims(cfg.dims).volumes:
            if task.boxes:
                from ..boxfiles import read_box_csv

                records, listing = read_box_csv(path, cfg.classes, dims=3)
                return from_volume_files(cfg, seed, task, saved_splits, quiet, records, path.parent,
                                         f"data.path '{path}'", boxes_of=listing)
            return from_volume_files(cfg, seed, task, saved_splits, quiet, list_csv(path, task.multilabel, cfg.classes,
                                                                              cfg.uncertain),
                                     path.parent, f"data.path '{path}'")
        if task.boxes:
            from ..boxfiles import read_box_csv

            records, listing = read_box_csv(path, cfg.classes)
            return from_files(cfg, seed, task, saved_splits, quiet, records, path.parent, f"data.path '{path}'",
                              boxes_of=listing)
        records = list_csv(path, task.multilabel, cfg.classes, cfg.uncertain)
        return from_files(cfg, seed, task, saved_splits, quiet, records, path.parent, f"data.path '{path}'")

    def describe(self, cfg, task) -> str:
        return f"CSV {cfg.path}"

    def volumes(self, cfg) -> bool | None:
        return None  # image files, or volume files with spatial_dims: 3
