"""What a comparison answers (kdstyles.report.analysis), on comparison folders written here
with per-image results whose answer is known: a teacher clearly ahead of the students
trained alone, one that is not, and an ablation's contributions."""

import json

import numpy as np
import pytest

from kdstyles.store.runfolder import ComparisonFolder, ResultRow
from kdstyles.report import analysis, findings, load_rows, load_study, markdown


def fake_comparison(folder, correct: dict[tuple[str, str], list[np.ndarray]], manifest=None, metric="accuracy"):
    """results.csv and eval.json files for ``correct[(preset, network)][seed]`` (per-image values
    of ``metric``)."""
    rows = []
    for (preset, network), per_seed in correct.items():
        for seed, c in enumerate(per_seed):
            run = folder / f"{preset}-seed{seed}"
            run.mkdir(parents=True, exist_ok=True)
            path = run / "eval.json"
            ev = json.loads(path.read_text()) if path.is_file() else {"networks": {}, "per_image": {}}
            ev["networks"][network] = {metric: float(np.mean(c))}
            ev["per_image"][network] = {metric: [float(v) for v in c]}
            path.write_text(json.dumps(ev))
            rows.append({"preset": preset, "seed": seed, "network": network, "checkpoint": "best", "split": "test",
                         metric: float(np.mean(c)), "run_dir": str(run)})
    ComparisonFolder(folder).write_results([ResultRow(**r) for r in rows])
    if manifest:
        (folder / "comparison.json").write_text(json.dumps(manifest))
    return load_study(folder, load_rows(folder))


def ones(n, wrong, seed):
    c = np.ones(n, dtype=int)
    c[np.random.default_rng(seed).choice(n, wrong, replace=False)] = 0
    return c


def test_a_clear_teacher_is_reported_and_a_weak_one_warned_about(tmp_path):
    strong = {("diverse", "teacher"): [ones(200, 10, s) for s in range(3)],
              ("diverse", "s1"): [ones(200, 60, s + 10) for s in range(3)],
              ("student", "s1"): [ones(200, 60, s + 20) for s in range(3)]}
    text = " ".join(findings(fake_comparison(tmp_path / "strong", strong)))
    assert "The teacher leads the students trained alone" in text and "Warning" not in text
    weak = dict(strong)
    weak[("diverse", "teacher")] = [ones(200, 59, s + 30) for s in range(3)]
    lines = findings(fake_comparison(tmp_path / "weak", weak))
    assert lines[0].startswith("Warning: the teacher is not clearly better than the students trained alone")
    assert "--teacher-set train.epochs=N" in lines[0] and "pretrained=imagenet" in lines[0]
    assert any(line.startswith("diverse against students trained alone") for line in lines)


def test_ablation_contributions_and_their_verdicts(tmp_path):
    full = [ones(300, 30, s) for s in range(2)]
    manifest = {"target": "kdml", "ablation": {"full": "kdml", "removed": {
        "kdml": [], "without-a": ["teacher -> s1 predictions (w=0.2)"], "without-b": ["s2 -> s1 predictions (w=0.1)"]}}}
    study = fake_comparison(tmp_path, {("kdml", "s1"): full,
                                       ("without-a", "s1"): [ones(300, 90, s + 5) for s in range(2)],  # much worse
                                       ("without-b", "s1"): [c.copy() for c in full]}, manifest)  # identical
    text = markdown(study.rows, study)
    assert "| teacher -> s1 predictions (w=0.2) | s1 | +20.0 pt [" in text and "| better |" in text
    assert "| s2 -> s1 predictions (w=0.1) | s1 | +0.0 pt [+0.0, +0.0] | not distinguishable |" in text
    assert "against each baseline" not in text  # only ablation variants: nothing else to pair with


def test_segmentation_comparisons_pair_by_dice(tmp_path):
    """results.csv has a column for every metric of every task; the paired analysis takes the
    one this comparison measured (Dice), not an empty accuracy column."""
    rng = np.random.default_rng(0)
    dice = {("diverse", "teacher"): [rng.uniform(0.7, 0.9, 50) for _ in range(2)],
            ("diverse", "s1"): [rng.uniform(0.5, 0.7, 50) for _ in range(2)],
            ("student", "s1"): [rng.uniform(0.5, 0.7, 50) for _ in range(2)]}
    study = fake_comparison(tmp_path, dice, metric="dice")
    assert "accuracy" in (tmp_path / "results.csv").read_text().splitlines()[0]  # the empty column exists
    assert study.metric == "dice"
    assert findings(study)[0].startswith("The teacher leads the students trained alone (Dice")


def fake_detection_comparison(folder, found: dict[tuple[str, str], list[float]], images=60):
    """Detection runs whose networks find each object with probability ``found[(preset,
    network)][seed]`` (and add one false positive per image): eval.json with mAP, and
    outputs.npz with the boxes, which is all a comparison draws images from."""
    from kdstyles.common.boxes import detection_metrics, unpad
    from kdstyles.store.runfolder import RunFolder

    rows = []
    for (preset, network), per_seed in found.items():
        for seed, p in enumerate(per_seed):
            rng = np.random.default_rng(seed)  # the same test images for every run of a seed
            gt = np.full((images, 3, 5), -1.0)
            for i in range(images):
                for j in range(rng.integers(1, 4)):
                    gt[i, j] = [10 * j, 10 * j, 10 * j + 8, 10 * j + 8, 0]
            mine = np.random.default_rng([seed, len(preset), len(network), int(100 * p)])
            dets = np.zeros((images, 4, 6))
            for i in range(images):
                for j, g in enumerate(unpad(gt[i])):
                    if mine.random() < p:
                        dets[i, j] = [*g[:4], mine.uniform(0.3, 1), 0]
                dets[i, 3] = [40, 40, 48, 48, mine.uniform(0.1, 0.6), 0]
            run = RunFolder(folder / f"{preset}-seed{seed}")
            run.path.mkdir(parents=True, exist_ok=True)
            arrays = run.read_outputs() if run.outputs_file().is_file() else {"labels": gt}
            arrays[f"out.{network}"] = dets
            run.write_outputs(arrays)
            m = detection_metrics([unpad(d) for d in dets], [unpad(g) for g in gt], 1)["map"]
            ev = json.loads(run.eval_path.read_text()) if run.eval_path.is_file() else {
                "networks": {}, "per_image": {}, "class_names": ["polyp"]}
            ev["networks"][network] = {"map": m}
            run.eval_path.write_text(json.dumps(ev))
            rows.append({"preset": preset, "seed": seed, "network": network, "checkpoint": "best", "split": "test",
                         "map": m, "run_dir": str(run.path)})
    ComparisonFolder(folder).write_results([ResultRow(**r) for r in rows])
    return load_study(folder, load_rows(folder))


def test_detection_comparisons_draw_test_images_for_paired_intervals(tmp_path):
    """mAP is not a mean over images: the interval comes from drawing each seed's test images
    again (outputs.npz), so a clear difference is 'better' and the same boxes are +0.0."""
    study = fake_detection_comparison(tmp_path / "clear", {
        ("diverse", "teacher"): [0.95, 0.95], ("diverse", "s1"): [0.85, 0.85], ("student", "s1"): [0.5, 0.5]})
    assert study.metric == "map"
    lines = findings(study)
    assert lines[0].startswith("The teacher leads the students trained alone (mAP")
    row = next(r for r in analysis.paired_rows(study) if r["network"] == "s1")
    assert row["verdict"] == "better" and 0 < row["lo"] < row["mean"] < row["hi"]
    fake_detection_comparison(tmp_path / "same", {("diverse", "s1"): [0.7], ("student", "s1"): [0.7]})
    (tmp_path / "same" / "student-seed0" / "outputs.npz").write_bytes(  # the very same boxes
        (tmp_path / "same" / "diverse-seed0" / "outputs.npz").read_bytes())
    (tmp_path / "same" / "student-seed0" / "eval.json").write_text(
        (tmp_path / "same" / "diverse-seed0" / "eval.json").read_text())
    row = analysis.paired_rows(load_study(tmp_path / "same", load_rows(tmp_path / "same")))[0]
    assert (row["mean"], row["lo"], row["hi"], row["verdict"]) == (0, 0, 0, "not distinguishable")
    from kdstyles.store.runfolder import RunFolder

    damaged = RunFolder(tmp_path / "same" / "student-seed0")
    for write in (lambda: damaged.outputs_file().write_bytes(b"not a zip"),
                  lambda: damaged.write_outputs({"labels": np.zeros(3), "out.s1": np.zeros(3)})):  # wrong shapes
        write()  # a damaged file: that run pairs by seed only
        row = analysis.paired_rows(load_study(tmp_path / "same", load_rows(tmp_path / "same")))[0]
        assert np.isnan(row["lo"]) and row["verdict"] == "no per-image results"


def test_gap_closure_is_the_share_of_the_teachers_lead_with_a_paired_interval(tmp_path):
    """Teacher right on 190 of 200 images, students alone on 140: a preset whose student is right
    on 165 (the same images as alone, plus 25 of the teacher's) closes 50% of the lead on every
    seed; the interval holds 50% and is narrower than the lead's noise. A student no better
    than alone closes 0%, and without the independent students there is nothing to close."""
    rng = np.random.default_rng(0)
    correct = {("student", "s1"): [], ("kd", "s1"): [], ("kd", "teacher"): [], ("dkd", "s1"): [],
               ("dkd", "teacher"): []}
    for seed in range(3):
        order = rng.permutation(200)
        alone, teacher, half = (np.zeros(200, int) for _ in range(3))
        alone[order[:140]], teacher[order[:190]], half[order[:165]] = 1, 1, 1
        correct[("student", "s1")].append(alone)
        correct[("kd", "teacher")].append(teacher)
        correct[("dkd", "teacher")].append(teacher.copy())
        correct[("kd", "s1")].append(alone.copy())
        correct[("dkd", "s1")].append(half)
    study = fake_comparison(tmp_path / "cmp", correct, {"target": "dkd"})
    got = {g["preset"]: g for g in analysis.gap_closure(study)}
    assert got["dkd"]["share"] == 0.5 and got["dkd"]["gain"] == 0.125 and got["dkd"]["lead"] == 0.25
    assert got["dkd"]["lo"] <= 0.5 <= got["dkd"]["hi"] and 0.3 < got["dkd"]["lo"] and got["dkd"]["hi"] < 0.7
    assert got["kd"]["share"] == 0 and got["kd"]["lo"] == got["kd"]["hi"] == 0  # same images as alone
    assert got["dkd"]["text"].startswith("50% [")
    text = markdown(study.rows, study)
    assert "Share of the teacher's lead recovered on the test split (accuracy" in text and "dkd s1 50% [" in text
    assert "Most:" not in text  # no choice is made on the test split
    assert "| dkd | s1 | 50% [" in text and "| +12.5 pt | +25.0 pt | 3 |" in text
    correct.pop(("student", "s1"))
    assert analysis.gap_closure(fake_comparison(tmp_path / "none", correct, {"target": "dkd"})) == []


def test_gap_closure_is_not_a_number_without_a_teacher_lead(tmp_path):
    same = [ones(100, 20, s) for s in range(2)]
    study = fake_comparison(tmp_path, {("student", "s1"): same, ("kd", "teacher"): [c.copy() for c in same],
                                       ("kd", "s1"): [ones(100, 10, s + 3) for s in range(2)]})
    (row,) = analysis.gap_closure(study)
    assert np.isnan(row["share"]) and row["text"] == "n/a (no teacher lead)"
    assert "Share of the teacher's lead" not in " ".join(findings(study))


def test_the_winner_is_chosen_on_the_validation_split_and_its_test_numbers_reported_once(tmp_path):
    """The choice reads each run's eval-val.json only: here 'kd' leads on validation and 'fitnet'
    on test, and kd is chosen; how sure is the share of bootstrap draws it stays first."""
    from kdstyles.report.analysis import chosen, winner_text

    n = 400
    correct = {("student", "s1"): [ones(n, 80, s) for s in range(2)], ("kd", "s1"): [ones(n, 60, 10 + s) for s in range(2)],
               ("fitnet", "s1"): [ones(n, 40, 20 + s) for s in range(2)],
               ("kd", "teacher"): [ones(n, 20, 30 + s) for s in range(2)]}
    study = fake_comparison(tmp_path, correct)
    val = {"kd": 30, "fitnet": 70, "student": 90}  # wrong answers on the validation images
    for preset, wrong in val.items():
        for seed in range(2):
            per = [float(v) for v in ones(n, wrong, 40 + seed)]
            (tmp_path / f"{preset}-seed{seed}" / "eval-val.json").write_text(json.dumps(
                {"split": "val", "networks": {"s1": {"accuracy": float(np.mean(per))}},
                 "per_image": {"s1": {"accuracy": per}}}))
    choice = chosen(study)
    assert (choice["preset"], choice["network"]) == ("kd", "s1") and choice["val"] == pytest.approx(1 - 30 / n)
    assert choice["runner_up"]["preset"] == "fitnet" and choice["sure"] > 0.95
    assert choice["test"] == pytest.approx(1 - 60 / n)  # its own test value, though fitnet's is higher
    text = winner_text(choice)
    assert text.startswith("Chosen on the validation split: kd s1") and "reported once: 0.8500" in text
    assert any(line.startswith("Chosen on the validation split") for line in findings(study))
    for seed in range(2):  # no validation results: no choice
        (tmp_path / f"kd-seed{seed}" / "eval-val.json").unlink()
        (tmp_path / f"fitnet-seed{seed}" / "eval-val.json").unlink()
    assert chosen(load_study(tmp_path, load_rows(tmp_path))) is None


def test_students_markedly_worse_calibrated_than_their_teacher_are_named():
    from kdstyles.report.analysis import worse_calibrated

    rows = [{"preset": p, "seed": s, "network": n, "ece": e}
            for p, s, n, e in (("kd", 0, "teacher", 0.01), ("kd", 1, "teacher", 0.01), ("kd", 0, "s1", 0.02),
                               ("kd", 1, "s1", 0.03), ("mix", 0, "s1", 0.08), ("mix", 1, "s1", 0.06),
                               ("mix", 0, "ensemble", float("nan")))]
    assert worse_calibrated(rows) == [{"preset": "mix", "network": "s1", "ece": pytest.approx(0.07),
                                       "teacher": pytest.approx(0.01)}]  # kd's 0.025: under teacher + 2 points
    assert worse_calibrated([r for r in rows if r["network"] != "teacher"]) == []  # no teacher: nothing to say


def test_comparison_json_is_a_record_its_keeper_reads_old_damaged_or_newer(tmp_path):
    """comparison.json is read and written by ComparisonFolder as a Manifest: a file of an earlier
    release (fewer keys) opens with defaults, one of a later release keeps its unknown keys when
    written back, a damaged or missing one reads as empty."""
    from kdstyles.store.runfolder import ComparisonFolder, Manifest

    folder = ComparisonFolder(tmp_path)
    assert folder.manifest() == Manifest()  # missing
    (tmp_path / "comparison.json").write_text(json.dumps({"presets": ["kd"], "seeds": 2, "runs": [{"preset": "kd"}],
                                                          "from_the_future": {"x": 1}}))
    old = folder.manifest()
    assert old.presets == ["kd"] and old.baselines == [] and old.target is None and old.runs == [{"preset": "kd"}]
    folder.write_manifest(old)
    assert json.loads((tmp_path / "comparison.json").read_text())["from_the_future"] == {"x": 1}
    (tmp_path / "comparison.json").write_text('{"presets": ["kd"], "runs": ')  # cut short
    assert folder.manifest() == Manifest()
    (tmp_path / "comparison.json").write_text(json.dumps({"runs": "not a list"}))  # edited by hand
    assert folder.manifest() == Manifest()
