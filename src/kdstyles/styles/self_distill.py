"""``self``: self-distillation from the network's own earlier state (an edge ``s1 -> s1``).

The cohort keeps a frozen shadow copy of the network and runs it, in eval mode and
without gradient, on each batch; the loss is the softened KL of ``predictions`` from the
shadow to the live network. ``mode``:

- ``ema``: the shadow's weights are an exponential moving average of the network's,
  ``w_shadow <- decay * w_shadow + (1 - decay) * w`` after every optimizer step (buffers
  such as BatchNorm statistics are copied);
- ``epoch``: the shadow is the network as it was at the end of the previous epoch
  (its "previous epoch's predictions" on the current batch).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .base import Style
from .outputs import OutputOptions, compare_outputs, softened_kl


class SelfOptions(OutputOptions):
    mode: Literal["ema", "epoch"] = Field(
        "ema", description="the shadow: an average of the weights after every step, or the network as it was at "
                           "the previous epoch's end")
    decay: float = Field(0.99, ge=0, lt=1, description="ema only")


class SelfDistillation(Style):
    name = "self"
    Options = SelfOptions
    self_edge = True

    def loss(self, source, target, options):
        return softened_kl(source, target, options)

    def compute(self, source, target, options, task, context):
        return compare_outputs(context.output_kind, source, target, options, context.classes)

    @torch.no_grad()
    def update_shadow(self, shadow, network, options, event):
        due = event == ("step" if options.mode == "ema" else "epoch")
        if not due:
            return
        rate = 1.0 - options.decay if options.mode == "ema" else 1.0
        for s, w in zip(shadow.parameters(), network.parameters(), strict=True):
            s.lerp_(w.detach(), rate)
        for s, b in zip(shadow.buffers(), network.buffers(), strict=True):
            s.copy_(b)
