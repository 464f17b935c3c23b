"""One run of a comparison, of tune (a trial, a shared teacher) or of the launcher: what it is
(:class:`RunSpec`, its config validated once), where it stands (:func:`run_state`) and how it
is brought to the end (:func:`run_one`: train or resume, then evaluate). ``compare`` runs them
in this process or in worker processes, ``tune`` one per trial (reporting each epoch to
Optuna), ``kdstyles.workflows.launch`` as scheduler jobs."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import Change, ExperimentConfig
from ..errors import Interrupted, KDError, TrainingDiverged
from ..store.runfolder import STATUS_DONE, RunFolder

SHARED_TEACHER = "teacher"  # the run folders of shared teachers: teacher-seed<N>


@dataclass(frozen=True)
class RunSpec:
    preset: str  # the variant's name: a preset, 'custom', an ablation variant, or 'teacher' (the shared teacher)
    seed: int
    run_dir: str
    config: str | None
    changes: tuple[Change, ...]  # on top of config: the command's --set, the variant's keys, seed and place
    checkpoint: str
    cfg: ExperimentConfig = field(repr=False, compare=False)  # the run's config, validated once by plan

    def record(self) -> dict[str, Any]:
        """What comparison.json keeps of it: the fields (the changes as one mapping, a later
        value of a key in place of an earlier one), and the edges the run trains."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cfg", "changes")} | {
            "changes": dict(self.changes), "edges": [str(e) for e in self.cfg.edges]}


def run_state(spec: RunSpec) -> str:
    """done (finished or stopped early, evaluated at the spec's checkpoint), evaluate, resume or new."""
    run = RunFolder(spec.run_dir)
    status = run.status()
    if status in STATUS_DONE and run.eval_checkpoint() == spec.checkpoint and run.eval_file("val").is_file():
        return "done"
    if status in STATUS_DONE:
        return "evaluate"
    return "resume" if run.last.is_file() else "new"


PAUSED = "paused"  # a run stopped at an epoch on purpose (compare --budget's rungs); it resumes like any other


def run_one(spec: RunSpec, quiet: bool = True, threads: int | None = None, stop_after: int | None = None,
            callbacks: tuple[Any, ...] = (), evaluate: bool = True) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; never raises (the error is returned: ``diverged``
    says a loss became non-finite), except that a stop signal ends it as ``interrupted`` after
    its checkpoint. ``threads``: torch's threads for this run (restored afterwards).
    ``stop_after``: pause after that epoch (its schedule unchanged, so resuming it later ends
    exactly as a run never paused), unevaluated. ``callbacks``: called after every epoch as
    ``callback(trainer, epoch)``, a returned status stops the run there (tune's pruning).
    ``evaluate=False``: trained only (a tune trial is judged on its validation history)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(spec, quiet, stop_after, tuple(callbacks), evaluate)
    finally:
        torch.set_num_threads(previous)


def _run(spec: RunSpec, quiet: bool, stop_after: int | None, callbacks: tuple[Any, ...], evaluate: bool
         ) -> dict[str, Any]:
    from ..api import Experiment

    def pause(trainer: Any, epoch: int) -> str | None:
        return PAUSED if stop_after is not None and stop_after <= epoch < trainer.cfg.train.epochs else None

    try:
        state = run_state(spec)
        if state == "done" or (state == "evaluate" and not evaluate):
            return {"run_dir": spec.run_dir, "state": "skipped (finished)"}
        if state == "new":
            exp = Experiment(spec.cfg, quiet=quiet)
            exp.fit(callbacks=[pause, *callbacks])
        else:
            exp = Experiment.from_run(spec.run_dir, quiet=quiet)
            if state == "resume":
                done = exp.run_info().epochs_done or 0
                if stop_after is not None and done >= stop_after:
                    return {"run_dir": spec.run_dir, "state": PAUSED}
                exp.fit(resume=True, callbacks=[pause, *callbacks])
        if exp.folder.status() == PAUSED:
            return {"run_dir": spec.run_dir, "state": PAUSED}
        if not evaluate:
            return {"run_dir": spec.run_dir, "state": {"new": "trained", "resume": "resumed"}[state]}
        exp.evaluate_sets(checkpoint=spec.checkpoint)
        exp.evaluate(checkpoint=spec.checkpoint, split="val")  # what a comparison's choice is made on
        return {"run_dir": spec.run_dir, "state": {"new": "trained", "resume": "resumed"}.get(state, "evaluated")}
    except Interrupted as exc:
        return {"run_dir": spec.run_dir, "state": "interrupted", "error": str(exc), "signum": exc.signum}
    except KDError as exc:
        return {"run_dir": spec.run_dir, "state": "failed", "error": str(exc),
                "diverged": isinstance(exc, TrainingDiverged)}
    except Exception as exc:  # a crash in one run must not lose the others
        return {"run_dir": spec.run_dir, "state": "failed",
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
