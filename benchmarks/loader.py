"""Data-loader throughput vs training throughput (a measurement, not a test).

    .venv/bin/python benchmarks/loader.py [--size 32] [--config CONFIG] [--out benchmarks/results/loader.json]

Measures images/s of (a) iterating the training DataLoader of the embedded dataset
(in-memory uint8, with the demo's flips), (b) the same for a folder of PNG files read
lazily (data.cache_gb=0) and cached in memory, each with 0 and 2 workers, and (c) the
demo cohort's joint training step (teacher + two students, diverse preset). Loading is
not the bottleneck when (a)/(b) are well above (c).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from kdstyles import Experiment, load_config
from kdstyles.data import build_data


def loader_rate(bundle, workers: int, batches: int = 40) -> float:
    loader = bundle.loader("train", 32, train=True, num_workers=workers, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            x, *_ = next(it)
        except StopIteration:
            break
        n += len(x)
    return n / (time.perf_counter() - t0)


def train_rate(size: int, steps: int = 10) -> float:
    exp = Experiment(None, overrides=[f"data.image_size={size}", "data.train_samples=400", "data.val_samples=40",
                                      "data.test_samples=40"], quiet=True)
    cohort, data = exp.cohort, exp.data
    opts = [torch.optim.Adam(cohort.parameters_of(n)) for n in cohort.trainable]
    x, y, _ = next(iter(data.loader("train", 32, train=True)))
    cohort.train()

    def step():
        losses = cohort.losses(cohort(x), y)
        for o in opts:
            o.zero_grad()
        torch.stack([nl.total for nl in losses.values()]).sum().backward()
        for o in opts:
            o.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--files", type=int, default=1280, help="PNG files in the folder benchmark")
    ap.add_argument("--config", help="also measure the synthetic set with this config's augmentation "
                                     "(e.g. configs/paper-r50-r18.yaml: rotation, zoom, shift, shear)")
    ap.add_argument("--out", default="benchmarks/results/loader.json")
    args = ap.parse_args()
    rows = []
    syn = build_data(load_config(None, [f"data.image_size={args.size}", "data.train_samples=2000"]).data, seed=0)
    for w in (0, 2):
        rows.append(("synthetic, in memory, flips", w, loader_rate(syn, w)))
    if args.config:
        aug = load_config(args.config).data.augment.model_dump()
        sets = [f"data.image_size={args.size}", "data.train_samples=2000",
                *(f"data.augment.{k}={json.dumps(v)}" for k, v in aug.items())]
        named = build_data(load_config(None, sets).data, seed=0)
        for w in (0, 2):
            rows.append((f"synthetic, in memory, {Path(args.config).stem} augmentation", w, loader_rate(named, w)))
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for c in range(4):
            d = Path(tmp) / f"class{c}"
            d.mkdir()
            for i in range(args.files // 4):
                Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(d / f"{i}.png")
        for cache, label in ((0, "PNG folder (96 px files), decoded per item"),
                             (4, "PNG folder (96 px files), cached in memory")):
            cfg = load_config(None, ["data.source=folder", f"data.root={tmp}", f"data.image_size={args.size}",
                                     f"data.cache_gb={cache}"])
            bundle = build_data(cfg.data, seed=0)
            for w in (0, 2):
                rows.append((label, w, loader_rate(bundle, w)))
    rows.append(("training step: teacher + 2 students (diverse)", 0, train_rate(args.size)))
    print(f"\nimages/s at {args.size} px on {torch.get_num_threads()} threads")
    print(f"{'what':<64} {'workers':>7} {'images/s':>10}")
    for what, w, rate in rows:
        print(f"{what:<64} {w:>7} {rate:>10.0f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([{"what": a, "workers": b, "images_per_s": c} for a, b, c in rows], indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
