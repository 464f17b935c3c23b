"""The detection network: an encoder-decoder body (any of the segmentation archs) whose
full-resolution features feed two small CenterNet heads, a heatmap per class and four box
channels (see :mod:`kdstyles.common.boxes`). Teacher and students of any size output the same
(B, K + 4, H, W) map (volumes: (B, K + 6, D, H, W)), so their outputs line up pixel for
pixel, as distillation needs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..common.boxes import HEAT_PRIOR, box_channels
from ..common.dims import dims as space


def _head(width: int, out: int, dims: int) -> nn.Sequential:
    conv = space(dims).conv
    return nn.Sequential(conv(width, width, 3, padding=1), nn.ReLU(), conv(width, out, 1))


class CenterNet(nn.Module):
    def __init__(self, body: nn.Module, width: int, num_classes: int, dims: int = 2):
        super().__init__()
        self.body = body
        self.neck = nn.Sequential(space(dims).batch_norm(width), nn.ReLU())
        self.heat = _head(width, num_classes, dims)
        self.box = _head(width, box_channels(dims), dims)
        prior = HEAT_PRIOR[dims]
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - prior) / prior))  # focal loss's prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.neck(self.body(x))
        return torch.cat([self.heat(f), self.box(f)], dim=1)
