"""The embedded data's generators, one module per kind of image (``Task.synthetic`` and
``Task.synthetic_volumes`` name them): histology patches (``synthetic``), their mosaics with
several findings (``synthetic_multi``), endoscopy frames with polyp masks (``synthetic_seg``)
and boxes (``synthetic_det``), and CT-like volumes for classification, segmentation,
detection and multi-label (``synthetic_vol*``). Every item is a pure function of (seed, split,
index); ``kdstyles.data.sources.synthetic`` renders, caches and checks them."""

from importlib import import_module
from types import ModuleType


def generator(name: str) -> ModuleType:
    """The generator module of that name (``generate``, ``CLASS_NAMES``, ``DEFAULT_SIZE``)."""
    return import_module(f"{__name__}.{name}")
