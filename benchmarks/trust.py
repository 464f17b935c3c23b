"""Before you deploy, measured: for every recipe and network of a finished comparison (a study,
not a test), the test ECE before and after temperature scaling, the prediction sets' coverage
and size (LAC, APS, RAPS) on the test split, and each external set's accuracy drop and
coverage, as means over seeds with 95% t-intervals. It reads what compare wrote (results.csv
and each run's eval.json, eval-NAME.json); nothing is trained.

    .venv/bin/kdstyles compare --presets student,kd,fitnet --recipes benchmarks/trust-recipes.yaml \\
        --seeds 3 --teacher shared --teacher-set train.epochs=16 \\
        --set 'data.external=[{name: site2, source: synthetic}]' --out runs/trust-embedded
    .venv/bin/python benchmarks/trust.py runs/trust-embedded
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
from calibration import mean_interval  # noqa: E402  (benchmarks/calibration.py, beside this file)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    args = parser.parse_args()
    from kdstyles.report.results import external_sets, load_rows, run_dirs
    from kdstyles.store.runfolder import RunFolder

    folder = Path(args.folder)
    rows = load_rows(folder)
    dirs = run_dirs(folder, rows)
    sets = external_sets(folder)
    values: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (preset, seed), run in sorted(dirs.items()):
        rf = RunFolder(run)
        test = rf.read_eval()
        c = test.calibration or {}
        for net, metrics in test.networks.items():
            key = (preset if net != "teacher" else "teacher", net)
            if net == "teacher" and seed in values[key].get("_seeds", []):
                continue  # the shared teacher: once per seed
            v = values[key]
            v["_seeds"].append(seed)
            v["accuracy"].append(metrics["accuracy"])
            v["ece"].append(metrics["ece"])
            v["ece after"].append(test.trust(net)["ece_calibrated"])
            v["T"].append(c["temperature"][net])
            for method, per in c["conformal"]["methods"].items():
                v[f"{method} coverage"].append(per[net]["coverage"])
                v[f"{method} size"].append(per[net]["set_size"])
            for name in sets:
                ext = rf.read_eval(name)
                v[f"{name} accuracy"].append(ext.networks[net]["accuracy"])
                v[f"{name} drop"].append(ext.networks[net]["accuracy"] - metrics["accuracy"])
                v[f"{name} ece"].append(ext.networks[net]["ece"])
                v[f"{name} lac coverage"].append(ext.calibration["conformal"]["methods"]["lac"][net]["coverage"])
    first = next(iter(values.values()))
    target = RunFolder(next(iter(dirs.values()))).read_eval().calibration["conformal"]
    print(f"{folder}: {len(first['_seeds'])} seed(s); prediction sets for {target['target']:.0%} coverage, "
          f"thresholds at {target['confidence']} confidence over the validation draw; mean [95% t-interval]")
    columns = ["accuracy", "ece", "ece after", "T", "lac coverage", "lac size", "aps coverage", "aps size",
               "raps coverage", "raps size"] + [f"{n} {k}" for n in sets for k in ("accuracy", "drop", "ece",
                                                                                  "lac coverage")]
    print("| recipe | network | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for (preset, net), v in values.items():
        print(f"| {preset} | {net} | " + " | ".join(mean_interval(v[c], 2 if c == "T" else 3) for c in columns)
              + " |")


if __name__ == "__main__":
    main()
