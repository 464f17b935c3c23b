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
from kdstyles.compare import compare
from kdstyles.report import load_rows, markdown, render, table_data


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
    assert f"| kd | s2 | {diff:+.4f} |" in text


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

    with pytest.raises(KDError, match="--presets: 'dkd' is not a preset"):
        compare(None, ["kd", "dkd"], 1, tmp_path / "c", SMALL)
    assert not (tmp_path / "c").exists()


