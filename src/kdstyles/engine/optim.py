"""One optimizer and one learning-rate schedule per trainable network (its own parameters
and the adapters on its incoming edges), stepped on its own validation metric."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import KDError


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class CosineSchedule:
    """Cosine annealing in closed form, ``lr(e) = min_lr + (lr - min_lr) * (1 + cos(pi e / E)) / 2``
    after ``e`` of ``E`` epochs. Stateless: a resume that changes ``train.epochs`` or
    ``optim.lr`` continues from the current epoch on the curve of the new values."""

    def __init__(self, opt: torch.optim.Optimizer, lr: float, min_lr: float, epochs: int):
        self.opt, self.lr, self.min_lr, self.epochs = opt, lr, min_lr, epochs

    def set_epoch(self, epoch: int) -> None:
        t = min(epoch, self.epochs) / self.epochs
        for group in self.opt.param_groups:
            group["lr"] = self.min_lr + (self.lr - self.min_lr) * (1 + math.cos(math.pi * t)) / 2

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, _state: dict[str, Any]) -> None:
        """Nothing to restore: the curve follows from the config and the epoch."""


def make_scheduler(cfg, opt: torch.optim.Optimizer, lr: float, epochs: int):
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.factor,
                                                          patience=cfg.patience, min_lr=cfg.min_lr)
    if cfg.name == "cosine":
        return CosineSchedule(opt, lr, cfg.min_lr, epochs)
    return None


class Optimisation:
    """The optimizers and schedules of a cohort's trainable networks."""

    def __init__(self, cfg, cohort):
        self.cfg = cfg
        self.optimizers = {n: make_optimizer(cfg.optim, cohort.parameters_of(n)) for n in cohort.trainable}
        self.schedulers = {n: make_scheduler(cfg.schedule, o, cfg.optim.lr, cfg.train.epochs)
                           for n, o in self.optimizers.items()}

    def lr(self, name: str) -> float:
        return self.optimizers[name].param_groups[0]["lr"]

    def set_epoch(self, epoch: int) -> None:
        """Closed-form schedules: the learning rate for the epoch that follows ``epoch`` done."""
        for sched in self.schedulers.values():
            if isinstance(sched, CosineSchedule):
                sched.set_epoch(epoch)

    def after_validation(self, val: dict[str, dict[str, float]], metric: str, epoch: int) -> None:
        for name, sched in self.schedulers.items():
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val[name][metric])
        self.set_epoch(epoch)

    def apply_changes(self, changes: dict[str, tuple[Any, Any]], epoch: int) -> None:
        """Overrides given on resume (config.RESUMABLE) take effect on the restored optimizers and
        schedules; train.epochs, early stopping and the rest are read from the config as it runs."""
        o, sc = self.cfg.optim, self.cfg.schedule
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                if "optim.lr" in changes:
                    group["lr"] = o.lr  # cosine: the new starting lr; its curve is set below
                if "optim.weight_decay" in changes:
                    group["weight_decay"] = o.weight_decay
                if "optim.momentum" in changes and "momentum" in group:
                    group["momentum"] = o.momentum
            sched = self.schedulers[name]
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.factor, sched.patience = sc.factor, sc.patience
                sched.min_lrs = [sc.min_lr] * len(sched.min_lrs)
        self.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items() if s is not None}}

    def load_state_dict(self, ckpt: dict[str, Any], path) -> None:
        try:
            for n, o in self.optimizers.items():
                o.load_state_dict(ckpt["optimizers"][n])
            for n, s in self.schedulers.items():
                if s is not None:
                    s.load_state_dict(ckpt["schedulers"].get(n, {}))
        except (KeyError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise KDError(f"checkpoint '{path}' does not match this run's optimizers/schedules ({reason}); "
                          "was schedule.name or optim.name changed?") from None
