"""Split-conformal prediction sets and selective prediction for single-label classification.

A prediction set holds every class whose nonconformity score is at most a threshold fitted
on the validation split, so that, over images exchangeable with the validation split's, the
set holds the true class with probability at least the target coverage 1 - alpha (Vovk et
al., 2005; Angelopoulos & Bates, 2021). Three scores:

- ``lac`` (least ambiguous set-valued classifier, Sadinle et al., 2019): 1 - p_y. The
  plain method: the smallest sets on average, but the same threshold for easy and hard images.
- ``aps`` (adaptive prediction sets, Romano et al., 2020): the probability mass of the
  classes ranked at or above y, sum_{j: p_j >= p_y} p_j. Sets grow where the model is unsure.
  (Not randomised: a set includes its last class whole, which can only raise coverage.)
- ``raps`` (regularised APS, Angelopoulos et al., 2021): APS plus ``lam`` * max(0, rank(y) -
  ``k_reg``), which keeps sets from growing into the long tail of unlikely classes.

The threshold is the ceil((n + 1)(1 - alpha))-th smallest validation score (infinite when
that exceeds n: every class). Selective prediction (abstaining on the least confident
images) is measured beside it: :func:`kdstyles.common.metrics.aurc` and the risk-coverage
curve of :func:`kdstyles.common.metrics.classification_details`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..common.sets import METHODS, class_scores, prediction_sets

DEFAULT_METHOD = "aps"  # what export --calibrated and predict write: sets that adapt to the image


def threshold(probs: torch.Tensor, labels: torch.Tensor, coverage: float, method: str) -> float:
    """The split-conformal threshold on calibration images (``probs`` of the validation split):
    the ceil((n + 1) * coverage)-th smallest score of the true classes (inf when n is too small)."""
    s = np.sort(class_scores(probs.numpy(), method)[np.arange(len(labels)), labels.numpy()])
    k = math.ceil((len(s) + 1) * coverage)
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
              labels: torch.Tensor, coverage: float) -> dict[str, Any]:
    """Every method's threshold per network (fitted on ``val``; None: too few images for the
    coverage, so every class is in every set) and its sets on ``test``."""
    out: dict[str, Any] = {"target": coverage, "default": DEFAULT_METHOD, "methods": {}}
    for method in METHODS:
        per = {}
        for name, p in test.items():
            qhat = threshold(val[name], val_labels, coverage, method)
            sets = torch.from_numpy(prediction_sets(p.numpy(), qhat, method))
            per[name] = {"threshold": None if math.isinf(qhat) else qhat, **set_summary(sets, p, labels)}
        out["methods"][method] = per
    return out

