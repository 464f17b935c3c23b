"""``predictions``: response-based KD, KL(sg(p_src^T) || p_dst^T) over classes.

Summed over the class dimension (dim 1), averaged over the batch and any remaining
dimensions (pixels, for segmentation). The task decides what outputs mean
(``Task.distill_outputs``): for detection, a sigmoid KL per class and pixel weighted by the
source's confidence, plus the box channels (``box_weight``). ``t2_scaling`` multiplies by T^2 (Hinton et al.);
at the default T = 1 it changes nothing, so ``styles.predictions.temperature=4`` alone
gives the common KD setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Style, StyleOptions


class PredictionsOptions(StyleOptions):
    temperature: float = Field(1.0, gt=0)
    t2_scaling: bool = True
    box_weight: float = Field(1.0, ge=0, description="detection: weight of the box-channel L1 beside the "
                                                     "heatmap's KL")


def softened_kl(source_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float,
                t2_scaling: bool) -> torch.Tensor:
    log_p_src = F.log_softmax(source_logits.float() / temperature, dim=1)  # fp32 under autocast too
    log_p_dst = F.log_softmax(target_logits.float() / temperature, dim=1)
    kl = (log_p_src.exp() * (log_p_src - log_p_dst)).sum(dim=1).mean()
    return kl * temperature**2 if t2_scaling else kl


class Predictions(Style):
    name = "predictions"
    Options = PredictionsOptions

    def loss(self, source, target, options):
        return softened_kl(source, target, options.temperature, options.t2_scaling)

    def compute(self, source, target, options, task):
        return task.distill_outputs(source, target, options)  # detection: per-pixel sigmoid KL and boxes
