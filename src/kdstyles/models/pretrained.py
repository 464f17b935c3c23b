"""ImageNet-pretrained weights without torchvision or timm (ResNets; MobileNetV2 from a file).

``pretrained: imagenet`` takes torchvision's own ImageNet checkpoints as the timm
organisation republishes them in safetensors on the Hugging Face hub
(``timm/resnet50.tv_in1k``, ...), downloaded once into the usual Hugging Face cache.
``pretrained: PATH`` reads a local ``.safetensors`` file or a ``.pth``/``.pt`` state dict in
torchvision naming (timm's ResNets use the same names). Nothing is unpickled: safetensors,
or ``torch.load(weights_only=True)``.

kdstyles' ResNets with the ``imagenet`` stem have torchvision's module names and shapes,
so loading is strict: a missing or unexpected key, or a shape that differs, is an error
naming the file, except the classifier, which is replaced for the run's classes. For
1-channel inputs (grayscale, X-ray) the first convolution's RGB weights are summed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import KDError

HUB_REPOS = {f"resnet{d}": f"timm/resnet{d}.tv_in1k" for d in (18, 34, 50, 101, 152)}
HUB_FILE = "model.safetensors"
# Per family, in torchvision's names: the classifier (replaced) and the first convolution (1-channel sum).
CLASSIFIER = {"resnet": ("fc.weight", "fc.bias"), "mobilenet": ("classifier.1.weight", "classifier.1.bias")}
FIRST_CONV = {"resnet": "conv1.weight", "mobilenet": "features.0.0.weight"}
SUFFIXES = (".safetensors", ".pth", ".pt")


def hub_file(arch: str, where: str) -> Path:
    """The cached (or freshly downloaded) ImageNet weights of ``arch``; offline, one line
    saying which file of which repository to fetch and where to put it."""
    from huggingface_hub import constants, hf_hub_download

    repo = HUB_REPOS[arch]
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(hf_hub_download(repo, HUB_FILE, local_files_only=offline))
    except Exception as exc:  # huggingface_hub raises its own types for offline, network and HTTP failures
        reason = "offline (HF_HUB_OFFLINE=1)" if offline else {
            "LocalEntryNotFoundError": "the hub cannot be reached", "GatedRepoError": "the repository is gated",
            "RepositoryNotFoundError": "no such repository", "EntryNotFoundError": "no such file in it",
        }.get(type(exc).__name__, type(exc).__name__)
        raise KDError(f"{where}.pretrained: ImageNet weights for {arch} are '{HUB_FILE}' of the Hugging Face "
                      f"repository '{repo}', not in the cache '{constants.HF_HUB_CACHE}' and not downloadable here "
                      f"({reason}); where a network is reachable run 'huggingface-cli download {repo} {HUB_FILE}' "
                      f"and copy that cache folder here, or set {where}.pretrained to the file's path") from None


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
    from ..checkpoints import load, state_dict_of

    return state_dict_of(load(path), path)


def load_pretrained(model: nn.Module, arch: str, source: str, in_channels: int, where: str) -> None:
    """Load ImageNet (``source='imagenet'``) or a file's weights into a freshly built network."""
    if source == "imagenet" and arch not in HUB_REPOS:
        raise KDError(f"{where}.pretrained: no hub repository of ImageNet weights is known for {arch}; allowed: "
                      f"{', '.join(HUB_REPOS)}, efficientnet-b0..b7, or the path of a weights file in torchvision "
                      "naming (for mobilenet_v2: torchvision's mobilenet_v2 .pth)")
    family = next(f for f in CLASSIFIER if arch.startswith(f))
    classifier, first = CLASSIFIER[family], FIRST_CONV[family]
    path = hub_file(arch, where) if source == "imagenet" else Path(os.path.expanduser(source))
    weights = read_state_dict(path, where)
    own = model.state_dict()
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
        raise KDError(f"{where}.pretrained: '{path}' does not fit {arch} with the imagenet stem and widen 1 ({what})")
    model.load_state_dict(weights, strict=False)  # strict but for the classifier, checked above
