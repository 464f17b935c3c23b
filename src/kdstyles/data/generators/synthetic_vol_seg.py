"""The embedded volumes for 3D segmentation (``task: segmentation``, ``data.spatial_dims: 3``):
the CT-like organ crops of :mod:`kdstyles.data.generators.synthetic_vol` with their masks, 0 outside
the organ, 1 organ, 2 lesion (a cyst or a tumour; about one volume in three has none).
The lesion's edge is blurred into the organ, so the lesion class is the hard one. Voxels
are nominally 1 mm cubes.
"""

from __future__ import annotations

import numpy as np

from .synthetic_vol import (CHANNELS, DEFAULT_SIZE, DESCRIPTION, MAX_SIZE, MIN_SIZE, SITES, check_request,
                            render_with_mask)

# the sizes are what the synthetic source reads of every generator
__all__ = ["CHANNELS", "CLASS_NAMES", "DEFAULT_SIZE", "DESCRIPTION", "MAX_SIZE", "MIN_SIZE", "SITES",
           "generate"]

CLASS_NAMES = ("background", "organ", "lesion")


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` volumes of one split: (uint8 (n, size, size, size, 1), uint8 masks (n, size, size, size))."""
    check_request(split, size)
    volumes = np.empty((n, size, size, size, 1), dtype=np.uint8)
    masks = np.empty((n, size, size, size), dtype=np.uint8)
    for i, k in enumerate(range(start, start + n)):
        volumes[i], _, masks[i] = render_with_mask(seed, split, k, size)
    return volumes, masks
