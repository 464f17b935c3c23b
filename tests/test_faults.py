"""Failure semantics: signals, mid-epoch resume, resume with overrides, crashes, a full disk,
leftover temporary files, file modes, run-folder locks, compare workers, odd file names."""

import csv
import errno
import io
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_same_run, resume, tiny, wait_for
from kdstyles import Experiment, KDError
from kdstyles.store import checkpoints
from kdstyles.errors import Interrupted
from kdstyles.store.fileio import FolderLock


def not_warnings(err: str) -> list[str]:
    """stderr's lines but the warnings printed when training starts."""
    return [ln for ln in err.strip().splitlines() if not ln.startswith(("data warning: ", "warning: "))]


class SignalAt:
    """A forward hook that sends ``sig`` to this process at the n-th training forward."""

    def __init__(self, n, sig=signal.SIGTERM):
        self.n, self.sig, self.calls = n, sig, 0

    def __call__(self, module, _inputs, _output):
        if module.training:
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), self.sig)


# unlabelled images and mixed views are drawn from (seed, epoch, step): a resumed run draws the same
UNLABELED_MIXED = "diverse data.unlabeled.source=synthetic data.unlabeled.samples=20 data.unlabeled_batch_size=8 " \
                  "data.mix.mixup=0.4 data.mix.cutmix=1"


@pytest.mark.parametrize("preset", ["diverse", "ctsl-mkt", UNLABELED_MIXED])
def test_signal_mid_epoch_checkpoints_and_resume_is_bit_identical(tmp_path, preset, cli):
    common = ["train.epochs=3", "data.augment.rotate90=true", f"routing.preset={preset.split()[0]}",
              *preset.split()[1:]]
    full = Experiment(None, overrides=tiny(tmp_path / "a", *common), quiet=True)
    full.fit()

    part = Experiment(None, overrides=tiny(tmp_path / "b", *common), quiet=True)
    part.cohort.networks["s1"].register_forward_hook(SignalAt(5))  # 3 steps per epoch: epoch 2, step 2
    with pytest.raises(Interrupted) as stopped:
        part.fit()
    assert stopped.value.signum == signal.SIGTERM and "epoch 2 step 2" in str(stopped.value)
    info = json.loads((part.run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["stopped_at"] == {"epoch": 1, "step": 2, "signal": "SIGTERM"}
    last = checkpoints.load(part.run_dir / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"]) == (1, 2)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored

    resume(part.run_dir, None if preset == UNLABELED_MIXED else cli)  # a new process for the mixed views
    assert_same_run(full.run_dir, part.run_dir)
    # run.json's top level describes the finished run; the interruption moved into its resume record
    after = json.loads((part.run_dir / "run.json").read_text())
    assert after["status"] == "finished" and "stopped_at" not in after
    assert [(r["after_epoch"], r["step"], r["ended"], r["changes"]) for r in after["resumes"]] == [
        (1, 2, {"status": "interrupted", "stopped_at": info["stopped_at"]}, {})]


def test_checkpoint_every_steps_resumes_exactly_from_mid_epoch(tmp_path, monkeypatch):
    common = ["train.epochs=2", "train.checkpoint_every_steps=2", "data.augment.rotate90=true"]
    full = Experiment(None, overrides=tiny(tmp_path / "a", *common), quiet=True)
    snapshot = tmp_path / "snapshot"
    calls, writers = [], []
    plain_init = checkpoints.Writer.__init__

    def recorded(self, *args, **kwargs):
        writers.append(self)
        plain_init(self, *args, **kwargs)

    monkeypatch.setattr(checkpoints.Writer, "__init__", recorded)

    def copy_at_sixth_step(module, _i, _o):  # epoch 2, step 3: last.pt holds epoch 1 + 2 steps
        if module.training:
            calls.append(1)
            if len(calls) == 6:
                for writer in writers:  # the background writer has landed that checkpoint (on a slow
                    writer.wait()  # disk it may still be writing it, its temp file vanishing mid-copy)
                shutil.copytree(full.run_dir, snapshot)

    full.cohort.networks["s2"].register_forward_hook(copy_at_sixth_step)
    full.fit()
    mid = checkpoints.load(snapshot / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["step"]) == (1, 2) and set(mid["partial"][0]) == {"teacher", "s1", "s2"}
    Experiment.from_run(snapshot, quiet=True).fit(resume=True)
    assert_same_run(full.run_dir, snapshot)


def test_sigterm_to_the_cli_exits_143_with_one_line_and_marks_the_run(tmp_path, cli):
    args = [sys.executable, "-m", "kdstyles", "train", "--no-evaluate", *[a for o in tiny(
        tmp_path, "train.epochs=50", "data.train_samples=192") for a in ("--set", o)]]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    assert wait_for(lambda: (run / "checkpoints" / "last.pt").is_file(), 120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    lines = not_warnings(err)  # the tiny data's warnings (small splits) come first, as training starts
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM: training stopped after"), err
    assert f"kdstyles train --resume {run}" in lines[0]
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not list(run.rglob("*.tmp"))
    # evaluating it says that these are the weights of an unfinished run
    done = json.loads((run / "run.json").read_text())["epochs_done"]
    code, out, err = cli("evaluate", run)
    assert code == 0, err
    assert (f"note: the run is interrupted after {done} of 50 epochs: these are its best weights so far "
            f"(kdstyles train --resume {run} finishes it)") in " ".join(out.split())
    code, out, err = cli("export", run, "--format", "torchscript")
    assert code == 0 and "note: the run is interrupted" in out, err
    assert json.loads((run / "export" / "s1.json").read_text())["run_status"] == "interrupted"
    assert f"{done} epochs of 50 (**the run is interrupted: it has not finished**)" in \
        (run / "export" / "s1.md").read_text()


def test_resume_with_more_epochs_follows_the_new_cosine_curve_and_records_it(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=2", "schedule.min_lr=0"), quiet=True)
    exp.fit()
    more = Experiment.from_run(exp.run_dir, overrides=["train.epochs=4", "optim.lr=0.002"], quiet=True)
    assert more.fit(resume=True)["epochs"] == 4
    rows = [r for r in csv.DictReader((exp.run_dir / "metrics.csv").open()) if r["network"] == "s1"]
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[:2] == pytest.approx([1e-3, 1e-3 * (1 + math.cos(math.pi / 2)) / 2])  # the first curve (2 epochs)
    # then the new curve over 4 epochs, from the new lr, continuing at epoch 2: never back up to its start
    assert lrs[2:] == pytest.approx([0.002 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)])
    cfg = (exp.run_dir / "config.yaml").read_text()
    assert "epochs: 4" in cfg and "lr: 0.002" in cfg
    resumes = json.loads((exp.run_dir / "run.json").read_text())["resumes"]
    assert resumes[0]["after_epoch"] == 2
    assert resumes[0]["changes"] == {"optim.lr": {"from": 0.001, "to": 0.002}, "train.epochs": {"from": 2, "to": 4}}


def test_plateau_lr_override_on_resume_takes_effect(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=1", "schedule.name=plateau"), quiet=True)
    exp.fit()
    Experiment.from_run(exp.run_dir, overrides=["train.epochs=2", "optim.lr=0.0005"], quiet=True).fit(resume=True)
    rows = [r for r in csv.DictReader((exp.run_dir / "metrics.csv").open()) if r["network"] == "teacher"]
    assert [float(r["lr"]) for r in rows] == [1e-3, 5e-4]


class Crasher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head, self.calls = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 4), 0

    def forward(self, x):
        self.calls += self.training
        if self.calls == 4:
            raise RuntimeError("boom in forward")
        return self.head(self.conv(x).mean((2, 3)))


def test_any_crash_leaves_run_json_failed_with_the_error(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, "routing.preset=dml"), networks={"s2": Crasher()}, quiet=True)
    with pytest.raises(RuntimeError, match="boom"):
        exp.fit()
    info = json.loads((exp.run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "RuntimeError: boom in forward"


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    from kdstyles.cli import main

    real = pathlib.Path.open
    saves = []

    class FillsUp(io.RawIOBase):  # a file on a disk that fills after its first 100 bytes
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            room = 100 - self.n
            if len(b) > room:
                self.f.write(bytes(b)[:room])
                self.n = 100
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

        def close(self):
            self.f.close()
            super().close()

    def full_disk(self, mode="r", *args, **kwargs):
        f = real(self, mode, *args, **kwargs)
        if self.name.startswith(".last.pt.") and "w" in mode:
            saves.append(self)
            if len(saves) == 2:  # the second epoch's last.pt: a few bytes land, then the disk is full
                return FillsUp(f)
        return f

    monkeypatch.setattr(pathlib.Path, "open", full_disk)
    monkeypatch.setattr(sys, "argv", ["kdstyles", "train", "-q", "--no-evaluate",
                                      *[a for o in tiny(tmp_path) for a in ("--set", o)]])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2
    assert not_warnings(err) == [f"error: cannot write '{tmp_path / 'run' / 'checkpoints' / 'last.pt'}': "
                                        "the disk is full; the previous 'last.pt' is intact"]
    assert checkpoints.load(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "run").rglob("*.tmp"))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and "the disk is full" in info["error"]


def test_stale_temp_files_are_removed_and_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=1"), quiet=True)
        exp.fit()
        stale = [exp.run_dir / "checkpoints" / ".last.pt.k1ll3d.tmp", exp.run_dir / ".run.json.x.tmp"]
        for p in stale:
            p.write_bytes(b"half")
        Experiment.from_run(exp.run_dir, overrides=["train.epochs=2"], quiet=True).fit(resume=True)
        assert not any(p.exists() for p in stale)
        for name in ("config.yaml", "run.json", "metrics.csv", "checkpoints/last.pt", "checkpoints/best-s1.pt"):
            assert (exp.run_dir / name).stat().st_mode & 0o777 == 0o644, name
    finally:
        os.umask(old)


HOLD = "import sys, time; from kdstyles.store.fileio import FolderLock; FolderLock(sys.argv[1]).acquire(); " \
       "print('held', flush=True); time.sleep(60)"


def test_a_second_trainer_is_refused_naming_the_holder(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=1"), quiet=True)
    exp.fit()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(exp.run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        again = Experiment.from_run(exp.run_dir, overrides=["train.epochs=2"], quiet=True)
        with pytest.raises(KDError, match=rf"run folder '{exp.run_dir}' is in use by process {holder.pid} "):
            again.fit(resume=True)
        assert checkpoints.load(exp.run_dir / "checkpoints" / "last.pt")["epoch"] == 1  # untouched
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything: its lock is taken over
    Experiment.from_run(exp.run_dir, overrides=["train.epochs=2"], quiet=True).fit(resume=True)
    assert checkpoints.load(exp.run_dir / "checkpoints" / "last.pt")["epoch"] == 2


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{dead.pid}\n")
    lock = FolderLock(tmp_path / "run").acquire()
    assert lock.took_over == dead.pid and lock.holder() == os.getpid()
    lock.release()


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_pids(out, n):
    """The PIDs training in the comparison's run folders (from their locks), once n are training."""
    def found():
        return [int(p.read_text()) for p in out.glob("*/.lock") if p.read_text().strip()]

    assert wait_for(lambda: len(found()) >= n and all((p.parent / "checkpoints" / "last.pt").is_file()
                                                        for p in out.glob("*/.lock")), 180)
    return found()


COMPARE = ["data.image_size=16", "data.train_samples=240", "data.val_samples=16", "data.test_samples=16",
           "data.batch_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
           "networks.students.s2.widen=0.125", "train.epochs=100"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_compare_workers_stop_with_their_parent(tmp_path, how):
    out = tmp_path / "cmp"
    args = [sys.executable, "-m", "kdstyles", "compare", "--presets", "dml,kd", "--seeds", "1", "--jobs", "2",
            "--out", str(out), "--quiet", *[a for o in COMPARE for a in ("--set", o)]]
    parent = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = _worker_pids(out, 2)
    parent.send_signal(getattr(signal, how))
    _, err = parent.communicate(timeout=120)
    if how == "SIGTERM":  # the parent passes it on, waits for the checkpoints, then stops
        assert parent.returncode == 128 + signal.SIGTERM
        # one line says so (other processes sharing stderr, e.g. multiprocessing's resource tracker, may
        # still write after it), and nothing crashed
        said = [ln for ln in err.splitlines() if ln.startswith("interrupted: compare stopped by SIGTERM")]
        assert len(said) == 1 and "Traceback" not in err, err
    assert wait_for(lambda: not any(_alive(p) for p in workers), 60), "workers outlived their parent"
    for run in ("dml-seed0", "kd-seed0"):
        info = json.loads((out / run / "run.json").read_text())
        assert info["status"] == "interrupted", (run, info)
        assert FolderLock(out / run).acquire().holder() == os.getpid()  # free to resume


def test_symlink_loops_and_non_utf8_file_names(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "loop").symlink_to(root / "a")  # a folder that contains itself
    os.symlink("self.png", root / "b" / "self.png")  # a link to itself
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # not UTF-8
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "b" / odd)
    over = ["data.source=folder", f"data.root={root}", "data.val_fraction=0.2", "data.test_fraction=0.2",
            "data.batch_size=4", "train.epochs=1", f"output.dir={tmp_path}", "output.name=run", "data.image_size=16",
            "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"]
    exp = Experiment(None, overrides=over, quiet=True)
    exp.fit()
    n = sum(len(ds) for ds in exp.data.splits.values())
    assert n == 21  # 10 + 10 + the odd name, each once; the loop and the self-link are not images
    splits = (exp.run_dir / "splits.csv").read_bytes()
    assert b"caf\xe9-\xff.png" in splits  # the name's bytes, as they are on disk
    result = Experiment.from_run(exp.run_dir, quiet=True).evaluate()  # reads splits.csv back
    assert result["samples"] == len(exp.data.splits["test"])


def test_empty_config_file_warns_in_one_line(tmp_path, monkeypatch, capsys):
    from kdstyles.cli import main

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    monkeypatch.setattr(sys, "argv", ["kdstyles", "check", str(empty), "--set", "data.image_size=16",
                                      "--set", "data.train_samples=40", "--set", "data.val_samples=8",
                                      "--set", "data.test_samples=8"])
    main_exit = None
    try:
        main()
    except SystemExit as done:
        main_exit = done.code
    out, err = capsys.readouterr()
    assert main_exit in (None, 0)
    assert err.splitlines() == [f"warning: config file '{empty}' is empty; every key takes its default "
                                "(the demo experiment)"]
    assert "config ok" in out
    taps = [line.split(": ", 1) for line in out.splitlines() if line.startswith("  taps  ")]
    assert [edge for edge, _ in taps] == ["  taps  teacher -> s2 features (w=0.2)", "  taps  s2 -> s1 features (w=0.1)"]
    for _, maps in taps:  # each side: network, module path, channels x height x width
        assert re.fullmatch(r"\w+ [\w.]+ \d+x\d+x\d+ -> \w+ [\w.]+ \d+x\d+x\d+", maps), maps
