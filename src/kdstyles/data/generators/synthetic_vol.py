"""The embedded volumes (``data.spatial_dims: 3``): procedural CT-like crops of an organ, for
3D classification (and, through :class:`Scene`, ``organ_scene``, ``add_lesion`` and
``finish``, the segmentation, detection and multi-label volumes).

Each volume is a grey-scale crop (D = H = W) of soft tissue with smooth intensity
variation, holding an organ (a wobbly ellipsoid, brighter than its surroundings, with its
own texture) and, by class, a lesion inside it:

- ``normal``: no lesion (but one or two small dense vessels, like lesions' distractors);
- ``cyst``: a smooth, round, dark (fluid) lesion;
- ``tumour``: an irregular lesion slightly brighter than the organ, with a darker rim.

Lesion sizes and contrasts overlap between classes, and every volume gets partial-volume
blur and noise, so a small 3D network separates them well but not perfectly after a short
run. Every sample is a pure function of ``(seed, split, index)``; 16 to 96 voxels a side
(28-32 is the intended range on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import KDError
from .synthetic import SPLIT_IDS, _blur

CLASS_NAMES = ("normal", "cyst", "tumour")
MIN_SIZE, MAX_SIZE = 16, 96
DEFAULT_SIZE = 32
CHANNELS = 1
SITES = (1,)  # no second site for volumes
DESCRIPTION = "the embedded synthetic CT-like volumes"


def _smooth(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] on a size^3 grid (coarse noise, trilinear upsampling)."""
    grid = rng.random((cells + 1,) * 3)
    coords = np.linspace(0, cells, size)
    out = grid
    for axis in range(3):
        lo = np.floor(coords).astype(int).clip(0, cells - 1)
        t = (coords - lo).reshape([-1 if a == axis else 1 for a in range(3)])
        out = np.take(out, lo, axis=axis) * (1 - t) + np.take(out, lo + 1, axis=axis) * t
    return out


def _blob(size: int, rng: np.random.Generator, centre: np.ndarray, radii: np.ndarray, wobble: float) -> np.ndarray:
    """A signed distance-like field (< 1 inside) of a randomly rotated, wobbly ellipsoid."""
    axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    grid = np.stack(np.meshgrid(*(np.arange(size),) * 3, indexing="ij"), -1) - centre
    local = grid @ axes / radii
    dist = np.linalg.norm(local, axis=-1)
    theta = np.arctan2(local[..., 1], local[..., 0])
    phi = np.arccos(np.clip(local[..., 2] / np.maximum(dist, 1e-6), -1, 1))
    k = rng.integers(2, 5)
    return dist / (1 + wobble * np.sin(k * theta + rng.uniform(0, 6.3)) * np.sin(k * phi + rng.uniform(0, 6.3)))


def render_volume(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int]:
    """One volume: (uint8 (size, size, size, 1), class index)."""
    volume, label, _ = render_with_mask(seed, split, index, size)
    return volume, label


def render_with_mask(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """One volume, its class, and its mask (uint8 (size, size, size): 0 outside the organ, 1
    organ, 2 lesion)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 303])
    label = int(rng.integers(len(CLASS_NAMES)))
    scene = organ_scene(rng, size)
    if label:
        add_lesion(rng, scene, label, rng.uniform(0.42, 0.58, 3) * size)
    return finish(rng, scene), label, scene.mask


@dataclass
class Scene:
    """A volume being rendered: intensities, mask, the organ's distance field (< 1 inside), its
    soft inside, centre and radii; ``scale`` is the size relative to 32 voxels."""

    size: int
    vol: np.ndarray
    mask: np.ndarray
    organ: np.ndarray
    inside: np.ndarray
    centre: np.ndarray
    radii: np.ndarray

    @property
    def scale(self) -> float:
        return self.size / 32.0


def organ_scene(rng: np.random.Generator, size: int) -> Scene:
    """Soft tissue, the organ and one or two small dense vessels (present in every volume)."""
    s = size / 32.0
    vol = 0.30 + 0.10 * _smooth(rng, size, 3)  # surrounding soft tissue
    centre, radii = rng.uniform(0.42, 0.58, 3) * size, rng.uniform(9, 13, 3) * s
    organ = _blob(size, rng, centre, radii, 0.08)
    inside = np.clip((1.0 - organ) * 4, 0, 1)  # soft organ edge
    mask = (organ < 1.0).astype(np.uint8)
    vol += inside * (0.22 + 0.06 * _smooth(rng, size, 6) + rng.uniform(-0.03, 0.03))
    for _ in range(rng.integers(1, 3)):  # small dense vessels: present in every class
        v = _blob(size, rng, rng.uniform(0.3, 0.7, 3) * size, rng.uniform(0.8, 1.6, 3) * s, 0.0)
        vol += 0.18 * np.clip((1.0 - v) * 3, 0, 1)
    return Scene(size, vol, mask, organ, inside, centre, radii)


def add_lesion(rng: np.random.Generator, scene: Scene, kind: int, centre: np.ndarray, value: int = 2) -> None:
    """A cyst (kind 1: round, smooth, dark fluid) or a tumour (kind 2: irregular, a little
    brighter, with a darker rim) centred at ``centre``, marked ``value`` in the mask."""
    size, s, inside = scene.size, scene.scale, scene.inside
    r = rng.uniform(2.2, 4.5) * s
    if kind == 1:
        lesion = _blob(size, rng, centre, r * rng.uniform(0.9, 1.1, 3), 0.02)
        scene.vol -= rng.uniform(0.14, 0.26) * np.clip((1.0 - lesion) * 5, 0, 1) * inside
    else:
        lesion = _blob(size, rng, centre, r * rng.uniform(0.7, 1.3, 3), 0.25)
        core = np.clip((1.0 - lesion) * 3, 0, 1)
        rim = np.exp(-((lesion - 1.05) / 0.12) ** 2)
        scene.vol += (rng.uniform(0.06, 0.14) * core - rng.uniform(0.05, 0.12) * rim) * inside
    scene.mask[(lesion < 1.0) & (scene.organ < 1.0)] = value


def finish(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """Partial-volume blur and noise: uint8 (size, size, size, 1)."""
    vol = _blur(scene.vol, rng.uniform(0.3, 0.9) * scene.scale, axes=(0, 1, 2))
    vol += rng.normal(0, rng.uniform(0.02, 0.05), vol.shape)
    return (np.clip(vol, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None]


def check_request(split: str, size: int) -> None:
    if split not in SPLIT_IDS:
        raise KDError(f"synthetic split '{split}' is not known; allowed: {', '.join(SPLIT_IDS)}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise KDError(f"data.image_size: {size} is outside the synthetic volumes' range {MIN_SIZE}..{MAX_SIZE}")


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` volumes of one split: (uint8 (n, size, size, size, 1), int64 labels (n,))."""
    check_request(split, size)
    volumes = np.empty((n, size, size, size, 1), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for i, k in enumerate(range(start, start + n)):
        volumes[i], labels[i] = render_volume(seed, split, k, size)
    return volumes, labels
