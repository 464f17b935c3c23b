"""Paired intervals and McNemar's test (kdstyles.report.significance) against cases whose
answer is known by hand."""

import numpy as np
import pytest

from kdstyles.report.significance import interval_text, mcnemar, paired_interval, verdict


def test_a_constant_difference_has_a_zero_width_interval():
    assert paired_interval([np.full(50, 0.25), np.full(30, 0.25)]) == pytest.approx((0.25, 0.25, 0.25))


def test_seeds_that_disagree_widen_the_interval():
    """Each seed's images agree perfectly, the seeds do not: resampling the images alone would
    give [0, 0]; resampling the seeds too gives the seeds' spread."""
    estimate, lo, hi = paired_interval([np.full(40, 1.0), np.full(40, -1.0)])
    assert estimate == 0 and lo == pytest.approx(-1) and hi == pytest.approx(1)


def test_one_seed_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    d = rng.choice([-1.0, 0.0, 1.0], size=2000, p=[0.2, 0.5, 0.3])
    estimate, lo, hi = paired_interval([d])
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert estimate == pytest.approx(d.mean())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15) and lo < estimate < hi


def test_mcnemar_exact_by_hand():
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3)
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3)
    only_a, only_b, p = mcnemar([a], [b])
    assert (only_a, only_b) == (8, 2)
    assert p == pytest.approx(2 * (1 + 10 + 45) / 2 ** 10)  # two-sided binomial, 10 discordant images
    assert mcnemar([a[:8], a[8:]], [b[:8], b[8:]])[:2] == (8, 2)  # summed over seeds
    assert mcnemar([a], [a]) == (0, 0, 1.0)


def test_verdicts_and_text():
    assert verdict(0.001, 0.02) == "better" and verdict(-0.02, -0.001) == "worse"
    assert verdict(-0.01, 0.02) == "not distinguishable" and verdict(float("nan"), 0) == "no per-image results"
    assert interval_text(0.008, -0.003, 0.019) == "+0.8 pt [-0.3, +1.9]"
