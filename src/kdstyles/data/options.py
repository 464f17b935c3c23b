"""A source's own keys: the ``data`` section is the keys every source shares plus those of the
source it names (``data.source``), validated by that source's :class:`SourceOptions` model;
``data.unlabeled`` likewise (``Source.Unlabeled``), and each external set (``data.external``).
The section is a union discriminated on ``source``, decided against the registry when a
config is validated, so a plugin's source brings keys of its own.

A key of another source is refused in one line (it would be ignored), unless it holds that
source's default: a config resolved for one source (defaults filled in) may then name
another (``--set data.source=folder``). A run folder's own config (``recorded``) keeps every
key an earlier release wrote beside its source's: those are dropped, as that release ignored
them.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..store.fileio import check_path_text


def home(v: str | None) -> str | None:
    """A path as a shell would read it: ``~/data`` is the home folder's ``data``; refused in one
    line where no file system could hold it (a NUL, a name longer than NAME_MAX bytes)."""
    if isinstance(v, str):
        check_path_text(v)
    return os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v


class SourceOptions(BaseModel):
    """The keys a source adds to the ``data`` section (a subclass per source; none by default).
    Fields, bounds and descriptions as any config section's; the configuration reference
    lists them under the source's name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _paths = field_validator("root", "path", check_fields=False)(home)


class ClassList(SourceOptions):
    """Sources whose class list a config may give."""

    classes: Optional[list[str]] = Field(None, description="the class list (default: sorted labels); "
                                         "segmentation: names of the mask values 0..K-1")

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        if v is not None and not v:
            raise ValueError("needs at least one class name")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("class names must be distinct")
        return v


class MaskClasses(ClassList):
    """Sources of masks (segmentation), whose values are class indices."""

    num_classes: int = Field(2, ge=2, le=255, description="segmentation: mask values 0..K-1 (2: binary masks, "
                                                          "0/255 thresholded)")


class NoneLabel(SourceOptions):
    """Sources of multi-label names joined by ``|``."""

    none_label: Optional[str] = Field("No Finding", description="multi-label names joined by |: the name that means "
                                      "no class (NIH ChestX-ray14's); null: every name is a class")


class FileSplits(SourceOptions):
    """Sources of files, whose missing validation and test splits are drawn."""

    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of train split off as val when no val split "
                                "exists (stratified, seeded, saved in the run folder)")
    test_fraction: float = Field(0.15, gt=0, lt=1, description="likewise for a missing test split")

    @model_validator(mode="after")
    def _fractions(self) -> "FileSplits":
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction {self.test_fraction} leave no "
                             "training images; together they must be below 1 (0.15 each by default)")
        return self


SHARED = (MaskClasses, NoneLabel, FileSplits)  # the keys the helpers of file sources read


def option(cfg: Any, key: str) -> Any:
    """A key of ``SHARED`` from a data section whose source may not declare it (a plugin's): its
    value, else the default the built-in sources give it (``classes``: none given, ``val_fraction``
    0.15, ...)."""
    if hasattr(cfg, key):
        return getattr(cfg, key)
    return next(m.model_fields[key].default for m in SHARED if key in m.model_fields)


def _error(key: str, value: Any, message: str, kind: str = "source_key") -> ValidationError:
    """A validation error at ``key`` of the section being validated (pydantic prefixes the section's
    own path); ``kind`` ``unknown_key``: the config's message says "unknown key '<path>'" before it."""
    from pydantic_core import PydanticCustomError

    return ValidationError.from_exception_data(
        "data", [{"type": PydanticCustomError(kind, message), "loc": (key,), "input": value}])


def own_keys(given: dict[str, Any], model: type[SourceOptions], source: str, others: Iterable[type[SourceOptions]],
             shared: Iterable[str], recorded: bool) -> SourceOptions:
    """The keys ``given`` beyond a section's shared ones, validated as ``source``'s ``model``
    (defaults filled in). A key of another source's model (``others``) holding its default is
    left out, as is any such key of a ``recorded`` config; another is refused in one line, as
    is a key no source has (with the nearest name)."""
    own = model.model_fields
    kept = {}
    for key, value in given.items():
        if key in own:
            kept[key] = value
            continue
        owners = [m.model_fields[key] for m in others if key in m.model_fields]
        if owners and (recorded or any(value == f.default for f in owners)):
            continue
        if owners:
            listed = ", ".join(sorted(own)) or "none"
            raise _error(key, value, f"source '{source}' does not read it (its own keys: {listed}); leave it out, or "
                              "choose the source it belongs to")
        allowed = sorted({*shared, *own})
        near = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise _error(key, value, f"{hint}; allowed here with source '{source}': {', '.join(allowed)}", "unknown_key")
    return model.model_validate(kept)
