"""ImageNet-pretrained weights without torchvision or timm: ResNets, DenseNets, EfficientNets
and MobileNetV2.

``pretrained: imagenet`` takes the safetensors files that the timm organisation publishes on
the Hugging Face hub (torchvision's own ResNet and DenseNet checkpoints, ``*.tv_in1k``; the
TensorFlow EfficientNets, ``tf_efficientnet_bN.aa_in1k``; timm's MobileNetV2), downloaded once
into the usual Hugging Face cache. ``pretrained: PATH`` reads a local ``.safetensors`` file or
a ``.pth``/``.pt`` state dict in torchvision's, timm's or (EfficientNet) MONAI's and
efficientnet-pytorch's naming. Nothing is unpickled: safetensors, or
``torch.load(weights_only=True)``.

kdstyles builds each family in one layout (ResNet and MobileNetV2: torchvision's names;
DenseNet and EfficientNet: MONAI's); :data:`LAYOUTS` translates the other namings into it,
name by name. Loading is then strict: a missing or unexpected key, or a shape that differs,
is an error naming the file, except the classifier, which is replaced for the run's classes.
For 1-channel inputs (grayscale, X-ray) the first convolution's RGB weights are summed.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..errors import KDError

HUB_REPOS = {
    **{f"resnet{d}": f"timm/resnet{d}.tv_in1k" for d in (18, 34, 50, 101, 152)},
    **{f"densenet{d}": f"timm/densenet{d}.tv_in1k" for d in (121, 169, 201)},
    **{f"efficientnet-b{i}": f"timm/tf_efficientnet_b{i}.aa_in1k" for i in range(8)},
    "mobilenet_v2": "timm/mobilenetv2_100.ra_in1k",
}
HUB_FILE = "model.safetensors"
# Per family, in kdstyles' names: the classifier (replaced) and the first convolution (1-channel sum).
CLASSIFIER = {"resnet": ("fc.weight", "fc.bias"), "mobilenet": ("classifier.1.weight", "classifier.1.bias"),
              "densenet": ("class_layers.out.weight", "class_layers.out.bias"),
              "efficientnet": ("_fc.weight", "_fc.bias")}
FIRST_CONV = {"resnet": "conv1.weight", "mobilenet": "features.0.0.weight", "densenet": "features.conv0.weight",
              "efficientnet": "_conv_stem.weight"}
SUFFIXES = (".safetensors", ".pth", ".pt")


def _densenet_name(key: str) -> str:
    """torchvision's DenseNet names (also its original ``norm.1`` form) and timm's -> MONAI's."""
    key = re.sub(r"(denselayer\d+)\.(norm|conv)\.?([12])\.", r"\1.layers.\2\3.", key)
    return re.sub(r"^classifier\.", "class_layers.out.", key)


def _mobilenet_name(key: str) -> str:
    """timm's MobileNetV2 names (``conv_stem``, ``blocks.S.j.conv_pw``...) -> torchvision's."""
    from .mobilenet import SETTINGS

    head = 1 + sum(n for _, _, n, _ in SETTINGS)
    top = {"conv_stem": "features.0.0", "bn1": "features.0.1", "conv_head": f"features.{head}.0",
           "bn2": f"features.{head}.1", "classifier": "classifier.1"}
    name, _, rest = key.partition(".")
    if name in top:
        return f"{top[name]}.{rest}"
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)", key)
    if not m or int(m[1]) >= len(SETTINGS):
        return key
    stage, j, part, leaf = int(m[1]), int(m[2]), m[3], m[4]
    index = 1 + sum(n for _, _, n, _ in SETTINGS[:stage]) + j
    expands = SETTINGS[stage][0] != 1  # stage 0 is timm's depthwise-separable block
    parts = ({"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2", "bn3": "3"} if expands
             else {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"})
    return f"features.{index}.conv.{parts[part]}.{leaf}" if part in parts else key


def _efficientnet_names(own: dict) -> Callable[[str], str]:
    """timm's (``blocks.S.j``) and efficientnet-pytorch's (``_blocks.N``) names -> MONAI's
    (``_blocks.S.N``, N counted over all stages)."""
    blocks: dict[int, list[int]] = defaultdict(list)  # stage -> its blocks' running numbers, from our model
    for k in own:
        if (m := re.match(r"_blocks\.(\d+)\.(\d+)\.", k)) and int(m[2]) not in blocks[int(m[1])]:
            blocks[int(m[1])].append(int(m[2]))
    return lambda key: _efficientnet_name(key, own, blocks)


def _efficientnet_name(key: str, own: dict, blocks: dict[int, list[int]]) -> str:
    if m := re.fullmatch(r"_blocks\.(\d+)\.(_\w+\.\w+)", key):  # efficientnet-pytorch: one running number
        stage = next((s for s, numbers in blocks.items() if int(m[1]) in numbers), None)
        return key if stage is None else f"_blocks.{stage}.{m[1]}.{m[2]}"
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    name, _, rest = key.partition(".")
    if name in top:
        return f"{top[name]}.{rest}"
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+(?:\.conv_\w+)?)\.(\w+)", key)
    if not m or int(m[2]) >= len(blocks.get(int(m[1]), [])):
        return key
    block = f"_blocks.{m[1]}.{blocks[int(m[1])][int(m[2])]}"
    expands = f"{block}._expand_conv.weight" in own
    parts = {"conv_dw": "_depthwise_conv", "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand",
             **({"conv_pw": "_expand_conv", "bn1": "_bn0", "bn2": "_bn1", "conv_pwl": "_project_conv", "bn3": "_bn2"}
                if expands else {"bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"})}
    return f"{block}.{parts[m[3]]}.{m[4]}" if m[3] in parts else key


# Per family, given our state dict: a function from the other namings' keys to kdstyles' keys.
# ResNets need none: torchvision and timm name them as kdstyles does.
LAYOUTS: dict[str, Callable[[dict], Callable[[str], str]]] = {
    "densenet": lambda own: _densenet_name, "mobilenet": lambda own: _mobilenet_name,
    "efficientnet": _efficientnet_names,
}


def family_of(arch: str) -> str:
    return next(f for f in CLASSIFIER if arch.startswith(f))


def hub_file(arch: str, where: str) -> Path:
    """The cached (or freshly downloaded) ImageNet weights of ``arch``; offline, one line
    saying which file of which repository to fetch and where to put it."""
    import logging

    from huggingface_hub import constants, hf_hub_download

    repo = HUB_REPOS[arch]
    why = None
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry lines ("Retrying in 8s ...") would break the one-line error
    try:
        try:
            return Path(hf_hub_download(repo, HUB_FILE, local_files_only=True))  # the cache first, no request
        except Exception:  # noqa: BLE001 (not cached)
            why = hub_unreachable(constants.ENDPOINT)  # no name lookup: no network, no retries
            if why:
                raise
        return Path(hf_hub_download(repo, HUB_FILE))
    except Exception as exc:  # huggingface_hub raises its own types for offline, network and HTTP failures
        reason = why or {
            "LocalEntryNotFoundError": "the hub cannot be reached", "GatedRepoError": "the repository is gated",
            "RepositoryNotFoundError": "no such repository", "EntryNotFoundError": "no such file in it",
        }.get(type(exc).__name__, type(exc).__name__)
        raise KDError(f"{where}.pretrained: ImageNet weights for {arch} are '{HUB_FILE}' of the Hugging Face "
                      f"repository '{repo}', not in the cache '{constants.HF_HUB_CACHE}' and not downloadable here "
                      f"({reason}); where a network is reachable run 'hf download {repo} {HUB_FILE}' "
                      f"and copy that cache folder here, or set {where}.pretrained to the file's path") from None
    finally:
        hub_log.setLevel(level)


def hub_unreachable(endpoint: str) -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, in words (offline by setting, or no
    network: its host name does not resolve), or None."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return "offline (HF_HUB_OFFLINE=1)"
    if not _hub_resolves(endpoint):
        return "the hub's host name does not resolve: no network"
    return None


def _hub_resolves(endpoint: str) -> bool:
    """Whether the hub's host name resolves (a machine without network fails at once here,
    instead of after huggingface_hub's five retries)."""
    import socket
    from urllib.parse import urlparse

    try:
        socket.getaddrinfo(urlparse(endpoint).hostname or endpoint, 443)
        return True
    except (OSError, UnicodeError):
        return False


def locate_weights(arch: str, pretrained: bool | str, where: str) -> Path | None:
    """The weights file a network's ``pretrained`` setting names, found (downloaded) now: the
    cached hub file for ``imagenet``/True, else the path, which must exist. None where nothing
    is loaded (False, or an arch that takes no file: its own error comes when it is built).
    Runs before the data is read, so a missing file stops a run in seconds."""
    source = "imagenet" if pretrained is True else (pretrained or None)
    if not source or not arch.startswith(tuple(CLASSIFIER)):
        return None
    if source == "imagenet":
        if arch not in HUB_REPOS:
            raise KDError(f"{where}.pretrained: no hub repository of ImageNet weights is known for {arch}; allowed: "
                          f"{', '.join(HUB_REPOS)}, or the path of a weights file")
        return hub_file(arch, where)
    path = Path(os.path.expanduser(source))
    if not path.is_file():
        raise KDError(f"{where}.pretrained: '{path}' does not exist (give 'imagenet' or a {', '.join(SUFFIXES)} file)")
    return path


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file by name, read without unpickling anything."""
    if not path.is_file():
        raise KDError(f"{where}.pretrained: '{path}' does not exist (give 'imagenet' or a {', '.join(SUFFIXES)} file)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise KDError(f"{where}.pretrained: '{path}' is not a readable safetensors file "
                          f"({str(exc).splitlines()[0][:100]})") from None
    if path.suffix not in SUFFIXES:
        raise KDError(f"{where}.pretrained: '{path}' is neither 'imagenet' nor a {', '.join(SUFFIXES)} file")
    from ..store.checkpoints import load, state_dict_of

    return state_dict_of(load(path), path)


def load_pretrained(model: nn.Module, arch: str, source: str, in_channels: int, where: str) -> None:
    """Load ImageNet (``source='imagenet'``) or a file's weights into a freshly built network."""
    family = family_of(arch)
    classifier, first = CLASSIFIER[family], FIRST_CONV[family]
    path = locate_weights(arch, source, where)
    own = model.state_dict()
    rename = LAYOUTS[family](own) if family in LAYOUTS else (lambda key: key)
    weights = {(k if k in own else rename(k)): v for k, v in read_state_dict(path, where).items()}
    if first in weights and in_channels == 1 and weights[first].shape[1] == 3:
        weights[first] = weights[first].sum(1, keepdim=True)  # grayscale: the RGB filters summed
    weights = {k: v for k, v in weights.items() if k not in classifier}
    missing = [k for k in own if k not in weights and k not in classifier]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        what = (f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing else
                f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}" if unexpected else
                f"shape of {wrong[0]}: {tuple(weights[wrong[0]].shape)} in the file, "
                f"{tuple(own[wrong[0]].shape)} in {arch}")
        raise KDError(f"{where}.pretrained: '{path}' does not fit {arch} ({what})")
    model.load_state_dict(weights, strict=False)  # strict but for the classifier, checked above
