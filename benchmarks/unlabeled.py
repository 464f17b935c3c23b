"""What an unlabelled batch costs (a measurement, not a test).

    .venv/bin/python benchmarks/unlabeled.py [CONFIG] [--preset diverse] [--batch 32] [--rounds 7] [--mix]

The joint step of ``data.unlabeled`` (a labelled batch of B and an unlabelled batch of B
forwarded together through every network, every loss, one backward, one optimizer step per
network) against two labelled steps of B: the aim is a ratio of at most 1 (an unlabelled image
costs no more than a labelled one). Median of ``--rounds`` rounds that alternate the two, so
drift on a shared machine hits both. ``--mix`` mixes the joint batch as ``data.mix`` does
(CutMix). Also prints the data loader's images/s for the joint batches. Writes JSON to
benchmarks/results/unlabeled.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from kdstyles import Experiment
from kdstyles.engine.cohort import TrainStep
from kdstyles.data import Batch
from kdstyles.data.mix import MixDraw
from kdstyles.engine import make_optimizer
from step import optimizer_step  # benchmarks/step.py, beside this script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?")
    ap.add_argument("--preset", default="diverse")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps timed per round and variant")
    ap.add_argument("--mix", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/unlabeled.json")
    args = ap.parse_args()
    b = args.batch
    exp = Experiment(args.config, overrides=[
        f"routing.preset={args.preset}", "data.train_samples=256", "data.val_samples=32", "data.test_samples=32",
        f"data.batch_size={b}", "data.unlabeled.source=synthetic", "data.unlabeled.samples=256"], quiet=True)
    cohort, cfg, data = exp.cohort, exp.cfg, exp.data
    loader = data.loader("train", b, train=True, unlabeled_batch=b)
    t0 = time.perf_counter()
    batches = list(loader)
    load_rate = sum(len(bt.images) for bt in batches) / (time.perf_counter() - t0)
    joint_batch = batches[0]  # the labelled images first, then the unlabelled ones
    y = joint_batch.targets
    if args.mix:
        joint_batch = joint_batch.mixed(MixDraw("cutmix", 0.75, tuple(slice(0, s // 2)
                                                                       for s in joint_batch.images.shape[2:])))
    labelled_batch = Batch(joint_batch.images[:b], y, joint_batch.keys[:b])
    step = TrainStep(cohort)
    opts = {n: make_optimizer(cfg.optim, cohort.parameters_of(n)) for n in cohort.trainable}
    cohort.train()

    def run(batch):
        optimizer_step(step(batch), opts)

    def timed(fn) -> float:
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        return (time.perf_counter() - t) / args.steps

    run(joint_batch), run(labelled_batch)  # warm-up
    joint, two = [], []
    for _ in range(args.rounds):
        joint.append(timed(lambda: run(joint_batch)))
        two.append(timed(lambda: (run(labelled_batch), run(labelled_batch))))
    result = {"preset": args.preset, "batch": f"{b}+{b}", "threads": torch.get_num_threads(), "mix": args.mix,
              "joint_step_ms": statistics.median(joint) * 1e3, "two_labelled_steps_ms": statistics.median(two) * 1e3,
              "loader_images_per_s": load_rate}
    result["ratio"] = result["joint_step_ms"] / result["two_labelled_steps_ms"]
    print(f"{args.preset}, batch {b} labelled + {b} unlabelled, {result['threads']} threads: joint step "
          f"{result['joint_step_ms']:.1f} ms, two labelled steps {result['two_labelled_steps_ms']:.1f} ms, ratio "
          f"{result['ratio']:.3f} (aim: <= 1); loader {load_rate:,.0f} images/s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
