"""Volumes too large for one forward: random training patches (centred on foreground or a
box when asked) and the sliding windows that cover whole volumes in evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .augment import clip_boxes


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
