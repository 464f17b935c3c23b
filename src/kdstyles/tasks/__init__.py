"""Tasks, registered by name. Adding a task = one file here + one line below."""

from __future__ import annotations

from .base import Task
from .classification import Classification
from .detection import Detection
from .segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Segmentation, Detection)}

__all__ = ["TASKS", "Task", "Classification", "Segmentation", "Detection"]
