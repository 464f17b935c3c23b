"""Past one machine: a comparison's runs (and ``tune``'s workers) as jobs of a scheduler,
through submitit. ``--launcher slurm`` submits every run as a Slurm job (a shared teacher's
first; the runs that learn from it depend on it, ``afterok``), so the cluster runs the rest in
parallel; ``--launcher local`` runs the same job objects as processes on this machine
(submitit's local executor; what the tests use, as no cluster is needed for them).

A job trains (or resumes) and evaluates its run exactly as ``compare`` does on one machine
(:func:`kdstyles.workflows.runs.run_one`). Preempted or near its time limit, Slurm sends SIGUSR2
(``--signal``, submitit's default) or SIGTERM: the training writes its checkpoint at the end of
the step, as on any stop signal, and the job requeues itself through submitit's checkpointing
and resumes exactly where it stopped. The comparison folder keeps each run's last job in
``jobs.json`` and the jobs' scripts and logs under ``jobs/``; the same command run again skips
finished runs, leaves queued and running jobs alone, and submits the failed or lost ones again.
"""

from __future__ import annotations

import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..store import sbatch
from ..config import LauncherConfig
from ..errors import KDError

LAUNCHERS = ("slurm", "local")
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"}  # submitit's states of a job not yet over


_SECTION = LauncherConfig()  # the defaults, as the config's launcher section has them


@dataclass(frozen=True)
class Launch:
    """How runs become jobs (the ``--launcher`` options, or a config's ``launcher:`` section)."""

    launcher: str = "slurm"
    partition: str | None = _SECTION.partition
    time_min: int = _SECTION.time_min
    gpus_per_run: int = _SECTION.gpus_per_run
    cpus_per_run: int = _SECTION.cpus_per_run
    mem: str | None = _SECTION.mem
    account: str | None = _SECTION.account
    extra: dict[str, str] = field(default_factory=dict)
    wait: bool = True
    poll_s: float = 30.0  # how often the states of waited-for jobs are asked

    def check(self, folder: Path | None = None) -> None:
        """One line naming the option and what is allowed, before anything is submitted or
        written; ``folder``: where the jobs' scripts and logs will go."""
        if self.launcher not in LAUNCHERS:
            raise KDError(f"--launcher '{self.launcher}' is not known; allowed: {', '.join(LAUNCHERS)}")
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None] if self.launcher == "slurm" else []
        if missing:
            raise KDError(f"--launcher slurm: {missing[0]} is not on PATH; run kdstyles on the cluster's login node "
                          "(--launcher local runs the same jobs on this machine)")
        if self.launcher == "local" and not self.wait:
            raise KDError("--no-wait: local jobs end with this command; leave --no-wait out with --launcher local")
        if self.time_min < 1:
            raise KDError(f"--slurm-time {self.time_min}: minutes, at least 1")
        if self.gpus_per_run < 0 or self.cpus_per_run < 1:
            raise KDError(f"--gpus-per-run {self.gpus_per_run} / --cpus-per-run {self.cpus_per_run}: at least 0 "
                          "GPUs and 1 CPU")
        checks = [("--slurm-partition", sbatch.check_name, self.partition), ("--mem", sbatch.check_mem, self.mem),
                  ("--slurm-account", sbatch.check_name, self.account)]
        for flag, check, value in checks:
            try:
                if value is not None:
                    check(value)
            except ValueError as exc:
                raise KDError(f"{flag} {exc}" if str(exc).startswith("'") else f"{flag}: {exc}") from None
        for key, value in self.extra.items():
            try:
                sbatch.check_extra(key, value)
            except ValueError as exc:
                raise KDError(f"--slurm-extra {exc}") from None
        if folder is not None and self.launcher == "slurm":
            try:
                sbatch.check_path(str(Path(folder).resolve()))
            except ValueError as exc:
                raise KDError(f"--out {exc}") from None
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise KDError("--launcher needs submitit: pip install 'kdstyles[cluster]'") from None

    def executor(self, folder: Path, name: str) -> Any:
        """A submitit executor writing its scripts and logs into ``folder``."""
        import submitit

        tasks = max(1, self.gpus_per_run)  # one process per GPU; a single run spans them (DDP)
        if self.launcher == "local":
            ex = submitit.LocalExecutor(folder)
            ex.update_parameters(timeout_min=self.time_min, tasks_per_node=tasks,
                                 gpus_per_node=self.gpus_per_run, signal_delay_s=30)
            return ex
        ex = submitit.SlurmExecutor(folder)
        params: dict[str, Any] = {"time": self.time_min, "ntasks_per_node": tasks, "cpus_per_task": self.cpus_per_run,
                                  "job_name": name, "signal_delay_s": 120}
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        params.update({k: v for k, v in (("partition", self.partition), ("mem", self.mem),
                                         ("account", self.account)) if v is not None})
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        ex.update_parameters(**params)
        return ex

    def threads(self) -> int:
        """Threads a job's run uses (its CPUs, or this machine's share for local jobs)."""
        return self.cpus_per_run


def parse_extra(pairs: list[str]) -> dict[str, str]:
    """``--slurm-extra KEY=VALUE`` (repeatable): more #SBATCH lines, e.g. qos=high, constraint=a100."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise KDError(f"--slurm-extra '{sbatch.escaped(pair)}': give KEY=VALUE (e.g. qos=high, constraint=a100)")
        try:
            key, value = sbatch.check_extra(key, value)
        except ValueError as exc:
            raise KDError(f"--slurm-extra {exc}") from None
        out[key] = value
    return out


# ----------------------------------------------------------------------------- the job


class RunJob:
    """One run as a job: train (or resume) and evaluate it; a stop signal (SIGTERM, or the
    scheduler's preemption signal) writes its checkpoint, then the job requeues itself
    (submitit calls :meth:`checkpoint`, which submits the same run again: it resumes)."""

    def __call__(self, spec: Any, threads: int, gpus: int) -> dict[str, Any]:
        import submitit

        from .runs import run_one
        from ..common.signals import also_stop_on

        if gpus > 1:  # one process per GPU: the torchrun environment of one distributed run
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        preempt = submitit.JobEnvironment._usr_sig()
        with also_stop_on(preempt):
            result = run_one(spec, quiet=True, threads=threads)
        if result["state"] == "interrupted":  # its checkpoint is written: submitit's handler requeues the job
            signal.raise_signal(preempt)
            time.sleep(120)  # the handler ends the process
        if result["state"] == "failed":
            raise RuntimeError(f"{spec.run_dir}: {result['error']}\n{result.get('traceback', '')}")
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(RunJob(), *args, **kwargs)


def submitted(submit: Callable[[], Any], launch: Launch) -> Any:
    """``submit()``, with a submission the scheduler refuses (sbatch's error: an unknown
    partition, account or option) turned into one line."""
    import subprocess

    try:
        return submit()
    except (subprocess.CalledProcessError, OSError) as exc:
        said = getattr(exc, "output", None) or getattr(exc, "stderr", None) or b""
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or str(exc).splitlines()[0]
        raise KDError(f"--launcher {launch.launcher}: the scheduler refused the job ({sbatch.escaped(line)[:200]}); "
                      "check --slurm-partition, --slurm-account and --slurm-extra") from None
    except Exception as exc:  # submitit's own FailedSubmissionError and kin carry sbatch's message
        if type(exc).__module__.startswith("submitit"):
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise KDError(f"--launcher {launch.launcher}: the scheduler refused the job "
                          f"({sbatch.escaped(first)[:200]}); check --slurm-partition, --slurm-account and "
                          "--slurm-extra") from None
        raise


# ----------------------------------------------------------------------------- the comparison


def job_state(launch: Launch, folder: Path, record: dict[str, Any] | None, live: dict[str, Any]) -> str | None:
    """What became of a run's last job: a submitit state (PENDING, RUNNING, COMPLETED, FAILED,
    ...), or None when no job is known."""
    if record is None:
        return None
    job = live.get(record["job_id"])
    if job is None and record.get("launcher") == "slurm" == launch.launcher:
        import submitit

        job = live[record["job_id"]] = submitit.SlurmJob(folder, record["job_id"])
    if job is None:  # a local job of an earlier command: it ended with that command
        return "LOST"
    return str(job.state).upper()


def launch_comparison(teachers: list[Any], specs: list[Any], launch: Launch, cmp: Any, echo: Callable = print
                      ) -> list[dict[str, Any]]:
    """Submit every unfinished run of a comparison as a job (the shared teachers first, the runs
    of each seed depending on its teacher), then wait for them (unless ``launch.wait`` is off)
    with a line whenever a run's state changes. Returns one result per run, as ``execute``."""
    from .runs import SHARED_TEACHER, run_state
    from ..store.runfolder import RunFolder

    folder = cmp.jobs_dir
    folder.mkdir(parents=True, exist_ok=True)
    records = cmp.jobs()
    live: dict[str, Any] = {}
    runner = RunJob()

    def submit(spec: Any, after: str | None = None) -> str:
        ex = launch.executor(folder, f"kdstyles-{Path(spec.run_dir).name}")
        if after is not None and launch.launcher == "slurm":  # a teacher that fails cancels its dependents
            ex.update_parameters(dependency=f"afterok:{after}",
                                 additional_parameters={**launch.extra, "kill_on_invalid_dep": "yes"})
        job = submitted(lambda: ex.submit(runner, spec, launch.threads(), launch.gpus_per_run), launch)
        live[job.job_id] = job
        records[spec.run_dir] = {"job_id": job.job_id, "launcher": launch.launcher, "submitted": time.time(),
                                 "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}
        cmp.write_jobs(records)
        echo(f"  submitted {Path(spec.run_dir).name}: job {job.job_id}" +
             (f" (after {after})" if after and launch.launcher == "slurm" else "") + f", logs {job.paths.stdout}")
        return job.job_id

    def place(spec: Any, after: str | None = None) -> str | None:
        """The job that brings ``spec`` to done: none (done), the queued or running one, or a new one."""
        if run_state(spec) == "done":
            return None
        state = job_state(launch, folder, records.get(spec.run_dir), live)
        if state in ACTIVE:
            echo(f"  {Path(spec.run_dir).name}: job {records[spec.run_dir]['job_id']} is {state.lower()}")
            return records[spec.run_dir]["job_id"]
        if state is not None:
            echo(f"  {Path(spec.run_dir).name}: its last job is {state.lower()}; submitting it again")
        return submit(spec, after)

    teacher_jobs = {t.seed: place(t) for t in teachers}
    waited = launch.launcher == "local"  # no dependencies here: the teachers' jobs end first
    teacher_results = _wait(teachers, records, live, launch, folder, echo) if waited and teachers else []
    failed_teachers = {t.seed: t.run_dir for t in teachers
                       if not RunFolder(t.run_dir).best(SHARED_TEACHER).is_file()
                       and (waited or job_state(launch, folder, records.get(t.run_dir), live)
                            not in ACTIVE | {None, "COMPLETED"})}
    results = teacher_results + [{"run_dir": s.run_dir, "state": "failed",
                                  "error": f"its shared teacher did not train; see {failed_teachers[s.seed]}"}
                                 for s in specs if s.seed in failed_teachers]
    for s in specs:
        if s.seed not in failed_teachers:
            place(s, teacher_jobs.get(s.seed))
    todo = [*([] if waited else teachers), *(s for s in specs if s.seed not in failed_teachers)]
    if not launch.wait:
        queued = [s for s in todo if run_state(s) != "done"]
        echo(f"{len(queued)} run(s) queued or running; run the same command again to follow them and collect "
             "the results (finished runs are kept, failed ones submitted again)")
        return results + [{"run_dir": s.run_dir, "state": "queued"} for s in queued]
    return results + _wait(todo, records, live, launch, folder, echo)


def _wait(specs: list[Any], records: dict[str, Any], live: dict[str, Any], launch: Launch, folder: Path,
          echo: Callable) -> list[dict[str, Any]]:
    """Poll until every spec's job is over; a line per change of state; one result per spec."""
    from .runs import run_state

    seen: dict[str, str] = {}
    results: dict[str, dict[str, Any]] = {}
    while True:
        for spec in specs:
            if spec.run_dir in results:
                continue
            state = "DONE" if run_state(spec) == "done" else job_state(launch, folder, records.get(spec.run_dir), live)
            if state != seen.get(spec.run_dir):
                seen[spec.run_dir] = state or "NONE"
                logs = records.get(spec.run_dir, {}).get("stdout", "")
                echo(f"  {Path(spec.run_dir).name}: {(state or 'no job').lower()}" + (f" (logs {logs})" if logs and
                                                                                       state not in ("DONE",) else ""))
            if state == "DONE":
                results[spec.run_dir] = {"run_dir": spec.run_dir, "state": "trained"}
            elif state not in ACTIVE:  # over without finishing the run
                error = f"its job ended {str(state).lower()}; logs: {records.get(spec.run_dir, {}).get('stderr')}"
                results[spec.run_dir] = {"run_dir": spec.run_dir, "state": "failed", "error": error}
        if len(results) == len(specs):
            return [results[s.run_dir] for s in specs]
        time.sleep(launch.poll_s)


def tune_workers(launch: Launch, workers: int, folder: Path, work: Callable[[int], Any]) -> list[Any]:
    """``workers`` jobs (a job array on Slurm) each calling ``work(i)``; waits for them (unless
    ``launch.wait`` is off) and returns their results (their job ids when not waiting)."""
    folder.mkdir(parents=True, exist_ok=True)
    ex = launch.executor(folder, "kdstyles-tune")
    jobs = submitted(lambda: ex.map_array(work, list(range(workers))), launch)
    if not launch.wait:
        return [j.job_id for j in jobs]
    out = []
    for job in jobs:
        try:
            out.append(job.result())
        except Exception as exc:  # a worker's failure: the study and the others go on
            out.append({"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                        "logs": str(job.paths.stderr)})
    return out


SLURM_ONLY = {"partition": "--slurm-partition", "mem": "--mem", "account": "--slurm-account",
              "extra": "--slurm-extra", "wait": "--no-wait"}
BOTH = {"time_min": "--slurm-time", "gpus_per_run": "--gpus-per-run", "cpus_per_run": "--cpus-per-run"}


def from_options(section: Any, launcher: str | None = None, **given: Any) -> Launch | None:
    """The launch a command runs with: the config's ``launcher`` section with the command line's
    options on top (``given``: None where an option was not given; ``wait``: False for
    --no-wait); None where neither names a launcher. An option of a launcher not chosen is one
    line."""
    kind = launcher or section.type
    named = {k: v for k, v in given.items() if v is not None and v != [] and not (k == "wait" and v)}
    wrong = [k for k in named if kind is None or (kind != "slurm" and k in SLURM_ONLY)]
    if wrong:
        flag = {**SLURM_ONLY, **BOTH}[wrong[0]]
        raise KDError(f"{flag} needs --launcher slurm" + (" (or launcher.type in the config)" if kind is None else
                                                          f", not --launcher {kind}"))
    if kind is None:
        return None
    values = section.model_dump()
    values.pop("type")
    values["extra"] = {**values["extra"], **parse_extra(named.pop("extra", []))}
    values.update(named)
    return Launch(kind, **values)
