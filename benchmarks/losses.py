"""What each distillation loss adds to the joint training step (a measurement, not a test).

    .venv/bin/python benchmarks/losses.py [CONFIG] [--size 64] [--rounds 5] [--out FILE]

Each variant's joint step (every network's forward, every loss, one backward, one optimizer
step per network; ``benchmarks/step.py``'s ``joint_vs_separate``) is timed against its
baseline with the same networks and edges but the classic loss: dkd, dist and standardized
KD against kd; diverse-dkd and diverse-dist against diverse; features at three depths
against one. Rounds alternate the variants, so drift of the machine hits them alike; the
figure is the median over rounds of each variant's median step. Target: at most +3%.

On a shared CPU the step's own noise (a few %) is as large as the difference, so the loss is
also timed alone: each style's forward and backward on a batch of logits (or maps) of the
demo's shapes, median of many repeats, as a share of the kd joint step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from step import joint_vs_separate  # noqa: E402

VARIANTS = {  # name: (preset, extra overrides, baseline name)
    "kd": ("kd", (), None),
    "dkd": ("dkd", (), "kd"),
    "dist": ("dist", (), "kd"),
    "kd standardized": ("kd", ("styles.predictions.standardize=true",), "kd"),
    "diverse": ("diverse", (), None),
    "diverse-dkd": ("diverse-dkd", (), "diverse"),
    "diverse-dist": ("diverse-dist", (), "diverse"),
    "fitnet (1 depth)": ("fitnet", (), None),
    "fitnet (3 depths)": ("fitnet", ("styles.features.taps=[layer1,layer2,layer3]",), "fitnet (1 depth)"),
}


def loss_alone(size: int, batch: int = 32, repeats: int = 300) -> dict[str, float]:
    """Seconds of one style's forward + backward on tensors of the demo's shapes (4 classes;
    features: the 128 x 4 x 4 teacher map against the student's 64-channel map through its
    1x1 conv + BN adapter at 64 px)."""
    import time

    import torch

    from kdstyles.models.adapters import make_adapter
    from kdstyles.styles import STYLES, Context
    from kdstyles.tasks import TASKS

    torch.manual_seed(0)
    task, y = TASKS["classification"](4), torch.randint(0, 4, (batch,))
    side = max(1, size // 16)
    cases = {name: (STYLES[name], torch.randn(batch, 4), torch.randn(batch, 4, requires_grad=True), None)
             for name in ("predictions", "dkd", "dist")}
    adapter = make_adapter((batch, 64, side, side), (batch, 128, side, side), "bench", project=True)
    cases["features"] = (STYLES["features"], torch.randn(batch, 128, side, side),
                         torch.randn(batch, 64, side, side, requires_grad=True), adapter)
    cases["predictions standardized"] = cases["predictions"]
    out = {}
    for name, (style, source, target, adapt) in cases.items():
        opts = style.Options(standardize=True) if name.endswith("standardized") else style.Options()

        def run():
            t, s_ = adapt(target, source) if adapt is not None else (target, source)
            style.compute(s_, t, opts, task, Context(y, 1)).backward()

        for _ in range(20):
            run()
        t0 = time.perf_counter()
        for _ in range(repeats):
            run()
        out[name] = (time.perf_counter() - t0) / repeats
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/losses.json")
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (preset, extra, _base) in VARIANTS.items():
            times[name].append(joint_vs_separate(args.config, preset, args.size, args.repeats, extra=extra)["joint_s"])
    alone = loss_alone(args.size)
    rows = []
    for name, (preset, _extra, base) in VARIANTS.items():
        t = statistics.median(times[name])
        ratio = t / statistics.median(times[base]) if base else None
        rows.append({"variant": name, "preset": preset, "joint_ms": 1000 * t, "against": base, "ratio": ratio})
        print(f"{name:20s} {1000 * t:8.1f} ms" + (f"   {100 * (ratio - 1):+.1f}% against {base}" if base else ""))
    for name, ms in alone.items():
        print(f"{name:20s} alone {1000 * ms:7.3f} ms = {100 * ms / statistics.median(times['kd']):.2f}% of the kd step")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "rounds": args.rounds, "rows": rows,
                                          "loss_alone_ms": {k: 1000 * v for k, v in alone.items()}}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
