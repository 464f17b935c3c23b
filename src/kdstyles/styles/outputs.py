"""What two networks' outputs mean when ``predictions`` (and ``self``) compare them: a kind each
task declares (``Task.output_kind``) and the cohort passes in the style's context, so no style
asks a task how to read its outputs.

- ``classes``: one distribution over the classes per image (per pixel for maps): the softened
  KL of their softmaxes over dim 1 (:func:`softened_kl`);
- ``labels``: an independent yes/no per class (multi-label): the KL of the two Bernoulli
  distributions per class at the temperature, summed over the classes, averaged over the batch;
- ``heatmaps``: detection's outputs, the first ``classes`` channels heatmaps (a sigmoid per class
  and pixel), the rest box channels: the per-class Bernoulli KL weighted by the source's
  confidence (its highest class probability at that pixel, so the background's many pixels do
  not drown the objects), plus the option ``box_weight`` x the L1 between the box channels,
  weighted the same way.

``t2_scaling`` multiplies the KL by T^2 in every kind. A plugin's task whose outputs are of a
kind of its own registers it here with :func:`register_output_kind`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from pydantic import Field

from ..common.metrics import bernoulli_kl
from .base import LogitOptions, StyleOptions, soften


class OutputOptions(LogitOptions):
    """Options of the styles that compare two networks' outputs by kind (``predictions``, ``self``)."""

    box_weight: float = Field(1.0, ge=0, description="detection: weight of the box-channel L1 beside the "
                                                     "heatmap's KL")


# kind -> loss(source, target, options, classes)
OUTPUT_KINDS: dict[str, Callable[[torch.Tensor, torch.Tensor, Any, int], torch.Tensor]] = {}


def register_output_kind(name: str, compare: Callable[[torch.Tensor, torch.Tensor, Any, int], torch.Tensor]) -> None:
    OUTPUT_KINDS[name] = compare


def compare_outputs(kind: str, source: torch.Tensor, target: torch.Tensor, options: Any, classes: int) -> torch.Tensor:
    """The loss between two networks' outputs of ``kind`` (``source`` already detached)."""
    return OUTPUT_KINDS[kind](source, target, options, classes)


def softened_kl(source_logits: torch.Tensor, target_logits: torch.Tensor, options: StyleOptions) -> torch.Tensor:
    """KL(softmax(source) || softmax(target)) over dim 1 at the options' temperature (logits
    standardized first where ``options.standardize``), averaged over the rest; times T^2 with
    ``t2_scaling``."""
    log_p_src = F.log_softmax(soften(source_logits, options), dim=1)
    log_p_dst = F.log_softmax(soften(target_logits, options), dim=1)
    kl = (log_p_src.exp() * (log_p_src - log_p_dst)).sum(dim=1).mean()
    return kl * options.temperature**2 if options.t2_scaling else kl


def _classes(source, target, options, classes):
    return softened_kl(source, target, options)


def _labels(source, target, options, classes):
    t = options.temperature
    s, d = source.float() / t, target.float() / t
    kl = bernoulli_kl(F.logsigmoid(s), F.logsigmoid(-s), F.logsigmoid(d), F.logsigmoid(-d)).sum(1).mean()
    return kl * t * t if options.t2_scaling else kl


def _heatmaps(source, target, options, classes):
    k, t = classes, options.temperature
    s, d = source[:, :k].float(), target[:, :k].float()
    weight = s.sigmoid().amax(1)  # (B, H, W): the source's confidence
    norm = weight.sum().clamp_min(1e-6)
    kl = bernoulli_kl(F.logsigmoid(s / t), F.logsigmoid(-s / t), F.logsigmoid(d / t), F.logsigmoid(-d / t))
    heat = (kl.sum(1) * weight).sum() / norm * (t * t if options.t2_scaling else 1.0)
    box = ((source[:, k:].float() - target[:, k:].float()).abs().sum(1) * weight).sum() / norm
    return heat + options.box_weight * box


register_output_kind("classes", _classes)
register_output_kind("labels", _labels)
register_output_kind("heatmaps", _heatmaps)
