"""Pretrained weights (kdstyles.models.pretrained) from files the tests write themselves: a
state dict in torchvision's (and timm's) ResNet18 naming loads strictly, as safetensors and
as .pth; 1-channel inputs get the summed RGB filters; bad files are one line; offline, the
hub path says what to download and where. Nothing here touches a network."""

import pytest
import torch
from safetensors.torch import save_file

from kdstyles import KDError, load_config
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
    with pytest.raises(KDError, match="networks.students.s1.pretrained: 'weights.bin' is neither imagenet"):
        load_config(None, ["networks.students.s1.pretrained=weights.bin"])


def test_offline_hub_names_repository_file_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    import importlib

    import huggingface_hub.constants as constants

    importlib.reload(constants)  # pick up the cache folder set above
    try:
        with pytest.raises(KDError) as err:
            build_network("resnet50", 3, 2, 224, pretrained=True, where="networks.teacher")
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
    msg = str(err.value)
    assert "'model.safetensors' of the Hugging Face repository 'timm/resnet50.tv_in1k'" in msg
    assert str(tmp_path / "hf") in msg and "huggingface-cli download timm/resnet50.tv_in1k model.safetensors" in msg
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
    with pytest.raises(KDError, match="no hub repository of ImageNet weights is known for mobilenet_v2"):
        build_network("mobilenet_v2", 3, 2, 224, pretrained="imagenet")
