"""Where and how a run computes: the process group (torchrun), the device, autocast
precision with its GradScaler, the memory layout, ``torch.compile``, and the one DDP
wrapper around everything trainable (an offline teacher and shadows stay outside)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..common import distributed
from ..common.dims import dims as space
from ..errors import KDError


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 on a CUDA device that supports it, else fp32 (CPUs differ too much in bf16)."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def resolve_workers(value: int | str, device: torch.device, cpus: int | None = None) -> int:
    """``auto``: no worker processes on a CPU (training, not loading, is the bottleneck there);
    on a GPU, one per spare core up to 8, so decoding and augmentation keep the GPU fed."""
    if value != "auto":
        return int(value)
    import os

    cpus = cpus or os.cpu_count() or 1
    return min(8, max(cpus - 1, 0)) if device.type == "cuda" else 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KDError(f"train.device: '{name}' was asked for but CUDA is not available here; use auto or cpu")
    return device


@dataclass
class Runtime:
    dist: distributed.DistInfo
    device: torch.device
    memory_format: torch.memory_format
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    @classmethod
    def create(cls, train, device: torch.device | None = None, dims: int = 2) -> "Runtime":
        """From the ``train`` config section: joins torchrun's process group when there is one.
        ``dims``: 3 for volumes (channels_last is then the 3D one)."""
        dist = distributed.setup(train.device)
        device = device or pick_device(train.device, dist.local_rank)
        fmt = space(dims).channels_last if train.channels_last else torch.preserve_format
        precision = resolve_precision(train.precision, device)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        if device.type == "cuda":  # exact resumes need deterministic kernels; otherwise the fastest
            torch.backends.cudnn.deterministic = bool(train.deterministic)
            torch.backends.cudnn.benchmark = not train.deterministic
        return cls(dist, device, fmt, dtype, scaler)

    def place(self, cohort, compile_: bool) -> None:
        cohort.to(self.device, memory_format=self.memory_format)
        if compile_:
            for name in cohort.trainable:
                cohort.networks[name].compile()

    def wrap(self, step: torch.nn.Module) -> torch.nn.Module:
        """``step`` (a TrainStep) in DistributedDataParallel under torchrun, else itself."""
        if not self.dist.active:
            return step
        from torch.nn.parallel import DistributedDataParallel as DDP

        DDP._set_params_and_buffers_to_ignore_for_model(step, step.outside_ddp())
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(step, device_ids=ids)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def batch(self, batch: Any) -> Any:
        """A training :class:`~kdstyles.data.dataset.Batch` on the device, images in its memory format."""
        return batch.to(self.device, self.memory_format)

    def backward(self, total: torch.Tensor, optimizers) -> None:
        """One backward of the summed losses, then one step per optimizer (scaled for fp16)."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            for opt in optimizers:
                self.scaler.step(opt)
            self.scaler.update()
        else:
            total.backward()
            for opt in optimizers:
                opt.step()
