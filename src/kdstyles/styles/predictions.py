"""``predictions``: response-based KD, KL(sg(p_src^T) || p_dst^T) over classes.

Summed over the class dimension (dim 1), averaged over the batch and any remaining
dimensions (pixels, for segmentation). The task decides what outputs mean
(``Task.distill_outputs``): for detection, a sigmoid KL per class and pixel weighted by the
source's confidence, plus the box channels (``box_weight``). ``t2_scaling`` multiplies by T^2 (Hinton et al.);
at the default T = 1 it changes nothing, so ``styles.predictions.temperature=4`` alone
gives the common KD setting. ``standardize`` z-scores each sample's logits first (logit
standardization, Sun et al. 2024; :func:`kdstyles.styles.base.soften`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import LogitOptions, Style, StyleOptions, soften


class PredictionsOptions(LogitOptions):
    box_weight: float = Field(1.0, ge=0, description="detection: weight of the box-channel L1 beside the "
                                                     "heatmap's KL")


def softened_kl(source_logits: torch.Tensor, target_logits: torch.Tensor, options: StyleOptions) -> torch.Tensor:
    """KL(softmax(source) || softmax(target)) over dim 1 at the options' temperature (logits
    standardized first where ``options.standardize``), averaged over the rest; times T^2 with
    ``t2_scaling``."""
    log_p_src = F.log_softmax(soften(source_logits, options), dim=1)
    log_p_dst = F.log_softmax(soften(target_logits, options), dim=1)
    kl = (log_p_src.exp() * (log_p_src - log_p_dst)).sum(dim=1).mean()
    return kl * options.temperature**2 if options.t2_scaling else kl


class Predictions(Style):
    name = "predictions"
    Options = PredictionsOptions

    def loss(self, source, target, options):
        return softened_kl(source, target, options)

    def compute(self, source, target, options, task, context):
        return task.distill_outputs(source, target, options)  # detection: per-pixel sigmoid KL and boxes
