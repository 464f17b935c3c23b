"""Feature taps: forward hooks addressed by module path (``layer4.1.conv2``), no rewriting.

A path ending in ``:in`` records the module's input instead of its output: ``fc:in`` is
the penultimate embedding of a network whose classifier is ``fc``.

A :class:`Tap` records only inside :meth:`Tap.recording`, so evaluation and export run the
network untouched. Under ``torch.compile`` the hooks are traced into the graph. A recorded
tensor that a later in-place operation changes (e.g. the output of a BatchNorm followed by
``ReLU(inplace=True)``) would silently be the wrong map; that is detected (when the network
runs eagerly, as it does once when the cohort is built) and reported with the module path.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..errors import KDError


def resolve_module(model: nn.Module, path: str, where: str) -> nn.Module:
    """The submodule at ``path``; a one-line KDError listing the nearest valid paths if absent."""
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(path, names, n=5, cutoff=0.5) or names[-5:]
    raise KDError(f"{where}: no module '{path}' in {type(model).__name__}; nearest valid paths: {', '.join(near)}")


class Tap:
    """Records the outputs of some modules of one network, by module path."""

    def __init__(self, model: nn.Module, paths: list[str], where: str):
        self.paths = list(dict.fromkeys(paths))
        self._active = False
        self._store: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        for p in self.paths:
            resolve_module(model, p.removesuffix(":in"), where).register_forward_hook(self._hook(p))

    def _hook(self, path: str):
        record_input = path.endswith(":in")

        def hook(_module, inputs, output):
            if self._active:
                output = inputs[0] if record_input and inputs else output
                if not isinstance(output, torch.Tensor):
                    raise KDError(f"tap '{path}' returns {type(output).__name__}, not a tensor; tap a module "
                                  "whose output is a single feature map")
                self._store[path] = output
                # Inference tensors (offline teacher) keep no version counter, and a compiled graph
                # has none to read; the build probe runs every network eagerly outside inference
                # mode, so the check happens there.
                eager = not torch.compiler.is_compiling() and not output.is_inference()
                self._versions[path] = output._version if eager else -1
        # Traced into a compiled graph (no graph break): a break here made torch.compile run each
        # residual block as a frame of its own, and a block's compiled code was then reused for a
        # later block of the same shape whose hook it does not check, so the tap went unrecorded.
        return hook

    @contextmanager
    def recording(self) -> Iterator[dict[str, torch.Tensor]]:
        self._store, self._versions = {}, {}
        self._active = bool(self.paths)
        try:
            yield self._store
        finally:
            self._active = False
        for path, tensor in self._store.items():
            if self._versions[path] >= 0 and tensor._version != self._versions[path]:
                raise KDError(f"tap '{path}': its output is modified in place later in the forward "
                              "(e.g. by ReLU(inplace=True)); tap the module before it, such as the conv")
        missing = [p for p in self.paths if p not in self._store]
        if self.paths and missing:
            raise KDError(f"tap '{missing[0]}' was not called during the forward pass; tap a module that runs "
                          "(with train.compile: true, the compiled graph can skip it: set train.compile: false)")
