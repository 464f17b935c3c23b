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
- its predictions: a linear ``head`` on that embedding (segmentation: on every patch token,
  upsampled to the image), fitted by the probe stage (:mod:`kdstyles.engine.probe`) when the
  teacher is offline and has no checkpoint.

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
SPATIAL_DIMS = (2,)  # what these models take: 2D images
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
    if local.is_dir() and _timm_config(local) is not None:
        return load_timm(local, where)
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


# ----------------------------------------------------------------------------- timm's layout

# timm's ViT sizes by name: (heads) for the widths its names stand for
TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 16}


def _timm_config(folder: Path) -> dict[str, Any] | None:
    """A folder's config.json when it is timm's (an ``architecture`` key), else None."""
    path = folder / "config.json"
    try:
        found = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("architecture"), str) else None


def _timm_weights(folder: Path, where: str) -> dict[str, torch.Tensor]:
    """The weights of a timm checkpoint folder: model.safetensors or pytorch_model.bin (read with
    weights_only=True)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    raise KDError(f"{where}.arch: folder '{folder}' has timm's config.json but neither model.safetensors nor "
                  "pytorch_model.bin")


def timm_to_dinov2(state: dict[str, torch.Tensor], heads: int, where: str, side: int | None = None
                   ) -> tuple[dict[str, Any], dict]:
    """A timm ViT's weights as transformers' DINOv2 modules, which compute the same forward:
    (the DINOv2 config's fields, the state dict in its names). Mapped: a class token; register
    tokens (``reg_token``: Virchow2, H-optimus), placed after it as transformers places them; a
    position embedding over the class token (and registers) and the patches, or over the
    patches only (timm's ``no_embed_class``); GELU MLPs or SwiGLU ones (packed ``fc1`` as
    Virchow2's, or split ``fc1_g``/``fc1_x``); optional layer scale. ``side``: the patch grid's
    side where the config says it (else read from the position embedding)."""
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # an ImageNet classifier, if kept: unused
    unsupported = sorted({k.split(".")[0] for k in state if k.startswith(("fc_norm", "attn_pool", "norm_pre"))} |
                         {"an MLP norm" for k in state if ".mlp.norm." in k})
    if unsupported or "cls_token" not in state:
        what = ", ".join(unsupported) or "no class token"
        raise KDError(f"{where}.arch: this timm ViT has {what}, which kdstyles does not map yet (it maps timm ViTs with "
                      "a class token, optional register tokens, GELU or SwiGLU MLPs and layer scale, as UNI's and "
                      "Virchow2's)")
    dim = state["pos_embed"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    pos, reg = state["pos_embed"], state.get("reg_token")
    length = pos.shape[1]
    if side is None:  # the grid from the embedding's length: patches only, or after the prefix tokens
        side = next((math.isqrt(n) for n in (length, length - 1 - registers, length - 1)
                     if n > 0 and math.isqrt(n) ** 2 == n), None)
    patches = (side or 0) ** 2
    if length == patches:  # no_embed_class: the class token (and registers) take no position
        pos = torch.cat([torch.zeros_like(pos[:, :1]), pos], 1)
    elif length == 1 + registers + patches and registers:  # registers' positions are constants: fold them in
        reg = reg + pos[:, 1:1 + registers]
        pos = torch.cat([pos[:, :1], pos[:, 1 + registers:]], 1)
    elif length != 1 + patches:
        raise KDError(f"{where}.arch: this timm ViT's position embedding ({length} positions) fits neither its "
                      f"{patches} patches nor them and its {1 + registers} prefix tokens")
    packed, split = "blocks.0.mlp.fc1.weight" in state, "blocks.0.mlp.fc1_g.weight" in state
    swiglu = split or (packed and state["blocks.0.mlp.fc2.weight"].shape[1] * 2 == state["blocks.0.mlp.fc1.weight"].shape[0])
    hidden = state["blocks.0.mlp.fc2.weight"].shape[1]  # the MLP's inner width (a SwiGLU's after its gate)
    if not swiglu and hidden % dim:
        raise KDError(f"{where}.arch: this timm ViT's MLP width {hidden} is not a whole multiple of its width {dim}, "
                      "which kdstyles does not map yet")
    config = {"hidden_size": dim, "num_hidden_layers": blocks, "num_attention_heads": heads,
              "mlp_ratio": max(1, round(hidden * 1.5 / dim)) if swiglu else hidden // dim, "use_swiglu_ffn": swiglu, "patch_size": patch,
              "image_size": side * patch, "layerscale_value": 1.0, "qkv_bias": "blocks.0.attn.qkv.bias" in state}
    if registers:
        config["num_register_tokens"] = registers
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": torch.zeros(1, dim),
           "embeddings.position_embeddings": pos,
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    if registers:
        out["embeddings.register_tokens"] = reg
    for i in range(blocks):
        b, o = f"blocks.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            fused = state.get(f"{b}attn.qkv.{part}")
            if fused is not None:  # timm's qkv: query, key and value stacked in that order
                for name, piece in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, 0), strict=True):
                    out[f"{o}attention.{name}.{part}"] = piece
            for src, dst in (("norm1", "norm1"), ("norm2", "norm2"), ("attn.proj", "attention.o_proj")):
                out[f"{o}{dst}.{part}"] = state[f"{b}{src}.{part}"]
            if not swiglu:
                out[f"{o}mlp.fc1.{part}"], out[f"{o}mlp.fc2.{part}"] = state[f"{b}mlp.fc1.{part}"], state[f"{b}mlp.fc2.{part}"]
                continue
            # SwiGLU: silu(gate) * up. Packed (timm's SwiGLUPacked): fc1 holds the gate, then the up projection
            gate, up = ((state[f"{b}mlp.fc1_g.{part}"], state[f"{b}mlp.fc1_x.{part}"]) if split
                        else state[f"{b}mlp.fc1.{part}"].chunk(2, 0))
            out[f"{o}mlp.gate_proj.{part}"], out[f"{o}mlp.up_proj.{part}"] = gate, up
            out[f"{o}mlp.down_proj.{part}"] = state[f"{b}mlp.fc2.{part}"]
        for k in (1, 2):
            out[f"{o}layer_scale{k}.lambda1"] = state.get(f"{b}ls{k}.gamma", torch.ones(dim))
    return config, out


def load_timm(folder: Path, where: str) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint folder in timm's layout (config.json with ``architecture``, and its weights)
    as a DINOv2 module of transformers (:func:`timm_to_dinov2`), and its input contract (timm's
    ``pretrained_cfg``: mean, std, input size)."""
    transformers = _transformers()
    found = _timm_config(folder)
    name, args = found["architecture"], found.get("model_args") or {}
    size_word = next((w for w in TIMM_HEADS if f"_{w}_" in f"_{name}_"), None)
    heads = int(args.get("num_heads") or (TIMM_HEADS[size_word] if size_word else 0))
    if not name.startswith("vit_") or not heads:
        raise KDError(f"{where}.arch: timm architecture '{name}' is not a ViT kdstyles knows the heads of; give "
                      "model_args.num_heads in its config.json")
    pre = found.get("pretrained_cfg") or {}
    given = (pre.get("input_size") or [None])[-1] or args.get("img_size")
    weights = _timm_weights(folder, where)
    patch = weights["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in weights else 0
    side = int(given) // patch if given and patch and not int(given) % patch else None
    config, state = timm_to_dinov2(weights, heads, where, side)
    if config.get("num_register_tokens"):
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**config))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**config))
    if config["use_swiglu_ffn"]:
        _swiglu_width(model, state["encoder.layer.0.mlp.down_proj.weight"].shape[1])
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape that does not fit
        missing, unexpected = [str(exc).splitlines()[-1].strip()[:120]], []
    if missing or unexpected:
        raise KDError(f"{where}.arch: timm checkpoint '{folder}' does not fit a ViT of its own shapes (missing "
                      f"{(missing or ['-'])[0]}, unexpected {(unexpected or ['-'])[0]})")
    mean, std = tuple(pre.get("mean", IMAGENET[0])), tuple(pre.get("std", IMAGENET[1]))
    size = int((pre.get("input_size") or [3, config["image_size"]])[-1])
    contract = {"size": size, "patch": config["patch_size"], "mean": mean, "std": std, "hidden": config["hidden_size"],
                "blocks": config["num_hidden_layers"], "registers": config.get("num_register_tokens", 0),
                "name": folder.name}
    return model, contract


def _swiglu_width(model: nn.Module, hidden: int) -> None:
    """transformers sizes a SwiGLU from an integer mlp_ratio (two thirds of it, rounded up to a
    multiple of 8), which may miss a checkpoint's width: its projections are made that wide."""
    for layer in model.encoder.layer:
        mlp, dim = layer.mlp, layer.mlp.gate_proj.in_features
        if mlp.gate_proj.out_features != hidden:
            mlp.gate_proj, mlp.up_proj, mlp.down_proj = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)


def _cached_folder(ref: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, revision=revision, local_files_only=True))
    except Exception:  # not in the cache: the model loaded from elsewhere, ImageNet statistics then
        return None


class HFTeacher(nn.Module):
    """A frozen vision transformer with a linear head for this run's classes (see the module
    docstring): on the class-token embedding, or, ``dense`` (segmentation), on every patch
    token (a 1x1 convolution on the last block's map), upsampled to the input's size.
    ``set_inputs`` tells it how the run normalises its images."""

    def __init__(self, backbone: nn.Module, contract: dict[str, Any], num_classes: int, dense: bool = False):
        super().__init__()
        self.backbone = backbone
        self.contract = contract
        self.dense = dense
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(contract["blocks"]))  # taps: blocks.K
        self.embedding = nn.Identity()  # tap: embedding
        self.head = nn.Conv2d(contract["hidden"], num_classes, 1) if dense else nn.Linear(contract["hidden"], num_classes)
        self.register_buffer("own_mean", torch.tensor(contract["mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("own_std", torch.tensor(contract["std"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("run_mean", torch.tensor(IMAGENET[0]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("run_std", torch.tensor(IMAGENET[1]).view(1, -1, 1, 1), persistent=False)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self._fingerprint: torch.Tensor | None = None
        self._omitted: str | None = None  # where a loaded checkpoint left the backbone out (its key prefix)
        self.register_state_dict_post_hook(_without_backbone)
        self._register_load_state_dict_pre_hook(self._check_backbone, with_module=False)
        self.register_load_state_dict_post_hook(_backbone_not_missing)

    def fingerprint(self) -> torch.Tensor:
        """The SHA-256 of the frozen backbone's weights (32 bytes), computed once."""
        if self._fingerprint is None:
            from ..store.checkpoints import digest_of

            digest = digest_of(self.backbone.state_dict()).digest()
            self._fingerprint = torch.tensor(list(digest), dtype=torch.uint8)
        return self._fingerprint

    def _check_backbone(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        """Loading a checkpoint written without the backbone (its fingerprint instead): the
        backbone loaded from the model's own files must be the one the head was fitted on."""
        found = state_dict.pop(prefix + FINGERPRINT, None)
        self._omitted = prefix + "backbone." if found is not None else None
        if found is not None and not torch.equal(found.cpu(), self.fingerprint()):
            raise KDError(f"the teacher's checkpoint holds a head fitted on other weights of {self.contract['name']} "
                          "than those loaded now (another revision of the model?); give the revision it was fitted "
                          "on (arch hf:ID@REVISION)")

    @property
    def default_map_tap(self) -> str:
        """What a features edge taps when it names nothing: the last block's patch tokens."""
        return f"blocks.{len(self.blocks) - 1}"

    default_embedding_tap = "embedding"  # what an embedding edge taps when it names nothing: the class token

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

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The class-token embedding (B, D) and the last block's patch tokens as a map (B, D, h, w);
        each block's map passes through its tap ``blocks.K``."""
        out = self.backbone(pixel_values=self.prepare(x), output_hidden_states=True)
        hidden = list(out.hidden_states[1:])
        last = out.last_hidden_state
        hidden[-1] = last  # the last block's tokens after the final layer norm
        skip = 1 + self.contract["registers"]
        for tap, tokens in zip(self.blocks, hidden, strict=True):
            patches = tokens[:, skip:]
            side = int(math.isqrt(patches.shape[1]))
            grid = tap(patches.transpose(1, 2).reshape(len(patches), -1, side, side))
        return self.embedding(last[:, 0]), grid

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the probe fits the head on: the embedding (B, D), or dense the patch map (B, D, h, w)."""
        embedding, grid = self.encode(x)
        return grid if self.dense else embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        if self.dense:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


FINGERPRINT = "backbone_fingerprint"  # what checkpoints keep of the frozen backbone: its weights' SHA-256


def _without_backbone(module: HFTeacher, state_dict, prefix, local_metadata) -> None:
    """Checkpoints (best, last, a teacher's) keep the head and the backbone's fingerprint, not its
    weights, which the model's own files give again (a ViT-L would add 1.2 GB to every epoch's)."""
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.")]:
        del state_dict[key]
    state_dict[prefix + FINGERPRINT] = module.fingerprint()


def _backbone_not_missing(module: HFTeacher, incompatible) -> None:
    """A checkpoint written without the backbone leaves it as loaded, not missing."""
    if module._omitted:
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(module._omitted)]


def build_hf(arch: str, num_classes: int, where: str, dense: bool = False) -> HFTeacher:
    backbone, contract = load_backbone(arch, where)
    return HFTeacher(backbone.eval(), contract, num_classes, dense)
