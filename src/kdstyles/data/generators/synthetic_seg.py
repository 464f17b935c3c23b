"""The embedded default for segmentation: procedural endoscopy-like frames with polyp masks.

Pinkish-red mucosa with folds and vessel texture, a vignetted circular field of view,
specular highlights, colour variation, blur and noise; zero to three polyps per frame,
each an irregular blob (a wobbly ellipse) that is raised (shaded), slightly redder or
paler than the surrounding mucosa and textured, so that its boundary is not a trivial
colour threshold. About one frame in six has no polyp. Every sample is a pure function
of ``(seed, split, index)``; the mask is 0 (background) or 1 (polyp).
"""

from __future__ import annotations

import math

import numpy as np

from .synthetic import SPLIT_IDS, _smooth_field, check_request, finish

CLASS_NAMES = ("background", "polyp")
DEFAULT_SIZE, CHANNELS = 64, 3
SITES = (1, 2)  # data.site: the second site shifts stain, focus and noise (at_site)
DESCRIPTION = "the embedded synthetic endoscopy frames"


def _blob(size: int, rng: np.random.Generator, cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob: (mask, height map in [0, 1] for shading)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ang = rng.uniform(0, math.pi)
    a, b = r * rng.uniform(0.8, 1.3), r * rng.uniform(0.7, 1.1)
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(ang) + dy * math.sin(ang)) / a
    v = (-dx * math.sin(ang) + dy * math.cos(ang)) / b
    theta = np.arctan2(v, u)
    k = rng.integers(2, 6)
    wobble = 1 + 0.18 * np.sin(k * theta + rng.uniform(0, 6.3)) + 0.08 * np.sin((k + 2) * theta + rng.uniform(0, 6.3))
    dist = np.sqrt(u * u + v * v) / wobble
    mask = dist < 1.0
    height = np.clip(1 - dist, 0, 1) ** 0.6
    return mask, height


def render_frame(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (uint8 RGB (size, size, 3), uint8 mask (size, size) with values 0/1)."""
    image, mask, _ = render_with_boxes(seed, split, index, size)
    return image, mask


def render_with_boxes(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame, its mask, and each polyp's box (n, 4) ``x1, y1, x2, y2`` in pixel edges (the
    polyp's whole extent, also where a later polyp covers part of it)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 77])
    s = size / 64.0
    base = np.array([0.78, 0.36, 0.32]) * rng.uniform(0.85, 1.1, 3)
    shade = 0.75 + 0.35 * _smooth_field(rng, size, 3)
    folds = 0.08 * np.sin(_smooth_field(rng, size, 4) * rng.uniform(8, 16))
    img = base[None, None, :] * (shade + folds)[..., None]
    vessels = _smooth_field(rng, size, 12)
    img[..., 1:] *= (1 - 0.12 * (np.abs(vessels - 0.5) < 0.03))[..., None]
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes = []
    n_polyps = rng.choice([0, 1, 1, 1, 2, 3], p=[0.17, 0.28, 0.2, 0.15, 0.13, 0.07])
    for _ in range(n_polyps):
        r = rng.uniform(5, 17) * s
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        m, h = _blob(size, rng, cy, cx, r)
        tint = np.array([rng.uniform(0.95, 1.15), rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1)])
        texture = 1 + 0.08 * (_smooth_field(rng, size, 10) - 0.5)
        light = 0.8 + 0.45 * h
        img = np.where(m[..., None], img * tint * (light * texture)[..., None], img)
        mask[m] = 1
        ys, xs = np.nonzero(m)
        if len(ys):
            boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    # specular highlights: small saturated spots, on polyps and mucosa alike
    for _ in range(rng.integers(2, 7)):
        hy, hx = rng.uniform(0, size, 2)
        hr = rng.uniform(0.6, 2.0) * s
        yy, xx = np.mgrid[0:size, 0:size]
        spot = np.exp(-(((yy - hy) ** 2 + (xx - hx) ** 2) / (2 * hr * hr)))
        img = img + spot[..., None] * 0.9
    # vignetting of the circular field of view
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    radius = np.sqrt(yy ** 2 + xx ** 2)
    img = img * np.clip(1.25 - 1.6 * radius, 0, 1)[..., None] ** 1.5
    image = finish(img, rng, rng.uniform(0.0, 0.9) * max(s, 0.5), rng.uniform(0.005, 0.03))
    return image, mask, np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames of one split: (uint8 images (n, size, size, 3), uint8 masks (n, size, size))."""
    check_request(split, size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=np.uint8)
    for i, k in enumerate(range(start, start + n)):
        images[i], masks[i] = render_frame(seed, split, k, size)
    return images, masks
