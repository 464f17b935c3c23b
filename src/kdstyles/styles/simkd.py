"""``simkd``: the teacher's classifier reused (SimKD, Chen et al., CVPR 2022).

The learner keeps its backbone, and its head becomes the teacher's: a small *projector* maps
the learner's final feature map (the input of its global average pooling) into the teacher's
feature space, and the teacher's own frozen classifier (pooling + last Linear) classifies it.
The edge's loss is the mean squared error between the projected map and the teacher's final
map (resized to the learner's spatial size where they differ):

    L_simkd = mean over batch, channels and positions of (P(F_s) - sg(F_t))^2

The projector is SimKD's: 1x1 conv (C_s -> C_t / factor), BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv
(-> C_t), BN, ReLU, ``factor`` 2. It lives inside the learner (in place of its pooling module),
and the learner's last Linear is replaced by a frozen copy of the teacher's, so the exported
student carries projector and head: a plain network whose logits are the teacher's classifier
on its projected features. Their cost is printed by ``kdstyles check`` and recorded in run.json.

The source must be frozen (an offline teacher): a head that still learns cannot be reused.
A learner has one head, so one ``simkd`` edge at most reaches it. Both networks must end in
global average pooling followed by their last Linear layer (every classifier of the zoo does),
which is checked on a forward of the run's input, not assumed.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..common.dims import dims as space
from ..errors import KDError
from .base import Knowledge, Style, StyleOptions, knowledge


class SimKDOptions(StyleOptions):
    factor: int = Field(2, ge=1, le=16, description="the projector's bottleneck: its middle layers have the "
                                                    "teacher's channels / factor")


class ProjectedPool(nn.Module):
    """The learner's pooling module with the projector in front of it: pool(projector(map))."""

    def __init__(self, projector: nn.Module, pool: nn.Module):
        super().__init__()
        self.projector, self.pool = projector, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.projector(x))


POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool2d, nn.AvgPool3d, ProjectedPool)


def projector(c_in: int, c_out: int, factor: int, dims: int) -> nn.Sequential:
    conv, norm = space(dims).conv, space(dims).batch_norm
    mid = max(1, c_out // factor)
    return nn.Sequential(conv(c_in, mid, 1, bias=False), norm(mid), nn.ReLU(inplace=True),
                         conv(mid, mid, 3, padding=1, bias=False), norm(mid), nn.ReLU(inplace=True),
                         conv(mid, c_out, 1, bias=False), norm(c_out), nn.ReLU())


def find_head(model: nn.Module, sample: torch.Tensor, who: str) -> tuple[str, str, torch.Size]:
    """(path of the global pooling module, path of the last Linear, the pooled map's shape): the
    head of a classifier that ends in global average pooling + Linear, checked numerically on a
    forward of ``sample`` (the logits must equal the Linear applied to the map's spatial mean)."""
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    leaves = [(n, m) for n, m in model.named_modules() if n and (not list(m.children()) or isinstance(m, POOLS))]
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: calls.append((n, mod, i[0] if i else None, o)))
             for n, m in leaves]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(sample)
            for h in hooks:
                h.remove()
            linear = max((i for i, c in enumerate(calls) if isinstance(c[1], nn.Linear)), default=None)
            pool = next((i for i in range(linear - 1, -1, -1) if isinstance(calls[i][1], POOLS)), None) \
                if linear is not None else None
            if linear is None or pool is None:
                raise KDError(f"simkd: {who} ({type(model).__name__}) does not end in global average pooling and a "
                              "Linear classifier, whose head could be reused; use another style for it")
            fmap, fc = calls[pool][2], calls[linear][1]
            pooled = calls[pool][1].projector(fmap) if isinstance(calls[pool][1], ProjectedPool) else fmap
            again = fc(pooled.float().mean(dim=tuple(range(2, pooled.ndim))))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    if again.shape != logits.shape or not torch.allclose(again, logits.float(), atol=1e-4, rtol=1e-3):
        raise KDError(f"simkd: {who}'s logits are not its last Linear applied to the global average of "
                      f"'{calls[pool][0]}''s input, so its head cannot be reused; use another style for it")
    return calls[pool][0], calls[linear][0], fmap.shape


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


class HeadMap(Knowledge):
    """The final feature map a classifier pools: the input of its global pooling, or, in a
    learner given the teacher's head, its projector's output."""

    name = "head-map"

    def path(self, model, configured, task, sample):
        reused = next((n for n, m in model.named_modules() if isinstance(m, ProjectedPool)), None)
        if reused is not None:
            return f"{reused}.projector"
        return f"{find_head(model, sample, 'the source')[0]}:in"


knowledge(HeadMap())


class SimKD(Style):
    name = "simkd"
    Options = SimKDOptions
    consumes = "head-map"
    adapter = "resize"
    frozen_source = True
    reshapes_learner = True

    def prepare(self, source: nn.Module, learner: nn.Module, options: SimKDOptions, sample: torch.Tensor,
                where: str) -> None:
        """Give ``learner`` the projector and a frozen copy of ``source``'s classifier, in place."""
        if any(isinstance(m, ProjectedPool) for m in learner.modules()):
            raise KDError(f"{where}: the learner already reuses a teacher's head; one simkd edge per student")
        t_pool, t_fc, t_map = find_head(source, sample, "the teacher")
        s_pool, s_fc, s_map = find_head(learner, sample, "the student")
        head = copy.deepcopy(source.get_submodule(t_fc)).requires_grad_(False)
        proj = projector(s_map[1], t_map[1], options.factor, len(s_map) - 2)
        _set(learner, s_pool, ProjectedPool(proj, learner.get_submodule(s_pool)))
        _set(learner, s_fc, head)

    def loss(self, source, target, options):
        return F.mse_loss(target.float(), source.float())

    def parts(self, model):
        return reused_head_parameters(model)


def reused_head_parameters(model: nn.Module) -> dict[str, int] | None:
    """A learner given a teacher's head (simkd): the parameters of the projector and of the
    reused classifier, beside its own (None for any other network)."""
    found = next((m for m in model.modules() if isinstance(m, ProjectedPool)), None)
    if found is None:
        return None
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    projector_n = sum(p.numel() for p in found.projector.parameters())
    head_n = sum(p.numel() for p in linears[-1].parameters()) if linears else 0
    total = sum(p.numel() for p in model.parameters())
    return {"own": total - projector_n - head_n, "projector": projector_n, "teacher_head": head_n}

