"""Plugins: learning styles, tasks, data sources and networks registered from a file of your own.

A plugin is a Python file (or an importable module) that registers what it adds, each with
the one call its kind has::

    from kdstyles.plugins import Arch, register_arch, register_source, register_style, register_task

A config names the file under ``plugins:`` (a list of ``.py`` paths or module names); every
command imports them before it validates the rest of the config, so ``task:``,
``data.source:``, ``networks.*.arch:`` and routing styles may name what they register. The
run folder's config.yaml records each file's absolute path, so ``evaluate``, ``--resume``,
``export`` and the workers of ``compare`` and ``launch`` import them again, and an export's
sidecar lists them for ``predict``. A plugin runs as code with your rights, as any Python
file you import does. This module imports nothing heavy until a register call's name is
asked for (``predict`` of an ONNX model stays torch-free).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import KDError
from .store.fileio import check_path_text

# What a plugin imports from here, and where it lives (imported when first asked for).
_NAMES = {"Source": "data.sources", "SourceOptions": "data.options", "register_source": "data.sources",
          "Arch": "models.zoo", "register_arch": "models.zoo", "Style": "styles", "register_style": "styles",
          "Task": "tasks", "TaskOptions": "tasks.base", "register_task": "tasks", "register_output_kind": "styles.outputs"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'kdstyles.plugins' has no attribute '{name}'")
    module = importlib.import_module(f"kdstyles.{_NAMES[name]}")
    return getattr(module, "register" if name == "register_style" else name)


__all__ = ["Arch", "Source", "SourceOptions", "Style", "Task", "TaskOptions", "load_plugins", "plugin_path",
           "register_arch", "register_output_kind", "register_source", "register_style", "register_task"]

_LOADED: dict[str, object] = {}  # what each entry imported (a file once per process, however often named)


def plugin_path(entry: str) -> str:
    """A ``plugins`` entry as config.yaml records it: a file's absolute path, a module's name."""
    return str(Path(entry).expanduser().resolve()) if entry.endswith(".py") else entry


def _failed(at: str, exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"{at} exited while it was imported (exit status {exc.code}); a plugin registers, it does not exit"
    return f"{at} failed to import: {type(exc).__name__}: {exc}"


def load_plugins(entries: Any, where: str = "plugins") -> None:
    """Import each entry (a ``.py`` file or a module name) once per process; entries that are not
    a list of names or paths, and what one cannot do, are one line naming it."""
    if not (isinstance(entries, list) and all(isinstance(e, str) and e for e in entries)):
        raise KDError(f"{where}: a list of .py files or module names (got {entries!r})")
    for i, entry in enumerate(entries):
        try:
            check_path_text(entry)
        except ValueError as exc:
            raise KDError(f"{where}[{i}]: {exc}") from None
        key = plugin_path(entry)
        if key in _LOADED:
            continue
        at = f"{where}[{i}] '{entry}'"
        if key.endswith(".py"):
            path = Path(key)
            if not path.is_file():
                raise KDError(f"{at}: no such file (a plugin is a .py file or an importable module name)")
            name = f"kdstyles_plugin_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look a class's module up by name
            try:
                spec.loader.exec_module(module)
            except KDError as exc:
                sys.modules.pop(name, None)
                raise KDError(f"{at}: {exc}") from None
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure of the user's file is one line
                sys.modules.pop(name, None)
                raise KDError(_failed(at, exc)) from None
        else:
            try:
                module = importlib.import_module(entry)
            except KDError as exc:
                raise KDError(f"{at}: {exc}") from None
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                raise KDError(_failed(at, exc)) from None
        _LOADED[key] = module
