"""The training items and their order: :class:`ImageDataset` (an image, its label and index,
augmented by a seed of (seed, epoch, index)), the samplers whose batches are a pure function of
the seed and the epoch (uniform or class-balanced, sharded over processes), and the joint
batches of labelled and unlabelled images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..store.imageio import read_image
from .augment import affine_boxes, flip_boxes, pad_boxes
from .labels import CLASS_INDEX, Labels
from .patches import Window, crop_patch

MAX_SEED = 2**31 - 1


def _mix(*values: int) -> int:
    """A deterministic 31-bit seed from integers (independent of PYTHONHASHSEED)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0]) & MAX_SEED


class ImageDataset(Dataset):
    """Images + labels; items are ``(image, label, key)`` addressed by ``(epoch, index)``
    (the augmentation seed; the key is the index, or with ``views`` the index in its view). With ``masks`` (segmentation) the label is the (H, W) mask,
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
                 spacing: list | None = None, window_batch: int = 4, overlap: float = 0.25,
                 kind: Labels = CLASS_INDEX, views: int | None = None):
        self.labels, self.images, self.paths, self.masks = labels, images, paths, masks
        self.kind = kind  # what its labels are (kdstyles.data.labels): how an image's target is made
        self.boxes, self.box_flips, self.box_affine = boxes, box_flips, box_affine
        self.crop = patch if train else None  # training crops
        self.window = Window(patch, window_batch, overlap) if patch and not train else None  # whole volumes
        self.positive, self.spacing, self.dims = positive, spacing, dims
        self.max_boxes = max([len(b) for b in boxes] + [1]) if boxes is not None else 0
        self.mean, self.std = mean.view(-1, *(1,) * dims), std.view(-1, *(1,) * dims)
        self.augment, self.seed, self.channels, self.size = augment, seed, channels, size
        self.views = views  # fixed views: epoch e shows view e mod views, and an item's key says which
        self.groups: dict[str, list[str]] = {}  # data.groups: each item's value per column

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: int) -> np.ndarray:
        """The uint8 (H, W, C) image (or (D, H, W, C) volume), from memory or decoded from its file."""
        if self.images is not None:
            return self.images[index]
        return read_image(self.paths[index], self.channels, self.size)[0]

    def _prepared(self, epoch: int, index: int):
        """The item before augmentation and normalisation: the image as [0, 1] floats, channels
        first (a training patch cropped from a volume), and its mask and boxes."""
        raw, mask = self.raw(index), self.masks[index] if self.masks is not None else None
        boxes = self.boxes[index] if self.boxes is not None else None
        if self.crop:
            raw, mask, boxes = crop_patch(raw, mask, self.crop, np.random.default_rng([self.seed, epoch, index, 9]),
                                          self.positive, boxes)
        return torch.from_numpy(np.ascontiguousarray(raw)).movedim(-1, 0).float().div_(255), mask, boxes

    def plain(self, index: int) -> torch.Tensor:
        """An image as the network takes it, prepared as training prepares it but neither
        augmented nor normalised (what an exported model, which normalises inside, takes)."""
        return self._prepared(0, index)[0]

    def plain_target(self, index: int) -> Any:
        """An item's target as the supervised loss takes it, un-augmented (as :meth:`plain`): its
        (H, W) mask where it has masks, else its label's target."""
        if self.masks is None:
            return self.kind.target(self.labels, index)
        mask = self.masks[index] if not self.crop else self._prepared(0, index)[1]
        return torch.from_numpy(np.ascontiguousarray(mask)).long()

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """The items of ``keys`` (``(epoch, index)``, or an index) prepared together: each read,
        cropped and (detection) its boxes moved, then the batch augmented at once
        (:class:`~kdstyles.data.augment.BatchAugment`, each item by its own key) and normalised.
        The DataLoader calls this for a batch; an item alone is the same as in any batch."""
        keys = [k if isinstance(k, tuple) else (0, k) for k in keys]
        if self.views:  # the view of an epoch: a fixed set of them, each the same whenever it comes back
            keys = [(epoch % self.views, index) for epoch, index in keys]
        images, masks, labels = [], [], []
        for epoch, index in keys:
            img, mask, boxes = self._prepared(epoch, index)
            if boxes is not None:
                if any(self.box_affine):  # rotate, zoom, shift, shear
                    img, boxes = affine_boxes(img, boxes, np.random.default_rng([self.seed, epoch, index, 6]),
                                              *self.box_affine)
                if any(self.box_flips):
                    img, boxes = flip_boxes(img, boxes, np.random.default_rng([self.seed, epoch, index, 5]),
                                            *self.box_flips)
                labels.append(pad_boxes(boxes, self.max_boxes, self.dims))
            elif mask is None:
                labels.append(self.kind.target(self.labels, index))
            images.append(img)
            if mask is not None:
                masks.append(torch.from_numpy(np.ascontiguousarray(mask)).unsqueeze(0).float())
        if self.augment is not None:
            batch, moved = self.augment(torch.stack(images), torch.stack(masks) if masks else None, self.seed, keys)
            images, masks = list(batch), list(moved) if moved is not None else []
        if masks:
            labels = [m[0].round().long() for m in masks]
        return [((img - self.mean) / self.std, label, self.key(epoch, index))
                for img, label, (epoch, index) in zip(images, labels, keys)]

    def key(self, epoch: int, index: int) -> int:
        """What an item is, as a number (what a frozen teacher's outputs are kept by): its index, or
        with fixed ``views`` its index in its view, ``index + len * view``."""
        return index + len(self) * (epoch % self.views) if self.views else index

    @property
    def keys(self) -> int:
        """How many distinct items (keys) the dataset can give: len x views."""
        return len(self) * (self.views or 1)


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys; the order is seeded by (seed, epoch).

    ``weights`` given: each item drawn with that weight, with replacement (one epoch = as many
    draws as samples; ``data.sampler: balanced``: the label kind's ``draw_weights``).
    ``shard=(rank, world)`` splits the work between distributed processes: in training every
    rank takes a strided slice of each global batch (so the global batches, their order and
    their augmentation are those of one process); in evaluation every rank takes a contiguous
    chunk (each sample once)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, max_batches: int | None = None,
                 weights: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.max_batches, self.epoch, self.start = max_batches, 0, 0
        self.rank, self.world = shard
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
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


@dataclass
class Batch:
    """One training step's inputs, as the trainer, the mixing, the cohort and the tasks take
    them: the ``images``, the ``targets`` of the first ``labelled`` rows (all rows where it is
    None; the rest are images without labels, ``data.unlabeled``), what each row is (``keys``:
    a labelled item's key, then the unlabelled items' after every labelled key, so a frozen
    teacher's kept outputs are indexed by one number) and the step's mix (a
    :class:`~kdstyles.data.mix.MixDraw` or None)."""

    images: torch.Tensor
    targets: Any
    keys: torch.Tensor
    labelled: int | None = None
    mix: Any = None

    def pin_memory(self) -> "Batch":  # the DataLoader's pinning thread (CUDA)
        return replace(self, images=self.images.pin_memory(), targets=self.targets.pin_memory(),
                       keys=self.keys.pin_memory())

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.preserve_format) -> "Batch":
        return replace(self, images=self.images.to(device, non_blocking=True, memory_format=memory_format),
                       targets=self.targets.to(device, non_blocking=True),
                       keys=self.keys.to(device, non_blocking=True))

    def mixed(self, mix: Any) -> "Batch":
        """The batch with the step's mix applied to its images (labelled and unlabelled rows
        each among themselves); itself where there is none."""
        if mix is None:
            return self
        return replace(self, images=mix.images(self.images, self.labelled), mix=mix)


def batch_collate(items: list) -> Batch:
    """A training batch of labelled items ``(image, label, key)``."""
    from torch.utils.data import default_collate

    images, targets, keys = default_collate(items)
    return Batch(images, targets, keys)


class JointDataset(Dataset):
    """The labelled training split and the unlabelled images behind one loader: keys are
    ``(part, epoch, index)``, part 0 labelled, 1 unlabelled (whose items' keys come after every
    labelled key)."""

    def __init__(self, labelled: ImageDataset, unlabeled: ImageDataset):
        self.labelled, self.unlabeled = labelled, unlabeled

    def __len__(self) -> int:
        return len(self.labelled)

    def __getitem__(self, key):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[tuple]:
        """A joint batch's items, each part prepared (and augmented) as one batch of its own."""
        out: list = [None] * len(keys)
        for part, data in ((0, self.labelled), (1, self.unlabeled)):
            mine = [j for j, k in enumerate(keys) if k[0] == part]
            if mine:
                after = part * self.labelled.keys  # unlabelled keys follow the labelled ones
                for j, (image, label, key) in zip(mine, data.__getitems__([keys[j][1:] for j in mine])):
                    out[j] = (part, image, label, key + after)
        return out


def joint_collate(items: list) -> Batch:
    """A joint batch: the images stacked once, the labelled ones (``labelled`` of them) first, as
    the networks take them; the labels of those; every row's key."""
    from torch.utils.data import default_collate

    labels, indices = default_collate([it[2:] for it in items if it[0] == 0])
    unlabeled = torch.tensor([it[3] for it in items if it[0] == 1], dtype=indices.dtype)
    return Batch(torch.stack([it[1] for it in items]), labels, torch.cat([indices, unlabeled]), len(labels))


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
