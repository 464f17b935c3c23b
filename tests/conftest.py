import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["KDSTYLES_CACHE"] = tempfile.mkdtemp(prefix="kdstyles-cache-")  # prepared volumes: not in ~/.cache

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny(tmp_path, *extra: str) -> list[str]:
    """Overrides for a seconds-long experiment: 16 px images, tiny ResNets, few samples."""
    return [
        "data.image_size=16", "data.train_samples=48", "data.val_samples=24", "data.test_samples=24",
        "data.batch_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
        "networks.students.s2.widen=0.125", "train.epochs=2", f"output.dir={tmp_path}", "output.name=run",
        *extra,
    ]


# Segmentation with tiny UNets, a small embedded set, and a third student (shared by several files).
SEG = ["task=segmentation", "networks.teacher.arch=unet", "networks.teacher.widen=1",
       "networks.students.s1.arch=unet", "networks.students.s1.widen=0.5",
       "networks.students.s2.arch=unet", "networks.students.s2.widen=0.5", "data.image_size=32"]
DATA = ["data.train_samples=32", "data.val_samples=8", "data.test_samples=8", "data.batch_size=8"]
THREE = ["networks.students.s3.arch=resnet10", "networks.students.s3.widen=0.125"]


SMALL = ["data.image_size=16", "data.train_samples=48", "data.val_samples=24", "data.test_samples=24",
         "data.batch_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
         "networks.students.s2.widen=0.125", "train.epochs=1"]  # a quick comparison


def assert_gradient_isolation(cohort, losses) -> dict:
    """Backward each network's loss alone: it must reach only that network's own parameters
    (and its adapters), and some of them. Returns each network's gradients by parameter id."""
    own = {n: {id(p) for p in cohort.parameters_of(n)} for n in cohort.trainable}
    grads = {}
    for name, nl in losses.items():
        cohort.zero_grad(set_to_none=True)
        nl.total.backward(retain_graph=True)
        for p in cohort.parameters():
            if id(p) not in own[name]:
                assert p.grad is None or not p.grad.any(), f"{name}'s loss reached a parameter it does not own"
        assert any(p.grad is not None and p.grad.any() for p in cohort.networks[name].parameters())
        for key, adapter in cohort.adapters.items():  # an adapter: gradient from its receiver's loss only
            receiver = key.split("__")[1]
            if not list(adapter.parameters()):  # resize only (same channels): nothing to train
                continue
            assert any(p.grad is not None and p.grad.any() for p in adapter.parameters()) == (receiver == name)
        grads[name] = {id(p): p.grad.clone() for p in cohort.parameters() if p.grad is not None}
    return grads


@pytest.fixture
def kept_registries():
    """What a test registers (styles, tasks, sources, networks, imported plugins) is undone
    after it, so that no other test sees it."""
    from kdstyles import plugins
    from kdstyles.data.sources import SOURCES
    from kdstyles.common.metrics import REPORTS_AS
    from kdstyles.models.zoo import ARCHS
    from kdstyles.styles import STYLES
    from kdstyles.tasks import TASKS

    registries = (STYLES, TASKS, SOURCES, ARCHS, REPORTS_AS, plugins._LOADED)
    kept = [dict(r) for r in registries]
    yield
    for registry, before in zip(registries, kept):
        registry.clear()
        registry.update(before)


@pytest.fixture
def cli(monkeypatch, capsys):
    """The command line in this process (``cli("evaluate", run)``): its exit code, standard
    output and error. A test that needs what only a new process shows (its import, signals,
    one line on stderr from start to end) runs ``python -m kdstyles`` once instead."""
    def run(*args) -> tuple[int, str, str]:
        from kdstyles.cli import main

        capsys.readouterr()
        monkeypatch.setattr("sys.argv", ["kdstyles", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def own_store(tmp_path, monkeypatch):
    """A store of frozen teachers' outputs of this test's own (kdstyles.store.outputs): a test that
    counts a teacher's forwards must not find outputs another test's identical teacher left."""
    from kdstyles.store import outputs

    folder = tmp_path / "teacher-outputs"
    monkeypatch.setattr(outputs, "folder", lambda: folder)
    return folder


@pytest.fixture
def tiny_overrides(tmp_path):
    return lambda *extra: tiny(tmp_path, *extra)


@pytest.fixture(scope="session")
def comparison(tmp_path_factory):
    """kd and diverse over 2 seeds, run once for the compare and report tests."""
    from kdstyles.workflows.compare import compare

    out = tmp_path_factory.mktemp("cmp") / "kd-vs-diverse"
    lines = []
    summary = compare(None, ["kd", "diverse"], 2, out, SMALL, quiet=True, echo=lines.append)
    return out, summary, lines


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_same_detections(a: list, b: list, coord_tol: float = 0.2, score_tol: float = 1e-3) -> None:
    """Two lists of written boxes ``[corners..., score, class]`` (predict's ``detections``) as
    sets, not sequences: runtimes that sum in another order change scores in the fifth
    decimal, which may reorder near-equal boxes. Each box pairs one to one with a box of the
    other list of its class, its score within ``score_tol`` and its corners within
    ``coord_tol``; a box without a partner is allowed only within ``score_tol`` of its list's
    lowest score (where the list is cut: the written minimum score, or max_detections)."""
    left = sorted(a, key=lambda d: -d[-2])
    free = list(b)
    unmatched = []
    for box in left:
        near = [d for d in free if d[-1] == box[-1] and abs(d[-2] - box[-2]) <= score_tol
                and max(abs(u - v) for u, v in zip(d[:-2], box[:-2])) <= coord_tol]
        if near:
            free.remove(min(near, key=lambda d: abs(d[-2] - box[-2])))
        else:
            unmatched.append((box, a))
    unmatched += [(box, b) for box in free]
    for box, among in unmatched:
        assert box[-2] <= min(d[-2] for d in among) + score_tol, f"{box} has no partner in the other list"


def assert_same_prediction_rows(a: list[dict], b: list[dict], tol: float = 1e-4) -> None:
    """Two predictions.csv files of a classifier (``csv.DictReader`` rows) from different
    runtimes or batch sizes: the same paths and columns, every probability within ``tol``
    (the last digit written may round either way), and the same predicted class unless the
    two best classes are within ``tol`` of each other (a tie that float order may break)."""
    assert [r["path"] for r in a] == [r["path"] for r in b] and a and list(a[0]) == list(b[0])
    columns = [c for c in a[0] if c.startswith("p_")]
    for ra, rb in zip(a, b):
        pa, pb = ([float(r[c]) for c in columns] for r in (ra, rb))
        assert max(abs(x - y) for x, y in zip(pa, pb)) <= tol, (ra, rb)
        top = sorted(pa, reverse=True)
        assert ra["prediction"] == rb["prediction"] or top[0] - top[1] <= 2 * tol, (ra, rb)


def assert_same_label_rows(a: list[list[str]], b: list[list[str]], tol: float = 1e-4) -> None:
    """Two multi-label predictions.csv files (``csv.reader`` rows without the header: path, labels
    joined by '|', a probability per class) from different runtimes: every probability within
    ``tol``, and the same labels but for a probability within ``tol`` of the 0.5 cut."""
    assert len(a) == len(b) and a
    for ra, rb in zip(a, b):
        pa, pb = np.array(ra[2:], float), np.array(rb[2:], float)
        assert ra[0] == rb[0] and np.abs(pa - pb).max() <= tol, (ra, rb)
        near = np.abs(pa - 0.5) <= tol
        assert ra[1] == rb[1] or near.any(), (ra, rb)


def write_npz(path, n=(40, 10, 10), size=28, channels=3, classes=9, multilabel=False, drop=None, seed=0):
    """A MedMNIST-format npz file of random images (train, val, test: ``n`` each); returns its arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        shape = (count, size, size, channels) if channels == 3 else (count, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = rng.integers(0, 2, (count, 14)) if multilabel else (np.arange(count) % classes)[:, None]
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    if drop:
        arrays.pop(drop)
    np.savez_compressed(path, **arrays)
    return arrays


def assert_same_run(a_dir, b_dir):
    """Two run folders ended with identical weights, optimizer states and metrics."""
    import torch

    from kdstyles.store import checkpoints

    a = checkpoints.load(a_dir / "checkpoints" / "last.pt")
    b = checkpoints.load(b_dir / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"] == 0
    for key, value in a["cohort"].items():
        assert torch.equal(value, b["cohort"][key]), key
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    assert (a_dir / "metrics.csv").read_text() == (b_dir / "metrics.csv").read_text()


def run_bundle(folder, inputs, out):
    """A MONAI Bundle's inference run by MONAI's own runner (``monai.bundle.run``, what
    ``python -m monai.bundle run`` calls), as its docs/README.md says to run it; returns ``out``."""
    from monai.bundle import run

    run(config_file=str(folder / "configs" / "inference.json"), meta_file=str(folder / "configs" / "metadata.json"),
        logging_file=False, bundle_root=str(folder), dataset_dir=str(inputs), output_dir=str(out))
    return out


def bundle_probabilities(out) -> dict[str, list[float]]:
    """A bundle's predictions.csv (MONAI's ClassificationSaver: the file, then a value per class) by file name."""
    import csv
    from pathlib import Path

    with open(out / "predictions.csv", newline="") as f:
        return {Path(row[0]).name: [float(v) for v in row[1:]] for row in csv.reader(f)}


def resume(run_dir, cli=None) -> None:
    """``kdstyles train --resume RUN --quiet --no-evaluate``: in a new process (what a user's
    second command is: nothing of the interrupted one left in memory), or, given the ``cli``
    fixture, in this one (the same command, without a second start-up; the parametrised
    variants of a test use it once one of them has checked the new process)."""
    import subprocess
    import sys

    args = ["train", "--resume", str(run_dir), "--quiet", "--no-evaluate"]
    if cli is not None:
        code, _, err = cli(*args)
        assert code == 0, err
        return
    proc = subprocess.run([sys.executable, "-m", "kdstyles", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
