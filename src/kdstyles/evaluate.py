"""Metrics per network and for the student ensemble (mean of softmax probabilities).

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``.
"""

from __future__ import annotations

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
def predict_probs(cohort: Cohort, loader, device: torch.device, known: dict[str, torch.Tensor] | None = None
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Softmax probabilities of every network (and the student ensemble) on a loader, plus
    labels. Networks in ``known`` (probabilities from an earlier pass) are not run again."""
    known = known or {}
    was_training = cohort.training
    cohort.eval()
    probs: dict[str, list[torch.Tensor]] = {n: [] for n in cohort.names if n not in known}
    labels = []
    for x, y, _index in loader:
        outs = cohort(x.to(device, non_blocking=True), record=False, skip=frozenset(known))
        for name, out in outs.items():
            probs[name].append(F.softmax(out.logits.float(), dim=1).cpu())
        labels.append(y)
    cohort.train(was_training)
    result = {n: known[n] if n in known else torch.cat(probs[n]) for n in cohort.names}
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
    """KL(teacher || student) averaged over samples (and pixels), and top-1 agreement."""
    kl = (teacher * (teacher.clamp_min(1e-12).log() - student.clamp_min(1e-12).log())).sum(1).mean()
    agree = (teacher.argmax(1) == student.argmax(1)).float().mean()
    return {"fidelity_kl": float(kl), "agreement": float(agree)}


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor, task=None) -> dict[str, dict[str, float]]:
    """Metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    metrics = task.metrics if task is not None else classification_metrics
    out = {name: metrics(p, labels) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(fidelity(probs[T], p))
    return out


def write_overlays(folder: Path, images: torch.Tensor, labels: torch.Tensor, probs: dict[str, torch.Tensor],
                   mean: list[float], std: list[float]) -> list[Path]:
    """One PNG per test image: the image, its ground truth, and every network's prediction
    (teacher, students, ensemble) side by side, each captioned with its Dice on that image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from .fileio import atomic_write
    from .tasks import per_image_scores

    folder.mkdir(parents=True, exist_ok=True)
    k = next(iter(probs.values())).shape[1]
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.9, 0.2, 0.55), (0.95, 0.2, 0.2, 0.55), (0.2, 0.4, 1, 0.55),
                           (1, 0.8, 0.1, 0.55), (0.8, 0.2, 0.9, 0.55)][:max(k, 2)])
    written = []
    for i in range(len(images)):
        img = images[i] * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        img = img.clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [("image", None), ("ground truth", labels[i])]
        panels += [(name, p[i].argmax(0)) for name, p in probs.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.5))
        for ax, (title, mask) in zip(axes, panels):
            ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
            if mask is not None:
                ax.imshow(mask.numpy(), cmap=cmap, vmin=0, vmax=max(k, 2) - 1, interpolation="nearest")
            if title not in ("image", "ground truth"):
                dice, _ = per_image_scores(mask[None], labels[i][None], k)
                title = f"{title}\nDice {float(dice[0]):.3f}"
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        path = folder / f"test-{i:03d}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=80, bbox_inches="tight"))
        plt.close(fig)
        written.append(path)
    return written
