"""A small vision transformer student (``arch: vit-tiny``, ``vit-small``), so a CNN and a
transformer student can be compared on the same teacher: ViT-style patch embedding, a class
token and learned position embeddings, pre-norm transformer blocks (``nn.TransformerEncoderLayer``:
multi-head self-attention and a GELU MLP of 4x the width), a final layer norm and a linear head
on the class token. Patches are 1/8 of the image side (an 8x8 grid; 28 px MedMNIST: 3 px, a
9x9 grid), so it fits the small inputs kdstyles trains on. No pretrained weights.

Taps, as a Hugging Face teacher's: ``blocks.K`` is block K's patch tokens as a map on the
patch grid (B, D, h, w), the default for features edges the last block's; ``fc:in`` the class
token after the final norm (the embedding)."""

from __future__ import annotations

import torch
import torch.nn as nn

SIZES = {"vit-tiny": (192, 4, 3), "vit-small": (384, 6, 6)}  # width, blocks, heads


class ViTStudent(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, width: int = 192, depth: int = 4,
                 heads: int = 3):
        super().__init__()
        patch = max(2, image_size // 8)
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(in_channels, width, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True) for _ in range(depth))
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(depth))  # taps: blocks.K
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.fc = nn.Linear(width, num_classes)

    @property
    def default_map_tap(self) -> str:
        return f"blocks.{len(self.blocks) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        b, d, h, w = tokens.shape
        t = torch.cat([self.cls_token.expand(b, -1, -1), tokens.flatten(2).transpose(1, 2)], 1) + self.pos_embed
        for layer, tap in zip(self.layers, self.blocks, strict=True):
            t = layer(t)
            tap(t[:, 1:].transpose(1, 2).reshape(b, d, h, w))
        return self.fc(self.norm(t)[:, 0])


def build_vit(name: str, in_channels: int, num_classes: int, image_size: int, widen: float = 1.0) -> ViTStudent:
    width, depth, heads = SIZES[name]
    width = max(heads, int(round(width * widen / heads)) * heads)  # a whole number of heads
    return ViTStudent(in_channels, num_classes, image_size, width, depth, heads)
