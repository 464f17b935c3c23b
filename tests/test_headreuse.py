"""The teacher's classifier reused (simkd): the learner's head becomes projector + the teacher's
frozen classifier, checked against a hand computation, through the cohort, a reopened run
and an export; and what it refuses."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import tiny
from kdstyles import Experiment, KDError, build_cohort, load_config
from kdstyles.styles import STYLES
from kdstyles.styles.simkd import ProjectedPool, SimKDOptions, find_head, reused_head_parameters  # noqa: F401


def offline_teacher(tmp_path) -> str:
    """A teacher checkpoint (tiny resnet18, random weights) for an offline teacher."""
    from kdstyles.models.zoo import build_network

    torch.manual_seed(0)
    net = build_network("resnet18", 3, 4, 16, widen=0.25)
    path = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def cfg_for(tmp_path, *extra):
    return load_config(None, ["routing.preset=simkd", "data.image_size=16", "networks.teacher.widen=0.25",
                              "networks.teacher.mode=offline", f"networks.teacher.checkpoint={offline_teacher(tmp_path)}",
                              "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125", *extra])


def test_the_learner_classifies_through_the_teachers_head_and_the_loss_is_the_projected_mse(tmp_path):
    cohort = build_cohort(cfg_for(tmp_path), 4, 3, 16)
    teacher, s1 = cohort.networks["teacher"], cohort.networks["s1"]
    assert isinstance(s1.avgpool, ProjectedPool)
    assert torch.equal(s1.fc.weight, teacher.fc.weight) and not s1.fc.weight.requires_grad
    x = torch.randn(6, 3, 16, 16)
    cohort.eval()
    with torch.no_grad():
        feats = {}
        hooks = [s1.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("s", o)),
                 teacher.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("t", o))]
        logits = s1(x)
        teacher(x)
        for h in hooks:
            h.remove()
        projected = s1.avgpool.projector(feats["s"])
        by_hand = teacher.fc(projected.mean(dim=(2, 3)))  # the teacher's classifier on the projected map
    assert torch.allclose(logits, by_hand, atol=1e-5)
    assert projected.shape[1] == feats["t"].shape[1]  # projected into the teacher's channels
    # the edge's loss: MSE between the projected map and the teacher's map (same 2x2 size here)
    cohort.train()
    outs = cohort(x)
    losses = cohort.losses(outs, torch.randint(0, 4, (6,)))
    got = losses["s1"].terms["simkd<-teacher"]
    with torch.no_grad():
        expected = F.mse_loss(outs["s1"].features["avgpool.projector"], outs["teacher"].features["avgpool:in"])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # gradient reaches the learner's backbone and projector, never the reused head or the teacher
    losses["s1"].total.backward()
    assert s1.layer1[0].conv1.weight.grad is not None and s1.avgpool.projector[0].weight.grad is not None
    assert s1.fc.weight.grad is None and all(p.grad is None for p in teacher.parameters())
    counts = reused_head_parameters(s1)
    assert counts["teacher_head"] == teacher.fc.weight.numel() + teacher.fc.bias.numel()
    assert counts["own"] + counts["projector"] + counts["teacher_head"] == sum(p.numel() for p in s1.parameters())
    assert reused_head_parameters(teacher) is None


def test_the_projector_is_simkds_and_its_bottleneck_follows_factor():
    learner = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    source = nn.Sequential(nn.Conv2d(3, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
    STYLES["simkd"].prepare(source, learner, SimKDOptions(factor=4), torch.randn(2, 3, 9, 9), "edge")
    proj = learner[1].projector
    convs = [m for m in proj if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(8, 8, (1, 1)), (8, 8, (3, 3)),
                                                                              (8, 32, (1, 1))]
    assert learner[3].weight.shape == (5, 32)
    assert find_head(learner, torch.randn(2, 3, 9, 9), "it")[0] == "1"


def test_a_reopened_run_and_its_export_carry_projector_and_head(tmp_path):
    from kdstyles.deploy.export import export_run

    teacher = offline_teacher(tmp_path)
    exp = Experiment(None, overrides=tiny(tmp_path, "routing.preset=simkd", "train.epochs=1",
                                          "networks.teacher.mode=offline", f"networks.teacher.checkpoint={teacher}"),
                     quiet=True)
    exp.fit()
    first = exp.evaluate()["networks"]["s1"]["accuracy"]
    again = Experiment.from_run(exp.run_dir, quiet=True).evaluate()["networks"]["s1"]["accuracy"]
    assert again == first
    side = export_run(exp.run_dir, "s1", "onnx")
    assert side["verification"]["max_abs_diff"] < 1e-4
    info = exp.folder.info()
    assert info.reused_heads["s1"]["teacher_head"] > 0


def test_what_simkd_refuses(tmp_path):
    with pytest.raises(KDError, match="style 'simkd' reuses what a frozen network knows; its src must be an offline "
                                      "teacher"):
        load_config(None, ["routing.preset=simkd"])
    two = "routing={edges: [{src: teacher, dst: s1, style: simkd}, {src: teacher, dst: s1, style: simkd}]}"
    with pytest.raises(KDError, match="s1 already receives a 'simkd' edge"):
        cfg_for(tmp_path, two)
    with pytest.raises(KDError, match="does not end in global average pooling"):
        find_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 7 * 7, 2)), torch.randn(1, 3, 9, 9),
                  "the student")
