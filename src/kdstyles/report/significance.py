"""Whether a difference between two ways of teaching is real: paired bootstrap intervals
over test images and seeds, and McNemar's test on two classifiers' errors.

Both work on per-image values that evaluate keeps in eval.json (``per_image``: 0/1
correctness for accuracy, each image's Dice or IoU), so two runs of the same seed, which
share their test split, are compared image by image. A metric that is not a mean over
images (detection's mAP) is drawn with the images instead (:class:`Drawn`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

REPLICATES = 2000
LEVEL = 0.95
CHUNK = 250  # bootstrap replicates drawn at a time (memory: CHUNK x test images)


@dataclass
class Drawn:
    """A paired difference A - B on one seed's test images that is not a mean over them (mAP):
    its value on the test split, and ``draws(counts)``, its value on each of k draws of the
    images, ``counts`` (k, n) saying how often each image is drawn."""

    n: int
    value: float
    draws: Callable[[np.ndarray], np.ndarray]

    def __len__(self) -> int:
        return self.n


def _draw(d: np.ndarray | Drawn, idx: np.ndarray) -> np.ndarray:
    """The difference on each row of drawn image indices ``idx`` (k, n)."""
    if not isinstance(d, Drawn):
        return d[idx].mean(1)
    k, n = idx.shape
    counts = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
    return np.asarray(d.draws(counts), dtype=np.float64)


def paired_interval(diffs: list[np.ndarray | Drawn], replicates: int = REPLICATES, level: float = LEVEL,
                    seed: int = 0) -> tuple[float, float, float]:
    """Mean paired difference and its bootstrap interval.

    ``diffs``: per seed, the per-image differences (A - B) on that seed's test split, or the
    :class:`Drawn` difference of a metric that is not a mean over images. The estimate is the
    mean over seeds of each seed's difference. Each bootstrap replicate draws the seeds with
    replacement, then the test images within each drawn seed with replacement, so the
    interval reflects both the test sample and the training seeds (with one seed, the test
    sample only). Percentile interval at ``level``; a draw where the metric is undefined (no
    object of any class drawn) is left out."""
    kept = [(d,) for d in diffs if len(d)]
    if not kept:
        return float("nan"), float("nan"), float("nan")
    estimate, combined = _bootstrap(kept, replicates, seed)
    return _percentiles(float(estimate[0]), combined[0], level)


def paired_ratio_interval(nums: list[np.ndarray | Drawn], dens: list[np.ndarray | Drawn],
                          replicates: int = REPLICATES, level: float = LEVEL, seed: int = 0
                          ) -> tuple[float, float, float]:
    """The ratio of two mean paired differences, mean(nums) / mean(dens), and its bootstrap
    interval, both drawn on the same images and seeds in every replicate (gap closure:
    (distilled - alone) / (teacher - alone), each seed's three networks on one test split).
    Replicates whose denominator is not above 0 are left out (no lead to close)."""
    kept = [(a, b) for a, b in zip(nums, dens, strict=True) if len(a) and len(a) == len(b)]
    if not kept:
        return float("nan"), float("nan"), float("nan")
    estimate, combined = _bootstrap(kept, replicates, seed)
    if not estimate[1] > 0:
        return float("nan"), float("nan"), float("nan")
    num, den = combined
    ok = den > 0
    return _percentiles(float(estimate[0] / estimate[1]), num[ok] / den[ok], level)


def unpaired_interval(a: list[np.ndarray], b: list[np.ndarray], replicates: int = REPLICATES,
                      level: float = LEVEL, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) for per-image values of two different sets of images (a network on an
    external set and on the test split: nothing to pair), per seed, averaged over seeds, with a
    bootstrap interval that draws the seeds, then each set's images on its own."""
    kept = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b, strict=True)
            if len(x) and len(y)]
    if not kept:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    estimate = float(np.mean([x.mean() - y.mean() for x, y in kept]))
    per_seed = np.empty((len(kept), replicates))
    for i, (x, y) in enumerate(kept):
        for start in range(0, replicates, CHUNK):
            k = min(CHUNK, replicates - start)
            per_seed[i, start:start + k] = (x[rng.integers(0, len(x), (k, len(x)))].mean(1)
                                            - y[rng.integers(0, len(y), (k, len(y)))].mean(1))
    drawn = rng.integers(0, len(kept), size=(replicates, len(kept)))
    return _percentiles(estimate, per_seed[drawn, np.arange(replicates)[:, None]].mean(1), level)


def group_gap_intervals(values: list[tuple[np.ndarray, ...]], groups: list[np.ndarray], eligible: np.ndarray,
                        replicates: int = REPLICATES, level: float = LEVEL, seed: int = 0
                        ) -> list[tuple[float, float, float]]:
    """The gap between groups (the best group's mean minus the worst's, over the ``eligible``
    groups) of one or more networks scored on the same images, with bootstrap intervals; with two
    networks also the first's gap minus the second's, paired (both gaps on every draw of the same
    images). ``values``: per seed, each network's per-image values; ``groups``: per seed, each
    image's group index. Each replicate draws the seeds, then each seed's images, as
    :func:`paired_interval` does. Returns (estimate, lo, hi) per network, then the difference."""
    rng = np.random.default_rng(seed)
    n_groups = len(eligible)

    def gaps(v: np.ndarray, g: np.ndarray) -> np.ndarray:  # v, g: (k, n) drawn values and groups
        k = len(v)
        flat = (g + n_groups * np.arange(k)[:, None]).ravel()
        sums = np.bincount(flat, weights=v.ravel(), minlength=k * n_groups).reshape(k, n_groups)
        counts = np.bincount(flat, minlength=k * n_groups).reshape(k, n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)[:, eligible]
        return np.nanmax(means, 1) - np.nanmin(means, 1)

    nets = len(values[0])
    quantities = nets + (1 if nets == 2 else 0)
    estimates = np.zeros((len(values), quantities))
    drawn = np.empty((quantities, len(values), replicates))
    for i, (vs, g) in enumerate(zip(values, groups, strict=True)):
        vs = [np.asarray(v, np.float64) for v in vs]
        full = [gaps(v[None], g[None])[0] for v in vs]
        estimates[i] = full + ([full[0] - full[1]] if nets == 2 else [])
        for start in range(0, replicates, CHUNK):
            k = min(CHUNK, replicates - start)
            idx = rng.integers(0, len(g), size=(k, len(g)))
            each = [gaps(v[idx], g[idx]) for v in vs]
            drawn[:, i, start:start + k] = each + ([each[0] - each[1]] if nets == 2 else [])
    seeds = rng.integers(0, len(values), size=(replicates, len(values)))
    combined = drawn[:, seeds, np.arange(replicates)[:, None]].mean(2)
    return [_percentiles(float(estimates[:, q].mean()), combined[q], level) for q in range(quantities)]


def _bootstrap(per_seed: list[tuple[np.ndarray | Drawn, ...]], replicates: int, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per seed, one or more paired quantities on that seed's test images. Returns each
    quantity's estimate (its mean over seeds) and its replicates (quantities, replicates): each
    replicate draws the seeds with replacement, then the images within each drawn seed, the
    same images for every quantity of a seed."""
    rng = np.random.default_rng(seed)
    items = [tuple(d if isinstance(d, Drawn) else np.asarray(d, dtype=np.float64) for d in q) for q in per_seed]
    count = len(items[0])
    estimate = np.array([np.mean([d.value if isinstance(d, Drawn) else d.mean() for d in (q[j] for q in items)])
                         for j in range(count)])
    values = np.empty((count, len(items), replicates))
    for i, q in enumerate(items):
        for start in range(0, replicates, CHUNK):
            k = min(CHUNK, replicates - start)
            idx = rng.integers(0, len(q[0]), size=(k, len(q[0])))
            for j, d in enumerate(q):
                values[j, i, start:start + k] = _draw(d, idx)
    drawn = rng.integers(0, len(items), size=(replicates, len(items)))
    return estimate, values[:, drawn, np.arange(replicates)[:, None]].mean(2)


def _percentiles(estimate: float, combined: np.ndarray, level: float) -> tuple[float, float, float]:
    combined = combined[~np.isnan(combined)]
    if not len(combined):
        return estimate, float("nan"), float("nan")
    lo, hi = np.percentile(combined, [50 * (1 - level), 50 * (1 + level)])
    return estimate, float(lo), float(hi)


def mcnemar(correct_a: list[np.ndarray], correct_b: list[np.ndarray]) -> tuple[int, int, float]:
    """McNemar's exact test on paired 0/1 correctness, discordant images summed over seeds:
    (images only A gets right, images only B gets right, two-sided p-value)."""
    only_a = sum(int(((a == 1) & (b == 0)).sum()) for a, b in zip(correct_a, correct_b, strict=True))
    only_b = sum(int(((a == 0) & (b == 1)).sum()) for a, b in zip(correct_a, correct_b, strict=True))
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    from scipy.stats import binomtest

    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def verdict(lo: float, hi: float) -> str:
    """Plain words for an interval of A - B (higher is better)."""
    if np.isnan(lo) or np.isnan(hi):
        return "no per-image results"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "not distinguishable"


def points(value: float) -> str:
    """A difference of a 0-1 metric in percentage points, signed."""
    return f"{100 * value:+.1f} pt"


def interval_text(estimate: float, lo: float, hi: float) -> str:
    """``+0.8 pt [-0.3, 1.9]``"""
    if np.isnan(lo):
        return points(estimate)
    return f"{points(estimate)} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
