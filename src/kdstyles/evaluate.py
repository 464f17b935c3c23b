"""Predictions of every network and the student ensemble on a loader, and their scores.

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``; what is measured is the task's (``cohort.task.metrics``),
plus fidelity to the teacher when there is one.

Images (and volumes of one shape) are scored all together. Whole volumes that may differ
in shape (trained on patches, ``loader.dataset.window``) are covered by sliding windows,
one volume at a time; segmentation scores them one by one (every metric is then the mean
over volumes of its value on each, with distances in mm from each volume's spacing), while
detection pools every volume's boxes, as mAP is not a mean over images (:func:`one_by_one`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .cohort import Cohort
from .routing import ENSEMBLE, T


def network_outputs(cohort: Cohort, x: torch.Tensor, skip: frozenset[str] = frozenset(), window=None
                    ) -> dict[str, torch.Tensor]:
    """Every network's logits on a batch (those in ``skip`` left out); with a ``window``
    (:class:`~kdstyles.data.Window`), on windows of it tiling the input, stitched back."""
    def run(patch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: o.logits for n, o in cohort(patch, record=False, skip=skip).items()}

    if window is None:
        return run(x)
    from monai.inferers import sliding_window_inference

    # windows run where the networks are; the whole-volume outputs are stitched in host memory (a
    # 512x512x300 CT's logits are about 1 GB per network and output)
    return sliding_window_inference(x, (window.size,) * (x.ndim - 2), window.batch, run, overlap=window.overlap,
                                    mode="gaussian", sw_device=x.device, device=torch.device("cpu"))


def _activated(cohort: Cohort, x: torch.Tensor, skip: frozenset[str] = frozenset(), window=None
               ) -> dict[str, torch.Tensor]:
    """Every network's activated and condensed outputs, and the students' ensemble."""
    task, students = cohort.task, cohort.students
    logits = network_outputs(cohort, x, skip, window)
    active = {name: task.activate(logits[name]) for name in cohort.names if name in logits}
    if len(students) > 1:  # students are never frozen: all of them ran on this batch
        active[ENSEMBLE] = task.ensemble(active[s] for s in students)
    return {name: task.condense(p).cpu() for name, p in active.items()}


def one_by_one(loader, task) -> bool:
    """Whether a split's whole volumes are scored one by one (:func:`score_volumes`): volumes on
    sliding windows, for a task whose metrics are means over images (not detection's mAP nor
    multi-label's mean AUROC, whose outputs are pooled by :func:`predict_probs`)."""
    return window_of(loader) is not None and not task.keeps_outputs()


def window_of(loader):
    """The sliding windows that cover a loader's whole volumes (``dataset.window``), or None
    (images; volumes of one shape; a plain list of batches)."""
    return getattr(getattr(loader, "dataset", None), "window", None)


@torch.inference_mode()
def predict_probs(cohort: Cohort, loader, device: torch.device, known: dict[str, torch.Tensor] | None = None
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Probabilities of every network (and the student ensemble) on a loader, as the task
    activates and condenses them batch by batch (softmax; decoded boxes for detection), plus
    labels. Networks in ``known`` (results of an earlier pass) are not run again. Whole volumes
    (``loader.dataset.window``) are covered by sliding windows, one per batch."""
    known = known or {}
    window = window_of(loader)
    students = cohort.students
    was_training = cohort.training
    cohort.eval()
    names = [n for n in cohort.names if n not in known] + ([ENSEMBLE] if len(students) > 1 else [])
    probs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels = []
    for x, y, _index in loader:
        for name, p in _activated(cohort, x.to(device, non_blocking=True), frozenset(known), window).items():
            probs[name].append(p)
        labels.append(y)
    cohort.train(was_training)
    result = {n: known[n] if n in known else torch.cat(probs[n]) for n in cohort.names}
    if len(students) > 1:
        result[ENSEMBLE] = torch.cat(probs[ENSEMBLE])
    return result, torch.cat(labels)


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor, task, spacing=None) -> dict[str, dict[str, float]]:
    """The task's metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    out = {name: task.metrics(p, labels, spacing) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(task.fidelity(probs[T], p))
    return out


@dataclass
class VolumeScores:
    """Whole volumes scored one by one: each volume's scores (``rows``), and the first
    ``keep`` volumes' labels and probabilities (for overlays)."""

    rows: list[dict[str, dict[str, float]]] = field(default_factory=list)
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    details: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    probs: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def metrics(self) -> dict[str, dict[str, float]]:
        return mean_rows(self.rows)

    def mean_details(self) -> dict[str, dict[str, Any]]:
        """Each network's details (lists of numbers) averaged over volumes."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.details[0] if self.details else ():
            out[name] = {k: [_nanmean([d[name][k][j] for d in self.details]) for j in range(len(v))]
                         for k, v in self.details[0][name].items()}
        return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def mean_rows(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-volume scores averaged over volumes (NaN values, e.g. a distance to an absent class, left out)."""
    if not rows:
        return {}
    return {n: {k: _nanmean([r[n][k] for r in rows]) for k in rows[0][n]} for n in rows[0]}


@torch.inference_mode()
def score_volumes(cohort: Cohort, loader, device: torch.device, keep: int = 0) -> VolumeScores:
    """Score whole volumes one by one with sliding windows (``loader.dataset.window``)."""
    ds, task = loader.dataset, cohort.task
    was_training = cohort.training
    cohort.eval()
    out = VolumeScores()
    for x, y, index in loader:
        probs = _activated(cohort, x.to(device, non_blocking=True), window=ds.window)
        spacing = ds.spacing[int(index[0])] if ds.spacing is not None else None
        out.rows.append(score(probs, y, task, spacing))
        out.details.append({n: task.details(p, y) for n, p in probs.items()})
        for n, p in probs.items():
            for k, v in task.per_image(p, y).items():
                out.per_image.setdefault(n, {}).setdefault(k, []).extend(v)
        if len(out.labels) < keep:
            out.labels.append(y[0])
            for n, p in probs.items():
                out.probs.setdefault(n, []).append(p[0])
    cohort.train(was_training)
    return out
