"""The one training loop, for every preset and custom routing (:class:`Trainer`).

Per batch: one forward of every network, every network's loss, one backward of their
sum (targets are detached, so each network receives exactly its own loss's gradient),
then one optimizer step per network. Per epoch: validation of every network and the
student ensemble, a learning-rate schedule per network on its own validation metric, a
best checkpoint per network, ``last.pt`` with everything needed to resume exactly,
``metrics.csv`` and TensorBoard events. The engine never asks which method it runs.

Parts: ``runtime`` (device, precision, layout, compile, DDP), ``optim`` (optimizers and
schedules), ``state`` (progress and RNG), ``log`` (run.json status, metrics.csv,
TensorBoard, console) and ``trainer`` (the loop).
"""

from .optim import make_optimizer
from .runtime import pick_device, resolve_precision, resolve_workers
from .state import TrainState
from .trainer import Callback, Trainer

__all__ = ["Callback", "TrainState", "Trainer", "make_optimizer", "pick_device", "resolve_precision",
           "resolve_workers"]
