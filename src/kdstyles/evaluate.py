"""Metrics per network and for the student ensemble (mean of softmax probabilities).

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_recall,
)

from .cohort import Cohort
from .routing import T

ENSEMBLE = "ensemble"


@torch.inference_mode()
def predict_probs(cohort: Cohort, loader, device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Softmax probabilities of every network (and the student ensemble) on a loader, plus labels."""
    was_training = cohort.training
    cohort.eval()
    probs: dict[str, list[torch.Tensor]] = {n: [] for n in cohort.names}
    labels = []
    for x, y, _index in loader:
        outs = cohort(x.to(device, non_blocking=True), record=False)
        for name, out in outs.items():
            probs[name].append(F.softmax(out.logits.float(), dim=1).cpu())
        labels.append(y)
    cohort.train(was_training)
    result = {n: torch.cat(p) for n, p in probs.items()}
    students = cohort.students
    if len(students) > 1:
        result[ENSEMBLE] = torch.stack([result[s] for s in students]).mean(0)
    return result, torch.cat(labels)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest AUROC, ECE (15 bins), NLL."""
    k = probs.shape[1]
    m = {
        "accuracy": multiclass_accuracy(probs, labels, k, average="micro"),
        "balanced_accuracy": multiclass_recall(probs, labels, k, average="macro"),
        "f1": multiclass_f1_score(probs, labels, k, average="macro"),
        "auroc": multiclass_auroc(probs, labels, k, average="macro") if len(labels.unique()) > 1 else torch.nan,
        "ece": multiclass_calibration_error(probs, labels, k, n_bins=15, norm="l1"),
        "nll": F.nll_loss(probs.clamp_min(1e-12).log(), labels),
    }
    return {name: float(v) for name, v in m.items()}


def details(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> dict[str, Any]:
    """Per-class precision/recall/F1, the confusion matrix (rows: true class), and the
    reliability diagram's bins (count, mean confidence, accuracy per confidence bin)."""
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
            "f1": f1.tolist(), "support": confusion.sum(1).tolist(), "reliability": reliability}


def fidelity(teacher: torch.Tensor, student: torch.Tensor) -> dict[str, float]:
    """KL(teacher || student) averaged over samples, and top-1 agreement."""
    kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(1).mean()
    agree = (teacher.argmax(1) == student.argmax(1)).float().mean()
    return {"fidelity_kl": float(kl), "agreement": float(agree)}


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, dict[str, float]]:
    """Metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    out = {name: classification_metrics(p, labels) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(fidelity(probs[T], p))
    return out


def write_json(path: Path, payload: dict[str, Any]) -> None:
    from .checkpoints import write_text

    write_text(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")
