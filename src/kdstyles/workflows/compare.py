"""Compare presets over seeds: every preset x seed is its own run folder in one comparison
folder; results.csv gathers every network's test metrics; the report renders them.

Resumable: a finished run is skipped, an interrupted one is resumed, a new one started,
so running the same command again after a crash continues where it stopped. ``jobs > 1``
runs several at once in separate processes, splitting the CPU threads between them.

Stopping: on SIGINT/SIGTERM/SIGHUP the parent passes the signal to its workers, each run
writes a checkpoint and stops, no new run starts, and :class:`Interrupted` is raised. A
worker whose parent dies (even by SIGKILL) stops the same way by itself. The comparison
folder is locked while a compare runs in it, and every run folder while a run trains.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from ..config import Change, ExperimentConfig, build_config, changes_of, load_config, read_yaml
from ..errors import Interrupted, KDError
from ..styles.routing import DEFAULT_PRESET, PRESETS
from ..store.runfolder import ComparisonFolder, Manifest, ResultRow, RunFolder
from .runs import SHARED_TEACHER, RunSpec, run_one, run_state
from ..common.signals import GracefulStop, signal_name

CUSTOM = "custom"  # the config's own routing (its edges or preset), next to the named presets
TEACHER_MODES = ("online", "shared")
# kdstyles demo: students alone, the paper's routing, and the recipe that closed most of the teacher's lead on real
# photos (docs/realimages.md: kd at temperature 4 on labelled and unlabelled images), here on the embedded data's
# own unlabelled images
DEMO_PRESETS = ("student", "diverse")
DEMO_RECIPES = {"kd-unlabelled": {"preset": "kd", "set": {"styles.predictions.temperature": 4,
                                                          "data.unlabeled": {"source": "synthetic", "samples": 2000}},
                                  "note": "the recipe the real-image study recommends"}}
DEMO_VARIANTS = (*DEMO_PRESETS, *DEMO_RECIPES)
DEMO_TEACHER_EPOCHS = 2  # the demo's shared teacher trains for this many times the students' epochs
STOP_GRACE_S = 120  # how long stopped workers may take to write their checkpoints before they are killed


@dataclass(frozen=True)
class Variant:
    """One routing compared: a preset, the config's own routing, or an ablation of it (``edges``:
    the routing's own edges it keeps, set on the config as objects); ``changes``: the config keys
    it sets (typed values: a recipe's YAML as read, never text parsed again)."""

    name: str
    changes: tuple[Change, ...]
    note: str = ""
    edges: tuple | None = None
    baseline: bool = False  # a reference (a ceiling, another baseline), never the comparison's choice

    def config(self, raw: dict, changes: list[Change]) -> ExperimentConfig:
        """This variant's config: the raw config with ``changes`` on top, then its edges."""
        cfg = build_config(raw, changes=changes)
        if self.edges is None:
            return cfg
        resolved = cfg.model_dump(mode="json")
        resolved["routing"] = {"preset": None, "edges": [e.config().model_dump() for e in self.edges]}
        return build_config(resolved)


def preset_variants(presets: list[str], base, beside_edges: bool = False) -> list[Variant]:
    """The named presets (and 'custom', the config's routing). ``beside_edges``: a config that
    routes by edges may still run named presets beside its own routing (--ablate)."""
    for p in presets:
        if p not in PRESETS and p != CUSTOM:
            compared = ", ".join(q for q, preset in PRESETS.items() if not preset.teacher_only)
            raise KDError(f"--presets: '{p}' is not a preset; allowed: {compared}, {CUSTOM}")
        if p in PRESETS and PRESETS[p].teacher_only:
            raise KDError(f"--presets: '{p}' trains the teacher alone and has no students to compare; --teacher "
                          "shared trains one such teacher per seed for the others")
    if len(set(presets)) != len(presets):
        raise KDError(f"--presets: a preset is named twice ({', '.join(presets)})")
    out = []
    for p in presets:
        if p != CUSTOM and base.routing.edges is not None and not beside_edges:
            raise KDError(f"the config routes by edges; compare it as '--presets {CUSTOM}' next to named presets, "
                          f"and remove routing.edges to run '{p}'")
        out.append(Variant(p, () if p == CUSTOM else (("routing.edges", None), ("routing.preset", p))))
    return out


def recipe_variants(path: str | Path | dict, base) -> list[Variant]:
    """Recipes from a YAML file: each a name, a routing preset (or ``custom``, the config's own
    routing) and the config keys it sets, e.g.

        kd-unlabelled: {preset: kd, set: {data.unlabeled: {source: npz, path: pool.npz}}}
        all-labels: {preset: student, set: {data.path: teacher.npz}}

    so one comparison can hold recipes that differ in more than their edges (images without
    labels, mixing, epochs, a style's options), each against the same students trained alone."""
    from ..config import read_yaml

    try:
        raw = path if isinstance(path, dict) else read_yaml(path)  # the Python API may pass the mapping itself
    except KDError as exc:
        raise KDError(str(exc).replace("config file", "--recipes file", 1)) from None
    if isinstance(path, dict):
        path = "recipes"
    if not raw:
        raise KDError(f"--recipes '{path}': lists no recipe; give name: {{preset: kd, set: {{KEY: VALUE}}}}")
    out = []
    for name, recipe in raw.items():
        where = f"--recipes '{path}': recipe '{name}'"
        if not isinstance(name, str) or not name or name.startswith(".") or \
                not all(c.isalnum() or c in "-_." for c in name):
            raise KDError(f"--recipes '{path}': recipe name {name!r} must be a plain name (letters, digits, -, _)")
        recipe = {"preset": recipe} if isinstance(recipe, str) else recipe
        keys = {"preset", "set", "note", "baseline"}
        if not isinstance(recipe, dict) or set(recipe) - keys:
            extra = sorted(set(recipe) - keys) if isinstance(recipe, dict) else []
            raise KDError(f"{where}: " + (f"unknown key '{extra[0]}'; " if extra else "") +
                          "allowed: preset (a routing preset or custom), set (config keys), note, baseline (true: a "
                          "reference such as a ceiling, never the comparison's choice)")
        if not isinstance(recipe.get("baseline", False), bool):
            raise KDError(f"{where}: baseline is true or false")
        preset = recipe.get("preset", CUSTOM)
        given = recipe.get("set") or {}
        if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
            raise KDError(f"{where}: set must map config keys to values, e.g. {{train.epochs: 32}}")
        try:
            routed = preset_variants([preset], base, beside_edges=True)[0]
        except KDError as exc:
            raise KDError(f"{where}: {str(exc).removeprefix('--presets: ')}") from None
        out.append(Variant(name, (*routed.changes, *given.items()),
                           str(recipe.get("note") or ""), baseline=recipe.get("baseline", False)))
    return out


def ablation_variants(base) -> tuple[list[Variant], dict[str, Any]]:
    """The config's routing, each variant without one of its edges, its teacher edges only and
    its peer edges only (where those differ from the rest); plus what each variant removed."""
    from ..styles.routing import T

    edges = base.edges
    if len(edges) < 2:
        raise KDError(f"--ablate: the routing '{base.routing.label}' has {len(edges)} edge(s); dropping one edge at a "
                      "time needs at least 2 (choose one with --set routing.preset=NAME)")
    full = base.routing.label
    variants = [Variant(full, (), "every edge")]
    removed: dict[str, list[str]] = {full: []}
    seen = {frozenset(range(len(edges)))}

    def add(name: str, keep: list[int], note: str) -> None:
        if frozenset(keep) in seen:
            return
        seen.add(frozenset(keep))
        while name in removed:
            name += "-2"
        variants.append(Variant(name, (), note, tuple(edges[i] for i in keep)))
        removed[name] = [str(edges[i]) for i in range(len(edges)) if i not in keep]

    for i, e in enumerate(edges):
        add(f"without-{e.src}-{e.dst}-{e.style}", [j for j in range(len(edges)) if j != i],
            f"without {e.src} -> {e.dst} {e.style}")
    teacher = [i for i, e in enumerate(edges) if e.src == T]
    peers = [i for i, e in enumerate(edges) if e.src != T]
    if teacher and peers:
        add("teacher-edges-only", teacher, "the teacher's edges only")
        add("peer-edges-only", peers, "the students' edges only")
    return variants, {"full": full, "removed": removed}


def base_config(config: str | Path | None, overrides: list[str], presets: list[str], ablate: bool = False):
    """The comparison's config, before each variant's routing. Its own routing is validated
    only where the comparison runs it (``custom``, ``--ablate``): a one-student config whose
    default preset needs two students still compares ``student,kd``."""
    try:
        return load_config(config, overrides)  # fails here, before any run, on a bad config
    except KDError as exc:
        named = [p for p in presets if p in PRESETS]
        if ablate or CUSTOM in presets or not named:
            raise
        try:  # loads with a preset the comparison runs: only the config's own routing was wrong
            return load_config(config, overrides, changes=[("routing.preset", named[0])])
        except KDError:
            raise exc from None  # the config's own error, not the retry's


def plan(config: str | None, presets: list[str], seeds: int, out: Path, overrides: list[str],
         checkpoint: str = "best", teacher: str = "online", teacher_overrides: list[str] | None = None,
         ablate: bool = False, recipes: str | Path | dict | None = None
         ) -> tuple[list[RunSpec], list[RunSpec], dict[str, Any]]:
    """The runs of a comparison: the shared teachers' (one per seed; none when ``teacher`` is
    online) and every variant x seed; plus what the manifest records about them. Every run's
    config is checked before the first run starts."""
    if seeds < 1:
        raise KDError("--seeds must be at least 1")
    if teacher not in TEACHER_MODES:
        raise KDError(f"--teacher '{teacher}' is not known; allowed: {', '.join(TEACHER_MODES)}")
    teacher_overrides = list(teacher_overrides or [])
    if teacher_overrides and teacher != "shared":
        raise KDError("--teacher-set applies to the shared teacher; add --teacher shared")
    base = base_config(config, overrides, presets, ablate)
    info: dict[str, Any] = {"teacher": {"mode": teacher}}
    if ablate:
        variants, info["ablation"] = ablation_variants(base)
        variants += [v for v in preset_variants([p for p in presets if p != base.routing.label], base, True)
                     if v.name not in {x.name for x in variants}]
        info["target"] = info["ablation"]["full"]
    else:
        variants = preset_variants(presets, base)
        if recipes is not None:
            variants += recipe_variants(recipes, base)
        names = [v.name for v in variants]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise KDError(f"--presets / --recipes: '{twice}' is named twice; every preset and recipe needs its own name")
        info["target"] = next((p for p in (DEFAULT_PRESET, *names) if p in names and p != "student"), names[0])
    info["notes"] = {v.name: v.note for v in variants if v.note}
    info["baselines"] = [v.name for v in variants if v.baseline]
    raw = read_yaml(config) if config is not None else {}
    given = changes_of(overrides)  # the command's text, read once
    try:
        teacher_given = changes_of(teacher_overrides)
    except KDError as exc:
        raise KDError(f"--teacher-set: {exc}".replace("--set ", "", 1)) from None
    teachers, specs = [], []
    for i in range(seeds):
        seed = base.train.seed + i
        shared: tuple[Change, ...] = ()
        if teacher == "shared":
            t_spec, shared = shared_teacher(config, base, seed, out, f"{SHARED_TEACHER}-seed{seed}", given,
                                            teacher_given, checkpoint)
            teachers.append(t_spec)
        for v in variants:
            name = f"{v.name}-seed{seed}"
            changes = (*given, *v.changes, *shared, *run_place(seed, out, name))
            cfg = v.config(raw, list(changes))  # every run's config is valid before the first starts
            specs.append(RunSpec(v.name, seed, str(out / name), config, changes, checkpoint, cfg))
    info["teacher"]["runs"] = {t.seed: t.run_dir for t in teachers}
    info["teacher"]["overrides"] = teacher_overrides
    return teachers, specs, info


def run_place(seed: int, out: Path, name: str) -> tuple[Change, ...]:
    """The changes that make a run of a comparison (or tune) this seed's, in ``out/name``."""
    return ("train.seed", seed), ("output.dir", str(out)), ("output.name", name)


def shared_teacher(config, base, seed: int, out: Path, name: str, given: list[Change],
                   teacher_given: list[Change], checkpoint: str = "best", option: str | None = "--teacher-set"
                   ) -> tuple[RunSpec, tuple[Change, ...]]:
    """The run that trains one seed's shared teacher (preset ``teacher``: the teacher alone, on
    labels; ``given``: the comparison's changes, then ``teacher_given``: its own), and the
    changes that make every run of that seed load it as a frozen offline teacher. ``tune`` uses
    it too, for a teacher whose own keys (``teacher.train.epochs``) are searched."""
    if base.networks.teacher.mode == "offline":
        raise KDError("a shared teacher is trained here; the config's teacher is already offline "
                      "(networks.teacher.mode: offline): leave out --teacher shared and teacher.* keys")
    changes = (*given, ("routing.edges", None), ("routing.preset", "teacher"), ("train.early_stopping", None),
               *teacher_given, *run_place(seed, out, name))
    try:
        cfg = load_config(config, changes=changes)
    except KDError as exc:
        raise (KDError(f"{option}: {exc}".replace("--set ", "", 1)) if option else exc) from None
    same_net = tuple(c for c in teacher_given if c[0].startswith("networks.teacher."))  # the same network to load
    # a cached teacher answers for a fixed set of views of each image: only where views are fixed (one, or
    # data.views of them), never where each step's view is new (unlabelled images need its exact answer)
    cache = base.data.fixed_views and (base.data.unlabeled is None or base.data.views is not None)
    shared = (*same_net, ("networks.teacher.mode", "offline"), ("networks.teacher.checkpoint", str(out / name)),
              ("networks.teacher.cache", bool(cache)))
    return RunSpec(SHARED_TEACHER, seed, str(out / name), config, changes, checkpoint, cfg), shared


def _stop_with_parent(parent: int) -> None:
    """In a worker: when the parent process dies (however), stop like on SIGTERM. Linux is told
    directly (PR_SET_PDEATHSIG); everywhere a thread also watches the parent's PID."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before we got here
        os.kill(os.getpid(), signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="kdstyles-parent-watch").start()


def _worker(spec: RunSpec, threads: int, parent: int, conn) -> None:
    """A spawned process running one spec; the result goes back through ``conn``."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    _stop_with_parent(parent)
    result = run_one(spec, True, threads)
    try:
        conn.send(result)
    except (BrokenPipeError, OSError):
        pass  # the parent is gone; the run folder says what happened


def _echo_result(result: dict[str, Any], echo) -> None:
    line = f"    {result['state']}: {result['run_dir']}"
    if "error" in result:
        line += f" -- {result['error']}"
    echo(line)


def execute(specs: list[RunSpec], jobs: int = 1, quiet: bool = False, echo=print) -> list[dict[str, Any]]:
    """Run every spec (sequentially in this process, or ``jobs`` processes at a time). A stop
    signal ends it after the running runs have written their checkpoints (Interrupted)."""
    if jobs <= 1:
        results = []
        for i, spec in enumerate(specs, 1):
            echo(f"[{i}/{len(specs)}] {spec.preset} seed {spec.seed}: {run_state(spec)}")
            results.append(run_one(spec, quiet=quiet))
            _echo_result(results[-1], echo)
            if results[-1]["state"] == "interrupted":
                raise Interrupted(f"compare stopped by {signal_name(results[-1]['signum'])}; run the same command "
                                  "again to continue", results[-1]["signum"])
        return results
    return _execute_parallel(specs, jobs, echo)


def _execute_parallel(specs: list[RunSpec], jobs: int, echo) -> list[dict[str, Any]]:
    import torch

    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")
    pending = list(specs)
    running: dict[Any, tuple[RunSpec, Any]] = {}  # connection -> (spec, process)
    results: list[dict[str, Any]] = []

    def forward(signum: int) -> None:  # from the signal handler: every worker checkpoints and stops
        for _spec, proc in running.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)

    with GracefulStop(on_signal=forward) as stop:
        stopped_at = None
        while pending or running:
            while pending and len(running) < jobs and not stop.requested:
                spec = pending.pop(0)
                receive, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(spec, threads, os.getpid(), send), daemon=False,
                                   name=f"kdstyles-{spec.preset}-seed{spec.seed}")
                proc.start()
                send.close()
                running[receive] = (spec, proc)
            if stop.requested and stopped_at is None:
                stopped_at = time.monotonic()
            for conn in wait(list(running), timeout=0.5):
                spec, proc = running.pop(conn)
                try:
                    result = conn.recv()
                except (EOFError, OSError):
                    proc.join(5)
                    result = {"run_dir": spec.run_dir, "state": "failed",
                              "error": f"its process ended with exit code {proc.exitcode} before reporting"}
                proc.join()
                results.append(result)
                echo(f"[{len(results)}/{len(specs)}] {spec.preset} seed {spec.seed}:")
                _echo_result(result, echo)
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
                for _spec, proc in running.values():
                    proc.kill()  # did not stop in time; its last checkpoint is still whole
    if stop.requested:
        raise Interrupted(f"compare stopped by {signal_name(stop.signum)}; its runs wrote checkpoints; run the same "
                          "command again to continue", stop.signum)
    return results


def collect(specs: list[RunSpec]) -> list[ResultRow]:
    """One row per run x network from each run's eval.json (runs without one are left out), then
    the rows of every external set (data.external: eval-<name>.json), their ``split`` the set's name."""
    rows = []
    for split in ("test", *dict.fromkeys(e.name for spec in specs for e in spec.cfg.data.external)):
        for spec in specs:
            evaluation = RunFolder(spec.run_dir).evaluation(split)
            if evaluation is not None:
                rows += evaluation.rows(spec.preset, spec.seed, spec.run_dir, columns_only=True)
    return rows


def compare(config: str | None, presets: list[str], seeds: int, out: str | Path, overrides: list[str] | None = None,
            jobs: int = 1, checkpoint: str = "best", quiet: bool = False, echo=print, teacher: str = "online",
            teacher_overrides: list[str] | None = None, ablate: bool = False, launch: Any = None,
            recipes: str | Path | dict | None = None, budget: float | None = None) -> dict[str, Any]:
    """Plan, run (resuming), gather results.csv, and render the report. Returns a summary.

    ``budget`` (seconds): when every run cannot be afforded, the candidates (every variant but
    the students trained alone, which always run in full) are narrowed by successive halving on
    the first seed, by their validation value (:func:`spend`), and the survivors run in full.

    ``teacher='shared'``: per seed one teacher is trained first (``teacher_overrides`` give it
    its own recipe, e.g. more epochs) and every variant of that seed learns from it, frozen.
    ``ablate``: the config's routing, without each of its edges in turn, and its teacher
    edges / peer edges alone (plus ``presets`` beside them).
    ``launch`` (a :class:`~kdstyles.workflows.launch.Launch`): every run a scheduler job instead of a run in
    this process; without waiting, the summary counts the runs still ``queued``."""
    out = Path(out)
    overrides = list(overrides or [])
    if budget is not None and (launch is not None or jobs > 1):
        raise KDError("--budget decides in this process which runs to continue; leave out --launcher and --jobs")
    if budget is not None and not budget > 0:
        raise KDError(f"--budget {budget}: a time above 0, e.g. 90m or 2h")
    if launch is not None:
        launch.check(ComparisonFolder(out).jobs_dir)  # before anything is planned, written or submitted
    teachers, specs, info = plan(config, presets, seeds, out, overrides, checkpoint, teacher, teacher_overrides,
                                 ablate, recipes)
    folder = ComparisonFolder(out)
    with folder.lock():
        manifest = Manifest(config=config, presets=presets,
                            recipes=recipes if isinstance(recipes, dict) else str(recipes) if recipes else None,
                            seeds=seeds, overrides=overrides, checkpoint=checkpoint, **info,
                            runs=[spec.record() for spec in specs])
        folder.write_manifest(manifest)
        results = []
        try:
            if launch is not None:
                from .launch import launch_comparison

                echo(f"{len(teachers) + len(specs)} run(s) as {launch.launcher} jobs" +
                     (f" ({len(teachers)} shared teacher(s) first)" if teachers else ""))
                results = launch_comparison(teachers, specs, launch, folder, echo)
            elif teachers:
                echo(f"shared teachers: {len(teachers)} run(s), one per seed, before the {len(specs)} others")
                results += execute(teachers, jobs=jobs, quiet=quiet, echo=echo)
            untrained = {t.seed: t.run_dir for t in teachers if not RunFolder(t.run_dir).best(SHARED_TEACHER).is_file()}
            if launch is None:
                results += [{"run_dir": s.run_dir, "state": "failed",
                             "error": f"its shared teacher did not train; see {untrained[s.seed]}"}
                            for s in specs if s.seed in untrained]
                todo = [s for s in specs if s.seed not in untrained]
                if budget is not None:
                    spent, halving = spend(todo, budget, quiet, echo)
                    results += spent
                    manifest.halving = halving
                    folder.write_manifest(manifest)
                else:
                    results += execute(todo, jobs=jobs, quiet=quiet, echo=echo)
        finally:
            rows = collect(specs)  # what finished so far, also when stopped
            folder.write_results(rows)
        write_compression(out)
    failed = [r for r in results if r["state"] == "failed"]
    queued = [r for r in results if r["state"] == "queued"]
    return {"out": str(out), "runs": len(teachers) + len(specs), "failed": failed, "rows": len(rows),
            "queued": queued}


def parse_budget(text: str) -> float:
    """``90m``, ``2h``, ``1h30m``, ``45s`` or a number of seconds -> seconds."""
    import re

    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not text or m is None or not any(m.groups()):
        raise KDError(f"--budget '{text}': a time such as 90m, 2h, 1h30m or 3600 (seconds)")
    h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mins * 60 + secs


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 30 min`` (nothing below zero)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _rung_value(spec: RunSpec, metric: str) -> float:
    """A paused or finished run's best validation value so far (over its students and ensemble)."""
    values = []
    for row in RunFolder(spec.run_dir).read_metrics():
        if row.get("network") != "teacher" and row.get(f"val_{metric}") not in ("", None):
            values.append(float(row[f"val_{metric}"]))
    return max(values, default=float("-inf"))


def _epoch_seconds(spec: RunSpec) -> float | None:
    """A run's mean seconds per epoch so far (times.csv), None before its first epoch."""
    times = RunFolder(spec.run_dir).times_path
    if not times.is_file():
        return None
    with times.open(encoding="utf-8") as f:
        rows = [float(r["epoch_s"]) for r in csv.DictReader(f) if r.get("epoch_s")]
    return sum(rows) / len(rows) if rows else None


def spend(specs: list[RunSpec], budget: float, quiet: bool, echo) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run a comparison within ``budget`` seconds: the students trained alone in full first
    (every gap closure needs them), then the candidates by successive halving on the first seed
    where running them all does not fit: rung r trains every surviving candidate up to a share
    2^(r-R) of its epochs (R rungs, as many as halving the candidates down to one takes),
    ranks them by their best validation value so far, and keeps the better half; as soon as the
    survivors' remaining runs (every seed, every epoch, at the epoch times measured) fit what is
    left of the budget, they run in full. Paused runs keep their schedule, so a survivor ends
    exactly as a run never paused. Returns the results and what the halving did."""
    from ..report.analysis import INDEPENDENT

    t0 = time.monotonic()
    results, rungs = [], []
    baseline = [s for s in specs if s.preset == INDEPENDENT]
    candidates = list(dict.fromkeys(s.preset for s in specs if s.preset != INDEPENDENT))
    results += execute(baseline, quiet=quiet, echo=echo)
    first = min(s.seed for s in specs)
    by = {(s.preset, s.seed): s for s in specs}
    metric = next(iter(specs)).cfg.train.selection_metric
    if metric == "auto":
        from ..tasks import TASKS

        metric = TASKS[specs[0].cfg.task].selection
    rate = max([e for s in baseline if (e := _epoch_seconds(s))] or [1.0])  # seconds an epoch, refined below

    def remaining(names: list[str]) -> float:
        """Seconds to finish every run of these candidates, at the epoch times measured."""
        total = 0.0
        for name in names:
            for s in (x for x in specs if x.preset == name):
                done = (RunFolder(s.run_dir).info().epochs_done or 0) if RunFolder(s.run_dir).trained() else 0
                total += max(0, s.cfg.train.epochs - done) * (_epoch_seconds(by[(name, first)]) or rate)
        return total

    alive = list(candidates)
    rounds = max(1, math.ceil(math.log2(len(alive)))) if len(alive) > 1 else 0
    for r in range(rounds):
        left = budget - (time.monotonic() - t0)
        if remaining(alive) <= left or len(alive) == 1:
            break
        share = 2.0 ** (r - rounds)
        echo(f"--budget: {len(alive)} candidates, {duration(left)} left, not enough for all of them; rung "
             f"{r + 1}: each to {share:.0%} of its epochs on seed {first}")
        values = {}
        for name in alive:
            spec = by[(name, first)]
            stop = max(1, math.ceil(spec.cfg.train.epochs * share))
            result = run_one(spec, quiet=quiet, stop_after=stop)
            if result["state"] == "failed":
                results.append(result)
                _echo_result(result, echo)
                values[name] = float("-inf")
                continue
            values[name] = _rung_value(spec, metric)
            echo(f"    {name}: validation {metric} {values[name]:.4f} after {stop} epoch(s)")
        ranked = sorted(alive, key=lambda n: values[n], reverse=True)
        kept = ranked[:math.ceil(len(ranked) / 2)]
        rungs.append({"share": share, "kept": kept, "dropped": {n: values[n] for n in ranked[len(kept):]},
                      "values": values})
        echo(f"    kept {', '.join(kept)}; dropped {', '.join(ranked[len(kept):])} (paused, resumable)")
        alive = kept
    over = remaining(alive) - (budget - (time.monotonic() - t0))
    if over > 0 and alive:
        echo(f"--budget: the finalists ({', '.join(alive)}) need about {duration(over)} more than the budget has "
             "left; running them in full anyway (a comparison needs its finalists' every seed and epoch)")
    results += execute([s for s in specs if s.preset in alive], quiet=quiet, echo=echo)
    halving = {"budget_s": budget, "metric": metric, "candidates": candidates, "finalists": alive, "rungs": rungs,
               "spent_s": time.monotonic() - t0}
    return results, halving


# the embedded data's shifted second site (data/generators: other stain, intensity and blur), as an external test set
DEMO_EXTERNAL = "data.external=[{name: site2, source: synthetic, site: 2}]"


def run_demo(out: Path, overrides: list[str], quiet: bool = False, echo=print) -> Any:
    """``kdstyles demo``: the answer a user came for, on the embedded data in one seed. One shared
    teacher (trained for twice the students' epochs, on labels), then its students trained
    alone, by the paper's ``diverse`` routing and by the recipe the real-image study recommends
    (DEMO_RECIPES), as a comparison in ``out`` (resumable, results.csv and report.html); returns
    its Study (gap closure)."""
    from ..report import load_rows, load_study

    overrides = [DEMO_EXTERNAL, *overrides]  # the second site, scored after the test split (a --set may replace it)
    cfg = load_config(None, list(overrides))
    summary = compare(None, list(DEMO_PRESETS), 1, out, list(overrides), quiet=quiet, echo=echo, teacher="shared",
                      teacher_overrides=[f"train.epochs={DEMO_TEACHER_EPOCHS * cfg.train.epochs}"],
                      recipes=DEMO_RECIPES)
    if summary["failed"]:
        raise KDError(f"demo: {summary['failed'][0]['error']}")
    return load_study(out, load_rows(out))


def write_compression(folder: str | Path) -> None:
    """Measure the networks once (on the evaluated run with the most networks) into
    FOLDER/compression.json for the report; kept when it is already there and whole."""
    from ..report.results import load_rows, run_dirs

    cmp = ComparisonFolder(folder)
    if cmp.compression() is not None:
        return  # kept; missing or damaged: measure
    try:
        rows = load_rows(cmp.path)
    except KDError:
        return
    runs = [RunFolder(r) for r in run_dirs(cmp.path, rows).values() if RunFolder(r).trained()]
    if runs:
        from ..deploy.measure import measure_compression

        run = max(runs, key=lambda r: len(r.info().parameters))
        cmp.write_compression(measure_compression(run.path))
