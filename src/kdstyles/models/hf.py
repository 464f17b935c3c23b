"""Vision transformers from the Hugging Face Hub as teachers (``networks.teacher.arch:
hf:ID[@REVISION]`` or ``hf:FOLDER``), loaded through ``transformers`` (the ``hf`` extra; it
needs no torchvision): DINOv2 (and its medical descendants published in its layout), ViT, and
any other ``AutoModel`` vision backbone that returns hidden states and a class token.

The model keeps its own input contract: whatever the run's images are, it sees them back in
[0, 1], grey repeated to RGB, resized to its own size and normalised with its own mean and
std (the ``preprocessor_config.json`` beside it; ImageNet's where there is none). Every step
gives it the same view the students see, so it stays consistent with them.

What a distillation edge can take from it:

- ``blocks.K``: block K's patch tokens as a feature map (B, D, h, w) on the patch grid (the
  class and register tokens dropped), for ``features`` and ``attention`` edges (the last
  block's after the final layer norm, as dense heads read it);
- ``embedding``: the class token after the final layer norm (B, D), for ``relations`` edges
  and the probe;
- its predictions: a linear ``head`` on that embedding, fitted by the probe stage
  (:mod:`kdstyles.engine.probe`) when the teacher is offline and has no checkpoint.

Offline (no network, ``HF_HUB_OFFLINE=1``), a hub id not in the local cache is one line saying
what to download and where to point the config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import KDError

PREFIX = "hf:"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def is_hf(arch: str) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def parse(arch: str) -> tuple[str, str | None]:
    """``hf:ID[@REVISION]`` or ``hf:FOLDER`` -> (the id or folder, the revision or None)."""
    ref, revision = arch[len(PREFIX):].strip(), None
    if "@" in ref and not Path(ref).exists():
        ref, revision = ref.rsplit("@", 1)
    if not ref:
        raise KDError(f"arch '{arch}': name a Hugging Face model after hf:, e.g. hf:facebook/dinov2-small or "
                      "hf:path/to/folder")
    return ref, revision or None


def _transformers():
    try:
        import transformers
    except ImportError:
        raise KDError("a Hugging Face teacher (arch hf:...) needs transformers: pip install 'kdstyles[hf]'") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def load_backbone(arch: str, where: str) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone of ``arch`` (``hf:...``) and its input contract (size, mean, std, patch size,
    register tokens); one line when it cannot be had."""
    transformers = _transformers()
    ref, revision = parse(arch)
    local = Path(ref).expanduser()
    source = str(local) if local.is_dir() else ref
    try:
        model = transformers.AutoModel.from_pretrained(source, revision=revision, local_files_only=local.is_dir())
    except (OSError, ValueError, EnvironmentError) as exc:
        if local.is_dir():
            raise KDError(f"{where}.arch: folder '{local}' holds no model transformers can load "
                          f"({str(exc).splitlines()[0][:160]}); give a folder written by save_pretrained") from None
        raise KDError(f"{where}.arch: '{ref}' is not a folder here and could not be had from the Hugging Face Hub "
                      f"({type(exc).__name__}); where a network exists run 'hf download {ref} --local-dir DIR' "
                      f"and set {where}.arch: hf:DIR") from None
    config = model.config
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else int(size[0])
    patch = getattr(config, "patch_size", 16)
    patch = patch if isinstance(patch, int) else int(patch[0])
    mean, std = IMAGENET
    folder = local if local.is_dir() else _cached_folder(ref, revision)
    pre = folder / "preprocessor_config.json" if folder is not None else None
    if pre is not None and pre.is_file():
        try:
            found = json.loads(pre.read_text())
            mean, std = tuple(found.get("image_mean", mean)), tuple(found.get("image_std", std))
            crop = found.get("crop_size") or {}
            size = int(crop.get("height", size)) if isinstance(crop, dict) else size
        except (ValueError, TypeError):
            pass
    contract = {"size": size, "patch": patch, "mean": mean, "std": std, "hidden": int(config.hidden_size),
                "blocks": int(config.num_hidden_layers), "registers": int(getattr(config, "num_register_tokens", 0)),
                "name": ref if not local.is_dir() else local.name}
    return model, contract


def _cached_folder(ref: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, revision=revision, local_files_only=True))
    except Exception:  # not in the cache: the model loaded from elsewhere, ImageNet statistics then
        return None


class HFTeacher(nn.Module):
    """A frozen vision transformer with a linear head for this run's classes (see the module
    docstring). ``set_inputs`` tells it how the run normalises its images."""

    def __init__(self, backbone: nn.Module, contract: dict[str, Any], num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.contract = contract
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(contract["blocks"]))  # taps: blocks.K
        self.embedding = nn.Identity()  # tap: embedding
        self.head = nn.Linear(contract["hidden"], num_classes)
        self.register_buffer("own_mean", torch.tensor(contract["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("own_std", torch.tensor(contract["std"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("run_mean", torch.tensor(IMAGENET[0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("run_std", torch.tensor(IMAGENET[1]).view(1, -1, 1, 1), persistent=False)
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    @property
    def default_map_tap(self) -> str:
        """What a features edge taps when it names nothing: the last block's patch tokens."""
        return f"blocks.{len(self.blocks) - 1}"

    def set_inputs(self, inputs: Any) -> None:
        """The run's normalisation (:class:`~kdstyles.common.inputs.Inputs`), undone before its own."""
        self.run_mean = torch.tensor(inputs.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.run_std = torch.tensor(inputs.std, dtype=torch.float32).view(1, -1, 1, 1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The run's normalised images as this model takes them."""
        x = x * self.run_std.to(x) + self.run_mean.to(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.contract["size"]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.own_mean.to(x)) / self.own_std.to(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The class-token embedding (B, D); each block's patch tokens pass through ``blocks.K``."""
        out = self.backbone(pixel_values=self.prepare(x), output_hidden_states=True)
        hidden = list(out.hidden_states[1:])
        last = out.last_hidden_state
        hidden[-1] = last  # the last block's tokens after the final layer norm
        skip = 1 + self.contract["registers"]
        for tap, tokens in zip(self.blocks, hidden, strict=True):
            patches = tokens[:, skip:]
            side = int(math.isqrt(patches.shape[1]))
            tap(patches.transpose(1, 2).reshape(len(patches), -1, side, side))
        return self.embedding(last[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_hf(arch: str, num_classes: int, where: str) -> HFTeacher:
    backbone, contract = load_backbone(arch, where)
    return HFTeacher(backbone.eval(), contract, num_classes)
