"""What an epoch of distillation with an unlabelled archive costs (a measurement, not a test).

    .venv/bin/python benchmarks/epoch.py [--epochs 6] [--variants fresh,views8] [--out DIR]

The setting of the real-image study at the embedded data's expense (no download): 3,000
labelled and 3,000 unlabelled 32 px images an epoch, two ResNet10x0.25 students learning a
frozen ResNet18x0.5 teacher's predictions (``kd``), flips and shifts, batches of 32 + 32.
Variants:

    fresh     a new augmented view of every image each epoch (the teacher runs on every step)
    views8    8 fixed views per image (data.views: 8) and the teacher's outputs kept per view
              (networks.teacher.cache): after 8 epochs the teacher no longer runs (the 3,000
              unlabelled images are one pass an epoch)
    mix       fresh views, mixup/CutMix on (the teacher runs on every step)

Each variant trains ``--epochs`` epochs and prints the mean epoch time over its epochs after the
first (views8: after the first 8, once every view was seen) from times.csv, with the share
spent waiting for data and validating. To measure another version of kdstyles (the one before
a change) run the same script with ``PYTHONPATH=that/checkout/src``: variants it does not know
fail alone. Writes JSON to benchmarks/results/epoch.json. One measurement at a time: two torch
processes on 2 cores run several times slower than one after the other.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

SETTING = ["data.image_size=32", "data.train_samples=3000", "data.val_samples=1000", "data.test_samples=500",
           "data.augment.vflip=false", "data.augment.shift=0.1", "data.batch_size=32",
           "networks.teacher.arch=resnet18", "networks.teacher.widen=0.5"]
VARIANTS = {
    "fresh": ["data.unlabeled.source=synthetic", "data.unlabeled.samples=3000"],
    "views8": ["data.unlabeled.source=synthetic", "data.unlabeled.samples=3000", "data.views=8",
               "networks.teacher.cache=true"],
    "mix": ["data.unlabeled.source=synthetic", "data.unlabeled.samples=3000", "data.mix.mixup=0.8",
            "data.mix.cutmix=1.0"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--variants", default="fresh,views8")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kdstyles-epoch-bench"))
    ap.add_argument("--json", default="benchmarks/results/epoch.json")
    args = ap.parse_args()
    import kdstyles
    from kdstyles import Experiment

    teacher = args.out / "teacher"
    if not (teacher / "checkpoints" / "best-teacher.pt").is_file():
        Experiment(None, overrides=[*SETTING, "routing.preset=teacher", "train.epochs=1", f"output.dir={args.out}",
                                    "output.name=teacher"], quiet=True).fit()
    results = {}
    for name in args.variants.split(","):
        run = args.out / f"{name}-{int(time.time())}"
        overrides = [*SETTING, *VARIANTS[name], "routing.preset=kd", "networks.teacher.mode=offline",
                     f"networks.teacher.checkpoint={teacher}", f"train.epochs={args.epochs}",
                     "train.early_stopping=null", f"output.dir={args.out}", f"output.name={run.name}"]
        try:
            Experiment(None, overrides=overrides, quiet=True).fit()
        except Exception as exc:  # an older kdstyles without this variant's keys
            print(f"{name}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        with (run / "times.csv").open() as f:
            rows = list(csv.DictReader(f))
        skip = 8 if name.startswith("views") else 1
        steady = rows[skip:] or rows[-1:]
        mean = {k: statistics.fmean(float(r[k]) for r in steady) for k in ("epoch_s", "data_wait_s", "val_s")}
        results[name] = {"first_epoch_s": float(rows[0]["epoch_s"]), **{f"steady_{k}": v for k, v in mean.items()},
                         "epochs_measured": len(steady)}
        print(f"{name}: epoch {mean['epoch_s']:.2f} s (data wait {mean['data_wait_s']:.2f} s, validation "
              f"{mean['val_s']:.2f} s) over {len(steady)} epoch(s); first epoch {float(rows[0]['epoch_s']):.2f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"kdstyles": kdstyles.__version__, "epochs": args.epochs,
                                           "results": results}, indent=1))


if __name__ == "__main__":
    main()
