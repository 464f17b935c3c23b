"""What a learning style is: a loss between what a source network knows and what a target
network produces, with its own validated options.

A style declares what it compares (``consumes``): ``logits``, a tapped feature ``map``, or
the ``embedding`` (the input of the network's last Linear layer, i.e. penultimate
features). The cohort records what is needed and hands the style two tensors: ``source``,
already detached (the cohort detaches every cross-network target in exactly one place),
and ``target``, live tensors of the receiving network. For maps, ``adapter`` says what
the cohort does when shapes differ: ``project`` (1x1 conv + BN on the receiver, source
resized) or ``resize`` (source resized only).

A style with ``self_edge = True`` teaches a network from its own earlier state: the
cohort keeps a frozen *shadow* copy of the network (an edge ``s1 -> s1``), runs it on
each batch without gradient, and calls :meth:`Style.update_shadow` after every optimizer
step and at the end of every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict


@dataclass
class NetOutput:
    """One network's output for a batch: logits and the recorded tensors by tap path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class StyleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MapOptions(StyleOptions):
    """Options of styles that compare tapped maps: per-edge overrides of the networks' taps."""

    src_tap: str | None = None
    dst_tap: str | None = None


class Style:
    """Base class of a learning style; subclasses set ``name``, ``Options`` and ``loss``."""

    name: ClassVar[str]
    Options: ClassVar[type[StyleOptions]] = StyleOptions
    consumes: ClassVar[Literal["logits", "map", "embedding"]] = "logits"
    adapter: ClassVar[Literal["project", "resize", None]] = None
    self_edge: ClassVar[bool] = False

    def loss(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions) -> torch.Tensor:
        """``source``: detached knowledge of the teaching network; ``target``: the learner's tensor."""
        raise NotImplementedError

    def update_shadow(self, shadow: nn.Module, network: nn.Module, options: StyleOptions,
                      event: Literal["step", "epoch"]) -> None:
        """Self-edge styles: refresh the shadow copy from the live network."""
