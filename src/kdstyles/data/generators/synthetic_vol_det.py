"""The embedded volumes for 3D detection (``task: detection``, ``data.spatial_dims: 3``): the
CT-like organ crops of :mod:`kdstyles.data.generators.synthetic_vol` with a box around the lesion,
class ``cyst`` or ``tumour``; about one volume in three is normal and has no box, and every
volume holds small dense vessels that are not lesions.

Boxes are ``(x1, y1, z1, x2, y2, z2, class)`` in voxel edges: x along the last array axis,
z along the first (:mod:`kdstyles.common.boxes`).
"""

from __future__ import annotations

import numpy as np

from .synthetic_vol import (CHANNELS, DEFAULT_SIZE, DESCRIPTION, MAX_SIZE, MIN_SIZE, SITES, check_request,
                            render_with_mask)

# the sizes are what the synthetic source reads of every generator
__all__ = ["CHANNELS", "CLASS_NAMES", "DEFAULT_SIZE", "DESCRIPTION", "MAX_SIZE", "MIN_SIZE", "SITES",
           "generate", "lesion_box"]

CLASS_NAMES = ("cyst", "tumour")


def lesion_box(mask: np.ndarray, label: int) -> np.ndarray:
    """The lesion's box (1, 7) from a volume's mask (value 2), or (0, 7) for a normal volume."""
    zs, ys, xs = np.nonzero(mask == 2)
    if label == 0 or len(zs) == 0:
        return np.zeros((0, 7), np.float32)
    return np.array([[xs.min(), ys.min(), zs.min(), xs.max() + 1, ys.max() + 1, zs.max() + 1, label - 1]],
                    np.float32)


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` volumes of one split: (uint8 (n, size, size, size, 1), per volume its boxes (m, 7))."""
    check_request(split, size)
    volumes = np.empty((n, size, size, size, 1), dtype=np.uint8)
    boxes = []
    for i, k in enumerate(range(start, start + n)):
        volumes[i], label, mask = render_with_mask(seed, split, k, size)
        boxes.append(lesion_box(mask, label))
    return volumes, boxes
