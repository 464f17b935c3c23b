"""Pretrained weights (kdstyles.models.pretrained) from files the tests write themselves: a
state dict in torchvision's (and timm's) ResNet18 naming loads strictly, as safetensors and
as .pth; 1-channel inputs get the summed RGB filters; bad files are one line; offline, the
hub path says what to download and where. Nothing here touches a network."""

import re

import pytest
import torch
from safetensors.torch import save_file

from kdstyles import Experiment, KDError, load_config
from kdstyles.models.zoo import build_network


def torchvision_resnet18_layout(classes=1000) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of torchvision's resnet18 state dict (BasicBlock x [2, 2, 2, 2];
    timm's resnet18 uses the same names): facts about that layout, written out here."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    keys = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    inplanes = 64
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            if block == 0 and stage > 1:
                keys[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes))
            inplanes = planes
    keys["fc.weight"], keys["fc.bias"] = (classes, 512), (classes,)
    return keys


def weights(seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
          for k, s in torchvision_resnet18_layout().items()}
    sd.update(extra)
    return sd


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_torchvision_layout_loads_strictly_but_the_classifier(tmp_path, suffix):
    sd = weights()
    path = tmp_path / f"r18{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": sd}, path)
    net = build_network("resnet18", 3, 5, 224, pretrained=str(path), where="networks.teacher")
    own = net.state_dict()
    for key in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(own[key], sd[key]), key
    assert own["fc.weight"].shape == (5, 512)  # the classifier is new, for the run's 5 classes


def test_one_channel_input_sums_the_rgb_filters(tmp_path):
    sd = weights()
    save_file(sd, str(tmp_path / "r18.safetensors"))
    net = build_network("resnet18", 1, 2, 64, pretrained=str(tmp_path / "r18.safetensors"))
    assert torch.allclose(net.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("layer2.1.conv1.weight"), "1 missing key(s), e.g. layer2.1.conv1.weight"),
    (lambda sd: sd.update({"layer5.0.conv1.weight": torch.zeros(1)}), "unexpected key(s), e.g. layer5.0.conv1.weight"),
    (lambda sd: sd.update({"layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}),
     "shape of layer1.0.conv1.weight: (64, 64, 1, 1) in the file, (64, 64, 3, 3) in resnet18"),
])
def test_a_file_that_does_not_fit_is_one_line(tmp_path, change, message):
    sd = weights()
    change(sd)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(KDError) as err:
        build_network("resnet18", 3, 2, 64, pretrained=str(tmp_path / "w.safetensors"), where="networks.s1")
    assert str(err.value).startswith(f"networks.s1.pretrained: '{tmp_path / 'w.safetensors'}' does not fit resnet18")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files_and_options_are_one_line(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(KDError, match="is not a readable safetensors file"):
        build_network("resnet18", 3, 2, 64, pretrained=str(tmp_path / "junk.safetensors"))
    with pytest.raises(KDError, match="does not exist"):
        build_network("resnet18", 3, 2, 64, pretrained=str(tmp_path / "gone.pth"))
    with pytest.raises(KDError, match="fit the imagenet stem at widen 1"):
        build_network("resnet18", 3, 2, 64, widen=0.5, pretrained="imagenet")
    with pytest.raises(KDError, match="no hub repository of ImageNet weights is known for resnet10"):
        build_network("resnet10", 3, 2, 64, pretrained="imagenet")
    with pytest.raises(KDError, match="networks.pretrained: unet takes no pretrained weights"):
        build_network("unet", 1, 2, 64, pretrained="imagenet")
    with pytest.raises(KDError, match="networks.students.s1.pretrained: 'weights.bin' is neither imagenet"):
        load_config(None, ["networks.students.s1.pretrained=weights.bin"])


@pytest.mark.parametrize("arch, repo", [("resnet50", "timm/resnet50.tv_in1k"), ("densenet169", "timm/densenet169.tv_in1k"),
                                        ("efficientnet-b3", "timm/tf_efficientnet_b3.aa_in1k"),
                                        ("mobilenet_v2", "timm/mobilenetv2_100.ra_in1k")])
def test_offline_hub_names_repository_file_and_cache(tmp_path, monkeypatch, arch, repo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants as constants

    importlib.reload(constants)  # pick up the cache folder set above
    try:
        with pytest.raises(KDError) as err:
            build_network(arch, 3, 2, 224, pretrained=True, where="networks.teacher")
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
    msg = str(err.value)
    assert f"ImageNet weights for {arch} are 'model.safetensors' of the Hugging Face repository '{repo}'" in msg
    assert str(tmp_path / "hf") in msg and f"hf download {repo} model.safetensors" in msg
    assert "\n" not in msg


def test_pretrained_networks_switch_normalisation_to_imagenet(tmp_path):
    save_file(weights(), str(tmp_path / "r18.safetensors"))
    plain = load_config(None, [])
    assert plain.normalisation == "dataset"
    cfg = load_config(None, ["networks.teacher.widen=1", f"networks.teacher.pretrained={tmp_path / 'r18.safetensors'}"])
    assert cfg.normalisation == "imagenet"
    assert load_config(None, ["networks.teacher.pretrained=imagenet", "networks.teacher.widen=1",
                              "data.normalize=dataset"]).normalisation == "dataset"


def test_mobilenet_v2_loads_a_torchvision_file_strictly(tmp_path):
    source = build_network("mobilenet_v2", 3, 1000, 224)  # torchvision's layout (see test_zoo)
    torch.nn.init.normal_(source.features[0][0].weight)
    torch.save(source.state_dict(), tmp_path / "mobilenet_v2.pth")
    net = build_network("mobilenet_v2", 1, 3, 224, pretrained=str(tmp_path / "mobilenet_v2.pth"))
    assert torch.allclose(net.features[0][0].weight, source.features[0][0].weight.sum(1, keepdim=True))
    assert torch.equal(net.features[18][0].weight, source.features[18][0].weight)
    assert net.classifier[1].weight.shape == (3, 1280)


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_densenet121_layout(old_names=False) -> dict[str, tuple[int, ...]]:
    """torchvision's densenet121 (growth 32, bottleneck 4x, blocks 6/12/24/16, 64 stem
    channels; timm's densenet121.tv_in1k has the same names). ``old_names``: the form of
    torchvision's original .pth, ``denselayerN.norm.1`` for ``denselayerN.norm1``."""
    sep = "." if old_names else ""
    keys = {"features.conv0.weight": (64, 3, 7, 7), **bn("features.norm0", 64)}
    channels = 64
    for b, layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            keys.update(bn(f"{p}.norm{sep}1", channels))
            keys[f"{p}.conv{sep}1.weight"] = (128, channels, 1, 1)
            keys.update(bn(f"{p}.norm{sep}2", 128))
            keys[f"{p}.conv{sep}2.weight"] = (32, 128, 3, 3)
            channels += 32
        if b < 4:
            keys.update(bn(f"features.transition{b}.norm", channels))
            keys[f"features.transition{b}.conv.weight"] = (channels // 2, channels, 1, 1)
            channels //= 2
    keys.update(bn("features.norm5", channels))
    keys["classifier.weight"], keys["classifier.bias"] = (1000, channels), (1000,)
    return keys


def timm_mobilenetv2_100_layout() -> dict[str, tuple[int, ...]]:
    """timm's mobilenetv2_100: conv_stem/bn1, blocks.S.j (a depthwise-separable block, then
    inverted residuals conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3), conv_head/bn2, classifier."""
    keys = {"conv_stem.weight": (32, 3, 3, 3), **bn("bn1", 32),
            "blocks.0.0.conv_dw.weight": (32, 1, 3, 3), **bn("blocks.0.0.bn1", 32),
            "blocks.0.0.conv_pw.weight": (16, 32, 1, 1), **bn("blocks.0.0.bn2", 16)}
    cin = 16
    for stage, (cout, repeats) in enumerate(((24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)), start=1):
        for j in range(repeats):
            p, hidden = f"blocks.{stage}.{j}", cin * 6
            keys.update({f"{p}.conv_pw.weight": (hidden, cin, 1, 1), **bn(f"{p}.bn1", hidden),
                         f"{p}.conv_dw.weight": (hidden, 1, 3, 3), **bn(f"{p}.bn2", hidden),
                         f"{p}.conv_pwl.weight": (cout, hidden, 1, 1), **bn(f"{p}.bn3", cout)})
            cin = cout
    keys.update({"conv_head.weight": (1280, 320, 1, 1), **bn("bn2", 1280), "classifier.weight": (1000, 1280),
                 "classifier.bias": (1000,)})
    return keys


def timm_tf_efficientnet_b0_layout() -> dict[str, tuple[int, ...]]:
    """timm's tf_efficientnet_b0 (the TensorFlow weights): stages of (expansion, kernel,
    channels, repeats), squeeze-excitation to a quarter of each block's input channels."""
    keys = {"conv_stem.weight": (32, 3, 3, 3), **bn("bn1", 32)}
    cin = 32
    stages = ((1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3), (6, 5, 112, 3), (6, 5, 192, 4), (6, 3, 320, 1))
    for s, (t, k, cout, repeats) in enumerate(stages):
        for j in range(repeats):
            p, mid, rd = f"blocks.{s}.{j}", cin * t, max(1, cin // 4)
            if t != 1:
                keys.update({f"{p}.conv_pw.weight": (mid, cin, 1, 1), **bn(f"{p}.bn1", mid)})
            dw_bn, out_bn = ("bn2", "bn3") if t != 1 else ("bn1", "bn2")
            keys.update({f"{p}.conv_dw.weight": (mid, 1, k, k), **bn(f"{p}.{dw_bn}", mid),
                         f"{p}.se.conv_reduce.weight": (rd, mid, 1, 1), f"{p}.se.conv_reduce.bias": (rd,),
                         f"{p}.se.conv_expand.weight": (mid, rd, 1, 1), f"{p}.se.conv_expand.bias": (mid,),
                         f"{p}.{'conv_pwl' if t != 1 else 'conv_pw'}.weight": (cout, mid, 1, 1),
                         **bn(f"{p}.{out_bn}", cout)})
            cin = cout
    keys.update({"conv_head.weight": (1280, 320, 1, 1), **bn("bn2", 1280), "classifier.weight": (1000, 1280),
                 "classifier.bias": (1000,)})
    return keys


def random_weights(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randint(0, 9, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
            for k, s in layout.items()}


@pytest.mark.parametrize("arch, layout, ours, theirs", [
    ("densenet121", torchvision_densenet121_layout(), "features.denseblock3.denselayer24.layers.conv2.weight",
     "features.denseblock3.denselayer24.conv2.weight"),
    ("densenet121", torchvision_densenet121_layout(old_names=True), "features.denseblock1.denselayer1.layers.norm1.bias",
     "features.denseblock1.denselayer1.norm.1.bias"),
    ("mobilenet_v2", timm_mobilenetv2_100_layout(), "features.17.conv.1.0.weight", "blocks.6.0.conv_dw.weight"),
    ("mobilenet_v2", timm_mobilenetv2_100_layout(), "features.1.conv.1.weight", "blocks.0.0.conv_pw.weight"),
    ("efficientnet-b0", timm_tf_efficientnet_b0_layout(), "_blocks.5.11._se_reduce.bias", "blocks.5.0.se.conv_reduce.bias"),
    ("efficientnet-b0", timm_tf_efficientnet_b0_layout(), "_blocks.0.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
])
def test_other_namings_translate_and_load_strictly(tmp_path, arch, layout, ours, theirs):
    sd = random_weights(layout)
    save_file(sd, str(tmp_path / "w.safetensors"))
    net = build_network(arch, 1, 4, 224, pretrained=str(tmp_path / "w.safetensors"), where="networks.teacher")
    own = net.state_dict()
    assert torch.equal(own[ours], sd[theirs])
    first = next(k for k in sd if k.endswith(("conv0.weight", "conv_stem.weight")))
    assert own[next(iter(own))].shape[1] == 1 and torch.allclose(own[next(iter(own))], sd[first].sum(1, keepdim=True))
    assert len(sd) == len(own)  # every tensor of the file has found its place, one for one


def test_efficientnet_pytorch_running_block_numbers_load(tmp_path):
    """efficientnet-pytorch (MONAI's own download) numbers blocks 0..15 over all stages."""
    source = build_network("efficientnet-b0", 3, 1000, 224)
    flat = {re.sub(r"^_blocks\.\d+\.", "_blocks.", k): v for k, v in source.state_dict().items()}
    assert "_blocks.15._project_conv.weight" in flat
    torch.save(flat, tmp_path / "efficientnet-b0.pth")
    net = build_network("efficientnet-b0", 3, 2, 224, pretrained=str(tmp_path / "efficientnet-b0.pth"))
    assert torch.equal(net._blocks[6][0]._project_conv.weight, source._blocks[6][0]._project_conv.weight)  # block 15


def test_a_foreign_layout_of_another_size_is_refused(tmp_path):
    save_file(random_weights(timm_tf_efficientnet_b0_layout()), str(tmp_path / "b0.safetensors"))
    with pytest.raises(KDError, match=r"does not fit efficientnet-b1 \([0-9]+ missing key\(s\), e.g. _blocks.0.1._depthwise_conv"):
        build_network("efficientnet-b1", 3, 2, 240, pretrained=str(tmp_path / "b0.safetensors"))


def test_an_unreachable_hub_fails_at_once_in_one_line(tmp_path, monkeypatch, caplog):
    """Without HF_HUB_OFFLINE, a machine whose network cannot resolve the hub's name gets the
    one line at once (no five retries, no retry lines)."""
    import importlib

    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    importlib.reload(constants)
    try:
        with pytest.raises(KDError) as err:
            build_network("resnet18", 3, 2, 224, pretrained=True, where="networks.s1")
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
    assert "the hub's host name does not resolve: no network" in str(err.value) and "\n" not in str(err.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_a_missing_weights_file_stops_a_run_before_its_data_is_read(tmp_path, monkeypatch):
    import kdstyles.api

    monkeypatch.setattr(kdstyles.api, "build_data", lambda *a, **k: pytest.fail("the data was read first"))
    exp = Experiment(None, overrides=["networks.students.s2.arch=resnet18", "networks.students.s2.widen=1",
                                      f"networks.students.s2.pretrained={tmp_path / 'gone.safetensors'}",
                                      f"output.dir={tmp_path}", "output.name=run"], quiet=True)
    with pytest.raises(KDError, match=r"networks.s2.pretrained: '.*gone.safetensors' does not exist"):
        exp.fit()
    assert not (tmp_path / "run").exists()
