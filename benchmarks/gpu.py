"""GPU figures for the README (a measurement, not a test; needs CUDA).

    python benchmarks/gpu.py [CONFIG] [--size 224] [--batch 32] [--train-samples 1024] [--out FILE]

For the paper's pair (default ``configs/paper-r50-r18.yaml``: ResNet50 -> 2x ResNet18,
``diverse``, 224 px; ImageNet weights off, which changes no timing), in four settings (fp32;
bf16; bf16 + channels_last; bf16 + channels_last + torch.compile):

(a) one joint training step against the sum of the separate single-network steps on the
    same batch (benchmarks/step.py's measurement, on the GPU), with peak GPU memory;
(b) a training epoch through ``Experiment.fit`` (the real loop: loader workers, pinned
    memory, validation of a small split), timed on the second epoch so compilation and
    the first-epoch warm-up are left out: images/s, peak GPU memory, and from the run's
    times.csv the seconds spent waiting for data, validating and writing checkpoints.

Prints a table and writes JSON (default benchmarks/results/gpu.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step import joint_vs_separate  # noqa: E402

from kdstyles import Experiment  # noqa: E402

SETTINGS = (("fp32", False, False), ("bf16", False, False), ("bf16", True, False), ("bf16", True, True))


def _label(precision: str, cl: bool, comp: bool) -> str:
    return precision + (" + channels_last" if cl else "") + (" + compile" if comp else "")


def epoch(config, sets, precision, cl, comp, samples) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.reset_peak_memory_stats()
        exp = Experiment(config, quiet=True, overrides=[
            *sets, "train.epochs=2", "train.early_stopping=null", f"train.precision={precision}",
            f"train.channels_last={str(cl).lower()}", f"train.compile={str(comp).lower()}",
            f"data.train_samples={samples}", "data.val_samples=64", "data.test_samples=64",
            f"output.dir={tmp}", "output.tensorboard=false"])
        stamps: list[float] = []
        exp.fit(callbacks=[lambda _t, e: stamps.append(time.perf_counter())])
        seconds = stamps[1] - stamps[0]
        with open(exp.run_dir / "times.csv") as f:  # where the second epoch's time went
            second = list(csv.DictReader(f))[1]
        return {"setting": _label(precision, cl, comp), "epoch_s": seconds,
                "images_per_s": len(exp.data.splits["train"]) / seconds,
                "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                **{k: float(second[k]) for k in ("data_wait_s", "val_s", "checkpoint_s")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default="configs/paper-r50-r18.yaml")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-samples", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--preset", default="diverse")
    ap.add_argument("--settings", default="0,1,2,3", help="which of fp32, bf16, +channels_last, +compile")
    ap.add_argument("--out", default="benchmarks/results/gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU")
    sets = ["networks.teacher.pretrained=false", "networks.students.s1.pretrained=false",
            "networks.students.s2.pretrained=false", "data.normalize=dataset", f"data.batch_size={args.batch}",
            "train.device=cuda", f"routing.preset={args.preset}"]
    settings = [SETTINGS[int(i)] for i in args.settings.split(",")]
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size, "preset": args.preset,
           "batch": args.batch, "steps": [], "epochs": []}
    print(f"{out['gpu']}, torch {out['torch']}, {args.size} px, batch {args.batch}, {args.preset}", flush=True)
    for precision, cl, comp in settings:
        torch.cuda.reset_peak_memory_stats()
        try:
            r = joint_vs_separate(args.config, args.preset, args.size, args.repeats, precision, cl, sets, "cuda", comp)
        except Exception as exc:  # a setting that fails is reported, the others still measured
            traceback.print_exc()
            out["steps"].append({"setting": _label(precision, cl, comp), "error": str(exc).splitlines()[-1]})
            print(f"step  {_label(precision, cl, comp):<32} failed: {out['steps'][-1]['error']}", flush=True)
            continue
        r["setting"], r["peak_mb"] = _label(precision, cl, comp), torch.cuda.max_memory_allocated() / 2**20
        out["steps"].append(r)
        print(f"step  {r['setting']:<32} joint {r['joint_s'] * 1000:7.1f} ms  separate {r['separate_s'] * 1000:7.1f} ms"
              f"  ratio {r['ratio']:.3f}  {r['images_per_s']:7.1f} img/s  peak {r['peak_mb']:.0f} MB", flush=True)
    for precision, cl, comp in settings:
        try:
            r = epoch(args.config, sets, precision, cl, comp, args.train_samples)
        except Exception as exc:
            traceback.print_exc()
            out["epochs"].append({"setting": _label(precision, cl, comp), "error": str(exc).splitlines()[-1]})
            print(f"epoch {_label(precision, cl, comp):<32} failed: {out['epochs'][-1]['error']}", flush=True)
            continue
        out["epochs"].append(r)
        print(f"epoch {r['setting']:<32} {r['epoch_s']:6.1f} s  {r['images_per_s']:7.1f} img/s  peak {r['peak_mb']:.0f} MB"
              f"  (data wait {r['data_wait_s']:.1f} s, validation {r['val_s']:.1f} s, checkpoints "
              f"{r['checkpoint_s']:.1f} s)",
              flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
