"""Predictions of every network and the student ensemble on a loader, and their scores.

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``; what is measured is the task's (``cohort.task.metrics``),
plus fidelity to the teacher when there is one.
"""

from __future__ import annotations

import torch

from .cohort import Cohort
from .routing import ENSEMBLE, T


@torch.inference_mode()
def predict_probs(cohort: Cohort, loader, device: torch.device, known: dict[str, torch.Tensor] | None = None
                  ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Probabilities of every network (and the student ensemble) on a loader, as the task
    activates and condenses them batch by batch (softmax; decoded boxes for detection), plus
    labels. Networks in ``known`` (results of an earlier pass) are not run again."""
    known = known or {}
    task, students = cohort.task, cohort.students
    was_training = cohort.training
    cohort.eval()
    names = [n for n in cohort.names if n not in known] + ([ENSEMBLE] if len(students) > 1 else [])
    probs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels = []
    for x, y, _index in loader:
        outs = cohort(x.to(device, non_blocking=True), record=False, skip=frozenset(known))
        active = {name: task.activate(out.logits) for name, out in outs.items()}
        if len(students) > 1:  # students are never frozen: all of them ran on this batch
            active[ENSEMBLE] = task.ensemble(active[s] for s in students)
        for name, p in active.items():
            probs[name].append(task.condense(p).cpu())
        labels.append(y)
    cohort.train(was_training)
    result = {n: known[n] if n in known else torch.cat(probs[n]) for n in cohort.names}
    if len(students) > 1:
        result[ENSEMBLE] = torch.cat(probs[ENSEMBLE])
    return result, torch.cat(labels)


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor, task) -> dict[str, dict[str, float]]:
    """The task's metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    out = {name: task.metrics(p, labels) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(task.fidelity(probs[T], p))
    return out
