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

A style that needs the batch's labels (DKD's target class) says so with ``labels = True``:
the cohort then hands them over in the :class:`Context` of every call, with the epoch being
trained (for warm-ups), without asking which style runs. ``exclusive = True`` says the style
compares softmax probabilities over classes, one class per image or pixel (classification,
segmentation); tasks whose classes are not exclusive (multi-label, detection) refuse its
edges in one line when the config is loaded. :meth:`Style.split` lets one configured edge
stand for several (a features edge at several depths).

A style may change its learner (``reshapes_learner = True``, :meth:`Style.prepare`: SimKD
gives the student a projector and the teacher's frozen classifier), once per learner, before
the cohort plans its taps and whenever it is built again (resume, evaluate, export), so the
checkpoint and the exported network carry the change; :meth:`Style.parts` then says what the
learner's parameters are made of. ``frozen_source = True`` says the source must be frozen
(an offline teacher), checked when the config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass
class NetOutput:
    """One network's output for a batch: logits and the recorded tensors by tap path."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Context:
    """What the cohort hands every style besides the two tensors: the batch's labels, for a
    style with ``labels = True`` (class indices (B,), or (B, *spatial) masks), the epoch
    being trained (1-based; warm-ups), and what the networks' outputs are (the task's
    ``output_kind`` and number of classes: :mod:`kdstyles.styles.outputs`)."""

    labels: torch.Tensor | None = None
    epoch: int = 1
    output_kind: str = "classes"
    classes: int = 0


class StyleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LogitOptions(StyleOptions):
    """Options of styles that compare logits through a softmax at a temperature."""

    temperature: float = Field(1.0, gt=0, description="softmax temperature T")
    t2_scaling: bool = Field(True, description="multiply by T^2 (Hinton et al.); a no-op at T = 1")
    standardize: bool = Field(False, description="logit standardization (Sun et al., CVPR 2024): z-score each "
                                                 "sample's logits over the classes before the softmax at the "
                                                 "(base) temperature, so the learner matches the source's "
                                                 "relations, not its logit scale; with two classes every sample "
                                                 "becomes the same two values (only the winner is kept), so kdstyles "
                                                 "warns")


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Each sample's (and pixel's) values over dim 1 (classes, or an embedding's features) with
    zero mean and unit standard deviation."""
    return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)


def soften(logits: torch.Tensor, options: StyleOptions) -> torch.Tensor:
    """Logits (fp32 under autocast too) over the classes (dim 1), z-scored per sample (and
    pixel) where ``options.standardize``, divided by the temperature: what the softmax sees."""
    z = logits.float()
    if getattr(options, "standardize", False):
        z = zscore(z)
    return z / options.temperature


def class_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, K, *spatial) -> (B * pixels, K): one row per image, or per pixel of a dense output."""
    return x if x.ndim == 2 else x.movedim(1, -1).reshape(-1, x.shape[1])


class MapOptions(StyleOptions):
    """Options of styles that compare tapped maps: per-edge overrides of the networks' taps,
    or ``taps``: several depths at once (one edge each, its own adapter, the terms averaged)."""

    src_tap: str | None = Field(None, description="the source's module path to tap (default: its network's tap)")
    dst_tap: str | None = Field(None, description="the learner's module path to tap (default: its network's tap)")
    taps: list[str | tuple[str, str]] | None = Field(
        None, description="several depths: module paths tapped on both networks (e.g. [layer2, layer3, layer4]), "
                          "or [source, target] pairs; each pair is an edge of its own with its own adapter and "
                          "weight/n")

    @field_validator("taps", mode="before")
    @classmethod
    def _paths_or_pairs(cls, value: Any) -> Any:
        if value is None:
            return value
        bad = next((v for v in (value if isinstance(value, list) else [value]) if not (isinstance(v, str) or (
            isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(p, str) for p in v)))), None)
        if not isinstance(value, list) or bad is not None:
            raise ValueError("each item is a module path or a [source, target] pair of paths, e.g. [layer2, "
                             "layer3] or [[layer3, layer2]]")
        pairs = [(v, v) if isinstance(v, str) else tuple(v) for v in value]
        twice = next((p for i, p in enumerate(pairs) if p in pairs[:i]), None)
        if twice is not None:
            named = twice[0] if twice[0] == twice[1] else f"[{twice[0]}, {twice[1]}]"
            raise ValueError(f"{named} is listed twice (it would make two identical edges); list each depth once")
        if not value:
            raise ValueError("lists no depth; give module paths, e.g. [layer2, layer3], or leave taps out")
        return value


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
    labels: ClassVar[bool] = False  # consumes the batch's labels (Context.labels)
    exclusive: ClassVar[bool] = False  # softmax over classes: one class per image or pixel
    frozen_source: ClassVar[bool] = False  # the source must be frozen (an offline teacher)
    reshapes_learner: ClassVar[bool] = False  # prepare() changes the learner's modules (one such edge per learner)

    def loss(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions) -> torch.Tensor:
        """``source``: detached knowledge of the teaching network; ``target``: the learner's tensor."""
        raise NotImplementedError

    def compute(self, source: torch.Tensor, target: torch.Tensor, options: StyleOptions, task,
                context: Context) -> torch.Tensor:
        """The loss the cohort takes for an edge; a style whose meaning depends on what the outputs
        are (``predictions`` on boxes), or that needs the labels or the epoch, reads ``context``."""
        return self.loss(source, target, options)

    def prepare(self, source: nn.Module, learner: nn.Module, options: StyleOptions, sample: torch.Tensor,
                where: str) -> None:
        """Styles with ``reshapes_learner``: change the learner's modules in place before the
        cohort plans its taps (SimKD gives it a projector and the teacher's classifier). Called
        whenever the cohort is built, so a run reopened from its folder has the same modules."""

    def parts(self, model: nn.Module) -> dict[str, int] | None:
        """A learner this style reshaped: its parameters by part (its own, what the style added);
        None for a network it did not touch."""
        return None

    def needs_exclusive_classes(self, options: StyleOptions) -> str | None:
        """Why this edge needs one class per image or pixel (a softmax over classes), or None."""
        if self.exclusive:
            return f"style '{self.name}' compares softmax probabilities over classes"
        if getattr(options, "standardize", False):
            return "standardize: true z-scores the logits over classes for a softmax"
        return None

    def split(self, options: StyleOptions) -> list[StyleOptions]:
        """The edges one configured edge stands for (each gets weight / n): itself, or for map
        styles with ``taps`` one per depth, its taps set."""
        pairs = getattr(options, "taps", None)
        if not pairs:
            return [options]
        return [options.model_copy(update={"taps": None, "src_tap": p if isinstance(p, str) else p[0],
                                           "dst_tap": p if isinstance(p, str) else p[1]}) for p in pairs]

    def update_shadow(self, shadow: nn.Module, network: nn.Module, options: StyleOptions,
                      event: Literal["step", "epoch"]) -> None:
        """Self-edge styles: refresh the shadow copy from the live network."""
