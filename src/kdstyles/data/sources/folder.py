"""``source: folder``: images in class folders, ``root/<class>/<image>`` (optionally inside
``root/train/``, ``val/``, ``test/``), or volume files there with ``data.spatial_dims: 3``; for dense tasks ``root/images/`` and ``root/masks/``
(Kvasir-SEG / CVC-ClinicDB layout, see :mod:`kdstyles.data.segfolder`); for detection the
same layout, boxes from the masks or ``kavsir_bboxes.json`` (:mod:`kdstyles.data.boxfiles`)."""

from __future__ import annotations

from pathlib import Path

from ...errors import KDError
from ...imageio import IMAGE_SUFFIXES, VOLUME_SUFFIXES, is_volume
from .. import segfolder
from ..files import SPLITS, Record
from . import Loaded, Source, from_files, from_volume_files


def list_folder(root: Path, volumes: bool = False) -> list[Record]:
    """Records of ``root/<class>/<file>`` (or inside ``root/train/`` etc.): image files, or
    volume files (NIfTI/NRRD) with ``volumes``."""
    fits = is_volume if volumes else (lambda f: f.suffix.lower() in IMAGE_SUFFIXES)
    kind, suffixes = ("volumes", VOLUME_SUFFIXES) if volumes else ("images", IMAGE_SUFFIXES)
    if not root.is_dir():
        raise KDError(f"data.root: folder '{root}' does not exist")
    bases = [(root / s, s) for s in SPLITS if (root / s).is_dir()] if (root / "train").is_dir() else [(root, None)]
    records = []
    for base, split in bases:
        class_dirs = sorted(d for d in base.iterdir() if d.is_dir())
        if not class_dirs:
            raise KDError(f"data.root: '{base}' has no class subfolders; expected {base}/<class>/<{kind[:-1]} files>")
        for d in class_dirs:
            files = sorted(f for f in d.rglob("*") if fits(f) and f.is_file())
            if not files:
                raise KDError(f"data.root: class folder '{d}' holds no {kind} ({', '.join(suffixes)})")
            records += [Record(f, d.name, split) for f in files]
    return records


class Folder(Source):
    name = "folder"
    requires = "root"

    def load(self, cfg, seed, task, run_dir, quiet) -> Loaded:
        root = Path(cfg.root)
        where = f"data.root '{root}'"
        if cfg.dims == 3:
            return from_volume_files(cfg, seed, task, run_dir, quiet, list_folder(root, volumes=True), root, where)
        if task.boxes:
            from ..boxfiles import read_kvasir

            records, boxes, names = read_kvasir(root, cfg.classes)
            return from_files(cfg, seed, task, run_dir, quiet, records, root, where, boxes_of=(boxes, names))
        if task.dense:
            records, mask_of = segfolder.list_pairs(root)
            return from_files(cfg, seed, task, run_dir, quiet, records, root, where, mask_of)
        return from_files(cfg, seed, task, run_dir, quiet, list_folder(root), root, where)

    def describe(self, cfg, task) -> str:
        return f"{'volume' if cfg.dims == 3 else 'image'} folder {cfg.root}"

    def volumes(self, cfg) -> bool | None:
        return None  # image files, or volume files with spatial_dims: 3
