"""Conformal prediction sets from class probabilities (numpy only: torch-free ``predict`` writes
them). The scores and methods are described in :mod:`kdstyles.engine.conformal`, which fits the
threshold."""

from __future__ import annotations

import numpy as np

METHODS = ("lac", "aps", "raps")
RAPS_LAMBDA, RAPS_K = 0.01, 1
# float32 probabilities: scores equal to the threshold in exact arithmetic count as equal
TIE = 1e-6


def class_scores(probs: np.ndarray, method: str, u: np.ndarray | None = None) -> np.ndarray:
    """The nonconformity score of every class of every image (N, K): low where the class is likely.
    APS and RAPS: the mass of the classes ranked above the class plus ``u`` (one uniform draw per
    image, (N,)) times its own probability, as Romano et al. randomise it for exact coverage
    (None: its whole probability, which can only raise coverage)."""
    p = np.asarray(probs, dtype=np.float64)
    if method == "lac":
        return 1 - p
    rows = np.arange(len(p))[:, None]
    order = np.argsort(-p, axis=1, kind="stable")
    mass = np.empty_like(p)
    mass[rows, order] = np.cumsum(p[rows, order], axis=1) - p[rows, order]  # the mass ranked above each class
    mass += p * (1.0 if u is None else np.asarray(u, dtype=np.float64)[:, None])
    if method == "aps":
        return mass
    if method == "raps":
        rank = np.empty_like(p)
        rank[rows, order] = np.arange(1, p.shape[1] + 1)
        return mass + RAPS_LAMBDA * np.maximum(rank - RAPS_K, 0)
    raise ValueError(f"conformal method '{method}' is not known; allowed: {', '.join(METHODS)}")


def prediction_sets(probs: np.ndarray, threshold: float | None, method: str, u: np.ndarray | None = None
                    ) -> np.ndarray:
    """(N, K) booleans: the classes in each image's set (``threshold`` None: every class; ``u``: as
    :func:`class_scores`). The top class is always in it (an empty set would say nothing a
    clinician can act on)."""
    p = np.asarray(probs)
    sets = class_scores(p, method, u) <= (np.inf if threshold is None else threshold + TIE)
    sets[np.arange(len(p)), p.argmax(1)] = True
    return sets
