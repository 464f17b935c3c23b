"""``source: folder``: images in class folders, ``root/<class>/<image>`` (optionally inside
``root/train/``, ``val/``, ``test/``), or volume files there with ``data.spatial_dims: 3``; for dense tasks ``root/images/`` and ``root/masks/``
(Kvasir-SEG / CVC-ClinicDB layout, see :mod:`kdstyles.data.segfolder`); for detection the
same layout, boxes from the masks or ``kavsir_bboxes.json`` (:mod:`kdstyles.data.boxfiles`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ...dims import dims
from ...errors import KDError
from ...imageio import IMAGE_SUFFIXES, VOLUME_SUFFIXES, is_image, is_volume, visible_dirs, visible_files
from .. import segfolder
from ..checks import Problem
from ..files import Record, split_folders
from . import Loaded, Source, from_files, from_volume_files


IGNORED = {"thumbs.db", "desktop.ini"}  # what file browsers leave in folders


def list_folder(root: Path, volumes: bool = False) -> tuple[list[Record], Counter]:
    """Records of ``root/<class>/<file>`` (or inside ``root/train/`` etc.): image files, or
    volume files (NIfTI/NRRD) with ``volumes``; and the other files found there, counted by
    suffix (hidden files and file browsers' own left out) for a warning."""
    fits = is_volume if volumes else is_image
    kind, suffixes = ("volumes", VOLUME_SUFFIXES) if volumes else ("images", IMAGE_SUFFIXES)
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

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        root = Path(cfg.root)
        where = f"data.root '{root}'"
        if dims(cfg.dims).volumes:
            records, others = list_folder(root, volumes=True)
            return _left_out(from_volume_files(cfg, seed, task, saved_splits, quiet, records, root, where), others,
                             "volumes")
        if task.boxes:
            from ..boxfiles import read_kvasir

            records, listing = read_kvasir(root, cfg.classes)
            return from_files(cfg, seed, task, saved_splits, quiet, records, root, where, boxes_of=listing)
        if task.dense:
            records, mask_of = segfolder.list_pairs(root)
            return from_files(cfg, seed, task, saved_splits, quiet, records, root, where, mask_of)
        records, others = list_folder(root)
        return _left_out(from_files(cfg, seed, task, saved_splits, quiet, records, root, where), others, "images")

    def describe(self, cfg, task) -> str:
        return f"{dims(cfg.dims).item} folder {cfg.root}"

    def volumes(self, cfg) -> bool | None:
        return None  # image files, or volume files with spatial_dims: 3
