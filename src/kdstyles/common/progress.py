"""Progress on long work outside the training loop (reading and checking data, preparing
volumes, predicting): rich's bar on a terminal; in a log (a batch job, CI), where rich draws
nothing, a plain line at every tenth of the work with the rate and the time left, once the
work has taken ``quiet_for`` seconds (short work stays silent). Imports rich only: the
torch-free ``predict`` path uses it."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class Steps:
    """``with Steps() as bar: task = bar.add_task("reading 40 volumes", total=40); bar.advance(task)``."""

    def __init__(self, quiet: bool = False, console: Console | None = None, quiet_for: float = 5.0):
        self.quiet, self.quiet_for = quiet, quiet_for
        self.console = console or Console()
        self.bar: Progress | None = None
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> "Steps":
        if not self.quiet and self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.__enter__()
        return self

    def add_task(self, description: str, total: int) -> int:
        if self.bar is not None:
            return self.bar.add_task(description, total=total)
        key = len(self.tasks)
        self.tasks[key] = {"description": description, "total": total, "done": 0, "shown": 0,
                           "t0": time.perf_counter()}
        return key

    def advance(self, key: int, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(key, n)
            return
        if self.quiet:
            return
        task = self.tasks[key]
        task["done"] += n
        done, total = task["done"], max(task["total"], 1)
        tenth = min(10, done * 10 // total)
        elapsed = time.perf_counter() - task["t0"]
        if tenth > task["shown"] and elapsed >= self.quiet_for:
            task["shown"] = tenth
            rate = done / max(elapsed, 1e-9)
            self.console.print(f"{task['description']}: {done}/{total} ({done / total:.0%}), {rate:,.1f}/s, "
                               f"{(total - done) / max(rate, 1e-9):.0f}s left", highlight=False, soft_wrap=True)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
