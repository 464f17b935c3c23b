"""The detection network: an encoder-decoder body (any of the segmentation archs) whose
full-resolution features feed two small CenterNet heads, a heatmap per class and four box
channels (see :mod:`kdstyles.boxes`). Teacher and students of any size output the same
(B, K + 4, H, W) map, so their outputs line up pixel for pixel, as distillation needs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..boxes import BOX_CHANNELS, HEAT_PRIOR


def _head(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, out, 1))


class CenterNet(nn.Module):
    def __init__(self, body: nn.Module, width: int, num_classes: int):
        super().__init__()
        self.body = body
        self.neck = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU())
        self.heat = _head(width, num_classes)
        self.box = _head(width, BOX_CHANNELS)
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))  # focal loss's prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.neck(self.body(x))
        return torch.cat([self.heat(f), self.box(f)], dim=1)
