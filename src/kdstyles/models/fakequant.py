"""Quantization-aware fine-tuning (``train.qat``): a student's convolutions and linear layers
compute with int8-rounded weights (symmetric, one scale per output channel: how onnxruntime's
static quantization stores them) and int8-rounded outputs (uint8 over the batch's range),
through PyTorch's fake-quantization ops, whose gradients pass straight through. Training on
the rounded values teaches the weights to tolerate them, with every distillation edge still on.

Nothing else changes: the layers keep their class (a subclass), parameters and state dict,
so a float run resumes into quantization-aware training, taps and adapters see the same
modules, checkpoints load as always and a resume stays bit-identical (no observer state).
``export`` turns the rounding off and exports the adapted float weights; ``--quantize int8``
then calibrates and quantizes them as for any model."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fake_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to int8 per output channel (symmetric: zero point 0, scale max|w| / 127)."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(1) / 127).clamp_min(1e-8)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w.float(), scale, zero, 0, -128, 127).to(w.dtype)


def fake_activation(y: torch.Tensor) -> torch.Tensor:
    """``y`` rounded to uint8 over its own range (zero exactly representable)."""
    lo = y.detach().float().min().clamp(max=0)
    hi = y.detach().float().max().clamp(min=0)
    scale = ((hi - lo) / 255).clamp_min(1e-8).reshape(1)
    zero = (-lo / scale).round().clamp(0, 255).to(torch.int32).reshape(1)
    return torch.fake_quantize_per_tensor_affine(y.float(), scale, zero, 0, 255).to(y.dtype)


class _FakeQuant:
    """Mixed into a layer's class: its forward rounds the weight and the output while
    ``fake_quant`` is on."""

    fake_quant: bool = True

    def forward(self, x):
        if not self.fake_quant:
            return super().forward(x)
        w = fake_weight(self.weight)
        y = F.linear(x, w, self.bias) if isinstance(self, nn.Linear) else self._conv_forward(x, w, self.bias)
        return fake_activation(y)


_CLASSES: dict[type, type] = {}


def enable(model: nn.Module) -> int:
    """Turn every convolution and linear layer of ``model`` into its fake-quantized kind (in
    place); returns how many."""
    count = 0
    for m in model.modules():
        base = type(m)
        if isinstance(m, _FakeQuant):
            m.fake_quant = True
            count += 1
        elif base in LAYERS:
            if base not in _CLASSES:
                _CLASSES[base] = type(f"FakeQuant{base.__name__}", (_FakeQuant, base), {})
            m.__class__ = _CLASSES[base]
            m.fake_quant = True
            count += 1
    return count


def set_enabled(model: nn.Module, on: bool) -> None:
    """Rounding on or off for every fake-quantized layer of ``model``."""
    for m in model.modules():
        if isinstance(m, _FakeQuant):
            m.fake_quant = on


def float_copy(model: nn.Module) -> nn.Module:
    """``model`` as it deploys: itself when nothing in it rounds, else a copy with the rounding
    off (the model itself, e.g. a cohort's student, keeps rounding for evaluation)."""
    if not any(isinstance(m, _FakeQuant) for m in model.modules()):
        return model
    import copy

    out = copy.deepcopy(model)
    set_enabled(out, False)
    return out
