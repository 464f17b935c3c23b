"""Datasets, augmentation and loaders.

Images live in memory as uint8 arrays (N, H, W, C). Augmentation uses MONAI array
transforms seeded per ``(seed, epoch, index)``, and the sampler's order is seeded per
``(seed, epoch)``: an epoch's batches are a pure function of the seed and the epoch
number, whatever the number of workers, so a resumed run sees exactly the batches the
uninterrupted run would have seen, without saving any sampler or worker state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import AugmentConfig, DataConfig
from ..errors import KDError
from . import synthetic

MAX_SEED = 2**31 - 1


def _mix(*values: int) -> int:
    """A deterministic 31-bit seed from integers (independent of PYTHONHASHSEED)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0]) & MAX_SEED


def build_augment(cfg: AugmentConfig, image_size: int):
    """MONAI array transforms for (C, H, W) float tensors, or None when nothing is random."""
    from monai.transforms import Compose, RandAffine, RandFlip, RandRotate90

    ts = []
    if cfg.hflip:
        ts.append(RandFlip(prob=0.5, spatial_axis=1))
    if cfg.vflip:
        ts.append(RandFlip(prob=0.5, spatial_axis=0))
    if cfg.rotate90:
        ts.append(RandRotate90(prob=0.75, spatial_axes=(0, 1)))
    if cfg.rotate or cfg.zoom or cfg.shift or cfg.shear:
        ts.append(RandAffine(
            prob=1.0, rotate_range=(np.deg2rad(cfg.rotate),), scale_range=(cfg.zoom, cfg.zoom),
            translate_range=(cfg.shift * image_size, cfg.shift * image_size), shear_range=(cfg.shear, cfg.shear),
            padding_mode="reflection", mode="bilinear"))
    return Compose(ts) if ts else None


class ArrayDataset(Dataset):
    """uint8 images (N, H, W, C) + int labels; items are addressed by ``(epoch, index)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: torch.Tensor, std: torch.Tensor,
                 augment=None, seed: int = 0):
        self.images, self.labels = images, labels
        self.mean, self.std = mean.view(-1, 1, 1), std.view(-1, 1, 1)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        img = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div_(255)
        if self.augment is not None:
            self.augment.set_random_state(seed=_mix(self.seed, epoch, index))
            img = self.augment(img)
            img = img.as_tensor() if hasattr(img, "as_tensor") else img
        return (img - self.mean) / self.std, int(self.labels[index])


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` keys; the order is seeded by (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int = 0, max_batches: int | None = None):
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.max_batches, self.epoch = max_batches, 0
        # A training batch of one would break BatchNorm; drop such a remainder.
        self.drop_last = shuffle and n % batch_size == 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for b in range(len(self)):
            yield [(self.epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]


@dataclass
class DataBundle:
    """The splits of one experiment plus what a model needs to know about them."""

    splits: dict[str, ArrayDataset]
    class_names: list[str]
    channels: int
    image_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def loader(self, split: str, batch_size: int, train: bool = False, num_workers: int = 0,
               seed: int = 0, max_batches: int | None = None) -> DataLoader:
        ds = self.splits[split]
        sampler = EpochBatchSampler(len(ds), batch_size, shuffle=train, seed=seed,
                                    max_batches=max_batches if train else None)
        return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())


@lru_cache(maxsize=8)
def _synthetic_split(seed: int, split: str, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate(seed, split, n, size)


def _convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 1:  # luminance (ITU-R 601)
        gray = images[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(gray + 0.5, 0, 255).astype(np.uint8)[..., None]
    if have == 1:
        return np.repeat(images, channels, axis=-1)
    raise KDError(f"data.channels: cannot convert {have}-channel images to {channels} channels; allowed: 1 or 3")


def build_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Load every split of the configured source into memory and fit the normalisation."""
    raw = {split: _synthetic_split(seed, split, n, cfg.image_size)
           for split, n in (("train", cfg.train_samples), ("val", cfg.val_samples), ("test", cfg.test_samples))}
    raw = {k: (_convert_channels(x, cfg.channels), y) for k, (x, y) in raw.items()}
    if cfg.normalize == "dataset":
        x = torch.from_numpy(raw["train"][0]).float().div_(255)
        mean = x.mean(dim=(0, 1, 2))
        std = x.std(dim=(0, 1, 2)).clamp_min(1e-3)
    else:
        mean, std = torch.zeros(cfg.channels), torch.ones(cfg.channels)
    augment = build_augment(cfg.augment, cfg.image_size)
    splits = {name: ArrayDataset(x, y, mean, std, augment if name == "train" else None, seed)
              for name, (x, y) in raw.items()}
    return DataBundle(splits, list(synthetic.CLASS_NAMES), cfg.channels, cfg.image_size,
                      mean.tolist(), std.tolist())
