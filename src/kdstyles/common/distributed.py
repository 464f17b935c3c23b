"""torch.distributed for torchrun launches: process group, sharding helpers, reductions.

``torchrun --nproc_per_node=N -m kdstyles train CONFIG`` sets RANK/WORLD_SIZE/LOCAL_RANK;
without them everything here is a no-op for one process. The backend is NCCL when the
run uses CUDA, gloo otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import KDError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_name: str) -> DistInfo:
    """Join the process group torchrun describes (idempotent); one process: DistInfo()."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda and local >= (gpus := torch.cuda.device_count()):
        raise KDError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', local + 1)} processes on this node but "
                      f"it has {gpus} GPU(s); NCCL needs one GPU per process: --nproc_per_node={gpus}, "
                      "or train.device: cpu")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's object, in rank order (one process: [obj])."""
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def any_flags(flags: list[bool], info: DistInfo, device: torch.device) -> list[bool]:
    """Each flag True on every rank when it is True on any rank (one all-reduce for all)."""
    if not info.active:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def teardown() -> None:
    """Leave the process group once every rank is done with it: a rank that destroyed its
    group while another still used its connections aborted (gloo: "terminate called without
    an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
