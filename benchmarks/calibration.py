"""How well calibrated each network of finished runs is, before and after temperature scaling
(``kdstyles evaluate --calibrated``: a temperature per network fitted on the validation split):
test ECE and classwise ECE before -> after, and the temperature, per recipe and network, as
mean and 95% t-interval over seeds (a study, not a test).

    .venv/bin/python benchmarks/calibration.py runs/realimages/study-e64 runs/realimages/study-e32

Each argument is a comparison folder (every run folder in it) or a run folder. Runs are
evaluated again with --calibrated (their eval.json gains a ``calibration`` entry; the plain
numbers do not change); ``--recipes a,b`` keeps the runs of those recipes only.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

SEED = re.compile(r"-seed\d+$")
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}  # two-sided 95% t quantiles by degrees of freedom


def mean_interval(values: list[float], digits: int = 4) -> str:
    """The mean and its 95% t-interval over seeds (also benchmarks/trust.py's)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.{digits}f}"
    half = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{m:.{digits}f} [{m - half:.{digits}f}, {m + half:.{digits}f}]"


def run_folders(paths: list[str], recipes: set[str] | None) -> list[Path]:
    found = []
    for p in map(Path, paths):
        runs = [p] if (p / "run.json").is_file() else sorted(d for d in p.iterdir() if (d / "run.json").is_file())
        found += [r for r in runs if recipes is None or SEED.sub("", r.name) in recipes]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--recipes", default=None, help="comma-separated recipe names to keep")
    args = parser.parse_args()
    from kdstyles import Experiment

    rows: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in run_folders(args.paths, set(args.recipes.split(",")) if args.recipes else None):
        result = Experiment.from_run(run, quiet=True).evaluate(calibrated=True)
        recipe = f"{run.parent.name}/{SEED.sub('', run.name)}"
        c = result["calibration"]
        for net, plain in result["networks"].items():
            rows[(recipe, net)].append({"ece": plain["ece"], "ece_t": c["networks"][net]["ece"],
                                        "cw": plain["cw_ece"], "cw_t": c["networks"][net]["cw_ece"],
                                        "acc": plain["accuracy"], "t": c["temperature"][net]})
        print(f"evaluated {run}", file=sys.stderr)
    print("| recipe | network | seeds | accuracy | temperature | test ECE | at T | classwise ECE | at T |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (recipe, net), rs in rows.items():
        cols = [mean_interval([r[k] for r in rs]) for k in ("acc", "t", "ece", "ece_t", "cw", "cw_t")]
        print(f"| {recipe} | {net} | {len(rs)} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
