"""Data sources, registered by name. A built-in source = one file here (found by
:func:`~kdstyles.common.registry.discover`); a source of your own = one plugin file calling :func:`register_source`
(kdstyles.plugins).

A source turns the ``data`` config into :class:`Loaded`: every split's images (uint8
arrays in memory, or files decoded on access), labels, masks for dense tasks (those whose
labels are per-pixel), the class names, channels and size, and the problems found on the
way (errors and warnings in a :class:`~kdstyles.data.checks.DataReport`). Two helpers do
the shared work: :func:`from_arrays` for in-memory sets (synthetic, MedMNIST) and
:func:`from_files` for image files with a class each or a mask each (folder, CSV).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...common.dims import dims as space
from ...errors import KDError, check_new_name
from ...store.imageio import image_size
from .. import checks, files, segfolder
from ..fit import fit_arrays as _fit_arrays, fit_volumes as _fit_volumes
from ..labels import labels_of
from ..options import SourceOptions, option




def resolve_input(cfg: Any, task: Any, channels: int | None = None, side: int | None = None) -> tuple[int, int]:
    """The channels and side the network takes: ``data.channels`` / ``data.image_size`` where
    set, else the source's defaults (:meth:`Source.default_input`), else the data's own
    (``channels``, ``side``: what the files hold). The one place these defaults are decided;
    the result is the data bundle's :class:`~kdstyles.common.inputs.Inputs`, recorded in run.json."""
    default_channels, default_side = SOURCES[cfg.source].default_input(cfg, task)
    return cfg.channels or default_channels or channels, cfg.image_size or default_side or side


@dataclass
class Split:
    images: np.ndarray | None  # (N, H, W, C) uint8 in memory, or None: decode ``paths`` on access
    labels: np.ndarray  # (N,) int64 class; dense tasks: 1 if the mask has foreground
    paths: list[Path] | None = None
    masks: np.ndarray | None = None  # dense tasks: (N, H, W) uint8 class indices
    digests: list[str | None] = field(default_factory=list)  # content hashes (duplicates across splits)
    names: list[str] = field(default_factory=list)  # how messages name each item
    boxes: list[np.ndarray] | None = None  # detection: per image (m, 5) x1, y1, x2, y2, class in pixels
    spacing: list[tuple[float, ...]] | None = None  # volumes from files: each one's voxel size in mm


@dataclass
class Loaded:
    splits: dict[str, Split]
    class_names: list[str]
    channels: int
    size: int
    report: checks.DataReport
    where: str  # the config key and place messages name, e.g. "data.root 'data/skin'"
    split_table: tuple | None = None  # file sources: (records, labels, splits, base) for splits.csv
    patch: int | None = None  # volumes too large for one forward: the default training patch side


class Source:
    name: ClassVar[str]
    # its own keys of the data section (a SourceOptions model: its fields, bounds and descriptions);
    # a key of another source set in a config is refused in one line instead of silently ignored
    Options: ClassVar[type[SourceOptions]] = SourceOptions
    requires: ClassVar[str | None] = None  # the key of its Options it cannot do without
    # what an external set of this source (data.external) has other than its Options' defaults
    external_defaults: ClassVar[dict[str, Any]] = {}
    tasks: ClassVar[tuple[str, ...]] = ()  # tasks it reads for, beside those whose `sources` name it
    patches: ClassVar[bool] = False  # trains on random patches of its volumes by default
    # `kdstyles check` may read a few items of each split instead of all (generated data: every
    # item passes the same checks, and the rest only costs time)
    previews: ClassVar[bool] = False
    volume_files: ClassVar[bool] = False  # reads NIfTI/NRRD files, whose channels data.modalities selects

    def default_input(self, cfg: Any, task: Any) -> tuple[int | None, int | None]:
        """The channels and side of the network input when ``data.channels`` / ``data.image_size``
        are left out (None: the data's own, known once it is read). Image files: RGB at
        224 px; volume files: a channel per modality (one) at 64 voxels a side."""
        kind = space(cfg.dims)
        return len(cfg.modalities) if cfg.modalities else kind.file_channels, kind.file_side

    def load(self, cfg: Any, seed: int, task: Any, saved_splits: Path | None, quiet: bool) -> Loaded:
        """``saved_splits``: the run folder's record of which file went to which split, read back
        when it exists (None: no run folder)."""
        raise NotImplementedError

    def describe(self, cfg: Any, task: Any) -> str:
        """What the data is, in a few words (model cards)."""
        raise NotImplementedError

    def spatial_dims(self, cfg: Any) -> int | None:
        """The spatial dimensions of this data: 2 (images), 3 (volumes), or None: either, as
        ``data.spatial_dims`` says."""
        return 2

    # images without labels (``data.unlabeled`` naming this source): its own keys of data.unlabeled,
    # the one it cannot do without, and how it lists them (a source that does not override it gives none)
    Unlabeled: ClassVar[type[SourceOptions]] = SourceOptions
    unlabeled_requires: ClassVar[str | None] = None

    def unlabeled(self, cfg: Any, task: Any, seed: int, channels: int, size: int, patch: int | None,
                  quiet: bool) -> Any:
        """Images without labels as :class:`~kdstyles.data.unlabeled.Unlabeled`, fitted to the
        labelled data's ``channels`` and ``size`` (``patch``: volumes keep their own shape);
        ``cfg`` is the ``data`` section, its ``unlabeled`` set. The helpers of
        :mod:`kdstyles.data.unlabeled` do the shared work (:func:`~kdstyles.data.unlabeled.from_arrays`,
        :func:`~kdstyles.data.unlabeled.from_files`, :func:`~kdstyles.data.unlabeled.draw`)."""
        raise NotImplementedError


    # an external test set (``data.external``) of this source: which of its splits it is by default
    external_split: ClassVar[str] = "all"

    def external(self, cfg: Any, task: Any, seed: int, split: str, quiet: bool) -> Loaded:
        """An external test set's images as :class:`Loaded` with one split, ``test``: the source's
        splits read from ``cfg`` (the data section the set is read with:
        :meth:`~kdstyles.config.sections.DataConfig.external_data`), ``split`` of them, or every
        one put together (``all``)."""
        loaded = self.load(cfg, seed, task, None, quiet)
        chosen = list(loaded.splits) if split == "all" else [split]
        if split not in loaded.splits and split != "all":
            raise KDError(f"{loaded.where}: there is no {split} split; allowed: all, {', '.join(loaded.splits)}")
        loaded.splits = {"test": merge_splits([loaded.splits[s] for s in chosen])}
        loaded.split_table = None
        return loaded


def merge_splits(parts: list[Split]) -> Split:
    """Splits put together, in order (images in memory, or files, as the parts hold them)."""
    if len(parts) == 1:
        return parts[0]

    def joined(name: str) -> Any:
        values = [getattr(p, name) for p in parts]
        if any(v is None for v in values):
            return None
        return np.concatenate(values) if isinstance(values[0], np.ndarray) else [x for v in values for x in v]

    return Split(joined("images"), np.concatenate([p.labels for p in parts]), joined("paths"), joined("masks"),
                 [d for p in parts for d in p.digests], [n for p in parts for n in p.names], joined("boxes"),
                 joined("spacing"))


def unlabeled_sources() -> dict[str, Source]:
    """The registered sources that list images without labels (``data.unlabeled.source``)."""
    return {n: s for n, s in SOURCES.items() if type(s).unlabeled is not Source.unlabeled}


def progress(quiet: bool):
    """Reading and checking files: a bar on a terminal, plain lines in a log, nothing when
    ``quiet`` (:class:`kdstyles.common.progress.Steps`)."""
    from ...common.progress import Steps

    return Steps(quiet)


BOX_REPORT = ["no objects", "objects"]  # detection: the image-level label says whether it has boxes


def from_arrays(raw: dict[str, tuple], names: list[str], channels: int, size: int, label: str, task: Any) -> Loaded:
    """In-memory splits ``{split: (images (N, H, W, C), labels[, masks[, boxes]])}`` checked (as
    the task's kind of labels) and fitted to ``channels`` and ``size`` (boxes are scaled with the
    images); items are named ``'<label> <split>[i]'`` in messages."""
    with_boxes = any(len(v) > 3 for v in raw.values())
    report = checks.DataReport(BOX_REPORT if with_boxes else names)
    splits = {}
    for split, (images, labels, *extra) in raw.items():
        masks, boxes = (extra + [None, None])[:2]
        item_names = [f"{label} {split}[{i}]" for i in range(len(labels))]
        labels_of(task).check(split, labels, len(report.class_names), item_names, report)
        if boxes is not None:
            extent = images.shape[1:-1][::-1]  # width, height(, depth): the order of box coordinates
            checks.check_boxes(split, boxes, len(names), extent, item_names, report)
            scale = np.array([size / e for e in extent] * 2 + [1], np.float32)
            boxes = [b * scale for b in boxes]
        splits[split] = Split(_fit_arrays(images, channels, size), labels, None, masks,
                              checks.digest_arrays(images), item_names, boxes)
        shape = "x".join(map(str, images.shape[1:]))
        report.sources[shape] = report.sources.get(shape, 0) + len(images)
    return Loaded(splits, names, channels, size, report, label)


def split_assignment(cfg: Any, seed: int, saved: Path | None, records: list[files.Record], strata: np.ndarray,
                     base: Path, where: str) -> list[str]:
    """Each file's split: as saved in the run folder (``saved``: its splits file; an error when
    the files no longer match it), else the records' own with the missing splits drawn (seeded,
    stratified by ``strata``: the label kind's groups of the records' labels)."""
    assignment = files.read_splits(saved, records, base) if saved is not None and saved.is_file() else None
    if saved is not None and saved.is_file() and assignment is None:
        raise KDError(f"{where}: the files changed since this run was created ({saved} no longer matches); "
                      "start a new run")
    if assignment is None:
        assignment = files.assign_splits(records, strata, seed, option(cfg, "val_fraction"),
                                         option(cfg, "test_fraction"))
    return assignment


def from_volume_files(cfg: Any, seed: int, task: Any, saved_splits: Path | None, quiet: bool,
                      records: list[files.Record], base: Path, where: str, boxes_of: Any = None) -> Loaded:
    """Volume files (NIfTI/NRRD) with a class each (3D classification; multi-label: any number of
    them) or boxes in world mm each (``boxes_of``: a :class:`~kdstyles.data.boxfiles.Listing`; 3D
    detection): every file read once
    (oriented, resampled, windowed: :mod:`kdstyles.data.volumes`), resized to
    ``data.image_size``^3 and kept in memory, boxes carried onto that grid; the split
    assignment as for image files. Detection with ``data.patch_size`` keeps each prepared
    volume's own grid (training takes patches, evaluation slides windows)."""
    from ...common.boxes import world_to_grid
    from .. import volumes

    patch = cfg.patch_size if boxes_of is not None else None
    if patch and cfg.image_size is not None:
        raise KDError("data.image_size: with data.patch_size volumes keep their own size (after data.spacing) and "
                      "the network input is the patch; leave data.image_size out (--set data.image_size=null)")
    channels, size = resolve_input(cfg, task)
    size = patch or size
    if boxes_of is not None:
        found, names = boxes_of.boxes, boxes_of.names
        for r in records:
            r.label = "1" if len(found[str(r.path)]) else "0"
        labels = np.array([int(r.label) for r in records], dtype=np.int64)
        report = checks.DataReport(BOX_REPORT)
    else:
        names, labels = labels_of(task).of_records(records, cfg, where)
        report = checks.DataReport(names)
    arrays: list[np.ndarray | None] = []
    grid_boxes: list[np.ndarray] = []
    extents: list[tuple[int, ...]] = []  # each volume's x, y, z extent in voxels (detection)
    spacing: list[tuple[float, ...] | None] = []
    with progress(quiet) as bar:
        task_id = bar.add_task(f"reading {len(records)} volumes", total=len(records))
        for r in records:
            try:
                prepared = volumes.prepare_cached(r.path, None, cfg, use_cache=cfg.volume_cache)
                prepared = volumes.select_modalities(prepared, cfg.modalities, r.path)
                vol = prepared.image
                shape = "x".join(map(str, vol.shape[:3]))
                report.sources[shape] = report.sources.get(shape, 0) + 1
                arrays.append(_fit_volumes(vol[None], channels, None if patch else size)[0])
                spacing.append(prepared.spacing)
                if boxes_of is not None:  # world mm -> voxel edges of the prepared grid
                    world = found[str(r.path)]
                    grid_boxes.append(np.c_[world_to_grid(world, prepared.affine), world[:, -1:]].astype(np.float32))
                    extents.append(vol.shape[:3][::-1])  # x, y, z extent in voxels
            except KDError as exc:
                report.problems.append(checks.Problem("error", str(exc)))
                arrays.append(None)
                spacing.append(None)
                grid_boxes.append(np.zeros((0, 7), np.float32))
                extents.append((1, 1, 1))  # no boxes to check
            bar.advance(task_id)
    if boxes_of is not None:
        checks.check_boxes("data", grid_boxes, len(names), extents,
                           [f"'{r.path}' (world boxes on its prepared grid)" for r in records], report,
                           [boxes_of.origins[str(r.path)] for r in records])
        if not patch:  # -> the training grid
            grid_boxes = [b * np.array([size / e for e in extent] * 2 + [1], np.float32)
                          for b, extent in zip(grid_boxes, extents)]
    report.raise_errors()
    assignment = split_assignment(cfg, seed, saved_splits, records, labels_of(task).strata(labels), base, where)
    splits = {}
    for split in files.SPLITS:
        idx = [i for i, s in enumerate(assignment) if s == split]
        item_names = [f"'{records[i].path}'" for i in idx]
        labels_of(task).check(split, labels[idx], len(report.class_names), item_names, report)
        images = [arrays[i] for i in idx] if patch else np.stack([arrays[i] for i in idx]) if idx else \
            np.zeros((0, size, size, size, channels), np.uint8)  # with patches: volumes of their own shapes
        splits[split] = Split(images, labels[idx], [records[i].path for i in idx], None,
                              checks.digest_arrays(images), item_names,
                              [grid_boxes[i] for i in idx] if boxes_of is not None else None,
                              [spacing[i] for i in idx] if patch else None)
    return Loaded(splits, names, channels, size, report, where, (records, [r.label for r in records], assignment, base),
                  patch=patch)


def from_files(cfg: Any, seed: int, task: Any, saved_splits: Path | None, quiet: bool, records: list[files.Record],
               base: Path, where: str, mask_of: dict[str, Path] | None = None,
               boxes_of: Any = None) -> Loaded:
    """Image files with a class each (``records[i].label``), a mask each (``mask_of``, dense
    tasks) or boxes each (``boxes_of``: a :class:`~kdstyles.data.boxfiles.Listing`, boxes in
    each file's pixels; detection): labels, the split assignment (saved in the run folder and read
    back), and one streaming pass that checks and (when the set fits ``data.cache_gb``)
    decodes every file."""
    channels, size = resolve_input(cfg, task)
    masks_by_path: dict[str, np.ndarray] = {}
    boxes_by_path: dict[str, np.ndarray] = {}
    box_problems = checks.DataReport(BOX_REPORT)
    if boxes_of is not None:  # boxes: checked against each file's size, scaled to the training size
        found, names = boxes_of.boxes, boxes_of.names
        for r in records:
            r.label = "1" if len(found[str(r.path)]) else "0"
        present = [r for r in records if r.path.is_file()]  # a missing one is reported by the decoding pass
        sizes = [image_size(r.path) for r in present]
        checks.check_boxes("data", [found[str(r.path)] for r in present], len(names), sizes,
                           [f"'{r.path}'" for r in present], box_problems,
                           [boxes_of.origins[str(r.path)] for r in present])
        for r, (w, h) in zip(present, sizes):
            boxes_by_path[str(r.path)] = found[str(r.path)] * np.array([size / w, size / h] * 2 + [1], np.float32)
        labels = np.array([int(r.label) for r in records], dtype=np.int64)
        report_names = BOX_REPORT
    elif mask_of is not None:  # masks first: every image has one of its size; the image-level label = has foreground
        k = option(cfg, "num_classes")
        names = option(cfg, "classes") or (["background", "foreground"] if k == 2 else [str(i) for i in range(k)])
        with progress(quiet) as bar:
            task_id = bar.add_task(f"reading {len(records)} masks", total=len(records))
            for r in records:
                wh = image_size(r.path)  # the header only: the size the mask must have
                masks_by_path[str(r.path)] = segfolder.read_mask(mask_of[str(r.path)], k, size, wh)
                r.label = "1" if masks_by_path[str(r.path)].any() else "0"
                bar.advance(task_id)
        labels = np.array([int(r.label) for r in records], dtype=np.int64)
        report_names = ["no foreground", "foreground"]
    else:
        names, labels = labels_of(task).of_records(records, cfg, where)
        report_names = names
    assignment = split_assignment(cfg, seed, saved_splits, records, labels_of(task).strata(labels), base, where)
    keep = len(records) * size * size * channels <= cfg.cache_gb * 1e9
    report = checks.DataReport(report_names)
    report.problems += box_problems.problems
    splits = {}
    with progress(quiet) as bar:
        task_id = bar.add_task(f"checking {len(records)} images", total=len(records))
        advance = lambda n: bar.advance(task_id, n)  # noqa: E731
        for split in files.SPLITS:
            idx = [i for i, s in enumerate(assignment) if s == split]
            paths = [records[i].path for i in idx]
            item_names = [f"'{p}'" for p in paths]
            labels_of(task).check(split, labels[idx], len(report_names), item_names, report)
            images, digests = checks.decode_files(paths, channels, size, keep, report, advance)
            masks = np.stack([masks_by_path[str(p)] for p in paths]) if mask_of is not None and paths else None
            boxes = [boxes_by_path.get(str(p), np.zeros((0, 5), np.float32)) for p in paths] if boxes_of else None
            splits[split] = Split(images, labels[idx], paths, masks, digests, item_names, boxes)
    table = (records, [r.label for r in records], assignment, base)
    return Loaded(splits, names, channels, size, report, where, table)


def read_files(cfg: Any) -> Any:
    """How a file source's records are read for the run's spatial dimensions: image files
    (:func:`from_files`) or volume files (:func:`from_volume_files`)."""
    return {2: from_files, 3: from_volume_files}[cfg.dims]


def _registry() -> dict[str, Source]:
    from ...common.registry import discover

    return {s.name: s() for s in discover(__name__, Source)}


SOURCES: dict[str, Source] = _registry()
BUILT_IN = frozenset(SOURCES)


def sources_for(task: Any) -> tuple[str, ...]:
    """The sources a task reads: its ``sources`` and every registered source that names it in
    its own ``tasks`` (a plugin's source)."""
    return (*task.sources, *(n for n, s in SOURCES.items() if task.name in s.tasks and n not in task.sources))


def register_source(source: Source) -> Source:
    """Make ``source`` a ``data.source`` a config can name (a plugin's call, kdstyles.plugins).
    The built-in names are kept; a plugin registering a name again replaces its own."""
    if not isinstance(source, Source):
        raise KDError(f"register_source: give a Source instance, not {type(source).__name__}")
    check_new_name("source", source.name, BUILT_IN)
    for kind in ("Options", "Unlabeled"):
        model = getattr(source, kind)
        if not (isinstance(model, type) and issubclass(model, SourceOptions)):
            raise KDError(f"register_source: {type(source).__name__}.{kind} must be a SourceOptions subclass (its "
                          "keys; kdstyles.plugins.SourceOptions)")
    if source.requires and source.requires not in source.Options.model_fields:
        raise KDError(f"register_source: {type(source).__name__}.requires names '{source.requires}', which is not a "
                      f"key of its Options ({', '.join(source.Options.model_fields) or 'none'})")
    SOURCES[source.name] = source
    return source

