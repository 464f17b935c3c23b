import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


def tiny(tmp_path, *extra: str) -> list[str]:
    """Overrides for a seconds-long experiment: 16 px images, tiny ResNets, few samples."""
    return [
        "data.image_size=16", "data.train_samples=48", "data.val_samples=24", "data.test_samples=24",
        "data.batch_size=16", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
        "networks.students.s2.widen=0.125", "train.epochs=2", f"output.dir={tmp_path}", "output.name=run",
        *extra,
    ]


@pytest.fixture
def tiny_overrides(tmp_path):
    return lambda *extra: tiny(tmp_path, *extra)
