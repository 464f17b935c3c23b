"""Predictions of every network and the student ensemble on a loader, and their scores.

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``; what is measured is the task's (``cohort.task.metrics``),
plus fidelity to the teacher when there is one.

One function scores a split (:func:`score_split`), whatever runs the images: a cohort's
networks in training's validation and ``evaluate``, model files in the verification of a
quantized export. Images (and volumes of one shape) are scored all together. Whole volumes
that may differ in shape (trained on patches: the split's ``window``, passed by the caller)
are covered by sliding windows, one volume at a time; segmentation scores them one by one
(every metric is then the mean over volumes of its value on each, with distances in mm from
each volume's spacing), while detection pools every volume's boxes, as mAP is not a mean
over images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .cohort import Cohort
from ..styles.routing import ENSEMBLE, T


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


Outputs = Callable[[torch.Tensor, frozenset], dict[str, torch.Tensor]]


def cohort_outputs(cohort: Cohort, device: torch.device, window=None) -> Outputs:
    """What :func:`score_split` runs on a batch for a cohort: every network's activated and
    condensed outputs (those named in its second argument skipped) and the students' ensemble,
    on ``window`` s covering whole volumes where one is given."""
    return lambda x, skip: _activated(cohort, x.to(device, non_blocking=True), skip, window)


@dataclass
class Scores:
    """A split scored (:func:`score_split`).

    ``metrics``: per network (and ensemble), over the whole split (every rank's share under
    torchrun). ``probs`` and ``labels``: pooled, this process's share of the split's condensed
    outputs and labels; scored one by one (``pooled`` False), the first ``keep`` volumes'
    (lists of tensors). ``per_image`` and ``details`` as the task gives them (details averaged
    over volumes when scored one by one), when asked for."""

    metrics: dict[str, dict[str, float]]
    samples: int
    probs: dict[str, Any]
    labels: Any
    pooled: bool
    per_image: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def score_split(outputs: Outputs, loader, task, window=None, spacing=None, keep: int = 0,
                known: dict[str, torch.Tensor] | None = None, per_image: bool = True, details: bool = True,
                gather: Callable[[Any], list[Any]] | None = None) -> Scores:
    """The one scorer: a split's batches run through ``outputs`` (a cohort's networks,
    :func:`cohort_outputs`; or exported model files) and scored with the task's metrics, plus
    fidelity to the teacher when it is among them. Used by training's validation, ``evaluate``
    and the verification of a quantized export.

    ``window``: the sliding windows covering the split's whole volumes (the split's
    ``window``; None for images). Volumes on windows are scored one by one (each volume's
    metrics, distances in mm from ``spacing``, then the mean over volumes) for a task whose
    metrics are means over images; otherwise outputs are pooled and scored together (detection's
    mAP, multi-label's mean AUROC). ``known``: outputs of an earlier pass (frozen networks),
    not run again. ``keep``: volumes scored one by one whose outputs are kept (overlays).
    ``gather``: every process's share, in rank order (torchrun), so the metrics cover the
    whole split."""
    gather = gather or (lambda obj: [obj])
    if window is not None and not task.keeps_outputs():  # whole volumes, one by one
        rows: list[dict[str, dict[str, float]]] = []
        each_details: list[dict[str, dict[str, Any]]] = []
        values: dict[str, dict[str, list[float]]] = {}
        kept_labels: list[torch.Tensor] = []
        kept: dict[str, list[torch.Tensor]] = {}
        for x, y, index in loader:
            probs = outputs(x, frozenset())
            rows.append(score(probs, y, task, spacing[int(index[0])] if spacing is not None else None))
            if details:
                each_details.append({n: task.details(p, y) for n, p in probs.items()})
            for n, p in probs.items():
                for k, v in (task.per_image(p, y) if per_image else {}).items():
                    values.setdefault(n, {}).setdefault(k, []).extend(v)
            if len(kept_labels) < keep:
                kept_labels.append(y[0])
                for n, p in probs.items():
                    kept.setdefault(n, []).append(p[0])
        rows = [r for part in gather(rows) for r in part]
        return Scores(mean_rows(rows), len(rows), kept, kept_labels, False, values, _mean_details(each_details))
    known = known or {}
    collected: dict[str, list[torch.Tensor]] = {}
    labels = []
    for x, y, _index in loader:
        for n, p in outputs(x, frozenset(known)).items():
            collected.setdefault(n, []).append(p)
        labels.append(y)
    probs = {**known, **{n: torch.cat(v) for n, v in collected.items()}}
    y = torch.cat(labels)
    parts = gather((probs, y))
    whole = {n: torch.cat([p[n] for p, _ in parts]) for n in probs} if len(parts) > 1 else probs
    whole_y = torch.cat([lbl for _, lbl in parts]) if len(parts) > 1 else y
    return Scores(score(whole, whole_y, task), len(whole_y), probs, y, True,
                  {n: task.per_image(p, y) for n, p in probs.items()} if per_image else {},
                  {n: task.details(p, y) for n, p in probs.items()} if details else {})


@torch.inference_mode()
def score_cohort(cohort: Cohort, loader, device: torch.device, window=None, spacing=None, **options) -> Scores:
    """:func:`score_split` for a cohort's networks, in evaluation mode; each module's mode given
    back as it was (a network a caller had put in evaluation mode, e.g. one being exported, stays so)."""
    modes = [(m, m.training) for m in cohort.modules()]
    cohort.eval()
    try:
        return score_split(cohort_outputs(cohort, device, window), loader, cohort.task, window, spacing, **options)
    finally:
        for m, training in modes:
            m.training = training


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor, task, spacing=None) -> dict[str, dict[str, float]]:
    """The task's metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    out = {name: task.metrics(p, labels, spacing) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(task.fidelity(probs[T], p))
    return out


def _mean_details(details: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each network's details (lists of numbers) averaged over volumes."""
    out: dict[str, dict[str, Any]] = {}
    for name in details[0] if details else ():
        out[name] = {k: [_nanmean([d[name][k][j] for d in details]) for j in range(len(v))]
                     for k, v in details[0][name].items()}
    return out


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def mean_rows(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-volume scores averaged over volumes (NaN values, e.g. a distance to an absent class, left out)."""
    if not rows:
        return {}
    return {n: {k: _nanmean([r[n][k] for r in rows]) for k in rows[0][n]} for n in rows[0]}


def group_metrics(probs: dict[str, torch.Tensor], labels: torch.Tensor, groups: dict[str, list[str]], task,
                  min_count: int) -> dict[str, Any]:
    """Every network's metrics within each group of each column of ``groups`` (data.groups: each
    image's value), the groups' sizes, which are under ``min_count`` (flagged: shown, but too few
    images to rank), and each image's group (what comparisons draw the gap's intervals from)."""
    out: dict[str, Any] = {"min_count": min_count, "columns": {}}
    for column, of_image in groups.items():
        names = sorted(set(of_image))
        members = {v: torch.tensor([i for i, x in enumerate(of_image) if x == v]) for v in names}
        out["columns"][column] = {
            "values": names, "counts": [len(members[v]) for v in names],
            "small": [v for v in names if len(members[v]) < min_count], "of_image": list(of_image),
            "networks": {n: {v: task.metrics(p[members[v]], labels[members[v]]) for v in names}
                         for n, p in probs.items()}}
    return out


def calibration(task, val: Scores, scores: Scores, coverage: float, confidence: float | None = None,
                seed: int = 0) -> dict[str, Any]:
    """evaluate --calibrated: a temperature per network and the ensemble (per label for
    multi-label), fitted on the validation split's calibration rows (``val``:
    :meth:`~kdstyles.tasks.Task.calibration_rows`); ECE, classwise ECE, Brier and NLL of the
    validation and the evaluated split's rows before and after it (``val``, ``test``: pairs); the
    evaluated split's metrics at it, and its change in ECE with a 95% paired bootstrap interval
    over the split's images; for one class per image, split-conformal prediction sets at
    ``coverage`` (:mod:`kdstyles.engine.conformal`), fitted on the validation split's calibrated
    probabilities."""
    from ..common.calibration import ece_change, summary, temperatures
    from .conformal import conformal

    temperature, val_at, at, fitted, test, change = {}, {}, {}, {}, {}, {}
    keys = ("ece", "cw_ece", "brier", "nll")

    def before_after(probs: torch.Tensor, tempered: torch.Tensor, labels: torch.Tensor) -> tuple:
        rows, y, owner, label = task.calibration_rows(probs, labels)
        at_rows = task.calibration_rows(tempered, labels)[0]
        a, b = summary(rows, y, label), summary(at_rows, y, label)
        return {k: [a[k], b[k]] for k in keys}, (rows, at_rows, y, owner, label)

    for n, p in val.probs.items():
        rows, y, _, label = task.calibration_rows(p, val.labels)
        temperature[n] = temperatures(rows, y, label, task.num_classes)
        val_at[n] = task.tempered(p, temperature[n])
        fitted[n], _ = before_after(p, val_at[n], val.labels)
        at[n] = task.tempered(scores.probs[n], temperature[n])
        test[n], drawn = before_after(scores.probs[n], at[n], scores.labels)
        change[n] = {"ece": list(ece_change(*drawn, seed=seed))}
    out = {"fitted_on": "val", "val_images": int(len(val.labels)), "temperature": temperature, "val": fitted,
           "test": test, "networks": score(at, scores.labels, task), "change": change}
    if task.prediction_sets:
        out["conformal"] = conformal(val_at, val.labels, at, scores.labels, coverage, confidence, seed)
    return out
