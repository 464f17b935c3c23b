"""Predictions of every network and the student ensemble on a loader, and their scores.

The same functions score the validation split every epoch (model selection) and the test
split in ``kdstyles evaluate``; what is measured is the task's (``cohort.task.metrics``),
plus fidelity to the teacher when there is one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cohort import Cohort
from .metrics import fidelity
from .routing import ENSEMBLE, T


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
        result[ENSEMBLE] = cohort.task.ensemble(result[s] for s in students)
    return result, torch.cat(labels)


def score(probs: dict[str, torch.Tensor], labels: torch.Tensor, task) -> dict[str, dict[str, float]]:
    """The task's metrics for every network and the ensemble; fidelity to the teacher when there is one."""
    out = {name: task.metrics(p, labels) for name, p in probs.items()}
    if T in probs:
        for name, p in probs.items():
            if name != T:
                out[name].update(fidelity(probs[T], p))
    return out
