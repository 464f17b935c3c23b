"""The one training loop, for every preset and custom routing.

Per batch: one forward of every network, every network's loss, one backward of their
sum (targets are detached, so each network receives exactly its own loss's gradient),
then one optimizer step per network. Per epoch: validation of every network and the
student ensemble, a learning-rate schedule per network on its own validation metric,
a best checkpoint per network on that metric, ``last.pt`` with everything needed to
resume exactly, ``metrics.csv`` and TensorBoard events. The engine never asks which
method it runs.

Stopping: on SIGINT/SIGTERM/SIGHUP the current step finishes, ``last.pt`` is written
mid-epoch (the batch order is a function of seed and epoch, so the rest of the epoch
replays exactly), ``run.json`` says ``interrupted`` and :class:`Interrupted` is raised.
``train.checkpoint_every_steps`` writes the same mid-epoch checkpoint every N steps. Any
other crash leaves ``run.json`` at ``failed`` with the error line.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import checkpoints, distributed
from .cohort import Cohort, TrainStep
from .config import ExperimentConfig, OptimConfig, ScheduleConfig
from .data import DataBundle
from .errors import Interrupted, KDError, TrainingDiverged
from .evaluate import ENSEMBLE, predict_probs, score
from .runfolder import RunFolder
from .signals import GracefulStop, signal_name

Callback = Callable[["Trainer", int], None]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KDError(f"train.device: '{name}' was asked for but CUDA is not available here; use auto or cpu")
    return device


def make_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
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


def make_scheduler(cfg: ScheduleConfig, opt: torch.optim.Optimizer, lr: float, epochs: int):
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.factor,
                                                          patience=cfg.patience, min_lr=cfg.min_lr)
    if cfg.name == "cosine":
        return CosineSchedule(opt, lr, cfg.min_lr, epochs)
    return None


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Everything about progress that a resume must restore (besides weights and optimizers)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the epoch in progress (mid-epoch checkpoints)
    partial: dict[str, dict[str, Any]] = field(default_factory=dict)  # its running sums of loss terms
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # network -> {"epoch", "value"}
    since_improved: int = 0  # epochs since any student improved (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per (epoch, network)
    status: str = "running"


class Trainer:
    def __init__(self, cfg: ExperimentConfig, cohort: Cohort, data: DataBundle, run_dir: Path,
                 device: torch.device | None = None, quiet: bool = False, callbacks: list[Callback] | None = None):
        self.cfg, self.cohort, self.data, self.run_dir = cfg, cohort, data, Path(run_dir)
        self.dist = distributed.setup(cfg.train.device)
        self.device = device or pick_device(cfg.train.device, self.dist.local_rank)
        self.quiet = quiet or not self.dist.main
        self.console = Console(quiet=self.quiet)
        self.callbacks = list(callbacks or [])
        t = cfg.train
        self.memory_format = torch.channels_last if t.channels_last else torch.preserve_format
        self.cohort.to(self.device, memory_format=self.memory_format)
        if t.compile:
            for name in cohort.trainable:
                cohort.networks[name].compile()
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if t.precision == "fp16" else None
        self.optimizers = {n: make_optimizer(cfg.optim, cohort.parameters_of(n)) for n in cohort.trainable}
        self.schedulers = {n: make_scheduler(cfg.schedule, o, cfg.optim.lr, t.epochs)
                           for n, o in self.optimizers.items()}
        self.state = TrainState(best={n: {"epoch": 0, "value": -math.inf} for n in cohort.trainable})
        shard = (self.dist.rank, self.dist.world)
        if cfg.data.batch_size % self.dist.world:
            raise KDError(f"data.batch_size {cfg.data.batch_size} is the global batch and must divide by the "
                          f"{self.dist.world} processes")
        workers = dict(num_workers=cfg.data.num_workers, persistent_workers=cfg.data.persistent_workers, shard=shard)
        self.train_loader = data.loader("train", cfg.data.batch_size, train=True, seed=t.seed,
                                        max_batches=t.max_steps_per_epoch, **workers)
        self.val_loader = data.loader("val", cfg.data.batch_size, **workers)
        self.use_cache = cfg.networks.teacher.cache and bool(cohort.frozen)
        if self.use_cache:
            cohort.enable_cache(len(data.splits["train"]))
        self.model: torch.nn.Module = TrainStep(cohort)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            DDP._set_params_and_buffers_to_ignore_for_model(self.model, self.model.outside_ddp())
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)
        self.writer = None
        self.folder = RunFolder(self.run_dir)
        self.stop = GracefulStop()
        self._frozen_val: dict[str, torch.Tensor] = {}
        self.metric = cfg.train.selection_metric if cfg.train.selection_metric != "auto" else cohort.task.selection

    # ------------------------------------------------------------------ files

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _checkpoint(self, partial: list[dict] | None = None) -> dict[str, Any]:
        return {
            "epoch": self.state.epoch,
            "step": self.state.step,
            "partial": partial or [],
            "cohort": self.cohort.state_dict(),
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items() if s is not None},
            "rng": _rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "state": {"best": self.state.best, "since_improved": self.state.since_improved,
                      "history": self.state.history, "status": self.state.status},
        }

    def save_last(self) -> None:
        """Write last.pt (every rank calls it: a mid-epoch checkpoint gathers each rank's
        running sums so a resumed epoch reports exactly what an uninterrupted one would)."""
        partial = distributed.gather_objects(self.state.partial, self.dist) if self.state.step else []
        if not self.dist.main:
            return
        checkpoints.save(self._checkpoint(partial), self.ckpt_dir / "last.pt")

    def save_best(self, name: str, value: float) -> None:
        if not self.dist.main:
            return
        checkpoints.save({"network": name, "epoch": self.state.epoch, "metric": self.metric,
                          "value": value, "state_dict": self.cohort.networks[name].state_dict()},
                         self.ckpt_dir / f"best-{name}.pt")

    def load_last(self) -> None:
        path = self.ckpt_dir / "last.pt"
        ckpt = checkpoints.load(path, map_location=self.device)
        checkpoints.load_into(self.cohort, ckpt.get("cohort"), path, "this run's networks")
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
        try:
            _set_rng_state(ckpt["rng"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            st = ckpt["state"]
            partial = ckpt.get("partial") or []
            mine = partial[self.dist.rank] if len(partial) == self.dist.world else (partial[0] if partial else {})
            self.state = TrainState(ckpt["epoch"], ckpt.get("step", 0), mine, st["best"], st["since_improved"],
                                    st["history"], "running")
        except (KeyError, TypeError, ValueError) as exc:
            raise KDError(f"checkpoint '{path}' is not a complete last.pt (no {exc}); it cannot be resumed") from None

    def apply_changes(self, changes: dict[str, tuple[Any, Any]]) -> None:
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
        self._set_cosine(self.state.epoch)

    def _set_cosine(self, epoch: int) -> None:
        for sched in self.schedulers.values():
            if isinstance(sched, CosineSchedule):
                sched.set_epoch(epoch)

    def write_status(self, status: str, **extra: Any) -> None:
        self.state.status = status
        if not self.dist.main:
            return
        self.folder.update_info(status=status, epochs_done=self.state.epoch,
                                best={n: b for n, b in self.state.best.items()}, **extra)

    def _record_failure(self, status: str, error: str) -> None:
        """Best effort (the disk may be full): run.json says how the run ended."""
        try:
            self.write_status(status, error=error)
        except (KDError, OSError):
            pass

    def write_metrics_csv(self) -> None:
        if self.dist.main:
            self.folder.write_metrics(self.state.history)

    def _tensorboard(self, rows: list[dict[str, Any]], epoch: int) -> None:
        if not self.cfg.output.tensorboard or not self.dist.main:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=epoch)
        for row in rows:
            for k, v in row.items():
                if k not in ("epoch", "network", "best") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{row['network']}/{k}", v, epoch)
        self.writer.flush()

    # ------------------------------------------------------------------ training

    def _progress(self) -> Progress:
        return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                        console=self.console, transient=True, disable=self.quiet)

    def _diverged(self, losses, step: int) -> None:
        for name, nl in losses.items():
            for term, value in nl.terms.items():
                value = value.detach()
                if not torch.isfinite(value):
                    where = f"epoch {self.state.epoch + 1} step {step + 1}"
                    last = self.ckpt_dir / "last.pt"
                    kept = f"last good checkpoint: {last} (epoch {self.state.epoch})" if last.is_file() \
                        else "no checkpoint was written yet"
                    self._record_failure("diverged", f"{name}: {term} non-finite at {where}")
                    raise TrainingDiverged(f"network '{name}': loss term '{term}' is {value.item()} at {where}; "
                                           f"training stopped, {kept}; try a lower optim.lr")
        self._record_failure("diverged", "a loss became non-finite")
        raise TrainingDiverged(f"a loss became non-finite at epoch {self.state.epoch + 1} step {step + 1}")

    def train_epoch(self) -> dict[str, dict[str, float]]:
        """One epoch from ``state.step`` (0, or where a mid-epoch checkpoint stopped)."""
        cohort, epoch, start = self.cohort, self.state.epoch, self.state.step
        cohort.train()
        self.train_loader.batch_sampler.set_epoch(epoch, start=start)
        sums = self.state.partial  # running sums of every loss term (restored mid-epoch)
        every = self.cfg.train.checkpoint_every_steps
        total_steps = len(self.train_loader)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                  enabled=self.autocast_dtype is not None)
        with self._progress() as bar:
            task = bar.add_task("train", total=total_steps, completed=start,
                                epoch=f"{epoch + 1}/{self.cfg.train.epochs}", losses="")
            for step, (x, y, keys) in enumerate(self.train_loader, start=start):
                x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
                y = y.to(self.device, non_blocking=True)
                keys = keys.to(self.device, non_blocking=True) if self.use_cache else None
                with autocast:
                    losses = self.model(x, y, keys)
                total = torch.stack([nl.total.float() for nl in losses.values()]).sum()
                diverged, stop = distributed.any_flags([not bool(torch.isfinite(total)), self.stop.requested],
                                                       self.dist, self.device)
                if diverged:
                    self._diverged(losses, step)
                for opt in self.optimizers.values():
                    opt.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(total).backward()
                    for opt in self.optimizers.values():
                        self.scaler.step(opt)
                    self.scaler.update()
                else:
                    total.backward()
                    for opt in self.optimizers.values():
                        opt.step()
                cohort.after_step()
                for name, nl in losses.items():
                    acc = sums.setdefault(name, {})
                    acc["loss"] = acc.get("loss", 0) + nl.total.detach().float()
                    for term, v in nl.terms.items():
                        acc[term] = acc.get(term, 0) + v.detach().float()
                self.state.step = step + 1
                if not self.quiet and (step % 5 == 0 or step == total_steps - 1):
                    text = "  ".join(f"{n} {float(a['loss']) / self.state.step:.3f}" for n, a in sums.items())
                    bar.update(task, completed=step + 1, losses=text)
                if stop or (every and self.state.step % every == 0 and self.state.step < total_steps):
                    self.save_last()  # mid-epoch: resumes at the next step
                if stop:
                    self._interrupted()
        steps = self.state.step
        cohort.after_epoch()
        self.state.step, self.state.partial = 0, {}
        local = {n: {k: float(v) / max(steps, 1) for k, v in acc.items()} for n, acc in sums.items()}
        per_rank = distributed.gather_objects(local, self.dist)  # every rank's mean over equal shares
        return {n: {k: sum(r[n][k] for r in per_rank) / len(per_rank) for k in local[n]} for n in local}

    def _interrupted(self) -> None:
        """A stop signal arrived: last.pt is written; say so in run.json and raise Interrupted."""
        signum = self.stop.signum or 2
        where = (f"epoch {self.state.epoch + 1} step {self.state.step}" if self.state.step
                 else f"the end of epoch {self.state.epoch}")
        self.write_status("interrupted", stopped_at={"epoch": self.state.epoch, "step": self.state.step,
                                                     "signal": signal_name(signum)})
        raise Interrupted(f"{signal_name(signum)}: training stopped after {where} with a checkpoint; resume with "
                          f"'kdstyles train --resume {self.run_dir}'", signum)

    def validate(self) -> dict[str, dict[str, float]]:
        # A frozen network's validation predictions never change: computed once, then reused.
        probs, labels = predict_probs(self.cohort, self.val_loader, self.device, self._frozen_val)
        self._frozen_val = {n: probs[n] for n in self.cohort.frozen}
        if self.dist.active:  # every rank scored its own chunk: put the split back together, in order
            parts = distributed.gather_objects((probs, labels), self.dist)
            probs = {n: torch.cat([p[n] for p, _ in parts]) for n in probs}
            labels = torch.cat([lbl for _, lbl in parts])
        return score(probs, labels, self.cohort.task)

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``train.epochs`` (or early stopping). ``resume``: continue from the state
        :meth:`load_last` restored (call it first)."""
        if resume and self.state.epoch >= self.cfg.train.epochs:
            self.console.print(f"[green]{self.run_dir}: all {self.state.epoch} epochs are done")
            self.write_status("finished")
            return self.state
        if resume:
            at = f" step {self.state.step}" if self.state.step else ""
            self.console.print(f"resuming {self.run_dir} after epoch {self.state.epoch}{at}")
        self._set_cosine(self.state.epoch)
        self.write_status("running")
        try:
            with self.stop:
                self._loop()
        except KeyboardInterrupt:
            self._record_failure("interrupted", "KeyboardInterrupt")
            self.console.print(f"[yellow]interrupted; resume with: kdstyles train --resume {self.run_dir}")
            raise
        except (Interrupted, TrainingDiverged):
            raise
        except Exception as exc:  # any crash: run.json says so, with the error line
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._record_failure("failed", f"{type(exc).__name__}: {line}"[:300] if not isinstance(exc, KDError)
                                 else line)
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
        self.write_status(self.state.status if self.state.status != "running" else "finished")
        return self.state

    def _loop(self) -> None:
        metric, patience = self.metric, self.cfg.train.early_stopping
        while self.state.epoch < self.cfg.train.epochs:
            t0 = time.perf_counter()
            train = self.train_epoch()
            val = self.validate()
            self.state.epoch += 1
            epoch = self.state.epoch
            improved_students = False
            rows = []
            for name in self.cohort.names + ([ENSEMBLE] if ENSEMBLE in val else []):
                row: dict[str, Any] = {"epoch": epoch, "network": name}
                if name in self.optimizers:
                    row["lr"] = self.optimizers[name].param_groups[0]["lr"]
                row.update({f"train_{k}": v for k, v in train.get(name, {}).items()})
                row.update({f"val_{k}": v for k, v in val[name].items()})
                best = name in self.state.best and val[name][metric] > self.state.best[name]["value"]
                row["best"] = best
                if best:
                    self.state.best[name] = {"epoch": epoch, "value": val[name][metric]}
                    self.save_best(name, val[name][metric])
                    improved_students |= name in self.cohort.students
                rows.append(row)
            for name, sched in self.schedulers.items():
                if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    sched.step(val[name][metric])
            self._set_cosine(epoch)
            self.state.since_improved = 0 if improved_students else self.state.since_improved + 1
            self.state.history += rows
            stop = patience is not None and self.state.since_improved >= patience
            if stop or epoch >= self.cfg.train.epochs:
                self.state.status = "stopped early" if stop else "finished"
            self.save_last()
            self.write_metrics_csv()
            self._tensorboard(rows, epoch)
            self._print_epoch(rows, time.perf_counter() - t0)
            for cb in self.callbacks:
                cb(self, epoch)
            if stop:
                self.console.print(f"early stopping: no student improved its validation {metric} "
                                   f"for {patience} epochs")
                break
            if self.stop.requested and epoch < self.cfg.train.epochs:
                self._interrupted()  # a signal during validation: stop at this epoch boundary

    def _print_epoch(self, rows: list[dict[str, Any]], seconds: float) -> None:
        metric = self.metric
        parts = []
        for r in rows:
            loss = f" loss {r['train_loss']:.3f}" if "train_loss" in r else ""
            star = "*" if r["best"] else ""
            parts.append(f"{r['network']}{loss} {metric} {r['val_' + metric]:.3f}{star}")
        self.console.print(f"epoch {rows[0]['epoch']}/{self.cfg.train.epochs} ({seconds:.0f}s)  " + " | ".join(parts),
                           highlight=False, soft_wrap=True)  # one line per epoch in logs, whatever the width
