"""Single-label classification: logits (B, K), cross-entropy, accuracy-family metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import KDError
from .base import Task


class Classification(Task):
    name = "classification"
    calibrates = True
    prediction_sets = True
    loss_name = "ce"
    selection = "accuracy"
    sources = ("synthetic", "medmnist", "npz", "folder", "csv")
    synthetic = {2: "synthetic", 3: "synthetic_vol"}
    spatial_dims = (2, 3)
    arch_hint = "a classifier"
    title = "Classification"
    output_words = "class probabilities (softmax)"

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        classes = getattr(cfg.data, "classes", None)  # sources with a class list
        if classes is not None and len(classes) < 2:
            raise KDError(f"data.classes: needs at least two class names (got {len(classes)}); "
                          "a classifier tells classes apart")

    @classmethod
    def accepts_arch(cls, arch: str) -> bool:
        from ..models.zoo import ARCHS

        return arch not in ARCHS or not ARCHS[arch].dense  # logits: not an encoder-decoder

    def supervised(self, logits, y, class_weights):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), y, weight=class_weights)

    def check_output(self, where, logits, sample):
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise KDError(f"{where}: output shape {tuple(logits.shape)} does not match "
                          f"(batch, {self.num_classes} classes); the network must return class logits")

    def default_tap(self, model, sample):
        from ..models.zoo import default_tap

        return default_tap(model, sample)

    def metrics(self, probs, labels, spacing=None):
        from ..common.metrics import classification_metrics

        return classification_metrics(probs, labels)

    def details(self, probs, labels) -> dict[str, Any]:
        from ..common.metrics import classification_details

        return classification_details(probs, labels)

    def per_image(self, probs, labels) -> dict[str, list[float]]:
        return {"accuracy": (probs.argmax(1) == labels).int().tolist()}

    def prediction_header(self, class_names, space=None):
        return ["path", "prediction", "probability", *(f"p_{c}" for c in class_names)]

    def prediction_row(self, path: Path, probs, class_names, out_dir, index, volume=None):
        k = int(probs.argmax())
        return [str(path), class_names[k], f"{probs[k]:.6f}", *(f"{v:.6f}" for v in probs)]
