"""``features``: feature-based KD, MSE between the learner's tapped map (through its
adapter when shapes differ) and the teacher's detached map.

``normalize``: ``none`` compares raw maps (default); ``channel`` standardises each
channel over its spatial positions; ``l2`` divides each sample's flattened map by its L2
norm (as in attention-style transfer).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import MapOptions, Style


class FeaturesOptions(MapOptions):
    normalize: Literal["none", "channel", "l2"] = Field(
        "none", description="compare raw maps, maps standardised per channel, or L2-normalised maps")


def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "channel" and x.ndim > 2:
        flat = x.flatten(2)
        mean, std = flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)
        return ((flat - mean) / (std + 1e-6)).view_as(x)
    if how == "l2":
        return F.normalize(x.flatten(1), dim=1).view_as(x)
    return x


class Features(Style):
    name = "features"
    Options = FeaturesOptions
    consumes = "map"
    adapter = "project"

    def loss(self, source, target, options):
        target, source = target.float(), source.float()  # fp32 under autocast too
        return F.mse_loss(_normalize(target, options.normalize), _normalize(source, options.normalize))
