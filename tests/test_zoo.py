"""Networks by name (kdstyles.models.zoo): the standard ResNet stem and its cost, default taps
that stay maps at every input size, and FLOPs per image."""

import pytest
import torch

from kdstyles import build_cohort, load_config
from kdstyles.models.zoo import build_network, default_tap, flops_per_image


def test_resnet18_at_224_costs_what_torchvisions_does():
    net = build_network("resnet18", 3, 1000, 224)
    assert net.conv1.kernel_size == (7, 7) and net.conv1.stride == (2, 2) and not net.no_max_pool
    assert all(m[0].bias is None for m in (net.layer2[0].downsample, net.layer3[0].downsample))
    macs = flops_per_image(net, torch.zeros(1, 3, 224, 224)) / 2
    assert macs == pytest.approx(1.82e9, rel=0.02)  # torchvision's resnet18: 1.82 GMACs
    assert sum(p.numel() for p in net.parameters()) == 11_689_512  # torchvision's count, exactly


@pytest.mark.parametrize("size, stem, tap", [(224, "auto", "layer4.1.conv2"), (64, "auto", "layer3.1.conv2"),
                                             (32, "auto", "layer2.1.conv2"), (16, "auto", "layer3.1.conv2")])
def test_default_tap_is_the_deepest_map_of_at_least_4x4(size, stem, tap):
    net = build_network("resnet18", 3, 4, size, stem=stem)
    assert default_tap(net, torch.zeros(1, 3, size, size)) == tap


def test_a_network_says_where_its_maps_are():
    """A builder may name the modules a features edge chooses from (map_tap_modules: a ResNet's
    stages) or the one it taps (default_map_tap); without either, the last convolution of a map
    of at least 4x4, a 1x1 one included."""
    import torch.nn as nn

    net = nn.Sequential()
    net.add_module("stage", nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("mix", nn.Conv2d(4, 4, 1))
    x = torch.zeros(1, 3, 8, 8)
    assert default_tap(net, x) == "mix"
    net.map_tap_modules = ("stage",)
    assert default_tap(net, x) == "stage"
    net.default_map_tap = "mix"
    assert default_tap(net, x) == "mix"
    assert build_network("resnet10", 3, 2, 32).map_tap_modules == ("layer",)


@pytest.mark.parametrize("arch, dims, size, want", [
    ("unet", 2, 64, (8, 8)), ("unet", 2, 32, (4, 4)), ("unet", 2, 16, (4, 4)), ("unet", 3, 24, (6, 6, 6)),
    ("unet", 3, 8, (4, 4, 4)), ("flexunet-resnet10", 2, 64, (4, 4))])
def test_encoder_decoder_tap_is_the_bottleneck_unless_it_is_smaller_than_4(arch, dims, size, want):
    """A U-Net with three halvings: the bottleneck (size / 8) where it is 4 or more a side, else
    the deepest encoder convolution that is (size / 4 or size / 2); a ResNet encoder's (five
    halvings): its last 3x3 convolution at 4x4, not the 1x1 shortcut projection run after it."""
    from kdstyles.models.zoo import bottleneck_tap, conv_output_sizes

    net = build_network(arch, 1 if arch == "unet" else 3, 2, size, widen=0.25, spatial_dims=dims)
    sample = torch.zeros(1, 1 if arch == "unet" else 3, *(size,) * dims)
    seen = conv_output_sizes(net, sample)
    tap = bottleneck_tap(net, sample)
    assert max(dict((n, c) for n, c, _ in seen)[tap].kernel_size) == 3
    order = [name for name, _, _ in seen]
    assert dict((n, s) for n, _, s in seen)[tap] == want
    smallest = min(seen, key=lambda c: torch.Size(c[2]).numel())[2]
    first_bottleneck = next(i for i, (_, _, s) in enumerate(seen) if s == smallest)
    if min(smallest) >= 4:  # the bottleneck's last convolution, as before
        assert tap == [n for n, _, s in seen if s == smallest][-1]
    else:  # in the encoder, before the bottleneck, and the deepest convolution of its size there
        assert order.index(tap) < first_bottleneck
        assert all(s != want or max(c.kernel_size) == 1 for _, c, s in seen[order.index(tap) + 1:first_bottleneck])
    if arch != "unet":
        assert tap == "encoder.layer3.0.conv2" and order[order.index(tap) + 1] == "encoder.layer3.0.downsample.0"


def test_maps_smaller_than_4x4_are_warned_about():
    cfg = load_config(None, ["routing.preset=fitnet", "data.image_size=64", "networks.teacher.widen=0.25",
                             "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125",
                             "networks.teacher.tap=layer4.1.conv2"])
    cohort = build_cohort(cfg, num_classes=4, channels=3, image_size=64)
    assert len(cohort.warnings) == 2  # both edges come from the teacher's 2x2 maps
    assert "teacher's tap layer4.1.conv2 gives 2x2 maps" in cohort.warnings[0]
    assert "networks.teacher.tap" in cohort.warnings[0] and "data.image_size" in cohort.warnings[0]
    default = build_cohort(load_config(None, ["routing.preset=fitnet", "data.image_size=64"]), 4, 3, 64)
    assert default.warnings == []


def test_mobilenet_v2_has_torchvisions_layout_and_cost():
    net = build_network("mobilenet_v2", 3, 1000, 224)
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 3_504_872  # torchvision's count, exactly
    assert flops_per_image(net, torch.zeros(1, 3, 224, 224)) / 2 == pytest.approx(0.30e9, rel=0.02)
    facts = {"features.0.0.weight": (32, 3, 3, 3), "features.1.conv.0.0.weight": (32, 1, 3, 3),
             "features.1.conv.1.weight": (16, 32, 1, 1), "features.2.conv.0.0.weight": (96, 16, 1, 1),
             "features.17.conv.2.weight": (320, 960, 1, 1), "features.18.0.weight": (1280, 320, 1, 1),
             "classifier.1.weight": (1000, 1280)}
    assert {k: tuple(sd[k].shape) for k in facts} == facts and len(sd) == 314
    assert default_tap(net, torch.zeros(1, 3, 224, 224)) == "features.18.0"  # 1280 x 7 x 7, as the authors tap


def test_a_vit_student_learns_beside_a_cnn_and_exports(tmp_path):
    """vit-tiny: an 8x8 patch grid at any size, whole heads at any width; its last block's patch
    tokens are the map features edges tap (both ways, against a CNN), its class token the
    embedding; it trains in a cohort and exports to ONNX with the same outputs."""
    import torch

    from conftest import tiny
    from kdstyles import Experiment
    from kdstyles.deploy.export import export_run
    from kdstyles.models.zoo import build_network, default_embedding_tap, default_tap

    for side, grid in ((28, 9), (64, 8)):
        net = build_network("vit-tiny", 1, 5, side, widen=0.25)
        assert net.pos_embed.shape == (1, 1 + grid * grid, 48) and net(torch.rand(2, 1, side, side)).shape == (2, 5)
        assert default_tap(net, torch.rand(2, 1, side, side)) == "blocks.3" and default_embedding_tap(net) == "fc:in"
    assert build_network("vit-tiny", 3, 2, 32, widen=0.3).fc.in_features % 3 == 0
    exp = Experiment(None, overrides=tiny(tmp_path, "networks.students.s2.arch=vit-tiny", "routing.preset=diverse"),
                     quiet=True)
    exp.fit()
    taps = {tuple(t[:3]): t[3:] for t in exp.run_info().taps}
    assert taps[("teacher", "s2", "features")][1] == "blocks.3" and taps[("s2", "s1", "features")][0] == "blocks.3"
    side = export_run(exp.run_dir, "s2", "onnx")
    assert side["verification"]["max_abs_diff"] < 1e-4
