"""Sources of image files (folder, CSV): records of (file, label, split), the class list,
and the split assignment.

A split that does not exist is made from the training files, stratified by class, with
the run's seed; the assignment is saved in the run folder (``splits.csv``) and read back
from there on resume and evaluate, so they always see the same split.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KDError
from ..store.fileio import read_csv
from ..store.imageio import visible_dirs

SPLITS = ("train", "val", "test")
# What data sets call their splits (Kaggle's "Training"/"Testing", HF's "validation"), any case.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}
SPLIT_HELP = "train|training, val|valid|validation, test|testing (any case)"


def split_of(name: str) -> str | None:
    """The split a folder name or a CSV split value stands for (None: not a split name)."""
    return SPLIT_NAMES.get(name.strip().lower())


def split_value(value: str, where: str) -> str | None:
    """A CSV row's split column: None when empty (to be assigned), else the split it names;
    anything else is an error naming ``where`` (file and line)."""
    if not value:
        return None
    split = split_of(value)
    if split is None:
        raise KDError(f"{where}: split '{value}' is not one of {SPLIT_HELP}")
    return split


def split_folders(root: Path) -> list[tuple[Path, str | None]]:
    """``root`` itself (class folders, or images/ and masks/, directly inside), or its split
    folders (``train/``, ``Training/``, ``validation/``...; see :data:`SPLIT_NAMES`) with the
    split each holds. A folder beside split folders that is not one, two folders for one
    split, or split folders without a training one are errors: none is silently left out or
    taken for a class."""
    named = [(d, split_of(d.name)) for d in visible_dirs(root)]
    if not any(split for _, split in named):
        return [(root, None)]
    where = f"data.root: '{root}' holds split folders ({', '.join(d.name for d, s in named if s)})"
    for d, split in named:
        if split is None:
            raise KDError(f"{where} and '{d.name}', which is not one ({SPLIT_HELP}); move it out of the way, or "
                          "put everything inside the split folders")
    seen: dict[str, str] = {}
    for d, split in named:
        if split in seen:
            raise KDError(f"{where}: '{seen[split]}' and '{d.name}' are both the {split} split; keep one")
        seen[split] = d.name
    if "train" not in seen:
        raise KDError(f"{where} but none for training (train/ or training/); kdstyles makes missing val and test "
                      "splits from the training images, not the other way round")
    return [(d, split) for d, split in named]


@dataclass
class Record:
    path: Path
    label: str
    split: str | None  # None: to be assigned


def class_list(records: list[Record], classes: list[str] | None, where: str, external: bool = False) -> list[str]:
    """The class names, in order; labels outside a given list and empty classes are errors (not
    for an ``external`` test set: another site may have no case of a class)."""
    present = {r.label for r in records}
    if classes is None:
        numeric = all(lbl.lstrip("-").isdigit() for lbl in present)
        return sorted(present, key=int if numeric else str)
    for r in records:
        if r.label not in classes:
            raise KDError(f"{where}: '{r.path}' has label '{r.label}', which is not in data.classes "
                          f"({', '.join(classes)})")
    empty = [c for c in classes if c not in present]
    if empty and not external:
        raise KDError(f"{where}: class '{empty[0]}' of data.classes has no images")
    return list(classes)


def multi_hot(records: list[Record], classes: list[str] | None, where: str, none_label: str | None = None
              ) -> tuple[list[str], np.ndarray]:
    """Multi-label records (``label``: names joined by ``|``, empty or ``none_label`` for none):
    the class names (``classes``, else every name used, sorted) and the (N, K) uint8 multi-hot
    labels."""
    sets = [[n.strip() for n in r.label.split("|") if n.strip() and n.strip() != none_label] for r in records]
    names = list(classes) if classes is not None else sorted({n for s in sets for n in s})
    index = {n: k for k, n in enumerate(names)}
    labels = np.zeros((len(records), len(names)), np.uint8)
    for i, (r, found) in enumerate(zip(records, sets)):
        unknown = [n for n in found if n not in index]
        if unknown:
            raise KDError(f"{where}: '{r.path}' has label '{unknown[0]}', which is not in data.classes "
                          f"({', '.join(names)})")
        labels[i, [index[n] for n in found]] = 1
    if len(names) < 2:
        raise KDError(f"{where}: names {len(names)} label(s) ({', '.join(names) or 'none'}); multi-label "
                      "classification needs at least two, joined by '|' in the label column")
    return names, labels


def assign_splits(records: list[Record], strata: np.ndarray, seed: int, val_fraction: float,
                  test_fraction: float) -> list[str]:
    """Fill missing splits: stratified (``strata``: one group per record, its class; the label
    kind's :meth:`~kdstyles.data.labels.Labels.strata`), seeded, from the files without a split
    (or from train when val/test are missing)."""
    splits = [r.split for r in records]
    have = {s for s in splits if s is not None}
    missing = [s for s in ("val", "test") if s not in have]
    if not missing:
        return [s or "train" for s in splits]
    pool = [i for i, s in enumerate(splits) if s in (None, "train")]
    fractions = {"val": val_fraction, "test": test_fraction}
    rng = np.random.default_rng([seed, 7919])
    out = [s or "train" for s in splits]
    for cls in np.unique(strata[pool]):
        members = [i for i in pool if strata[i] == cls]
        rng.shuffle(members)
        start = 0
        for s in missing:
            n = int(round(len(members) * fractions[s]))
            n = min(max(n, 1), max(len(members) - start - 1, 0))  # keep at least one for training
            for i in members[start:start + n]:
                out[i] = s
            start += n
    return out


def write_splits(path: Path, records: list[Record], labels: list[str], splits: list[str], base: Path) -> None:
    import io

    from ..store.fileio import write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "split"])
    for r, lbl, s in zip(records, labels, splits, strict=True):
        try:
            shown = r.path.resolve().relative_to(base.resolve())
        except ValueError:
            shown = r.path.resolve()
        w.writerow([shown.as_posix(), lbl, s])
    write_text(path, buf.getvalue())


def read_splits(path: Path, records: list[Record], base: Path) -> list[str] | None:
    """The saved assignment for these records, or None when it no longer matches the files."""
    rows = read_csv(path, "delete it to split the files again (the run then differs from before), or start a "
                          "new run", required=("path", "split"), own=True)
    saved = {(base / row["path"]).resolve(): row["split"] for row in rows}
    try:
        return [saved[r.path.resolve()] for r in records]
    except KeyError:
        return None
