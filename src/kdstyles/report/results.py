"""Results read back for reports: rows of results.csv (or one run's eval.json), the run
folders behind them, and the statistics over seeds (mean, sample std)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import KDError
from ..common.metrics import task_metrics, task_of
from ..styles.routing import DEFAULT_PRESET
from ..store.runfolder import ComparisonFolder, RunFolder

TARGET = DEFAULT_PRESET  # the paired comparison puts the paper's preset against each baseline


def metric_set(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The task's table metrics that the rows carry: the task the rows' runs recorded, or (run
    folders written before eval.json recorded it) the one whose metrics are there."""
    present = {k for r in rows for k, v in r.items() if isinstance(v, (int, float))}
    task = next((r["task"] for r in rows if isinstance(r.get("task"), str)), None) or task_of(present)
    return tuple(task_metrics(task, present))


def primary(rows: list[dict[str, Any]]) -> str:
    return metric_set(rows)[0]


def load_rows(folder: Path, split: str = "test") -> list[dict[str, Any]]:
    """results.csv of a comparison, or one run's eval.json as rows: those of the test split, or
    of an external set (``split``: its name)."""
    folder = Path(folder)
    comparison = ComparisonFolder(folder)
    if comparison.results_path.is_file():
        rows = [r.values() for r in comparison.results(split)]
        task = RunFolder(rows[0]["run_dir"]).task() if rows else None
        return [row | ({"task": task} if task else {}) for row in rows]
    run = RunFolder(folder)
    if run.eval_file(split).is_file():
        evaluation = run.read_eval(split)
        task = {"task": evaluation.task} if evaluation.task else {}
        return [row.values() | task for row in evaluation.rows(run_dir=str(folder))]
    raise KDError(f"'{folder}' has neither results.csv (a comparison) nor eval.json (an evaluated run); "
                  "run kdstyles compare or kdstyles evaluate first")


def external_sets(folder: Path) -> list[str]:
    """The external sets (``data.external``) a comparison's results.csv, or a run folder, holds
    results of, in their order."""
    comparison = ComparisonFolder(folder)
    if comparison.results_path.is_file():
        names = dict.fromkeys(r.split for r in comparison.results(whole=False))  # load_rows checks it whole
        return [s for s in names if s not in ("test", "val", "train")]
    return RunFolder(folder).external_evaluated()


def run_dirs(folder: Path, rows: list[dict[str, Any]]) -> dict[tuple[str, int], Path]:
    """(preset, seed) -> run folder, resolved inside the report's folder when moved."""
    out = {}
    for r in rows:
        path = Path(str(r["run_dir"]))
        local = folder / path.name
        out[(r["preset"], r["seed"])] = local if local.is_dir() else (folder if path == folder else path)
    return out


def mean_std(values: list[float]) -> tuple[float, float, int]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals)


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(preset, network) -> metric -> (mean, sample std, n) over seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["preset"], r["network"])].append(r)
    metrics = metric_set(rows)
    return {key: {m: mean_std([r.get(m) for r in rs]) for m in (*metrics, "parameters")} for key, rs in groups.items()}


def teacher_preset(rows: list[dict[str, Any]]) -> str | None:
    """The first preset whose runs have a teacher (its rows stand for the teacher in tables)."""
    return next((p for p in presets_in(rows) if any(r["network"] == "teacher" and r["preset"] == p for r in rows)),
                None)


def presets_in(rows) -> list[str]:
    return list(dict.fromkeys(r["preset"] for r in rows))


def networks_in(rows) -> list[str]:
    order = list(dict.fromkeys(r["network"] for r in rows))
    return [n for n in order if n != "teacher"]
