"""Records of labelled files: image (or volume) files in class folders, and the rows of a
CSV file naming files and their classes. The label kinds (:mod:`kdstyles.data.labels`) and
the file sources read through these."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import KDError
from ..store.fileio import read_csv
from ..common.dims import Dims, dims
from ..store.imageio import visible_dirs, visible_files
from .files import Record, split_folders, split_value

IGNORED = {"thumbs.db", "desktop.ini"}  # what file browsers leave in folders


def list_folder(root: Path, space: Dims = dims(2)) -> tuple[list[Record], Counter]:
    """Records of ``root/<class>/<file>`` (or inside ``root/train/`` etc.): the input files of
    ``space`` (images, or NIfTI/NRRD volumes); and the other files found there, counted by
    suffix (hidden files and file browsers' own left out) for a warning."""
    fits, kind, suffixes = space.takes, space.unit, space.suffixes
    if not root.is_dir():
        raise KDError(f"data.root: folder '{root}' does not exist")
    bases = split_folders(root)
    records: list[Record] = []
    others: Counter = Counter()
    for base, split in bases:
        class_dirs = visible_dirs(base)
        if not class_dirs:
            raise KDError(f"data.root: '{base}' has no class subfolders; expected {base}/<class>/<{kind[:-1]} files>")
        for d in class_dirs:
            found = visible_files(d)
            files = [f for f in found if fits(f)]
            if not files:
                raise KDError(f"data.root: class folder '{d}' holds no {kind} ({', '.join(suffixes)})")
            records += [Record(f, d.name, split) for f in files]
            others.update(f.suffix.lower() or f.name for f in found if not fits(f) and f.name.lower() not in IGNORED)
    return records, others



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
