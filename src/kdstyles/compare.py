"""Compare presets over seeds: every preset x seed is its own run folder in one comparison
folder; results.csv gathers every network's test metrics; the report renders them.

Resumable: a finished run is skipped, an interrupted one is resumed, a new one started,
so running the same command again after a crash continues where it stopped. ``jobs > 1``
runs several at once in separate processes, splitting the CPU threads between them.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import PRESET_NAMES, load_config
from .errors import KDError
from .fileio import write_text

CUSTOM = "custom"  # the config's own routing (its edges or preset), next to the named presets
DONE = ("finished", "stopped early")


@dataclass(frozen=True)
class RunSpec:
    preset: str
    seed: int
    run_dir: str
    config: str | None
    overrides: tuple[str, ...]
    checkpoint: str


def plan(config: str | None, presets: list[str], seeds: int, out: Path, overrides: list[str],
         checkpoint: str = "best") -> list[RunSpec]:
    for p in presets:
        if p not in PRESET_NAMES and p != CUSTOM:
            raise KDError(f"--presets: '{p}' is not a preset; allowed: {', '.join(PRESET_NAMES)}, {CUSTOM}")
    if seeds < 1:
        raise KDError("--seeds must be at least 1")
    base = load_config(config, overrides)  # fails here, before any run, on a bad config
    specs = []
    for preset in presets:
        routing = [] if preset == CUSTOM else [f"routing.preset={preset}"]
        if routing and base.routing.edges is not None:
            raise KDError(f"the config routes by edges; compare it as '--presets {CUSTOM}' next to named presets, "
                          f"and remove routing.edges to run '{preset}'")
        for i in range(seeds):
            seed = base.train.seed + i
            name = f"{preset}-seed{seed}"
            ov = (*overrides, *routing, f"train.seed={seed}", f"output.dir={out}", f"output.name={name}")
            load_config(config, list(ov))  # every run's config is valid before the first starts
            specs.append(RunSpec(preset, seed, str(out / name), config, ov, checkpoint))
    return specs


def run_state(spec: RunSpec) -> str:
    run = Path(spec.run_dir)
    info = run / "run.json"
    status = json.loads(info.read_text()).get("status") if info.is_file() else None
    evaluated = run / "eval.json"
    if status in DONE and evaluated.is_file() and json.loads(evaluated.read_text()).get("checkpoint") == spec.checkpoint:
        return "done"
    if status in DONE:
        return "evaluate"
    return "resume" if (run / "checkpoints" / "last.pt").is_file() else "new"


def run_one(spec: RunSpec, quiet: bool = True, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; never raises (the error is returned)."""
    import torch

    from .api import Experiment

    if threads:
        torch.set_num_threads(threads)
    state = run_state(spec)
    try:
        if state == "done":
            return {"run_dir": spec.run_dir, "state": "skipped (finished)"}
        if state == "new":
            exp = Experiment(spec.config, overrides=list(spec.overrides), quiet=quiet)
            exp.fit()
        else:
            exp = Experiment.from_run(spec.run_dir, quiet=quiet)
            if state == "resume":
                exp.fit(resume=True)
        exp.evaluate(checkpoint=spec.checkpoint)
        return {"run_dir": spec.run_dir, "state": {"new": "trained", "resume": "resumed"}.get(state, "evaluated")}
    except KDError as exc:
        return {"run_dir": spec.run_dir, "state": "failed", "error": str(exc)}
    except Exception as exc:  # a crash in one run must not lose the others
        return {"run_dir": spec.run_dir, "state": "failed",
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)


def execute(specs: list[RunSpec], jobs: int = 1, quiet: bool = False, echo=print) -> list[dict[str, Any]]:
    """Run every spec (sequentially in this process, or ``jobs`` processes at a time)."""
    results = []
    total = len(specs)
    if jobs <= 1:
        for i, spec in enumerate(specs, 1):
            echo(f"[{i}/{total}] {spec.preset} seed {spec.seed}: {run_state(spec)}")
            results.append(run_one(spec, quiet=quiet))
            _echo_result(results[-1], echo)
        return results
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, spec, True, threads): spec for spec in specs}
        for done, future in enumerate(as_completed(futures), 1):
            spec = futures[future]
            results.append(future.result())
            echo(f"[{done}/{total}] {spec.preset} seed {spec.seed}:")
            _echo_result(results[-1], echo)
    return results


def _echo_result(result: dict[str, Any], echo) -> None:
    line = f"    {result['state']}: {result['run_dir']}"
    if "error" in result:
        line += f" -- {result['error']}"
    echo(line)


RESULT_FIELDS = ("preset", "seed", "network", "checkpoint", "split", "accuracy", "balanced_accuracy", "f1", "auroc",
                 "ece", "dice", "iou", "hd95", "pixel_accuracy", "nll", "fidelity_kl", "agreement", "parameters",
                 "compression", "run_dir")


def collect(specs: list[RunSpec]) -> list[dict[str, Any]]:
    """One row per run x network from each run's eval.json (runs without one are left out)."""
    rows = []
    for spec in specs:
        path = Path(spec.run_dir) / "eval.json"
        if not path.is_file():
            continue
        ev = json.loads(path.read_text())
        for network, metrics in ev["networks"].items():
            row = {"preset": spec.preset, "seed": spec.seed, "network": network, "checkpoint": ev["checkpoint"],
                   "split": ev["split"], "run_dir": spec.run_dir}
            row.update({k: metrics.get(k, "") for k in RESULT_FIELDS if k in metrics})
            rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, restval="")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


def compare(config: str | None, presets: list[str], seeds: int, out: str | Path, overrides: list[str] | None = None,
            jobs: int = 1, checkpoint: str = "best", quiet: bool = False, echo=print) -> dict[str, Any]:
    """Plan, run (resuming), gather results.csv, and render the report. Returns a summary."""
    out = Path(out)
    overrides = list(overrides or [])
    specs = plan(config, presets, seeds, out, overrides, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"config": config, "presets": presets, "seeds": seeds, "overrides": overrides, "checkpoint": checkpoint,
                "runs": [spec.__dict__ | {"overrides": list(spec.overrides)} for spec in specs]}
    write_text(out / "comparison.json", json.dumps(manifest, indent=2) + "\n")
    results = execute(specs, jobs=jobs, quiet=quiet, echo=echo)
    rows = collect(specs)
    write_results(rows, out / "results.csv")
    failed = [r for r in results if r["state"] == "failed"]
    return {"out": str(out), "runs": len(specs), "failed": failed, "rows": len(rows)}
