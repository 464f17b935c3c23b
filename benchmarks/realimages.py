"""The real-image study: which recipe brings compact students closest to their teacher on
real photos (a study, not a test; the suite stays offline and fast).

    .venv/bin/python benchmarks/realimages.py prepare          # the sets, from Debian's Fashion-MNIST
    .venv/bin/python benchmarks/realimages.py teacher          # trains the frozen teacher once
    .venv/bin/python benchmarks/realimages.py study --recipes student,kd-u,simkd-u --seeds 3 --epochs 8
    .venv/bin/python benchmarks/realimages.py table            # gap closure of every study so far

Data: Debian's ``dataset-fashion-mnist`` (70,000 grey 28 px photos of clothes, MIT licence;
``apt-get install dataset-fashion-mnist``). Only its *training file* (60,000 photos) is used,
split once (seeded, stratified by class) into disjoint sets:

    students   3,000 labelled photos the students learn from
    teacher   20,000 more labelled photos; the teacher learns from these and the students' 3,000
    pool      20,000 photos whose labels are never read: the unlabelled archive
    val        5,000 photos: checkpoint choice, and a comparison's choice of winner
    eval      12,000 photos: the held-out evaluation set every number below is measured on

The official test file (10,000 photos) is left untouched, for an independent final check.

Every study runs ``kdstyles compare`` with ``--recipes`` (a recipe = a routing preset and the
keys it sets) against one frozen teacher, students trained alone for the same epochs in the
same comparison, and ``all-labels``: the same students trained alone on the teacher's 23,000
labels, the ceiling of what the students' size allows. The table prints each recipe's share
of the teacher's lead recovered, with 95% intervals over the evaluation photos (and seeds).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIZES = {"students": 3000, "teacher": 20000, "pool": 20000, "val": 5000}  # eval: the remaining 12,000
ROOT = Path("runs/realimages")
KDSTYLES = [sys.executable, "-m", "kdstyles"]

# The experiment every run shares: 32 px (the photos upsampled from 28), grey, flips and small
# shifts, batches of 32 labelled photos (and 32 unlabelled where a recipe uses the pool).
BASE = """\
name: fashion
data:
  source: npz
  path: {data}/students.npz
  image_size: 32
  augment: {{hflip: true, vflip: false, shift: 0.1}}
  batch_size: 32
networks:
  teacher: {{arch: resnet18, widen: 0.5, mode: offline, checkpoint: {teacher}}}
  students:
    s1: {{arch: resnet10, widen: 0.25}}
    s2: {{arch: resnet10, widen: 0.25}}
train:
  epochs: 8
"""
TEACHER = """\
name: fashion-teacher
data:
  source: npz
  path: {data}/teacher.npz
  image_size: 32
  augment: {{hflip: true, vflip: false, shift: 0.1}}
  batch_size: 64
networks:
  teacher: {{arch: resnet18, widen: 0.5}}
routing: {{preset: teacher}}
train: {{epochs: {epochs}, early_stopping: null}}
output: {{dir: {root}, name: teacher}}
"""
POOL = {"data.unlabeled": {"source": "npz", "path": "{data}/pool.npz", "split": "train"}}
# Recipes by name: a preset and the keys it sets ("{data}" is the data folder). "-u": with the
# unlabelled pool; "-mix": mixup/CutMix views too.
RECIPES = {
    "all-labels": {"preset": "student", "set": {"data.path": "{data}/teacher.npz"}, "baseline": True,
                   "note": "the ceiling: the students trained alone on the teacher's 23,000 labels"},
    "kd": {"preset": "kd"},
    "kd-u": {"preset": "kd", "set": POOL},
    "kd-u-mix": {"preset": "kd", "set": {**POOL, "data.mix": {"mixup": 0.8, "cutmix": 1.0}}},
    "kd-t4-u": {"preset": "kd", "set": {**POOL, "styles": {"predictions": {"temperature": 4}}}},
    "kd-u-b96": {"preset": "kd", "set": {**POOL, "data.unlabeled_batch_size": 96}},
    "kd-t4-u-b96": {"preset": "kd", "set": {**POOL, "data.unlabeled_batch_size": 96,
                                            "styles": {"predictions": {"temperature": 4}}}},
    "kd-t4-u-b192": {"preset": "kd", "set": {**POOL, "data.unlabeled_batch_size": 192,
                                             "styles": {"predictions": {"temperature": 4}}}},
    "kd-t4-u-mix": {"preset": "kd", "set": {**POOL, "styles": {"predictions": {"temperature": 4}},
                                            "data.mix": {"mixup": 0.8, "cutmix": 1.0}, "networks.teacher.cache": False}},
    "kd-u-noce": {"preset": "kd", "set": {**POOL, "loss.ce_weight": 0.0}},
    # a new augmented view every epoch (where a study sets data.views, to measure what fixed views cost)
    "student-fresh": {"preset": "student", "set": {"data.views": None, "networks.teacher.cache": False},
                      "baseline": True},
    "kd-t4-u-fresh": {"preset": "kd", "set": {**POOL, "styles": {"predictions": {"temperature": 4}},
                                              "data.views": None, "networks.teacher.cache": False}},
    "kd-ls-u": {"preset": "kd", "set": {**POOL, "styles": {"predictions": {"temperature": 2, "standardize": True}}}},
    "dkd-u": {"preset": "dkd", "set": POOL},
    "diverse-u": {"preset": "diverse", "set": POOL},
    "fitnet-u": {"preset": "fitnet", "set": POOL},
    "simkd": {"preset": "simkd"},
    "simkd-u": {"preset": "simkd", "set": POOL},
    "mlkd-u": {"preset": "mlkd", "set": POOL},
    "diverse-simkd-u": {"preset": "diverse-simkd", "set": POOL},
    "diverse-simkd-t4-u-b96": {"preset": "diverse-simkd", "set": {**POOL, "data.unlabeled_batch_size": 96,
                                                                  "styles": {"predictions": {"temperature": 4}}}},
    "simkd-u-b96": {"preset": "simkd", "set": {**POOL, "data.unlabeled_batch_size": 96}},
}


def read_idx(kind: str) -> np.ndarray:
    path = FASHION / f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    if not path.is_file():
        sys.exit(f"error: {path} is missing; install it with: apt-get install dataset-fashion-mnist")
    with gzip.open(path) as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28) if kind == "images" else \
        np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)


def prepare(root: Path, seed: int = 2026) -> None:
    """Split the training file once into the disjoint sets (stratified, seeded) and write them."""
    images, labels = read_idx("images"), read_idx("labels")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*SIZES, "eval")}
    for k in range(len(CLASSES)):  # the same share of every class in every set
        idx = rng.permutation(np.flatnonzero(labels == k))
        start = 0
        for name, n in SIZES.items():
            take = n * len(idx) // len(labels)
            parts[name].append(idx[start:start + take])
            start += take
        parts["eval"].append(idx[start:])
    sets = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    seen = np.concatenate(list(sets.values()))
    assert len(np.unique(seen)) == len(seen) == len(labels), "the sets must be disjoint and cover the file"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    names = np.array(CLASSES)

    def write(name: str, train: np.ndarray) -> None:
        np.savez(data / f"{name}.npz", train_images=images[train], train_labels=labels[train],
                 val_images=images[sets["val"]], val_labels=labels[sets["val"]],
                 test_images=images[sets["eval"]], test_labels=labels[sets["eval"]], class_names=names)

    write("students", sets["students"])
    write("teacher", np.sort(np.concatenate([sets["students"], sets["teacher"]])))
    np.savez(data / "pool.npz", train_images=images[sets["pool"]])  # no labels written: none can be read
    (data / "sets.json").write_text(json.dumps({k: len(v) for k, v in sets.items()} | {
        "source": str(FASHION / "train-images-idx3-ubyte.gz"), "seed": seed}, indent=1))
    print(f"wrote {data}: " + ", ".join(f"{k} {len(v):,}" for k, v in sets.items()))


def teacher(root: Path, epochs: int) -> None:
    cfg = root / "teacher.yaml"
    cfg.write_text(TEACHER.format(data=(root / "data").resolve(), epochs=epochs, root=root.resolve()))
    run = root / "teacher"
    cmd = [*KDSTYLES, "train", *(["--resume", str(run)] if (run / "checkpoints" / "last.pt").is_file() else [str(cfg)])]
    subprocess.run(cmd, check=True)


def study(root: Path, recipes: list[str], seeds: int, epochs: int, sets: list[str], name: str | None) -> Path:
    data, teacher_run = (root / "data").resolve(), (root / "teacher").resolve()
    if not (teacher_run / "eval.json").is_file():
        sys.exit(f"error: no trained teacher in {teacher_run}; run: {sys.argv[0]} teacher")
    unknown = [r for r in recipes if r not in RECIPES and r != "student"]
    if unknown:
        sys.exit(f"error: unknown recipe '{unknown[0]}'; known: {', '.join(RECIPES)}")
    out = root / (name or f"study-e{epochs}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.yaml").write_text(BASE.format(data=data, teacher=teacher_run))
    chosen = {r: json.loads(json.dumps(RECIPES[r]).replace("{data}", str(data))) for r in recipes if r != "student"}
    (out / "recipes.yaml").write_text(json.dumps(chosen, indent=1))  # JSON is YAML
    cmd = [*KDSTYLES, "compare", str(out / "experiment.yaml"), "--recipes", str(out / "recipes.yaml"),
           "--presets", "student", "--seeds", str(seeds), "--out", str(out), "--set", f"train.epochs={epochs}",
           *(a for s in sets for a in ("--set", s))]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=False)
    return out


def gather(folder: Path) -> None:
    """results.csv of every evaluated run in a study folder: studies grow over several compare
    commands (more recipes, more seeds), each of which writes only its own runs' rows."""
    from types import SimpleNamespace

    from kdstyles.workflows.compare import collect, write_results

    runs = []
    for run in sorted(folder.glob("*-seed*")):
        name, _, seed = run.name.rpartition("-seed")
        if (run / "eval.json").is_file() and seed.isdigit() and name != "teacher":
            runs.append(SimpleNamespace(preset=name, seed=int(seed), run_dir=str(run)))
    order = ["student", *RECIPES]
    runs.sort(key=lambda r: (order.index(r.preset) if r.preset in order else len(order), r.preset, r.seed))
    write_results(collect(runs), folder / "results.csv")


def table(root: Path) -> None:
    """Every study's gap closure (the comparison's own analysis), one block per study, with the
    choice made on the validation split and each recipe's time per run."""
    from kdstyles.report import load_rows, load_study
    from kdstyles.report.analysis import chosen, gap_closure, winner_text

    for folder in sorted(p for p in root.glob("study-*") if (p / "results.csv").is_file()):
        gather(folder)
        study_ = load_study(folder, load_rows(folder))
        seeds = len(study_.seeds)
        print(f"\n## {folder.name} ({seeds} seed{'s' * (seeds > 1)}): test accuracy on the 12,000 held-out photos; "
              "share of the teacher's lead recovered [95% interval]")
        means: dict[tuple[str, str], list[float]] = {}
        for r in study_.rows:
            means.setdefault((r["preset"], r["network"]), []).append(float(r[study_.metric]))
        closed = {(g["preset"], g["network"]): g["text"] for g in gap_closure(study_)}
        nets = [n for n in ("teacher", "s1", "s2", "ensemble") if any(k[1] == n for k in means)]
        print("| recipe | " + " | ".join(nets) + " | minutes a run (fastest seed) |\n|---|" + "---|" * (len(nets) + 1))
        for preset in dict.fromkeys(r["preset"] for r in study_.rows):
            cells = []
            for n in nets:
                v = means.get((preset, n))
                cells.append("" if not v else f"{np.mean(v):.3f}" + (f" ({closed[(preset, n)]})"
                                                                      if (preset, n) in closed else ""))
            n = len({r["seed"] for r in study_.rows if r["preset"] == preset})  # a recipe run on fewer seeds says so
            label = preset + (f" ({n} seed{'s' * (n > 1)})" if n < seeds else "")
            print(f"| {label} | " + " | ".join(cells) + f" | {minutes(folder, preset):.1f} |")
        choice = chosen(study_)
        if choice:
            print("\n" + winner_text(choice))


def minutes(folder: Path, preset: str) -> float:
    """A recipe's training time per run (times.csv), in minutes: the fastest of its seeds (a run
    that shared the CPU with other work is slower; the fastest is the closest to its cost)."""
    import csv

    totals = []
    for times in folder.glob(f"{preset}-seed*/times.csv"):
        with times.open() as f:
            totals.append(sum(float(r["epoch_s"]) for r in csv.DictReader(f)))
    return float(np.min(totals)) / 60 if totals else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=("prepare", "teacher", "study", "table"))
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--recipes", default="kd,kd-u")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="students' epochs (teacher: its own)")
    ap.add_argument("--teacher-epochs", type=int, default=16)
    ap.add_argument("--name", help="the study's folder name (default study-e<EPOCHS>)")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run of the study")
    args = ap.parse_args()
    if args.step == "prepare":
        prepare(args.root)
    elif args.step == "teacher":
        teacher(args.root, args.teacher_epochs)
    elif args.step == "study":
        study(args.root, [r for r in args.recipes.split(",") if r], args.seeds, args.epochs, args.set, args.name)
        table(args.root)
    else:
        table(args.root)


if __name__ == "__main__":
    main()
