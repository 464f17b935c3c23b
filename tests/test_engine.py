import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from kdstyles import Experiment, KDError, TrainingDiverged
from kdstyles.store import checkpoints
from kdstyles.cli import main
from conftest import THREE


def test_cli_train_then_evaluate_end_to_end(tmp_path, cli):
    from conftest import tiny

    args = [a for o in tiny(tmp_path) for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "kdstyles", "train", *args, "--quiet", "--no-evaluate"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "metrics.csv", "checkpoints/last.pt", "checkpoints/best-teacher.pt",
                 "checkpoints/best-s1.pt", "checkpoints/best-s2.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [(r["epoch"], r["network"]) for r in rows] == [
        (str(e), n) for e in (1, 2) for n in ("teacher", "s1", "s2", "ensemble")]
    assert rows[1]["train_predictions<-teacher"] and rows[2]["train_features<-teacher"]

    code, out, err = cli("evaluate", run, "--json")  # the rest in this process: its start was shown above
    assert code == 0, err
    result = json.loads(out)
    assert result == json.loads((run / "eval.json").read_text())
    assert result["checkpoint"] == "best" and result["split"] == "test" and result["samples"] == 24
    nets = result["networks"]
    assert list(nets) == ["teacher", "s1", "s2", "ensemble"]
    for name, m in nets.items():
        for key in ("accuracy", "balanced_accuracy", "f1", "auroc", "ece", "parameters"):
            assert key in m, (name, key)
        assert 0.0 <= m["accuracy"] <= 1.0
    assert "fidelity_kl" in nets["s1"] and nets["s1"]["fidelity_kl"] >= 0
    assert nets["ensemble"]["parameters"] == nets["s1"]["parameters"] + nets["s2"]["parameters"]
    assert nets["s1"]["compression"] == pytest.approx(nets["teacher"]["parameters"] / nets["s1"]["parameters"])

    # another split goes beside eval.json (which compare, report and export read), never over it
    test_json = (run / "eval.json").read_text()
    code, out, err = cli("evaluate", run, "--split", "val")
    assert code == 0, err
    assert out.strip().endswith(f"written: {run / 'eval-val.json'}")
    assert (run / "eval.json").read_text() == test_json
    assert json.loads((run / "eval-val.json").read_text())["split"] == "val"


def test_existing_run_is_not_overwritten(tiny_overrides):
    Experiment(None, overrides=tiny_overrides("train.epochs=1"), quiet=True).fit()
    exp = Experiment(None, overrides=tiny_overrides("train.epochs=1"), quiet=True)
    last = exp.run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(KDError, match="already holds a run; resume it with"):
        exp.fit()
    assert last.read_bytes() == before


class StopAfter:
    def __init__(self, epoch):
        self.epoch = epoch

    def __call__(self, trainer, epoch):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("preset", ["diverse", "ctsl-mkt"])
def test_resume_matches_uninterrupted_run(tmp_path, preset, cli):
    from conftest import resume, tiny

    common = ["train.epochs=3", "data.augment.rotate90=true", "schedule.name=plateau", "schedule.patience=0",
              f"routing.preset={preset}"]
    full = Experiment(None, overrides=tiny(tmp_path / "a", *common), quiet=True)
    full.fit()

    part = Experiment(None, overrides=tiny(tmp_path / "b", *common), quiet=True)
    with pytest.raises(KeyboardInterrupt):
        part.fit(callbacks=[StopAfter(1)])
    assert json.loads((part.run_dir / "run.json").read_text())["status"] == "interrupted"
    # resumed by the command line: in a new process for one preset, in this one for the other
    resume(part.run_dir, None if preset == "diverse" else cli)

    a = checkpoints.load(full.run_dir / "checkpoints" / "last.pt")
    b = checkpoints.load(part.run_dir / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["cohort"].items():
        assert torch.equal(value, b["cohort"][key]), key
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert (full.run_dir / "metrics.csv").read_text() == (part.run_dir / "metrics.csv").read_text()
    assert json.loads((part.run_dir / "run.json").read_text())["status"] == "finished"


def test_resume_can_extend_epochs_and_refuses_missing(tiny_overrides, tmp_path):
    exp = Experiment(None, overrides=tiny_overrides("train.epochs=1"), quiet=True)
    exp.fit()
    more = Experiment.from_run(exp.run_dir, overrides=["train.epochs=2"], quiet=True)
    assert more.fit(resume=True)["epochs"] == 2
    with pytest.raises(KDError, match="run folder .* does not exist"):
        Experiment.from_run(tmp_path / "nowhere")


def test_a_run_keeps_the_taps_it_started_with_when_the_default_changes(tiny_overrides, monkeypatch):
    """run.json records each edge's resolved taps; resuming, evaluating and exporting the run
    tap those modules even where the default rule (a newer kdstyles) picks others, while a
    new run and an explicitly configured tap follow the config."""
    from kdstyles.deploy.export import export_run
    from kdstyles.tasks.classification import Classification

    exp = Experiment(None, overrides=tiny_overrides("train.epochs=1"), quiet=True)
    exp.fit()
    recorded = json.loads((exp.run_dir / "run.json").read_text())["taps"]
    assert recorded[1] == ["teacher", "s2", "features", *exp.cohort.edge_taps[1]]
    assert recorded[0][3:] == [None, None]  # predictions edges record no module
    monkeypatch.setattr(Classification, "default_tap", lambda self, model, sample: "layer1.0.conv1")
    fresh = Experiment(None, overrides=tiny_overrides("train.epochs=1", "output.name=fresh"), quiet=True)
    assert fresh.cohort.edge_taps[1] == ("layer1.0.conv1", "layer1.0.conv1")  # the (changed) default
    more = Experiment.from_run(exp.run_dir, overrides=["train.epochs=2"], quiet=True)
    assert [list(t) for t in more.cohort.edge_taps] == [r[3:] for r in recorded]
    assert more.fit(resume=True)["epochs"] == 2  # the checkpoint's adapters fit: the same maps
    assert Experiment.from_run(exp.run_dir, quiet=True).evaluate()["samples"] == 24
    assert export_run(exp.run_dir, "s2")["verification"]["max_abs_diff"] < 1e-4
    chosen = Experiment.from_run(exp.run_dir, overrides=["networks.students.s2.tap=layer2.0.conv1"], quiet=True)
    assert chosen.cohort.edge_taps[1] == (recorded[1][3], "layer2.0.conv1")  # what the config names wins
    info = json.loads((exp.run_dir / "run.json").read_text())
    (exp.run_dir / "run.json").write_text(json.dumps({**info, "taps": [["teacher", "s2"]]}))
    with pytest.raises(KDError, match=r"run.json' is damaged \('taps' is not a list of"):
        Experiment.from_run(exp.run_dir, quiet=True).cohort


class NaNAfter(nn.Module):
    """A tiny classifier whose output turns to NaN after a number of training forwards."""

    def __init__(self, after):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 4)
        self.after, self.calls = after, 0

    def forward(self, x):
        out = self.head(self.conv(x).mean((2, 3)))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_non_finite_loss_stops_with_network_and_term(tiny_overrides):
    # 48 train samples / batch 16 = 3 steps per epoch; NaN from the 5th step (epoch 2).
    exp = Experiment(None, overrides=tiny_overrides("train.epochs=3", "routing.preset=dml"),
                     networks={"s2": NaNAfter(4)}, quiet=True)
    with pytest.raises(TrainingDiverged) as err:
        exp.fit()
    msg = str(err.value)
    assert "network 's1': loss term 'predictions<-s2' is nan at epoch 2 step 2" in msg
    assert "last good checkpoint" in msg and "\n" not in msg
    last = checkpoints.load(exp.run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["cohort"].values() if v.is_floating_point())
    assert json.loads((exp.run_dir / "run.json").read_text())["status"] == "diverged"


def test_offline_teacher_from_run_folder(tiny_overrides, tmp_path):
    first = Experiment(None, overrides=tiny_overrides("train.epochs=1", "routing.preset=kd"), quiet=True)
    first.fit()
    teacher_sd = checkpoints.load(first.run_dir / "checkpoints" / "best-teacher.pt")["state_dict"]
    second = Experiment(None, overrides=tiny_overrides(
        "train.epochs=1", "output.name=offline", "networks.teacher.mode=offline",
        f"networks.teacher.checkpoint={first.run_dir}"), quiet=True)
    second.fit()
    after = checkpoints.load(second.run_dir / "checkpoints" / "last.pt")["cohort"]
    for key, value in teacher_sd.items():
        assert torch.equal(after[f"networks.teacher.{key}"], value), key
    result = second.evaluate()
    assert set(result["networks"]) == {"teacher", "s1", "s2", "ensemble"}


@pytest.mark.parametrize("preset", ["student", "kd", "fitnet", "dml", "kdml", "diverse", "diverse-full", "ctsl-mkt"])
def test_one_forward_per_network_per_step(tiny_overrides, preset):
    exp = Experiment(None, overrides=tiny_overrides("train.epochs=1", f"routing.preset={preset}",
                                                    "train.max_steps_per_epoch=2"), quiet=True)
    counts = {n: 0 for n in exp.cohort.names}
    for name, net in exp.cohort.networks.items():
        def count(module, _inputs, _output, name=name):
            counts[name] += module.training

        net.register_forward_hook(count)
    exp.fit()
    assert counts == {n: 2 for n in exp.cohort.names}  # 2 steps, one forward each, whatever the edges


def offline_teacher(tmp_path, tiny_overrides):
    first = Experiment(None, overrides=tiny_overrides("train.epochs=1", "routing.preset=kd", "output.name=t"),
                       quiet=True)
    first.fit()
    return first.run_dir


def test_teacher_cache_same_losses_and_no_teacher_forward_after_epoch_one(tiny_overrides, tmp_path, own_store):
    teacher_run = offline_teacher(tmp_path, tiny_overrides)
    common = ["train.epochs=3", "networks.teacher.mode=offline", f"networks.teacher.checkpoint={teacher_run}",
              "data.augment.hflip=false", "data.augment.vflip=false", "train.early_stopping=null"]
    plain = Experiment(None, overrides=tiny_overrides(*common, "output.name=plain"), quiet=True)
    plain.fit()
    cached = Experiment(None, overrides=tiny_overrides(*common, "output.name=cached", "networks.teacher.cache=true"),
                        quiet=True)
    class Epoch:
        now = 0

    def mark(_trainer, epoch):
        Epoch.now = epoch

    before = []
    cached.cohort.networks["teacher"].register_forward_pre_hook(lambda m, i: before.append(Epoch.now))
    cached.fit(callbacks=[mark])
    a = list(csv.DictReader((plain.run_dir / "metrics.csv").open()))
    b = list(csv.DictReader((cached.run_dir / "metrics.csv").open()))
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_predictions<-teacher", "train_features<-teacher", "val_accuracy"):
            if ra.get(key):
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), key
    # the teacher runs in epoch 1 only (3 training steps + validation); never after
    n_val_batches = len(cached.data.loader("val", 16))
    assert len([e for e in before if e == 0]) == 3 + n_val_batches
    assert [e for e in before if e >= 1] == []


def test_a_teachers_kept_outputs_are_stored_for_the_next_run_and_checked(tiny_overrides, tmp_path, own_store):
    """networks.teacher.cache stores the outputs on disk (kdstyles.store.outputs): the next run of
    the same teacher, data and seed reads them and runs the teacher on its first training batch
    only, to check them, and learns exactly what the first did; a file whose outputs do not match
    is dropped, computed again and replaced."""
    from kdstyles.store import checkpoints

    teacher_run = offline_teacher(tmp_path, tiny_overrides)
    common = ["train.epochs=2", "networks.teacher.mode=offline", f"networks.teacher.checkpoint={teacher_run}",
              "data.augment.hflip=false", "data.augment.vflip=false", "train.early_stopping=null",
              "networks.teacher.cache=true"]

    def run(name):
        exp = Experiment(None, overrides=tiny_overrides(*common, f"output.name={name}"), quiet=True)
        seen, trainers = [], []
        exp.cohort.networks["teacher"].register_forward_pre_hook(
            lambda m, i: seen.append(trainers[0].state.epoch if trainers else 0))
        exp.fit(callbacks=[lambda trainer, epoch: trainers.append(trainer) if not trainers else None])
        return exp, seen, trainers[0].outputs_file

    first, seen, stored = run("first")
    n_val = len(first.data.loader("val", 16))
    assert stored.is_file() and len(seen) == 3 + n_val  # epoch 1 only: 3 training batches and validation
    second, seen, again = run("second")
    assert again == stored and seen == [0] * (1 + n_val)  # one training batch, to check the file
    same_losses(first, second)
    kept = checkpoints.load(stored)["outputs"]
    tampered = {k: (-v if k.endswith("/logits") else v) for k, v in kept.items()}
    checkpoints.save({"outputs": tampered}, stored)
    third, seen, _ = run("third")
    assert len(seen) == 3 + n_val  # dropped and computed again
    assert torch.equal(checkpoints.load(stored)["outputs"]["teacher/logits"], kept["teacher/logits"])
    same_losses(first, third)


def same_losses(a, b):
    rows = [list(csv.DictReader((e.run_dir / "metrics.csv").open())) for e in (a, b)]
    assert len(rows[0]) == len(rows[1]) and any(r.get("train_loss") for r in rows[0])
    for ra, rb in zip(*rows):
        if ra.get("train_loss"):
            assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-5)


def test_fixed_views_let_an_augmented_teacher_be_cached_with_unlabelled_images(tiny_overrides, tmp_path, own_store,
                                                                             monkeypatch,
                                                                             capsys):
    """data.views: K fixed augmented views per image (epoch e shows view e mod K, unlabelled
    images each pass): the teacher's outputs are kept per image and view, so it stops running
    once every view was seen, and the students learn exactly what they learn uncached."""
    teacher_run = offline_teacher(tmp_path, tiny_overrides)
    # 48 labelled images a epoch (3 batches of 16) and as many of the 96 unlabelled: half a pass
    common = ["train.epochs=5", "networks.teacher.mode=offline", f"networks.teacher.checkpoint={teacher_run}",
              "data.views=2", "data.augment.shift=0.1", "train.early_stopping=null", "routing.preset=kd",
              "data.unlabeled.source=synthetic", "data.unlabeled.samples=96"]
    plain = Experiment(None, overrides=tiny_overrides(*common, "output.name=plain"), quiet=True)
    plain.fit()
    cached = Experiment(None, overrides=tiny_overrides(*common, "output.name=cached", "networks.teacher.cache=true"),
                        quiet=True)
    epochs = []
    cached.cohort.networks["teacher"].register_forward_pre_hook(
        lambda m, i: epochs.append(cached_trainer[0].state.epoch) if m.training is False and cached_trainer else None)
    cached_trainer = []

    def keep(trainer, epoch):
        if not cached_trainer:
            cached_trainer.append(trainer)

    cached.fit(callbacks=[keep])
    a = list(csv.DictReader((plain.run_dir / "metrics.csv").open()))
    b = list(csv.DictReader((cached.run_dir / "metrics.csv").open()))
    assert len(a) == len(b) == 5 * 4
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_predictions<-teacher", "val_accuracy"):
            if ra.get(key):
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), key
    # labelled view 1 first seen in epoch 2, the unlabelled images' 2 passes end in epoch 4; none after
    assert 3 in epochs and not [e for e in epochs if e >= 4]
    # kdstyles check says when the teacher stops running, the unlabelled passes counted
    monkeypatch.setattr(sys, "argv", ["kdstyles", "check", *(a for o in tiny_overrides(
        *common, "output.name=check", "networks.teacher.cache=true") for a in ("--set", o))])
    with pytest.raises(SystemExit):
        main()
    out = capsys.readouterr().out
    assert "the first 2 passes over the unlabelled ones (until epoch 4)" in out
    ds = cached.data.splits["train"]
    assert ds.keys == 2 * len(ds) and ds[(3, 5)][2] == 5 + len(ds)  # epoch 3 is view 1
    assert torch.equal(ds[(3, 5)][0], ds[(1, 5)][0]) and not torch.equal(ds[(2, 5)][0], ds[(1, 5)][0])


def test_cache_needs_offline_teacher_and_fixed_views():
    from kdstyles import load_config

    with pytest.raises(KDError, match="networks.teacher.cache: needs mode offline, and either a fixed number of "
                                      "augmented views"):
        load_config(None, ["networks.teacher.cache=true", "networks.teacher.mode=offline",
                           "networks.teacher.checkpoint=x"])
    load_config(None, ["networks.teacher.cache=true", "networks.teacher.mode=offline",
                       "networks.teacher.checkpoint=x", "data.views=4"])


@pytest.mark.parametrize("option", ["train.precision=bf16", "train.channels_last=true"])
def test_precision_and_layout_match_fp32(tiny_overrides, option):
    ref = Experiment(None, overrides=tiny_overrides("train.epochs=1", "output.name=fp32"), quiet=True)
    ref.fit()
    other = Experiment(None, overrides=tiny_overrides("train.epochs=1", "output.name=other", option), quiet=True)
    other.fit()
    a = list(csv.DictReader((ref.run_dir / "metrics.csv").open()))
    b = list(csv.DictReader((other.run_dir / "metrics.csv").open()))
    # channels-last convolutions sum in another order (kernels differ with the thread count too):
    # after an epoch of Adam steps the fp32 losses agree to about 3e-4 relative, bf16 to a few %
    tol = 0.05 if "bf16" in option else 1e-3
    for ra, rb in zip(a, b):
        if ra.get("train_loss"):
            assert float(rb["train_loss"]) == pytest.approx(float(ra["train_loss"]), rel=tol), ra["network"]


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_checkpoint_with_code_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Boom()}, path)
    with pytest.raises(KDError, match="refused unread"):
        checkpoints.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "last.pt"
    checkpoints.save({"cohort": {"w": torch.randn(100, 100)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(KDError, match="truncated or corrupted"):
        checkpoints.load(path)
    for garbage in (b"\x85garbage", b"\x80\x02}q\x00(X", os.urandom(64), b"PK\x03\x04" + os.urandom(60),
                    b"\x80\xb7" + bytes(range(256))):  # ... and noise torch reads as "pickle protocol 183"
        path.write_bytes(garbage)  # a pickle opcode on an empty stack, a cut pickle, noise, a broken zip
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with pytest.raises(KDError, match=r"last.pt' (is truncated or corrupted|holds pickled objects)"):
                checkpoints.load(path)
        assert not shown  # one line for the user: no warning printed beside the error


def test_background_writer_keeps_the_state_of_the_call_and_reports_errors(tmp_path):
    """checkpoints.Writer: training changes the weights in place right after save(); the file
    holds them as they were, files land in order, and a write that fails is raised by wait()
    (the writes after it still land)."""
    w, history = torch.zeros(3), [1]
    writer = checkpoints.Writer()
    writer.save({"w": w, "history": history}, tmp_path / "last.pt")
    w.add_(5)  # an optimiser step, while the file may still be being written
    history.append(2)
    writer.save({"w": w, "history": history}, tmp_path / "second.pt")
    writer.wait()
    first, second = checkpoints.load(tmp_path / "last.pt"), checkpoints.load(tmp_path / "second.pt")
    assert torch.equal(first["w"], torch.zeros(3)) and first["history"] == [1]
    assert torch.equal(second["w"], torch.full((3,), 5.0)) and second["history"] == [1, 2]
    (tmp_path / "file").write_text("x")
    writer.save({"w": w}, tmp_path / "file" / "best.pt")  # a folder that is a file
    writer.save({"w": w + 1}, tmp_path / "last.pt")
    with pytest.raises(KDError, match=r"cannot write '.*best.pt'"):
        writer.wait()
    assert torch.equal(checkpoints.load(tmp_path / "last.pt")["w"], torch.full((3,), 6.0))
    writer.wait()  # reported once


def test_loader_workers_never_fork_while_a_checkpoint_is_being_written(tmp_path, monkeypatch):
    """Workers started anew each epoch (data.persistent_workers: false) are forked only after
    the previous epoch's checkpoints have landed: a fork copies the locks a writing thread may
    hold. A write that takes 0.3 s would otherwise still run when the next epoch starts."""
    import os
    import threading
    import time

    from conftest import tiny

    plain_save, plain_fork, writing_at_fork = checkpoints.save, os.fork, []

    def slow_save(obj, path):
        time.sleep(0.3)
        plain_save(obj, path)

    def fork():
        writing_at_fork.append(any(t.name.startswith("kdstyles-checkpoints") for t in threading.enumerate()))
        return plain_fork()

    monkeypatch.setattr(checkpoints, "save", slow_save)
    monkeypatch.setattr(os, "fork", fork)
    exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=3", "data.num_workers=1",
                                          "data.persistent_workers=false"), quiet=True)
    exp.fit()
    assert len(writing_at_fork) >= 6 and not any(writing_at_fork)  # train + val workers, every epoch
    assert checkpoints.load(exp.run_dir / "checkpoints" / "last.pt")["epoch"] == 3


def test_demo_trains_a_shared_teacher_and_three_recipes_then_reuses_them(tmp_path, monkeypatch, capsys):
    from conftest import tiny
    from kdstyles.cli import main
    from kdstyles.workflows.compare import DEMO_VARIANTS

    sets = [a for o in tiny(tmp_path, "train.epochs=1") if not o.startswith("output.") for a in ("--set", o)]
    args = ["kdstyles", "demo", "--out", str(tmp_path / "demo"), "-q", *sets]
    monkeypatch.setattr(sys, "argv", args)

    def run():
        with pytest.raises(SystemExit) as done:
            main()
        assert done.value.code == 0

    run()
    first = capsys.readouterr().out
    assert "trained alone" in first and all(p in first for p in DEMO_VARIANTS[1:]) and "ensemble" in first
    assert "share of the teacher's" in first and "shows the tool, not the verdict" in first
    runs = tmp_path / "demo"
    stamps = {p: p.stat().st_mtime_ns for p in runs.glob("*/checkpoints/last.pt")}
    assert sorted(p.parent.parent.name for p in stamps) == sorted(["teacher-seed0", *(f"{p}-seed0"
                                                                                       for p in DEMO_VARIANTS)])
    teacher = json.loads((runs / "teacher-seed0" / "run.json").read_text())
    assert json.loads((runs / "diverse-seed0" / "run.json").read_text())["best"].keys() == {"s1", "s2"}  # frozen
    assert teacher["epochs_done"] == 2  # twice the students' epochs
    assert (runs / "report.html").is_file() and (runs / "results.csv").is_file()
    # a Hub card of one of these runs gives the gap closure the table printed (its recipe is the
    # comparison's name for it, not the preset it expands to)
    from kdstyles.deploy.hub import _gap_closure

    closed = _gap_closure(runs / f"{DEMO_VARIANTS[-1]}-seed0", "s2")
    assert closed["preset"] == DEMO_VARIANTS[-1] and f"({closed['text']})" in first
    run()
    again = capsys.readouterr().out
    assert again.count("skipped (finished)") == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in runs.glob("*/checkpoints/last.pt")}


def test_ctsl_mkt_and_three_student_cohort_train_end_to_end(tiny_overrides):
    exp = Experiment(None, overrides=tiny_overrides("routing.preset=ctsl-mkt", *THREE, "train.epochs=1"), quiet=True)
    shadow_before = {k: v.clone() for k, v in exp.cohort.shadows.state_dict().items()}
    exp.fit()
    assert exp.cohort.names == ["s1", "s2", "s3"]  # no teacher is built
    changed = [k for k, v in exp.cohort.shadows.state_dict().items() if not torch.equal(v, shadow_before[k])]
    assert changed  # EMA shadows followed the students
    result = exp.evaluate()
    assert list(result["networks"]) == ["s1", "s2", "s3", "ensemble"]
    assert result["networks"]["ensemble"]["parameters"] == sum(result["networks"][s]["parameters"]
                                                               for s in ("s1", "s2", "s3"))


def test_progress_in_a_log_is_plain_lines_with_speed_and_eta(tmp_path):
    from conftest import tiny

    proc = subprocess.run([sys.executable, "-m", "kdstyles", "train", "--no-evaluate",
                           *[a for o in tiny(tmp_path, "train.epochs=1") for a in ("--set", o)]],
                          capture_output=True, text=True, timeout=300)  # stdout is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = [ln for ln in lines if ln.startswith("epoch 1/1 step")]
    assert [ln.split()[3] for ln in steps] == ["1/3", "2/3", "3/3"]
    assert all("img/s, ETA" in ln and "teacher" in ln for ln in steps)
    assert any(ln.startswith("epoch 1/1 (") for ln in lines) and "" not in lines[:len(steps) + 1]
    epoch_line = next(ln for ln in lines if ln.startswith("epoch 1/1 ("))
    assert "data wait" in epoch_line and "validation" in epoch_line and "checkpoints" in epoch_line
    assert any(ln.startswith("run folder: ") and "epochs; " in ln and "steps " in ln for ln in lines)


def test_loader_workers_persistent_or_not_give_the_same_run_and_end_with_it(tmp_path):
    """Batches and augmentation are a function of (seed, epoch, index): two worker processes,
    kept across epochs (the default) or started every epoch, train exactly what the main
    process does; no worker outlives fit."""
    import multiprocessing

    from conftest import tiny

    tables = []
    for name, sets in (("main", ["data.num_workers=0"]), ("kept", ["data.num_workers=2"]),
                       ("restarted", ["data.num_workers=2", "data.persistent_workers=false"])):
        exp = Experiment(None, overrides=tiny(tmp_path / name, "train.epochs=2", "data.augment.rotate=15", *sets),
                         quiet=True)
        exp.fit()
        assert not multiprocessing.active_children()
        tables.append((exp.run_dir / "metrics.csv").read_text())
    assert tables[0] == tables[1] == tables[2]


def test_epoch_time_is_split_into_data_wait_validation_and_checkpoints(tmp_path):
    """times.csv says where each epoch's seconds went; a loader that takes 50 ms per batch
    shows as at least that much data wait; a resume appends its epochs."""
    import time

    from conftest import tiny

    exp = Experiment(None, overrides=tiny(tmp_path, "train.epochs=2"), quiet=True)
    data = exp.data
    plain = data.loader

    def slow_loader(split, *args, **kwargs):
        loader = plain(split, *args, **kwargs)
        if split != "train":
            return loader

        class Slow:  # the real loader's batches, each 50 ms late
            batch_sampler, dataset, num_workers = loader.batch_sampler, loader.dataset, loader.num_workers

            def __len__(self):
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    time.sleep(0.05)
                    yield batch
        return Slow()

    data.loader = slow_loader
    exp.fit()
    rows = list(csv.DictReader((exp.run_dir / "times.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        t = {k: float(row[k]) for k in ("epoch_s", "data_wait_s", "val_s", "checkpoint_s")}
        assert t["data_wait_s"] >= 3 * 0.05  # three batches per epoch, each waited for
        assert t["val_s"] > 0 and t["checkpoint_s"] > 0  # last.pt is written every epoch
        assert t["data_wait_s"] + t["val_s"] + t["checkpoint_s"] < t["epoch_s"]
    with (exp.run_dir / "times.csv").open("a") as f:  # a later epoch's row whose checkpoint was never written
        f.write("3,99,99,99,99\n")
    Experiment.from_run(exp.run_dir, overrides=["train.epochs=3"], quiet=True).fit(resume=True)
    rows = list(csv.DictReader((exp.run_dir / "times.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[2]["epoch_s"] != "99"
    from kdstyles.engine.log import time_summary
    from kdstyles.store.runfolder import RunFolder

    total = RunFolder(exp.run_dir).read_times()
    assert total["epoch"] == 6 and total["epoch_s"] == pytest.approx(sum(float(r["epoch_s"]) for r in rows))
    assert time_summary({"epoch_s": 125.0, "data_wait_s": 2.5, "val_s": 10.0, "checkpoint_s": 0.0}) == \
        "2 min 5 s: steps 90%, data wait 2%, validation 8%, checkpoints 0%"


def test_auto_precision_workers_and_cudnn_settings_per_device(monkeypatch):
    from types import SimpleNamespace

    from kdstyles.engine import resolve_precision, resolve_workers
    from kdstyles.engine.runtime import Runtime

    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("fp16", cpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", gpu) == "fp32"
    assert resolve_workers("auto", cpu, cpus=16) == 0 and resolve_workers(3, cpu) == 3
    assert resolve_workers("auto", gpu, cpus=16) == 8 and resolve_workers("auto", gpu, cpus=4) == 3
    train = SimpleNamespace(device="cpu", channels_last=False, precision="auto", deterministic=True)
    rt = Runtime.create(train, device=gpu)  # placement logic only: nothing runs on the GPU here
    assert rt.autocast_dtype is None and rt.scaler is None
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = False


def test_reading_and_predicting_progress_in_a_log_is_a_plain_line_per_tenth(monkeypatch):
    """Outside the training loop (reading data, predict): in a log, once the work has taken
    ``quiet_for`` seconds, one line at each tenth with the rate and the time left; short work
    and quiet work print nothing."""
    import io

    from rich.console import Console

    from kdstyles.common import progress

    clock = iter(range(0, 1000, 2))  # every call to the clock: 2 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    out = io.StringIO()
    with progress.Steps(console=Console(file=out, force_terminal=False), quiet_for=5) as bar:
        task = bar.add_task("reading 20 volumes", 20)
        for _ in range(20):
            bar.advance(task)
    lines = out.getvalue().splitlines()  # the 2nd volume (the first tenth) ends at 4 s: silent; the 3rd at 6 s
    assert lines[0] == "reading 20 volumes: 3/20 (15%), 0.5/s, 34s left"
    assert [ln.split()[3] for ln in lines] == ["3/20", *(f"{n}/20" for n in range(4, 21, 2))]
    assert lines[-1] == "reading 20 volumes: 20/20 (100%), 0.5/s, 0s left"
    for quiet, wait in ((False, 1e9), (True, 0)):
        out = io.StringIO()
        with progress.Steps(quiet, console=Console(file=out, force_terminal=False), quiet_for=wait) as bar:
            task = bar.add_task("predicting 20 images", 20)
            for _ in range(20):
                bar.advance(task)
        assert out.getvalue() == ""


def test_validation_every_n_epochs_and_always_after_the_last(tiny_overrides):
    """train.val_every: 2 over 3 epochs validates after epochs 2 and 3 only; the best
    checkpoints come from validated epochs, the unvalidated epoch's row has no val_ values."""
    exp = Experiment(None, overrides=tiny_overrides("train.epochs=3", "train.val_every=2", "routing.preset=kd"),
                     quiet=True)
    exp.fit()
    rows = list(csv.DictReader((exp.run_dir / "metrics.csv").open()))
    by_epoch = {e: [r for r in rows if r["epoch"] == str(e)] for e in (1, 2, 3)}
    assert all(r["val_accuracy"] == "" and r["best"] == "False" for r in by_epoch[1])
    assert all(r["val_accuracy"] != "" for e in (2, 3) for r in by_epoch[e])
    assert all(r["train_loss"] != "" for r in rows if r["network"] in ("s1", "s2"))
    best = exp.folder.info().best
    assert {b["epoch"] for b in best.values()} <= {2, 3}
    assert len((exp.run_dir / "times.csv").read_text().splitlines()) == 4


def test_a_run_folder_of_an_earlier_release_resumes_as_a_new_run_would(tmp_path):
    """tests/data/older-run was written by an earlier release (its RELEASE file; made by
    tests/data/make_older_run.py) and interrupted after epoch 1 of 2. This release resumes it
    and ends where a run of its own, never interrupted, ends: bit for bit on the machine that
    wrote the folder; elsewhere within float summation order (epoch 1 was computed there)."""
    import importlib.util
    import shutil

    data = Path(__file__).parent / "data"
    spec = importlib.util.spec_from_file_location("make_older_run", data / "make_older_run.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    older = tmp_path / "older"
    shutil.copytree(data / "older-run", older)
    assert json.loads((older / "run.json").read_text())["status"] == "interrupted"
    resumed = Experiment.from_run(older, quiet=True)
    assert resumed.fit(resume=True)["epochs"] == 2
    fresh = Experiment(None, overrides=[*maker.OVERRIDES, f"output.dir={tmp_path}", "output.name=fresh"], quiet=True)
    fresh.fit()
    a, b = checkpoints.load(fresh.run_dir / "checkpoints" / "last.pt"), checkpoints.load(older / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["cohort"].keys() == b["cohort"].keys()
    for key, value in a["cohort"].items():
        if value.is_floating_point():
            assert torch.allclose(value, b["cohort"][key], rtol=1e-4, atol=1e-6), key
        else:
            assert torch.equal(value, b["cohort"][key]), key
    rows = [list(csv.DictReader((d / "metrics.csv").open())) for d in (fresh.run_dir, older)]
    assert [(r["epoch"], r["network"]) for r in rows[0]] == [(r["epoch"], r["network"]) for r in rows[1]]
    then = (data / "older-run" / "metrics.csv").read_text().splitlines()[0].split(",")  # what that release wrote
    for mine, theirs in zip(*rows):
        assert mine.keys() == theirs.keys()
        for k, v in mine.items():  # every number (lr, losses, validation metrics) as a new run has it; a metric
            if k not in then and mine["epoch"] == "1":  # this release adds is there from the resumed epoch on
                continue
            if k in ("epoch", "network", "best") or not v:
                assert v == theirs[k], (mine["epoch"], mine["network"], k)
            else:
                assert float(v) == pytest.approx(float(theirs[k]), rel=1e-4, abs=1e-6), (mine["epoch"], k)
    info = json.loads((older / "run.json").read_text())
    assert info["status"] == "finished" and [r["after_epoch"] for r in info["resumes"]] == [1]


def test_run_json_is_a_record_its_keeper_reads_old_newer_or_damaged(tmp_path):
    """run.json is read and written by RunFolder as a RunInfo: a file of an earlier release
    (no taps, no spatial_dims) opens with what it lacks as absent, a later release's unknown keys
    survive an update, a value of the wrong kind is one line naming the file and the key."""
    from kdstyles import KDError
    from kdstyles.store.runfolder import RunFolder

    folder = RunFolder(tmp_path)
    older = {"task": "classification", "preset": "kd", "class_names": ["a", "b"], "image_size": 16, "channels": 3,
             "normalize": {"mean": [0.5] * 3, "std": [0.2] * 3}, "status": "finished", "epochs_done": 2,
             "best": {"s1": {"epoch": 2}}, "from_the_future": [1, 2]}
    (tmp_path / "run.json").write_text(json.dumps(older))
    info = folder.info()
    assert info.taps is None and info.spatial_dims is None and info.epochs_done == 2 and info.best["s1"]["epoch"] == 2
    folder.update_info(status="interrupted", epochs_done=3)
    again = json.loads((tmp_path / "run.json").read_text())
    assert again == {**older, "status": "interrupted", "epochs_done": 3}  # nothing added, nothing lost
    (tmp_path / "run.json").write_text(json.dumps({**older, "best": ["not", "a", "mapping"]}))
    with pytest.raises(KDError, match=rf"^'{tmp_path / 'run.json'}' is damaged \(best\); it records the run's shapes"):
        folder.info()
