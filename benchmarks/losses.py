"""What each distillation loss adds to the joint training step (a measurement, not a test).

    .venv/bin/python benchmarks/losses.py [CONFIG] [--size 64] [--rounds 5] [--out FILE]

Each variant's joint step (every network's forward, every loss, one backward, one optimizer
step per network; ``benchmarks/step.py``'s ``joint_vs_separate``) is timed against its
baseline with the same networks and edges but the classic loss: dkd, dist and standardized
KD against kd; diverse-dkd and diverse-dist against diverse; features at three depths
against one. Rounds alternate the variants, so drift of the machine hits them alike; the
figure is the median over rounds of each variant's median step. Target: at most +3%.
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
    rows = []
    for name, (preset, _extra, base) in VARIANTS.items():
        t = statistics.median(times[name])
        ratio = t / statistics.median(times[base]) if base else None
        rows.append({"variant": name, "preset": preset, "joint_ms": 1000 * t, "against": base, "ratio": ratio})
        print(f"{name:20s} {1000 * t:8.1f} ms" + (f"   {100 * (ratio - 1):+.1f}% against {base}" if base else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"size": args.size, "rounds": args.rounds, "rows": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
