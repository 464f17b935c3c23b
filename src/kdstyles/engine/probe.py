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

Segmentation (a task whose classes are per pixel) fits the head on every patch token instead:
each token's target is the share of each class among the pixels its patch covers (the mask
area-pooled onto the patch grid), the loss the cross-entropy against those shares (a seeded
sample of ``MAX_ROWS`` tokens where there are more), and the head is chosen by the validation
metric of its predictions upsampled to the masks' size, as the teacher then predicts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

DECAYS = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
STEPS = 100  # L-BFGS iterations per decay
MAX_ROWS = 200_000  # patch tokens a per-patch head is fitted on (a seeded sample where there are more)


@torch.no_grad()
def embed(teacher: torch.nn.Module, dataset: Any, device: torch.device, batch_size: int, bar: Any, task_id: Any,
          count: int | None = None) -> torch.Tensor:
    """The teacher's embedding of every item of ``dataset`` (un-augmented), (N, D) on the CPU; a
    dense teacher's patch maps (N, D, h, w). ``count``: the first that many items only."""
    out, n = [], min(len(dataset), count or len(dataset))
    for start in range(0, n, batch_size):
        idx = range(start, min(start + batch_size, n))
        x = torch.stack([(dataset.plain(i) - dataset.mean) / dataset.std for i in idx]).to(device)
        out.append(teacher.features(x).float().cpu())
        if bar is not None:
            bar.advance(task_id, len(idx))
    return torch.cat(out)


def fit_head(task: Any, train: torch.Tensor, y_train: torch.Tensor, decay: float, num_classes: int,
             seed: int, soft: bool = False) -> torch.nn.Linear:
    """A linear head on embeddings by full-batch L-BFGS: the task's supervised loss (``soft``:
    the cross-entropy against per-row class shares ``y_train``) plus ``decay`` times the squared
    norm of the weights."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train.shape[1], num_classes)
    optimiser = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = head(train)
        fit = (-(y_train * logits.log_softmax(1)).sum(1).mean() if soft else task.supervised(logits, y_train, None))
        loss = fit + decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return head


def patch_rows(maps: torch.Tensor, masks: torch.Tensor, num_classes: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch rows of dense features ``maps`` (N, D, h, w) and the share of each class among
    the pixels of each patch of ``masks`` (N, H, W): (R, D) and (R, C), a seeded sample of
    ``MAX_ROWS`` where there are more."""
    import torch.nn.functional as F

    shares = F.adaptive_avg_pool2d(F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float(), maps.shape[-2:])
    rows = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])
    shares = shares.permute(0, 2, 3, 1).reshape(-1, num_classes)
    if len(rows) > MAX_ROWS:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:MAX_ROWS]
        rows, shares = rows[keep], shares[keep]
    return rows, shares


def head_outputs(head: torch.nn.Linear, found: torch.Tensor, size: tuple[int, ...] | None) -> torch.Tensor:
    """The head's outputs on embeddings (N, D), or on patch maps (N, D, h, w) upsampled to ``size``
    (as a dense teacher predicts)."""
    import torch.nn.functional as F

    if found.ndim == 2:
        return head(found)
    out = F.conv2d(found, head.weight[:, :, None, None], head.bias)
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def embeddings(teacher: torch.nn.Module, splits: dict[str, Any], device: torch.device, batch_size: int,
               quiet: bool, store: Path | None) -> tuple[dict[str, torch.Tensor], bool]:
    """Every split's embeddings: read from ``store`` (:mod:`kdstyles.store.outputs`) where a run
    of the same teacher, data and seed left them and the first batch, embedded again, agrees;
    else computed (with a progress bar) and stored. Also whether they were read."""
    from ..common.progress import Steps
    from ..store import outputs
    from .cohort import agrees

    teacher.to(device).eval()
    found = outputs.read(store) if store is not None else None
    if found is not None and all(s in found and len(found[s]) == len(d) for s, d in splits.items()):
        first = next(iter(splits))
        fresh = embed(teacher, splits[first], device, batch_size, None, None, count=batch_size)
        if agrees(fresh, found[first][:len(fresh)]):
            return {s: found[s] for s in splits}, True
    with Steps(quiet) as bar:
        task_id = bar.add_task(f"embedding {sum(len(d) for d in splits.values())} images with the teacher "
                               f"({teacher.contract['name']})", sum(len(d) for d in splits.values()))
        found = {s: embed(teacher, d, device, batch_size, bar, task_id) for s, d in splits.items()}
    if store is not None:
        outputs.write(store, found)  # a full disk only costs the next run the pass
    return found, False


def fit_probe(cohort: Any, data: Any, device: torch.device, batch_size: int, seed: int, quiet: bool,
              store: Path | None = None) -> dict[str, Any]:
    """Fit the frozen teacher's head (see the module docstring); returns what probe.json keeps.
    ``store``: where the embeddings are kept for the next run (:func:`embeddings`)."""
    from ..styles.routing import T

    teacher, task = cohort.networks[T], cohort.task
    started = time.monotonic()
    splits = {s: data.splits[s] for s in ("train", "val")}
    found, read = embeddings(teacher, splits, device, batch_size, quiet, store)
    targets = {s: torch.stack([torch.as_tensor(d.plain_target(i)) for i in range(len(d))]) for s, d in splits.items()}
    size = {s: tuple(targets[s].shape[1:]) for s in splits}  # a mask's (H, W): where dense outputs are scored
    if task.per_pixel:
        rows, goal = patch_rows(found["train"], targets["train"], task.num_classes, seed)
    else:
        rows, goal = found["train"], targets["train"]
    metric = task.selection
    tried, best = {}, None
    for decay in DECAYS:
        head = fit_head(task, rows, goal, decay, task.num_classes, seed, soft=task.per_pixel)
        with torch.no_grad():
            value = task.metrics(task.activate(head_outputs(head, found["val"], size["val"])), targets["val"])[metric]
        tried[str(decay)] = value
        if best is None or value >= best[0]:
            best = (value, decay, head)
    _, decay, head = best
    teacher.head.weight.data.copy_(head.weight.data.view_as(teacher.head.weight))
    teacher.head.bias.data.copy_(head.bias.data)
    with torch.no_grad():
        scored = {s: task.metrics(task.activate(head_outputs(head, found[s], size[s])), targets[s]) for s in splits}
    return {"embedding": int(found["train"].shape[1]), "images": {s: len(d) for s, d in splits.items()},
            "rows": len(rows), "metric": metric, "decays": tried, "chosen": decay, "train": scored["train"],
            "val": scored["val"], "seconds": round(time.monotonic() - started, 1), "model": teacher.contract["name"],
            "embeddings": "read from the store" if read else "computed"}
