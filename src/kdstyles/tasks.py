"""What depends on the task (classification or segmentation), in one place: the
supervised loss, the output shape, the metrics, and the metric that selects checkpoints.
The engine and the cohort ask the task; they never ask which method they run.

Segmentation outputs logits (B, K, H, W) with K >= 2: a binary mask is two classes
(background, foreground), so the predictions style's KL over classes is complete at
every pixel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .errors import KDError


class Classification:
    name = "classification"
    loss_name = "ce"
    selection = "accuracy"
    metric_names = ("accuracy", "balanced_accuracy", "f1", "auroc", "ece")

    def __init__(self, num_classes: int, dice_weight: float = 1.0, hd95: bool = False):
        self.num_classes = num_classes

    def supervised(self, logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=class_weights)

    def check_output(self, name: str, logits: torch.Tensor, sample: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise KDError(f"networks.{name}: output shape {tuple(logits.shape)} does not match "
                          f"(batch, {self.num_classes} classes); the network must return class logits")

    def metrics(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        from .evaluate import classification_metrics

        return classification_metrics(probs, labels)

    def details(self, probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        from .evaluate import details

        return details(probs, labels)


class Segmentation(Classification):
    name = "segmentation"
    loss_name = "dice_ce"
    selection = "dice"
    metric_names = ("dice", "iou")

    def __init__(self, num_classes: int, dice_weight: float = 1.0, hd95: bool = False):
        from monai.losses import DiceCELoss

        super().__init__(num_classes)
        self.hd95 = hd95
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=1.0)
        if hd95:
            self.metric_names = ("dice", "iou", "hd95")

    def supervised(self, logits, y, class_weights):
        return self.dice_ce(logits.float(), y.unsqueeze(1))

    def check_output(self, name, logits, sample):
        want = (self.num_classes, *sample.shape[2:])
        if logits.ndim != 4 or tuple(logits.shape[1:]) != want:
            raise KDError(f"networks.{name}: output shape {tuple(logits.shape)} does not match (batch, "
                          f"{self.num_classes} classes, {sample.shape[2]}, {sample.shape[3]}); a segmentation "
                          "network returns per-pixel class logits at the input's size")

    def metrics(self, probs, labels):
        return segmentation_metrics(probs, labels, self.hd95)

    def details(self, probs, labels):
        dice, _ = per_image_scores(probs.argmax(1), labels, probs.shape[1])
        return {"per_image_dice": dice.tolist()}


def per_image_scores(pred: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per image, averaged over the foreground classes 1..K-1.

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
    return torch.stack(dice).mean(0), torch.stack(iou).mean(0)


def hd95_per_image(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """95th-percentile Hausdorff distance (pixels) per image over foreground classes;
    NaN where a class is missing from the prediction or the ground truth."""
    try:
        from monai.metrics import compute_hausdorff_distance
    except ImportError as exc:  # pragma: no cover - MONAI ships it
        raise KDError(f"hd95 needs monai.metrics ({exc})") from None
    try:
        import scipy  # noqa: F401  (MONAI's distance transform)
    except ImportError:
        raise KDError("eval.hd95: the Hausdorff distance needs scipy: pip install scipy") from None
    p1 = F.one_hot(pred, k).permute(0, 3, 1, 2).float()
    t1 = F.one_hot(target, k).permute(0, 3, 1, 2).float()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = compute_hausdorff_distance(p1, t1, include_background=False, percentile=95)
    d = torch.where(torch.isinf(d), torch.nan, d)
    return torch.nanmean(d, dim=1)


def segmentation_metrics(probs: torch.Tensor, labels: torch.Tensor, hd95: bool = False) -> dict[str, float]:
    pred = probs.argmax(1)
    dice, iou = per_image_scores(pred, labels, probs.shape[1])
    out = {"dice": float(dice.mean()), "iou": float(iou.mean()),
           "pixel_accuracy": float((pred == labels).float().mean()),
           "nll": float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))}
    if hd95:
        out["hd95"] = float(torch.nanmean(hd95_per_image(pred, labels, probs.shape[1])))
    return out


def make_task(name: str, num_classes: int, dice_weight: float = 1.0, hd95: bool = False) -> Classification:
    return {"classification": Classification, "segmentation": Segmentation}[name](num_classes, dice_weight, hd95)
