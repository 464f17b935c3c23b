"""Comparisons and tuning as scheduler jobs (kdstyles.workflows.launch, submitit): the real engine through
submitit's local executor (a shared teacher and the runs that depend on it; a job preempted
mid-run requeues and resumes bit-identical), the Slurm script submitit writes for the options
given (through a stand-in sbatch), and bad options in one line. No test needs a cluster."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_same_run
from kdstyles import KDError
from kdstyles.workflows.launch import Launch, RunJob, parse_extra
from kdstyles.store.runfolder import ComparisonFolder, RunFolder

pytest.importorskip("submitit")


def small(tmp_path, *extra):
    from conftest import SMALL

    return [*SMALL, "data.train_samples=32", "data.val_samples=16", "data.test_samples=16", *extra]


def test_a_comparison_runs_as_local_jobs_teacher_first(tmp_path):
    from kdstyles.workflows.compare import compare

    out = tmp_path / "cmp"
    lines = []
    launch = Launch("local", cpus_per_run=1, poll_s=0.5)
    summary = compare(None, ["student", "kd"], 1, out, small(tmp_path), teacher="shared", launch=launch,
                      echo=lines.append)
    assert summary["failed"] == [] and summary["rows"] > 0
    cmp = ComparisonFolder(out)
    jobs = cmp.jobs()
    names = {Path(k).name for k in jobs}
    assert names == {"teacher-seed0", "student-seed0", "kd-seed0"}
    teacher = jobs[str(out / "teacher-seed0")]
    # the teacher's job was over before the others were submitted (local jobs have no dependencies)
    assert all(j["submitted"] > teacher["submitted"] for k, j in jobs.items() if not k.endswith("teacher-seed0"))
    assert all(Path(j["stdout"]).is_file() for j in jobs.values())
    for run in ("student-seed0", "kd-seed0"):
        assert RunFolder(out / run).status() == "finished" and RunFolder(out / run).eval_path.is_file()
    assert any("submitted kd-seed0" in line for line in lines) and any(": done" in line for line in lines)
    # the same command again: everything finished is kept, nothing is submitted
    lines.clear()
    again = compare(None, ["student", "kd"], 1, out, small(tmp_path), teacher="shared", launch=launch,
                    echo=lines.append)
    assert again["failed"] == [] and cmp.jobs() == jobs
    assert not any("submitted" in line for line in lines)


def test_a_preempted_job_requeues_and_resumes_bit_identical(tmp_path):
    """A job told by the scheduler to stop (submitit's local executor sends what Slurm sends:
    SIGUSR2) writes its checkpoint, requeues itself and resumes; its weights end as those of
    the same run never stopped."""
    import submitit

    from kdstyles.workflows.compare import plan

    over = small(tmp_path, "train.epochs=12", "train.checkpoint_every_steps=1", "train.early_stopping=null")
    _, [whole], _ = plan(None, ["kd"], 1, tmp_path / "whole", over)
    _, [stopped], _ = plan(None, ["kd"], 1, tmp_path / "stopped", over)
    RunJob()(whole, 1, 0)  # in this process, never stopped

    ex = submitit.LocalExecutor(tmp_path / "jobs")
    ex.update_parameters(timeout_min=60, signal_delay_s=5)
    job = ex.submit(RunJob(), stopped, 1, 0)
    folder = RunFolder(stopped.run_dir)
    deadline = time.time() + 120
    while not folder.last.is_file() and time.time() < deadline:  # training has begun: a checkpoint exists
        time.sleep(0.2)
    assert folder.last.is_file(), job.stderr()
    # what Slurm does on preemption (--signal): SIGUSR2 to the job's processes (submitit's local
    # controller passes on only its own timeouts, so the task is signalled here)
    [task] = children(int(job.job_id))
    os.kill(task, signal.SIGUSR2)
    job.result()  # raises if the job failed
    log = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log and "Requeued job" in log, log[-2000:]
    resumes = folder.info().resumes  # stopped in training by the preemption signal, then resumed
    assert [r["ended"]["stopped_at"]["signal"] for r in resumes] == ["SIGUSR2"]
    assert_same_run(Path(whole.run_dir), Path(stopped.run_dir))


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def fake_sbatch(tmp_path) -> Path:
    """A stand-in ``sbatch`` on PATH: keeps each script it is given and answers with a job id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(f"""#!{sys.executable}
import itertools, shutil, sys
from pathlib import Path
keep = Path({str(tmp_path / 'scripts')!r}); keep.mkdir(exist_ok=True)
n = len(list(keep.iterdir())) + 4242
shutil.copy(sys.argv[-1], keep / f"{{n}}.sh")
print(f"Submitted batch job {{n}}")
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit asks for it before it submits
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_the_slurm_script_has_the_requested_resources_and_dependencies(tmp_path, monkeypatch):
    from kdstyles.workflows.compare import compare

    monkeypatch.setenv("PATH", f"{fake_sbatch(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    launch = Launch("slurm", partition="gpu", time_min=90, gpus_per_run=2, cpus_per_run=8, mem="32G",
                    account="lab", extra=parse_extra(["qos=high", "constraint=a100"]), wait=False)
    lines = []
    summary = compare(None, ["student", "kd"], 1, tmp_path / "cmp", small(tmp_path), teacher="shared",
                      launch=launch, echo=lines.append)
    assert summary["failed"] == [] and summary["rows"] == 0
    scripts = {int(p.stem): p.read_text() for p in (tmp_path / "scripts").iterdir()}
    assert sorted(scripts) == [4242, 4243, 4244]
    for text in scripts.values():
        for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2",
                     "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G",
                     "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                     "#SBATCH --signal=USR2@120"):
            assert line in text, line
    assert "--dependency" not in scripts[4242]  # the shared teacher
    assert "#SBATCH --dependency=afterok:4242" in scripts[4243] and "#SBATCH --dependency=afterok:4242" in scripts[4244]
    jobs = ComparisonFolder(tmp_path / "cmp").jobs()
    assert sorted(j["job_id"] for j in jobs.values()) == ["4242", "4243", "4244"]
    assert any("3 run(s) queued or running" in line for line in lines)


def test_bad_launcher_options_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(KDError, match="--launcher 'pbs' is not known; allowed: slurm, local"):
        Launch("pbs").check()
    with pytest.raises(KDError, match="--launcher slurm: sbatch is not on PATH"):
        Launch("slurm").check()
    with pytest.raises(KDError, match="--no-wait: local jobs end with this command"):
        Launch("local", wait=False).check()
    with pytest.raises(KDError, match="--slurm-extra 'qos': give KEY=VALUE"):
        parse_extra(["qos"])


def test_the_cli_refuses_slurm_options_without_the_slurm_launcher(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}")
    # one in a new process (all it prints is one line), the others in this one
    proc = subprocess.run([sys.executable, "-m", "kdstyles", "compare", "--presets", "student,kd", "--out",
                           str(tmp_path / "c"), "--slurm-partition", "gpu"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:"), proc.stderr
    assert "--slurm-partition needs --launcher slurm" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for args, message in ((["--launcher", "slurm"], "--launcher slurm: sbatch is not on PATH"),
                          (["--launcher", "pbs"], "--launcher 'pbs' is not known")):
        code, _, err = cli("compare", "--presets", "student,kd", "--out", tmp_path / "c", *args)
        assert code == 2 and err.strip().startswith("error:") and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()  # nothing submitted, nothing written


def test_tune_workers_share_a_journal_study(tmp_path):
    pytest.importorskip("optuna")
    from kdstyles.workflows.tune import tune

    cfg = tmp_path / "tune.yaml"
    cfg.write_text("tune:\n  space:\n    optim.lr: {low: 0.0001, high: 0.01, log: true}\n  trials: 2\n"
                   "  startup_trials: 2\n")
    summary = tune(str(cfg), tmp_path / "t", small(tmp_path), launch=Launch("local", cpus_per_run=1, poll_s=0.5),
                   workers=2, echo=lambda line: None)
    assert summary["trials"].get("complete", 0) >= 2  # two workers may both start a last trial
    assert summary["storage"].endswith("study.journal") and (tmp_path / "t" / "study.journal").is_file()
    assert all(int(t["worker"].rsplit(":", 1)[1]) != os.getpid() for t in summary["best"])  # run in the jobs
    assert json.loads((tmp_path / "t" / "tune.json").read_text())["trials"] == summary["trials"]
    with pytest.raises(KDError, match="--storage 'sqlite:.*': SQLite over a shared file system"):
        tune(str(cfg), tmp_path / "t2", small(tmp_path), storage=f"sqlite:///{tmp_path / 'x.db'}",
             launch=Launch("slurm", wait=False), workers=2)


SHELL_VALUES = ["normal\nhostname #", "high'; touch PWNED; '", "$(touch PWNED)", "`touch PWNED`", "a\\b", 'x"y',
                "q\rsleep 1", "tab\there"]


@pytest.mark.parametrize("value", SHELL_VALUES)
def test_values_that_would_leave_their_sbatch_line_are_refused(tmp_path, monkeypatch, value):
    """Every value kdstyles writes into a job script (extra options, partition, account, memory,
    from the command line or the config) is refused in one line before anything is written when
    it holds a line break or shell syntax Slurm never needs."""
    from kdstyles.workflows.compare import compare
    from kdstyles.config import load_config

    monkeypatch.setenv("PATH", f"{fake_sbatch(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    for launch in (Launch("slurm", extra={"qos": value}, wait=False), Launch("slurm", partition=value, wait=False),
                   Launch("slurm", account=value, wait=False), Launch("slurm", mem=value, wait=False)):
        with pytest.raises(KDError) as err:
            compare(None, ["student"], 1, tmp_path / "cmp", small(tmp_path), launch=launch, echo=lambda line: None)
        assert len(str(err.value).splitlines()) == 1
    with pytest.raises(KDError, match="--slurm-extra qos"):
        parse_extra([f"qos={value}"])
    with pytest.raises(KDError, match="launcher.extra.*qos|launcher.extra"):
        load_config(None, [f"launcher.extra.qos={json.dumps(value)}"])
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "scripts").exists() and not Path("PWNED").exists()


def test_slurm_values_stay_on_their_lines_and_own_options_cannot_be_replaced(tmp_path, monkeypatch):
    """Characters Slurm does use (a constraint's | and &, a comma list, spaces in a comment) go
    through, each option on one #SBATCH line before the command; the options kdstyles sets
    (signal, time, logs, dependency) cannot be replaced through --slurm-extra; memory must read
    as Slurm's."""
    from kdstyles.workflows.compare import compare

    monkeypatch.setenv("PATH", f"{fake_sbatch(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    launch = Launch("slurm", partition="gpu,cpu", mem="64000M", wait=False,
                    extra=parse_extra(["constraint=a100|h100&ib", "comment=distil run", "mail_type=END"]))
    compare(None, ["student"], 1, tmp_path / "cmp", small(tmp_path), launch=launch, echo=lambda line: None)
    (script,) = [p.read_text() for p in (tmp_path / "scripts").iterdir()]
    options = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    first_command = next(i for i, ln in enumerate(script.splitlines()) if ln and not ln.startswith("#"))
    assert all(script.splitlines().index(ln) < first_command for ln in options)
    for line in ("#SBATCH --constraint='a100|h100&ib'", "#SBATCH --comment='distil run'", "#SBATCH --mail-type=END",
                 "#SBATCH --partition=gpu,cpu", "#SBATCH --mem=64000M", "#SBATCH --signal=USR2@120"):
        assert line in options, (line, options)
    for own in ("signal=USR1@10", "time=1", "output=/tmp/x", "dependency=afterok:1", "job-name=x"):
        with pytest.raises(KDError, match="kdstyles sets it itself"):
            parse_extra([own])
    with pytest.raises(KDError, match="--mem 'lots' is not memory as Slurm writes it"):
        Launch("slurm", mem="lots").check()
    with pytest.raises(KDError, match="--out .*line break"):
        compare(None, ["student"], 1, tmp_path / "a\nb", small(tmp_path), launch=Launch("slurm", wait=False),
                echo=lambda line: None)


def test_a_refused_submission_is_one_line(tmp_path, monkeypatch):
    """sbatch refusing a job (an unknown partition, here) ends in one line quoting sbatch."""
    from kdstyles.workflows.compare import compare

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1"),
                       ("srun", "exit 0")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(KDError) as err:
        compare(None, ["student"], 1, tmp_path / "cmp", small(tmp_path),
                launch=Launch("slurm", partition="nope", wait=False), echo=lambda line: None)
    assert "the scheduler refused the job" in str(err.value) and "invalid partition" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_damaged_jobs_file_submits_nothing_again(tmp_path, monkeypatch):
    """jobs.json records which runs have a job queued: damaged (or missing while jobs/ holds
    submitted jobs), the command stops in one line instead of submitting a second job that
    would write into the same run folder."""
    from kdstyles.workflows.compare import compare

    monkeypatch.setenv("PATH", f"{fake_sbatch(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    launch = Launch("slurm", wait=False)
    compare(None, ["student"], 1, tmp_path / "cmp", small(tmp_path), launch=launch, echo=lambda line: None)
    jobs = tmp_path / "cmp" / "jobs.json"
    assert len(list((tmp_path / "scripts").iterdir())) == 1
    for damage in ("{\"x\": ", json.dumps({str(tmp_path / "cmp" / "student-seed0"): {"launcher": "slurm"}}), None):
        if damage is None:
            jobs.unlink()
        else:
            jobs.write_text(damage)
        with pytest.raises(KDError, match="jobs.json' is (damaged|missing)"):
            compare(None, ["student"], 1, tmp_path / "cmp", small(tmp_path), launch=launch, echo=lambda line: None)
        assert len(list((tmp_path / "scripts").iterdir())) == 1  # nothing submitted again


def test_tune_checks_its_storage_before_any_worker_starts(tmp_path):
    pytest.importorskip("optuna")
    from kdstyles.workflows.tune import tune

    cfg = tmp_path / "tune.yaml"
    cfg.write_text("tune:\n  space:\n    optim.lr: {low: 0.0001, high: 0.01, log: true}\n  trials: 1\n")
    with pytest.raises(KDError, match="--storage .*cannot be opened"):
        tune(str(cfg), tmp_path / "t", small(tmp_path), storage=str(tmp_path / "missing" / "study.journal"),
             launch=Launch("local", cpus_per_run=1), workers=2, echo=lambda line: None)
    assert not (tmp_path / "t").exists()
