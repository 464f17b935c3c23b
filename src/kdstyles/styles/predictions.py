"""``predictions``: response-based KD, KL(sg(p_src^T) || p_dst^T) over classes.

Summed over the class dimension (dim 1), averaged over the batch and any remaining
dimensions (pixels, for segmentation). What the outputs are is the task's ``output_kind``
(:mod:`kdstyles.styles.outputs`): for multi-label a Bernoulli KL per class; for detection a
sigmoid KL per class and pixel weighted by the source's confidence, plus the box channels
(``box_weight``). ``t2_scaling`` multiplies by T^2 (Hinton et al.);
at the default T = 1 it changes nothing, so ``styles.predictions.temperature=4`` alone
gives the common KD setting. ``standardize`` z-scores each sample's logits first (logit
standardization, Sun et al. 2024; :func:`kdstyles.styles.base.soften`).
"""

from __future__ import annotations

from .base import Style
from .outputs import OutputOptions, compare_outputs, softened_kl


PredictionsOptions = OutputOptions  # its options: the temperature, T^2, standardization, detection's box weight


class Predictions(Style):
    name = "predictions"
    Options = PredictionsOptions

    def loss(self, source, target, options):
        return softened_kl(source, target, options)

    def compute(self, source, target, options, task, context):
        return compare_outputs(context.output_kind, source, target, options, context.classes)
