import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn

from conftest import assert_gradient_isolation
from kdstyles import Experiment, build_cohort, load_config
from kdstyles.styles import STYLES
from kdstyles.styles.attention import AttentionOptions
from kdstyles.styles.relations import RelationsOptions
from kdstyles.styles.self_distill import SelfOptions


def huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_attention_matches_hand_computation():
    torch.manual_seed(0)
    src, dst = torch.randn(2, 5, 3, 3), torch.randn(2, 7, 3, 3)  # channel counts may differ
    got = STYLES["attention"].loss(src, dst, AttentionOptions(p=2))
    total = 0.0
    for b in range(2):
        maps = []
        for x in (dst, src):
            a = [sum(float(x[b, c, i, j]) ** 2 for c in range(x.shape[1])) / x.shape[1]
                 for i in range(3) for j in range(3)]
            norm = math.sqrt(sum(v * v for v in a))
            maps.append([v / norm for v in a])
        total += sum((u - v) ** 2 for u, v in zip(*maps))
    assert got.item() == pytest.approx(total / (2 * 9), rel=1e-5)


def test_relations_distance_term_matches_hand_computation():
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = STYLES["relations"].loss(s, t, RelationsOptions(distance_weight=1.0, angle_weight=0.0))
    ds = [[math.dist(a, b) for b in s.tolist()] for a in s.tolist()]
    dt = [[math.dist(a, b) for b in t.tolist()] for a in t.tolist()]
    ms = sum(v for row in ds for v in row if v > 0) / 6
    mt = sum(v for row in dt for v in row if v > 0) / 6
    expected = sum(huber(dt[i][j] / mt, ds[i][j] / ms) for i in range(3) for j in range(3)) / 9
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_relations_angle_term_on_three_samples():
    s = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # right angle at sample 0
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # 45 degrees at sample 0
    got = STYLES["relations"].loss(s, t, RelationsOptions(distance_weight=0.0, angle_weight=1.0))

    def cos_at(e, i, j, k):  # angle at j between e_i - e_j and e_k - e_j
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        nu, nv = math.hypot(*u), math.hypot(*v)
        return 0.0 if nu == 0 or nv == 0 else (u[0] * v[0] + u[1] * v[1]) / (nu * nv)

    S, T = s.tolist(), t.tolist()
    terms = [huber(cos_at(T, i, j, k), cos_at(S, i, j, k)) for j, i, k in itertools.product(range(3), repeat=3)]
    assert got.item() == pytest.approx(sum(terms) / 27, rel=1e-5)
    assert got.item() > 0
    same = STYLES["relations"].loss(s, s * 5 + 1, RelationsOptions())  # scale/shift invariant
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_self_style_ema_and_epoch_updates():
    net = nn.Linear(3, 2)
    shadow = copy.deepcopy(net).requires_grad_(False)
    w0 = shadow.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    style = STYLES["self"]
    style.update_shadow(shadow, net, SelfOptions(mode="ema", decay=0.9), "epoch")
    assert torch.equal(shadow.weight, w0)  # ema updates on steps only
    style.update_shadow(shadow, net, SelfOptions(mode="ema", decay=0.9), "step")
    torch.testing.assert_close(shadow.weight, 0.9 * w0 + 0.1 * net.weight)
    style.update_shadow(shadow, net, SelfOptions(mode="epoch"), "step")
    assert not torch.equal(shadow.weight, net.weight)  # epoch mode waits for the epoch end
    style.update_shadow(shadow, net, SelfOptions(mode="epoch"), "epoch")
    assert torch.equal(shadow.weight, net.weight)


THREE = ["networks.students.s3.arch=resnet10", "networks.students.s3.widen=0.125"]
SMALL = ["data.image_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
         "networks.students.s2.widen=0.125"]


def test_ctsl_mkt_expands_over_all_students():
    cfg = load_config(None, ["routing.preset=ctsl-mkt", *THREE])
    edges = cfg.edges
    got = {(e.src, e.dst, e.style) for e in edges}
    students = ["s1", "s2", "s3"]
    expected = {(a, b, st) for a in students for b in students if a != b for st in ("predictions", "relations")}
    expected |= {(s, s, "self") for s in students}
    assert got == expected
    pred = next(e for e in edges if e.style == "predictions")
    assert pred.options.temperature == 3.0 and pred.options.t2_scaling and pred.weight == 0.1
    assert next(e for e in edges if e.style == "self").weight == cfg.loss.self_weight
    cfg4 = load_config(None, ["routing.preset=ctsl-mkt", "styles.predictions.temperature=5"])
    assert all(e.options.temperature == 5 for e in cfg4.edges if e.style == "predictions")


CUSTOM3 = {"routing": {"edges": [
    {"src": "teacher", "dst": "s1", "style": "attention"},
    {"src": "teacher", "dst": "s2", "style": "relations"},
    {"src": "s1", "dst": "s3", "style": "features"},
    {"src": "s3", "dst": "s2", "style": "predictions"},
    {"src": "s3", "dst": "s3", "style": "self", "weight": 0.3},
]}}


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


def test_ctsl_mkt_and_three_student_cohort_train_end_to_end(tiny_overrides):
    exp = Experiment(None, overrides=tiny_overrides("routing.preset=ctsl-mkt", *THREE, "train.epochs=1"), quiet=True)
    shadow_before = {k: v.clone() for k, v in exp.cohort.shadows.state_dict().items()}
    exp.fit()
    assert exp.cohort.names == ["s1", "s2", "s3"]  # no teacher is built
    changed = [k for k, v in exp.cohort.shadows.state_dict().items() if not torch.equal(v, shadow_before[k])]
    assert changed  # EMA shadows followed the students
    result = exp.evaluate()
    assert list(result["networks"]) == ["s1", "s2", "s3", "ensemble"]
    assert result["networks"]["ensemble"]["parameters"] == sum(result["networks"][s]["parameters"]
                                                               for s in ("s1", "s2", "s3"))
