import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest

from conftest import SMALL
from kdstyles.workflows.compare import compare
from kdstyles.report import load_rows, load_study, markdown, render, table_data


def test_compare_results_rows_and_table(comparison):
    out, summary, lines = comparison
    assert summary["failed"] == [] and summary["runs"] == 4
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 * 2 * 4
    assert {(r["preset"], r["seed"], r["network"]) for r in rows} == {
        (p, str(s), n) for p in ("kd", "diverse") for s in (0, 1) for n in ("teacher", "s1", "s2", "ensemble")}
    assert all(r["checkpoint"] == "best" and r["split"] == "test" for r in rows)
    for p in ("kd", "diverse"):
        for s in (0, 1):
            assert (out / f"{p}-seed{s}" / "eval.json").is_file()
    from kdstyles import Experiment, KDError  # a comparison folder given where a run folder goes says what it holds
    with pytest.raises(KDError, match=r"is not a run folder: config.yaml is missing; it holds run folders \(diverse-"
                                      r"seed0, diverse-seed1, kd-seed0, \.\.\.\): give one of them, or see them all "
                                      r"with 'kdstyles report "):
        Experiment.from_run(out)

    # the table's mean ± std, by hand from results.csv
    header, body, best = table_data(load_rows(out), "ensemble")
    acc = [float(r["accuracy"]) for r in rows if r["preset"] == "diverse" and r["network"] == "ensemble"]
    line = next(b for b in body if b[0] == "diverse")
    assert line[1] == f"{statistics.fmean(acc):.3f} ± {statistics.stdev(acc):.3f}"
    teacher = [float(r["accuracy"]) for r in rows if r["preset"] == "kd" and r["network"] == "teacher"]
    assert body[0][0] == "teacher (reference)"
    assert body[0][1] == f"{statistics.fmean(teacher):.3f} ± {statistics.stdev(teacher):.3f}"
    text = markdown(load_rows(out))
    assert "### ensemble" in text and "| diverse |" in text
    # compare measured the networks once for the report, which only reads the file
    comp = json.loads((out / "compression.json").read_text())
    assert {c["network"] for c in comp} == {"teacher", "s1", "s2"} and all(c["latency_b1_ms"] > 0 for c in comp)
    assert "Compression (CPU)" in render(out).read_text()
    d = {r["seed"]: float(r["accuracy"]) for r in rows if r["preset"] == "diverse" and r["network"] == "s2"}
    k = {r["seed"]: float(r["accuracy"]) for r in rows if r["preset"] == "kd" and r["network"] == "s2"}
    diff = statistics.fmean(d[s] - k[s] for s in d)
    assert f"| kd | s2 | {100 * diff:+.1f} pt" in text  # without the comparison folder: no per-image interval
    study = load_study(out, load_rows(out))
    assert f"| kd | s2 | {100 * diff:+.1f} pt [" in markdown(load_rows(out), study)
    # every network's per-image correctness is in eval.json and averages to its accuracy
    ev = json.loads((out / "diverse-seed0" / "eval.json").read_text())
    for net, metrics in ev["networks"].items():
        assert statistics.fmean(ev["per_image"][net]["accuracy"]) == pytest.approx(metrics["accuracy"])


def test_rerun_skips_finished_runs(comparison):
    out, _, _ = comparison
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/last.pt")}
    lines = []
    compare(None, ["kd", "diverse"], 2, out, SMALL, quiet=True, echo=lines.append)
    assert sum("skipped (finished)" in ln for ln in lines) == 4
    assert stamp == {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/last.pt")}


def test_killed_compare_resumes_and_completes(tmp_path):
    out = tmp_path / "cmp"
    args = [sys.executable, "-m", "kdstyles", "compare", "--presets", "dml,kd", "--seeds", "1", "--out", str(out),
            "--quiet", *[a for o in SMALL for a in ("--set", o)], "--set", "train.epochs=8"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "dml-seed0" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not first.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # killed mid-run: epoch 1 of 8 written
    proc.wait()
    assert first.is_file()
    status = json.loads((out / "dml-seed0" / "run.json").read_text())["status"]
    assert status == "running"
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "resumed: " in done.stdout and str(out / "dml-seed0") in done.stdout.replace("\n", "")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["preset"] for r in rows} == {"dml", "kd"}
    metrics = list(csv.DictReader((out / "dml-seed0" / "metrics.csv").open()))
    assert sorted({int(r["epoch"]) for r in metrics}) == list(range(1, 9))
    assert (out / "report.html").is_file()


def test_bad_presets_fail_before_any_run(tmp_path):
    from kdstyles import KDError

    with pytest.raises(KDError, match="--presets: 'dkdx' is not a preset"):
        compare(None, ["kd", "dkdx"], 1, tmp_path / "c", SMALL)
    with pytest.raises(KDError, match="--presets: 'teacher' trains the teacher alone and has no students to compare"):
        compare(None, ["student", "teacher"], 1, tmp_path / "c", SMALL, teacher="shared")
    assert not (tmp_path / "c").exists()




def test_bad_teacher_and_ablation_options_fail_before_any_run(tmp_path):
    from kdstyles import KDError

    with pytest.raises(KDError, match="--teacher 'frozen' is not known; allowed: online, shared"):
        compare(None, ["kd"], 1, tmp_path / "c", SMALL, teacher="frozen")
    with pytest.raises(KDError, match="--teacher-set applies to the shared teacher; add --teacher shared"):
        compare(None, ["kd"], 1, tmp_path / "c", SMALL, teacher_overrides=["train.epochs=3"])
    with pytest.raises(KDError, match="train.epochs"):
        compare(None, ["kd"], 1, tmp_path / "c", SMALL, teacher="shared", teacher_overrides=["train.epochs=0"])
    one_edge = [*SMALL, "routing.edges=[{src: teacher, dst: s1, style: predictions}]"]
    with pytest.raises(KDError, match="--ablate: the routing 'custom' has 1 edge"):
        compare(None, ["student"], 1, tmp_path / "c", one_edge, ablate=True)
    assert not (tmp_path / "c").exists()


def test_ablation_plan_drops_each_edge_and_keeps_options():
    from pathlib import Path

    from kdstyles.workflows.compare import plan
    from kdstyles.config import load_config

    base = ["routing.preset=ctsl-mkt", "networks.students.s3.arch=resnet10"]
    _, specs, info = plan(None, ["student"], 1, Path("/tmp/x"), base, ablate=True)
    names = list(dict.fromkeys(s.preset for s in specs))
    full = load_config(None, base).edges
    assert names[0] == "ctsl-mkt" and names[-1] == "student" and info["target"] == "ctsl-mkt"
    assert len(names) == 1 + len(full) + 1  # every edge dropped once (no teacher edges: no "only" variants)
    for spec in specs[1:-1]:
        edges = spec.cfg.edges  # set on the config as objects, not as YAML text
        assert "routing.edges" not in dict(spec.changes)
        assert len(edges) == len(full) - 1
        assert all(e in full for e in edges)  # weights and the preset's options (temperature 3) kept
        [gone] = [e for e in full if e not in edges]
        assert info["ablation"]["removed"][spec.preset] == [str(gone)]
    # a config routing by edges: its own routing ablated ('custom'), presets run beside it; a variant
    # equal to another (teacher edges only = without the peer edge) is run once
    edges = ["routing.edges=[{src: teacher, dst: s1, style: predictions}, {src: s1, dst: s2, style: predictions}]"]
    _, specs, info = plan(None, ["student", "kd"], 1, Path("/tmp/x"), edges, ablate=True)
    assert [s.preset for s in specs] == ["custom", "without-teacher-s1-predictions", "without-s1-s2-predictions",
                                         "student", "kd"]
    assert [str(e) for e in specs[-1].cfg.edges] == [
        "teacher -> s1 predictions (w=0.2)", "teacher -> s2 predictions (w=0.2)"]


SITE2 = "data.external=[{name: site2, source: synthetic, samples: 24}]"


def test_shared_teacher_trains_once_and_answers(tmp_path, cli):
    """Also: every run is calibrated and scored on an external set (the embedded second site),
    whose rows, tables, gap closure and change from the test split the results and report carry."""
    out = tmp_path / "shared"
    lines = []
    summary = compare(None, ["student"], 1, out, [*SMALL, "routing.preset=kd", SITE2], quiet=True,
                      echo=lines.append, teacher="shared", teacher_overrides=["train.epochs=2"], ablate=True)
    assert summary["failed"] == [] and summary["runs"] == 1 + 4  # the teacher, kd, kd without each edge, student
    teacher_run = out / "teacher-seed0"
    assert len(list(csv.DictReader((teacher_run / "metrics.csv").open()))) == 2  # its own 2 epochs, the teacher alone
    everything = list(csv.DictReader((out / "results.csv").open()))
    rows = [r for r in everything if r["split"] == "test"]
    assert [r["split"] for r in everything] == ["test"] * len(rows) + ["site2"] * len(rows)  # each run on both
    assert all(0 <= float(r["coverage"]) <= 1 and float(r["set_size"]) >= 1 and float(r["temperature"]) > 0
               for r in everything)  # calibrated and with prediction sets, on both sets
    assert "teacher" not in {r["preset"] for r in rows}  # the teacher's run is not a compared variant
    teacher_rows = {r["preset"]: r["accuracy"] for r in rows if r["network"] == "teacher"}
    assert set(teacher_rows) == {"kd", "without-teacher-s1-predictions", "without-teacher-s2-predictions"}
    assert len(set(teacher_rows.values())) == 1  # one frozen teacher, the same for every variant
    import yaml

    cfg = yaml.safe_load((out / "kd-seed0" / "config.yaml").read_text())
    assert cfg["networks"]["teacher"]["mode"] == "offline"
    assert cfg["networks"]["teacher"]["checkpoint"] == str(teacher_run) and cfg["train"]["epochs"] == 1
    manifest = json.loads((out / "comparison.json").read_text())
    assert manifest["teacher"] == {"mode": "shared", "runs": {"0": str(teacher_run)}, "overrides": ["train.epochs=2"]}
    text = markdown(load_rows(out), load_study(out, load_rows(out)))
    assert "### Teacher minus the students trained alone" in text
    assert "### Ablation: what each edge contributes (kd minus the variant without it)" in text
    assert "| teacher -> s1 predictions (w=0.2) | s1 |" in text
    assert "without-teacher" not in text.split("### kd against each baseline")[1].split("### Ablation")[0]
    assert "What the comparison shows" in render(out).read_text()
    from kdstyles.report.trust import deploy_table, external_studies

    externals = external_studies(out)
    assert list(externals) == ["site2"] and externals["site2"].split == "site2"
    ext_rows = load_rows(out, "site2")
    assert {r["split"] for r in ext_rows} == {"site2"} and len(ext_rows) == len(rows)
    text = markdown(load_rows(out), load_study(out, load_rows(out)), externals)
    assert "## External set 'site2' (24 images from synthetic site 2)" in text
    assert "### Before you deploy" in text and "| site2: accuracy (change [95% CI]) |" in text
    header, body = deploy_table(load_study(out, load_rows(out)), externals)
    kd_s1 = next(line for line in body if line[:2] == ["kd", "s1"])
    ext = next(r for r in ext_rows if (r["preset"], r["network"]) == ("kd", "s1"))
    test = next(r for r in rows if (r["preset"], r["network"]) == ("kd", "s1"))
    drop = 100 * (float(ext["accuracy"]) - float(test["accuracy"]))
    assert kd_s1[header.index("site2: accuracy (change [95% CI])")].startswith(f"{ext['accuracy']:.3f} ({drop:+.1f} pt [")
    page = render(out).read_text()
    assert "<h2>Before you deploy</h2>" in page and "<h2>External set 'site2' (24 images" in page
    code, printed, err = cli("evaluate", out / "kd-seed0", "--split", "site2", "--calibrated")
    assert code == 0, err
    assert "prediction sets for 90% coverage" in printed
    again = json.loads((out / "kd-seed0" / "eval-site2.json").read_text())
    assert again["about"] == "24 images from synthetic site 2"  # evaluated again, the same numbers
    assert again["networks"]["s1"]["accuracy"] == float(ext["accuracy"])
    from kdstyles.deploy.export import export_run

    export_run(out / "kd-seed0", "s1", "torchscript")
    card = (out / "kd-seed0" / "export" / "s1.md").read_text()
    assert f"| site2 | 24 images from synthetic site 2 | accuracy {float(ext['accuracy']):.4f};" in card
    code, printed, err = cli("evaluate", out / "kd-seed0", "--split", "site3")
    assert code != 0 and "split 'site3' is not known; allowed: train, val, test, site2" in err


def test_a_one_student_config_compares_the_presets_that_fit_it(tmp_path):
    """Its default preset (diverse) needs two students, but a comparison of student and kd does
    not run it; a preset that needs two is refused before any run."""
    from kdstyles import KDError
    from kdstyles.workflows.compare import plan

    cfg = tmp_path / "one.yaml"
    cfg.write_text("networks:\n  students:\n    s1: {arch: resnet10, widen: 0.25}\n")
    _, specs, _ = plan(str(cfg), ["student", "kd"], 1, tmp_path / "c", [])
    assert [s.preset for s in specs] == ["student", "kd"]
    with pytest.raises(KDError, match="routing.preset 'dml': its s1 -> s2 predictions edge joins two students"):
        plan(str(cfg), ["student", "dml"], 1, tmp_path / "c", [])
    with pytest.raises(KDError, match="routing.preset 'diverse'"):  # --ablate works on the config's own routing
        plan(str(cfg), ["student"], 1, tmp_path / "c", [], ablate=True)


def test_recipes_set_more_than_edges_and_are_checked_before_any_run(tmp_path):
    """--recipes: each a preset and the keys it sets, beside --presets, in one comparison."""
    from kdstyles import KDError
    from kdstyles.workflows.compare import plan

    recipes = tmp_path / "recipes.yaml"
    recipes.write_text("kd-t4: {preset: kd, set: {styles.predictions.temperature: 4, train.epochs: 2}}\n"
                       "mine: {preset: custom, note: the config's own}\nalone: student\n")
    _, specs, info = plan(None, ["student"], 1, tmp_path / "c", SMALL, recipes=recipes)
    by = {s.preset: s.cfg for s in specs}
    assert list(by) == ["student", "kd-t4", "mine", "alone"]
    assert by["kd-t4"].routing.preset == "kd" and by["kd-t4"].train.epochs == 2
    assert by["kd-t4"].styles["predictions"]["temperature"] == 4 and by["student"].train.epochs == 1
    assert by["alone"].edges == [] and by["mine"].routing.label == "diverse"
    assert info["target"] == "kd-t4" and info["notes"] == {"mine": "the config's own"}
    for text, message in (("kd: {preset: kdd}", "recipe 'kd': 'kdd' is not a preset"),
                          ("x: {preset: kd, sett: {}}", "recipe 'x': unknown key 'sett'"),
                          ("x: {preset: kd, set: {optim.lr: -1}}", "optim.lr"),
                          ("'a/b': kd", "recipe name 'a/b' must be a plain name"),
                          ("student: kd", "'student' is named twice")):
        recipes.write_text(text + "\n")
        with pytest.raises(KDError, match=message):
            compare(None, ["student"], 1, tmp_path / "c", SMALL, recipes=recipes)
    assert not (tmp_path / "c").exists()


def test_a_budget_narrows_the_recipes_by_successive_halving_on_validation(tmp_path):
    """--budget too small for every run: the students trained alone run in full, the three
    candidates are halved on the first seed by their validation value (1 epoch of 4, then 2), the
    losers stay paused (resumable, not in results.csv), and the one finalist runs in full."""
    import json

    from kdstyles.workflows.compare import parse_budget
    from kdstyles.store.runfolder import RunFolder

    lines = []
    summary = compare(None, ["student", "kd", "dml", "fitnet"], 1, tmp_path / "c",
                      [*SMALL, "train.epochs=4", "train.early_stopping=null"], quiet=True, echo=lines.append,
                      budget=1.0)
    assert summary["failed"] == []
    halving = json.loads((tmp_path / "c" / "comparison.json").read_text())["halving"]
    assert [r["share"] for r in halving["rungs"]] == [0.25, 0.5]
    assert [len(r["kept"]) for r in halving["rungs"]] == [2, 1] and halving["finalists"] == halving["rungs"][1]["kept"]
    first, second = halving["rungs"]
    assert set(first["kept"]) >= set(second["kept"]) and max(first["values"].values()) == max(
        first["values"][k] for k in first["kept"])
    finalist = halving["finalists"][0]
    rows = list(csv.DictReader((tmp_path / "c" / "results.csv").open()))
    assert {r["preset"] for r in rows} == {"student", finalist}
    for name in {"kd", "dml", "fitnet"} - {finalist}:
        run = RunFolder(tmp_path / "c" / f"{name}-seed0")
        assert run.status() == "paused" and not run.eval_path.is_file()
    done = RunFolder(tmp_path / "c" / f"{finalist}-seed0").info()
    assert done.status == "finished" and done.epochs_done == 4 and len(done.resumes) == 2
    assert any("rung 1" in line for line in lines) and any("kept" in line for line in lines)
    assert parse_budget("1h30m") == 5400 and parse_budget("90m") == 5400 and parse_budget("45") == 45
    from kdstyles import KDError

    for bad in ("soon", "", "h"):
        with pytest.raises(KDError, match="--budget"):
            parse_budget(bad)
    with pytest.raises(KDError, match="leave out --launcher and --jobs"):
        compare(None, ["student"], 1, tmp_path / "d", SMALL, jobs=2, budget=60)


def test_variants_are_typed_changes_applied_in_order_never_text(tmp_path):
    """A recipe's keys reach each run's config as the values its YAML gave (applied in order, a
    section then a key inside it), shared by no two runs; comparison.json records them as values."""
    from kdstyles.workflows.compare import plan

    recipes = {"more": {"preset": "kd", "set": {"data.unlabeled": {"source": "synthetic", "samples": 8},
                                                 "data.unlabeled.samples": 6, "styles.predictions.temperature": 4}}}
    _, specs, _ = plan(None, ["student"], 2, tmp_path / "c", ["train.epochs=1"], recipes=recipes)
    runs = [s for s in specs if s.preset == "more"]
    assert [s.cfg.data.unlabeled.samples for s in runs] == [6, 6] and [s.seed for s in runs] == [0, 1]
    assert recipes["more"]["set"]["data.unlabeled"]["samples"] == 8  # the recipe itself untouched
    record = runs[1].record()["changes"]
    assert record["train.seed"] == 1 and record["styles.predictions.temperature"] == 4
    assert record["routing.preset"] == "kd" and record["train.epochs"] == 1
