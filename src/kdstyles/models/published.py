"""Networks kdstyles published, read back as a starting point (``networks.<name>.pretrained``)
or a frozen teacher (``networks.teacher.checkpoint`` with ``mode: offline``).

A published network is a MONAI Bundle kdstyles exported (``configs/metadata.json``'s
``kdstyles`` record, ``models/model.pt``) or a Hugging Face Hub repository it pushed
(``config.json``, ``model.safetensors``), given as a local folder (a bundle, a clone, a
``--dry-run`` folder) or as ``hf:ORG/NAME[@REVISION]`` (its two files downloaded into the
Hugging Face cache; offline, one line saying what to download). The record says how the network
was built (arch, widen, stem): a config that builds another network is refused in one line
before any weight is read. Nothing is unpickled (safetensors, or ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..errors import KDError

HUB_PREFIX = "hf:"
BUNDLE_META = Path("configs") / "metadata.json"
HUB_CONFIG = "config.json"
FORMAT = "kdstyles-network"


@dataclass(frozen=True)
class Published:
    source: str  # as the config gave it
    record: dict[str, Any]  # the kdstyles record: task, networks, input, normalisation, class_names, weights
    weights_path: Path

    @property
    def network(self) -> dict[str, Any]:
        return self.record["networks"][0]

    def weights(self, where: str) -> dict[str, torch.Tensor]:
        from .pretrained import read_state_dict

        return read_state_dict(self.weights_path, where)


def hub_refuses(repo: str) -> bool:
    """Whether the Hub could hold no repository of this id (huggingface_hub's own rules)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return True
    return False


def is_published(source: Any) -> bool:
    """Whether a ``pretrained``/``checkpoint`` value names a published network: a Hub id, or a
    folder holding a bundle's metadata or a Hub repository's config."""
    if not isinstance(source, str):
        return False
    if source.startswith(HUB_PREFIX):
        return True
    folder = Path(os.path.expanduser(source))
    return folder.is_dir() and ((folder / BUNDLE_META).is_file() or (folder / HUB_CONFIG).is_file())


def names_published(pretrained: Any) -> bool:
    """Whether a ``pretrained`` value can only mean a published network (a Hub id or a folder,
    not ``imagenet`` or a weights file), whether or not that folder is here now: a run folder
    that started from it keeps naming it after it moved."""
    from .pretrained import SUFFIXES  # a weights file, not a published folder

    return isinstance(pretrained, str) and pretrained != "imagenet" and not pretrained.endswith(SUFFIXES)


def _record(path: Path, where: str, source: str) -> dict[str, Any]:
    from ..store.fileio import read_json

    meta = read_json(path, "publish it again (kdstyles export --format bundle, or kdstyles push)")
    record = meta.get("kdstyles") if path.name == "metadata.json" else meta
    ok = isinstance(record, dict) and record.get("format") == FORMAT and isinstance(record.get("networks"), list) \
        and record["networks"] and isinstance(record.get("weights"), str)
    if not ok:
        raise KDError(f"{where}: '{source}' holds no network kdstyles published ({path.name} has no kdstyles "
                      "record); give a bundle from 'kdstyles export --format bundle' or a repository from "
                      "'kdstyles push'")
    return record


def _hub_files(source: str, where: str) -> Path:
    """The repository's config.json (and the weights it names) from the Hugging Face cache,
    downloaded where the hub can be reached; one line otherwise."""
    from huggingface_hub import constants, hf_hub_download

    from .pretrained import hub_unreachable

    repo, _, revision = source[len(HUB_PREFIX):].partition("@")
    revision = revision or None
    if hub_refuses(repo):
        raise KDError(f"{where}: '{source}' names no repository the Hub could hold; give hf:ORG/NAME[@REVISION] "
                      "(letters, digits, '-', '_', '.')")

    def fetch(name: str) -> Path:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 (not cached)
            why = hub_unreachable(constants.ENDPOINT)
            if why:
                raise KDError(f"{where}: '{source}' is not in the Hugging Face cache and the hub cannot be reached "
                              f"({why}); where a network is reachable run 'hf download {repo}"
                              f"{' --revision ' + revision if revision else ''} --local-dir DIR' and give DIR "
                              "instead") from None
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except Exception as exc:  # noqa: BLE001 (huggingface_hub raises its own types)
            raise KDError(f"{where}: '{source}': {name} cannot be downloaded ({type(exc).__name__}); check the "
                          "repository's name and revision, and 'hf auth login' for a private one") from None

    config = fetch(HUB_CONFIG)
    record = _record(config, where, source)
    fetch(record["weights"])
    return config.parent


def read_published(source: str, where: str) -> Published:
    """The record and weights file of a published network; one line naming ``where`` and the
    source when it is none."""
    folder = _hub_files(source, where) if source.startswith(HUB_PREFIX) else Path(os.path.expanduser(source))
    if not folder.is_dir():
        raise KDError(f"{where}: '{source}' does not exist (give imagenet, a weights file, a MONAI Bundle or Hub "
                      "repository folder kdstyles published, or hf:ORG/NAME)")
    meta = folder / BUNDLE_META if (folder / BUNDLE_META).is_file() else folder / HUB_CONFIG
    if not meta.is_file():
        raise KDError(f"{where}: '{source}' is neither a MONAI Bundle nor a Hub repository kdstyles published "
                      f"(no {BUNDLE_META} or {HUB_CONFIG})")
    record = _record(meta, where, source)
    weights = folder / record["weights"]
    if not weights.is_file():
        raise KDError(f"{where}: '{source}' lacks its weights '{record['weights']}'; copy the whole folder")
    if len(record["networks"]) != 1:
        raise KDError(f"{where}: '{source}' holds an ensemble of {len(record['networks'])} networks; publish one "
                      "network (--network NAME) to start from it or to teach with it")
    return Published(source, record, weights)


def check_fits(published: Published, arch: str, widen: float, stem: str, where: str) -> None:
    """The config builds the network that was published (arch, widen, stem), or one line saying
    what to set."""
    net = published.network
    want = {"arch": arch, "widen": float(widen), "stem": stem}
    have = {"arch": net.get("arch"), "widen": float(net.get("widen", 1.0)), "stem": net.get("stem", "auto")}
    if want != have:
        differ = [k for k in want if want[k] != have[k]]
        raise KDError(f"{where}: '{published.source}' holds a {have['arch']} (widen {have['widen']:g}, stem "
                      f"{have['stem']}); set {', '.join(f'{where}.{k}: {have[k]}' for k in differ)} to build it")


def load_published(model: nn.Module, published: Published, where: str) -> list[str]:
    """Load a published network's weights into ``model`` (built from the same arch): strict, but
    for the output layer, which is left as built where its shape differs (another number of
    classes); returns the keys so left."""
    weights = published.weights(where)
    own = model.state_dict()
    head = list(own)[-1].rsplit(".", 1)[0] + "."  # the last layer: the classifier or the map's output
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or any(not k.startswith(head) for k in wrong):
        bad = next((k for k in wrong if not k.startswith(head)), None)
        what = (f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing else
                f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}" if unexpected else
                f"shape of {bad}: {tuple(weights[bad].shape)} there, {tuple(own[bad].shape)} here (the input's "
                "channels?)")
        raise KDError(f"{where}: '{published.source}' does not fit the network built here ({what})")
    model.load_state_dict({k: v for k, v in weights.items() if k not in wrong}, strict=False)
    return wrong
