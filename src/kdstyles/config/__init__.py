"""Experiment configuration, one module per job: the sections as pydantic models
(:mod:`~kdstyles.config.sections`), one-line messages for what does not validate
(:mod:`~kdstyles.config.messages`), ``--set`` overrides (:mod:`~kdstyles.config.overrides`),
and what a resume may change (:mod:`~kdstyles.config.resume`); here, loading: a YAML file or
mapping with overrides, validated once, after the plugins it names are imported.

Every key is validated before any work starts; a bad key or value raises :class:`KDError`
with one line naming the key path and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from ..data.sources import SOURCES
from ..errors import KDError
from ..store.fileio import read_yaml
from .messages import format_validation_error
from .overrides import Change, apply_changes, apply_overrides, changes_of, override, parse_overrides, yaml_value
from .resume import MOVABLE, RESUMABLE, check_resumable, config_changes, resumable, resumable_keys
from .sections import (SELECTION_METRICS, AugmentConfig, DataConfig, EvalConfig, ExperimentConfig, LauncherConfig,
                       LossConfig, MixConfig, NetworkConfig, NetworksConfig, OptimConfig, OutputConfig, ScheduleConfig,
                       TeacherConfig, TrainConfig, TuneConfig, UnlabeledConfig)

__all__ = ["MOVABLE", "RESUMABLE", "SELECTION_METRICS", "AugmentConfig", "DataConfig", "EvalConfig", "ExperimentConfig",
           "LauncherConfig", "LossConfig", "MixConfig", "NetworkConfig", "NetworksConfig", "OptimConfig",
           "OutputConfig", "ScheduleConfig", "TeacherConfig", "TrainConfig", "TuneConfig", "UnlabeledConfig",
           "Change", "apply_changes", "apply_overrides", "build_config", "changes_of", "check_resumable", "config_changes", "dump_config", "resumable", "resumable_keys",
           "format_validation_error", "load_config", "override", "parse_overrides", "read_yaml", "yaml_value"]


def _plugins(raw: dict) -> None:
    """Import the config's plugins before the rest is validated (they register the names it may use)."""
    entries = raw.get("plugins") if isinstance(raw, dict) else None
    if entries:
        from ..plugins import load_plugins

        load_plugins(entries, "config error: plugins")


def _validate(raw: dict, recorded: bool = False) -> ExperimentConfig:
    _plugins(raw)
    try:
        return ExperimentConfig.model_validate(raw, context={"recorded": recorded})
    except ValidationError as err:
        raise KDError(format_validation_error(err)) from None


def build_config(raw: dict, overrides: list[str] | None = None, recorded: bool = False,
                 changes: list[Change] | tuple[Change, ...] = ()) -> ExperimentConfig:
    """Validate a raw config; overrides (``--set`` text) and then ``changes`` (typed: a dotted
    key and its value) apply on top of the resolved config (defaults filled in), so
    ``--set networks.students.s1.arch=resnet18`` changes s1 and keeps s2. ``recorded``: a run
    folder's own config (config.yaml, run.json's), which an earlier release wrote: checks added
    since that only refuse keys it ignored are not applied to it."""
    changes = [*changes_of(list(overrides or [])), *changes]
    if not changes:
        return _validate(raw, recorded)
    try:
        _plugins(raw)
        resolved = ExperimentConfig.model_validate(raw, context={"recorded": recorded}).model_dump(
            mode="json", exclude_none=True)
    except (ValidationError, KDError):
        resolved = raw  # the overrides may be what repairs it; validate once with them applied
    return _validate(apply_changes(resolved, changes), recorded)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                changes: list[Change] | tuple[Change, ...] = ()) -> ExperimentConfig:
    """Load a YAML experiment (or the defaults when ``path`` is None) and apply overrides (text),
    then changes (typed)."""
    raw = read_yaml(path) if path is not None else {}
    return build_config(raw, overrides, changes=changes)


def dump_config(cfg: ExperimentConfig) -> str:
    """The config as YAML (config.yaml), every key with its value; the data section's source's
    own keys right after ``source``."""
    raw = cfg.model_dump(mode="json")
    first = SOURCES[cfg.data.source].requires  # the key it cannot do without, then its others
    own = sorted(cfg.data.model_extra or {}, key=lambda k: k != first)
    data = raw["data"]
    raw["data"] = {"source": data["source"], **{k: data[k] for k in own},
                   **{k: v for k, v in data.items() if k not in own and k != "source"}}
    return yaml.safe_dump(raw, sort_keys=False)
