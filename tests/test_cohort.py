import pytest
import torch
import torch.nn as nn

from conftest import THREE, assert_gradient_isolation
from kdstyles import KDError, build_cohort, load_config
from kdstyles.styles.routing import PRESETS
import copy


def cohort_for(preset, *extra, modules=None):
    cfg = load_config(None, [f"routing.preset={preset}", "data.image_size=16", "networks.teacher.widen=0.25",
                             "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125", *extra])
    return build_cohort(cfg, num_classes=4, channels=3, image_size=16, modules=modules)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_gradient_isolation(preset, tmp_path):
    from kdstyles.styles import STYLES

    torch.manual_seed(0)
    frozen = []  # presets that reuse a frozen teacher (simkd) learn from an offline one
    if any(STYLES[st].frozen_source for _, _, st in PRESETS[preset].triples(["s1", "s2"])):
        from kdstyles.models.zoo import build_network

        torch.save(build_network("resnet18", 3, 4, 16, widen=0.25).state_dict(), tmp_path / "t.pt")
        frozen = ["networks.teacher.mode=offline", f"networks.teacher.checkpoint={tmp_path / 't.pt'}"]
    cohort = cohort_for(preset, *frozen)
    cohort.train()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 4, (6,))
    losses = cohort.losses(cohort(x), y)
    per_network = assert_gradient_isolation(cohort, losses)
    # One backward of the sum gives each network exactly its own loss's gradient.
    cohort.zero_grad(set_to_none=True)
    torch.stack([nl.total for nl in losses.values()]).sum().backward()
    for name in losses:
        for p in cohort.parameters_of(name):
            if id(p) in per_network[name]:
                torch.testing.assert_close(p.grad, per_network[name][id(p)])


def test_teacher_is_absent_when_no_edge_uses_it():
    assert cohort_for("dml").names == ["s1", "s2"]
    assert cohort_for("student").names == ["s1", "s2"]
    assert cohort_for("kd").names == ["teacher", "s1", "s2"]
    assert cohort_for("teacher").names == ["teacher"]  # a shared teacher's run: the teacher alone


def test_adapters_exist_exactly_when_shapes_differ():
    # diverse: teacher(w=0.25) -> s2 features differ in channels; s2 -> s1 features (same arch) match.
    # Default taps at 16 px: the deepest 4x4 maps, layer3 (256 channels * widen).
    cohort = cohort_for("diverse")
    assert sorted(cohort.adapters) == ["teacher__s2__features__1"]
    a = cohort.adapters["teacher__s2__features__1"]
    assert isinstance(a.project, nn.Sequential) and not a.resize
    assert a.project[0].in_channels == 32 and a.project[0].out_channels == 64

    # teacher layer3 (w=0.25: 64 ch, 4x4) vs s1 layer4 (w=0.125: 64 ch, 2x2): resize only, no parameters;
    # s2 tapped exactly like the teacher (w=0.25, layer3): no adapter at all.
    mixed = cohort_for("fitnet", "networks.teacher.tap=layer3.0.conv2", "networks.students.s2.widen=0.25",
                       "networks.students.s2.tap=layer3.0.conv2", "networks.students.s1.tap=layer4.0.conv2")
    assert list(mixed.adapters) == ["teacher__s1__features__0"]
    adapter = mixed.adapters["teacher__s1__features__0"]
    assert adapter.resize and isinstance(adapter.project, nn.Identity)
    assert sum(p.numel() for p in adapter.parameters()) == 0


def test_adapter_resizes_source_to_receiver():
    cohort = cohort_for("fitnet", "networks.teacher.tap=layer4.1.conv2", "networks.students.s1.tap=layer3.0.conv2")
    x = torch.randn(2, 3, 16, 16)
    outs = cohort(x)
    src = outs["teacher"].features["layer4.1.conv2"]
    dst = outs["s1"].features["layer3.0.conv2"]
    pred, target = cohort.adapters["teacher__s1__features__0"](dst, src)
    assert pred.shape == (2, src.shape[1], *dst.shape[2:])
    assert target.shape == pred.shape


def test_custom_module_with_tap_path():
    class Small(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3))
            self.head = nn.Linear(width, 4)

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    cohort = cohort_for("diverse", "networks.students.s1.tap=body.2", "networks.students.s2.tap=body.2",
                        modules={"s1": Small(8), "s2": Small(12)})
    assert "s2__s1__features__3" in cohort.adapters  # 12 -> 8 channels
    losses = cohort.losses(cohort(torch.randn(4, 3, 16, 16)), torch.randint(0, 4, (4,)))
    assert set(losses["s1"].terms) == {"ce", "predictions<-teacher", "features<-s2"}


def test_wrong_output_shape_is_reported():
    bad = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 7))
    with pytest.raises(KDError, match=r"networks.s1: output shape \(2, 7\) does not match \(batch, 4 classes\)"):
        cohort_for("dml", modules={"s1": bad})
    with pytest.raises(KDError, match="networks passed in: 's1' is a function, not a torch.nn.Module"):
        cohort_for("dml", modules={"s1": lambda x: x})  # a model factory passed instead of the model
    with pytest.raises(KDError, match="networks passed in: 's3' is not a network of this experiment"):
        cohort_for("dml", modules={"s3": bad})


def test_offline_teacher_is_frozen_and_gets_no_gradient(tmp_path):
    teacher_cohort = cohort_for("kd")
    path = tmp_path / "teacher.pt"
    torch.save(teacher_cohort.networks["teacher"].state_dict(), path)
    cohort = cohort_for("diverse", "networks.teacher.mode=offline", f"networks.teacher.checkpoint={path}")
    assert cohort.frozen == {"teacher"} and cohort.trainable == ["s1", "s2"]
    before = {k: v.clone() for k, v in cohort.networks["teacher"].state_dict().items()}
    cohort.train()
    assert not cohort.networks["teacher"].training
    outs = cohort(torch.randn(4, 3, 16, 16))
    assert outs["teacher"].logits.is_inference() and not outs["teacher"].logits.requires_grad
    losses = cohort.losses(outs, torch.randint(0, 4, (4,)))
    torch.stack([nl.total for nl in losses.values()]).sum().backward()
    assert all(p.grad is None for p in cohort.networks["teacher"].parameters())
    after = cohort.networks["teacher"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too


def test_offline_teacher_that_does_not_fit_is_reported(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(KDError, match=r"does not fit networks.teacher \(arch resnet18\) \([0-9]+ missing key"):
        cohort_for("kd", "networks.teacher.mode=offline", f"networks.teacher.checkpoint={path}")


@pytest.mark.parametrize("arch, tap", [("densenet121", "features.denseblock4.denselayer16.layers.conv2"),
                                       ("efficientnet-b0", "_conv_head"), ("resnet50", "layer4.2.conv2")])
def test_other_architectures_default_taps_and_adapters(arch, tap):
    from kdstyles.models.zoo import build_network, default_tap

    net = build_network(arch, 3, 4, 224)
    assert default_tap(net, torch.zeros(1, 3, 224, 224)) == tap  # at 224 px: the last stage, as the authors tap
    cfg = load_config(None, ["routing.preset=fitnet", "data.image_size=32", f"networks.teacher.arch={arch}",
                             "networks.teacher.widen=1", "networks.students.s1.widen=0.125",
                             "networks.students.s2.widen=0.125"])
    cohort = build_cohort(cfg, num_classes=4, channels=3, image_size=32)
    assert sorted(cohort.adapters) == ["teacher__s1__features__0", "teacher__s2__features__1"]
    losses = cohort.losses(cohort(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    assert torch.isfinite(losses["s1"].terms["features<-teacher"])




SMALL = ["data.image_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
         "networks.students.s2.widen=0.125"]


@pytest.mark.parametrize("kind", ["ctsl-mkt", "custom3"])
def test_gradient_isolation_new_styles_three_students(kind):
    from kdstyles.config import build_config

    raw = {} if kind == "ctsl-mkt" else copy.deepcopy(CUSTOM3)
    pre = ["routing.preset=ctsl-mkt"] if kind == "ctsl-mkt" else []
    cfg = build_config(raw, [*pre, *SMALL, *THREE])
    torch.manual_seed(0)
    cohort = build_cohort(cfg, num_classes=4, channels=3, image_size=16)
    cohort.train()
    losses = cohort.losses(cohort(torch.randn(6, 3, 16, 16)), torch.randint(0, 4, (6,)))
    assert_gradient_isolation(cohort, losses)
    for shadow in cohort.shadows.values():
        assert all(p.grad is None and not p.requires_grad for p in shadow.parameters())
    if kind == "custom3":
        assert set(losses["s3"].terms) == {"ce", "features<-s1", "self<-s3"}
        assert "teacher__s1__attention__0" not in cohort.adapters  # same spatial size: attention needs none


CUSTOM3 = {"routing": {"edges": [
    {"src": "teacher", "dst": "s1", "style": "attention"},
    {"src": "teacher", "dst": "s2", "style": "relations"},
    {"src": "s1", "dst": "s3", "style": "features"},
    {"src": "s3", "dst": "s2", "style": "predictions"},
    {"src": "s3", "dst": "s3", "style": "self", "weight": 0.3},
]}}


def test_building_a_cohort_runs_each_network_twice_whatever_the_edges():
    """diverse-full has 4 features edges over s1 and s2: the default tap is found with one probe
    per network, then one forward checks every shape (not one probe per edge and side)."""
    from kdstyles.models.zoo import build_network

    nets = {n: build_network("resnet10", 3, 4, 16, widen=w) for n, w in (("teacher", 0.25), ("s1", 0.125),
                                                                       ("s2", 0.125))}
    calls = {n: 0 for n in nets}
    for n, net in nets.items():
        net.register_forward_pre_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    cfg = load_config(None, ["routing.preset=diverse-full", "data.image_size=16"])
    build_cohort(cfg, num_classes=4, channels=3, image_size=16, modules=nets)
    assert calls == {"teacher": 2, "s1": 2, "s2": 2}


NEW_STYLES = {"routing": {"edges": [
    {"src": "teacher", "dst": "s1", "style": "dkd", "options": {"standardize": True}},
    {"src": "teacher", "dst": "s2", "style": "dist"},
    {"src": "s1", "dst": "s2", "style": "dkd"},
    {"src": "s2", "dst": "s1", "style": "predictions", "options": {"standardize": True, "temperature": 2}},
    {"src": "teacher", "dst": "s2", "style": "features", "options": {"taps": ["layer2", "layer3"]}},
    {"src": "s3", "dst": "s3", "style": "self", "options": {"standardize": True}},
]}}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_gradient_isolation_with_the_modern_losses_and_labels_handed_to_dkd(task, monkeypatch):
    """dkd gets the batch's labels (class indices, or the mask per pixel) from the cohort; every
    new style keeps gradients to the learner; a features edge at two depths is two edges."""
    from kdstyles.config import build_config
    from kdstyles.styles import STYLES

    seg = ["task=segmentation", "data.image_size=32", *[f"networks.{n}.arch=unet" for n in
                                                         ("teacher", "students.s1", "students.s2", "students.s3")]]
    raw = copy.deepcopy(NEW_STYLES)
    if task == "segmentation":  # the U-Net's stages
        raw["routing"]["edges"][4]["options"]["taps"] = ["model.1.submodule.0", "model.1.submodule.1.submodule.0"]
    cfg = build_config(raw, [*SMALL, *THREE, *(seg if task == "segmentation" else [])])
    features = [e for e in cfg.edges if e.style == "features"]
    assert len(features) == 2 and all(e.weight == pytest.approx(0.1) for e in features)  # 0.2 over 2 depths
    seen = []
    real = STYLES["dkd"].compute
    monkeypatch.setattr(STYLES["dkd"], "compute", lambda s, t, o, task_, c: seen.append(c.labels) or
                        real(s, t, o, task_, c))
    torch.manual_seed(0)
    size = 32 if task == "segmentation" else 16
    cohort = build_cohort(cfg, num_classes=3, channels=3, image_size=size)
    assert sum(k.split("__")[2] == "features" for k in cohort.adapters) == 2  # one adapter per depth
    cohort.train()
    y = torch.randint(0, 3, (4, size, size) if task == "segmentation" else (4,))
    losses = cohort.losses(cohort(torch.randn(4, 3, size, size)), y)
    assert len(seen) == 2 and all(s is y for s in seen)
    assert {"dkd<-teacher", "dist<-teacher", "dkd<-s1", "predictions<-s2"} <= set(losses["s1"].terms) | \
        set(losses["s2"].terms)
    assert all(torch.isfinite(v) for nl in losses.values() for v in nl.terms.values())
    assert_gradient_isolation(cohort, losses)


@pytest.mark.parametrize("task, edge, message", [
    ("multilabel", {"src": "teacher", "dst": "s1", "style": "dkd"},
     "edge teacher -> s1 dkd (w=0.2): style 'dkd' compares softmax probabilities over classes, one class per "
     "image or pixel; task multilabel gives each class its own probability"),
    ("multilabel", {"src": "s1", "dst": "s2", "style": "predictions", "options": {"standardize": True}},
     "edge s1 -> s2 predictions (w=0.1): standardize: true z-scores the logits over classes"),
    ("detection", {"src": "teacher", "dst": "s2", "style": "dist"}, "task detection scores each class"),
])
def test_styles_that_need_one_class_per_sample_are_refused_where_classes_are_not_exclusive(task, edge, message):
    extra = [f"networks.{n}.arch=unet" for n in ("teacher", "students.s1", "students.s2")] if task == "detection" \
        else []
    from kdstyles.config import build_config

    with pytest.raises(KDError) as err:
        build_config({"routing": {"edges": [edge]}}, [f"task={task}", "data.image_size=32", *extra])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_standardized_logits_with_two_classes_are_warned_about():
    """z-scored, two logits become +-0.71 for every sample: the soft target keeps only the winner."""
    cfg = load_config(None, ["routing.preset=kd", "styles.predictions.standardize=true",
                             "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
                             "networks.students.s2.widen=0.125"])
    two = build_cohort(cfg, 2, 3, 16)
    assert any("standardize with two classes" in w for w in two.warnings)
    assert not any("standardize" in w for w in build_cohort(cfg, 4, 3, 16).warnings)


def test_an_offline_teacher_from_other_data_sees_inputs_normalised_as_in_its_own_run(tmp_path):
    """A teacher trained with other normalisation statistics (here none: [0, 1] images) gets this
    run's normalised inputs renormalised to its own, so it answers as it did in its own run."""
    from conftest import tiny
    from kdstyles import Experiment
    from kdstyles.models.zoo import build_network

    teacher = Experiment(None, overrides=tiny(tmp_path, "routing.preset=teacher", "train.epochs=1",
                                              "data.normalize=none", "output.name=t"), quiet=True)
    teacher.fit()
    exp = Experiment(None, overrides=tiny(tmp_path, "routing.preset=kd", "networks.teacher.mode=offline",
                                          f"networks.teacher.checkpoint={teacher.run_dir}", "output.name=s"),
                     quiet=True)
    cohort, data = exp.cohort, exp.data
    assert data.mean != [0.0, 0.0, 0.0]  # this run normalises with its data's statistics
    raw = torch.rand(4, 3, 16, 16)
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    plain = build_network("resnet18", 3, 4, 16, widen=0.25).eval()
    plain.load_state_dict(torch.load(teacher.folder.best("teacher"), weights_only=True)["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(cohort.networks["teacher"].eval()((raw - mean) / std), plain(raw))
