"""``relations``: relational KD on embeddings (RKD, Park et al. 2019).

Compares how a batch's samples relate to each other in the learner's and the source's
penultimate embeddings (the input of the last Linear layer), so the embedding sizes may
differ and no adapter is needed:

- distance-wise: pairwise Euclidean distances, each matrix divided by its mean non-zero
  distance, compared with the Huber (smooth L1) loss;
- angle-wise: for every triplet (i, j, k), the cosine of the angle at j between
  e_i - e_j and e_k - e_j, compared with the Huber loss.

``loss = distance_weight * L_distance + angle_weight * L_angle`` (RKD's 1:2 ratio by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Style, StyleOptions


class RelationsOptions(StyleOptions):
    distance_weight: float = Field(1.0, ge=0, description="weight of the distance-wise term")
    angle_weight: float = Field(2.0, ge=0, description="weight of the angle-wise term")


def distance_matrix(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances divided by their mean over distinct pairs (RKD's mu). Computed
    from the differences, not cdist's matrix-product shortcut (which it takes above 25 rows and
    which leaves small positive values on the diagonal); the diagonal is exactly zero."""
    d = torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist")
    d = d.masked_fill(torch.eye(len(e), dtype=torch.bool, device=e.device), 0.0)
    positive = d[d > 0]
    return d / (positive.mean() if positive.numel() else d.new_tensor(1.0))


def angle_tensor(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j formed by (i, j, k): entry [j, i, k]."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = normalise(e_i - e_j)
    return torch.bmm(diff, diff.transpose(1, 2))


class Relations(Style):
    name = "relations"
    Options = RelationsOptions
    consumes = "embedding"

    def loss(self, source, target, options):
        source, target = source.flatten(1).float(), target.flatten(1).float()
        total = target.new_zeros(())
        if options.distance_weight:
            total = total + options.distance_weight * F.smooth_l1_loss(distance_matrix(target),
                                                                      distance_matrix(source))
        if options.angle_weight:
            total = total + options.angle_weight * F.smooth_l1_loss(angle_tensor(target), angle_tensor(source))
        return total
