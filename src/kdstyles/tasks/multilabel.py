"""Multi-label classification: logits (B, K), one yes/no per label (chest X-ray findings,
ChestMNIST), binary cross-entropy, a sigmoid per label, mean AUROC-family metrics.

The ``predictions`` style compares each label's Bernoulli distribution: the softened KL of
sigmoid(z / T) summed over labels, averaged over the batch (times T^2 with ``t2_scaling``).
Feature, attention and relation styles compare maps and embeddings as for any classifier.
Labels are multi-hot (N, K) arrays; a source gives them for ``medmnist`` (chestmnist),
``csv`` (a ``label`` column of ``|``-separated names, empty or ``data.none_label`` for
none; or a 1/0/-1 column per class, ``data.uncertain`` deciding -1), the embedded mosaics
(``synthetic_multi``) and the embedded volumes (``synthetic_vol_multi``: cyst, tumour,
calcification). ``loss.class_weights: balanced`` is BCE's ``pos_weight``; ``data.sampler:
balanced`` draws images by their rarest label (``kdstyles.data.labels``, the multi-hot kind's ``draw_weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import KDError
from .classification import Classification


class Multilabel(Classification):
    name = "multilabel"
    exclusive_classes = False
    classes_are = "gives each class its own probability (a sigmoid per label)"
    loss_name = "bce"
    selection = "mean_auroc"
    sources = ("synthetic", "medmnist", "npz", "csv")
    synthetic = {2: "synthetic_multi", 3: "synthetic_vol_multi"}
    volumes = True  # the embedded volumes' findings, or volume files listed in a CSV (CT-RATE-style findings)
    label_kind = "multi-hot"
    imbalance_remedy = ("loss.class_weights: balanced (each label's positives weighted by its negatives) or "
                        "data.sampler: balanced (images drawn by their rarest label)")
    title = "Multi-label classification"
    output_kind = "labels"
    output_words = "a probability per class (independent sigmoids; predict reports a class at >= 0.5)"

    def supervised(self, logits, y, class_weights):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=class_weights)

    def class_weights(self, counts: list[int], images: int | None):
        """``loss.class_weights: balanced``: each label's positives weighted by its negatives per
        positive in the training split (BCE's ``pos_weight``), so a rare finding counts as much
        as its absence."""
        import torch

        if images is None:
            raise KDError("loss.class_weights: balanced needs the training split's size, which this run folder "
                          "(made by an older kdstyles) does not record; train a new run")
        pos = torch.tensor(counts, dtype=torch.float).clamp_min(1)
        return (images - pos).clamp_min(1) / pos

    def activate(self, logits):
        return logits.float().sigmoid()

    def fidelity(self, teacher, student):
        from ..common.metrics import bernoulli_fidelity

        return bernoulli_fidelity(teacher, student)

    prediction_sets = False  # no single class per image to put in a set

    def calibration_rows(self, probs, labels):
        """Each image's yes/no per label, a temperature per label (labels differ in how often and how
        surely they are found)."""
        from ..common.calibration import label_rows

        return label_rows(probs, labels)

    def tempered(self, probs, temperature):
        from ..common.calibration import tempered_labels

        return tempered_labels(probs, temperature)

    def metrics(self, probs, labels, spacing=None):
        from ..common.metrics import multilabel_metrics

        return multilabel_metrics(probs, labels)

    def details(self, probs, labels) -> dict[str, Any]:
        from ..common.metrics import multilabel_details

        return multilabel_details(probs, labels)

    def per_image(self, probs, labels) -> dict[str, list[float]]:
        return {"label_accuracy": ((probs >= 0.5).long() == labels.long()).float().mean(1).tolist()}

    @classmethod
    def drawable(cls, outputs, labels, num_classes):
        from ..common.metrics import LabelRanks

        return {n: LabelRanks(p, labels) for n, p in outputs.items()}

    def prediction_header(self, class_names, space=None):
        return ["path", "labels", *(f"p_{c}" for c in class_names)]

    def prediction_row(self, path: Path, probs, class_names, out_dir, index, volume=None):
        found = "|".join(c for c, p in zip(class_names, probs) if p >= 0.5)
        return [str(path), found, *(f"{v:.6f}" for v in probs)]
