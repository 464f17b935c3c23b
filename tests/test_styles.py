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


@pytest.mark.parametrize("batch", [32, 64])
def test_relations_distance_term_at_real_batch_sizes_is_rkds(batch):
    """Above 25 rows torch.cdist takes a matrix-product shortcut that leaves positive values on
    the diagonal; RKD's mean is over distinct pairs and its diagonal is zero. Checked against the
    formula in float64 at the batch sizes presets train with, and on identical relations (0)."""
    g = torch.Generator().manual_seed(batch)
    s, t = torch.randn(batch, 24, generator=g) * 5 + 3, torch.randn(batch, 24, generator=g) * 0.3 - 1
    got = STYLES["relations"].loss(s, t, RelationsOptions(distance_weight=1.0, angle_weight=0.0))

    def normalised(e):
        d = torch.sqrt(((e.double()[:, None] - e.double()[None]) ** 2).sum(-1))
        return d / d[~torch.eye(len(e), dtype=torch.bool)].mean()

    expected = torch.nn.functional.smooth_l1_loss(normalised(t), normalised(s))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    from kdstyles.styles.relations import distance_matrix

    assert (distance_matrix(s).diagonal() == 0).all()
    same = STYLES["relations"].loss(s, s * 0.5, RelationsOptions())
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    learner = t.clone().requires_grad_()
    STYLES["relations"].loss(s, learner, RelationsOptions()).backward()
    assert torch.isfinite(learner.grad).all()


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


# ----------------------------------------------------------------------------- dkd, dist, standardization

def probs(z, T):
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def hand_dkd(src, dst, label, T):
    """TCKD and NCKD of one sample, by the definitions (Zhao et al. 2022)."""
    ps, pd = probs(src, T), probs(dst, T)
    bs, bd = [ps[label], 1 - ps[label]], [pd[label], 1 - pd[label]]
    tckd = sum(a * math.log(a / b) for a, b in zip(bs, bd))
    rest_s = [p / (1 - ps[label]) for k, p in enumerate(ps) if k != label]
    rest_d = [p / (1 - pd[label]) for k, p in enumerate(pd) if k != label]
    nckd = sum(a * math.log(a / b) for a, b in zip(rest_s, rest_d))
    return tckd, nckd


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_terms_match_their_definitions_and_recompose_kd(T):
    from kdstyles.styles.dkd import dkd_terms

    torch.manual_seed(3)
    src, dst = torch.randn(6, 5, dtype=torch.float64) * 2, torch.randn(6, 5, dtype=torch.float64) * 2
    y = torch.tensor([0, 4, 2, 2, 1, 3])
    tckd, nckd = dkd_terms(src / T, dst / T, y)  # in float64: the formula itself
    for i in range(6):
        t, n = hand_dkd(src[i].tolist(), dst[i].tolist(), int(y[i]), T)
        assert tckd[i].item() == pytest.approx(t, rel=1e-9, abs=1e-12)
        assert nckd[i].item() == pytest.approx(n, rel=1e-9, abs=1e-12)
        # the paper's identity: KD = TCKD + (1 - p_t) NCKD, p_t the source's target probability
        kd = hand_kl(src[i:i + 1], dst[i:i + 1], T)
        p_t = probs(src[i].tolist(), T)[int(y[i])]
        assert kd == pytest.approx(t + (1 - p_t) * n, rel=1e-5)


def test_dkd_weights_temperature_and_warm_up():
    from kdstyles.styles import Context
    from kdstyles.styles.dkd import DKDOptions, dkd_terms
    from kdstyles.tasks import TASKS

    torch.manual_seed(4)
    src, dst, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    task, style = TASKS["classification"](3), STYLES["dkd"]
    opts = DKDOptions(alpha=0.5, beta=2.0, temperature=2.0, warmup=4)
    tckd, nckd = dkd_terms(src / 2, dst / 2, y)
    full = ((0.5 * tckd + 2.0 * nckd).mean() * 4).item()
    for epoch, share in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        got = style.compute(src, dst, opts, task, Context(y, epoch)).item()
        assert got == pytest.approx(share * full, rel=1e-5)
    assert style.compute(src, src.clone(), opts, task, Context(y, 5)).item() == pytest.approx(0, abs=1e-6)
    assert style.labels and not STYLES["dist"].labels  # the cohort hands dkd the labels


def test_dkd_and_dist_take_every_pixel_as_a_sample():
    from kdstyles.styles import Context
    from kdstyles.styles.dist import DISTOptions
    from kdstyles.styles.dkd import DKDOptions
    from kdstyles.tasks import TASKS

    torch.manual_seed(5)
    src, dst, mask = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    rows = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    task = TASKS["segmentation"](3)
    dkd, opts = STYLES["dkd"], DKDOptions(warmup=0)
    assert dkd.compute(src, dst, opts, task, Context(mask)).item() == pytest.approx(
        dkd.compute(rows(src), rows(dst), opts, task, Context(mask.reshape(-1))).item(), rel=1e-6)
    dist = STYLES["dist"]
    assert dist.loss(src, dst, DISTOptions()).item() == pytest.approx(
        dist.loss(rows(src), rows(dst), DISTOptions()).item(), rel=1e-6)


def test_dist_is_one_minus_pearson_between_classes_and_within_classes():
    import numpy as np

    from kdstyles.styles.dist import DISTOptions

    torch.manual_seed(6)
    src, dst = torch.randn(5, 4), torch.randn(5, 4)
    T = 2.0
    ps, pd = torch.softmax(src / T, 1).double().numpy(), torch.softmax(dst / T, 1).double().numpy()
    inter = np.mean([1 - np.corrcoef(ps[i], pd[i])[0, 1] for i in range(5)])
    intra = np.mean([1 - np.corrcoef(ps[:, k], pd[:, k])[0, 1] for k in range(4)])
    got = STYLES["dist"].loss(src, dst, DISTOptions(beta=2.0, gamma=0.5, temperature=T))
    assert got.item() == pytest.approx(T * T * (2.0 * inter + 0.5 * intra), rel=1e-4)
    # correlations ignore a shift and a scale of the learner's probabilities: a learner whose
    # probabilities are an affine copy of the source's loses nothing
    same = STYLES["dist"].loss(src, src.clone(), DISTOptions())
    assert same.item() == pytest.approx(0, abs=1e-5)


def test_logit_standardization_z_scores_each_sample_before_the_softmax():
    torch.manual_seed(7)
    src, dst = torch.randn(4, 5), torch.randn(4, 5)
    z = lambda x: (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)  # noqa: E731
    opts = PredictionsOptions(temperature=2.0, t2_scaling=False, standardize=True)
    got = STYLES["predictions"].loss(src, dst, opts)
    assert got.item() == pytest.approx(hand_kl(z(src), z(dst), 2.0), rel=1e-4)
    # the learner need not match the source's logit scale or offset: 3 z + 7 costs nothing
    assert STYLES["predictions"].loss(src, 3 * src + 7, opts).item() == pytest.approx(0, abs=1e-6)
    assert STYLES["predictions"].loss(src, 3 * src + 7, PredictionsOptions()).item() > 0.1
    for name in ("dkd", "dist", "self"):  # an option of every logit style
        assert "standardize" in STYLES[name].Options.model_fields


@pytest.mark.parametrize("standardize", [False, True])
def test_mlkd_matches_a_hand_computation_of_its_three_levels(standardize):
    """Instance (KL x T²), batch (B x B Gram, / B) and class (K x K, / K) levels at each
    temperature, averaged over the temperatures, computed here in plain Python."""
    from kdstyles.styles.mlkd import MLKDOptions

    g = torch.Generator().manual_seed(3)
    src, dst = torch.randn(5, 4, generator=g) * 2, torch.randn(5, 4, generator=g)
    opts = MLKDOptions(temperatures=[1.0, 3.0], instance_weight=0.5, batch_weight=2.0, class_weight=1.5,
                       standardize=standardize)
    got = STYLES["mlkd"].loss(src, dst, opts)

    def probs(z, t):
        rows = []
        for row in z.tolist():
            if standardize:
                m = sum(row) / len(row)
                sd = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))
                row = [(v - m) / (sd + 1e-7) for v in row]
            e = [math.exp(v / t) for v in row]
            rows.append([v / sum(e) for v in e])
        return rows

    total = 0.0
    for t in opts.temperatures:
        ps, pd = probs(src, t), probs(dst, t)
        b, k = len(ps), len(ps[0])
        inst = sum(sum(a * math.log(a / c) for a, c in zip(rs, rd)) for rs, rd in zip(ps, pd)) / b * t * t
        gram = sum((sum(ps[i][c] * ps[j][c] for c in range(k)) - sum(pd[i][c] * pd[j][c] for c in range(k))) ** 2
                   for i in range(b) for j in range(b)) / b
        cls = sum((sum(ps[n][i] * ps[n][j] for n in range(b)) - sum(pd[n][i] * pd[n][j] for n in range(b))) ** 2
                  for i in range(k) for j in range(k)) / k
        total += 0.5 * inst + 2.0 * gram + 1.5 * cls
    assert got.item() == pytest.approx(total / 2, rel=1e-5)
    assert STYLES["mlkd"].loss(src, src.clone(), opts).item() == pytest.approx(0.0, abs=1e-6)
    dense = STYLES["mlkd"].loss(src.T.reshape(1, 4, 5, 1), dst.T.reshape(1, 4, 5, 1), opts)  # pixels as rows
    assert torch.isfinite(dense) and dense.item() > 0


def test_embedding_losses_against_a_hand_computation():
    """cosine: 1 - cos of each sample's pair, averaged; smooth_l1 and mse: between the two
    embeddings standardised over their features."""
    from kdstyles.styles.embedding import EmbeddingOptions

    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # the source (teacher's class token)
    s = torch.tensor([[1.0, 1.0, 0.0], [0.0, -3.0, 0.0]])  # the projected learner
    got = STYLES["embedding"].loss(t, s, EmbeddingOptions(loss="cosine"))
    assert float(got) == pytest.approx(((1 - 1 / 2 ** 0.5) + (1 - (-1))) / 2)
    z = lambda x: (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7)  # noqa: E731
    assert float(STYLES["embedding"].loss(t, s, EmbeddingOptions(loss="mse"))) == pytest.approx(
        float(((z(s) - z(t)) ** 2).mean()), rel=1e-6)
    d = (z(s) - z(t)).abs()
    huber = torch.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()
    assert float(STYLES["embedding"].loss(t, s, EmbeddingOptions(loss="smooth_l1"))) == pytest.approx(float(huber),
                                                                                                      rel=1e-6)
    assert float(STYLES["embedding"].loss(t, 3 * t, EmbeddingOptions())) == pytest.approx(0.0, abs=1e-6)


def test_cka_is_one_for_a_rotated_and_scaled_embedding_and_matches_its_formula():
    from kdstyles.styles.base import StyleOptions

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    assert float(STYLES["cka"].loss(x, 2.5 * x @ q, StyleOptions())) == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(16, 7, generator=g, dtype=torch.float64)  # another width: no projector needed
    xc, yc = x - x.mean(0), y - y.mean(0)
    cka = (yc.T @ xc).pow(2).sum() / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))
    assert float(STYLES["cka"].loss(x, y, StyleOptions())) == pytest.approx(1 - float(cka), rel=1e-5)


def test_a_plugin_task_with_outputs_of_its_own_kind_registers_how_they_compare(monkeypatch):
    """A task declares what its outputs are (``output_kind``); ``predictions`` and ``self`` compare
    them as that kind says (kdstyles.styles.outputs), never asking the task; a plugin registers a
    kind of its own through kdstyles.plugins."""
    from kdstyles.plugins import register_output_kind
    from kdstyles.styles.base import Context
    from kdstyles.styles.outputs import OUTPUT_KINDS, softened_kl

    monkeypatch.setitem(OUTPUT_KINDS, "placeholder", None)  # restored (removed) after the test
    register_output_kind("placeholder", lambda s, t, o, k: k * softened_kl(s, t, o))
    source, target = torch.randn(4, 3), torch.randn(4, 3)
    for style in ("predictions", "self"):
        opts = STYLES[style].Options(temperature=2.0)
        got = STYLES[style].compute(source, target, opts, None, Context(output_kind="placeholder", classes=3))
        assert torch.allclose(got, 3 * softened_kl(source, target, opts))
        plain = STYLES[style].compute(source, target, opts, None, Context())  # the default: classes
        assert torch.allclose(plain, softened_kl(source, target, opts))
