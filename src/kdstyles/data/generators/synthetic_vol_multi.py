"""The embedded volumes for multi-label classification (``task: multilabel``,
``data.spatial_dims: 3``): the CT-like organ crops of :mod:`kdstyles.data.generators.synthetic_vol`,
each holding any combination of three findings, drawn independently, like the findings a
CT-RATE report lists per scan:

- ``cyst`` (40% of volumes): round, smooth, dark;
- ``tumour`` (40%): irregular, slightly brighter, with a darker rim;
- ``calcification`` (30%): a small, very bright spot inside the organ (after blur the
  brightest voxel of about 98% of its volumes; the small dense vessels every volume holds
  are not findings).

About a quarter of the volumes have no finding. A cyst and a tumour in one volume sit on
opposite sides of the organ's centre. Labels are multi-hot (n, 3); every volume is a pure
function of ``(seed, split, index)``.
"""

from __future__ import annotations

import numpy as np

from .synthetic import SPLIT_IDS
from .synthetic_vol import (CHANNELS, DEFAULT_SIZE, DESCRIPTION, MAX_SIZE, MIN_SIZE, SITES, _blob, add_lesion,
                            check_request, finish, organ_scene)

__all__ = ["CHANNELS", "CLASS_NAMES", "DEFAULT_SIZE", "DESCRIPTION", "MAX_SIZE", "MIN_SIZE", "SITES", "generate",
           "render_findings"]

CLASS_NAMES = ("cyst", "tumour", "calcification")
PREVALENCE = (0.40, 0.40, 0.30)


def render_findings(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One volume (uint8 (size, size, size, 1)), its multi-hot findings (uint8 (3,)) and a mask
    of where each is (0 outside the organ, 1 organ, 2 + finding index)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 304])
    findings = (rng.random(len(CLASS_NAMES)) < PREVALENCE).astype(np.uint8)
    scene = organ_scene(rng, size)
    centre = rng.uniform(0.42, 0.58, 3) * size
    shift = rng.normal(size=3)
    shift *= 5 * scene.scale / np.linalg.norm(shift)  # cyst and tumour together: 10 voxels apart at 32^3
    both = findings[0] and findings[1]
    for kind, side in ((1, 1.0), (2, -1.0)):
        if findings[kind - 1]:
            add_lesion(rng, scene, kind, centre + side * shift if both else centre, value=1 + kind)
    if findings[2]:  # a calcification: on a voxel well inside the organ (whatever the organ's turn)
        spot = np.round(scene.centre + rng.uniform(-0.3, 0.3, 3) * scene.radii.min())
        blob = _blob(size, rng, spot, rng.uniform(1.3, 1.9, 3) * scene.scale, 0.0)
        scene.vol += rng.uniform(0.5, 0.7) * np.clip((1.0 - blob) * 3, 0, 1)
        scene.mask[(blob < 1.0) & (scene.organ < 1.0)] = 4
    return finish(rng, scene), findings, scene.mask


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` volumes of one split: (uint8 (n, size, size, size, 1), uint8 multi-hot labels (n, 3))."""
    check_request(split, size)
    volumes = np.empty((n, size, size, size, 1), dtype=np.uint8)
    labels = np.zeros((n, len(CLASS_NAMES)), dtype=np.uint8)
    for i, k in enumerate(range(start, start + n)):
        volumes[i], labels[i], _ = render_findings(seed, split, k, size)
    return volumes, labels
