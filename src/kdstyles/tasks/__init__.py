"""Tasks, registered by name. Adding a task = one file here + one line below."""

from __future__ import annotations

from .base import Task
from .classification import Classification
from .detection import Detection
from .multilabel import Multilabel
from .segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Multilabel, Segmentation, Detection)}
DEFAULT_TASK = Classification.name  # a config without task:, a sidecar or run folder that does not say

__all__ = ["DEFAULT_TASK", "TASKS", "Task", "Classification", "Multilabel", "Segmentation", "Detection"]

