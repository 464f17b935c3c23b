"""Networks by name: MONAI's ResNets, DenseNets, EfficientNets and encoder-decoders, in 2D or
3D (``spatial_dims``), and the project's own MobileNetV2 (models/mobilenet.py, 2D only).

``stem``: ``imagenet`` is torchvision's and timm's ResNet stem, a 7x7 convolution with
stride 2 and a max pool (so a kdstyles ResNet18 at 224 px costs what theirs does, about
1.8 GMACs), with bias-free downsample convolutions; ``small`` uses a 3x3/stride-1 stem
without max pool (for 28-64 px images, CIFAR-style); ``auto`` picks ``small`` for inputs
below 32 px (MedMNIST's 28 px) and ``imagenet`` from 32 px up.

Default feature taps (docs/method.md, "The idea"): the last 3x3 convolution of a ResNet (other
networks: the last convolution) whose output map is at least 4x4 at the run's input size:
at 224 px that is the last stage, as the authors tap (ResNet18 ``layer4.1.conv2``, ResNet50
``layer4.2.conv2``, EfficientNet's final 1x1 ``_conv_head``); on smaller images an earlier
stage, so a features edge compares maps, not vectors. Raw conv outputs, before BN and
activation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
from monai.networks import nets

from ..common.dims import dims as space
from ..errors import KDError, check_new_name, unknown

SMALL_STEM_BELOW = 32


CONVS = (nn.Conv2d, nn.Conv3d)  # what a tap may record by default, in 2D and 3D networks


def _resnet(fn: Callable, in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool,
            dims: int = 2) -> nn.Module:
    kw = dict(spatial_dims=dims, n_input_channels=in_ch, num_classes=n_cls, widen_factor=widen, bias_downsample=False)
    if small:
        kw.update(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)
    else:
        kw.update(conv1_t_size=7, conv1_t_stride=2)
    model = fn(**kw)
    model.map_tap_modules = ("layer",)  # its stages: a features edge taps their 3x3 convolutions by default
    return model


def _densenet(cls: type, in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool,
              dims: int = 2) -> nn.Module:
    model = cls(spatial_dims=dims, in_channels=in_ch, out_channels=n_cls)
    if small:
        old = model.features.conv0
        model.features.conv0 = space(dims).conv(in_ch, old.out_channels, 3, stride=1, padding=1, bias=False)
        model.features.pool0 = nn.Identity()
    return model


def _efficientnet(name: str, in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool,
                  dims: int = 2) -> nn.Module:
    model = nets.EfficientNetBN(name, pretrained=False, spatial_dims=dims, in_channels=in_ch, num_classes=n_cls)
    if small:
        model._conv_stem.stride = (1,) * dims
    return model


def _mobilenet(in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool, dims: int = 2) -> nn.Module:
    from .mobilenet import MobileNetV2

    return MobileNetV2(in_ch, n_cls, widen, small)


def _vit(name: str, in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool, dims: int = 2,
         image_size: int = 64) -> nn.Module:
    from .vit import build_vit

    return build_vit(name, in_ch, n_cls, image_size, widen)


def _unet(in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool, dims: int = 2) -> nn.Module:
    channels = tuple(max(4, int(round(c * widen))) for c in (16, 32, 64, 128))
    return nets.UNet(dims, in_ch, n_cls, channels=channels, strides=(2, 2, 2), num_res_units=1, norm="batch")


def _basicunet(in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool, dims: int = 2) -> nn.Module:
    features = tuple(max(4, int(round(c * widen))) for c in (32, 32, 64, 128, 256, 32))
    return nets.BasicUNet(dims, in_ch, n_cls, features=features, norm="batch")


def _flexunet(backbone: str, in_ch: int, n_cls: int, widen: float, small: bool, pretrained: bool,
              dims: int = 2) -> nn.Module:
    decoder = tuple(max(4, int(round(c * widen))) for c in (256, 128, 64, 32, 16))
    try:
        return nets.FlexibleUNet(in_ch, n_cls, backbone, pretrained=pretrained, decoder_channels=decoder,
                                 spatial_dims=dims)
    except (OSError, ValueError, RuntimeError) as exc:
        if not pretrained:
            raise
        raise KDError(f"pretrained flexunet-{backbone}: the encoder weights could not be loaded "
                      f"({type(exc).__name__}); set pretrained: false") from None


@dataclass(frozen=True)
class Arch:
    """A network by name: how to build it, and what it takes. ``build(in_channels, num_classes,
    widen, small, pretrained, dims=2)`` returns the module (``small``: the 3x3/stride-1 stem for
    small inputs; ``pretrained``: load an ImageNet encoder itself, for ``pretrained="encoder"``).
    The fields are what the config may ask of it: ``widens`` (a width multiplier),
    ``spatial_dims`` (what it builds: 2D networks, and 3D ones with ``dims=3``), ``pretrained`` (``"weights"``: ImageNet weights or a file,
    loaded by name in models/pretrained.py; ``"encoder"``: the builder loads an ImageNet
    encoder; None: none), ``dense`` (an encoder-decoder: a map at the input's size, for
    segmentation and detection; otherwise a classifier's logits), ``stem_keeps_shapes`` (its
    small stem changes a stride, not a weight's shape, so pretrained weights still fit).

    What a network is tapped at by default it may say itself, as attributes the builder sets on
    the module: ``default_map_tap`` (a module path for features edges), ``map_tap_modules``
    (prefixes of the module paths whose spatial convolutions a features edge chooses from: a
    ResNet's ``layer``), ``default_embedding_tap`` (for relations and embedding edges)."""

    build: Callable[..., nn.Module]
    widens: bool = False
    spatial_dims: tuple[int, ...] = (2, 3)
    pretrained: str | None = None
    dense: bool = False
    stem_keeps_shapes: bool = False
    sized: bool = False  # built for the input size: ``build(..., image_size=side)`` (a ViT's patch grid)


ARCHS: dict[str, Arch] = {
    **{f"resnet{d}": Arch(partial(_resnet, getattr(nets, f"resnet{d}")), widens=True, pretrained="weights")
       for d in (10, 18, 34, 50, 101, 152)},
    **{f"densenet{d}": Arch(partial(_densenet, getattr(nets, f"DenseNet{d}")), pretrained="weights")
       for d in (121, 169, 201)},
    **{f"efficientnet-b{i}": Arch(partial(_efficientnet, f"efficientnet-b{i}"), pretrained="weights",
                                  stem_keeps_shapes=True) for i in range(8)},
    "mobilenet_v2": Arch(_mobilenet, widens=True, spatial_dims=(2,), pretrained="weights"),
    **{name: Arch(partial(_vit, name), widens=True, spatial_dims=(2,), sized=True) for name in ("vit-tiny", "vit-small")},
    "unet": Arch(_unet, widens=True, dense=True),
    "basicunet": Arch(_basicunet, widens=True, dense=True),
    **{f"flexunet-{b}": Arch(partial(_flexunet, b), widens=True, dense=True, pretrained="encoder")
       for b in (*(f"resnet{d}" for d in (10, 18, 34, 50)), *(f"efficientnet-b{i}" for i in range(8)))},
}


BUILT_IN = frozenset(ARCHS)
PRETRAINED_DIMS = (2,)  # where ImageNet weights (and weight files) exist: 2D networks


def register_arch(name: str, arch: Arch) -> Arch:
    """Make ``arch`` a network name a config can give (``networks.*.arch``; a plugin's call,
    kdstyles.plugins). The built-in names are kept; a plugin registering a name again replaces
    its own."""
    if not isinstance(arch, Arch):
        raise KDError(f"register_arch('{name}'): give an Arch(build, ...) record, not {type(arch).__name__}")
    check_new_name("arch", name, BUILT_IN | {"custom"})
    ARCHS[name] = arch
    return arch


def archs_that(what: Callable[[Arch], bool]) -> str:
    """The names of the archs with a trait, a numbered family in one item (resnet10/18/34)."""
    families: dict[str, list[str]] = {}
    for name, arch in ARCHS.items():
        if what(arch):
            stem, number = re.fullmatch(r"(.*?)(\d*)", name).groups()
            families.setdefault(stem, []).append(number)
    return ", ".join(stem + "/".join(n) for stem, n in families.items())


def unknown_arch(name: str) -> str:
    """The message for an arch name no network has, with the nearest names."""
    return unknown("arch", name, [*ARCHS, "custom"])


def build_network(arch: str, in_channels: int, num_classes: int, image_size: int, widen: float = 1.0,
                  stem: str = "auto", pretrained: bool | str = False, where: str = "networks",
                  spatial_dims: int = 2, dense: bool = False) -> nn.Module:
    """Build a named 2D or 3D network; ``pretrained``: False, "imagenet" (True) or a weights file
    (2D only). What an arch takes is its :class:`Arch` record's to say; ``hf:...``: a vision
    transformer from the Hugging Face Hub with a head for ``num_classes`` (``dense``: per patch, upsampled to the
    image; :mod:`kdstyles.models.hf`)."""
    from .hf import SPATIAL_DIMS as HF_DIMS, build_hf, is_hf

    from .published import check_fits, load_published, names_published, read_published

    kind = space(spatial_dims)
    if names_published(pretrained) and not is_hf(arch):  # a network kdstyles published: built as it was, then loaded
        published = read_published(pretrained, f"{where}.pretrained")
        check_fits(published, arch, widen, stem, where)
        model = build_network(arch, in_channels, num_classes, image_size, widen, stem, False, where, spatial_dims,
                              dense)
        load_published(model, published, f"{where}.pretrained")
        return model
    if is_hf(arch):
        if spatial_dims not in HF_DIMS:
            raise KDError(f"{where}.arch: {arch} takes 2D images; for {kind.unit} use "
                          f"{archs_that(lambda o: spatial_dims in o.spatial_dims)}")
        return build_hf(arch, num_classes, where, dense)
    if arch not in ARCHS:
        raise KDError(f"{where}.arch: {unknown_arch(arch)}")
    a = ARCHS[arch]
    small = stem == "small" or (stem == "auto" and image_size < SMALL_STEM_BELOW)
    if spatial_dims not in a.spatial_dims:
        raise KDError(f"{where}.arch: {arch} is {'/'.join(f'{n}D' for n in a.spatial_dims)} only; for {kind.unit} "
                      f"use {archs_that(lambda o: spatial_dims in o.spatial_dims)}")
    if spatial_dims not in PRETRAINED_DIMS:
        if pretrained:
            raise KDError(f"{where}.pretrained: ImageNet weights are 2D; a {spatial_dims}D network starts from "
                          "scratch (set pretrained: false)")
        return a.build(in_channels, num_classes, widen, small, False, dims=spatial_dims)
    if widen != 1.0 and not a.widens:
        raise KDError(f"{where}.widen: {arch} takes no width multiplier (those that do: "
                      f"{archs_that(lambda o: o.widens)}); set {where}.widen=1")
    source = "imagenet" if pretrained is True else (pretrained or None)
    if source and a.pretrained == "weights":  # full width, weights loaded below
        if (stem == "small" and not a.stem_keeps_shapes) or widen != 1.0:
            raise KDError(f"{where}: pretrained weights fit the imagenet stem at widen 1 (stem is {stem}, widen "
                          f"{widen:g}); set {where}.stem=auto and {where}.widen=1")
        from .pretrained import load_pretrained

        model = a.build(in_channels, num_classes, widen, small and a.stem_keeps_shapes, False)
        load_pretrained(model, arch, source, in_channels, where)
        return model
    if source and not (source == "imagenet" and a.pretrained == "encoder"):
        raise KDError(f"{where}.pretrained: {arch} takes no pretrained weights ("
                      f"{archs_that(lambda o: o.pretrained == 'weights')} take 'imagenet' or a file; "
                      f"{archs_that(lambda o: o.pretrained == 'encoder')} 'imagenet'); set pretrained: false")
    return a.build(in_channels, num_classes, widen, small, bool(source),
                   **({"image_size": image_size} if a.sized else {}))


MIN_MAP = 4  # a tapped map smaller than MIN_MAP x MIN_MAP is (nearly) a vector


def conv_output_sizes(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Every Conv2d/Conv3d in forward order with its output's spatial size for ``sample``."""
    seen: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: seen.append((name, mod, tuple(o.shape[2:]))))
             for name, m in model.named_modules() if isinstance(m, CONVS)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return seen


def default_tap(model: nn.Module, sample: torch.Tensor) -> str:
    """The module path tapped when a features edge names none (see the module docstring; a
    network that names its own, as a Hugging Face teacher does its last block, gives that)."""
    own = _own_tap(model, "default_map_tap")
    if own:
        return own
    convs = conv_output_sizes(model, sample)
    if not convs:
        raise KDError(f"{type(model).__name__} has no convolution to tap by default; set 'tap' to a module path")
    within = getattr(model, "map_tap_modules", None)  # where a network says its maps are (a ResNet: its stages)
    if within:
        convs = [c for c in convs if c[0].startswith(tuple(within)) and max(c[1].kernel_size) > 1] or convs
    large = [name for name, _, hw in convs if min(hw) >= MIN_MAP]
    return large[-1] if large else convs[-1][0]


def _own_tap(model: nn.Module, kind: str) -> str | None:
    """The module path a network names itself for a kind of knowledge (``default_map_tap``,
    ``default_embedding_tap``), if it does."""
    own = getattr(model, kind, None)
    return own if isinstance(own, str) else None


def bottleneck_tap(model: nn.Module, sample: torch.Tensor) -> str:
    """An encoder-decoder's bottleneck: the deepest convolution with the smallest output map
    (raw conv output), found by one forward of ``sample``. Where that map is smaller than
    MIN_MAP on a side (small images or volumes), the deepest encoder convolution whose map is
    still MIN_MAP or more on every side (a spatial one, not a 1x1 shortcut projection), as
    :func:`default_tap` does for classifiers. A network that names its own gives that."""
    own = _own_tap(model, "default_map_tap")
    if own:
        return own
    seen = conv_output_sizes(model, sample)
    if not seen:
        raise KDError(f"{type(model).__name__} has no convolution to tap by default; set 'tap' to a module path")
    smallest = min(math.prod(size) for _, _, size in seen)
    first = next(i for i, (_, _, size) in enumerate(seen) if math.prod(size) == smallest)
    bottleneck = [name for name, _, size in seen if math.prod(size) == smallest][-1]
    if min(seen[first][2]) >= MIN_MAP:
        return bottleneck
    encoder = [(name, conv) for name, conv, size in seen[:first] if min(size) >= MIN_MAP]
    spatial = [name for name, conv in encoder if max(conv.kernel_size) > 1] or [name for name, _ in encoder]
    return spatial[-1] if spatial else bottleneck


def default_embedding_tap(model: nn.Module) -> str:
    """The penultimate embedding: the input of the network's last Linear layer (``fc:in``), or
    the path a network names itself (a Hugging Face teacher: ``embedding``)."""
    own = _own_tap(model, "default_embedding_tap")
    if own:
        return own
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise KDError(f"{type(model).__name__} has no Linear classifier; set 'embedding_tap' to a module path "
                      "(append ':in' to record a module's input)")
    return f"{linears[-1]}:in"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module, sample: torch.Tensor) -> int:
    """Floating-point operations of one forward of one image (2 per multiply-accumulate)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    was = model.training
    model.eval()
    try:
        with counter, torch.inference_mode():
            model(sample[:1])
    finally:
        model.train(was)
    return int(counter.get_total_flops())
