"""A run's progress (epochs and steps done, best values, early stopping, history) and the
random number generators' states: what a resume restores besides weights and optimizers."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Everything about progress that a resume must restore (besides weights and optimizers)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the epoch in progress (mid-epoch checkpoints)
    partial: dict[str, dict[str, Any]] = field(default_factory=dict)  # its running sums of loss terms
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # network -> {"epoch", "value"}
    since_improved: int = 0  # epochs since any student improved (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per (epoch, network)
    status: str = "running"
