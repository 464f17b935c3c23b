"""Augmentation: random moves of whole batches (an image and its mask together), each item
seeded by its own key, and the exact moves of detection boxes with their image (flips,
quarter turns, affine)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from ..common.dims import dims as spatial


class BatchAugment:
    """Random augmentation of a whole batch at once, each item as its own key says: the moves of
    item ``(epoch, index)`` are drawn from a generator seeded by ``(seed, epoch, index)``, so an
    item is augmented the same whatever batch, worker, process or resume it comes in (and one
    item alone as in a batch). Images (B, C, *S) in [0, 1], before normalisation; masks
    (B, 1, *S) move with their images (nearest neighbour). In order: flips (``hflip`` along the
    second spatial axis, ``vflip`` along the first; a volume's first axis is its depth), quarter
    turns (0-3, each equally likely), one affine move about the centre (rotation, zoom, shear,
    shift; bilinear, mirrored at the border) and intensity (brightness x (1 +- intensity), then
    +- intensity). A batch costs what one affine resampling of the batch costs, where per-item
    transforms cost ~0.8 ms an image (half of a small student's epoch, measured)."""

    def __init__(self, cfg: Any, geometric: bool = True, dims: int = 2):
        self.dims = dims
        space = spatial(dims)
        self.hflip, self.vflip = bool(cfg.hflip and geometric), bool(cfg.vflip and geometric)
        self.turn_axes = space.quarter_turn_axes if cfg.rotate90 and geometric else None
        moves = (cfg.rotate, cfg.zoom, cfg.shift, cfg.shear)
        self.affine = moves if geometric and any(moves) else None
        self.intensity = float(cfg.intensity)

    def draws(self, seed: int, keys: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """Every item's moves: flips, turns, affine matrices (normalised coordinates) and intensity."""
        d, n = self.dims, len(keys)
        out: dict[str, np.ndarray] = {"h": np.zeros(n, bool), "v": np.zeros(n, bool), "k": np.zeros(n, int),
                                      "theta": np.zeros((n, d, d + 1)), "scale": np.ones(n), "shift": np.zeros(n)}
        for j, (epoch, index) in enumerate(keys):
            rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, 7])
            out["h"][j] = self.hflip and rng.random() < 0.5
            out["v"][j] = self.vflip and rng.random() < 0.5
            if self.turn_axes is not None:
                out["k"][j] = rng.integers(4)
            if self.affine is not None:
                rotate, zoom, shift, shear = self.affine
                a, t = _random_affine(rng, d, rotate, zoom, shift, shear)
                inv = np.linalg.inv(a)  # grid_sample maps each output point back into the input
                out["theta"][j] = np.c_[inv, -inv @ (2 * t)]  # t: a fraction of the size; 2t in [-1, 1] units
            if self.intensity:
                out["scale"][j] = 1 + rng.uniform(-self.intensity, self.intensity)
                out["shift"][j] = rng.uniform(-self.intensity, self.intensity)
        return out

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None, seed: int, keys: list[tuple[int, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch.nn.functional as F

        drawn = self.draws(seed, keys)
        for flag, axis in (("h", 1), ("v", 0)):  # flips along a spatial axis
            pick = torch.from_numpy(drawn[flag])
            if pick.any():
                images = torch.where(_rows(pick, images), images.flip(2 + axis), images)
                if masks is not None:
                    masks = torch.where(_rows(pick, masks), masks.flip(2 + axis), masks)
        if self.turn_axes is not None:
            axes = tuple(2 + a for a in self.turn_axes)
            for k in (1, 2, 3):
                pick = torch.from_numpy(drawn["k"] == k)
                if pick.any():
                    images = torch.where(_rows(pick, images), torch.rot90(images, k, axes), images)
                    if masks is not None:
                        masks = torch.where(_rows(pick, masks), torch.rot90(masks, k, axes), masks)
        if self.affine is not None:
            theta = torch.from_numpy(drawn["theta"]).to(images.dtype)
            grid = F.affine_grid(theta, list(images.shape), align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            if masks is not None:
                masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="reflection", align_corners=False)
        if self.intensity:
            shape = (-1, *(1,) * (images.ndim - 1))
            images = images * torch.from_numpy(drawn["scale"]).to(images.dtype).view(shape) + \
                torch.from_numpy(drawn["shift"]).to(images.dtype).view(shape)
        return images, masks


def _rows(pick: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return pick.view(-1, *(1,) * (x.ndim - 1))


def _random_affine(rng: np.random.Generator, d: int, rotate: float, zoom: float, shift: float, shear: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A random affine move in coordinates normalised to the size (centre 0): the matrix
    (rotation up to ``rotate`` degrees about every axis of the space, shear up to ``shear``,
    zoom 1 +- ``zoom`` per axis) and the shift (up to ``shift`` of the size per axis)."""
    a = _rotation(np.deg2rad(rng.uniform(-rotate, rotate, 1 if d == 2 else 3)))
    sh = np.eye(d)
    sh[~np.eye(d, dtype=bool)] = rng.uniform(-shear, shear, d * d - d)
    a = a @ sh @ np.diag(rng.uniform(1 - zoom, 1 + zoom, d))
    return a, rng.uniform(-shift, shift, d)


def build_augment(cfg: Any, image_size: int, with_mask: bool = False, geometric: bool = True, dims: int = 2
                  ) -> BatchAugment | None:
    """The training split's augmentation (:class:`BatchAugment`); None when nothing is random.
    ``geometric=False``: intensity only (detection moves its images and boxes itself, see
    :func:`flip_boxes`). Masks move with their images whenever a batch has them, and shifts are
    a fraction of the size, so ``image_size`` and ``with_mask`` change nothing here (the label
    kinds' ``augment`` gives them for every kind alike)."""
    aug = BatchAugment(cfg, geometric, dims)
    return aug if (aug.hflip or aug.vflip or aug.turn_axes or aug.affine or aug.intensity) else None


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
    a, t = _random_affine(rng, d, rotate, zoom, shift, shear)
    t = t * extent
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
