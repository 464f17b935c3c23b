"""Datasets, checks, augmentation and loaders for every source.

Every source (:mod:`kdstyles.data.sources`, one file each) ends up as one
:class:`ImageDataset` per split: uint8 images (N, H, W, C) in memory (synthetic, MedMNIST,
and folder/CSV sets that fit ``data.cache_gb``) or image files decoded on access. Before
any training, one streaming pass checks the data (:mod:`kdstyles.data.checks`); for files
that pass also decodes them into the cache.

Augmentation moves whole batches at once, each image as seeded by ``(seed, epoch, index)``
(:class:`~kdstyles.data.augment.BatchAugment`), and the sampler's order is seeded per
``(seed, epoch)``: an epoch's batches are a pure function
of the seed and the epoch number, whatever the number of workers, so a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..common.dims import dims as spatial
from ..store.imageio import read_image
from ..common.inputs import Inputs
from ..errors import KDError
from ..tasks import DEFAULT_TASK, TASKS
from . import checks, files
from .augment import MIN_KEPT, affine_boxes, build_augment, clip_boxes, flip_boxes, pad_boxes
from .dataset import (Batch, EpochBatchSampler, ImageDataset, JointBatchSampler, JointDataset, _mix, batch_collate,
                      joint_collate)
from .labels import labels_of
from .patches import Window, crop_patch
from .sources import SOURCES

__all__ = ["MIN_KEPT", "Batch", "DataBundle", "EpochBatchSampler", "ImageDataset", "JointBatchSampler", "JointDataset",
           "Window", "affine_boxes", "build_augment", "build_data", "clip_boxes", "crop_patch",
           "flip_boxes", "joint_collate", "pad_boxes"]

NORM_SAMPLE = 2000  # images used to estimate the per-channel mean/std


@dataclass
class DataBundle:
    """The splits of one experiment plus what a model needs to know about them."""

    splits: dict[str, ImageDataset]
    class_names: list[str]
    channels: int
    image_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    report: checks.DataReport | None = None
    split_table: tuple | None = None  # folder/csv: (records, labels, splits, base) to save
    sampler: str = "uniform"
    unlabeled: ImageDataset | None = None  # data.unlabeled's images, prepared as the training split's
    unlabeled_about: str | None = None  # what they are, e.g. "10000 images from folder data/more"
    spatial_dims: int = 2
    external: dict[str, ImageDataset] = field(default_factory=dict)  # data.external's sets, by name
    external_about: dict[str, str] = field(default_factory=dict)  # what each is, e.g. "synthetic site 2"

    def dataset(self, name: str) -> ImageDataset:
        """A split (train, val, test) or an external set, by name."""
        return self.splits[name] if name in self.splits else self.external[name]

    @property
    def inputs(self) -> Inputs:
        """What a network takes (``image_size``: the patch side when volumes train on patches)."""
        return Inputs(self.channels, self.image_size, self.spatial_dims, tuple(self.mean), tuple(self.std))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loader(self, split: str, batch_size: int, train: bool = False, num_workers: int = 0,
               seed: int = 0, max_batches: int | None = None, persistent_workers: bool = False,
               shard: tuple[int, int] = (0, 1), unlabeled_batch: int | None = None) -> DataLoader:
        """Batches of (images, labels, sample indices); with ``train``, each a training
        :class:`~kdstyles.data.dataset.Batch`, and for the training split with ``unlabeled_batch``
        and unlabelled images, joint ones that add ``unlabeled_batch`` unlabelled images
        (:func:`joint_collate`)."""
        ds = self.dataset(split)
        balanced = train and self.sampler == "balanced"
        if ds.window:  # whole volumes of any shape: one at a time
            batch_size = 1
        sampler = EpochBatchSampler(len(ds), batch_size, shuffle=train, seed=seed,
                                    max_batches=max_batches if train else None,
                                    weights=ds.kind.draw_weights(ds.labels) if balanced else None, shard=shard)
        collate = batch_collate if train else None
        if train and unlabeled_batch and self.unlabeled is not None:
            sampler = JointBatchSampler(sampler, len(self.unlabeled), unlabeled_batch, seed)
            ds, collate = JointDataset(ds, self.unlabeled), joint_collate
        return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                          persistent_workers=persistent_workers and num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def save(self, folder: Any) -> None:
        """Write the data report and, for folder/CSV sources, the split assignment into a run
        folder (a :class:`~kdstyles.store.runfolder.RunFolder`, which names the files)."""
        from ..store.fileio import write_json

        if self.report is not None:
            write_json(folder.data_report_path, self.report.to_dict())
        if self.split_table is not None:
            records, labels, splits, base = self.split_table
            files.write_splits(folder.splits_path, records, labels, splits, base)


def build_data(cfg: Any, seed: int, folder: Any = None, quiet: bool = True,
               check: bool = True, task: str = DEFAULT_TASK, normalize: str | None = None,
               unlabeled: bool = True) -> DataBundle:
    """Load and check every split of the configured source (``cfg``: the config's ``data``
    section) and fit the normalisation.

    ``check=False`` returns the bundle with its report even when the data has errors
    (``kdstyles data inspect``); otherwise the first error is raised before anything else.
    ``folder``: the run's :class:`~kdstyles.store.runfolder.RunFolder`, whose saved split assignment
    is read back (None: no run folder).
    ``unlabeled``: load ``data.unlabeled`` too (a run without distillation edges has no use for
    it); its images are checked against every labelled split (:mod:`kdstyles.data.unlabeled`)."""
    task_cls = TASKS[task]
    loaded = SOURCES[cfg.source].load(cfg, seed, task_cls, folder.splits_path if folder is not None else None, quiet)
    report, stored = loaded.report, loaded.splits
    unit = spatial(cfg.dims).unit
    kind = labels_of(task_cls)
    kind.check_counts(report, cfg, task_cls.imbalance_remedy, unit)
    checks.check_duplicates({s: v.digests for s, v in stored.items()}, {s: v.names for s, v in stored.items()},
                            cfg.on_duplicates, report)
    empty = [s for s, v in stored.items() if len(v.labels) == 0]
    if empty:  # data inspect lists it with the rest
        report.problems.append(checks.Problem(
            "error", f"{loaded.where}: the {empty[0]} split is empty ({sum(len(v.labels) for v in stored.values())} "
                     f"{unit} in all); give it files, or raise data.val_fraction / data.test_fraction"))
    if check:
        report.raise_errors()
    channels, size = loaded.channels, loaded.size
    patch = cfg.patch_size or loaded.patch
    mean, std = _normalisation(cfg, normalize or cfg.normalize, stored["train"], channels, size, seed)
    augment = build_augment(cfg.augment, patch or size, **kind.augment(cfg.augment), dims=cfg.dims)
    splits = {s: ImageDataset(v.labels, mean, std, augment if s == "train" else None, seed, images=v.images,
                              paths=v.paths, channels=channels, size=size, masks=v.masks, boxes=v.boxes,
                              **kind.box_moves(cfg.augment if s == "train" else None),
                              dims=cfg.dims, patch=patch, train=s == "train", positive=cfg.patch_positive,
                              spacing=v.spacing, window_batch=cfg.batch_size, overlap=cfg.patch_overlap, kind=kind,
                              views=cfg.views if s == "train" else None)
              for s, v in stored.items()}
    if getattr(cfg, "groups", None):  # a key of the csv source
        from .groups import read_groups

        for split, values in read_groups(cfg, stored).items():
            splits[split].groups = values
    bundle = DataBundle(splits, loaded.class_names, channels, patch or size, mean.tolist(), std.tolist(), report,
                        loaded.split_table, cfg.sampler, spatial_dims=cfg.dims)
    for entry in cfg.external:
        bundle.external[entry.name], bundle.external_about[entry.name] = _external(
            cfg, entry, bundle, stored, task_cls, seed, quiet, check)
    if unlabeled and cfg.unlabeled is not None:
        from .unlabeled import check_overlap

        # the source data.unlabeled names lists them, fitted to the labelled data (volumes with patches: their own shape)
        found = SOURCES[cfg.unlabeled.source].unlabeled(cfg, task_cls, seed, channels, size, patch, quiet)
        report.problems += [checks.Problem("warning", w) for w in check_overlap(found, stored)]
        # no masks or boxes to move: every geometric augmentation applies
        views = build_augment(cfg.augment, patch or size, dims=cfg.dims)
        bundle.unlabeled = ImageDataset(np.zeros(len(found), np.int64), mean, std, views, _mix(seed, 0x55),
                                        found.images, found.paths, channels, size, dims=cfg.dims, patch=patch,
                                        train=True, positive=0.0, views=cfg.views)
        bundle.unlabeled_about = found.description
    return bundle


def _external(cfg: Any, entry: Any, bundle: DataBundle, stored: dict, task_cls: Any, seed: int, quiet: bool,
              check: bool) -> tuple[ImageDataset, str]:
    """One external test set (``data.external``), read by its source into the training data's
    input (channels, size, classes), checked like a test split and against every training and
    validation image (leakage); prepared as the test split is."""
    sub, source = cfg.external_data(entry), SOURCES[entry.source]
    if spatial(cfg.dims).resized_on_read:  # fitted to the training input, whatever the source's default
        sub = sub.model_copy(update={"channels": bundle.channels, "image_size": bundle.image_size})
    given = "classes" in source.Options.model_fields and sub.classes is None
    if given:  # a set may lack a class, not add one
        sub = sub.model_copy(update={"classes": list(bundle.class_names)})
    try:
        loaded = source.external(sub, task_cls, seed, entry.split or source.external_split, quiet)
    except KDError as exc:
        text = str(exc).replace("data.classes", "the training data's classes") if given else str(exc)
        raise KDError(f"data.external '{entry.name}': {text}") from None
    where = f"data.external '{entry.name}' ({loaded.where})"
    if loaded.class_names != bundle.class_names:
        raise KDError(f"{where}: its classes {loaded.class_names} are not the training data's {bundle.class_names}; "
                      "an external set is scored on the same classes")
    if loaded.channels != bundle.channels:
        raise KDError(f"{where}: its images have {loaded.channels} channel(s), the training data's "
                      f"{bundle.channels}")
    found = loaded.splits["test"]
    if not len(found.labels):
        raise KDError(f"{where}: it holds no images")
    report = loaded.report
    checks.check_duplicates({"train": stored["train"].digests, "val": stored["val"].digests, entry.name: found.digests},
                            {"train": stored["train"].names, "val": stored["val"].names, entry.name: found.names},
                            cfg.on_duplicates, report)
    if check:
        for problem in report.problems:
            if problem.level == "error":
                raise KDError(f"{where}: {problem.message}")
    kind, test = labels_of(task_cls), bundle.splits["test"]
    ds = ImageDataset(found.labels, torch.tensor(bundle.mean), torch.tensor(bundle.std), None, seed,
                      images=found.images, paths=found.paths, channels=bundle.channels, size=loaded.size,
                      masks=found.masks, boxes=found.boxes, **kind.box_moves(None), dims=cfg.dims,
                      patch=test.window.size if test.window else None, positive=cfg.patch_positive,
                      spacing=found.spacing, window_batch=cfg.batch_size, overlap=cfg.patch_overlap, kind=kind)
    return ds, f"{len(found.labels)} {spatial(cfg.dims).unit} from {loaded.where}"


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _normalisation(cfg: Any, how: str, train, channels: int, size: int, seed: int):
    """Per-channel mean and std: ImageNet's (pretrained networks; grayscale: their average),
    of (a sample of) the training split (``dataset``, ``auto``), or 0/1 (``none``)."""
    if how == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        return (mean, std) if channels == 3 else (mean.mean().repeat(channels), std.mean().repeat(channels))
    if how == "none" or len(train.labels) == 0:
        return torch.zeros(channels), torch.ones(channels)
    images, paths = train.images, train.paths
    n = len(train.labels)
    pick = np.random.default_rng([seed, 17]).permutation(n)[:NORM_SAMPLE] if n > NORM_SAMPLE else np.arange(n)
    if isinstance(images, list):  # volumes of different shapes: up to a million voxels of each, flattened
        flat = [images[i].reshape(-1, channels) for i in np.sort(pick)]
        sample = np.concatenate([v[::max(1, len(v) // 1_000_000)] for v in flat])
    elif images is not None:
        sample = images[np.sort(pick)]
    else:
        sample = np.stack([read_image(paths[i], channels, size)[0] for i in np.sort(pick)])
    x = torch.from_numpy(sample).float().div_(255)
    axes = tuple(range(x.ndim - 1))  # every axis but the channels'
    return x.mean(dim=axes), x.std(dim=axes).clamp_min(1e-3)
