"""The loop: epochs of steps, validation, best checkpoints, ``last.pt``, early stopping.

Stopping: on SIGINT/SIGTERM/SIGHUP the current step finishes, ``last.pt`` is written
mid-epoch (the batch order is a function of seed and epoch, so the rest of the epoch
replays exactly), ``run.json`` says ``interrupted`` and :class:`Interrupted` is raised.
``train.checkpoint_every_steps`` writes the same mid-epoch checkpoint every N steps. Any
other crash leaves ``run.json`` at ``failed`` with the error line.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..common import distributed
from ..store import checkpoints
from .cohort import Cohort, TrainStep
from ..data.mix import Mixer
from ..common.dims import dims
from ..errors import Interrupted, KDError, TrainingDiverged
from .evaluate import ENSEMBLE, score_cohort
from ..store.runfolder import RunFolder
from ..common.signals import GracefulStop, signal_name
from .log import RunLog
from .optim import Optimisation
from .runtime import Runtime, resolve_workers
from .state import TrainState, rng_state, set_rng_state

# Called after every epoch (``trainer``, epoch); a callback that returns a reason (e.g. "pruned")
# ends training there, with that reason as the run's status.
Callback = Callable[["Trainer", int], "str | None"]


class Trainer:
    def __init__(self, cfg, cohort: Cohort, data, run_dir: Path, device: torch.device | None = None,
                 quiet: bool = False, callbacks: list[Callback] | None = None):
        self.cfg, self.cohort, self.data = cfg, cohort, data
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.rt = Runtime.create(cfg.train, device, cfg.data.dims)
        self.dist, self.device = self.rt.dist, self.rt.device
        self.log = RunLog(self.folder, self.dist.main, quiet, cfg.output.tensorboard)
        self.console = self.log.console
        self.callbacks = list(callbacks or [])
        self.rt.place(cohort, cfg.train.compile)
        self.optim = Optimisation(cfg, cohort)
        self.state = TrainState(best={n: {"epoch": 0, "value": -math.inf} for n in cohort.trainable})
        if cfg.data.batch_size % self.dist.world:
            raise KDError(f"data.batch_size {cfg.data.batch_size} is the global batch and must divide by the "
                          f"{self.dist.world} processes")
        workers = dict(num_workers=resolve_workers(cfg.data.num_workers, self.device),
                       persistent_workers=cfg.data.persistent_workers, shard=(self.dist.rank, self.dist.world))
        # unlabelled images for the distillation edges (data.unlabeled), drawn with every labelled batch
        self.unlabeled_batch = cfg.data.unlabeled_batch if data.unlabeled is not None and cohort.edges else 0
        if self.unlabeled_batch % self.dist.world:
            raise KDError(f"data.unlabeled_batch_size {self.unlabeled_batch} is a global batch and must divide by "
                          f"the {self.dist.world} processes")
        self.train_loader = data.loader("train", cfg.data.batch_size, train=True, seed=cfg.train.seed,
                                        max_batches=cfg.train.max_steps_per_epoch,
                                        unlabeled_batch=self.unlabeled_batch, **workers)
        self.mixer = Mixer(cfg.data.mix, cfg.train.seed)
        self.val_loader = data.loader("val", cfg.data.batch_size, **workers)
        self.use_cache = cfg.networks.teacher.cache and bool(cohort.frozen)
        self.outputs_file = None  # where the kept outputs are stored for other runs (kdstyles.store.outputs)
        if self.use_cache:  # per item and view (data.views); unlabelled images after the labelled ones
            cohort.enable_cache(data.splits["train"].keys + (data.unlabeled.keys if self.unlabeled_batch else 0))
            self._read_outputs()
        self.model = self.rt.wrap(TrainStep(cohort))
        self.stop = GracefulStop()
        self.writer = checkpoints.Writer()  # last.pt and best checkpoints, written while training goes on
        self._started: set = set()  # loaders whose persistent workers are running
        self._frozen_val: dict[str, torch.Tensor] = {}
        self.clock: dict[str, float] = {}  # this epoch's seconds: data_wait_s, val_s, checkpoint_s
        self.metric = cfg.train.selection_metric if cfg.train.selection_metric != "auto" else cohort.task.selection

    # ------------------------------------------------------------------ a frozen teacher's stored outputs

    def _read_outputs(self) -> None:
        """Take the frozen networks' kept outputs from the store where a run of the same teacher,
        data, views and seed left them, and say what the first epochs will compute and keep."""
        from ..store import outputs

        cohort, cfg = self.cohort, self.cfg
        taps = {name: cohort.taps[name].paths for name in sorted(cohort.frozen)}
        parts = {**outputs.run_parts(cfg), "taps": taps, "items": cohort.cache.n,
                 "precision": cfg.networks.teacher.precision, "device": self.device.type, "world": self.dist.world,
                 "rank": self.dist.rank}
        key = outputs.key(parts, {name: cohort.networks[name].state_dict() for name in cohort.frozen})
        self.outputs_file = outputs.path_for(key)
        found = outputs.read(self.outputs_file)
        filled = cohort.cache.load(found, self.device) if found is not None else 0
        n = cohort.cache.n
        if filled:
            self.console.print(f"teacher outputs: {filled:,} of {n:,} image views read from {self.outputs_file}"
                               + ("" if filled == n else "; the rest are computed as they come"), highlight=False)
        else:
            self.console.print(f"teacher outputs: computed for {n:,} image views as they come (the first "
                               f"{cfg.data.views or 1} epoch(s)), then kept and stored in {self.outputs_file} for "
                               "the next run of this teacher, data and seed", highlight=False)

    def _store_outputs(self) -> None:
        """Write the kept outputs to the store once, at an epoch's end: when every view is kept, or
        as far as they got when the run ends (the main process; a failure is a warning)."""
        from ..store import outputs

        cache = self.cohort.cache
        if self.cohort.cache_mismatch is not None:
            self.console.print(f"[yellow]warning: the stored outputs of {self.cohort.cache_mismatch} in "
                               f"{self.outputs_file} did not match its forward (the data changed on disk?); "
                               "they were computed again and the file is replaced")
            self.cohort.cache_mismatch = None
        ended = self.state.status != "running"  # the last epoch or early stopping
        if self.outputs_file is None or not cache.changed or not self.dist.main or not (ended or
                                                                                         cache.filled() == cache.n):
            return  # written once: when every view is kept, or as far as they got when the run ends
        why = outputs.write(self.outputs_file, cache.tensors())
        cache.changed = False
        if why is not None:
            self.console.print(f"[yellow]warning: the teacher's outputs were not stored ({why}); this run keeps "
                               "them in memory")
            self.outputs_file = None

    # ------------------------------------------------------------------ checkpoints

    def save_last(self) -> None:
        """Write last.pt (every rank calls it: a mid-epoch checkpoint gathers each rank's
        running sums so a resumed epoch reports exactly what an uninterrupted one would)."""
        with self._timed("checkpoint_s"):
            self._save_last()

    def _save_last(self) -> None:
        s = self.state
        partial = distributed.gather_objects(s.partial, self.dist) if s.step else []
        if not self.dist.main:
            return
        scaler = self.rt.scaler.state_dict() if self.rt.scaler is not None else {}
        self.writer.save({"epoch": s.epoch, "step": s.step, "partial": partial, "cohort": self.cohort.state_dict(),
                          **self.optim.state_dict(), "rng": rng_state(), "scaler": scaler,
                          "state": {"best": s.best, "since_improved": s.since_improved, "history": s.history,
                                    "status": s.status}}, self.folder.last)

    def save_best(self, name: str, value: float) -> None:
        if self.dist.main:
            with self._timed("checkpoint_s"):
                self.writer.save({"network": name, "epoch": self.state.epoch, "metric": self.metric, "value": value,
                                  "state_dict": self.cohort.networks[name].state_dict()}, self.folder.best(name))

    def _before_workers_start(self, loader) -> None:
        """Loader workers are forked processes, and a fork copies the locks the writer's thread
        may hold in the middle of a write: the writes land first whenever workers are about to
        start (every epoch with data.persistent_workers: false, else only the first time)."""
        if loader.num_workers and not (loader.persistent_workers and loader in self._started):
            self.writer.wait()
            self._started.add(loader)

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        """Add the seconds the block takes to this epoch's ``clock[key]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.clock[key] = self.clock.get(key, 0.0) + time.perf_counter() - t0

    def _batches(self) -> Iterator[Any]:
        """The training loader's batches; the time spent waiting for each one goes to
        ``clock['data_wait_s']`` (each step ends with a host sync, the finiteness check, so on a
        GPU this is time the device sat idle for data)."""
        self._before_workers_start(self.train_loader)
        it = iter(self.train_loader)
        while True:
            with self._timed("data_wait_s"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def load_last(self) -> None:
        """Restore everything last.pt holds; call before :meth:`fit` with ``resume=True``."""
        path = self.folder.last
        ckpt = checkpoints.load(path, map_location=self.device)
        checkpoints.load_into(self.cohort, ckpt.get("cohort"), path, "this run's networks")
        self.optim.load_state_dict(ckpt, path)
        try:
            set_rng_state(ckpt["rng"])
            if self.rt.scaler is not None and ckpt.get("scaler"):
                self.rt.scaler.load_state_dict(ckpt["scaler"])
            st = ckpt["state"]
            partial = ckpt.get("partial") or []
            mine = partial[self.dist.rank] if len(partial) == self.dist.world else (partial[0] if partial else {})
            self.state = TrainState(ckpt["epoch"], ckpt.get("step", 0), mine, st["best"], st["since_improved"],
                                    st["history"], "running")
        except (KeyError, TypeError, ValueError) as exc:
            raise KDError(f"checkpoint '{path}' is not a complete last.pt (no {exc}); it cannot be resumed") from None

    def apply_changes(self, changes: dict[str, tuple[Any, Any]]) -> None:
        self.optim.apply_changes(changes, self.state.epoch)
        was, now = changes.get("train.qat", (False, False))
        if now and not was:
            # quantization-aware epochs start: the best students are chosen among them (best-*.pt
            # of float epochs would export weights that never learned the rounding)
            for name in self.cohort.students:
                self.state.best[name] = {"epoch": self.state.epoch, "value": -math.inf}
            self.state.since_improved = 0

    def write_status(self, status: str, **extra: Any) -> None:
        self.log.status(self.state, status, **extra)

    # ------------------------------------------------------------------ the loop

    def fit(self, resume: bool = False) -> TrainState:
        """Train until ``train.epochs`` (or early stopping). ``resume``: continue from the state
        :meth:`load_last` restored."""
        if resume and self.state.epoch >= self.cfg.train.epochs:
            self.console.print(f"[green]{self.run_dir}: all {self.state.epoch} epochs are done")
            self.write_status("finished")
            return self.state
        if resume:
            at = f" step {self.state.step}" if self.state.step else ""
            self.console.print(f"resuming {self.run_dir} after epoch {self.state.epoch}{at}")
        self.optim.set_epoch(self.state.epoch)
        self.write_status("running")
        try:
            with self.stop:
                self._epochs()
            self.writer.wait()  # the last files land; a write error fails the run like any other
        except KeyboardInterrupt:
            self.log.failure(self.state, "interrupted", "KeyboardInterrupt")
            self.console.print(f"[yellow]interrupted; resume with: kdstyles train --resume {self.run_dir}")
            raise
        except (Interrupted, TrainingDiverged):
            raise
        except Exception as exc:  # any crash: run.json says so, with the error line
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.log.failure(self.state, "failed",
                             line if isinstance(exc, KDError) else f"{type(exc).__name__}: {line}"[:300])
            raise
        finally:
            self._land()
            self.log.close()
        self.write_status(self.state.status if self.state.status != "running" else "finished")
        return self.state

    def _epochs(self) -> None:
        metric, patience = self.metric, self.cfg.train.early_stopping
        while self.state.epoch < self.cfg.train.epochs:
            t0 = time.perf_counter()
            self.clock = {"data_wait_s": 0.0, "val_s": 0.0, "checkpoint_s": 0.0}
            train = self.train_epoch()
            ahead = self.state.epoch + 1
            checked = ahead % self.cfg.train.val_every == 0 or ahead >= self.cfg.train.epochs
            with self._timed("val_s"):
                val = self.validate() if checked else None  # train.val_every: validated epochs only
            self.state.epoch += 1
            epoch = self.state.epoch
            rows = self._rows(epoch, train, val)
            if val is not None:
                self.optim.after_validation(val, metric, epoch)
                watched = self.cohort.students or self.cohort.trainable  # a teacher-only run watches its teacher
                improved = any(r["best"] and r["network"] in watched for r in rows)
                self.state.since_improved = 0 if improved else self.state.since_improved + 1
            else:
                self.optim.set_epoch(epoch)
            self.state.history += rows
            stop = patience is not None and self.state.since_improved >= patience
            if stop or epoch >= self.cfg.train.epochs:
                self.state.status = "stopped early" if stop else "finished"
            self.save_last()
            if self.use_cache:
                self._store_outputs()
            timing = {"epoch_s": time.perf_counter() - t0, **self.clock}
            self.log.epoch(rows, self.state.history, self.cfg.train.epochs, metric, timing)
            reasons = [reason for cb in self.callbacks if (reason := cb(self, epoch))]
            if reasons:
                self.state.status = reasons[0]
                self.save_last()  # the status is part of the state a later resume reads
                self.console.print(f"stopped after epoch {epoch}: {reasons[0]}")
                break
            if stop:
                self.console.print(f"early stopping: no student improved its validation {metric} "
                                   f"for {patience} epochs")
                break
            if self.stop.requested and epoch < self.cfg.train.epochs:
                self._interrupted()  # a signal during validation: stop at this epoch boundary

    def _rows(self, epoch: int, train: dict, val: dict | None) -> list[dict[str, Any]]:
        """One metrics.csv row per network (and the ensemble); new bests are checkpointed. An
        epoch not validated (``train.val_every``) has no val_ values and no best."""
        rows = []
        ensemble = ENSEMBLE in val if val is not None else len(self.cohort.students) > 1
        for name in self.cohort.names + ([ENSEMBLE] if ensemble else []):
            row: dict[str, Any] = {"epoch": epoch, "network": name}
            if name in self.optim.optimizers:
                row["lr"] = self.optim.lr(name)
            row.update({f"train_{k}": v for k, v in train.get(name, {}).items()})
            if val is None:
                row["best"] = False
                rows.append(row)
                continue
            row.update({f"val_{k}": v for k, v in val[name].items()})
            row["best"] = name in self.state.best and val[name][self.metric] > self.state.best[name]["value"]
            if row["best"]:
                self.state.best[name] = {"epoch": epoch, "value": val[name][self.metric]}
                self.save_best(name, val[name][self.metric])
            rows.append(row)
        return rows

    def train_epoch(self) -> dict[str, dict[str, float]]:
        """One epoch from ``state.step`` (0, or where a mid-epoch checkpoint stopped)."""
        cohort, epoch, start = self.cohort, self.state.epoch, self.state.step
        cohort.train()
        cohort.epoch = epoch + 1  # the epoch being trained, for styles that warm up (dkd)
        self.train_loader.batch_sampler.set_epoch(epoch, start=start)
        sums = self.state.partial  # running sums of every loss term (restored mid-epoch)
        every = self.cfg.train.checkpoint_every_steps
        total_steps = len(self.train_loader)
        optimizers = list(self.optim.optimizers.values())
        label = f"{epoch + 1}/{self.cfg.train.epochs}"
        unit = dims(self.cfg.data.dims).short
        drawn = self.cfg.data.batch_size + self.unlabeled_batch  # images a step draws, labelled or not
        with self.log.epoch_progress(label, total_steps, start, drawn, unit) as progress:
            for step, batch in enumerate(self._batches(), start=start):
                batch = self.rt.batch(batch)
                batch = batch.mixed(self.mixer.draw(epoch, step, tuple(batch.images.shape[2:])))
                with self.rt.autocast():
                    losses = self.model(batch)
                total = torch.stack([nl.total.float() for nl in losses.values()]).sum()
                diverged, stop = distributed.any_flags([not bool(torch.isfinite(total)), self.stop.requested],
                                                       self.dist, self.device)
                if diverged:
                    self._diverged(losses, step)
                self.rt.backward(total, optimizers)
                cohort.after_step()
                for name, nl in losses.items():
                    acc = sums.setdefault(name, {})
                    acc["loss"] = acc.get("loss", 0) + nl.total.detach().float()
                    for term, v in nl.terms.items():
                        acc[term] = acc.get(term, 0) + v.detach().float()
                self.state.step = step + 1
                progress.update(self.state.step, lambda: "  ".join(
                    f"{n} {float(a['loss']) / self.state.step:.3f}" for n, a in sums.items()))
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

    def validate(self) -> dict[str, dict[str, float]]:
        self._before_workers_start(self.val_loader)
        split = self.data.splits["val"]
        # every rank scores its own share; a frozen network's outputs never change: computed once, then reused
        scores = score_cohort(self.cohort, self.val_loader, self.device, split.window, split.spacing,
                              known=self._frozen_val, per_image=False, details=False,
                              gather=lambda obj: distributed.gather_objects(obj, self.dist))
        if scores.pooled:
            self._frozen_val = {n: scores.probs[n] for n in self.cohort.frozen}
        return scores.metrics

    # ------------------------------------------------------------------ ways to stop

    def _land(self) -> None:
        """Let the checkpoints given to the writer land before training ends (a write error
        while another error is on its way out is shown, not raised over it)."""
        try:
            self.writer.wait()
        except KDError as exc:
            self.console.print(f"[yellow]warning: {exc}")

    def _diverged(self, losses, step: int) -> None:
        where = f"epoch {self.state.epoch + 1} step {step + 1}"
        for name, nl in losses.items():
            for term, value in nl.terms.items():
                value = value.detach()
                if not torch.isfinite(value):
                    self._land()
                    last = self.folder.last
                    kept = f"last good checkpoint: {last} (epoch {self.state.epoch})" if last.is_file() \
                        else "no checkpoint was written yet"
                    self.log.failure(self.state, "diverged", f"{name}: {term} non-finite at {where}")
                    raise TrainingDiverged(f"network '{name}': loss term '{term}' is {value.item()} at {where}; "
                                           f"training stopped, {kept}; try a lower optim.lr")
        self.log.failure(self.state, "diverged", "a loss became non-finite")
        raise TrainingDiverged(f"a loss became non-finite at {where}")

    def _interrupted(self) -> None:
        """A stop signal arrived: last.pt is written; say so in run.json and raise Interrupted."""
        signum = self.stop.signum or 2
        where = (f"epoch {self.state.epoch + 1} step {self.state.step}" if self.state.step
                 else f"the end of epoch {self.state.epoch}")
        self.write_status("interrupted", stopped_at={"epoch": self.state.epoch, "step": self.state.step,
                                                     "signal": signal_name(signum)})
        raise Interrupted(f"{signal_name(signum)}: training stopped after {where} with a checkpoint; resume with "
                          f"'kdstyles train --resume {self.run_dir}'", signum)
