"""What a foundation-model teacher costs on this machine (a measurement, not a test).

    .venv/bin/python benchmarks/foundation.py [--epochs 3] [--variants fresh,cache,stored] [--out DIR]

A DINOv2-ViT-S/14-sized teacher (384 wide, 12 blocks, 6 heads, 224 px, random weights: speed
only; accuracy needs the real weights, which this machine cannot download) written with
save_pretrained, distilled into two ResNet10x0.25 students on the embedded data (256 training
images of 64 px, 64 for validation, batches of 32), routing ``diverse`` (the teacher's
predictions, and its last block's 384 x 16 x 16 patch map). Every run first fits the probe
(the teacher embeds the 320 training and validation images once, then L-BFGS heads). Variants:

    fresh   flips on: a new view of every image each epoch, so the teacher runs on every step
    cache   flips off and networks.teacher.cache: the teacher runs in the first epoch only, and
            its outputs are stored on disk (kdstyles.store.outputs)
    stored  the same run again: the outputs are read from the store, the teacher runs on one
            training batch only (to check them)

Prints, per variant, the probe's seconds (probe.json), the first epoch and the mean of the later
epochs (times.csv). Writes JSON to benchmarks/results/foundation.json. One measurement at a
time: two torch processes on 2 cores run several times slower than one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

SETTING = ["data.image_size=64", "data.train_samples=256", "data.val_samples=64", "data.test_samples=64",
           "data.batch_size=32", "routing.preset=diverse", "networks.teacher.mode=offline",
           "train.early_stopping=null"]
VARIANTS = {
    "fresh": [],
    "cache": ["data.augment.hflip=false", "data.augment.vflip=false", "networks.teacher.cache=true"],
    "stored": ["data.augment.hflip=false", "data.augment.vflip=false", "networks.teacher.cache=true"],
}


def vit_s14(folder: Path) -> Path:
    import transformers

    if not (folder / "config.json").is_file():
        cfg = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                        mlp_ratio=4, image_size=224, patch_size=14)
        transformers.Dinov2Model(cfg).save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--variants", default="fresh,cache,stored")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kdstyles-foundation-bench"))
    ap.add_argument("--json", default="benchmarks/results/foundation.json")
    args = ap.parse_args()
    os.environ.setdefault("KDSTYLES_CACHE", tempfile.mkdtemp(prefix="kdstyles-foundation-"))  # a store of its own
    import kdstyles
    from kdstyles import Experiment
    from kdstyles.store import fileio

    teacher = vit_s14(args.out / "vit-s14")
    results = {}
    for name in args.variants.split(","):
        run = args.out / f"{name}-{int(time.time())}"
        overrides = [*SETTING, *VARIANTS[name], f"networks.teacher.arch=hf:{teacher}", f"train.epochs={args.epochs}",
                     f"output.dir={args.out}", f"output.name={run.name}"]
        start = time.monotonic()
        Experiment(None, overrides=overrides, quiet=True).fit()
        total = time.monotonic() - start
        rows = fileio.read_csv(run / "times.csv", "")
        probe = json.loads((run / "probe.json").read_text())
        later = [float(r["epoch_s"]) for r in rows[1:]]
        results[name] = {"probe_s": probe["seconds"], "first_epoch_s": float(rows[0]["epoch_s"]),
                         "later_epoch_s": statistics.fmean(later) if later else None, "run_s": round(total, 1)}
        print(f"{name}: probe {probe['seconds']:.1f} s, first epoch {float(rows[0]['epoch_s']):.1f} s, later epochs "
              f"{results[name]['later_epoch_s']:.1f} s, whole run {total:.0f} s", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"kdstyles": kdstyles.__version__, "epochs": args.epochs,
                                           "setting": SETTING, "results": results}, indent=1))


if __name__ == "__main__":
    main()
