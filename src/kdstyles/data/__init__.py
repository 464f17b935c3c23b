"""Datasets, checks, augmentation and loaders for every source.

Every source (:mod:`kdstyles.data.sources`, one file each) ends up as one
:class:`ImageDataset` per split: uint8 images (N, H, W, C) in memory (synthetic, MedMNIST,
and folder/CSV sets that fit ``data.cache_gb``) or image files decoded on access. Before
any training, one streaming pass checks the data (:mod:`kdstyles.data.checks`); for files
that pass also decodes them into the cache.

Augmentation uses MONAI array transforms seeded per ``(seed, epoch, index)``, and the
sampler's order is seeded per ``(seed, epoch)``: an epoch's batches are a pure function
of the seed and the epoch number, whatever the number of workers, so a resumed run sees
exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import DataLoader, Dataset, Sampler

from ..dims import dims as spatial
from ..imageio import read_image
from ..tasks import TASKS
from . import checks, files
from .sources import SOURCES

MAX_SEED = 2**31 - 1
NORM_SAMPLE = 2000  # images used to estimate the per-channel mean/std


def _mix(*values: int) -> int:
    """A deterministic 31-bit seed from integers (independent of PYTHONHASHSEED)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0]) & MAX_SEED


def build_augment(cfg: Any, image_size: int, with_mask: bool = False, geometric: bool = True, dims: int = 2):
    """MONAI dictionary transforms moving the image (and its mask, nearest-neighbour) together;
    None when nothing is random. ``geometric=False``: intensity only (detection moves its
    images and boxes itself, see :func:`flip_boxes`). Volumes (``dims=3``): flips along the
    first two axes, quarter turns in the last two, rotations about every axis."""
    from monai.transforms import (Compose, RandAffined, RandFlipd, RandRotate90d, RandScaleIntensityd,
                                  RandShiftIntensityd)

    keys = ["image", "mask"] if with_mask else ["image"]
    modes = ["bilinear", "nearest"] if with_mask else ["bilinear"]
    ts = []
    if cfg.hflip and geometric:
        ts.append(RandFlipd(keys, prob=0.5, spatial_axis=1))
    if cfg.vflip and geometric:
        ts.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    space = spatial(dims)
    if cfg.rotate90 and geometric:
        ts.append(RandRotate90d(keys, prob=0.75, spatial_axes=space.quarter_turn_axes))
    if geometric and (cfg.rotate or cfg.zoom or cfg.shift or cfg.shear):
        ts.append(RandAffined(
            keys, prob=1.0, rotate_range=(np.deg2rad(cfg.rotate),) * space.rotation_angles,
            scale_range=(cfg.zoom,) * dims, translate_range=(cfg.shift * image_size,) * dims,
            shear_range=(cfg.shear,) * space.shear_terms,
            padding_mode="reflection", mode=modes))
    if cfg.intensity:
        ts.append(RandScaleIntensityd(["image"], factors=cfg.intensity, prob=1.0))
        ts.append(RandShiftIntensityd(["image"], offsets=cfg.intensity, prob=1.0))
    return Compose(ts) if ts else None


def flip_boxes(img: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator, hflip: bool, vflip: bool,
               rotate90: bool) -> tuple[torch.Tensor, np.ndarray]:
    """Random flips and quarter turns of an image (C, S, S) or volume (C, D, S, S) and its
    boxes (m, 2d + 1), exact: a box is moved with the pixels it covers. The moves act on the
    last two axes (x and y); a volume's depth (z) stays."""
    s = img.shape[-1]
    d = img.ndim - 1
    b = boxes.copy()
    x1, y1, x2, y2 = 0, 1, d, d + 1  # columns of the x and y edges
    if hflip and rng.random() < 0.5:
        img, b[:, [x1, x2]] = img.flip(-1), s - b[:, [x2, x1]]
    if vflip and rng.random() < 0.5:
        img, b[:, [y1, y2]] = img.flip(-2), s - b[:, [y2, y1]]
    if rotate90:
        for _ in range(int(rng.integers(4))):  # a quarter turn: pixel (row r, col c) goes to (s-1-c, r)
            img = torch.rot90(img, 1, dims=(-2, -1))
            turned = b.copy()
            turned[:, x1], turned[:, y1], turned[:, x2], turned[:, y2] = b[:, y1], s - b[:, x2], b[:, y2], s - b[:, x1]
            b = turned
    return img, b


MIN_KEPT = 0.25  # a box moved partly out of the image is kept if this share of it stays inside


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation in the x-y plane (2D: one angle), or about the z, y and x axes in turn (3D)."""
    if len(angles) == 1:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    out = np.eye(3)
    for axis, a in enumerate(angles):  # about z, then y, then x (coordinates x, y, z = 0, 1, 2)
        i, j = [(0, 1), (0, 2), (1, 2)][axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        out = out @ r
    return out


def affine_boxes(img: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator, rotate: float, zoom: float,
                 shift: float, shear: float) -> tuple[torch.Tensor, np.ndarray]:
    """A random affine move of an image (C, H, W) or volume (C, D, H, W) about its centre and of
    its boxes (m, 2d + 1): rotation up to ``rotate`` degrees, zoom by 1 +- ``zoom`` along each
    axis, shear up to ``shear``, shift up to ``shift`` x the size. A box becomes the smallest box
    holding its moved corners: exact under zoom and shift, larger than the object under
    rotation and shear (as detection libraries do). The image is resampled bilinearly with black
    outside it (mirrored objects would be unlabelled); a box with less than ``MIN_KEPT`` of it
    left inside is dropped, the rest clipped."""
    import torch.nn.functional as F

    d = img.ndim - 1
    extent = np.array(img.shape[1:][::-1], dtype=np.float64)  # along x, y(, z)
    a = _rotation(np.deg2rad(rng.uniform(-rotate, rotate, 1 if d == 2 else 3)))
    sh = np.eye(d)
    sh[~np.eye(d, dtype=bool)] = rng.uniform(-shear, shear, d * d - d)
    a = a @ sh @ np.diag(rng.uniform(1 - zoom, 1 + zoom, d))
    t = rng.uniform(-shift, shift, d) * extent
    # grid_sample maps each output point (normalised to -1..1 along every axis) back into the input
    norm = np.diag(2 / extent)
    a_n = norm @ a @ np.linalg.inv(norm)
    inv = np.linalg.inv(a_n)
    theta = torch.from_numpy(np.c_[inv, -inv @ (norm @ t)]).float()[None]
    grid = F.affine_grid(theta, [1, *img.shape], align_corners=False)
    moved = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if len(boxes) == 0:
        return moved, boxes
    lo, hi = boxes[:, :d], boxes[:, d:2 * d]
    corners = np.stack([np.where(pick, hi, lo) for pick in itertools.product((False, True), repeat=d)], 1)
    centre = extent / 2
    corners = (corners - centre) @ a.T + centre + t  # (m, 2^d, d)
    return moved, clip_boxes(corners.min(1), corners.max(1), boxes[:, -1], extent).astype(boxes.dtype)


def clip_boxes(lo: np.ndarray, hi: np.ndarray, classes: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Boxes (corners ``lo``, ``hi``: (m, d) along x, y(, z)) moved partly out of an image or
    patch of ``extent``: those with less than ``MIN_KEPT`` of them inside (or under a pixel
    thick) dropped, the rest clipped; (m', 2d + 1) with their classes."""
    kept_lo, kept_hi = np.clip(lo, 0, extent), np.clip(hi, 0, extent)
    inside = np.prod(np.clip(kept_hi - kept_lo, 0, None), 1) / np.prod(hi - lo, 1).clip(1e-12)
    keep = (inside >= MIN_KEPT) & ((kept_hi - kept_lo) >= 1).all(1)
    return np.concatenate([kept_lo, kept_hi, classes[:, None]], 1)[keep]


def pad_boxes(boxes: np.ndarray, rows: int, dims: int = 2) -> torch.Tensor:
    """(m, 2d + 1) boxes as a (rows, 2d + 1) tensor padded with class -1 (a batch is one tensor)."""
    width = 2 * dims + 1
    out = torch.full((rows, width), -1.0)
    out[:len(boxes)] = torch.from_numpy(np.asarray(boxes, dtype=np.float32)).reshape(-1, width)
    return out


@dataclass(frozen=True)
class Window:
    """How whole volumes are inferred: windows of ``size`` voxels a side, ``batch`` windows per
    forward, overlapping by ``overlap`` (Gaussian-weighted)."""

    size: int
    batch: int
    overlap: float


def crop_patch(volume: np.ndarray, mask: np.ndarray | None, size: int, rng: np.random.Generator, positive: float,
               boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A random size^3 crop of a (D, H, W, C) volume and its (D, H, W) mask or its (m, 7)
    boxes: centred with probability ``positive`` on a foreground voxel (segmentation) or on a
    random point of a random box (detection), when there is one, else on any voxel. Volumes
    smaller than the patch are padded (image: its minimum, mask: background). Boxes are moved
    into the patch's voxels; one mostly outside it is dropped, the rest clipped
    (:func:`clip_boxes`)."""
    shape = volume.shape[:3]
    short = [max(0, size - s) for s in shape]
    if any(short):
        pad = [(k // 2, k - k // 2) for k in short]
        volume = np.pad(volume, pad + [(0, 0)], constant_values=volume.min())
        mask = np.pad(mask, pad) if mask is not None else None
        boxes = boxes + np.array([p for p, _ in pad[::-1]] * 2 + [0], boxes.dtype) if boxes is not None else None
        shape = volume.shape[:3]
    if rng.random() < positive and (mask.any() if mask is not None else boxes is not None and len(boxes) > 0):
        if mask is not None:
            fg = np.flatnonzero(mask)
            centre = np.unravel_index(fg[rng.integers(len(fg))], shape)
        else:  # a point of a box, z, y, x
            box = boxes[rng.integers(len(boxes))]
            centre = [int(rng.uniform(box[a], box[a + 3])) for a in (2, 1, 0)]
    else:
        centre = [rng.integers(s) for s in shape]
    lo = [int(min(max(c - size // 2, 0), s - size)) for c, s in zip(centre, shape)]
    box = tuple(slice(a, a + size) for a in lo)
    if boxes is not None:
        at = np.array(lo[::-1], np.float64)  # x, y, z
        boxes = clip_boxes(boxes[:, :3] - at, boxes[:, 3:6] - at, boxes[:, 6], np.full(3, size, np.float64)
                           ).astype(boxes.dtype)
    return volume[box], mask[box] if mask is not None else None, boxes


class ImageDataset(Dataset):
    """Images + labels; items are ``(image, label, index)`` addressed by ``(epoch, index)``
    (the augmentation seed). With ``masks`` (segmentation) the label is the (H, W) mask,
    augmented together with the image; ``labels`` then says whether an image has foreground.
    With ``boxes`` (detection) the label is a (M, 2d + 1) tensor of boxes padded with class -1
    (M: the split's most boxes in one image), moved with the image (``box_affine``,
    ``box_flips``).

    Volumes (``dims=3``) for segmentation or detection with a ``patch`` size: the training split
    gives random patch^3 crops (:func:`crop_patch`, ``positive`` of them on foreground or on a
    box, boxes moved into the patch), the other splits whole volumes (one per batch; they may
    differ in shape, ``window`` says how sliding windows cover them, ``spacing`` each volume's
    voxel size in mm)."""

    def __init__(self, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor, augment=None, seed: int = 0,
                 images: np.ndarray | list | None = None, paths: list[Path] | None = None, channels: int = 3,
                 size: int = 32, masks: np.ndarray | list | None = None, boxes: list[np.ndarray] | None = None,
                 box_flips: tuple[bool, bool, bool] = (False, False, False),
                 box_affine: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0), dims: int = 2,
                 patch: int | None = None, train: bool = False, positive: float = 0.5,
                 spacing: list | None = None, window_batch: int = 4, overlap: float = 0.25):
        self.labels, self.images, self.paths, self.masks = labels, images, paths, masks
        self.boxes, self.box_flips, self.box_affine = boxes, box_flips, box_affine
        self.crop = patch if train else None  # training crops
        self.window = Window(patch, window_batch, overlap) if patch and not train else None  # whole volumes
        self.positive, self.spacing, self.dims = positive, spacing, dims
        self.max_boxes = max([len(b) for b in boxes] + [1]) if boxes is not None else 0
        self.mean, self.std = mean.view(-1, *(1,) * dims), std.view(-1, *(1,) * dims)
        self.augment, self.seed, self.channels, self.size = augment, seed, channels, size
        # One random stream shared by the transforms, reseeded per item (one seeding, not one per transform).
        self._random = np.random.RandomState()
        for t in getattr(augment, "transforms", ()):
            t.set_random_state(state=self._random)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: int) -> np.ndarray:
        """The uint8 (H, W, C) image (or (D, H, W, C) volume), from memory or decoded from its file."""
        if self.images is not None:
            return self.images[index]
        return read_image(self.paths[index], self.channels, self.size)[0]

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        raw, mask = self.raw(index), self.masks[index] if self.masks is not None else None
        boxes = self.boxes[index] if self.boxes is not None else None
        if self.crop:
            raw, mask, boxes = crop_patch(raw, mask, self.crop, np.random.default_rng([self.seed, epoch, index, 9]),
                                          self.positive, boxes)
        img = torch.from_numpy(np.ascontiguousarray(raw)).movedim(-1, 0).float().div_(255)
        item = {"image": img}
        if mask is not None:
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).float()
        if self.augment is not None:
            self._random.seed(_mix(self.seed, epoch, index))
            tracking = get_track_meta()
            set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping costs more than the flip
            try:
                item = self.augment(item)
            finally:
                set_track_meta(tracking)
        img = item["image"].as_tensor() if hasattr(item["image"], "as_tensor") else item["image"]
        if boxes is not None:
            if any(self.box_affine):  # rotate, zoom, shift, shear
                img, boxes = affine_boxes(img, boxes, np.random.default_rng([self.seed, epoch, index, 6]),
                                          *self.box_affine)
            if any(self.box_flips):
                img, boxes = flip_boxes(img, boxes, np.random.default_rng([self.seed, epoch, index, 5]),
                                        *self.box_flips)
            label = pad_boxes(boxes, self.max_boxes, self.dims)
        else:
            label = item["mask"][0].round().long() if self.masks is not None else \
                torch.from_numpy(self.labels[index].astype(np.float32)) if self.labels.ndim == 2 else \
                int(self.labels[index])  # multi-hot labels: a (K,) float vector
        return (img - self.mean) / self.std, label, index


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Each training item's chance of a draw under ``data.sampler: balanced``: one over its
    class's count, so every class is drawn equally often. Multi-hot (N, K) labels have no one
    class: an image counts as its rarest label (images without any as one more group), so
    every image of the rarest finding is drawn as often as in a single-label balanced draw,
    and a common label is drawn at least as often as the rarest (more where it travels with
    rarer ones)."""
    if labels.ndim == 1:
        return 1.0 / np.bincount(labels)[labels]
    groups = np.c_[labels.astype(bool), ~labels.astype(bool).any(1)]
    share = 1.0 / np.maximum(groups.sum(0), 1)
    return np.where(groups, share, 0.0).max(1)


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys; the order is seeded by (seed, epoch).

    ``labels`` given: classes are drawn equally often (sampling with replacement, one
    epoch = as many draws as samples; multi-hot labels: :func:`balanced_weights`).
    ``shard=(rank, world)`` splits the work between distributed processes: in training every
    rank takes a strided slice of each global batch (so the global batches, their order and
    their augmentation are those of one process); in evaluation every rank takes a contiguous
    chunk (each sample once)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, max_batches: int | None = None,
                 labels: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.max_batches, self.epoch, self.start = max_batches, 0, 0
        self.rank, self.world = shard
        self.weights = torch.as_tensor(balanced_weights(labels), dtype=torch.double) if labels is not None else None
        # A training batch of one (per process) would break BatchNorm; drop such a remainder.
        self.drop_last = shuffle and n % batch_size in range(1, self.world + 1)
        if not shuffle:
            per = -(-n // self.world)
            self.chunk = range(min(n, self.rank * per), min(n, (self.rank + 1) * per))

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, and the batch to start from (a run resumed mid-epoch skips the
        batches it already trained on; the order itself does not change)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-len(self.chunk) // self.batch_size)
        n = self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def __iter__(self):
        if not self.shuffle:
            for b in range(len(self)):
                yield [(0, i) for i in self.chunk[b * self.batch_size:(b + 1) * self.batch_size]]
            return
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start, len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(self.epoch, i) for i in batch[self.rank::self.world]]


class JointDataset(Dataset):
    """The labelled training split and the unlabelled images behind one loader: keys are
    ``(part, epoch, index)``, part 0 labelled, 1 unlabelled."""

    def __init__(self, labelled: ImageDataset, unlabeled: ImageDataset):
        self.labelled, self.unlabeled = labelled, unlabeled

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, key):
        part, epoch, index = key
        return part, *(self.unlabeled if part else self.labelled)[(epoch, index)]


def joint_collate(items: list) -> tuple:
    """A joint batch: ``(labelled images, labels, labelled indices, unlabelled images, unlabelled
    indices)``."""
    from torch.utils.data import default_collate

    labelled = default_collate([it[1:] for it in items if it[0] == 0])
    unlabeled = [it for it in items if it[0] == 1]
    return (*labelled, torch.stack([it[1] for it in unlabeled]), torch.tensor([it[3] for it in unlabeled]))


class JointBatchSampler(Sampler):
    """Each labelled batch of ``labelled`` (an :class:`EpochBatchSampler`) with ``batch`` unlabelled
    keys (``(1, pass, index)``). The unlabelled images are drawn in passes, each a permutation
    seeded by (seed, pass), step after step across epochs: the images of a step are a pure
    function of the seed, the epoch and the step (a resumed run draws what it would have), and
    every unlabelled image is drawn once per pass however the two sizes compare. Several
    processes take strided shares, as of the labelled batch."""

    def __init__(self, labelled: EpochBatchSampler, n: int, batch: int, seed: int):
        self.labelled, self.n, self.batch, self.seed = labelled, n, batch, seed
        self._orders: dict[int, list[int]] = {}

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.labelled.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.labelled)

    def _order(self, k: int) -> list[int]:
        if k not in self._orders:
            self._orders = {j: o for j, o in self._orders.items() if j >= k - 1}
            g = torch.Generator().manual_seed(_mix(self.seed, 0x55, k))
            self._orders[k] = torch.randperm(self.n, generator=g).tolist()
        return self._orders[k]

    def unlabeled_keys(self, step: int) -> list[tuple[int, int, int]]:
        """The unlabelled keys of the ``step``-th training step counted over all epochs."""
        keys = []
        for p in range(step * self.batch, (step + 1) * self.batch):
            k, offset = divmod(p, self.n)
            keys.append((1, k, self._order(k)[offset]))
        return keys

    def __iter__(self):
        lab = self.labelled
        steps = len(lab)
        for step, batch in enumerate(lab, start=lab.start):
            mine = self.unlabeled_keys(lab.epoch * steps + step)[lab.rank::lab.world]
            yield [(0, e, i) for e, i in batch] + mine


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loader(self, split: str, batch_size: int, train: bool = False, num_workers: int = 0,
               seed: int = 0, max_batches: int | None = None, persistent_workers: bool = False,
               shard: tuple[int, int] = (0, 1), unlabeled_batch: int | None = None) -> DataLoader:
        """Batches of (images, labels, sample indices); for the training split with
        ``unlabeled_batch`` and unlabelled images, joint batches that add ``unlabeled_batch``
        unlabelled images and their indices (:func:`joint_collate`)."""
        ds = self.splits[split]
        balanced = train and self.sampler == "balanced"
        if ds.window:  # whole volumes of any shape: one at a time
            batch_size = 1
        sampler = EpochBatchSampler(len(ds), batch_size, shuffle=train, seed=seed,
                                    max_batches=max_batches if train else None,
                                    labels=ds.labels if balanced else None, shard=shard)
        collate = None
        if train and unlabeled_batch and self.unlabeled is not None:
            sampler = JointBatchSampler(sampler, len(self.unlabeled), unlabeled_batch, seed)
            ds, collate = JointDataset(ds, self.unlabeled), joint_collate
        return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                          persistent_workers=persistent_workers and num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def save(self, folder: Any) -> None:
        """Write the data report and, for folder/CSV sources, the split assignment into a run
        folder (a :class:`~kdstyles.runfolder.RunFolder`, which names the files)."""
        from ..fileio import write_json

        if self.report is not None:
            write_json(folder.data_report_path, self.report.to_dict())
        if self.split_table is not None:
            records, labels, splits, base = self.split_table
            files.write_splits(folder.splits_path, records, labels, splits, base)


def build_data(cfg: Any, seed: int, folder: Any = None, quiet: bool = True,
               check: bool = True, task: str = "classification", normalize: str | None = None,
               unlabeled: bool = True) -> DataBundle:
    """Load and check every split of the configured source (``cfg``: the config's ``data``
    section) and fit the normalisation.

    ``check=False`` returns the bundle with its report even when the data has errors
    (``kdstyles data inspect``); otherwise the first error is raised before anything else.
    ``folder``: the run's :class:`~kdstyles.runfolder.RunFolder`, whose saved split assignment
    is read back (None: no run folder).
    ``unlabeled``: load ``data.unlabeled`` too (a run without distillation edges has no use for
    it); its images are checked against every labelled split (:mod:`kdstyles.data.unlabeled`)."""
    task_cls = TASKS[task]
    loaded = SOURCES[cfg.source].load(cfg, seed, task_cls, folder.splits_path if folder is not None else None, quiet)
    report, stored = loaded.report, loaded.splits
    unit = spatial(cfg.dims).unit
    if not (task_cls.dense or task_cls.boxes):
        checks.check_balance(report, cfg.imbalance_ratio, task_cls.imbalance_remedy, unit)
        checks.check_class_names(report)
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
    augment = build_augment(cfg.augment, patch or size, with_mask=task_cls.dense, geometric=not task_cls.boxes,
                            dims=cfg.dims)
    aug = cfg.augment
    flips, affine = (aug.hflip, aug.vflip, aug.rotate90), (aug.rotate, aug.zoom, aug.shift, aug.shear)
    splits = {s: ImageDataset(v.labels, mean, std, augment if s == "train" else None, seed, images=v.images,
                              paths=v.paths, channels=channels, size=size, masks=v.masks, boxes=v.boxes,
                              box_flips=flips if s == "train" and task_cls.boxes else (False, False, False),
                              box_affine=affine if s == "train" and task_cls.boxes else (0.0, 0.0, 0.0, 0.0),
                              dims=cfg.dims, patch=patch, train=s == "train", positive=cfg.patch_positive,
                              spacing=v.spacing, window_batch=cfg.batch_size, overlap=cfg.patch_overlap)
              for s, v in stored.items()}
    bundle = DataBundle(splits, loaded.class_names, channels, patch or size, mean.tolist(), std.tolist(), report,
                        loaded.split_table, cfg.sampler)
    if unlabeled and cfg.unlabeled is not None:
        from .unlabeled import check_overlap, load_unlabeled

        found = load_unlabeled(cfg, task_cls, seed, channels, size, patch, quiet)
        report.problems += [checks.Problem("warning", w) for w in check_overlap(found, stored)]
        # no masks or boxes to move: every geometric augmentation applies
        views = build_augment(cfg.augment, patch or size, dims=cfg.dims)
        bundle.unlabeled = ImageDataset(np.zeros(len(found), np.int64), mean, std, views, _mix(seed, 0x55),
                                        found.images, found.paths, channels, size, dims=cfg.dims, patch=patch,
                                        train=True, positive=0.0)
        bundle.unlabeled_about = found.description
    return bundle


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
