"""Tasks, registered by name. Adding a task = one file here + one line below."""

from __future__ import annotations

from .base import Task
from .classification import Classification
from .segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Segmentation)}


def make_task(name: str, num_classes: int, dice_weight: float = 1.0, hd95: bool = False) -> Task:
    return TASKS[name](num_classes, dice_weight, hd95)


__all__ = ["TASKS", "Task", "Classification", "Segmentation", "make_task"]
