"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

KD's KL splits, for each sample (each pixel of a segmentation) with target class t, into

- TCKD, the KL between the binary distributions ``[p_t, 1 - p_t]`` of source and learner
  (how sure the source is of the target class: the sample's difficulty), and
- NCKD, the KL between the softmax distributions over the *non-target* classes alone (what
  the source's "dark knowledge" says about the wrong classes),

with ``KD = TCKD + (1 - p_t) * NCKD``, ``p_t`` the source's target probability: plain KD
shrinks NCKD exactly where the source is confident. DKD weights the two freely:

    L = warm(epoch) * (alpha * TCKD + beta * NCKD) * T^2

where ``warm`` ramps linearly from 1/warmup to 1 over the first ``warmup`` epochs (the paper's
warm-up: 20 of 240 epochs on CIFAR-100; off by default, for runs of a few epochs). The paper
set beta 8, T 4 for CIFAR-100's 100 classes and beta 0.5, T 1 for ImageNet; the default here
is beta 1, T 4: with few classes NCKD has little to carry, and beta 8 cost the students of
the embedded 4-class data 4 to 8 points against beta 1 (README, "Students that reach their
teacher"). The target class comes from the batch's
labels (``labels = True``): per image for classification, per pixel (from the mask) for
segmentation; multi-label and detection have no single target class and refuse the style.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import LogitOptions, Style, class_rows, soften

OFF = 1000.0  # subtracted from the target's softened logit: its share of a softmax is exp(-1000) = 0


class DKDOptions(LogitOptions):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(1.0, ge=0, description="weight of TCKD, the target class against the rest")
    beta: float = Field(1.0, ge=0, description="weight of NCKD, the distribution over the non-target classes "
                                               "(the paper: 8 on CIFAR-100, 0.5 on ImageNet)")
    warmup: int = Field(0, ge=0, description="epochs over which the loss ramps up linearly (0: none; the paper: "
                                             "20 of 240)")


def dkd_terms(source: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD) per row: ``source``/``target`` softened logits rows (N, K), ``labels`` (N,)."""
    gt = F.one_hot(labels.long(), source.shape[1]).bool()
    terms = []
    for z in (source, target):
        lse = z.logsumexp(1)
        rest = (z - OFF * gt).logsumexp(1)  # log of the non-target classes' share, times e^lse
        binary = torch.stack([z[gt] - lse, rest - lse], 1)  # log [p_t, 1 - p_t]
        others = F.log_softmax(z - OFF * gt, 1)  # log softmax over the non-target classes
        terms.append((binary, others))
    (b_src, o_src), (b_dst, o_dst) = terms
    tckd = (b_src.exp() * (b_src - b_dst)).sum(1)
    nckd = (o_src.exp() * (o_src - o_dst)).masked_fill(gt, 0).sum(1)
    return tckd, nckd


class DKD(Style):
    name = "dkd"
    Options = DKDOptions
    labels = True
    exclusive = True

    def compute(self, source, target, options, task, context):
        rows_src, rows_dst = class_rows(soften(source, options)), class_rows(soften(target, options))
        tckd, nckd = dkd_terms(rows_src, rows_dst, context.labels.reshape(-1))
        loss = (options.alpha * tckd + options.beta * nckd).mean()
        loss = loss * options.temperature**2 if options.t2_scaling else loss
        return loss * (min(context.epoch / options.warmup, 1.0) if options.warmup else 1.0)
