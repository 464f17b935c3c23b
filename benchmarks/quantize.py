"""float32 against int8 (or fp16) for the students of trained runs: the test metric, file size
and onnxruntime CPU latency at batch 1 and 32, as ``kdstyles export --quantize`` measures them.

    python benchmarks/quantize.py RUN [RUN ...] [--networks s1,s2] [--quantize int8] [--method minmax]

Each run's students are exported (float ONNX and the quantized file, both verified on the
run's test split; nothing is rejected here: --max-drop is not applied) and one Markdown row
per student is printed. The README's figures came from the demo's runs (``kdstyles demo``),
the segmentation students of ``configs/segmentation.yaml`` and a 3D student of
``configs/volumes-classification.yaml``; the commands are in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from kdstyles.deploy.export import export_run
from kdstyles.common.metrics import label
from kdstyles.store.runfolder import RunFolder


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--networks", default=None, help="comma-separated (default: every student of each run)")
    parser.add_argument("--quantize", default="int8", choices=("int8", "fp16"))
    parser.add_argument("--method", default="minmax", choices=("minmax", "entropy", "percentile"))
    parser.add_argument("--calibration", type=int, default=256)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; onnxruntime; test split of each run\n")
    print(f"| run | network | {args.quantize} | metric float32 → {args.quantize} | change [95% CI] | MB | "
          "latency b=1 (ms) | latency b=32 (ms) | speed-up b=32 | agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        info = RunFolder(run).info()
        nets = args.networks.split(",") if args.networks else [n for n in info["parameters"] if n != "teacher"]
        for net in nets:
            side = export_run(run, net, quantize=args.quantize, calibration=args.calibration,
                              calibration_method=args.method, max_drop=float("inf"), say=lambda m: None)
            q = side["quantized"]["quantization"]
            f, m, metric = q["float32"], q["quantized"], q["metric"]
            lo, hi = q["interval_points"]
            print(f"| {run.name} | {net} | {q['how']} | {label(metric)} {f['metrics'][metric]:.4f} → "
                  f"{m['metrics'][metric]:.4f} | {q['change_points']:+.2f} pt [{lo:+.2f}, {hi:+.2f}] | "
                  f"{f['mb']:.2f} → {m['mb']:.2f} | {f['latency_b1_ms']:.2f} → {m['latency_b1_ms']:.2f} | "
                  f"{f['latency_b32_ms']:.1f} → {m['latency_b32_ms']:.1f} | "
                  f"{f['latency_b32_ms'] / m['latency_b32_ms']:.2f}x | "
                  f"{q['agreement'] if q['agreement'] is None else format(q['agreement'], '.4f')} |", flush=True)


if __name__ == "__main__":
    main()
