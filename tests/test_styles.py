import math

import pytest
import torch

from kdstyles.styles import STYLES
from kdstyles.styles.features import FeaturesOptions
from kdstyles.styles.predictions import PredictionsOptions


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
