"""A config that does not validate, as one line: the first error's key path and what is
allowed there, with "did you mean" for a misspelt key."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .sections import ExperimentConfig

def _annotation_model(ann: Any) -> Any:
    """The pydantic model class inside an annotation (through Optional, list, dict), if any."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType, list, dict):
        for arg in typing.get_args(ann):
            found = _annotation_model(arg)
            if found is not None:
                return found
        return None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names allowed at the parent of ``loc`` (walks models, dict keys and list indices)."""
    cls: Any = ExperimentConfig
    for part in loc[:-1]:
        if cls is None:
            return []
        if isinstance(part, int) or part not in cls.model_fields:
            continue  # a dict key or list index: stay on the element model
        cls = _annotation_model(cls.model_fields[part].annotation)
    return sorted(cls.model_fields) if cls is not None else []


_BRANCH = re.compile(r"^(bool|str|int|float|none|literal\[.*\]|list\[.*\]|dict\[.*\]|tuple\[.*\]|function-.*)$")
_SHOULD = re.compile(r"^Input should be (a valid )?")


def format_validation_error(err: ValidationError) -> str:
    """One line: the first error's key path and what is allowed (plus a count of the other
    keys in error). A value that fits no branch of a union (``true`` or a path, a number or
    ``auto``) is one message listing every branch, not one per branch."""
    errors = err.errors()
    by_path: dict[tuple, list[dict]] = {}
    for e in errors:
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and _BRANCH.match(p)))
        by_path.setdefault(loc, []).append(e)
    loc, group = next(iter(by_path.items()))
    first = group[0]
    path = ".".join(str(p) for p in loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        msg = f"unknown key '{path}'{hint}; allowed here: {', '.join(allowed)}"
    elif first["type"] == "unknown_key":  # a key of a section whose keys its source decides (data)
        msg = f"unknown key '{path}'{first['msg']}"
    else:
        given = first.get("input")
        shown = "" if isinstance(given, (dict, list)) else " (got null)" if given is None else \
            f" (got {given!r})" if len(repr(given)) <= 80 else f" (got {repr(given)[:60]}... {len(repr(given)):,} characters)"
        if len(group) > 1 and all(_SHOULD.match(e["msg"]) for e in group):
            kinds = [_SHOULD.sub("", e["msg"]).split(",")[0].replace("integer", "whole number") for e in group]
            text = "should be " + " or ".join(k if k.startswith("'") else f"a {k}" for k in dict.fromkeys(kinds))
        else:
            text = first["msg"].removeprefix("Value error, ")
        msg = f"{path or 'config'}: {text}{shown}"
    more = f" (+{len(by_path) - 1} more)" if len(by_path) > 1 else ""
    return f"config error: {msg}{more}"
