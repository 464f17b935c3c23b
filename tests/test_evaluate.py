"""Predictions and scores (kdstyles.engine.evaluate): the ensemble, known networks, fidelity."""

import numpy as np
import pytest
import torch

from kdstyles import KDError, build_cohort, load_config
from kdstyles.engine.evaluate import ENSEMBLE, score, score_cohort, score_split
from kdstyles.tasks import TASKS


def small_cohort(preset="kd"):
    cfg = load_config(None, [f"routing.preset={preset}", "networks.teacher.widen=0.25",
                             "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"])
    return build_cohort(cfg, num_classes=4, channels=3, image_size=16)


def loader(n=10):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return [(x[i:i + 4], y[i:i + 4], torch.arange(i, min(i + 4, n))) for i in range(0, n, 4)]


def test_ensemble_is_the_mean_of_the_students_and_known_networks_are_not_rerun():
    torch.manual_seed(0)
    cohort = small_cohort()
    scores = score_cohort(cohort, loader(), torch.device("cpu"))
    probs, labels = scores.probs, scores.labels
    assert scores.pooled and scores.samples == 10 and list(scores.metrics) == ["teacher", "s1", "s2", ENSEMBLE]
    assert set(probs) == {"teacher", "s1", "s2", ENSEMBLE} and len(labels) == 10
    assert torch.allclose(probs[ENSEMBLE], (probs["s1"] + probs["s2"]) / 2)
    assert torch.allclose(probs["s1"].sum(1), torch.ones(10))
    calls = []
    cohort.networks["teacher"].register_forward_hook(lambda *_: calls.append(1))
    again = score_cohort(cohort, loader(), torch.device("cpu"), known={"teacher": probs["teacher"]}).probs
    assert calls == [] and torch.equal(again["teacher"], probs["teacher"])
    assert torch.allclose(again["s2"], probs["s2"])
    assert list(again) == list(probs)  # the networks in the cohort's order, known ones too


def test_shares_gathered_from_processes_score_as_the_whole_split():
    """Under torchrun each process scores its share and the metrics cover the split: two shares
    gathered (rank order) give the metrics of the whole, each process keeping its own outputs."""
    torch.manual_seed(0)
    cohort = small_cohort()
    batches = loader(12)
    whole = score_cohort(cohort, batches, torch.device("cpu"), details=False)
    sent = []
    first = score_cohort(cohort, batches[:2], torch.device("cpu"), gather=lambda obj: sent.append(obj) or [obj])
    second = score_cohort(cohort, batches[2:], torch.device("cpu"), gather=lambda obj: [sent[0], obj])
    assert second.samples == 12 and first.samples == 8 and len(second.labels) == 4  # its own share kept
    for name, metrics in whole.metrics.items():
        assert second.metrics[name] == pytest.approx(metrics, rel=1e-5, abs=1e-6), name
    assert whole.details == {} and set(first.details) == set(whole.metrics)


def test_files_or_functions_are_scored_by_the_same_scorer():
    """What runs the images is a function: here a fixed answer, scored as a network is."""
    task = TASKS["classification"](4)
    batches = loader(10)
    answer = torch.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 0]]
    def outputs(x, skip):
        start = outputs.seen
        outputs.seen += len(x)
        return {"model": answer[start:start + len(x)]}
    outputs.seen = 0
    labels = torch.cat([y for _, y, _ in batches])
    scores = score_split(outputs, batches, task)
    assert scores.metrics["model"]["accuracy"] == pytest.approx(float((answer.argmax(1) == labels).float().mean()))
    assert scores.per_image["model"]["accuracy"] == (answer.argmax(1) == labels).int().tolist()


def test_score_adds_fidelity_only_against_a_teacher():
    task = TASKS["classification"](3)
    p = {"teacher": torch.softmax(torch.randn(6, 3), 1), "s1": torch.softmax(torch.randn(6, 3), 1)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scored = score(p, labels, task)
    assert "fidelity_kl" in scored["s1"] and "fidelity_kl" not in scored["teacher"]
    assert scored["s1"]["accuracy"] == pytest.approx(float((p["s1"].argmax(1) == labels).float().mean()))
    students_only = score({"s1": p["s1"]}, labels, task)
    assert "fidelity_kl" not in students_only["s1"]


def test_run_and_eval_files_record_task_and_dims_and_older_folders_still_open(tmp_path):
    """run.json and eval.json say what they are; a run folder written before they did is read
    by its metrics, as before."""
    import json

    from conftest import SEG, tiny

    from kdstyles import Experiment
    from kdstyles.report import load_rows
    from kdstyles.report.results import metric_set
    from kdstyles.store.runfolder import RunFolder

    exp = Experiment(None, overrides=tiny(tmp_path, *SEG, "data.train_samples=16", "data.val_samples=4",
                                          "data.test_samples=4", "data.batch_size=8", "train.epochs=1"), quiet=True)
    exp.fit()
    exp.evaluate()
    run = RunFolder(exp.run_dir)
    for path in (run.info_path, run.eval_path):
        data = json.loads(path.read_text())
        assert (data["task"], data["spatial_dims"]) == ("segmentation", 2), path
    rows = load_rows(run.path)
    assert run.task() == "segmentation" and rows[0]["task"] == "segmentation"
    assert metric_set(rows)[0] == "dice"
    for path in (run.info_path, run.eval_path):  # an older run folder
        data = json.loads(path.read_text())
        del data["task"], data["spatial_dims"]
        path.write_text(json.dumps(data))
    assert run.task() is None
    old = load_rows(run.path)
    assert "task" not in old[0] and metric_set(old) == metric_set(rows)
    Experiment.from_run(run.path, quiet=True).evaluate()  # opens and evaluates again


def test_eval_json_is_one_record_read_by_its_keeper(tmp_path):
    """eval.json is read through RunFolder as an Evaluation record: rows for results.csv come
    from it alone, a file of an older release (fewer keys) or a newer one (more keys) opens,
    and a damaged one is one line naming the key."""
    import json

    from kdstyles import KDError
    from kdstyles.store.runfolder import Evaluation, RunFolder

    run = RunFolder(tmp_path / "kd-seed1")
    run.path.mkdir()
    older = {"split": "test", "checkpoint": "best", "networks": {"s1": {"accuracy": 0.5, "ece": float("nan")}},
             "per_image": {"s1": {"accuracy": [1, 0]}}}
    run.eval_path.write_text(json.dumps(older))
    record = run.read_eval()
    assert record.task is None and record.class_names == [] and record.per_image["s1"]["accuracy"] == [1, 0]
    assert [r.values() for r in record.rows()] == [
        {"preset": "run", "seed": 0, "network": "s1", "checkpoint": "best", "split": "test", "run_dir": "",
         "accuracy": 0.5, "ece": record.networks["s1"]["ece"]}]
    assert record.rows("kd", 1, "x")[0].metrics == {"accuracy": 0.5, "ece": record.networks["s1"]["ece"]}
    assert record.rows("kd", 1, "x")[0].values() == {
        "preset": "kd", "seed": 1, "network": "s1", "checkpoint": "best", "split": "test", "run_dir": "x",
        "accuracy": 0.5, "ece": record.networks["s1"]["ece"]}
    newer = dict(older, calibration={"s1": {"temperature": 1.5}})  # a key this release does not know: kept
    run.write_eval(Evaluation.model_validate(newer))
    assert json.loads(run.eval_path.read_text())["calibration"] == {"s1": {"temperature": 1.5}}
    assert run.eval_checkpoint() == "best" and run.evaluation("val") is None
    run.eval_path.write_text(json.dumps({"networks": [1, 2]}))
    with pytest.raises(KDError, match=r"eval.json' is damaged \(networks: input should be a valid dictionary\); "
                                      r"write it again with 'kdstyles evaluate"):
        run.read_eval()


def test_classwise_ece_and_brier_against_a_hand_computation():
    from kdstyles.common.metrics import brier, classification_metrics, classwise_ece

    p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = torch.tensor([0, 1, 1])
    # two bins: class 0's probabilities 0.9, 0.6 (bin 1; labels 1, 0) and 0.3 (bin 0; label 0): |0.5| + |0.3|
    # over 3 images; class 1's 0.1, 0.4 (bin 0; labels 0, 1) and 0.7 (bin 1; label 1): |-0.5| + |-0.3|
    assert classwise_ece(p, y, n_bins=2) == pytest.approx((0.8 / 3 + 0.8 / 3) / 2)
    assert brier(p, y) == pytest.approx((0.01 + 0.01 + 0.36 + 0.36 + 0.09 + 0.09) / 3)
    perfect = classification_metrics(torch.eye(2)[[0, 1, 1]], y)
    assert perfect["brier"] == pytest.approx(0) and perfect["cw_ece"] == pytest.approx(0)


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    from kdstyles.common.calibration import fit_temperature, tempered

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4000, 5, generator=g)
    labels = torch.multinomial(torch.softmax(logits / 2.5, 1), 1, generator=g)[:, 0]  # drawn at T = 2.5
    t = fit_temperature(torch.softmax(logits, 1), labels)
    assert t == pytest.approx(2.5, rel=0.08)
    p = torch.softmax(logits[:3], 1)
    assert torch.allclose(tempered(p, 1.0), p, atol=1e-6)
    assert torch.equal(tempered(p, t).argmax(1), p.argmax(1))  # the ranking (accuracy) unchanged


def test_evaluate_calibrated_fits_on_validation_and_keeps_the_plain_numbers(tmp_path, cli, monkeypatch):
    import json

    from conftest import SEG, tiny

    from kdstyles import Experiment, KDError
    from kdstyles.store.runfolder import Evaluation

    exp = Experiment(None, overrides=tiny(tmp_path), quiet=True)
    exp.fit()
    code, out, err = cli("evaluate", exp.run_dir, "--calibrated")
    assert code == 0, err
    result = json.loads((exp.run_dir / "eval.json").read_text())
    c = result["calibration"]
    assert c["fitted_on"] == "val" and c["val_images"] == 24 and set(c["temperature"]) == set(result["networks"])
    for name, metrics in c["networks"].items():
        assert metrics["accuracy"] == result["networks"][name]["accuracy"]  # a temperature keeps the ranking
        before, after = c["val"][name]["nll"]
        assert after <= before + 1e-6  # the temperature minimises the validation NLL (T = 1 is a candidate)
        d, lo, hi = c["change"][name]["ece"]
        assert d == pytest.approx(metrics["ece"] - result["networks"][name]["ece"], abs=1e-5) and lo <= d <= hi
        assert f"{name}: temperature {c['temperature'][name]:.3f}" in out
        before, after = c["test"][name]["ece"]
        assert before == pytest.approx(result["networks"][name]["ece"], abs=1e-6)
        assert after == pytest.approx(metrics["ece"], abs=1e-6)
    import kdstyles.api

    counted = []
    scorer = kdstyles.api.score_cohort
    monkeypatch.setattr(kdstyles.api, "score_cohort", lambda *a, **k: counted.append(1) or scorer(*a, **k))
    again = Experiment.from_run(exp.run_dir, quiet=True)
    again.evaluate(calibrated=True)
    again.evaluate(split="train", calibrated=True)
    assert len(counted) == 3  # test, validation (once: both sets are calibrated on its scores), train
    plain = Experiment.from_run(exp.run_dir, quiet=True).evaluate()
    assert "calibration" not in plain and plain["networks"] == result["networks"]
    sets = c["conformal"]
    assert sets["target"] == 0.9 and sets["confidence"] == 0.95 and set(sets["methods"]) == {"lac", "aps", "raps"}
    for method, per in sets["methods"].items():
        assert set(per) == set(result["networks"])
        for name, m in per.items():
            lo, hi = m["coverage_ci"]
            assert 0 <= lo <= m["coverage"] <= hi <= 1 and 1 <= m["set_size"] <= 4  # 4 classes
            assert len(m["per_class"]["coverage"]) == 4
    assert "prediction sets for 90% coverage" in out
    row = Evaluation.model_validate(result).rows()[0].values()  # results rows carry the default method's sets
    assert row["coverage"] == sets["methods"]["lac"][row["network"]]["coverage"]
    assert row["ece_calibrated"] == pytest.approx(c["networks"][row["network"]]["ece"], abs=1e-6)
    with pytest.raises(KDError, match=r"coverage 1.5: the share of images whose prediction set holds the true class "
                                      r"is between 0 and 1"):
        exp.evaluate(calibrated=True, coverage=1.5)
    det = Experiment(None, overrides=tiny(tmp_path / "det", "task=detection", *SEG[1:]), quiet=True)
    with pytest.raises(KDError, match="evaluate --calibrated: temperature scaling is built for classification, "
                                      "multi-label and segmentation so far; task detection is not yet"):
        det.evaluate(calibrated=True)
    with pytest.raises(KDError, match="fitted on the validation split; evaluate another split"):
        exp.evaluate(split="val", calibrated=True)


def test_segmentation_and_multilabel_runs_are_calibrated_on_their_rows(tmp_path):
    """Segmentation: one temperature fitted on a seeded sample of the validation split's pixels,
    the masks (Dice) unchanged at it; multi-label: a temperature per label, each label's yes/no
    a 2-class softmax, so that its tempered probability is sigmoid(logit(p) / T); neither gets
    prediction sets (no single class per image)."""
    from conftest import DATA, SEG, tiny

    from kdstyles import Experiment
    from kdstyles.common.calibration import label_rows, tempered, tempered_labels
    from kdstyles.store.runfolder import Evaluation

    seg = Experiment(None, overrides=tiny(tmp_path / "seg", *SEG, *DATA), quiet=True)
    seg.fit()
    result = seg.evaluate(calibrated=True)
    c = result["calibration"]
    assert "conformal" not in c and all(isinstance(t, float) for t in c["temperature"].values())
    for name, metrics in c["networks"].items():
        assert metrics["dice"] == result["networks"][name]["dice"]  # the argmax of every pixel is kept
        assert c["test"][name]["ece"][0] == pytest.approx(result["networks"][name]["ece"], abs=1e-9)
        before, after = c["val"][name]["nll"]
        assert after <= before + 1e-6
    multi = Experiment(None, overrides=tiny(tmp_path / "ml", "task=multilabel", "data.image_size=32"), quiet=True)
    multi.fit()
    result = multi.evaluate(calibrated=True)
    c = result["calibration"]
    k = len(result["class_names"])
    assert "conformal" not in c and all(len(t) == k for t in c["temperature"].values())
    assert Evaluation.model_validate(result).rows()[0].metrics["ece_calibrated"] == c["test"]["teacher"]["ece"][1]
    g = torch.Generator().manual_seed(0)
    p, t = torch.rand(5, 3, generator=g), [0.5, 1.0, 2.0]
    rows, _, _, label = label_rows(p, torch.zeros(5, 3))
    for j in range(3):  # the 2-class softmax of each label's rows at its temperature is the tempered sigmoid
        assert torch.allclose(tempered(rows[label == j], t[j])[:, 1], tempered_labels(p, t)[:, j], atol=1e-6)
    assert torch.allclose(tempered_labels(p, [1.0] * 3), p, atol=1e-6)
    # exported calibrated, the ONNX model outputs each label at its temperature
    import onnxruntime as ort

    from kdstyles.deploy.export import deployable, export_run

    side = export_run(multi.run_dir, "s1", "onnx", calibrated=True)
    assert side["calibration"]["temperature"] == c["temperature"]["s1"] and "prediction_sets" not in side["calibration"]
    x = torch.rand(3, 3, 32, 32, generator=g)
    got = ort.InferenceSession(str(multi.run_dir / "export" / "s1.onnx")).run(None, {"image": x.numpy()})[0]
    again = Experiment.from_run(multi.run_dir, quiet=True)
    again.load_weights("best")
    with torch.inference_mode():
        want = tempered_labels(deployable(again, "s1")(x), c["temperature"]["s1"])
    assert np.abs(got - want.numpy()).max() < 1e-5


def test_conformal_scores_thresholds_and_sets_against_a_hand_computation():
    from kdstyles.common.sets import class_scores, prediction_sets
    from kdstyles.engine.conformal import set_summary, threshold

    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    y = torch.tensor([0, 1, 2])
    true = lambda method, u=None: class_scores(p.numpy(), method, u)[[0, 1, 2], [0, 1, 2]].tolist()  # noqa: E731
    assert true("lac") == pytest.approx([0.3, 0.7, 0.7])
    # APS: the mass of the classes ranked at or above the label (0.7; 0.5 + 0.3; 0.6 + 0.3), or randomised:
    # the mass above it plus u times its own (0 + 0.5 * 0.7; 0.5 + 0.25 * 0.3; 0.6 + 1 * 0.3)
    assert true("aps") == pytest.approx([0.7, 0.8, 0.9])
    assert true("aps", np.array([0.5, 0.25, 1.0])) == pytest.approx([0.35, 0.575, 0.9])
    # RAPS: + 0.01 per rank beyond the first (the labels of images 1 and 2 are ranked second)
    assert true("raps") == pytest.approx([0.7, 0.81, 0.91])
    assert threshold(p, y, 0.5, "lac") == pytest.approx(0.7)  # ceil(4 * 0.5) = 2nd smallest of 0.3, 0.7, 0.7
    assert threshold(p, y, 0.8, "aps") == float("inf")  # ceil(4 * 0.8) = 4 > 3 images: every class
    # training-conditional: the smallest k with P(Binomial(3, 0.5) <= k - 1) >= 0.8 (1/8, 4/8, 7/8): k = 3
    assert threshold(p, y, 0.5, "lac", confidence=0.8) == pytest.approx(0.7)
    assert threshold(p, y, 0.5, "lac", confidence=0.9) == float("inf")  # 7/8 < 0.9: k = 4 > 3
    sets = torch.from_numpy(prediction_sets(p.numpy(), 0.8, "aps"))
    assert sets.tolist() == [[True, False, False], [True, True, False], [False, True, False]]
    s = set_summary(sets, p, y)
    assert s["coverage"] == pytest.approx(2 / 3) and s["set_size"] == pytest.approx(4 / 3)
    assert s["decided"] == pytest.approx(2 / 3) and s["decided_accuracy"] == pytest.approx(1 / 2)
    assert s["per_class"] == {"coverage": [1.0, 1.0, 0.0], "set_size": [1.0, 2.0, 1.0]}
    assert prediction_sets(p.numpy(), -1.0, "lac").sum(1).tolist() == [1, 1, 1]  # the top class is always in the set


def test_the_binomial_quantile_is_scipys():
    from scipy.stats import binom

    from kdstyles.engine.conformal import binomial_quantile

    for n, p, q in [(3, 0.5, 0.8), (3, 0.5, 0.9), (24, 0.9, 0.95), (500, 0.9, 0.95), (1000, 0.8, 0.99), (7, 0.3, 0.5)]:
        assert binomial_quantile(q, n, p) == int(binom.ppf(q, n, p)), (n, p, q)


def test_conformal_sets_hold_their_coverage_on_exchangeable_images():
    """Labels drawn from the probabilities themselves, split in two: the threshold fitted on one
    half gives the target coverage on the other, within sampling error, for every method (APS and
    RAPS randomised, so exactly the target too); at 95% confidence over the validation draw, more
    (by about 1.6 standard errors of a 2,000-image validation split); the plain sets are smallest."""
    from kdstyles.common.sets import METHODS
    from kdstyles.engine.conformal import conformal

    g = torch.Generator().manual_seed(3)
    p = torch.softmax(2 * torch.randn(6000, 6, generator=g), 1)
    y = torch.multinomial(p, 1, generator=g)[:, 0]
    out = conformal({"s": p[:2000]}, y[:2000], {"s": p[2000:]}, y[2000:], 0.9)
    sure = conformal({"s": p[:2000]}, y[:2000], {"s": p[2000:]}, y[2000:], 0.9, confidence=0.95)
    for method in METHODS:
        m = out["methods"][method]["s"]
        lo, hi = m["coverage_ci"]
        assert lo < 0.9 < hi, (method, m)
        assert sure["methods"][method]["s"]["coverage"] > m["coverage"] + 0.005
    assert out["methods"]["lac"]["s"]["set_size"] <= out["methods"]["aps"]["s"]["set_size"]


def test_aurc_and_the_risk_coverage_curve_against_a_hand_computation():
    from kdstyles.common.metrics import aurc, risk_coverage

    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.55, 0.45]])
    y = torch.tensor([0, 0, 1, 1])  # by confidence: right (0.9), wrong (0.8), right (0.6), wrong (0.55)
    assert aurc(p, y) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert [r["risk"] for r in risk_coverage(p, y, points=2)] == [0.5, 0.5]
    assert [r["risk"] for r in risk_coverage(p, y, points=4)] == [0.0, 0.5, pytest.approx(1 / 3), 0.5]


def test_the_ece_change_interval_is_paired_over_test_images():
    from torchmetrics.functional.classification import multiclass_calibration_error

    from kdstyles.common.calibration import ece_change, tempered, top_label_ece

    g = torch.Generator().manual_seed(1)
    p = torch.softmax(3 * torch.randn(800, 4, generator=g), 1)
    y = torch.randint(0, 4, (800,), generator=g)
    assert float(top_label_ece(p, y)) == pytest.approx(float(multiclass_calibration_error(p, y, 4, n_bins=15)),
                                                       abs=1e-6)
    d, lo, hi = ece_change(p, tempered(p, 3.0), y, draws=400)
    assert lo <= d <= hi < 0  # random labels: softer probabilities are clearly better calibrated
    assert ece_change(p, p, y, draws=50) == (0.0, 0.0, 0.0)  # the same probabilities: no change on any draw


def test_results_rows_are_records_their_keeper_reads_and_writes(tmp_path):
    """results.csv is written and read only by ComparisonFolder, a ResultRow per line: numbers
    come back as numbers, empty cells as absent, an older file without the split column as the
    test split's, and a cell of the wrong kind is one line naming the file, line and column."""
    from kdstyles.store.runfolder import ComparisonFolder, ResultRow

    folder = ComparisonFolder(tmp_path)
    run = str(tmp_path / "kd-seed1")
    folder.write_results([ResultRow(preset="kd", seed=1, network="s1", checkpoint="best", run_dir=run,
                                    accuracy=0.75, ece=0.125, temperature=None, not_a_column=3),
                          ResultRow(preset="kd", seed=1, network="s1", checkpoint="best", split="site2",
                                    run_dir=run, accuracy=0.5)])
    lines = folder.results_path.read_text().splitlines()
    assert lines[0].split(",") == list(ResultRow.columns()) and len(lines) == 3
    back = folder.results()
    assert back[0].values() == {"preset": "kd", "seed": 1, "network": "s1", "checkpoint": "best", "split": "test",
                                "run_dir": run, "accuracy": 0.75, "ece": 0.125}
    assert [r.metrics for r in folder.results("site2")] == [{"accuracy": 0.5}]
    folder.results_path.write_text(f"preset,seed,network,checkpoint,accuracy,run_dir\nkd,1,s1,best,1,{run}\n")
    older = folder.results()
    assert older[0].split == "test" and older[0].metrics == {"accuracy": 1} and older[0].seed == 1
    folder.results_path.write_text("preset,seed,network,run_dir\nkd,x,s1,/a/kd-seedx\n")
    with pytest.raises(KDError, match=r"results.csv' is damaged: line 2, column seed: Input should be a valid "
                                      r"integer.*; run the same 'kdstyles compare' command again"):
        folder.results()
