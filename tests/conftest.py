import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["KDSTYLES_CACHE"] = tempfile.mkdtemp(prefix="kdstyles-cache-")  # prepared volumes: not in ~/.cache

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
def tiny_overrides(tmp_path):
    return lambda *extra: tiny(tmp_path, *extra)


@pytest.fixture(scope="session")
def comparison(tmp_path_factory):
    """kd and diverse over 2 seeds, run once for the compare and report tests."""
    from kdstyles.compare import compare

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
