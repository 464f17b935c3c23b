"""Tasks, registered by name. A built-in task = one file here (found by
:func:`~kdstyles.common.registry.discover`); a task of your own = one plugin file calling
:func:`register_task` (kdstyles.plugins)."""

from __future__ import annotations

from .base import Task
from .classification import Classification
from .detection import Detection
from .multilabel import Multilabel
from .segmentation import Segmentation

from ..common.registry import discover

# every module but the shared parts (overlays imports torch, which ONNX predict does without)
TASKS: dict[str, type[Task]] = {t.name: t for t in discover(__name__, Task, skip=("base", "overlays"))}
DEFAULT_TASK = Classification.name  # a config without task:, a sidecar or run folder that does not say
BUILT_IN = frozenset(TASKS)


def register_task(task: type[Task]) -> type[Task]:
    """Make ``task`` (a Task subclass) a ``task:`` a config can name (a plugin's call,
    kdstyles.plugins). The built-in names are kept; a plugin registering a name again replaces
    its own."""
    from ..errors import KDError, check_new_name

    if not (isinstance(task, type) and issubclass(task, Task)):
        raise KDError(f"register_task: give a Task subclass, not {task!r}")
    check_new_name("task", task.name, BUILT_IN)
    from ..common.metrics import METRICS, REPORTS_AS

    reports = next((n for n in task.lineage() if any(m.task == n for m in METRICS.values())), None)
    if reports is None:
        raise KDError(f"register_task: task '{task.name}' has no metrics: subclass a task whose metrics it reports "
                      f"(e.g. Classification), or add Metric entries with task='{task.name}' to kdstyles.common.metrics.METRICS")
    if reports != task.name:
        REPORTS_AS[task.name] = reports
    TASKS[task.name] = task
    return task


__all__ = ["BUILT_IN", "DEFAULT_TASK", "TASKS", "Task", "Classification", "Multilabel", "Segmentation", "Detection",
           "register_task"]

