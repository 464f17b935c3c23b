"""Built-in registries filled from their folder: a style, task or source of the package is one
file in its folder (styles/, tasks/, data/sources/), found here, never a line in a list."""

from __future__ import annotations

import importlib
import pkgutil


def discover(package: str, base: type, skip: tuple[str, ...] = ()) -> list[type]:
    """Every subclass of ``base`` with a ``name`` of its own defined in a module of ``package``
    (modules in the order of their file names; ``skip``: modules that hold none and import the
    registry back)."""
    found = []
    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        found += [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, base) and c is not base
                  and c.__module__ == module.__name__ and "name" in vars(c)]
    return found
