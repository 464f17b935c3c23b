"""``dist``: DIST, knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

Exact matching of a much stronger source's probabilities (KL) is hard for a small learner;
DIST asks it to keep only their *relations*, measured by Pearson correlation ``rho``
(invariant to shifts and scales of the probabilities):

- inter-class: for each sample, the correlation of source and learner probabilities over
  the classes (which classes the source ranks alike), ``1 - rho`` averaged over samples;
- intra-class: for each class, the correlation over the batch's samples (which samples the
  source finds more or less of that class), ``1 - rho`` averaged over classes;

    L = T^2 * (beta * inter + gamma * intra),  probabilities softmax(z / T)

Defaults are the paper's ImageNet setting (beta = gamma = 1, T = 1); on CIFAR-100 it used
beta = gamma = 2, T = 4. For segmentation every pixel is a sample, as in the paper's
segmentation experiments (intra-class over every pixel of the batch).
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import LogitOptions, Style, class_rows, soften


class DISTOptions(LogitOptions):
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation (per sample, over classes)")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation (per class, over samples)")


def pearson_distance(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """1 - Pearson correlation of ``a`` and ``b`` along ``dim`` (the mean over the other dim)."""
    a, b = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    rho = (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + 1e-8)
    return (1 - rho).mean()


class DIST(Style):
    name = "dist"
    Options = DISTOptions
    exclusive = True

    def loss(self, source, target, options):
        p_src = class_rows(soften(source, options)).softmax(1)
        p_dst = class_rows(soften(target, options)).softmax(1)
        inter, intra = pearson_distance(p_src, p_dst, 1), pearson_distance(p_src, p_dst, 0)
        loss = options.beta * inter + options.gamma * intra
        return loss * options.temperature**2 if options.t2_scaling else loss
