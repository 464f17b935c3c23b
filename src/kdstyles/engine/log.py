"""What a run tells as it goes: run.json's status (rank 0), metrics.csv, times.csv, TensorBoard events,
progress within the epoch (a bar with images/s and ETA on a terminal; a plain line every
tenth of the epoch in a log) and one line per epoch on the console."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import KDError
from ..store.runfolder import RunFolder


# Where an epoch's seconds went besides the steps (times.csv and the epoch line).
TIMES = [("data_wait_s", "data wait"), ("val_s", "validation"), ("checkpoint_s", "checkpoints")]


def time_summary(times: dict[str, float]) -> str:
    """A run's seconds (times.csv summed) as one phrase: ``2 min 5 s: steps 88%, data wait 2%,
    validation 7%, checkpoints 3%`` (steps: all the rest of the epochs)."""
    total = times.get("epoch_s", 0.0)
    if total <= 0:
        return ""
    parts = {label: times.get(key, 0.0) for key, label in TIMES}
    shares = [("steps", total - sum(parts.values())), *parts.items()]
    minutes, seconds = divmod(round(total), 60)
    spent = f"{minutes} min {seconds} s" if minutes else f"{total:.1f} s"
    return f"{spent}: " + ", ".join(f"{label} {max(v, 0.0) / total:.0%}" for label, v in shares)


class RunLog:
    def __init__(self, folder: RunFolder, main: bool, quiet: bool, tensorboard: bool):
        self.folder, self.main, self.quiet, self.tensorboard = folder, main, quiet or not main, tensorboard
        self.console = Console(quiet=self.quiet)
        self.writer = None

    def status(self, state, status: str, **extra: Any) -> None:
        state.status = status
        if self.main:
            self.folder.update_info(status=status, epochs_done=state.epoch, best=dict(state.best), **extra)

    def failure(self, state, status: str, error: str) -> None:
        """Best effort (the disk may be full): run.json says how the run ended."""
        try:
            self.status(state, status, error=error)
        except (KDError, OSError):
            pass

    def epoch_progress(self, label: str, total: int, start: int, batch_size: int, unit: str = "img"
                       ) -> "EpochProgress":
        return EpochProgress(self, label, total, start, batch_size, unit)

    def epoch(self, rows: list[dict[str, Any]], history: list[dict[str, Any]], epochs: int, metric: str,
              timing: dict[str, float]) -> None:
        """An epoch's rows into metrics.csv, TensorBoard and one console line, which says where
        the epoch's time went besides the steps: waiting for data, validation, checkpoints."""
        if self.main:
            self.folder.write_metrics(history)
            self.folder.append_times({"epoch": rows[0]["epoch"], **timing})
            self._tensorboard(rows, rows[0]["epoch"], timing)
        parts = []
        for r in rows:
            loss = f" loss {r['train_loss']:.3f}" if "train_loss" in r else ""
            value = f" {metric} {r['val_' + metric]:.3f}" if "val_" + metric in r else ""
            parts.append(f"{r['network']}{loss}{value}{'*' if r['best'] else ''}")
        spent = ", ".join(f"{label} {timing[key]:.1f}s" for key, label in TIMES if key in timing)
        head = f"epoch {rows[0]['epoch']}/{epochs} ({timing['epoch_s']:.0f}s: {spent})  "
        self.console.print(head + " | ".join(parts),
                           highlight=False, soft_wrap=True)  # one line per epoch in logs, whatever the width

    def _tensorboard(self, rows: list[dict[str, Any]], epoch: int, timing: dict[str, float]) -> None:
        if not self.tensorboard:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder.tensorboard), purge_step=epoch)
        for row in rows:
            for k, v in row.items():
                if k not in ("epoch", "network", "best") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"{row['network']}/{k}", v, epoch)
        for k, v in timing.items():
            self.writer.add_scalar(f"time/{k}", v, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EpochProgress:
    """Progress within one epoch: ``update(done, losses)`` after every step."""

    def __init__(self, log: RunLog, label: str, total: int, start: int, batch_size: int, unit: str = "img"):
        self.log, self.label, self.total, self.start, self.batch = log, label, total, start, batch_size
        self.unit = unit  # what the speed counts: img (images), vol (volumes or patches)
        self.every = max(1, total // 10)
        self.bar: Progress | None = None

    def __enter__(self) -> "EpochProgress":
        self.t0 = time.perf_counter()
        if not self.log.quiet and self.log.console.is_terminal:
            self.bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[losses]}"), console=self.log.console, transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, epoch=self.label,
                                          speed="", losses="")
        return self

    def update(self, done: int, losses: Callable[[], str]) -> None:
        if self.log.quiet:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (done - self.start) * self.batch / elapsed
        if self.bar is not None:
            if done % 5 == 0 or done == self.total:
                self.bar.update(self.task, completed=done, speed=f"{rate:,.0f} {self.unit}/s", losses=losses())
        elif done % self.every == 0 or done == self.total:
            eta = (self.total - done) * elapsed / max(done - self.start, 1)
            self.log.console.print(f"epoch {self.label} step {done}/{self.total} ({done / self.total:.0%}) "
                                   f"{rate:,.0f} {self.unit}/s, ETA {eta:.0f}s  {losses()}", highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
