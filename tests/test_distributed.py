import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def launch(out: Path, epochs: int, procs: int, mode: str = "new") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    worker = [str(HERE / "ddp_worker.py"), str(out), str(epochs), mode]
    if procs == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={procs}", *worker]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if TORCHRUN is None:
        pytest.skip("torchrun is not on PATH")
    base = tmp_path_factory.mktemp("ddp")
    launch(base / "one", 2, 1)
    launch(base / "two", 2, 2)
    return base


def test_two_processes_match_one_process(runs):
    one = weights(runs / "one" / "weights-rank0.pt")
    r0 = weights(runs / "two" / "weights-rank0.pt")
    r1 = weights(runs / "two" / "weights-rank1.pt")
    assert one.keys() == r0.keys()
    for k in r0:  # ranks agree exactly
        assert torch.equal(r0[k], r1[k]), k
    for k in one:  # same global batches and seed: same weights up to float summation order
        torch.testing.assert_close(r0[k], one[k], atol=2e-4, rtol=1e-3, msg=k)
    m1 = list(csv.DictReader((runs / "one" / "run" / "metrics.csv").open()))
    m2 = list(csv.DictReader((runs / "two" / "run" / "metrics.csv").open()))
    assert [(r["epoch"], r["network"]) for r in m1] == [(r["epoch"], r["network"]) for r in m2]
    # validation is scored exactly once over the whole split (30 images): the same accuracies, but
    # for an image on the decision boundary that weights equal to float order may put either side
    for a, b in zip(m1, m2):
        assert abs(float(a["val_accuracy"]) - float(b["val_accuracy"])) <= 1 / 30 + 1e-9, a["network"]


def test_only_rank_zero_wrote_files(runs):
    run = runs / "two" / "run"
    assert len(list((run / "tensorboard").glob("events.*"))) == 1
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 * 4  # 2 epochs x (teacher, s1, s2, ensemble), not once per rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-s1.pt", "best-s2.pt", "best-teacher.pt", "last.pt"]
    assert not list(run.rglob("*.tmp"))


def test_resume_under_torchrun(runs):
    out = runs / "resumed"
    launch(out, 2, 2, mode="stop1")
    assert not (out / "weights-rank0.pt").exists()
    assert '"status": "interrupted"' in (out / "run" / "run.json").read_text()
    launch(out, 2, 2, mode="resume")
    full = weights(runs / "two" / "weights-rank0.pt")
    got = weights(out / "weights-rank0.pt")
    for k in full:
        assert torch.equal(full[k], got[k]), k


def test_whole_volume_validation_is_scored_once_under_torchrun(tmp_path):
    """3D segmentation validated volume by volume with sliding windows: with two processes
    each scores its own volumes, and the gathered means equal the one-process run's."""
    if TORCHRUN is None:
        pytest.skip("torchrun is not on PATH")
    launch(tmp_path / "one", 1, 1, mode="volumes")
    launch(tmp_path / "two", 1, 2, mode="volumes")
    m1 = list(csv.DictReader((tmp_path / "one" / "run" / "metrics.csv").open()))
    m2 = list(csv.DictReader((tmp_path / "two" / "run" / "metrics.csv").open()))
    assert [r["network"] for r in m1] == [r["network"] for r in m2] == ["teacher", "s1", "s2", "ensemble"]
    for a, b in zip(m1, m2):  # 5 volumes: 3 on rank 0, 2 on rank 1, one mean
        assert float(a["val_dice"]) == pytest.approx(float(b["val_dice"]), abs=2e-3), a["network"]


def test_more_processes_than_gpus_is_one_line(monkeypatch):
    """torchrun --nproc_per_node=2 on a 1-GPU node: named before any CUDA or NCCL call
    (which would fail with 'invalid device ordinal' or a duplicate-GPU error)."""
    from kdstyles import KDError
    from kdstyles.common import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(KDError, match=r"torchrun started 2 processes on this node but it has 1 GPU\(s\); "
                                      r"NCCL needs one GPU per process: --nproc_per_node=1, or train.device: cpu"):
        distributed.setup("auto")
    assert not torch.distributed.is_initialized()
