"""Mixed views (``data.mix``): mixup and CutMix, as timm draws them (batch mode).

Each training step draws, from ``(seed, epoch, step)`` alone (a resumed run mixes exactly as
an uninterrupted one), whether to mix (``prob``), which way (CutMix with ``switch_prob`` when
both are on) and lambda ~ Beta(alpha, alpha). A batch is mixed with itself reversed: mixup
blends the images, CutMix pastes one box (its side a share sqrt(1 - lambda) of each image side
in 2D, the cube root in 3D, clipped at the borders, lambda then corrected to the share of the
image left unpasted). The labelled and the unlabelled rows of a joint batch are mixed each
among themselves, with the same lambda and box, so a labelled image never takes half of an
unknown label. What the supervised loss makes of a mix is the task's
(:meth:`~kdstyles.tasks.base.Task.mix_targets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class MixDraw:
    """One step's mix: ``kind`` (mixup or cutmix), ``lam`` (the share of each image kept) and,
    for CutMix, the pasted box as one slice per spatial axis."""

    kind: str
    lam: float
    box: tuple[slice, ...] | None = None

    def images(self, x: torch.Tensor, labelled: int | None = None) -> torch.Tensor:
        """``x`` (B, C, *spatial) mixed: rows ``[:labelled]`` among themselves, the rest likewise."""
        n = len(x) if labelled is None else labelled
        return torch.cat([self._mix(part) for part in (x[:n], x[n:]) if len(part)])

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        other = x.flip(0)
        if self.box is None:
            return x * self.lam + other * (1 - self.lam)
        out = x.clone()
        region = (slice(None), slice(None), *self.box)
        out[region] = other[region]
        return out

    def masks(self, y: torch.Tensor) -> torch.Tensor:
        """Masks (B, *spatial) mixed as CutMix mixes their images: the box from the reversed batch."""
        out = y.clone()
        region = (slice(None), *self.box)
        out[region] = y.flip(0)[region]
        return out


class Mixer:
    """Draws each step's :class:`MixDraw` (or None: not mixed) from the ``data.mix`` config."""

    def __init__(self, cfg: Any, seed: int):
        self.cfg, self.seed = cfg, seed

    def draw(self, epoch: int, step: int, spatial: tuple[int, ...]) -> MixDraw | None:
        kinds = self.cfg.kinds
        if not kinds:
            return None
        rng = np.random.default_rng([self.seed, epoch, step, 23])
        if rng.random() >= self.cfg.prob:
            return None
        kind = kinds[0] if len(kinds) == 1 else ("cutmix" if rng.random() < self.cfg.switch_prob else "mixup")
        alpha = getattr(self.cfg, kind)
        lam = float(rng.beta(alpha, alpha))
        if kind == "mixup":
            return MixDraw(kind, lam)
        return cut_box(lam, spatial, rng)


def cut_box(lam: float, spatial: tuple[int, ...], rng: np.random.Generator) -> MixDraw:
    """CutMix's box for a drawn ``lam`` over images of ``spatial`` size (timm's ``rand_bbox``
    in any number of dimensions), with lambda corrected to the share left unpasted."""
    ratio = (1 - lam) ** (1 / len(spatial))
    box = []
    for side in spatial:
        cut = int(side * ratio)
        centre = int(rng.integers(side))
        box.append(slice(int(np.clip(centre - cut // 2, 0, side)), int(np.clip(centre + cut // 2, 0, side))))
    pasted = float(np.prod([s.stop - s.start for s in box])) / float(np.prod(spatial))
    return MixDraw("cutmix", 1 - pasted, tuple(box))
