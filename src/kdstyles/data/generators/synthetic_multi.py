"""The embedded default for multi-label classification: each image is a 2x2 mosaic of the
histology generator's patches, and its labels are the tissue classes that appear in it (one
to four of ``normal``, ``lymphocytic``, ``tumour``, ``stroma``), as a multi-hot vector."""

from __future__ import annotations

import numpy as np

from ...errors import KDError
from .synthetic import CHANNELS, CLASS_NAMES, DEFAULT_SIZE, SITES, check_request, render_patch

__all__ = ["CHANNELS", "CLASS_NAMES", "DEFAULT_SIZE", "DESCRIPTION", "SITES", "generate"]

DESCRIPTION = "the embedded multi-label histology mosaics (the tissue classes each 2x2 mosaic shows)"


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` mosaics of one split: (uint8 images (n, size, size, 3), uint8 labels (n, 4))."""
    check_request(split, size)
    if size < 32 or size % 2:
        raise KDError(f"data.image_size: {size}; the multi-label mosaics need an even size of at least 32 "
                      "(four tiles of at least 16 px)")
    half = size // 2
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.zeros((n, len(CLASS_NAMES)), dtype=np.uint8)
    for i, k in enumerate(range(start, start + n)):
        for q in range(4):
            tile, cls = render_patch(seed, split, 4 * k + q, half)
            y, x = divmod(q, 2)
            images[i, y * half:(y + 1) * half, x * half:(x + 1) * half] = tile
            labels[i, cls] = 1
    return images, labels
