"""What a learning style is: a loss between what a source network knows and what a target
network produces, with its own validated options.

A style declares what it compares (``consumes``), a kind of knowledge registered in
:data:`KNOWLEDGE`: ``logits``, a tapped feature ``map``, or the ``embedding`` (the input of
the network's last Linear layer, i.e. penultimate features). A kind says which module
path of a network it records (none for logits) and where its tensor is in a network's
output; a style with a new kind registers it in its own file with :func:`knowledge`, so
the cohort never changes for it. The cohort records what is needed and hands the style two tensors: ``source``,
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


class Knowledge:
    """A kind of knowledge a style compares: which module path of a network records it
    (``None``: nothing to record) and how to take it from the network's output."""

    name: ClassVar[str]

    def path(self, model: nn.Module, configured: str | None, task, sample: torch.Tensor) -> str | None:
        """The path to record, from the network's configured tap or the default."""
        return None

    def take(self, out: NetOutput, path: str | None) -> torch.Tensor:
        return out.features[path]


class Logits(Knowledge):
    """The network's output: class logits (per pixel for dense tasks)."""

    name = "logits"

    def take(self, out, path):
        return out.logits


class FeatureMap(Knowledge):
    """A tapped intermediate map: the network's ``tap``, else the task's default
    (a ResNet's last 3x3 conv; an encoder-decoder's bottleneck)."""

    name = "map"

    def path(self, model, configured, task, sample):
        return configured or task.default_tap(model, sample)


class Embedding(Knowledge):
    """The penultimate embedding: the network's ``embedding_tap``, else the input of its last
    Linear layer (``fc:in``)."""

    name = "embedding"

    def path(self, model, configured, task, sample):
        if configured:
            return configured
        from ..models.zoo import default_embedding_tap

        return default_embedding_tap(model)


KNOWLEDGE: dict[str, Knowledge] = {}


def knowledge(kind: Knowledge) -> Knowledge:
    """Register a kind of knowledge (a style file that needs a new one calls this)."""
    KNOWLEDGE[kind.name] = kind
    return kind


for _kind in (Logits(), FeatureMap(), Embedding()):
    knowledge(_kind)


class Style:
    """Base class of a learning style; subclasses set ``name``, ``Options`` and ``loss``."""

    name: ClassVar[str]
    Options: ClassVar[type[StyleOptions]] = StyleOptions
    consumes: ClassVar[str] = "logits"  # a key of KNOWLEDGE
    adapter: ClassVar[Literal["project", "resize", None]] = None
    self_edge: ClassVar[bool] = False

    def loss(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions) -> torch.Tensor:
        """``source``: detached knowledge of the teaching network; ``target``: the learner's tensor."""
        raise NotImplementedError

    def compute(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions, task) -> torch.Tensor:
        """The loss the cohort takes for an edge; a style whose meaning depends on the task's
        outputs (``predictions`` on boxes) asks the task here."""
        return self.loss(source, target, options)

    def update_shadow(self, shadow: nn.Module, network: nn.Module, options: StyleOptions,
                      event: Literal["step", "epoch"]) -> None:
        """Self-edge styles: refresh the shadow copy from the live network."""
