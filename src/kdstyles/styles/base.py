"""What a learning style is: a loss between what a source network knows and what a target
network produces, with its own validated options.

A style sees two :class:`NetOutput` views: ``source`` holds tensors already detached (the
cohort detaches every cross-network target in exactly one place), ``target`` holds live
tensors of the receiving network. Styles that compare feature maps declare
``needs_features = True``; the cohort then records the taps and, when shapes differ, puts
an adapter on the receiving side and hands the style matched tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict


@dataclass
class NetOutput:
    """One network's output for a batch: logits and the tapped feature maps by module path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class StyleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Style:
    """Base class of a learning style; subclasses set ``name``, ``Options`` and ``loss``."""

    name: ClassVar[str]
    Options: ClassVar[type[StyleOptions]] = StyleOptions
    needs_features: ClassVar[bool] = False

    def loss(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions) -> torch.Tensor:
        """``source``: detached knowledge of the teaching network; ``target``: the learner's tensor."""
        raise NotImplementedError
