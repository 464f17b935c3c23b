"""What a training step costs, and what the framework adds (a measurement, not a test).

    .venv/bin/python benchmarks/step.py [CONFIG] [--preset diverse] [--sizes 28,64,128] [--out FILE]

(a) the joint step (one forward per network, every loss, one backward, one optimizer
    step per network) against the sum of separate single-network steps of the same
    networks on the same batch, each with the task's supervised loss alone (CE; Dice+CE;
    focal+box for detection, e.g. ``benchmarks/step.py configs/detection.yaml``); the ratio is the framework's overhead plus the
    distillation losses themselves (target: at most 1.05);
(b) images/s for fp32 and for bf16 + channels_last at each size;
(c) data-loader images/s against training images/s;
(d) peak memory of the process running the step (CUDA: max allocated; CPU: peak RSS);
(e) an offline teacher with and without the output cache (images/s after epoch 1).
Prints a table and writes JSON (default benchmarks/results/step.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdstyles import Experiment
from kdstyles.engine.cohort import TrainStep
from kdstyles.engine import make_optimizer


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def optimizer_step(losses, opts) -> None:
    """The engine's update: one backward of every network's summed loss, one step per optimizer."""
    total = torch.stack([nl.total.float() for nl in losses.values()]).sum()
    for o in opts.values():
        o.zero_grad(set_to_none=True)
    total.backward()
    for o in opts.values():
        o.step()


def _experiment(config, preset, size, extra=()):
    over = [f"routing.preset={preset}", f"data.image_size={size}", "data.train_samples=256", "data.val_samples=32",
            "data.test_samples=32", *extra]
    return Experiment(config, overrides=over, quiet=True)


def joint_vs_separate(config, preset, size, repeats, precision="fp32", channels_last=False, extra=(),
                      device="cpu", compile_=False) -> dict:
    exp = _experiment(config, preset, size, extra)
    cohort, cfg = exp.cohort, exp.cfg
    last = torch.channels_last if cfg.data.dims == 2 else torch.channels_last_3d
    fmt = last if channels_last else torch.preserve_format
    cohort.to(device, memory_format=fmt)
    if compile_:
        for name in cohort.trainable:
            cohort.networks[name].compile()
    batch = next(iter(exp.data.loader("train", cfg.data.batch_size, train=True))).to(torch.device(device), fmt)
    x, y = batch.images, batch.targets
    step_module = TrainStep(cohort)
    opts = {n: make_optimizer(cfg.optim, cohort.parameters_of(n)) for n in cohort.trainable}
    dtype = torch.bfloat16 if precision == "bf16" else None
    cohort.train()

    kind = torch.device(device).type

    def joint():
        with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
            losses = step_module(batch)
        optimizer_step(losses, opts)
        cohort.after_step()

    separate_opts = {n: make_optimizer(cfg.optim, cohort.networks[n].parameters()) for n in cohort.trainable}

    def single(name):
        net, opt = cohort.networks[name], separate_opts[name]

        def run():
            with torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = cohort.task.supervised(net(x), y, None)  # CE (Dice+CE, focal+box for other tasks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    t_joint = _timed(joint, repeats)
    t_sep = sum(_timed(single(n), repeats) for n in cohort.trainable)
    frozen = [n for n in cohort.names if n in cohort.frozen]
    if frozen:  # an offline teacher's forward is part of the work the joint step has to do
        for n in frozen:
            t_sep += _timed(lambda net=cohort.networks[n]: net(x), repeats)
    return {"size": size, "precision": precision, "channels_last": channels_last, "compile": compile_, "batch": len(x),
            "joint_s": t_joint, "separate_s": t_sep, "ratio": t_joint / t_sep, "images_per_s": len(x) / t_joint}


def _peak_worker(args, queue):
    config, preset, size, repeats = args
    joint_vs_separate(config, preset, size, repeats)
    if torch.cuda.is_available():
        queue.put(torch.cuda.max_memory_allocated() / 2**20)
    else:
        queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_memory_mb(config, preset, size, repeats) -> float:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_worker, args=((config, preset, size, repeats), queue))
    p.start()
    value = queue.get()
    p.join()
    return value


def loader_vs_training(config, preset, size, train_ips) -> dict:
    exp = _experiment(config, preset, size)
    loader = exp.data.loader("train", exp.cfg.data.batch_size, train=True)
    n, t0 = 0, time.perf_counter()
    for x, *_ in loader:
        n += len(x)
    return {"size": size, "loader_images_per_s": n / (time.perf_counter() - t0), "train_images_per_s": train_ips}


def teacher_cache(config, size) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        base = ["data.augment.hflip=false", "data.augment.vflip=false", "data.augment.rotate90=false",
                f"output.dir={tmp}"]
        t = _experiment(config, "kd", size, [*base, "train.epochs=1", "output.name=teacher",
                                             "data.train_samples=64"])
        t.fit()
        rates = {}
        for cache in (False, True):
            exp = _experiment(config, "diverse", size, [*base, "train.epochs=3", f"output.name=c{cache}",
                                                        "networks.teacher.mode=offline",
                                                        f"networks.teacher.checkpoint={t.run_dir}",
                                                        f"networks.teacher.cache={str(cache).lower()}",
                                                        "output.tensorboard=false", "train.early_stopping=null"])
            stamps: list[float] = []
            exp.fit(callbacks=[lambda _t, e, stamps=stamps: stamps.append(time.perf_counter())])
            n = len(exp.data.splits["train"])
            rates["cache" if cache else "no cache"] = 2 * n / (stamps[2] - stamps[0])  # epochs 2 and 3
        return {"size": size, **{f"images_per_s ({k})": v for k, v in rates.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--preset", default="diverse")
    ap.add_argument("--sizes", default="28,64,128")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/step.json")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict = {"threads": torch.get_num_threads(), "preset": args.preset, "steps": [], "loader": [],
                     "memory_mb": {}, "teacher_cache": None}
    for size in sizes:
        for precision, cl in (("fp32", False), ("bf16", True)):
            r = joint_vs_separate(args.config, args.preset, size, args.repeats, precision, cl)
            results["steps"].append(r)
            print(f"{size:>4} px {precision:>4}{' +channels_last' if cl else '':<15} joint {r['joint_s'] * 1000:8.1f} ms"
                  f"  separate {r['separate_s'] * 1000:8.1f} ms  ratio {r['ratio']:.3f}  {r['images_per_s']:7.1f} img/s",
                  flush=True)
        fp32 = next(r for r in results["steps"] if r["size"] == size and r["precision"] == "fp32")
        results["loader"].append(loader_vs_training(args.config, args.preset, size, fp32["images_per_s"]))
        results["memory_mb"][size] = peak_memory_mb(args.config, args.preset, size, 2)
        lo = results["loader"][-1]
        print(f"{size:>4} px loader {lo['loader_images_per_s']:8.0f} img/s vs training {lo['train_images_per_s']:6.1f}"
              f" img/s; peak memory {results['memory_mb'][size]:.0f} MB", flush=True)
    results["teacher_cache"] = teacher_cache(args.config, sizes[0])
    print("offline teacher, epochs 2-3:", {k: round(v, 1) for k, v in results["teacher_cache"].items()})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
