"""Results read back for reports: rows of results.csv (or one run's eval.json), the run
folders behind them, and the statistics over seeds (mean, sample std)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import KDError
from ..store.fileio import read_csv
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


def _num(v: str) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def load_rows(folder: Path, split: str = "test") -> list[dict[str, Any]]:
    """results.csv of a comparison, or one run's eval.json as rows: those of the test split, or
    of an external set (``split``: its name)."""
    folder = Path(folder)
    results = ComparisonFolder(folder).results_path
    if results.is_file():
        again = "run the same 'kdstyles compare' command again to rebuild it (finished runs are kept)"
        rows = read_csv(results, again, required=("preset", "seed", "network", "run_dir"))
        _check_whole(folder, results, rows, again)
        rows = [row for row in rows if (row.get("split") or "test") == split]  # older files: the test split's
        task = RunFolder(rows[0]["run_dir"]).task() if rows else None
        return [{k: _num(v) for k, v in row.items()} | ({"task": task} if task else {}) for row in rows]
    run = RunFolder(folder)
    if run.eval_file(split).is_file():
        evaluation = run.read_eval(split)
        task = {"task": evaluation.task} if evaluation.task else {}
        return [row | task for row in evaluation.rows(run_dir=str(folder))]
    raise KDError(f"'{folder}' has neither results.csv (a comparison) nor eval.json (an evaluated run); "
                  "run kdstyles compare or kdstyles evaluate first")


def external_sets(folder: Path) -> list[str]:
    """The external sets (``data.external``) a comparison's results.csv, or a run folder, holds
    results of, in their order."""
    folder = Path(folder)
    results = ComparisonFolder(folder).results_path
    if results.is_file():
        rows = read_csv(results, "", required=("preset", "seed", "network", "run_dir"))
        return [s for s in dict.fromkeys(r.get("split") or "test" for r in rows) if s not in ("test", "val", "train")]
    return RunFolder(folder).external_evaluated()


def _check_whole(folder: Path, path: Path, rows: list[dict[str, str]], again: str) -> None:
    """results.csv as compare wrote it: every row complete (a file cut short ends in a row whose
    last cells are empty), and every evaluated run of the manifest in it (one cut at a row's end
    lacks whole runs). What is damaged is one line, never a table silently left out."""
    for line, row in enumerate(rows, start=2):  # run_dir is the last column, and names the row's preset and seed
        if Path(row.get("run_dir") or "").name != f"{row.get('preset')}-seed{row.get('seed')}" or not row["network"]:
            raise KDError(f"'{path}' is damaged: line {line} is cut short or altered (its run_dir "
                          f"'{row.get('run_dir')}' is not {row.get('preset')}-seed{row.get('seed')}); {again}")
    listed = {(Path(r["run_dir"]).name, r["network"]) for r in rows}  # by folder name: a run_dir may be
    # relative, absolute or moved (run_dirs resolves it by name too)
    for run in ComparisonFolder(folder).manifest().runs:
        rf = RunFolder(str(run.get("run_dir", ""))) if isinstance(run, dict) else None
        if rf is None or not rf.eval_path.is_file():
            continue
        try:
            networks = rf.read_eval().networks
        except KDError:
            continue  # a damaged eval.json is reported where it is read
        missing = next((n for n in networks if (rf.path.name, n) not in listed), None)
        if missing is not None:
            raise KDError(f"'{path}' is damaged: it lacks network '{missing}' of {rf.path}, whose eval.json holds "
                          f"it; {again}")


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
