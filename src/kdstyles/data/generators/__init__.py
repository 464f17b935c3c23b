"""The embedded data's generators, one module per kind of image (``Task.synthetic`` names them
by spatial dimensions): histology patches (``synthetic``), their mosaics with
several findings (``synthetic_multi``), endoscopy frames with polyp masks (``synthetic_seg``)
and boxes (``synthetic_det``), and CT-like volumes for classification, segmentation,
detection and multi-label (``synthetic_vol*``). Every item is a pure function of (seed, split,
index); ``kdstyles.data.sources.synthetic`` renders, caches and checks them."""

from importlib import import_module
from types import ModuleType

import numpy as np

# The second site (data.site: 2, or an external set's site: 2): the same kinds of images as if
# from another laboratory's stainer and scanner. Colour: red and green down, blue up (a bluer
# haematoxylin, a paler eosin); intensity: gamma 1.25 (darker mid-tones); optics: a Gaussian blur
# of 0.6 px at 64 px (scaled with the image); sensor: Gaussian noise of 2.5% of the range. Chosen
# so that a demo-trained teacher loses about 7 points of accuracy there and its students 11 to 15
# (a shift like another hospital's, not a different task); stronger settings fall off a cliff.
SITE2_GAIN, SITE2_OFFSET = (0.92, 0.88, 1.06), (0.025, 0.0, -0.015)
SITE2_GAMMA, SITE2_BLUR, SITE2_NOISE = 1.25, 0.6, 0.025


def generator(name: str) -> ModuleType:
    """The generator module of that name (``generate``, ``CLASS_NAMES``, ``DEFAULT_SIZE``, ``CHANNELS``,
    ``DESCRIPTION``)."""
    return import_module(f"{__name__}.{name}")


def at_site(images: np.ndarray, site: int, seed: int) -> np.ndarray:
    """Generated uint8 images (N, H, W, 3) as the embedded data's ``site`` shows them: 1 as
    generated; 2 shifted in colour, intensity, sharpness and noise (the constants above), seeded."""
    from ...errors import KDError
    from .synthetic import _blur

    if site == 1:
        return images
    if images.ndim != 4 or images.shape[-1] != 3:  # validation: RGB images only
        raise KDError("data.site: 2: the embedded second site has 2D images only; leave site out for volumes")
    x = images.astype(np.float32) / 255
    x = np.clip(x * np.float32(SITE2_GAIN) + np.float32(SITE2_OFFSET), 0, 1) ** SITE2_GAMMA
    sigma = SITE2_BLUR * images.shape[1] / 64
    x = np.stack([_blur(img, sigma) for img in x])
    x = x + np.random.default_rng([seed, 9173, len(images)]).normal(0, SITE2_NOISE, x.shape).astype(np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
