"""kdstyles tune (Optuna): trials are ordinary runs scored on validation, pruned through the
engine's epoch callback, resumable from the study database, and two worker processes share
one SQLite study. Bad search spaces and storages fail in one line before any trial."""

import json
import subprocess
import sys

import pytest
import yaml

from kdstyles import KDError
from kdstyles.workflows.tune import epoch_value, trial_value, tune

BASE = {"name": "tiny",
        "data": {"image_size": 16, "train_samples": 48, "val_samples": 24, "test_samples": 24, "batch_size": 16},
        "networks": {"teacher": {"widen": 0.25}, "students": {"s1": {"arch": "resnet10", "widen": 0.125},
                                                               "s2": {"arch": "resnet10", "widen": 0.125}}},
        "train": {"epochs": 2},
        "tune": {"trials": 3, "startup_trials": 1,
                 "space": {"styles.predictions.temperature": {"low": 1, "high": 8},
                           "loss.ce_weight": {"low": 0.1, "high": 0.9},
                           "routing.preset": {"choices": ["kd", "diverse"]}}}}


def config(tmp_path, epochs: int = 2, **tune_changes):
    cfg = json.loads(json.dumps(BASE))
    cfg["tune"].update(tune_changes)
    cfg["train"]["epochs"] = epochs
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_trials_are_runs_scored_on_validation_and_the_study_resumes(tmp_path):
    out = tmp_path / "tune"
    lines = []
    summary = tune(config(tmp_path), out, echo=lines.append)
    assert sum(summary["trials"].values()) == 3 and summary["trials"].get("complete", 0) >= 1
    best = summary["best"][0]
    run = out / f"tiny-trial-{best['number']}"
    assert best["run_dir"] == str(run) and not (run / "eval.json").exists()  # never scored on the test split
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["routing"]["preset"] == best["params"]["routing.preset"]
    assert cfg["styles"]["predictions"]["temperature"] == pytest.approx(best["params"]["styles.predictions.temperature"])
    history = [{"network": r["network"], "epoch": int(r["epoch"]), "val_accuracy": float(r["val_accuracy"])}
               for r in __import__("csv").DictReader((run / "metrics.csv").open())]
    assert best["value"] == pytest.approx(trial_value(history, "accuracy", "students", ["s1", "s2"]))
    assert json.loads((out / "tune.json").read_text())["best"][0]["number"] == best["number"]
    again = tune(config(tmp_path), out, trials=4, echo=lines.append)  # the same study, one trial more
    assert sum(again["trials"].values()) == 4


def test_the_teachers_own_keys_train_one_shared_teacher_per_value(tmp_path):
    """teacher.train.epochs is searched: each distinct value trains one teacher on labels,
    reused by every trial that draws it; the trials' students learn from it offline."""
    out = tmp_path / "tune"
    space = {"teacher.train.epochs": {"choices": [1, 2]}, "loss.ce_weight": {"low": 0.1, "high": 0.9}}
    lines = []
    tune(config(tmp_path, trials=4, startup_trials=4, pruner="none", space=space), out, echo=lines.append)
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}").get_trials()
    drawn = {t.params["teacher.train.epochs"] for t in trials}
    teachers = sorted(p.name for p in out.glob("tiny-teacher-*"))
    assert teachers == sorted(f"tiny-teacher-train.epochs={e}" for e in drawn)
    for t in trials:
        run_cfg = yaml.safe_load((out / f"tiny-trial-{t.number}" / "config.yaml").read_text())
        teacher = out / f"tiny-teacher-train.epochs={t.params['teacher.train.epochs']}"
        assert t.user_attrs["teacher_run"] == str(teacher)
        assert run_cfg["networks"]["teacher"]["mode"] == "offline"
        assert run_cfg["networks"]["teacher"]["checkpoint"] == str(teacher)
        assert run_cfg["train"]["epochs"] == 2  # the students keep their own epochs
    for teacher in teachers:
        epochs = int(teacher.rsplit("=", 1)[1])
        info = json.loads((out / teacher / "run.json").read_text())
        assert info["status"] == "finished" and info["epochs_done"] == epochs
        assert sum("training" in line and teacher in line for line in lines) == 1  # trained once, then reused
    assert sum("trained before" in line for line in lines) == len(trials) - len(teachers)


def test_values_per_epoch_and_per_trial():
    h = [{"network": "s1", "epoch": 1, "val_accuracy": 0.5}, {"network": "s2", "epoch": 1, "val_accuracy": 0.7},
         {"network": "ensemble", "epoch": 1, "val_accuracy": 0.8},
         {"network": "s1", "epoch": 2, "val_accuracy": 0.4}, {"network": "s2", "epoch": 2, "val_accuracy": 0.9},
         {"network": "ensemble", "epoch": 2, "val_accuracy": 0.6}]
    assert epoch_value(h, 2, "accuracy", "students", ["s1", "s2"]) == pytest.approx(0.65)
    assert epoch_value(h, 1, "accuracy", "ensemble", ["s1", "s2"]) == 0.8
    assert trial_value(h, "accuracy", "students", ["s1", "s2"]) == pytest.approx((0.5 + 0.9) / 2)  # each its best
    assert trial_value(h, "accuracy", "s1", ["s1", "s2"]) == 0.5


def test_a_trial_below_the_median_is_pruned_by_the_engine(tmp_path):
    """A pruner that always prunes after the first epoch: the run stops there, status pruned."""
    import optuna

    out = tmp_path / "tune"
    real = optuna.pruners.MedianPruner

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    optuna.pruners.MedianPruner = lambda **kw: Always()
    try:
        summary = tune(config(tmp_path, trials=1), out, echo=lambda _: None)
    finally:
        optuna.pruners.MedianPruner = real
    assert summary["trials"] == {"pruned": 1}
    run = out / "tiny-trial-0"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "pruned" and info["epochs_done"] == 1  # of 2 epochs


def test_diverged_trials_fail_and_the_search_stops_after_too_many_in_a_row(tmp_path, monkeypatch):
    """A trial whose loss becomes non-finite (a learning rate far too high) is a failed trial,
    not the end of the search; after MAX_FAILED_IN_A_ROW of them one line says to narrow the
    space. Each trial is its own run folder, stopped where it diverged."""
    import kdstyles.workflows.tune as tuning

    monkeypatch.setattr(tuning, "MAX_FAILED_IN_A_ROW", 2)
    lines = []
    with pytest.raises(KDError, match=r"2 trials in a row diverged; narrow tune.space"):
        tune(config(tmp_path, trials=3, space={"optim.lr": {"choices": [1.0e12]}}), tmp_path / "tune",
             echo=lines.append)
    failed = [line for line in lines if ": failed (" in line]
    assert len(failed) == 2 and all("is nan" in line or "is inf" in line for line in failed), lines
    for n in (0, 1):
        info = json.loads((tmp_path / "tune" / f"tiny-trial-{n}" / "run.json").read_text())
        assert info["status"] == "diverged", info["status"]


def test_two_workers_share_one_sqlite_study(tmp_path):
    cfg, out = config(tmp_path, epochs=1, trials=4, startup_trials=4), tmp_path / "tune"  # what is shared, not learnt
    args = [sys.executable, "-m", "kdstyles", "tune", cfg, "--out", str(out), "--storage",
            f"sqlite:///{tmp_path / 'shared.db'}"]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    import optuna

    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'shared.db'}").get_trials()
    finished = [t for t in trials if t.state.is_finished()]
    assert 4 <= len(finished) <= 5  # both stop at 4; a trial each may have been started at 3
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials
    assert len({t.number for t in finished}) == len(finished)
    assert all((out / f"tiny-trial-{t.number}" / "run.json").is_file() for t in finished)


@pytest.mark.parametrize("change, message", [
    ({"space": {}}, "tune.space is empty"),
    ({"space": {"optim.lrr": {"low": 0.1, "high": 0.2}}}, "tune.space.optim.lrr: the value 0.1 does not make a valid "
                                                          "experiment (config error: unknown key 'optim.lrr'"),
    ({"space": {"routing.preset": {"choices": ["kd", "dkdx"]}}}, "tune.space.routing.preset: the value 'dkdx'"),
    ({"space": {"teacher.train.epochs": {"low": 0, "high": 3, "int": True}}},
     "tune.space.teacher.train.epochs: the value 0 does not make a valid experiment"),
    ({"objective": "s9"}, "tune.objective 's9' is not known; allowed: students, ensemble, s1, s2"),
])
def test_bad_spaces_fail_before_any_trial(tmp_path, change, message):
    with pytest.raises(KDError) as err:
        tune(config(tmp_path, **change), tmp_path / "tune")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "tune").glob("*trial*"))


def test_bad_ranges_and_storage_are_one_line(tmp_path):
    from kdstyles.config import load_config

    with pytest.raises(KDError, match="a range needs low < high"):
        load_config(None, ["tune.space={optim.lr: {low: 0.1, high: 0.01}}"])
    with pytest.raises(KDError, match="log: true needs low > 0"):
        load_config(None, ["tune.space={loss.ce_weight: {low: 0, high: 1, log: true}}"])
    with pytest.raises(KDError, match="--storage 'nosuchdb://x': the study database cannot be opened"):
        tune(config(tmp_path), tmp_path / "tune", storage="nosuchdb://x")
