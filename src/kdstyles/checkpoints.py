"""Checkpoint files: atomic writes and safe loads.

Writes go to a temporary file in the same folder, then ``os.replace``: a crash never
leaves a half-written checkpoint where a good one was. Loads use ``weights_only=True``:
a file carrying arbitrary pickled objects is refused and nothing in it is executed.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import KDError
from .fileio import atomic_write, write_text  # noqa: F401  (re-exported)

FORMAT = "kdstyles-1"


def save(obj: dict[str, Any], path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **obj}, tmp))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; any problem is a one-line KDError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise KDError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise KDError(f"checkpoint '{path}' holds pickled objects that are not plain tensors/containers "
                      f"and was refused unread (weights_only=True){': ' + detail if detail else ''}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KDError(f"checkpoint '{path}' is truncated or corrupted ({reason[:120]})") from None
    if not isinstance(obj, dict):
        raise KDError(f"checkpoint '{path}' holds a {type(obj).__name__}, expected a dict of tensors")
    return obj


def state_dict_of(obj: dict[str, Any], path: str | Path, network: str = "teacher") -> dict[str, torch.Tensor]:
    """The network weights inside a loaded file: our per-network checkpoint or a bare state dict."""
    if obj.get("format") == FORMAT:
        if "state_dict" in obj:
            return obj["state_dict"]
        if "cohort" in obj:
            prefix = f"networks.{network}."
            sd = {k[len(prefix):]: v for k, v in obj["cohort"].items() if k.startswith(prefix)}
            if sd:
                return sd
        raise KDError(f"checkpoint '{path}' has no weights for network '{network}'")
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    raise KDError(f"checkpoint '{path}' is neither a kdstyles checkpoint nor a state dict")
