"""A frozen teacher's kept outputs on disk (``networks.teacher.cache``): its logits and tapped
maps for every training image view, in ``$KDSTYLES_CACHE/teacher-outputs`` (default
``~/.cache/kdstyles/teacher-outputs``), one file per key, so that every run whose teacher,
data, views and seed are the same (the variants of one seed in a comparison, a resumed or
repeated run) shares them: a large teacher costs one pass over the data, not one per run.

The probe stage (:mod:`kdstyles.engine.probe`) keeps a Hugging Face teacher's embeddings of the
training and validation images here the same way, so the other runs of a comparison fit their
head in seconds.

The key is a hash of what decides the outputs (see :func:`key`); a run still checks the first
batch it takes from a file against a fresh forward (:mod:`kdstyles.engine.cohort`), so that a
file read under the same key after the data changed on disk is dropped, not trusted. Files are
written atomically; one that cannot be read is ignored and written again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from . import checkpoints
from .fileio import cache_root

VERSION = 1  # bump when what a file holds changes


# data keys that change neither an image view nor what a teacher answers for it
NOT_IN_KEY = ("num_workers", "persistent_workers", "batch_size", "unlabeled_batch_size", "cache_gb", "volume_cache",
              "sampler", "external", "groups")


def run_parts(cfg: Any) -> dict[str, Any]:
    """What of a run's config decides which images, views and splits a teacher sees: its data
    section (but loader and evaluation settings) and its seed."""
    return {"data": cfg.data.model_dump(mode="json", exclude=set(NOT_IN_KEY)), "seed": cfg.train.seed}


def folder() -> Path:
    return cache_root() / "teacher-outputs"


def key(parts: dict[str, Any], weights: dict[str, dict[str, torch.Tensor]]) -> str:
    """The file's key: the SHA-256 of ``parts`` (JSON: the data section, the seed, views, taps,
    precision, device kind, how many items) and of each frozen network's weights (``weights``:
    its state dict, a Hugging Face backbone's fingerprint standing for the backbone)."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str).encode())
    for name in sorted(weights):
        checkpoints.digest_of(weights[name], digest, f"{name}.")
    return digest.hexdigest()[:32]


def path_for(found: str) -> Path:
    return folder() / f"{found}.pt"


def read(path: Path) -> dict[str, torch.Tensor] | None:
    """A stored file's tensors, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    try:
        found = checkpoints.load(path)
    except Exception:  # a damaged file is written again, never trusted
        return None
    tensors = found.get("outputs")
    return tensors if isinstance(tensors, dict) else None


def write(path: Path, tensors: dict[str, torch.Tensor]) -> str | None:
    """Write the tensors atomically; why not (a full disk: the run goes on without), or None."""
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
    except OSError as exc:
        return f"{path.parent}: {exc.strerror or exc}"
    if size > free * 0.9:
        return f"{size / 1e9:.1f} GB would not fit the {free / 1e9:.1f} GB free in {path.parent}"
    try:
        checkpoints.save({"outputs": tensors}, path)
    except Exception as exc:  # noqa: BLE001 - a cache write never fails a run
        return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return None
