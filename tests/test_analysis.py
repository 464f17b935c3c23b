"""What a comparison answers (kdstyles.report.analysis), on comparison folders written here
with per-image results whose answer is known: a teacher clearly ahead of the students
trained alone, one that is not, and an ablation's contributions."""

import json

import numpy as np

from kdstyles.compare import write_results
from kdstyles.report import findings, load_rows, load_study, markdown


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
    write_results(rows, folder / "results.csv")
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
