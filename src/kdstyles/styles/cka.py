"""``cka``: centred kernel alignment between the learner's and the source's embeddings over a
batch (linear CKA, Kornblith et al., 2019), as a loss ``1 - CKA``.

With ``X`` (B, d1) and ``Y`` (B, d2) the two embeddings of the batch's images, each feature
centred over the batch:

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It compares how the images relate to each other in the two networks (the similarity
structure), is invariant to rotations and scale of either embedding, and needs no projector,
so widths may differ. 1 when one embedding is a rotation and scaling of the other.
"""

from __future__ import annotations

import torch

from .base import Style, StyleOptions


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.T @ x).pow(2).sum()
    return cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-12)


class CKA(Style):
    name = "cka"
    Options = StyleOptions
    consumes = "embedding"

    def loss(self, source, target, options):
        return 1 - linear_cka(target.flatten(1).float(), source.flatten(1).float())
