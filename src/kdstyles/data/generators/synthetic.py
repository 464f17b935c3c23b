"""The embedded default dataset: procedural histology-like H&E patches.

Images are rendered with a Beer-Lambert stain model: a haematoxylin concentration map
(nuclei) and an eosin concentration map (stroma, cytoplasm) are mixed through per-image
perturbed stain vectors, ``rgb = exp(-(c_H * s_H + c_E * s_E))``. Four tissue classes
differ in nuclei density, size, shape, arrangement and stain intensity; their parameter
ranges overlap on purpose, and every image gets stain variation, blur and sensor noise,
so the task is learnable but not trivial (a small network after a short run sits well
below 100% accuracy).

Every sample is a pure function of ``(seed, split, index)``, so any subset can be
generated independently and the same seed always gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import KDError

CLASS_NAMES = ("normal", "lymphocytic", "tumour", "stroma")
DEFAULT_SIZE, CHANNELS = 64, 3  # the input a config without data.image_size / channels gets
SITES = (1, 2)  # data.site: the second site shifts stain, focus and noise (at_site)
DESCRIPTION = "the embedded synthetic histology patches"  # what the data is, for model cards
# unlabeled: data.unlabeled's extra images; external: data.external's (images of neither split, at any site)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3, "external": 4}
MIN_SIZE, MAX_SIZE = 16, 512

# Reference H&E optical-density stain vectors (RGB), rows: haematoxylin, eosin.
_STAIN_H = np.array([0.65, 0.70, 0.29])
_STAIN_E = np.array([0.07, 0.99, 0.11])


@dataclass(frozen=True)
class _ClassStyle:
    density: tuple[float, float]  # nuclei per 64x64 field
    radius: tuple[float, float]  # mean radius in px at 64 px
    elongation: tuple[float, float]  # major/minor axis ratio
    irregularity: tuple[float, float]  # boundary wobble amplitude
    darkness: tuple[float, float]  # haematoxylin concentration
    size_spread: float  # per-nucleus radius variation (pleomorphism)
    aligned: bool  # nuclei share an orientation (fibres)
    glands: tuple[int, int]  # number of gland lumens with a ring of nuclei
    fibres: float  # strength of fibrous eosin texture


_STYLES = (
    # normal: glands lined by small regular nuclei, moderate density
    _ClassStyle((8, 22), (2.0, 2.8), (1.0, 1.4), (0.0, 0.10), (0.9, 1.4), 0.12, False, (0, 2), 0.1),
    # lymphocytic: many small, dark, round nuclei
    _ClassStyle((24, 48), (1.5, 2.3), (1.0, 1.25), (0.0, 0.08), (1.2, 1.9), 0.12, False, (0, 1), 0.05),
    # tumour: crowded, large, pleomorphic, irregular nuclei
    _ClassStyle((16, 34), (2.5, 3.8), (1.1, 1.9), (0.08, 0.30), (1.0, 1.7), 0.35, False, (0, 1), 0.05),
    # stroma: sparse elongated spindle nuclei along fibres
    _ClassStyle((8, 22), (1.8, 2.8), (1.7, 3.2), (0.0, 0.12), (0.8, 1.4), 0.2, True, (0, 1), 0.7),
)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1]: a coarse grid of noise, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size)
    rows = np.stack([np.interp(coords, np.arange(cells + 1), grid[:, j]) for j in range(cells + 1)], 1)
    return np.stack([np.interp(coords, np.arange(cells + 1), r) for r in rows], 0)


def _blur(img: np.ndarray, sigma: float, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """Separable Gaussian blur along ``axes`` (an (H, W[, C]) image's two; a volume's three),
    with edge padding."""
    if sigma < 0.3:
        return img
    radius = max(1, int(math.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in axes:
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out


def check_request(split: str, size: int) -> None:
    if split not in SPLIT_IDS:
        raise KDError(f"synthetic split '{split}' is not known; allowed: {', '.join(SPLIT_IDS)}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise KDError(f"data.image_size: {size} is outside the synthetic generator's range {MIN_SIZE}..{MAX_SIZE}")


def finish(img: np.ndarray, rng: np.random.Generator, blur: float, noise: float) -> np.ndarray:
    """Camera/scanner effects on a float RGB image in [0, 1], then uint8."""
    img = _blur(img, blur)
    img = img + rng.normal(0, noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _draw_nucleus(h_map: np.ndarray, rng: np.random.Generator, cy: float, cx: float,
                  r: float, elong: float, angle: float, wobble: float, dark: float) -> None:
    """Add one soft-edged elliptical nucleus with chromatin texture to the H map."""
    size = h_map.shape[0]
    a, b = r * math.sqrt(elong), r / math.sqrt(elong)
    ext = int(math.ceil(a + 2))
    y0, y1 = max(0, int(cy) - ext), min(size, int(cy) + ext + 2)
    x0, x1 = max(0, int(cx) - ext), min(size, int(cx) + ext + 2)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = (dx * ca + dy * sa) / a, (-dx * sa + dy * ca) / b
    theta = np.arctan2(v, u)
    phase = rng.uniform(0, 2 * math.pi, 2)
    boundary = 1 + wobble * (np.sin(3 * theta + phase[0]) + 0.6 * np.sin(5 * theta + phase[1]))
    dist = np.sqrt(u * u + v * v) / boundary
    edge = 1.0 / (1.0 + np.exp((dist - 1.0) * 6.0))
    texture = 1.0 + 0.25 * rng.standard_normal(edge.shape)
    rim = 1.0 + 0.3 * np.clip(dist, 0, 1) ** 2  # chromatin condensed at the membrane
    h_map[y0:y1, x0:x1] += dark * edge * texture * rim


def render_patch(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int]:
    """Render one patch: returns (uint8 array of shape (size, size, 3), class index)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    label = int(rng.integers(len(CLASS_NAMES)))
    st = _STYLES[label]
    scale = size / 64.0
    area = (size / 64.0) ** 2

    # Eosin: stroma/cytoplasm with smooth variation and optional fibres.
    e_map = 0.35 + 0.35 * _smooth_field(rng, size, 4)
    fibre_angle = rng.uniform(0, math.pi)
    if st.fibres > 0:
        yy, xx = np.mgrid[0:size, 0:size] / max(scale, 1e-6)
        proj = xx * math.cos(fibre_angle) + yy * math.sin(fibre_angle)
        freq = rng.uniform(0.5, 0.9)
        warp = 3.0 * _smooth_field(rng, size, 3)
        e_map = e_map + st.fibres * 0.35 * (0.5 + 0.5 * np.sin(freq * proj + warp * 2 * math.pi))
    h_map = np.zeros((size, size))

    # Glands: a pale lumen surrounded by a ring of nuclei.
    n_glands = int(rng.integers(st.glands[0], st.glands[1] + 1))
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n_glands):
        gy, gx = rng.uniform(0.15, 0.85, 2) * size
        gr = rng.uniform(7, 12) * scale
        lumen = np.sqrt((yy - gy) ** 2 + (xx - gx) ** 2) < gr * 0.75
        e_map = np.where(lumen, e_map * 0.15, e_map)
        n_ring = max(5, int(2 * math.pi * gr / (5.5 * scale)))
        for k in range(n_ring):
            t = 2 * math.pi * k / n_ring + rng.normal(0, 0.08)
            _draw_nucleus(h_map, rng, gy + gr * math.sin(t), gx + gr * math.cos(t),
                          rng.uniform(*st.radius) * scale, 1.3, t, 0.05, rng.uniform(*st.darkness))

    # Free nuclei; a share of them drawn from another class's style (tissue is mixed).
    n_nuclei = int(round(rng.uniform(*st.density) * area))
    mix_share = rng.uniform(0.0, 0.35)
    base_r, base_el = rng.uniform(*st.radius), rng.uniform(*st.elongation)
    for _ in range(n_nuclei):
        s = st
        if rng.random() < mix_share:
            s = _STYLES[int(rng.integers(len(_STYLES)))]
        r = max(0.8, (base_r if s is st else rng.uniform(*s.radius)) * (1 + s.size_spread * rng.standard_normal()))
        el = max(1.0, (base_el if s is st else rng.uniform(*s.elongation)) + 0.15 * rng.standard_normal())
        ang = fibre_angle + rng.normal(0, 0.25) if s.aligned else rng.uniform(0, math.pi)
        cy, cx = rng.uniform(0, size, 2)
        _draw_nucleus(h_map, rng, cy, cx, r * scale, el, ang, rng.uniform(*s.irregularity), rng.uniform(*s.darkness))

    # Stain variation: perturbed stain vectors and concentrations per image.
    stain_h = _STAIN_H * rng.uniform(0.75, 1.25, 3)
    stain_e = _STAIN_E * rng.uniform(0.75, 1.25, 3)
    h_gain, e_gain = rng.uniform(0.6, 1.4), rng.uniform(0.5, 1.3)
    od = (h_gain * np.clip(h_map, 0, 3.0))[..., None] * stain_h + (e_gain * np.clip(e_map, 0, None))[..., None] * stain_e
    rgb = np.exp(-od) * rng.uniform(0.85, 1.0)  # illumination
    return finish(rgb, rng, rng.uniform(0.0, 1.1) * max(scale, 0.5), rng.uniform(0.01, 0.05)), label


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` patches of one split: (uint8 images (n, size, size, 3), int64 labels (n,))."""
    check_request(split, size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i, k in enumerate(range(start, start + n)):
        images[i], labels[i] = render_patch(seed, split, k, size)
    return images, labels
