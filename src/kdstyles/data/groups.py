"""Subgroups (``data.groups``): columns of a CSV source (e.g. ``site``, ``sex``, ``age_band``)
whose values split every test metric per group. Read once with the data, each item's value per
column, in the order of the split's items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import KDError
from ..store.fileio import read_csv

MISSING = "(missing)"  # an empty cell: a group of its own, shown, never dropped


def read_groups(cfg: Any, splits: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per split, per column of ``cfg.groups``: each item's value (the CSV's rows matched to the
    items by path; a path listed on several rows, as detection's boxes are, takes its first row's).
    A column missing from the file, or with one value only, is one line."""
    path = Path(cfg.path)
    rows = read_csv(path, "data.groups names columns of data.path", required=("path", *cfg.groups))
    first: dict[str, dict[str, str]] = {}
    for row in rows:
        first.setdefault(str(path.parent / row["path"]), row)
    for column in cfg.groups:
        values = {row.get(column) or MISSING for row in first.values()}
        if len(values) < 2:
            raise KDError(f"data.groups: column '{column}' of '{path}' has one value only "
                          f"('{next(iter(values))}'); a subgroup analysis needs at least two")
    out = {}
    for split, items in splits.items():
        if items.paths is None:
            raise KDError(f"data.groups: the {split} split's images are not files listed in '{path}'")
        out[split] = {column: [(first.get(str(p)) or {}).get(column) or MISSING for p in items.paths]
                      for column in cfg.groups}
    return out
