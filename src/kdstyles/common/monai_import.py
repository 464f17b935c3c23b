"""MONAI without transformers' BERT. ``import monai`` imports every MONAI network, and one of them
(Transchex) imports transformers' BERT when transformers is installed (the ``hf`` extra): 3 s of
every kdstyles process here (``import monai``: 8.2 s with it, 4.9 s without), for a network
kdstyles never builds. :func:`install` hides transformers while MONAI's package runs its
``__init__`` (MONAI's optional import of it then fails at once, and only Transchex is left
unusable); afterwards transformers imports as usual, for the Hugging Face teachers. Nothing
changes where transformers was imported before MONAI, or where MONAI is imported before
kdstyles."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

HIDDEN = "transformers"


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps MONAI's own loader the first time ``monai`` is imported; then steps aside."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "monai":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]  # once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or HIDDEN in sys.modules:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            sys.modules[HIDDEN] = None  # an import of it raises ImportError while MONAI's __init__ runs
            try:
                run(module)
            finally:
                if HIDDEN in sys.modules and sys.modules[HIDDEN] is None:
                    del sys.modules[HIDDEN]

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Hide transformers from MONAI's first import (kdstyles' package import calls it)."""
    if "monai" not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
