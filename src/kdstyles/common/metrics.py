"""Every metric kdstyles reports, and the one registry of their names.

:data:`METRICS` is the single list of metric names: each with the label tables print, its
direction (higher or lower is better), the task it belongs to (``None``: any task) and
whether it can select checkpoints. The config, the CLI tables, the report, compare's
results.csv and the model card read it; nobody repeats the names.

The functions below compute them from probabilities (N, K) or per-pixel (N, K, H, W) /
per-voxel (N, K, D, H, W) and labels; they import nothing of kdstyles but errors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import KDError
from .calibration import brier, classwise_ece, label_rows, pixel_rows, summary, top_label_ece


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # as tables print it
    higher_is_better: bool = True
    task: str | None = None  # None: reported for every task
    selectable: bool = False  # may select checkpoints (train.selection_metric)
    table: bool = True  # a column of the paper-style tables
    headline: bool = False  # one of the task's two figures in short summaries (the demo)
    per_image: bool = False  # a mean over test images: eval.json keeps each image's value (paired intervals)
    drawn: bool = False  # not a mean over images: comparisons draw test images again from outputs.npz


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("accuracy", "accuracy", task="classification", selectable=True, headline=True, per_image=True),
    Metric("balanced_accuracy", "bal. accuracy", task="classification", selectable=True),
    Metric("f1", "macro-F1", task="classification", selectable=True, headline=True),
    Metric("auroc", "AUROC", task="classification", selectable=True),
    Metric("ece", "ECE", False, task="classification"),
    Metric("cw_ece", "classwise ECE", False, task="classification", table=False),
    Metric("brier", "Brier", False, task="classification", table=False),
    Metric("aurc", "AURC", False, task="classification", table=False),
    # evaluate --calibrated (compare does it for classification): the test split at the temperatures fitted on the
    # validation split, and the conformal prediction sets (engine.conformal's default method) at the target coverage
    Metric("temperature", "temperature", False, task="classification", table=False),
    Metric("ece_calibrated", "ECE calibrated", False, task="classification", table=False),
    Metric("coverage", "set coverage", task="classification", table=False),
    Metric("set_size", "set size", False, task="classification", table=False),
    Metric("mean_auroc", "mean AUROC", task="multilabel", selectable=True, headline=True, drawn=True),
    Metric("mean_ap", "mean AP", task="multilabel", selectable=True, drawn=True),
    Metric("label_f1", "macro-F1@0.5", task="multilabel", selectable=True, headline=True),
    Metric("label_accuracy", "label acc", task="multilabel", selectable=True, per_image=True),
    Metric("exact_match", "exact match", task="multilabel"),
    Metric("dice", "Dice", task="segmentation", selectable=True, headline=True, per_image=True),
    Metric("iou", "IoU", task="segmentation", selectable=True, headline=True, per_image=True),
    Metric("hd95", "HD95", False, task="segmentation"),  # pixels (images) or mm (volumes)
    Metric("asd", "ASD", False, task="segmentation"),  # average symmetric surface distance, likewise
    Metric("pixel_accuracy", "pixel acc", task="segmentation"),
    Metric("map", "mAP", task="detection", selectable=True, headline=True, drawn=True),
    Metric("ap50", "AP50", task="detection", selectable=True, headline=True, drawn=True),
    Metric("ap75", "AP75", task="detection", selectable=True, drawn=True),
    Metric("mean_recall", "mean recall", task="detection", selectable=True, drawn=True),
    *(Metric(f"froc_{r:g}", f"FROC@{r:g}", task="detection", drawn=True) for r in (0.5, 1.0, 2.0, 4.0)),
    Metric("nll", "NLL", False, table=False),
    Metric("fidelity_kl", "KL(T||S)", False, table=False),
    Metric("agreement", "agreement", table=False),
    Metric("parameters", "params", False, table=False),
    Metric("compression", "T/S", table=False),
)}


# A registered task whose metrics are another's (a plugin's subclass of a built-in task):
# its name -> the task whose metrics it reports (tasks.register_task fills it)
REPORTS_AS: dict[str, str] = {}


def task_metrics(task: str, present: Any = None, headline: bool = False) -> list[str]:
    """The table metrics of a task, in registry order (only those in ``present`` if given;
    only its two headline figures with ``headline``)."""
    task = REPORTS_AS.get(task, task)
    return [m.name for m in METRICS.values() if m.task == task and m.table and (present is None or m.name in present)
            and (m.headline or not headline)]


def paired_metric(names: Any) -> str | None:
    """The first of ``names`` (in registry order) that comparisons can pair image by image: its
    per-image values are in eval.json, or it is drawn again from outputs.npz."""
    return next((m.name for m in METRICS.values() if (m.per_image or m.drawn) and m.name in names), None)


def lower_is_better(name: str) -> bool:
    return name in METRICS and not METRICS[name].higher_is_better


def label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name


def task_of(names: Any) -> str:
    """The task whose metrics appear among ``names`` (e.g. the keys of an eval.json entry)."""
    tasks = [METRICS[n].task for n in names if n in METRICS and METRICS[n].task]
    return max(set(tasks), key=tasks.count) if tasks else "classification"


# ----------------------------------------------------------------------------- classification


def errors_by_confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 where the top class is wrong, 0 where right, the most confident image first (ties in
    their order)."""
    conf, pred = probs.max(1)
    return (pred != labels).double()[conf.argsort(descending=True, stable=True)]


def aurc(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The area under the risk-coverage curve (Geifman et al., 2019): images ranked by confidence
    (the top probability), the error rate among the k most confident, averaged over k = 1..N.
    0 when every error is less confident than every correct answer; lower is better."""
    wrong = errors_by_confidence(probs, labels)
    return float((wrong.cumsum(0) / torch.arange(1, len(wrong) + 1, dtype=torch.float64)).mean())


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest AUROC, ECE (15 bins), classwise
    ECE (15 bins), Brier score, AURC, NLL."""
    from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_auroc,
                                                        multiclass_calibration_error, multiclass_f1_score,
                                                        multiclass_recall)

    k = probs.shape[1]
    m = {
        "accuracy": multiclass_accuracy(probs, labels, k, average="micro"),
        "balanced_accuracy": multiclass_recall(probs, labels, k, average="macro"),
        "f1": multiclass_f1_score(probs, labels, k, average="macro"),
        "auroc": multiclass_auroc(probs, labels, k, average="macro") if len(labels.unique()) > 1 else torch.nan,
        "ece": multiclass_calibration_error(probs, labels, k, n_bins=15, norm="l1"),
        "cw_ece": classwise_ece(probs, labels),
        "brier": brier(probs, labels),
        "aurc": aurc(probs, labels),
        "nll": F.nll_loss(probs.clamp_min(1e-12).log(), labels),
    }
    return {name: float(v) for name, v in m.items()}


def classification_details(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> dict[str, Any]:
    """Per-class precision/recall/F1, the confusion matrix (rows: true class), the reliability
    diagram's bins (count, mean confidence, accuracy per confidence bin) and the risk-coverage
    curve."""
    k = probs.shape[1]
    pred = probs.argmax(1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    tp = confusion.diag().float()
    precision = tp / confusion.sum(0).clamp_min(1)
    recall = tp / confusion.sum(1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    conf, correct = probs.max(1).values, (pred == labels).float()
    bins = torch.clamp((conf * n_bins).long(), max=n_bins - 1)
    reliability = []
    for b in range(n_bins):
        mask = bins == b
        n = int(mask.sum())
        reliability.append({"count": n, "confidence": float(conf[mask].mean()) if n else None,
                            "accuracy": float(correct[mask].mean()) if n else None})
    return {"confusion": confusion.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "f1": f1.tolist(), "support": confusion.sum(1).tolist(), "reliability": reliability,
            "risk_coverage": risk_coverage(probs, labels)}


def risk_coverage(probs: torch.Tensor, labels: torch.Tensor, points: int = 10) -> list[dict[str, float]]:
    """The risk-coverage curve (Geifman & El-Yaniv, 2017): the error among the most confident
    images at coverages 1/points, 2/points, ..., 1 (what a user gets by letting the model
    abstain on the least confident rest)."""
    wrong = errors_by_confidence(probs, labels)
    n = len(wrong)
    out = []
    for i in range(1, points + 1):
        kept = max(1, round(n * i / points))
        out.append({"coverage": kept / n, "risk": float(wrong[:kept].mean())})
    return out


# ----------------------------------------------------------------------------- multi-label


def multilabel_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Probabilities (N, K) per label against multi-hot labels: the mean over labels of AUROC
    and of average precision (labels with positives and negatives only), macro-F1 at 0.5,
    the share of label decisions that are right, exact-set matches, the mean binary NLL, and
    the ECE and Brier score of each label's yes/no, averaged over labels."""
    y = labels.long()
    per_label = multilabel_details(probs, labels)
    pred = (probs >= 0.5).long()
    p = probs.float().clamp(1e-7, 1 - 1e-7)
    ranked = [v for v in per_label["auroc"] if v is not None]
    m = {
        "mean_auroc": sum(ranked) / len(ranked) if ranked else float("nan"),
        "mean_ap": (sum(v for v in per_label["average_precision"] if v is not None) / len(ranked)
                    if ranked else float("nan")),
        "label_f1": sum(per_label["f1"]) / len(per_label["f1"]),
        "label_accuracy": (pred == y).float().mean(),
        "exact_match": (pred == y).all(1).float().mean(),
        "nll": F.binary_cross_entropy(p, y.float()),
    }
    rows, ys, _, label = label_rows(probs, labels)
    calibrated = summary(rows, ys, label)  # each label's yes/no, then the mean over labels
    m |= {"ece": calibrated["ece"], "brier": calibrated["brier"]}
    return {name: float(v) for name, v in m.items()}


class LabelRanks:
    """Multi-label probabilities (N, K) and multi-hot labels of the test images, kept so that mean
    AUROC and mean AP (:func:`multilabel_metrics`) of any multiset of the images (a bootstrap
    draw) follow from how often each image is drawn, in one sparse product per draw.

    Per label, only the distinct probabilities of its positive images matter (levels, highest
    first). Each negative image falls between two levels (or ties with one); AUROC is the
    Mann-Whitney statistic (the weight of negatives below each positive, a tie counting half,
    as the ROC's trapezoids do) and AP the step-wise sum over levels of recall gained times
    precision there (torchmetrics' average precision). Numpy and scipy only."""

    def __init__(self, probs: Any, labels: Any):
        import numpy as np
        from scipy import sparse

        probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels) > 0.5
        self.images, self.labels = len(labels), labels
        self.slices: list[tuple[int, int] | None] = []  # per label: (first column, levels)
        rows, cols, start = [], [], 0
        for k in range(labels.shape[1]):
            pos = labels[:, k]
            if pos.all() or not pos.any():
                self.slices.append(None)  # one value only: AUROC and AP undefined on any draw
                continue
            levels = np.unique(probs[pos, k])  # ascending
            n = len(levels)
            above = n - np.searchsorted(levels, probs[:, k], side="right")  # levels above each image
            tied = np.searchsorted(levels, probs[:, k], side="left") < n - above  # equal to a level
            neg = np.flatnonzero(~pos)
            # columns: negatives by how many levels lie above them (n + 1), negatives tied with a
            # level (n), positives by level (n); levels counted from the highest
            rows += [neg, neg[tied[neg]], np.flatnonzero(pos)]
            cols += [start + above[neg], start + n + 1 + above[neg[tied[neg]]],
                     start + 2 * n + 1 + above[pos]]
            self.slices.append((start, n))
            start += 3 * n + 1
        r, c = np.concatenate(rows or [np.zeros(0, int)]), np.concatenate(cols or [np.zeros(0, int)])
        self.columns = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(self.images, start))

    def same_images(self, other: Any) -> bool:
        import numpy as np

        return isinstance(other, LabelRanks) and np.array_equal(self.labels, other.labels)

    def metrics(self, counts: Any = None) -> dict[str, Any]:
        """``{"mean_auroc": (k,), "mean_ap": (k,)}`` for the images drawn ``counts`` (k, N) times
        each (all once when None); a label without positives or negatives in a draw is left out."""
        import numpy as np

        counts = np.ones((1, self.images)) if counts is None else np.asarray(counts, dtype=np.float64)
        weights = np.asarray((self.columns.T @ counts.T).T)  # (k, columns): drawn images per column
        auroc = np.full((len(self.slices), len(counts)), np.nan)
        ap = np.full_like(auroc, np.nan)
        for k, at in enumerate(self.slices):
            if at is None:
                continue
            start, n = at
            between = weights[:, start:start + n + 1]  # negatives with j levels above them
            tied = weights[:, start + n + 1:start + 2 * n + 1]
            pos = weights[:, start + 2 * n + 1:start + 3 * n + 1]
            n_pos, n_neg = pos.sum(1), between.sum(1)
            seen_neg = np.cumsum(between, 1)[:, :n]  # negatives at or above each level (ties included)
            below = n_neg[:, None] - seen_neg  # and strictly below it
            with np.errstate(invalid="ignore", divide="ignore"):
                both = (n_pos > 0) & (n_neg > 0)
                auroc[k] = np.where(both, (pos * (below + tied / 2)).sum(1) / (n_pos * n_neg), np.nan)
                tp = np.cumsum(pos, 1)
                ap[k] = np.where(both, (pos / n_pos[:, None] * tp / np.maximum(tp + seen_neg, 1e-300)).sum(1),
                                 np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw where no label has both values
            return {"mean_auroc": np.nanmean(auroc, 0), "mean_ap": np.nanmean(ap, 0)}


def multilabel_details(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Per label: AUROC and average precision (None where a label has one value only), F1 at
    0.5 and the number of positive images."""
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    y = labels.long()
    auroc, ap, f1 = [], [], []
    pred = (probs >= 0.5).long()
    for k in range(y.shape[1]):
        both = 0 < int(y[:, k].sum()) < len(y)
        auroc.append(float(binary_auroc(probs[:, k], y[:, k])) if both else None)
        ap.append(float(binary_average_precision(probs[:, k], y[:, k])) if both else None)
        tp = int(((pred[:, k] == 1) & (y[:, k] == 1)).sum())
        wrong = int((pred[:, k] != y[:, k]).sum())
        f1.append(2 * tp / max(2 * tp + wrong, 1))
    return {"auroc": auroc, "average_precision": ap, "f1": f1, "support": y.sum(0).tolist()}


def bernoulli_kl(log_p: torch.Tensor, log_1p: torch.Tensor, log_q: torch.Tensor, log_1q: torch.Tensor
                 ) -> torch.Tensor:
    """Elementwise KL(p || q) of Bernoulli variables given as log-probabilities of yes and no
    (from logits: ``F.logsigmoid(z)`` and ``F.logsigmoid(-z)``, stable at any scale)."""
    return log_p.exp() * (log_p - log_q) + log_1p.exp() * (log_1p - log_1q)


def bernoulli_fidelity(teacher: torch.Tensor, student: torch.Tensor) -> dict[str, float]:
    """Per-label probabilities: KL(teacher || student) of each label's Bernoulli, summed over
    labels and averaged over images, and the share of label decisions (at 0.5) they agree on."""
    t, s = teacher.float().clamp(1e-7, 1 - 1e-7), student.float().clamp(1e-7, 1 - 1e-7)
    kl = bernoulli_kl(t.log(), (1 - t).log(), s.log(), (1 - s).log()).sum(1).mean()
    agree = ((teacher >= 0.5) == (student >= 0.5)).float().mean()
    return {"fidelity_kl": float(kl), "agreement": float(agree)}


# ----------------------------------------------------------------------------- segmentation


def per_class_scores(pred: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of every foreground class 1..K-1 in every image (or volume): two (K-1, N)
    tensors.

    A class absent from both the ground truth and the prediction of an image scores 1
    (nothing to find, nothing found); absent from the ground truth but predicted, 0."""
    dice, iou = [], []
    for c in range(1, k):
        p, t = (pred == c).flatten(1).float(), (target == c).flatten(1).float()
        inter, ps, ts = (p * t).sum(1), p.sum(1), t.sum(1)
        union = ps + ts - inter
        both_empty = (ps + ts) == 0
        dice.append(torch.where(both_empty, 1.0, 2 * inter / (ps + ts).clamp_min(1)))
        iou.append(torch.where(both_empty, 1.0, inter / union.clamp_min(1)))
    return torch.stack(dice), torch.stack(iou)


def per_image_scores(pred: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per image, averaged over the foreground classes 1..K-1 (:func:`per_class_scores`)."""
    dice, iou = per_class_scores(pred, target, k)
    return dice.mean(0), iou.mean(0)


def surface_distances(pred: torch.Tensor, target: torch.Tensor, k: int, spacing=None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """95th-percentile Hausdorff distance and average symmetric surface distance per image
    (or volume), averaged over the foreground classes: in pixels, or in millimetres when
    ``spacing`` (the voxel size along each spatial axis) is given. NaN where a class is
    missing from the prediction or the ground truth."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    try:
        import scipy  # noqa: F401  (MONAI's distance transform)
    except ImportError:
        raise KDError("tasks.segmentation.hd95: surface distances need scipy: pip install scipy") from None
    p1 = F.one_hot(pred, k).movedim(-1, 1).float()
    t1 = F.one_hot(target, k).movedim(-1, 1).float()
    spacing = None if spacing is None else [float(v) for v in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p1, t1, include_background=False, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(p1, t1, include_background=False, symmetric=True, spacing=spacing)
    return tuple(torch.nanmean(torch.where(torch.isinf(d), torch.nan, d), dim=1) for d in (hd, asd))


def segmentation_metrics(probs: torch.Tensor, labels: torch.Tensor, hd95: bool = False,
                         spacing=None) -> dict[str, float]:
    """Dice and IoU (means over images of the foreground classes' mean), pixel accuracy, NLL, the
    ECE of a seeded sample of pixels; with ``hd95`` also HD95 and average surface distance (mm
    with ``spacing``)."""
    pred = probs.argmax(1)
    dice, iou = per_image_scores(pred, labels, probs.shape[1])
    out = {"dice": float(dice.mean()), "iou": float(iou.mean()),
           "pixel_accuracy": float((pred == labels).float().mean()),
           "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels)),
           "ece": float(top_label_ece(*pixel_rows(probs, labels)[:2]))}
    if hd95:
        hd, asd = surface_distances(pred, labels, probs.shape[1], spacing)
        out["hd95"], out["asd"] = float(torch.nanmean(hd)), float(torch.nanmean(asd))
    return out


def segmentation_details(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Dice and IoU of each foreground class (means over images), background excluded."""
    dice, iou = per_class_scores(probs.argmax(1), labels, probs.shape[1])
    return {"dice_per_class": dice.mean(1).tolist(), "iou_per_class": iou.mean(1).tolist()}


# ----------------------------------------------------------------------------- any task


def fidelity(teacher: torch.Tensor, student: torch.Tensor) -> dict[str, float]:
    """KL(teacher || student) averaged over samples (and pixels), and top-1 agreement."""
    kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(1).mean()
    agree = (teacher.argmax(1) == student.argmax(1)).float().mean()
    return {"fidelity_kl": float(kl), "agreement": float(agree)}
