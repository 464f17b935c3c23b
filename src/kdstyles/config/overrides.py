"""``--set KEY.PATH=VALUE``: values read as YAML, set inside a raw config, and written back.

Text is read once, at the command line: ``--set`` pairs become :data:`Change` s (a dotted key
and its value), which is what the workflows (compare's variants and seeds, a shared teacher,
tune's trials) add to a config: typed values, never text parsed again."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..errors import KDError

def yaml_value(value: Any) -> str:
    """A value as YAML on one line (the form ``--set KEY=VALUE`` reads back)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def override(key: str, value: Any) -> str:
    """``KEY=VALUE`` for ``--set``, the value as YAML on one line."""
    return f"{key}={yaml_value(value)}"


Change = tuple[str, Any]  # a dotted config key and its value


def changes_of(pairs: list[str]) -> list[Change]:
    """``--set`` text as changes: ``a.b=1`` -> ``("a.b", 1)``."""
    return [(".".join(path), value) for path, value in parse_overrides(pairs)]


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any]]:
    """``a.b.c=value`` -> (['a','b','c'], yaml-parsed value)."""
    out = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise KDError(f"--set '{pair}': expected KEY.PATH=VALUE, e.g. optim.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise KDError(f"--set '{pair}': the value is not valid YAML ({exc.problem})") from None
        except RecursionError:
            raise KDError(f"--set {key.strip()}: the value is nested too deeply to read") from None
        out.append((key.strip().split("."), value))
    return out


def apply_overrides(raw: dict, pairs: list[str]) -> dict:
    """Set each ``KEY.PATH=VALUE`` inside a raw config dict (creating dicts on the way)."""
    return apply_changes(raw, changes_of(pairs))


def apply_changes(raw: dict, changes: list[Change] | tuple[Change, ...]) -> dict:
    """Set each change's value at its dotted key inside a raw config dict, in order (creating
    dicts on the way)."""
    for key, value in changes:
        path = key.split(".")
        node: Any = raw
        for depth, part in enumerate(path[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise KDError(f"--set {'.'.join(path)}: '{part}' is not an index of a list of {len(node)}")
                node = node[int(part)]
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, (dict, list)):
                where = ".".join(path[: depth + 1])
                raise KDError(f"--set {'.'.join(path)}: '{where}' holds a value, not a section")
            node = child
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise KDError(f"--set {'.'.join(path)}: '{last}' is not an index of a list of {len(node)}")
            node[int(last)] = copy.deepcopy(value)  # a value given to several configs stays each one's own
        else:
            node[last] = copy.deepcopy(value)
    return raw
