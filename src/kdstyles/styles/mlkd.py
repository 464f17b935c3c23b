"""``mlkd``: multi-level logit distillation (Jin, Wang and Lin, CVPR 2023), with logit
standardization as an option (Sun et al., CVPR 2024).

The learner matches the source's predictions at three levels, each at several temperatures
("prediction augmentation"). With P the softmax of a batch's logits at temperature T (B rows,
K classes; standardized first where ``standardize``):

- instance level: KL(P_src || P_dst) summed over classes, averaged over the batch, times T²
  (KD at T);
- batch level: the B x B Gram matrix G = P Pᵀ (how alike the batch's images are predicted),
  ||G_src - G_dst||²_F / B;
- class level: the K x K matrix C = Pᵀ P (how the classes co-occur over the batch),
  ||C_src - C_dst||²_F / K;

    L_mlkd = (1 / |temperatures|) * sum over T of (instance_weight * L_instance(T)
                                                   + batch_weight * L_batch(T) + class_weight * L_class(T))

The authors' code sums over its five temperatures (2, 3, 4, 5, 6); kdstyles averages, so the
edge's weight means for ``mlkd`` what it means for ``predictions`` (multiply it by 5 for
theirs). Their code also masks half the batch by the teacher's confidence, but multiplies an
already averaged loss by the mask, which only halves it; kdstyles leaves it out. Their second,
strongly augmented view of every image in the same step is not reproduced: each step shows one
view, a new one every epoch (or one of ``data.views`` fixed ones).
For dense outputs (segmentation) every pixel is a row of the instance and class levels, and the
batch level compares the images' mean predictions (a Gram matrix over every pixel of a batch
would not fit in memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from .base import Style, StyleOptions, class_rows, zscore


class MLKDOptions(StyleOptions):
    temperatures: list[float] = Field([2.0, 3.0, 4.0, 5.0, 6.0], description="the temperatures every level is "
                                      "computed at (prediction augmentation; the paper's five)")
    instance_weight: float = Field(1.0, ge=0, description="weight of the instance level (KD at each temperature)")
    batch_weight: float = Field(1.0, ge=0, description="weight of the batch level (B x B Gram matrices)")
    class_weight: float = Field(1.0, ge=0, description="weight of the class level (K x K matrices)")
    standardize: bool = Field(False, description="z-score each sample's logits over the classes first (logit "
                                                 "standardization); with two classes kdstyles warns")

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(not t > 0 for t in v):
            raise ValueError("needs one or more temperatures, each above 0, e.g. [2, 3, 4, 5, 6]")
        return v


def softmaxed(logits: torch.Tensor, temperature: float, standardize: bool) -> torch.Tensor:
    """(B, K, *spatial) logits -> log-probabilities at ``temperature`` over dim 1."""
    z = logits.float()
    if standardize:
        z = zscore(z)
    return F.log_softmax(z / temperature, dim=1)


def levels(source: torch.Tensor, target: torch.Tensor, temperature: float, standardize: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three levels' losses at one temperature."""
    log_src, log_dst = softmaxed(source, temperature, standardize), softmaxed(target, temperature, standardize)
    p_src, p_dst = log_src.exp(), log_dst.exp()
    instance = (p_src * (log_src - log_dst)).sum(1).mean() * temperature**2
    rows_src, rows_dst = class_rows(p_src), class_rows(p_dst)
    k = rows_src.shape[1]
    classes = ((rows_src.T @ rows_src - rows_dst.T @ rows_dst) ** 2).sum() / k
    if p_src.ndim > 2:  # dense: the images' mean predictions
        img_src, img_dst = p_src.flatten(2).mean(2), p_dst.flatten(2).mean(2)
    else:
        img_src, img_dst = p_src, p_dst
    batch = ((img_src @ img_src.T - img_dst @ img_dst.T) ** 2).sum() / len(img_src)
    return instance, batch, classes


class MLKD(Style):
    name = "mlkd"
    Options = MLKDOptions
    exclusive = True

    def loss(self, source, target, options):
        total = target.new_zeros((), dtype=torch.float32)
        for t in options.temperatures:
            instance, batch, classes = levels(source, target, t, options.standardize)
            total = total + options.instance_weight * instance + options.batch_weight * batch + \
                options.class_weight * classes
        return total / len(options.temperatures)
