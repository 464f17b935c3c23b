"""``attention``: spatial attention transfer (Zagoruyko & Komodakis, 2017).

Each tapped map is pooled over channels into a spatial attention map
``A(F) = mean_c |F_c|^p``, flattened and L2-normalised per sample; the loss is the mean
squared difference between the learner's and the (detached) source's maps. Channel
counts may differ freely; when spatial sizes differ, the source map is resized to the
receiver's (no trainable adapter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import MapOptions, Style


class AttentionOptions(MapOptions):
    p: float = Field(2.0, gt=0, description="exponent of the channel pooling")


def attention_map(x: torch.Tensor, p: float) -> torch.Tensor:
    return F.normalize(x.abs().pow(p).mean(1).flatten(1), dim=1)


class Attention(Style):
    name = "attention"
    Options = AttentionOptions
    consumes = "map"
    adapter = "resize"

    def loss(self, source, target, options):
        return (attention_map(target, options.p) - attention_map(source, options.p)).pow(2).mean()
