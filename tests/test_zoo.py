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
