"""Calibration: how honest probabilities are, and temperature scaling to mend them, for every
task that calibrates (:attr:`kdstyles.tasks.Task.calibrates`). A task gives its probabilities
as *rows* (:meth:`kdstyles.tasks.Task.calibration_rows`): single-label classification one row
per image; segmentation one per pixel of a seeded sample; multi-label one yes/no row per image
and label, each label with a temperature of its own. Everything here reads rows."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


PIXELS = 50_000  # segmentation: the pixels (voxels) of a split that calibration rows sample, seeded


def pixel_rows(probs: torch.Tensor, labels: torch.Tensor, count: int = PIXELS
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense probabilities (N, K, ...) as rows (M, K) of at most ``count`` pixels drawn with a fixed
    seed (the same pixels for every network of a split), their labels, and each row's image."""
    k, n = probs.shape[1], len(labels)
    rows, y = probs.movedim(1, -1).reshape(-1, k), labels.reshape(-1)
    idx = torch.arange(len(y))
    if len(y) > count:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:count].sort().values
    return rows[idx], y[idx], idx // (len(y) // n)


def label_rows(probs: torch.Tensor, labels: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multi-label probabilities (N, K) as yes/no rows (N K, 2), their labels, each row's image and
    label: a label's temperature scaling is a 2-class one, softmax([log(1 - p), log p] / T)
    being sigmoid(logit(p) / T)."""
    n, k = probs.shape
    p = probs.reshape(-1)
    return (torch.stack([1 - p, p], 1), labels.reshape(-1).long(), torch.arange(n).repeat_interleave(k),
            torch.arange(k).repeat(n))


def tempered_labels(probs: torch.Tensor, temperatures: list[float]) -> torch.Tensor:
    """Multi-label probabilities (N, K), each label's at its temperature: sigmoid(logit(p) / T_k)."""
    p = probs.double().clamp(1e-12, 1 - 1e-12)
    t = torch.tensor(temperatures, dtype=torch.float64)
    return torch.sigmoid((p.log() - (1 - p).log()) / t).to(probs.dtype)


def classwise_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., 2019): for each class k, the expected gap between the predicted
    probability of k and how often k is the label, over ``n_bins`` equal-width bins of that
    probability (weighted by the share of images in each bin); the mean over classes. Unlike ECE,
    which looks at the top class only, it sees every class's probability."""
    n, k = probs.shape
    total = 0.0
    for c in range(k):
        p, hit = probs[:, c].double(), (labels == c).double()
        bins = torch.clamp((p * n_bins).long(), max=n_bins - 1)
        gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins, p - hit)
        total += float(gap.abs().sum() / n)  # sum over bins of |mean p - mean hit| * count / n
    return total / k


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The multiclass Brier score (Brier, 1950): the mean over images of the squared distance
    between the probability vector and the label's one-hot vector (0 is perfect, 2 the worst)."""
    onehot = F.one_hot(labels, probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).mean())


TEMPERATURES = (0.05, 20.0)  # the range a temperature is searched in


def tempered(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities at a temperature (Guo et al., 2017): softmax(log p / T). A network's softmax
    outputs give the same as its logits divided by T (log p is the logits up to a constant per
    image); the ensemble's mean probabilities are tempered as one model's."""
    return torch.softmax(probs.double().clamp_min(1e-12).log() / temperature, 1).to(probs.dtype)


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor, steps: int = 60) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` under
    :func:`tempered` probabilities (one number: the ranking of classes, hence accuracy, is
    unchanged). The NLL is convex in 1/T, so a golden-section search over log T in
    ``TEMPERATURES`` finds it; deterministic, no optimiser state."""
    logp = probs.double().clamp_min(1e-12).log()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logp / math.exp(log_t), labels))

    lo, hi = math.log(TEMPERATURES[0]), math.log(TEMPERATURES[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def top_label_ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """ECE of the top class (as torchmetrics' l1 ``multiclass_calibration_error``), for rows of
    ``probs`` (M, K): the gap between confidence and accuracy in each of ``n_bins`` equal-width
    confidence bins, weighted by the bin's share of rows. ``weights`` (..., M): how often each row
    counts (a bootstrap draw's multiplicities), one ECE per leading index."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)  # (lo, hi] bins, as torchmetrics
    w = torch.ones(len(conf), dtype=torch.float64) if weights is None else weights.double()
    gap = torch.zeros(*w.shape[:-1], n_bins, dtype=torch.float64)
    gap.scatter_add_(-1, bins.expand_as(w), w * (conf.double() - correct))
    return gap.abs().sum(-1) / w.sum(-1)


def ece_change(before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor | None = None,
               label: torch.Tensor | None = None, draws: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """The change in test ECE from ``before`` to ``after`` (calibration rows of the same images),
    with a 95% paired bootstrap interval: the images drawn again with replacement ``draws``
    times, both ECEs recomputed on each draw (ECE is not a mean over images). ``owner``: each
    row's image (rows of one image are drawn together; None: a row is an image); ``label``:
    each row's label, the ECE then the mean of the labels' (multi-label)."""
    g = torch.Generator().manual_seed(seed)
    owner = torch.arange(len(labels)) if owner is None else owner
    n = int(owner.max()) + 1
    groups = [None] if label is None else [label == k for k in range(int(label.max()) + 1)]

    def ece(rows: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        parts = [top_label_ece(rows if m is None else rows[m], labels if m is None else labels[m],
                               weights=None if w is None else (w if m is None else w[..., m])) for m in groups]
        return torch.stack(parts).mean(0)

    change = float(ece(after, None) - ece(before, None))
    diffs = []
    for chunk in range(0, draws, 100):
        k = min(100, draws - chunk)
        idx = torch.randint(0, n, (k, n), generator=g)
        counts = torch.zeros(k, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(k, n, dtype=torch.float64))
        w = counts[:, owner]
        diffs.append(ece(after, w) - ece(before, w))
    d = torch.cat(diffs)
    return change, float(d.quantile(0.025)), float(d.quantile(0.975))


def temperatures(rows: torch.Tensor, labels: torch.Tensor, label: torch.Tensor | None, count: int = 0
                 ) -> float | list[float]:
    """The temperature of a network's calibration rows (:func:`fit_temperature`), or, where rows
    belong to labels (``label``: each row's; ``count`` labels), one per label."""
    if label is None:
        return fit_temperature(rows, labels)
    return [fit_temperature(rows[label == k], labels[label == k]) if bool((label == k).any()) else 1.0
            for k in range(count)]


def summary(rows: torch.Tensor, labels: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, Any]:
    """How calibrated the rows are: ECE of the top class (15 bins), classwise ECE, the Brier score
    and the NLL; where rows belong to labels, each label's too (``per_label``) and their mean."""
    def of(r: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"ece": float(top_label_ece(r, y)), "cw_ece": classwise_ece(r, y), "brier": brier(r, y),
                "nll": float(F.nll_loss(r.double().clamp_min(1e-12).log(), y))}

    if label is None:
        return of(rows, labels)
    each = [of(rows[label == k], labels[label == k]) for k in range(int(label.max()) + 1)]
    out: dict[str, Any] = {k: sum(e[k] for e in each) / len(each) for k in each[0]}
    out["per_label"] = {k: [e[k] for e in each] for k in each[0]}
    return out


def temperature_words(t: float | list[float]) -> str:
    """A fitted temperature, or a multi-label network's per-label temperatures, in words."""
    if isinstance(t, (int, float)):
        return f"temperature {t:.3f}"
    return f"a temperature per label, {min(t):.3f} to {max(t):.3f}"
