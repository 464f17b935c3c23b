"""Write docs/config-reference.md from the code: every key of every config section (and every
style's options) with its type, default, allowed values and description, read from the
pydantic models' fields. ``python docs/gen_config_reference.py`` writes the page; ``--check``
exits 1 when the page on disk differs (tests/test_docs.py runs it)."""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

PAGE = Path(__file__).parent / "config-reference.md"

HEADER = """# Configuration reference

Every key of an experiment config, generated from the code (`docs/gen_config_reference.py`
reads the pydantic models of `kdstyles.config` and of every style's options; a test fails when
this page is stale). Give a key in YAML (`data: {image_size: 64}`) or on the command line
(`--set data.image_size=64`). What the sections are for, with examples, is on the
[configuration page](configuration.md).
"""

BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _type(ann: Any) -> str:
    """An annotation in a reader's words: int, float, bool, text, list of ..., one of ..."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return "one of the allowed values"
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(_type(a) for a in parts))
        return text + (" or null" if len(parts) < len(args) else "")
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[1])}" if len(args) > 1 else "mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return {str: "text", int: "integer", float: "number", bool: "true/false"}.get(ann, getattr(ann, "__name__",
                                                                                               str(ann)))


def _allowed(ann: Any, metadata: list, extra: Any = None) -> str:
    registry = (extra or {}).get("registry") if isinstance(extra, dict) else None
    if registry:  # a name a registry holds: the built-in ones, and a plugin's
        from kdstyles.data.sources import SOURCES, unlabeled_sources
        from kdstyles.tasks import TASKS

        names = {"sources": SOURCES, "tasks": TASKS, "sources that list images without labels": unlabeled_sources()
                 }[registry]
        return ", ".join(f"`{n}`" for n in names) + ", or a plugin's"
    values: list[Any] = []
    for a in [ann, *typing.get_args(ann)]:
        if typing.get_origin(a) is Literal:
            values += list(typing.get_args(a))
    bounds = [f"{sign} {getattr(m, key)}" for m in metadata for key, sign in BOUNDS.items()
              if getattr(m, key, None) is not None]
    return ", ".join([*(f"`{_value(v)}`" for v in values), *bounds])


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, BaseModel):
        return "(section)"
    return str(v)


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            made = field.default_factory()
            return f"`{_value(made)}`" if not isinstance(made, dict) or not made else "(see below)"
        return "required"
    if isinstance(field.default, BaseModel):
        return "(section)"
    return f"`{_value(field.default)}`"


def _models(ann: Any) -> list[type[BaseModel]]:
    """The models a field holds (itself, inside Optional, a list's items or a mapping's values)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models(a)]


def section(model: type[BaseModel], prefix: str, rows: list[tuple[str, ...]], sections: list) -> None:
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        ann = field.annotation
        nested = _models(ann)
        if nested:
            inner = [a for a in typing.get_args(ann) if a is not type(None)]  # Optional[X]: X
            origin = typing.get_origin(inner[0] if typing.get_origin(ann) in (Union, types.UnionType) else ann)
            below = f"{key}.<name>" if origin is dict else f"{key}[i]" if origin is list else key
            for m in nested:
                sections.append((below, m, field.description or (m.__doc__ or "").strip().split("\n\n")[0]))
            if origin is dict or origin is list:
                rows.append((key, _type(ann), _default(field), "", field.description or ""))
            continue
        rows.append((key, _type(ann), _default(field), _allowed(ann, field.metadata, field.json_schema_extra),
                     field.description or ""))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {_cell(t)} | {_cell(d)} | {_cell(a)} | {_cell(desc)} |" for k, t, d, a, desc in rows]
    return "\n".join(lines)


def _source_keys() -> list[str]:
    """Each source's own keys of ``data`` and ``data.unlabeled`` (its options models)."""
    from kdstyles.data.sources import SOURCES

    out = ["## Source keys", "",
           "The `data` section is the keys above, which every source shares, plus those of the source "
           "`data.source` names; `data.unlabeled` and each `data.external` set likewise take their source's. "
           "A key of another source is refused in one line (it would be ignored), unless it holds that "
           "source's default. A plugin's source brings its own keys the same way.", ""]
    for name, source in SOURCES.items():
        out += [f"### `source: {name}`", ""]
        for model, prefix, what in ((source.Options, "data", "In `data` (and in an external set of this source)"),
                                    (source.Unlabeled, "data.unlabeled", "In `data.unlabeled`")):
            rows: list[tuple[str, ...]] = []
            section(model, prefix, rows, [])
            rows.sort(key=lambda r: r[0] != f"data.{source.requires}")  # the key it cannot do without first
            if rows:
                out += [f"{what}:", "", table(rows), ""]
        if not source.Options.model_fields:
            out += ["No keys of its own.", ""]
        if source.requires:
            out += [f"Requires `data.{source.requires}`.", ""]
    return out


def render() -> str:
    from kdstyles.config import ExperimentConfig
    from kdstyles.styles import STYLES
    from kdstyles.tasks import TASKS

    out = [HEADER]
    top: list[tuple[str, ...]] = []
    pending: list = []
    section(ExperimentConfig, "", top, pending)
    out += ["## Top level", "", table(top), ""]
    while pending:
        key, model, about = pending.pop(0)
        rows: list[tuple[str, ...]] = []
        section(model, key, rows, pending)
        if rows:
            out += [f"## `{key}`", "", *([_cell(about), ""] if about else []), table(rows), ""]
        if key == "data":
            out += _source_keys()
    out += ["## Task options", "",
            "Settings of each task: in `tasks.<task>` (only the chosen task's are used). A resume may change "
            "those marked *resumable* (settings of evaluation); the keys they had before tasks had sections "
            "(`loss.dice_weight`, `eval.hd95`, ...) are still read.", ""]
    for name, task in TASKS.items():
        rows = []
        section(task.Options, f"tasks.{name}", rows, [])
        rows = [(k, t, d, a, desc + (" (resumable)" if k.rsplit(".", 1)[1] in task.Options.resumable else "")
                 + "".join(f"; formerly `{old}`" for old, new in task.Options.legacy.items()
                           if new == k.rsplit(".", 1)[1]))
                for k, t, d, a, desc in rows]
        out += [f"### `{name}`", "", table(rows) if rows else "No settings.", ""]
    out += ["## Style options", "",
            "Options of each learning style: in `styles.<style>` (defaults for every edge of that style) "
            "or in an edge's `options`.", ""]
    for name, style in STYLES.items():
        rows = []
        section(style.Options, f"styles.{name}", rows, [])
        doc = (style.__doc__ or "").strip().split("\n\n")[0]
        out += [f"### `{name}`", "", *([_cell(doc), ""] if doc else []),
                table(rows) if rows else "No options.", ""]
    return "\n".join(out).rstrip() + "\n"


def missing_descriptions() -> list[str]:
    """Keys without a description (every key has one; tests/test_docs.py checks)."""
    text = render()
    return [line.split("`")[1] for line in text.splitlines()
            if line.startswith("| `") and line.rstrip().endswith("|  |")]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
    text = render()
    if "--check" in sys.argv:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python docs/gen_config_reference.py", file=sys.stderr)
            sys.exit(1)
    else:
        PAGE.write_text(text)
        print(f"wrote {PAGE} ({len(text.splitlines())} lines)")
