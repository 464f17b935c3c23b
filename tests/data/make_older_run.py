"""Writes tests/data/older-run: a run folder of an earlier kdstyles release, interrupted after
epoch 1 of 2, for tests/test_engine.py's check that the current release resumes it as that
release would have (run once, with the release named in older-run/RELEASE on PYTHONPATH:

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/data/make_older_run.py <commit>
)."""

import shutil
import sys
import tempfile
from pathlib import Path

from kdstyles import Experiment

# tiny networks on 16 px images; a teacher and two students, features and predictions edges
OVERRIDES = ["routing.preset=diverse", "data.image_size=16", "data.train_samples=32", "data.val_samples=16",
             "data.test_samples=16", "data.batch_size=16", "data.augment.rotate90=true", "train.epochs=2",
             "networks.teacher.widen=0.0625", "networks.students.s1.widen=0.0625",
             "networks.students.s2.widen=0.0625", "output.name=older"]


class StopAfter:
    def __call__(self, trainer, epoch):
        if epoch == 1:
            raise KeyboardInterrupt


def main(release: str) -> None:
    out = Path(__file__).parent / "older-run"
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(None, overrides=[*OVERRIDES, f"output.dir={tmp}"], quiet=True)
        try:
            exp.fit(callbacks=[StopAfter()])
        except KeyboardInterrupt:
            pass
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(exp.run_dir, out, ignore=shutil.ignore_patterns("tensorboard", ".lock", "*.tmp"))
    for best in (out / "checkpoints").glob("best-*.pt"):
        best.unlink()  # last.pt holds everything a resume needs
    (out / "RELEASE").write_text(release + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
