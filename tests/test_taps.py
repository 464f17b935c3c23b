"""Feature taps (kdstyles.models.taps): recording by module path, inputs with ':in', only
inside recording(), in-place changes detected, wrong paths named with the nearest ones."""

import pytest
import torch
import torch.nn as nn

from kdstyles import KDError
from kdstyles.models.taps import Tap


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).mean((2, 3)))


def test_records_outputs_and_inputs_only_while_recording():
    net, x = Net(), torch.randn(2, 3, 8, 8)
    tap = Tap(net, ["conv", "fc:in"], "networks.s1.tap")
    with tap.recording() as feats:
        net(x)
    assert feats["conv"].shape == (2, 4, 8, 8)
    assert torch.equal(feats["fc:in"], net.act(net.bn(net.conv(x))).mean((2, 3)))  # the Linear's input
    kept = feats["conv"].clone()
    net(x * 2)  # outside recording(): nothing is recorded
    assert torch.equal(feats["conv"], kept) and set(feats) == {"conv", "fc:in"}
    with pytest.raises(KDError, match="tap 'conv' was not called during the forward pass"):
        with tap.recording():
            pass


def test_wrong_path_names_the_nearest_valid_ones():
    with pytest.raises(KDError, match=r"networks.s1.tap: no module 'conv9' in Net; nearest valid paths: conv"):
        Tap(Net(), ["conv9"], "networks.s1.tap")


def test_in_place_modified_tap_is_detected():
    net = Net()
    tap = Tap(net, ["bn"], "networks.s1.tap")  # ReLU(inplace=True) overwrites the BatchNorm's output
    with pytest.raises(KDError, match="tap 'bn': its output is modified in place"):
        with tap.recording():
            net(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_network_records_taps_in_every_block(backend):
    """torch.compile (train.compile): a tap in a later residual block of one shape is recorded
    and equals the eager map, with the same gradients. With the hook kept out of the graph,
    each block ran as a frame of its own and a block's compiled code, reused for a later block
    of the same shape, skipped that block's hook (ResNet50's layer4.2.conv2, the paper's tap)."""
    from kdstyles.models.zoo import build_network

    torch.manual_seed(0)
    eager = build_network("resnet34", 3, 2, 32, widen=0.125)
    compiled = build_network("resnet34", 3, 2, 32, widen=0.125)
    compiled.load_state_dict(eager.state_dict())
    paths = ["layer1.2.conv2", "layer3.5.conv2"]  # the last of 3 and of 6 blocks of one shape
    taps = {"eager": Tap(eager, paths, "t"), "compiled": Tap(compiled, paths, "t")}
    torch._dynamo.reset()
    compiled.compile(backend=backend)
    x, maps, grads = torch.randn(2, 3, 32, 32), {}, {}
    for name, net in (("eager", eager), ("compiled", compiled)):
        with taps[name].recording() as feats:
            out = net(x)
        (out.sum() + sum(f.pow(2).mean() for f in feats.values())).backward()
        maps[name], grads[name] = feats, [p.grad for p in net.parameters()]
    assert set(maps["compiled"]) == set(paths)
    for p in paths:
        torch.testing.assert_close(maps["compiled"][p], maps["eager"][p])
    for g_compiled, g_eager in zip(grads["compiled"], grads["eager"]):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)
