"""The embedded default for detection: the segmentation generator's endoscopy frames, with
a box around each polyp (its whole extent) instead of the mask. Zero to three polyps per
frame, about one frame in six without any; one class, ``polyp``."""

from __future__ import annotations

import numpy as np

from .synthetic import check_request
from .synthetic_seg import render_with_boxes

CLASS_NAMES = ("polyp",)
DEFAULT_SIZE, CHANNELS = 64, 3
SITES = (1, 2)  # data.site: the second site shifts stain, focus and noise (at_site)
DESCRIPTION = "the embedded synthetic endoscopy frames with polyp boxes"


def generate(seed: int, split: str, n: int, size: int, start: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` frames of one split: (uint8 images (n, size, size, 3), per frame a float array
    (m, 5) of boxes ``x1, y1, x2, y2, class``)."""
    check_request(split, size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    boxes = []
    for i, k in enumerate(range(start, start + n)):
        images[i], _, b = render_with_boxes(seed, split, k, size)
        boxes.append(np.concatenate([b, np.zeros((len(b), 1), np.float32)], axis=1))
    return images, boxes
