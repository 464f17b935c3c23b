"""Images and volumes in memory fitted to the network input: resized to its side and
converted to its channels (grey repeated, colour averaged). Shared by the sources and the
images without labels."""

from __future__ import annotations

import numpy as np

from ..store.imageio import convert


def fit_arrays(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """In-memory images (N, H, W, C) or volumes (N, D, H, W, C) converted to the configured
    channels and size."""
    dims = images.ndim - 2
    if images.shape[1:] == (size,) * dims + (channels,):
        return images
    return {2: fit_images, 3: fit_volumes}[dims](images, channels, size)


def fit_images(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """Images (N, H, W, C) resized (Pillow, as image files are read) and converted to ``channels``."""
    from PIL import Image

    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, img in enumerate(images):
        out[i] = convert(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), channels, size)
    return out


def fit_volumes(volumes: np.ndarray, channels: int, size: int | None) -> np.ndarray:
    """Volumes resized (trilinear) to size^3 (``None``: their own shape, all alike), grey-scale
    repeated or colour averaged to ``channels``."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(volumes), *((size,) * 3 if size else volumes.shape[1:4]), channels), np.uint8)
    for i, v in enumerate(volumes):
        x = torch.from_numpy(np.ascontiguousarray(v)).float().movedim(-1, 0)[None]
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1, -1)
        if size and tuple(x.shape[2:]) != (size,) * 3:
            x = F.interpolate(x, size=(size,) * 3, mode="trilinear", align_corners=False)
        out[i] = x[0].movedim(0, -1).round().clamp(0, 255).to(torch.uint8).numpy()
    return out
