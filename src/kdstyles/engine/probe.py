"""The probe stage: a head for a frozen backbone that predicts nothing of the user's classes (a
foundation model from the Hugging Face Hub, :mod:`kdstyles.models.hf`).

Every labelled training and validation image is embedded once, as the networks see it
(prepared and normalised, not augmented), with a progress bar; then a linear head is fitted on
the cached embeddings by full-batch L-BFGS on the task's own supervised loss (cross-entropy;
multi-label: binary cross-entropy) for each weight decay of ``DECAYS``, and the one with the
best validation value of the task's selection metric is kept (ties: the stronger decay). Seconds,
once embedded, even for a large model. The head becomes the teacher's, so its predictions
teach the students and its test metrics are the teacher's in every table and in gap closure;
what was tried and chosen is the run's probe.json.
"""

from __future__ import annotations

import time
from typing import Any

import torch

DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
STEPS = 100  # L-BFGS iterations per decay


@torch.no_grad()
def embed(teacher: torch.nn.Module, dataset: Any, device: torch.device, batch_size: int, bar: Any, task_id: Any
          ) -> torch.Tensor:
    """The teacher's embedding of every item of ``dataset`` (un-augmented), (N, D) on the CPU."""
    out = []
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        x = torch.stack([(dataset.plain(i) - dataset.mean) / dataset.std for i in idx]).to(device)
        out.append(teacher.features(x).float().cpu())
        bar.advance(task_id, len(idx))
    return torch.cat(out)


def fit_head(task: Any, train: torch.Tensor, y_train: torch.Tensor, decay: float, num_classes: int,
             seed: int) -> torch.nn.Linear:
    """A linear head on embeddings by full-batch L-BFGS: the task's supervised loss plus ``decay``
    times the squared norm of the weights."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train.shape[1], num_classes)
    optimiser = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = task.supervised(head(train), y_train, None) + decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return head


def fit_probe(cohort: Any, data: Any, device: torch.device, batch_size: int, seed: int, quiet: bool
              ) -> dict[str, Any]:
    """Fit the frozen teacher's head (see the module docstring); returns what probe.json keeps."""
    from ..common.progress import Steps
    from ..styles.routing import T

    teacher, task = cohort.networks[T], cohort.task
    started = time.monotonic()
    splits = {s: data.splits[s] for s in ("train", "val")}
    teacher.eval()
    with Steps(quiet) as bar:
        task_id = bar.add_task(f"embedding {sum(len(d) for d in splits.values())} images with the teacher "
                               f"({teacher.contract['name']})", sum(len(d) for d in splits.values()))
        found = {s: embed(teacher.to(device), d, device, batch_size, bar, task_id) for s, d in splits.items()}
    targets = {s: torch.stack([torch.as_tensor(d.kind.target(d.labels, i)) for i in range(len(d))])
               for s, d in splits.items()}
    metric = task.selection
    tried, best = {}, None
    for decay in DECAYS:
        head = fit_head(task, found["train"], targets["train"], decay, task.num_classes, seed)
        with torch.no_grad():
            value = task.metrics(task.activate(head(found["val"])), targets["val"])[metric]
        tried[str(decay)] = value
        if best is None or value >= best[0]:
            best = (value, decay, head)
    _, decay, head = best
    teacher.head.load_state_dict(head.state_dict())
    with torch.no_grad():
        scored = {s: task.metrics(task.activate(head(found[s])), targets[s]) for s in splits}
    return {"embedding": int(found["train"].shape[1]), "images": {s: len(d) for s, d in splits.items()},
            "metric": metric, "decays": tried, "chosen": decay, "train": scored["train"], "val": scored["val"],
            "seconds": round(time.monotonic() - started, 1), "model": teacher.contract["name"]}
