import math

import pytest
import torch

from kdstyles.styles import STYLES
from kdstyles.styles.features import FeaturesOptions
from kdstyles.styles.predictions import PredictionsOptions
import copy
import itertools
import torch.nn as nn
from kdstyles.styles.attention import AttentionOptions
from kdstyles.styles.relations import RelationsOptions
from kdstyles.styles.self_distill import SelfOptions


def hand_kl(src_logits, dst_logits, T):
    """KL(p_src^T || p_dst^T) summed over classes, averaged over the other positions, by loops."""
    total, count = 0.0, 0
    src = src_logits.movedim(1, -1).reshape(-1, src_logits.shape[1])
    dst = dst_logits.movedim(1, -1).reshape(-1, dst_logits.shape[1])
    for a, b in zip(src.tolist(), dst.tolist()):
        ea = [math.exp(v / T) for v in a]
        eb = [math.exp(v / T) for v in b]
        pa = [v / sum(ea) for v in ea]
        pb = [v / sum(eb) for v in eb]
        total += sum(p * math.log(p / q) for p, q in zip(pa, pb))
        count += 1
    return total / count


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("t2", [True, False])
def test_predictions_matches_hand_computation(T, t2):
    torch.manual_seed(0)
    src, dst = torch.randn(5, 4), torch.randn(5, 4)
    got = STYLES["predictions"].loss(src, dst, PredictionsOptions(temperature=T, t2_scaling=t2))
    expected = hand_kl(src, dst, T) * (T * T if t2 else 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_predictions_averages_over_pixels_for_dense_logits():
    torch.manual_seed(1)
    src, dst = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    got = STYLES["predictions"].loss(src, dst, PredictionsOptions(temperature=2.0, t2_scaling=False))
    assert got.item() == pytest.approx(hand_kl(src, dst, 2.0), rel=1e-5)


def test_predictions_is_zero_for_identical_and_positive_otherwise():
    x = torch.randn(3, 6)
    opts = PredictionsOptions()
    assert STYLES["predictions"].loss(x, x.clone(), opts).item() == pytest.approx(0.0, abs=1e-7)
    assert STYLES["predictions"].loss(x, x.flip(1), opts).item() > 0


def test_features_mse_and_normalisations():
    torch.manual_seed(2)
    src, dst = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    style = STYLES["features"]
    raw = style.loss(src, dst, FeaturesOptions())
    assert raw.item() == pytest.approx(((src - dst) ** 2).mean().item(), rel=1e-6)

    l2 = style.loss(src, dst, FeaturesOptions(normalize="l2"))
    ns, nd = src.flatten(1), dst.flatten(1)
    ns, nd = ns / ns.norm(dim=1, keepdim=True), nd / nd.norm(dim=1, keepdim=True)
    assert l2.item() == pytest.approx(((ns - nd) ** 2).mean().item(), rel=1e-5)

    ch = style.loss(src * 10 + 3, src, FeaturesOptions(normalize="channel"))
    assert ch.item() == pytest.approx(0.0, abs=1e-6)  # per-channel standardisation removes scale and shift


def test_style_options_reject_unknown_keys():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="temperatur"):
        PredictionsOptions(temperatur=2)


def test_per_pixel_kl_and_complete_binary_distribution():
    torch.manual_seed(0)
    src, dst = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)  # binary masks as two classes
    got = STYLES["predictions"].loss(src, dst, PredictionsOptions(temperature=2.0, t2_scaling=False))
    ps, pd = torch.softmax(src / 2, 1), torch.softmax(dst / 2, 1)
    torch.testing.assert_close(ps.sum(1), torch.ones(2, 3, 3))  # complete at every pixel
    by_hand = sum(float(ps[b, c, i, j] * torch.log(ps[b, c, i, j] / pd[b, c, i, j]))
                  for b in range(2) for c in range(2) for i in range(3) for j in range(3)) / (2 * 9)
    assert got.item() == pytest.approx(by_hand, rel=1e-5)


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
