"""What a resume may change: the keys (``RESUMABLE``), the paths that may move (``MOVABLE``),
and the changes between two configs."""

from __future__ import annotations

from typing import Any

from ..errors import KDError
from .overrides import yaml_value
from .sections import ExperimentConfig

# Keys a resume may change (prefixes). Everything else fixed the networks, data, routing or
# the meaning of the checkpoint when the run was created.
RESUMABLE = ("train.epochs", "train.early_stopping", "train.qat", "train.val_every", "train.checkpoint_every_steps", "train.device",
             "train.precision", "train.channels_last", "train.compile", "train.max_steps_per_epoch",
             "train.deterministic",
             "optim.lr", "optim.weight_decay", "optim.momentum", "schedule.factor", "schedule.patience",
             "schedule.min_lr", "data.num_workers", "data.persistent_workers", "eval.", "output.tensorboard",
             "launcher.")


# Keys that name where things are: a run's data, teacher or plugin files may move to another
# folder (a changed file set is refused by the run's splits.csv), so an edited config.yaml may
# change them.
MOVABLE = ("data.root", "data.path", "data.unlabeled.root", "data.unlabeled.path", "networks.teacher.checkpoint",
           "output.dir", "output.name", "plugins")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def config_changes(old: ExperimentConfig, new: ExperimentConfig) -> dict[str, tuple[Any, Any]]:
    """Every leaf key whose value differs: key -> (old, new)."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def resumable(key: str) -> bool:
    """Whether a resume may change this key: RESUMABLE's, and a task's settings of evaluation
    (``tasks.<task>.<key>`` that its options call resumable)."""
    from ..tasks import TASKS

    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "tasks" and parts[1] in TASKS:
        return parts[2] in TASKS[parts[1]].Options.resumable
    return key.startswith(RESUMABLE)


def resumable_keys() -> str:
    """What a resume may change, in words (for the messages that refuse a change)."""
    return ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE) + ", a task's evaluation settings " \
        "(tasks.*: the configuration reference marks them)"


def check_resumable(changes: dict[str, tuple[Any, Any]]) -> None:
    """A resume takes these changes, or refuses with one line naming what may change."""
    for key in changes:
        if not resumable(key) and key not in ("output.dir", "output.name"):
            allowed = resumable_keys()
            was = yaml_value(changes[key][0])
            raise KDError(f"--set {key}: cannot change when resuming (the run was created with {key}={was}); "
                          f"keys that may change on resume: {allowed}")
