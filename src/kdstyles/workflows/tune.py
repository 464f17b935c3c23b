"""``kdstyles tune``: search the knobs that decide whether distillation helps (temperature,
``ce_weight``, edge weights, learning rate, the routing itself...) with Optuna.

The search space is the config's ``tune.space``: config keys with a range or choices. Each
trial is one ordinary run (its own run folder ``trial-<N>`` in the tune folder, trained by
``run_one`` as every run of compare and the launcher is) with the trial's values as changes;
its value is the validation metric of ``tune.objective`` (never the test split, which a
trial does not evaluate). The engine reports each epoch's validation value to the trial, and a
trial below the median of earlier ones at the same epoch is stopped (``pruned``).

Keys under ``teacher.`` (``teacher.train.epochs``) belong to a shared teacher instead: it is
trained on labels alone before the trial, once per distinct set of its values (reused by
later trials and other workers, who wait while one of them trains it), and the trial's
students learn from it as a frozen offline teacher, as in ``compare --teacher shared``.

The study lives in a database: ``sqlite:///<folder>/study.db`` by default, or any URL Optuna
supports (PostgreSQL, MySQL). Several processes or machines work on one study by running
the same command with the same ``--storage``; together they stop at ``tune.trials``. A
crashed worker's trial is marked failed (heartbeats) and tried again; running the command
again resumes the study.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compare import shared_teacher
from .runs import RunSpec, run_one, run_state
from ..config import Change, changes_of, load_config
from ..errors import Interrupted, KDError, TrainingDiverged
from ..store.fileio import FolderLock, make_folder
from ..store.runfolder import ComparisonFolder, RunFolder

TRIAL_DIR = "{study}-trial-{number}"
TRIAL = "trial"  # a trial's RunSpec preset
TEACHER_DIR = "{study}-teacher-{values}"
TEACHER = "teacher."  # tune.space keys of the shared teacher's own run
MAX_FAILED_IN_A_ROW = 5  # a worker whose trials keep diverging stops instead of spinning
HEARTBEAT_S = 60  # a worker that stops beating for 2 minutes has crashed: its trial is failed and retried


def _optuna():
    try:
        import optuna
    except ImportError:
        raise KDError("kdstyles tune needs Optuna: pip install 'kdstyles[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def check_space(config: str | None, overrides: list[str]) -> Any:
    """The base config, after checking that every searched key takes each end of its range
    (or each choice), so a typo fails here in one line, not in trial 7."""
    cfg = load_config(config, overrides)
    space = cfg.tune.space
    if not space:
        raise KDError("tune.space is empty; give the keys to search, e.g. tune.space: {optim.lr: {low: 1.0e-4, "
                      "high: 1.0e-2, log: true}, styles.predictions.temperature: {low: 1, high: 8}}")
    for key, p in space.items():
        values = p.choices if p.choices is not None else [int(p.low) if p.int else p.low,
                                                          int(p.high) if p.int else p.high]
        for v in values:
            try:
                if key.startswith(TEACHER):
                    shared_teacher(config, cfg, cfg.train.seed, Path("runs"), "teacher", changes_of(overrides),
                                   [(key.removeprefix(TEACHER), v)], option=None)
                else:
                    load_config(config, overrides, changes=[(key, v)])
            except KDError as exc:
                raise KDError(f"tune.space.{key}: the value {v!r} does not make a valid experiment ({exc})") from None
    students = list(cfg.networks.students)
    if cfg.tune.objective not in ("students", "ensemble", *students):
        raise KDError(f"tune.objective '{cfg.tune.objective}' is not known; allowed: students, ensemble, "
                      f"{', '.join(students)}")
    if cfg.tune.objective == "ensemble" and len(students) < 2:
        raise KDError("tune.objective: ensemble needs at least two students; use students or a student's name")
    return cfg


def _teacher_dir(study: str, values: dict[str, Any]) -> str:
    """The shared teacher's run folder name for one set of its values, readable where short
    (``tune-demo-teacher-train.epochs=12``), a digest of the values where long or odd."""
    text = ",".join(f"{k.removeprefix(TEACHER)}={v}" for k, v in sorted(values.items()))
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    if len(safe) > 60 or safe != text:
        safe = hashlib.sha1(text.encode()).hexdigest()[:12]
    return TEACHER_DIR.format(study=study, values=safe)


def _train_teacher(config, cfg, out: Path, name: str, overrides: list[str], values: dict[str, Any], quiet: bool,
                   echo) -> tuple[Change, ...]:
    """Train the shared teacher for these values unless a finished one exists (waiting while
    another worker trains it); returns the changes that load it in the trial's run."""
    spec, shared = shared_teacher(config, cfg, cfg.train.seed, out, name, changes_of(overrides),
                                  [(k.removeprefix(TEACHER), v) for k, v in values.items()])
    with FolderLock(out, "tune folder", name=f".{name}.lock", wait=True):  # one worker trains it, the others wait
        state = run_state(spec)
        echo(f"  shared teacher: {spec.run_dir} (trained before)" if state == "done" else
             f"  shared teacher: {'resuming' if state == 'resume' else 'training' if state == 'new' else 'evaluating'} "
             f"{spec.run_dir}")
        result = run_one(spec, quiet=quiet)  # as compare's shared teachers: trained or resumed, then evaluated
        if result["state"] == "interrupted":
            raise Interrupted(result["error"], result["signum"])
        if result["state"] == "failed":
            raise KDError(f"shared teacher {spec.run_dir}: {result['error']}")
    return shared


def _suggest(trial, key: str, p) -> Any:
    if p.choices is not None:
        return trial.suggest_categorical(key, p.choices)
    if p.int:
        return trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
    return trial.suggest_float(key, p.low, p.high, log=p.log)


def epoch_value(history: list[dict[str, Any]], epoch: int, metric: str, objective: str, students: list[str]
                ) -> float:
    """The objective's validation value at one epoch (the students' mean, the ensemble's, or one student's)."""
    rows = {r["network"]: r.get(f"val_{metric}") for r in history if r["epoch"] == epoch}
    names = students if objective == "students" else [objective]
    values = [rows.get(n) for n in names]
    return math.nan if any(v is None for v in values) else sum(values) / len(values)


def trial_value(history: list[dict[str, Any]], metric: str, objective: str, students: list[str]) -> float:
    """A finished trial's value: each network's best validation value over the epochs (as each
    network's best checkpoint is kept), averaged over the students for ``students``."""
    names = students if objective == "students" else [objective]
    best = [max((r[f"val_{metric}"] for r in history if r["network"] == n and f"val_{metric}" in r),
                default=math.nan) for n in names]
    return sum(best) / len(best)


@dataclass(frozen=True)
class TuneWorker:
    """One worker of a study as a scheduler job (``tune --launcher``): trials until the study
    has enough, sharing ``storage`` with the other workers."""

    config: str | None
    out: str
    overrides: tuple[str, ...]
    storage: str
    study_name: str | None
    trials: int | None

    def __call__(self, index: int) -> dict[str, Any]:
        return tune(self.config, self.out, list(self.overrides), storage=self.storage, study_name=self.study_name,
                    trials=self.trials, quiet=True, echo=print)


def tune(config: str | None, out: str | Path, overrides: list[str] | None = None, storage: str | None = None,
         study_name: str | None = None, trials: int | None = None, quiet: bool = True, echo=print,
         launch: Any = None, workers: int = 1) -> dict[str, Any]:
    """Run trials until the study has ``tune.trials`` (or ``trials``) finished ones; returns the summary.

    ``launch`` (a :class:`~kdstyles.workflows.launch.Launch`): ``workers`` scheduler jobs (a job array on
    Slurm) run the trials instead, sharing the study: ``storage``, or a journal file in the
    tune folder (Optuna's file storage, safe on a shared file system; SQLite over one is
    refused)."""
    optuna = _optuna()
    overrides = list(overrides or [])
    cfg = check_space(config, overrides)
    out = Path(out)
    total = trials or cfg.tune.trials
    if launch is not None:
        return _launch_workers(config, cfg, out, overrides, storage, study_name, trials, launch, workers, echo)
    if storage is None:
        make_folder(out, "tune folder")  # the default database lives in the tune folder
        storage = f"sqlite:///{ComparisonFolder(out).study_db.resolve()}"
    study_name = study_name or cfg.name
    students = list(cfg.networks.students)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.tune.startup_trials, n_warmup_steps=1)
              if cfg.tune.pruner == "median" else optuna.pruners.NopPruner())
    study = _open_study(optuna, storage, study_name, cfg.tune.startup_trials, pruner)
    make_folder(out, "tune folder")
    where = f"{socket.gethostname()}:{os.getpid()}"
    failed = [0]  # trials failed in a row in this worker

    def objective(trial) -> float:
        values = {key: _suggest(trial, key, p) for key, p in cfg.tune.space.items()}
        name = TRIAL_DIR.format(study=study_name, number=trial.number)
        trial.set_user_attr("worker", where)
        trial.set_user_attr("run_dir", str(out / name))
        echo(f"trial {trial.number} ({where}): " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in values.items()))
        teacher = {k: v for k, v in values.items() if k.startswith(TEACHER)}
        metric = None

        def report(trainer, epoch: int) -> str | None:
            nonlocal metric
            metric = trainer.metric
            value = epoch_value(trainer.state.history, epoch, metric, cfg.tune.objective, students)
            if not math.isnan(value):
                trial.report(value, epoch)
            return "pruned" if trial.should_prune() else None

        shared: tuple[Change, ...] = ()
        if teacher:
            t_name = _teacher_dir(study_name, teacher)
            trial.set_user_attr("teacher_run", str(out / t_name))
            shared = _train_teacher(config, cfg, out, t_name, overrides, teacher, quiet, echo)
        changes = (*changes_of(overrides), *((k, v) for k, v in values.items() if k not in teacher), *shared,
                   ("output.dir", str(out)), ("output.name", name))
        spec = RunSpec(TRIAL, cfg.train.seed, str(out / name), config, changes, "best",
                       load_config(config, changes=changes))
        try:
            _raise_failure(run_one(spec, quiet=quiet, callbacks=(report,), evaluate=False), trial.number, echo)
        except TrainingDiverged:
            failed[0] += 1
            if failed[0] >= MAX_FAILED_IN_A_ROW:
                study.stop()
            raise
        failed[0] = 0
        run = RunFolder(spec.run_dir)
        if run.status() == "pruned":
            echo(f"trial {trial.number}: pruned")
            raise optuna.TrialPruned()
        value = trial_value(_history(run), metric, cfg.tune.objective, students)
        echo(f"trial {trial.number}: {value:.4f}")
        return value

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = total - sum(t.state in done for t in study.get_trials(deepcopy=False))
    if remaining > 0:
        study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(total, states=done)],
                       catch=(TrainingDiverged,))
        if failed[0] >= MAX_FAILED_IN_A_ROW:
            raise KDError(f"{failed[0]} trials in a row diverged; narrow tune.space (e.g. lower optim.lr's high) "
                          "and run the same command again")
    summary = summarize(study, optuna)
    summary.update({"storage": storage, "study": study_name, "objective": cfg.tune.objective})
    ComparisonFolder(out).write_tune_summary(summary)
    return summary


def _raise_failure(result: dict[str, Any], number: int, echo) -> None:
    """What a trial's run (``run_one``'s result) ended in, raised where it did not train: a stop
    signal ends the worker; a diverged run (e.g. a learning rate too high) is a failed trial
    (TrainingDiverged: the search goes on); any other failure ends the search in one line."""
    if result["state"] == "interrupted":
        raise Interrupted(result["error"], result["signum"])
    if result["state"] != "failed":
        return
    if result.get("diverged"):
        echo(f"trial {number}: failed ({result['error']})")
        raise TrainingDiverged(result["error"])
    if "traceback" in result:
        echo(result["traceback"])
    raise KDError(f"trial {number} ({result['run_dir']}): {result['error']}")


def _launch_workers(config, cfg, out: Path, overrides: list[str], storage: str | None, study_name: str | None,
                    trials: int | None, launch: Any, workers: int, echo) -> dict[str, Any]:
    from .launch import tune_workers

    if workers < 1:
        raise KDError(f"--workers {workers}: at least 1")
    if storage is not None and storage.startswith("sqlite") and launch.launcher == "slurm":
        raise KDError(f"--storage '{storage}': SQLite over a shared file system corrupts under workers on several "
                      "nodes; give a database server (postgresql://... or mysql://...) or leave --storage out for "
                      "a journal file in the tune folder")
    launch.check(ComparisonFolder(out).workers_dir)
    optuna = _optuna()
    if storage is None:
        make_folder(out, "tune folder")  # the journal lives in the tune folder
    storage = storage or str(ComparisonFolder(out).study_journal.resolve())
    study_name = study_name or cfg.name
    # the study is opened (created) here, before any worker starts or anything else is written: a
    # storage that cannot be opened is one line, not a failure in every worker's log
    _open_study(optuna, storage, study_name, cfg.tune.startup_trials, optuna.pruners.NopPruner())
    make_folder(out, "tune folder")
    echo(f"{workers} worker(s) as {launch.launcher} jobs sharing {storage}")
    done = tune_workers(launch, workers, ComparisonFolder(out).workers_dir, TuneWorker(config, str(out), tuple(overrides), storage,
                                                                     study_name, trials))
    if not launch.wait:
        return {"storage": storage, "study": study_name, "objective": cfg.tune.objective, "submitted": done,
                "trials": {}, "best": [], "importances": {}}
    for result in done:
        if isinstance(result, dict) and "failed" in result:
            echo(f"a worker failed: {result['failed']} (logs: {result['logs']})")
    study = _open_study(optuna, storage, study_name, cfg.tune.startup_trials, optuna.pruners.NopPruner())
    summary = summarize(study, optuna)
    summary.update({"storage": storage, "study": study_name, "objective": cfg.tune.objective})
    ComparisonFolder(out).write_tune_summary(summary)
    return summary


def _storage(optuna, storage: str):
    """A journal file (a path ending in .journal: safe on shared file systems) or a database URL
    (with heartbeats, so a crashed worker's trial is retried)."""
    if storage.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(storage))
    with warnings.catch_warnings():  # heartbeats are marked experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            storage, heartbeat_interval=HEARTBEAT_S, grace_period=2 * HEARTBEAT_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))


def _open_study(optuna, storage: str, name: str, startup: int, pruner, attempts: int = 5):
    """Create or load the study. Workers starting together on a new database race to create its
    tables; the loser sees "already exists" or "locked" and simply tries again."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=_storage(optuna, storage), study_name=name, direction="maximize",
                                       load_if_exists=True,
                                       sampler=optuna.samplers.TPESampler(n_startup_trials=startup), pruner=pruner)
        except Exception as exc:  # SQLAlchemy/Optuna raise many types for a bad URL or an unreachable database
            racing = any(w in str(exc) for w in ("already exists", "database is locked", "UNIQUE constraint"))
            if racing and attempt < attempts - 1:
                time.sleep(0.5 + random.random())
                continue
            raise KDError(f"--storage '{storage}': the study database cannot be opened "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


def _history(run: RunFolder) -> list[dict[str, Any]]:
    """metrics.csv's validation values, as numbers."""
    out = []
    for r in run.read_metrics():
        row: dict[str, Any] = {"network": r["network"], "epoch": int(r["epoch"])}
        row.update({k: float(v) for k, v in r.items() if k.startswith("val_") and v not in ("", None)})
        out.append(row)
    return out


def summarize(study, optuna) -> dict[str, Any]:
    """The best trials and each parameter's importance (Optuna's default evaluator), for
    tune.json and the CLI."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    ranked = sorted(complete, key=lambda t: t.value, reverse=True)
    importances: dict[str, float] = {}
    if len(complete) >= 2:
        try:
            with warnings.catch_warnings():  # few trials: "importances will be equal" is expected, not news
                warnings.simplefilter("ignore", UserWarning)
                importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError):  # e.g. every completed trial drew the same values
            importances = {}
    return {"trials": states,
            "best": [{"number": t.number, "value": t.value, "params": t.params,
                      "run_dir": t.user_attrs.get("run_dir"), "worker": t.user_attrs.get("worker")}
                     for t in ranked[:5]],
            "importances": importances}
