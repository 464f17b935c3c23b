"""Augmentation: MONAI transforms that move an image and its mask together, and the exact
moves of detection boxes with their image (flips, quarter turns, affine)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from ..dims import dims as spatial


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
