"""Split-conformal prediction sets and selective prediction for single-label classification.

A prediction set holds every class whose nonconformity score is at most a threshold fitted
on the validation split, so that on images exchangeable with the validation split's the set
holds the true class for at least the target share of images, 1 - alpha (Vovk et al., 2005;
Angelopoulos & Bates, 2021). Three scores (:mod:`kdstyles.common.sets`):

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al., 2019): 1 - p_y. The plain
  method: the smallest sets on average. What ``export --calibrated`` and ``predict`` use, and
  the coverage in results rows: deterministic, one set per image.
- ``aps`` (adaptive prediction sets, Romano et al., 2020): the mass of the classes ranked
  above y plus U p_y, U uniform (seeded, one draw per image). Sets grow where the model is unsure.
- ``raps`` (regularised APS, Angelopoulos et al., 2021): APS plus ``lam`` * max(0, rank(y) -
  ``k_reg``), which keeps sets from growing into the long tail of unlikely classes.

The threshold is the k-th smallest validation score. With ``confidence`` None, k = ceil((n + 1)
(1 - alpha)): coverage 1 - alpha on average over draws of the validation split (the classical,
marginal guarantee). With ``confidence`` (e.g. 0.95), k is the smallest with P(Binomial(n,
1 - alpha) <= k - 1) >= confidence: coverage at least 1 - alpha for all but 1 - confidence of
validation splits (Vovk, 2012, training-conditional validity), so one unlucky, easy validation
split does not leave its sets short. Either way k > n means every class. Validation images also
picked each network's best checkpoint, which makes them look a little easier than new ones;
the test split's coverage and its interval show whether that mattered.

Selective prediction (abstaining on the least confident images) is measured beside it:
:func:`kdstyles.common.metrics.aurc` and the risk-coverage curve of
:func:`kdstyles.common.metrics.classification_details`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..common.sets import METHODS, class_scores, prediction_sets

DEFAULT_METHOD = "lac"  # what export --calibrated, predict and results rows use: deterministic sets


def rank(n: int, coverage: float, confidence: float | None) -> int:
    """Which of ``n`` sorted validation scores is the threshold (1-based; above n: none is)."""
    if confidence is None:
        return math.ceil((n + 1) * coverage)
    return binomial_quantile(confidence, n, coverage) + 1


def binomial_quantile(q: float, n: int, p: float) -> int:
    """The smallest j with P(Binomial(n, p) <= j) >= q (scipy's ``binom.ppf``, without importing
    scipy.stats, which costs every process that calibrates about a second)."""
    if p >= 1:
        return n
    log_p, log_q, total = math.log(p), math.log1p(-p), 0.0
    for j in range(n + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * log_p
                          + (n - j) * log_q)
        if total >= q - 1e-12:
            return j
    return n


def threshold(probs: torch.Tensor, labels: torch.Tensor, coverage: float, method: str,
              confidence: float | None = None, u: np.ndarray | None = None) -> float:
    """The split-conformal threshold on calibration images (``probs`` of the validation split):
    the :func:`rank`-th smallest score of the true classes (inf when n is too small)."""
    s = np.sort(class_scores(probs.numpy(), method, u)[np.arange(len(labels)), labels.numpy()])
    k = rank(len(s), coverage, confidence)
    return math.inf if k > len(s) else float(s[k - 1])


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (exact enough at the counts of a test split,
    and never outside [0, 1])."""
    if n == 0:
        return math.nan, math.nan
    p = hits / n
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (mid - half) / (1 + z * z / n)), min(1.0, (mid + half) / (1 + z * z / n))


def set_summary(sets: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """What a set-valued prediction gives on a split: the share of images whose set holds the
    true class (``coverage``, with its 95% interval), the mean set size, the share of single
    answers (``decided``: the model answers alone; the others go to a person) and the accuracy on
    those, and per class (by true class) coverage and mean set size."""
    n, k = sets.shape
    hit = sets[torch.arange(n), labels]
    size = sets.sum(1).double()
    single = size == 1
    decided_right = int((single & (probs.argmax(1) == labels)).sum())
    per_class_cov, per_class_size = [], []
    for c in range(k):
        mine = labels == c
        per_class_cov.append(float(hit[mine].double().mean()) if mine.any() else None)
        per_class_size.append(float(size[mine].mean()) if mine.any() else None)
    return {"coverage": float(hit.double().mean()), "coverage_ci": list(wilson(int(hit.sum()), n)),
            "set_size": float(size.mean()), "decided": float(single.double().mean()),
            "decided_accuracy": decided_right / int(single.sum()) if single.any() else None,
            "per_class": {"coverage": per_class_cov, "set_size": per_class_size}}


def conformal(val: dict[str, torch.Tensor], val_labels: torch.Tensor, test: dict[str, torch.Tensor],
              labels: torch.Tensor, coverage: float, confidence: float | None = None, seed: int = 0
              ) -> dict[str, Any]:
    """Every method's threshold per network (fitted on ``val``; None: too few images for the
    coverage, so every class is in every set) and its sets on ``test``. APS and RAPS draw their
    uniform numbers from ``seed``, one per image of each split, the same for every network."""
    out: dict[str, Any] = {"target": coverage, "confidence": confidence, "default": DEFAULT_METHOD, "methods": {}}
    g = np.random.default_rng([seed, 8111])
    u_val, u_test = g.random(len(val_labels)), g.random(len(labels))
    for method in METHODS:
        per = {}
        random = method != "lac"
        for name, p in test.items():
            qhat = threshold(val[name], val_labels, coverage, method, confidence, u_val if random else None)
            sets = torch.from_numpy(prediction_sets(p.numpy(), qhat, method, u_test if random else None))
            per[name] = {"threshold": None if math.isinf(qhat) else qhat, **set_summary(sets, p, labels)}
        out["methods"][method] = per
    return out

