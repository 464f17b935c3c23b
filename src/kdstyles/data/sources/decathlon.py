"""``source: decathlon``: 3D segmentation in the Medical Segmentation Decathlon layout,
``root/imagesTr/*.nii.gz`` with label maps ``root/labelsTr/*.nii.gz`` and (optionally)
``root/dataset.json``, whose ``training`` list pairs them, ``labels`` names the classes and
``modality`` the channels. Without dataset.json, images and labels pair by file name.
``imagesTs/`` (no labels) is not used for scoring: val and test splits are drawn from the
labelled cases (seeded, saved in the run folder as splits.csv).

Every volume is read once, reoriented, resampled and windowed (:mod:`kdstyles.data.volumes`)
and kept in memory as uint8; training takes patches, evaluation slides windows over whole
volumes (``data.patch_size``, default 64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import Field

from ...errors import KDError
from ...store.fileio import read_json
from .. import checks, files, volumes
from ..labels import labels_of
from . import Loaded, Source, Split, progress, split_assignment
from ..options import FileSplits, MaskClasses


class DecathlonOptions(MaskClasses, FileSplits):
    root: Optional[str] = Field(None, description="the task folder: imagesTr/, labelsTr/ and (optionally) "
                                                  "dataset.json")

DEFAULT_PATCH = 64


def read_layout(root: Path, classes: list[str] | None, num_classes: int
                ) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """(image, label map) pairs, the class names and the modality (channel) names of a
    Decathlon folder (none without dataset.json)."""
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (root, images_dir, labels_dir):
        if not d.is_dir():
            raise KDError(f"data.root: '{d}' does not exist; a Decathlon folder holds imagesTr/, labelsTr/ "
                          "and dataset.json")
    meta_path = root / "dataset.json"
    meta = read_json(meta_path, "it is the Decathlon task's description; restore it or delete it to pair "
                                "imagesTr/ and labelsTr/ by file name") if meta_path.is_file() else {}
    if not isinstance(meta, dict):
        raise KDError(f"'{meta_path}' is not a JSON object (expected keys training, labels, modality)")
    pairs = []
    if meta.get("training"):
        for i, entry in enumerate(meta["training"]):
            if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
                raise KDError(f"'{meta_path}': training[{i}] needs an image and a label path")
            pairs.append((root / entry["image"], root / entry["label"]))
    else:
        labels = {volumes.stem(p): p for p in labels_dir.iterdir() if volumes.is_volume(p)}
        for img in sorted(p for p in images_dir.iterdir() if volumes.is_volume(p)):
            name = volumes.stem(img)
            if name not in labels:  # nnU-Net names channels case_0000.nii.gz, the label case.nii.gz
                name = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
            if name not in labels:
                raise KDError(f"volume '{img}' has no label map in '{labels_dir}' (matched by file name)")
            pairs.append((img, labels[name]))
    if not pairs:
        raise KDError(f"data.root: '{images_dir}' holds no volumes ({', '.join(volumes.VOLUME_SUFFIXES)})")
    named = meta.get("labels")
    if classes is None and isinstance(named, dict) and named:
        try:
            order = sorted(named, key=int)
        except ValueError:
            raise KDError(f"'{meta_path}': labels keys must be the label values 0..K-1") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise KDError(f"'{meta_path}': labels must name the values 0..{len(order) - 1} without gaps")
        classes = [str(named[k]) for k in order]
    if classes is None:
        classes = ["background", "foreground"] if num_classes == 2 else [str(k) for k in range(num_classes)]
    modality = meta.get("modality") or meta.get("channel_names")
    order = sorted(modality, key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k))) \
        if isinstance(modality, dict) else []  # "0", "1", ..., "10" in number order
    modality_names = [str(modality[k]) for k in order]
    return pairs, classes, modality_names


class Decathlon(Source):
    name = "decathlon"
    requires = "root"
    Options = DecathlonOptions
    volume_files = True
    patches = True

    def load(self, cfg, seed, task, saved_splits, quiet) -> Loaded:
        root = Path(cfg.root)
        where = f"data.root '{root}'"
        if cfg.image_size is not None:
            raise KDError("data.image_size: Decathlon volumes keep their own size (after data.spacing); the network "
                          "input is data.patch_size")
        pairs, names, modality = read_layout(root, cfg.classes, cfg.num_classes)
        stored = len(modality) or None  # channels in every image file (without dataset.json: the first's)
        listed = f"{root / 'dataset.json'} lists {stored} modalities ({', '.join(modality)})"
        outside = [m for m in cfg.modalities or [] if stored and m >= stored]
        if outside:
            raise KDError(f"data.modalities: {outside[0]} is not a channel; {listed}, indices 0..{stored - 1}")
        report = checks.DataReport(["no foreground", "foreground"])
        prepared, records = [], []
        with progress(quiet) as bar:
            task_id = bar.add_task(f"reading {len(pairs)} volumes", total=len(pairs))
            for image, label in pairs:
                try:
                    vol = volumes.prepare_cached(image, label, cfg, len(names), cfg.volume_cache)
                    if stored is None:
                        stored, listed = vol.image.shape[-1], f"the first volume has {vol.image.shape[-1]}"
                    if vol.image.shape[-1] != stored:
                        raise KDError(f"volume '{image}' has {vol.image.shape[-1]} channels, {listed}")
                    vol = volumes.select_modalities(vol, cfg.modalities, image)
                except KDError as exc:
                    report.problems.append(checks.Problem("error", str(exc)))
                    vol = None
                prepared.append(vol)
                records.append(files.Record(image, "1" if vol is not None and vol.mask.any() else "0", None))
                bar.advance(task_id)
        report.raise_errors()
        channels = len(cfg.modalities) if cfg.modalities else stored
        if cfg.channels is not None and cfg.channels != channels:
            raise KDError(f"data.channels: {cfg.channels}, but {listed}; leave data.channels out")
        labels = np.array([int(r.label) for r in records], dtype=np.int64)
        kind = labels_of(task)
        assignment = split_assignment(cfg, seed, saved_splits, records, kind.strata(labels), root, where)
        splits = {}
        for split in files.SPLITS:
            idx = [i for i, s in enumerate(assignment) if s == split]
            item_names = [f"'{records[i].path}'" for i in idx]
            kind.check(split, labels[idx], 2, item_names, report)
            splits[split] = Split([prepared[i].image for i in idx], labels[idx], [records[i].path for i in idx],
                                  [prepared[i].mask for i in idx],
                                  [checks.array_digest(prepared[i].image) for i in idx], item_names,
                                  spacing=[prepared[i].spacing for i in idx])
        for vol in prepared:
            shape = "x".join(map(str, vol.image.shape[:3]))
            report.sources[shape] = report.sources.get(shape, 0) + 1
        table = (records, [r.label for r in records], assignment, root)
        patch = cfg.patch_size or DEFAULT_PATCH
        return Loaded(splits, names, channels, patch, report, where, table, patch=patch)

    def describe(self, cfg, task) -> str:
        return f"Decathlon volumes {cfg.root}"

    def spatial_dims(self, cfg) -> int | None:
        return 3
