"""Adapters for features edges whose tapped maps differ in shape.

An adapter sits on the receiving side and is trained by the receiver's loss (FitNets):
a 1x1 conv + BN maps the receiver's channels to the source's, and the (detached) source
map is resized to the receiver's spatial size (average pooling when shrinking, bilinear or
trilinear when growing). 2D maps (B, C, H, W) and 3D maps (B, C, D, H, W) alike; it exists
only where shapes differ.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.dims import dims as space
from ..errors import KDError


class Adapter(nn.Module):
    def __init__(self, dst_shape: torch.Size, src_shape: torch.Size, project: bool = True):
        super().__init__()
        if len(dst_shape) != len(src_shape) or len(dst_shape) not in (2, 4, 5):
            raise ValueError(f"cannot adapt a map of shape {tuple(dst_shape)} to {tuple(src_shape)}")
        self.size = tuple(dst_shape[2:])
        self.resize = tuple(src_shape[2:]) != self.size
        self.project: nn.Module = nn.Identity()
        if project and dst_shape[1] != src_shape[1]:
            if len(dst_shape) > 2:  # a map: a 1x1 convolution of its spatial dimensions
                kind = space(len(dst_shape) - 2)
                self.project = nn.Sequential(kind.conv(dst_shape[1], src_shape[1], 1, bias=False),
                                             kind.batch_norm(src_shape[1]))
            else:
                self.project = nn.Sequential(nn.Linear(dst_shape[1], src_shape[1], bias=False),
                                             nn.BatchNorm1d(src_shape[1]))

    def forward(self, dst: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(receiver's map in the source's channels, source map at the receiver's size)."""
        if self.resize:
            kind = space(len(self.size))
            if all(s >= d for s, d in zip(src.shape[2:], self.size)):
                src = kind.adaptive_avg_pool(src, self.size)
            else:
                src = F.interpolate(src, size=self.size, mode=kind.interpolation, align_corners=False)
        return self.project(dst), src


def make_adapter(dst_shape: torch.Size, src_shape: torch.Size, where: str, project: bool = True) -> Adapter | None:
    """An adapter when the shapes (beyond the batch) differ, else None. ``project=False``:
    only the spatial size is matched (for styles that pool channels away)."""
    differs = dst_shape[2:] != src_shape[2:] or (project and dst_shape[1] != src_shape[1])
    if len(dst_shape) == len(src_shape) and not differs:
        return None
    try:
        return Adapter(dst_shape, src_shape, project)
    except ValueError as exc:
        raise KDError(f"{where}: {exc}; tap maps of the same rank (both conv maps or both vectors)") from None
