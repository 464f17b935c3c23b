"""The command line: ``kdstyles demo | train | evaluate | check | presets``."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common.dims import dims
from .errors import Interrupted, KDError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train a teacher and compact students together, each in its own learning style.")
# Not a terminal (a batch job's log, a pipe): no 80-column wrapping of tables and lines.
# Lines (paths in them) are never broken.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160, soft_wrap=True)

SetOpt = typer.Option(None, "--set", "-s", help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)")
# --launcher and its options (compare, tune): every run or worker a scheduler job (kdstyles.workflows.launch)
LauncherOpt = typer.Option(None, "--launcher", help="slurm: Slurm jobs (through submitit); local: jobs on this "
                                                    "machine (default: the config's launcher.type)")
PartitionOpt = typer.Option(None, "--slurm-partition", help="slurm: the partition")
TimeOpt = typer.Option(None, "--slurm-time", help="a job's time limit in minutes (default 240)")
GpusOpt = typer.Option(None, "--gpus-per-run", help="GPUs per job; above 1 one DDP run across them")
CpusOpt = typer.Option(None, "--cpus-per-run", help="CPUs (threads) per job (default 4)")
MemOpt = typer.Option(None, "--mem", help="slurm: memory per node, e.g. 32G")
AccountOpt = typer.Option(None, "--slurm-account", help="slurm: the account to charge")
ExtraOpt = typer.Option(None, "--slurm-extra", help="slurm: KEY=VALUE, another #SBATCH option (qos=high); repeatable")
WaitOpt = typer.Option(True, "--wait/--no-wait", help="slurm: follow the jobs to the end (--no-wait: submit and "
                                                      "return; the same command later collects)")
EXTRA_COLUMNS = ("fidelity_kl", "parameters", "compression")  # after the task's own metrics


def _fmt(v: Any, key: str = "") -> str:
    if key == "compression" and isinstance(v, float):
        return f"{v:.1f}x"
    if isinstance(v, int):
        return f"{v / 1e6:.2f}M" if v >= 1e5 else str(v)
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return "-" if v is None else str(v)


def metrics_table(result: dict[str, Any], title: str) -> Table:
    from .common.metrics import label, task_metrics, task_of

    first = next(iter(result["networks"].values()))
    extra = [c for c in EXTRA_COLUMNS if any(c in m for m in result["networks"].values())]
    columns = [*task_metrics(result.get("task") or task_of(first), first), *extra]  # older eval.json: no task
    table = Table(title=title)
    table.add_column("network")
    for name in columns:
        table.add_column(label(name), justify="right")
    for name, metrics in result["networks"].items():
        table.add_row(name, *(_fmt(metrics.get(m), m) for m in columns))
    return table


def group_metrics_table(result: dict[str, Any], column: str, g: dict[str, Any]) -> Table:
    """A data.groups column: each network's headline metric in each group (n images; * under
    eval.min_group)."""
    from .common.metrics import label, task_metrics

    first = next(iter(g["networks"].values()))[g["values"][0]]
    metric = task_metrics(result.get("task"), first, headline=True)[0]
    table = Table(title=f"{label(metric)} per {column} (n images; * fewer than {result['groups']['min_count']})")
    table.add_column("network")
    for value, n in zip(g["values"], g["counts"], strict=True):
        table.add_column(f"{value} ({n}{'*' if value in g['small'] else ''})", justify="right")
    for name, per in g["networks"].items():
        table.add_row(name, *(_fmt(per[v].get(metric), metric) for v in g["values"]))
    return table


def prediction_sets_table(conformal: dict[str, Any], split: str) -> Table:
    """Each method's prediction sets on the split, per network: coverage (95% interval), mean
    set size, the share answered with one class and the accuracy there."""
    table = Table(title=f"prediction sets for {conformal['target']:.0%} coverage, fitted on the validation split "
                        f"({split} split; decided: one class in the set)")
    for column in ("network", "method", "coverage [95% CI]", "set size", "decided", "accuracy when decided"):
        table.add_column(column, justify="left" if column in ("network", "method") else "right")
    for method, per in conformal["methods"].items():
        for name, m in per.items():
            lo, hi = m["coverage_ci"]
            table.add_row(name, method, f"{m['coverage']:.3f} [{lo:.3f}, {hi:.3f}]", f"{m['set_size']:.2f}",
                          f"{m['decided']:.1%}", _fmt(m["decided_accuracy"], ""))
    return table


@app.command()
def train(config: Optional[Path] = typer.Argument(None, help="experiment YAML (default: the demo experiment)"),
          set_: Optional[list[str]] = SetOpt,
          resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder where it stopped"),
          evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate", help="evaluate on the test split and every external set"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or per-epoch lines")) -> None:
    """Train the teacher and students of an experiment (or resume a run folder)."""
    from .api import Experiment

    if resume is not None:
        if config is not None:
            raise KDError("give either a CONFIG or --resume RUN_DIR (the run folder holds its config)")
        exp = Experiment.from_run(resume, overrides=set_ or [], quiet=quiet)
    else:
        exp = Experiment(config, overrides=set_ or [], quiet=quiet)
    from .common.distributed import current, teardown

    try:
        summary = exp.fit(resume=resume is not None)
        if current().main:  # under torchrun only rank 0 reports and evaluates
            from .engine.log import time_summary
            from .store.runfolder import RunFolder

            spent = time_summary(RunFolder(summary["run_dir"]).read_times())
            console.print(f"run folder: {summary['run_dir']} ({summary['status']}, {summary['epochs']} epochs"
                          f"{'; ' + spent if spent else ''})")
            if evaluate_after:
                for result in exp.evaluate_sets():
                    where = ("test split" if result["split"] == "test" else
                             f"external set '{result['split']}' ({result.get('about')})")
                    console.print(metrics_table(result, f"{where}, {result['checkpoint']} checkpoint per network"))
    finally:
        teardown()


@app.command()
def evaluate(run_dir: Path = typer.Argument(..., help="a run folder"),
             checkpoint: str = typer.Option("best", help="best (per network, on its own validation metric) or last"),
             split: str = typer.Option("test", help="train, val, test, or the name of an external set (data.external); "
                                                    "eval.json holds test, the others are written to "
                                                    "eval-<split>.json"),
             as_json: bool = typer.Option(False, "--json", help="print eval.json instead of a table"),
             calibrated: bool = typer.Option(False, "--calibrated", help="also fit a temperature per network and "
                                             "for the ensemble on the validation split, and score the split at "
                                             "it, and conformal prediction sets (classification)"),
             coverage: Optional[float] = typer.Option(None, help="with --calibrated: the prediction sets' target "
                                                      "coverage (default eval.coverage, 0.9)")) -> None:
    """Evaluate every network of a run and the student ensemble; writes RUN_DIR/eval.json
    (the test split; eval-val.json, eval-train.json for the others)."""
    from .api import Experiment
    from .store.runfolder import RunFolder

    exp = Experiment.from_run(run_dir, quiet=True)
    result = exp.evaluate(checkpoint=checkpoint, split=split, calibrated=calibrated, coverage=coverage)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(metrics_table(result, f"{run_dir} | {split} split | {checkpoint} checkpoint per network"))
        if calibrated:
            c = result["calibration"]
            console.print(metrics_table({**result, "networks": c["networks"]},
                                        f"at the temperatures fitted on the validation split ({c['val_images']} "
                                        "images)"))
            from .common.calibration import temperature_words

            for name, t in c["temperature"].items():
                ece, after = c["val"][name]["ece"], c["test"][name]["ece"]
                d, lo, hi = c["change"][name]["ece"]
                console.print(f"  {name}: {temperature_words(t)}; validation ECE {ece[0]:.4f} -> {ece[1]:.4f}, "
                              f"{split} ECE {after[0]:.4f} -> {after[1]:.4f} ({d:+.4f} [{lo:+.4f}, {hi:+.4f}])",
                              highlight=False)
            if "conformal" in c:
                console.print(prediction_sets_table(c["conformal"], split))
        for column, g in (result.get("groups") or {}).get("columns", {}).items():
            console.print(group_metrics_table(result, column, g))
        console.print(f"written: {RunFolder(run_dir).eval_file(split)}")
        info = exp.run_info()
        if info.status != "finished":  # the numbers describe a run that has not reached its end
            console.print(f"[yellow]note:[/yellow] the run is {info.status or 'not finished'} after "
                          f"{info.epochs_done or 0} of {exp.cfg.train.epochs} epochs: these are its "
                          f"{checkpoint} weights so far (kdstyles train --resume {run_dir} finishes it)",
                          highlight=False, soft_wrap=True)


@app.command()
def check(config: Optional[Path] = typer.Argument(None, help="experiment YAML"),
          set_: Optional[list[str]] = SetOpt) -> None:
    """Validate a config and build its networks (taps, shapes, adapters) without training."""
    from .api import Experiment
    from .data.sources import SOURCES
    from .models.zoo import count_parameters, flops_per_image
    from .styles import learner_parts

    exp = Experiment(config, overrides=set_ or [], quiet=True)
    cohort, data, previewed = exp.check()
    space = dims(exp.cfg.data.dims)
    unit = space.unit
    sample = data.inputs.sample(1)
    console.print(f"config ok: preset {exp.cfg.routing.label}, run folder {exp.run_dir}, "
                  f"{data.image_size} px {unit}", highlight=False)
    if previewed:
        d = exp.cfg.data
        console.print(f"  data  {d.source}: {exp.PREVIEW} {unit} of each split generated and checked; the "
                      f"{d.train_samples + d.val_samples + d.test_samples:,} are generated when training starts",
                      highlight=False)
    u = exp.cfg.data.unlabeled
    if data.unlabeled is not None:
        generated = previewed and SOURCES[u.source].previews and u.samples  # a few of them were generated
        later = f" ({u.samples:,} when training starts)" if generated else ""
        console.print(f"  unlabelled  {data.unlabeled_about}, checked against every labelled split{later}; "
                      f"{exp.cfg.data.unlabeled_batch} drawn with each labelled "
                      "batch for the distillation edges", highlight=False)
    elif u is not None:
        console.print("  unlabelled  not used: no distillation edge to learn from them", highlight=False)
    for name, about in data.external_about.items():
        console.print(f"  external  {name}: {about}, checked against the training and validation {unit}; scored "
                      "after the test split", highlight=False)
    if exp.cfg.data.mix.on:
        m = exp.cfg.data.mix
        console.print(f"  mix  mixup {m.mixup:g}, CutMix {m.cutmix:g}, on {m.prob:.0%} of the training batches; "
                      "mixed views leave students markedly less calibrated than their teacher (docs/unlabeled.md), so "
                      "use the probabilities of 'kdstyles evaluate --calibrated' / 'export --calibrated'",
                      highlight=False, soft_wrap=True)
    if exp.cfg.data.views:
        k = exp.cfg.data.views
        cached = exp.cfg.networks.teacher.cache and cohort.frozen
        runs = f"; the teacher's outputs kept per view: it runs in the first {k} epochs only"
        if cached and data.unlabeled is not None and exp.cfg.data.unlabeled_batch:
            # unlabelled images take view (pass over the archive) mod k: all are kept after k passes
            train = exp.cfg.data.train_samples if previewed else len(data.splits["train"])  # as training has them
            n = u.samples if generated else len(data.unlabeled)
            steps = -(-train // exp.cfg.data.batch_size)
            last = max(k, -(-k * n // (steps * exp.cfg.data.unlabeled_batch)))
            runs = (f"; the teacher's outputs kept per view: it runs in the first {k} epochs on the labelled "
                    f"images and the first {k} passes over the unlabelled ones (" +
                    (f"until epoch {last}" if last <= exp.cfg.train.epochs else
                     f"epoch {last}, beyond these {exp.cfg.train.epochs}: fewer views or more epochs let it stop") + ")")
        console.print(f"  views  {k} fixed augmented views per training image (epoch e shows view e mod {k})"
                      + (runs if cached else ""), highlight=False)
    for e in cohort.edges:
        console.print(f"  edge  {e}", highlight=False)
    for name, net in cohort.networks.items():
        mode = " (offline, frozen)" if name in cohort.frozen else ""
        flops = flops_per_image(net, sample)
        console.print(f"  {name}: {count_parameters(net):,} parameters, {flops / 1e6:,.1f} "
                      f"MFLOPs per {space.item}{mode}", highlight=False)
        parts = learner_parts(net)
        if parts:  # a style gave it more than its own (simkd: a projector and the teacher's head)
            spec = exp.cfg.networks.students[name]
            own = cohort.task.build_network(spec, data.channels, data.image_size, where=f"networks.{name}",
                                            dims=exp.cfg.data.dims)
            added = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in parts.items() if k != "own")
            console.print(f"    of which {parts['own']:,} its own and {added}; {flops_per_image(own, sample) / 1e6:,.1f} "
                          f"MFLOPs its own network alone", highlight=False)
    for i, (src_shape, dst_shape) in cohort.map_shapes.items():
        e, (src, dst) = cohort.edges[i], cohort.edge_taps[i]
        console.print(f"  taps  {e}: {e.src} {src} {'x'.join(map(str, src_shape))} -> {e.dst} {dst} "
                      f"{'x'.join(map(str, dst_shape))}", highlight=False, soft_wrap=True)
    for key in cohort.adapters:
        console.print(f"  adapter {key}", highlight=False)
    for key in cohort.shadows:
        console.print(f"  shadow  {key} (frozen copy for self-distillation)", highlight=False)
    for name in sorted(cohort.frozen):
        _frozen_cost(exp, cohort, data, name, previewed)
    exp.show_warnings()  # the data's and the networks' (on stderr)


def _frozen_cost(exp: Any, cohort: Any, data: Any, name: str, previewed: bool) -> None:
    """What a frozen teacher costs: its forward here, per batch and per epoch, and the memory its
    kept outputs take (networks.teacher.cache), before any training."""
    from .engine.cohort import frozen_cost
    from .store.outputs import folder as outputs_folder
    from .workflows.compare import duration

    d, teacher = exp.cfg.data, exp.cfg.networks.teacher
    batch = d.batch_size
    seconds, per_item = frozen_cost(cohort, name, data.inputs.sample(batch))
    images = d.train_samples if previewed else len(data.splits["train"])
    extra = (d.unlabeled.samples if previewed and d.unlabeled.samples else len(data.unlabeled)) \
        if data.unlabeled is not None else 0
    steps = -(-images // batch)
    line = (f"  {name} cost  {seconds * 1000:,.0f} ms a batch of {batch} here ({teacher.precision}), about "
            f"{duration(seconds * steps * (1 + (d.unlabeled_batch / batch if extra else 0)))} an epoch")
    if teacher.cache and cohort.frozen:
        kept = (images + extra) * (d.views or 1)
        size = kept * per_item
        words = f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"
        line += (f"; its outputs kept for {kept:,} image views take {words} of memory and as much disk (stored in "
                 f"{outputs_folder()} for the next run of this teacher, data and seed), and it runs only until each "
                 "view was seen")
    console.print(line, highlight=False, soft_wrap=True)


data_app = typer.Typer(no_args_is_help=True, help="Look at a data set before training on it.")
app.add_typer(data_app, name="data")


def _data_spec(spec: str, overrides: list[str]):
    """A config file, a folder, a CSV, a COCO JSON, a MedMNIST npz, or 'synthetic' -> an experiment config."""
    from .config import load_config

    path = Path(spec).expanduser()
    if spec.endswith((".yaml", ".yml")):
        return load_config(path, overrides)
    if spec == "synthetic":
        data = ["data.source=synthetic"]
    elif path.is_dir():
        data = ["data.source=folder", f"data.root={path}"]
    elif spec.endswith(".csv"):
        data = ["data.source=csv", f"data.path={path}"]
    elif spec.endswith(".npz"):  # a MedMNIST file by its name, else your own arrays in its layout
        from .data.sources.medmnist_info import FLAGS, FLAGS_3D

        flag, _, size = path.stem.partition("_")
        data = ["data.source=medmnist", f"data.flag={flag}", f"data.size={size or 28}", f"data.root={path.parent}"] \
            if flag in FLAGS or flag in FLAGS_3D else ["data.source=npz", f"data.path={path}"]
    elif spec.endswith(".json"):  # COCO boxes: detection's own format
        data = ["data.source=coco", f"data.path={path}"]
    else:
        raise KDError(f"'{spec}' is neither a config (.yaml), a folder, a .csv, a COCO .json, an .npz (MedMNIST's or "
                      "your own arrays in its layout) nor 'synthetic'")
    from .data.sources import sources_for
    from .tasks import DEFAULT_TASK, TASKS

    # A source that one task alone reads (COCO boxes: detection) says the task. Looking at data
    # needs no networks: where the default networks do not fit the task, its stand-in does,
    # unless the overrides name one.
    given = next((o.partition("=")[2] for o in overrides if o.startswith("task=")), None)
    source = data[0].partition("=")[2]
    readers = [name for name, t in TASKS.items() if source in sources_for(t)]
    task = given or (readers[0] if len(readers) == 1 else DEFAULT_TASK)
    if given is None and task != DEFAULT_TASK:
        data.append(f"task={task}")
    default = load_config(None, []).networks.teacher.arch
    nets = [f"networks.{n}.arch={TASKS[task].stand_in_arch}" for n in ("teacher", "students.s1", "students.s2")] \
        if task in TASKS and not TASKS[task].accepts_arch(default) else []
    return load_config(None, [*data, *nets, *overrides])


@data_app.command("inspect")
def data_inspect(spec: str = typer.Argument(..., help="config .yaml, image folder, .csv, COCO .json, .npz, "
                                                     "or synthetic"),
                 set_: Optional[list[str]] = SetOpt) -> None:
    """Class counts per split, image sizes and channels, and every problem found (exit 1 on errors)."""
    from .data import build_data
    from .data.checks import DataErrors
    from .data.labels import labels_of
    from .tasks import TASKS

    cfg = _data_spec(spec, set_ or [])
    try:
        bundle = build_data(cfg.data, cfg.train.seed, quiet=False, check=False, task=cfg.task)
    except DataErrors as exc:  # reading stopped (volumes are read whole before their splits): list what it found
        _print_problems(exc.problems)
        raise typer.Exit(1) from None
    report = bundle.report
    whole = bundle.splits["train"].crop  # volumes kept whole, trained on patches of this side
    unit = dims(cfg.data.dims).unit
    used = f"volumes trained on {whole}^3 patches" if whole else f"{unit} used at {bundle.image_size} px"
    n = bundle.num_classes
    table = Table(title=f"{spec}: {n} class{'es' if n != 1 else ''}, {used}, {bundle.channels} channel(s)")
    table.add_column("class")
    splits = list(report.counts)
    for split in splits:
        table.add_column(split, justify="right")
    for k, name in enumerate(report.class_names):
        table.add_row(name, *(str(report.counts[s][k]) for s in splits))
    for row in labels_of(TASKS[cfg.task]).table_rows(bundle, splits, unit):
        table.add_row(*row)
    console.print(table)
    console.print(f"source {unit}: {report.describe_sources()}", highlight=False)
    _print_problems(report.problems)
    if report.errors:
        raise typer.Exit(1)


def _print_problems(problems) -> None:
    for p in problems:
        colour = "red" if p.level == "error" else "yellow"
        console.print(f"[{colour}]{p.level}:[/{colour}] {escape(one_line(p.message))}", highlight=False,
                      soft_wrap=True)
    if not problems:
        console.print("[green]no problems found")


COMPARE_PRESETS = ("student", "kd", "fitnet", "dml", "kdml", "diverse", "diverse-full")


@app.command()
def compare(config: Optional[Path] = typer.Argument(None, help="experiment YAML (default: the demo experiment)"),
            presets_: Optional[str] = typer.Option(
                None, "--presets", help="comma-separated presets; 'custom' = the config's own routing (default: "
                                        f"{','.join(COMPARE_PRESETS)}; with --ablate or --recipes: student)"),
            seeds: int = typer.Option(3, help="seeds per preset (train.seed, +1, +2, ...)"),
            out: Optional[Path] = typer.Option(None, help="comparison folder (default: runs/compare-<name>)"),
            jobs: int = typer.Option(1, min=1, help="runs at a time, in separate processes"),
            checkpoint: str = typer.Option("best", help="evaluate each network's best or last checkpoint"),
            teacher: str = typer.Option("online", help="online: each run trains its own teacher, as in the paper; "
                                                       "shared: one teacher per seed, trained first, frozen for all"),
            teacher_set: Optional[list[str]] = typer.Option(
                None, "--teacher-set", help="KEY=VALUE for the shared teacher's run only, e.g. train.epochs=30 "
                                            "(networks.teacher.* keys reach every run); repeatable"),
            ablate: bool = typer.Option(False, help="the config's routing without each edge in turn, and its "
                                                    "teacher / peer edges alone: which edge helps"),
            recipes: Optional[Path] = typer.Option(None, "--recipes", help="a YAML file of recipes, each a preset "
                                                   "and the config keys it sets (name: {preset: kd, set: {KEY: "
                                                   "VALUE}}), compared beside --presets"),
            budget: Optional[str] = typer.Option(None, "--budget", help="how long you can wait (90m, 2h): where "
                                                 "every run does not fit, the recipes are narrowed by successive "
                                                 "halving on validation, and the finalists run in full"),
            launcher: Optional[str] = LauncherOpt, slurm_partition: Optional[str] = PartitionOpt,
            slurm_time: Optional[int] = TimeOpt, gpus_per_run: Optional[int] = GpusOpt,
            cpus_per_run: Optional[int] = CpusOpt, mem: Optional[str] = MemOpt,
            slurm_account: Optional[str] = AccountOpt, slurm_extra: Optional[list[str]] = ExtraOpt,
            wait: bool = WaitOpt,
            set_: Optional[list[str]] = SetOpt,
            quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Run every preset x seed (resumable), then write results.csv, the table and report.html."""
    from .workflows.compare import base_config, parse_budget
    from .workflows.compare import compare as run_compare
    from .store.runfolder import ComparisonFolder

    from .workflows.launch import from_options

    default = "student" if ablate or recipes else ",".join(COMPARE_PRESETS)
    names = [p.strip() for p in (presets_ or default).split(",") if p.strip()]
    cfg = base_config(config, set_ or [], names, ablate)
    launch = from_options(cfg.launcher, launcher, partition=slurm_partition, time_min=slurm_time,
                          gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, mem=mem, account=slurm_account,
                          extra=slurm_extra or [], wait=wait)
    folder = out or Path(cfg.output.dir) / f"compare-{cfg.name}"
    if checkpoint not in ("best", "last"):
        raise KDError(f"--checkpoint '{checkpoint}' is not known; allowed: best, last")
    summary = run_compare(str(config) if config else None, names, seeds, folder, set_ or [], jobs=jobs,
                          checkpoint=checkpoint, quiet=quiet, echo=lambda line: console.print(line, highlight=False),
                          teacher=teacher, teacher_overrides=teacher_set or [], ablate=ablate, launch=launch,
                          recipes=recipes, budget=parse_budget(budget) if budget is not None else None)
    if summary["rows"]:
        _print_report(folder, f"results: {ComparisonFolder(folder).results_path}\n")
    if summary["queued"]:
        console.print(f"{len(summary['queued'])} run(s) queued or running as jobs (jobs.json, logs in "
                      f"{ComparisonFolder(folder).jobs_dir}); run the same command again to follow and collect them",
                      highlight=False, soft_wrap=True)
    if summary["failed"]:
        console.print(f"[red]{len(summary['failed'])} run(s) failed[/red]; fix the cause and run the same command "
                      "again to continue", highlight=False)
        raise typer.Exit(1)


@app.command()
def tune(config: Optional[Path] = typer.Argument(None, help="experiment YAML with a tune: section (tune.space)"),
         trials: Optional[int] = typer.Option(None, min=1, help="finished trials the study should reach (default: "
                                                         "tune.trials), counted over every worker"),
         storage: Optional[str] = typer.Option(None, help="Optuna database URL shared by every worker (default: "
                                                          "sqlite:///OUT/study.db)"),
         study: Optional[str] = typer.Option(None, help="study name in the database (default: the experiment's)"),
         out: Optional[Path] = typer.Option(None, help="tune folder for the trials' runs (default: "
                                                       "runs/tune-<name>)"),
         workers: int = typer.Option(1, min=1, help="with --launcher: worker jobs sharing the study (a job array)"),
         launcher: Optional[str] = LauncherOpt, slurm_partition: Optional[str] = PartitionOpt,
         slurm_time: Optional[int] = TimeOpt, gpus_per_run: Optional[int] = GpusOpt,
         cpus_per_run: Optional[int] = CpusOpt, mem: Optional[str] = MemOpt,
         slurm_account: Optional[str] = AccountOpt, slurm_extra: Optional[list[str]] = ExtraOpt,
         wait: bool = WaitOpt,
         set_: Optional[list[str]] = SetOpt,
         quiet: bool = typer.Option(True, "--quiet/--verbose", "-q/-v")) -> None:
    """Search tune.space with Optuna (TPE, median pruning); start it on several machines with one --storage."""
    from .config import load_config
    from .workflows.launch import from_options
    from .store.runfolder import ComparisonFolder
    from .workflows.tune import tune as run_tune

    cfg = load_config(config, set_ or [])
    folder = out or Path(cfg.output.dir) / f"tune-{cfg.name}"
    launch = from_options(cfg.launcher, launcher, partition=slurm_partition, time_min=slurm_time,
                          gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, mem=mem, account=slurm_account,
                          extra=slurm_extra or [], wait=wait)
    if workers > 1 and launch is None:
        raise KDError("--workers needs --launcher slurm or local (or start the same command on each machine "
                      "with one --storage)")
    summary = run_tune(str(config) if config else None, folder, set_ or [], storage=storage, study_name=study,
                       trials=trials, quiet=quiet, echo=lambda line: console.print(line, highlight=False),
                       launch=launch, workers=workers)
    if "submitted" in summary:
        ids = ", ".join(map(str, summary["submitted"]))
        console.print(f"{len(summary['submitted'])} worker job(s) submitted ({ids}); "
                      f"the study is in {summary['storage']}; run kdstyles tune again without --launcher to see it",
                      highlight=False, soft_wrap=True)
        return
    states = ", ".join(f"{n} {s}" for s, n in summary["trials"].items())
    console.print(f"study '{summary['study']}' in {summary['storage']}: {states}", highlight=False)
    if summary["best"]:
        table = Table(title=f"best trials (validation, objective: {summary['objective']})")
        for col in ("trial", "value", *summary["best"][0]["params"], "run folder"):
            table.add_column(col)
        for t in summary["best"]:
            table.add_row(str(t["number"]), f"{t['value']:.4f}", *(f"{v:.4g}" if isinstance(v, float) else str(v)
                                                                    for v in t["params"].values()), str(t["run_dir"]))
        console.print(table)
    if summary["importances"]:
        console.print("parameter importance: " + ", ".join(f"{k} {v:.2f}"
                                                                     for k, v in summary["importances"].items()),
                      highlight=False)
    console.print(f"summary: {ComparisonFolder(folder).tune_summary_path}", highlight=False)


@app.command()
def report(folder: Path = typer.Argument(..., help="a comparison folder or an evaluated run folder")) -> None:
    """Re-render report.html (and print the table) from existing results, without training."""
    from .workflows.compare import write_compression

    write_compression(folder)
    _print_report(folder)


def _print_report(folder: Path, before: str = "") -> None:
    """A comparison's (or run's) tables, analysis and before-you-deploy answer printed, and its
    report.html written."""
    from .report import load_rows, load_study, markdown, render
    from .report.trust import external_studies

    study, externals = load_study(folder, load_rows(folder)), external_studies(folder)
    console.print(markdown(study.rows, study, externals), highlight=False, soft_wrap=True)
    console.print(f"{before}report: {render(folder, study, externals)}", highlight=False)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a run folder"),
           network: Optional[str] = typer.Option(None, help="a student (default: the first), ensemble (mean of "
                                                            "the students) or teacher"),
           fmt: str = typer.Option("onnx", "--format", help="onnx, torchscript or bundle (a MONAI Bundle folder)"),
           out: Optional[Path] = typer.Option(None, help="model file (default: RUN_DIR/export/NETWORK.onnx|.pt; a "
                                                         "bundle: the folder RUN_DIR/export/NETWORK_bundle)"),
           checkpoint: str = typer.Option("best", help="best or last"),
           quantize: Optional[str] = typer.Option(None, help="int8 (static, calibrated) or fp16: also write a "
                                                            "quantized model, verified on the test split"),
           calibration: Optional[int] = typer.Option(None, help="int8: training images to calibrate on (drawn with "
                                                               "the run's seed; default 256)"),
           calibration_method: Optional[str] = typer.Option(None, help="int8: minmax (default), entropy or "
                                                                       "percentile"),
           max_drop: Optional[float] = typer.Option(None, help="points of the headline test metric the quantized "
                                                               "model may lose (default 1); more: exit 1, the file "
                                                               "kept as NAME.int8.rejected.onnx"),
           calibrated: bool = typer.Option(False, "--calibrated", help="output probabilities at the temperature "
                                           "'kdstyles evaluate --calibrated' fitted on the validation split"),
           authors: Optional[str] = typer.Option(None, help="bundle: the model's authors (metadata and licence)"),
           license: Optional[str] = typer.Option(None, "--license", help="bundle: the weights' licence, an SPDX "
                                                                         "identifier (MIT, Apache-2.0, CC-BY-4.0, ...)"),
           modality: str = typer.Option("n/a", help="bundle: the input's modality in MONAI's words (CT, MR, US, "
                                                    "XR, microscopy, photo, ...)")
           ) -> None:
    """Export a network as a self-contained model + JSON sidecar + Markdown model card, or as a MONAI Bundle."""
    from .deploy.export import export_run
    from .deploy.quantize import TooLossy
    from .store.runfolder import RunFolder

    note = lambda m: console.print(f"[yellow]note:[/yellow] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    if fmt == "bundle":
        _export_bundle(run_dir, network, out, checkpoint, calibrated, authors, license, modality, quantize, note)
        return
    try:
        side = export_run(run_dir, network, fmt, out, checkpoint, quantize=quantize, calibration=calibration,
                          calibration_method=calibration_method, max_drop=max_drop, say=note, calibrated=calibrated)
    except TooLossy as exc:
        side = exc.sidecar
        _print_quantized(side["quantized"], (Path(out) if out else RunFolder(run_dir).export_dir))
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    model = Path(out) if out else RunFolder(run_dir).export_dir / side["file"]
    v = side["verification"]
    console.print(f"exported {side['network']} ({side['checkpoint']} checkpoint) to {model}", highlight=False)
    console.print(f"max |{fmt} - pytorch| on {v['samples']} inputs: {v['max_abs_diff']:.2e} ({v['against']})",
                  highlight=False)
    console.print(f"sidecar: {model.with_suffix('.json')}\nmodel card: {model.with_suffix('.md')}", highlight=False)
    if "quantized" in side:
        _print_quantized(side["quantized"], model.parent)
    if side["run_status"] != "finished":
        console.print(f"[yellow]note:[/yellow] the run is {side['run_status']}: the model card says it has not "
                      "finished", highlight=False, soft_wrap=True)


def _export_bundle(run_dir: Path, network: str | None, out: Path | None, checkpoint: str, calibrated: bool,
                   authors: str | None, license: str | None, modality: str, quantize: str | None, note) -> None:
    from .deploy.bundle import export_bundle

    if quantize is not None:
        raise KDError("--quantize: a MONAI Bundle holds the float32 network; quantize an onnx export instead")
    side = export_bundle(run_dir, network, out, checkpoint, calibrated, authors, license, modality, say=note)
    folder = Path(side["folder"])
    console.print(f"exported {side['network']} ({side['checkpoint']} checkpoint) as a MONAI Bundle: {folder}",
                  highlight=False)
    console.print(f"max |torchscript - pytorch| on {side['verification']['samples']} inputs: "
                  f"{side['verification']['max_abs_diff']:.2e}\nrun it: cd {folder} && python -m monai.bundle run "
                  "--config_file configs/inference.json --bundle_root . --dataset_dir INPUTS --output_dir OUT",
                  highlight=False, soft_wrap=True)
    if side["run_status"] != "finished":
        note(f"the run is {side['run_status']}: the model card says it has not finished")


def _print_quantized(side: dict, folder: Path) -> None:
    """The quantized model against the float one, as export measured them on the test split."""
    from .report.tables import worded

    q = side["quantization"]
    w = worded(q)
    console.print(f"{q['type']} ({q['how']}): {folder / side['file']}", highlight=False)
    console.print(f"  test {w['metric']} {w['metric ->']} ({w['change']}), agreement {w['agreement']}; "
                  f"{w['mb ->']} MB; latency b1 {w['b1 ->']} ms, b32 {w['b32 ->']} ms ({q['threads']} threads)",
                  highlight=False, soft_wrap=True)


@app.command()
def push(run_dir: Path = typer.Argument(..., help="a run folder (evaluated: the card gives its test metrics)"),
         repo: str = typer.Option(..., help="the Hugging Face Hub repository, ORG/NAME (created where missing)"),
         network: Optional[str] = typer.Option(None, help="a student (default: the first), ensemble or teacher"),
         private: bool = typer.Option(False, "--private", help="create the repository private"),
         revision: Optional[str] = typer.Option(None, help="the branch to push to (created where missing; default: "
                                                           "main)"),
         dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="write the folder that would be uploaded "
                                                                         "here, and upload nothing"),
         checkpoint: str = typer.Option("best", help="best or last"),
         calibrated: bool = typer.Option(False, "--calibrated", help="the models output probabilities at the fitted "
                                                                     "temperature (as export --calibrated)"),
         license: Optional[str] = typer.Option(None, "--license", help="the weights' licence as the Hub names it "
                                                                       "(mit, apache-2.0, cc-by-4.0, ...; default: "
                                                                       "other)"),
         dataset: Optional[list[str]] = typer.Option(None, help="a Hub dataset the model was trained on "
                                                                "(ORG/NAME; repeatable)")) -> None:
    """Upload a network to the Hugging Face Hub: ONNX, TorchScript, safetensors weights, the sidecar and a card."""
    from .deploy.hub import push as push_run

    note = lambda m: console.print(f"[yellow]note:[/yellow] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    side = push_run(run_dir, repo, network, private, revision, dry_run, checkpoint, calibrated, license, dataset or [],
                    say=note)
    if side["uploaded"]:
        console.print(f"pushed {side['network']} to {repo}{'@' + revision if revision else ''}: {side['url']}",
                      highlight=False)
    else:
        console.print(f"dry run: {', '.join(side['files'])} written to {side['folder']} (nothing uploaded; "
                      f"'hf upload {repo} {side['folder']}' uploads it)", highlight=False, soft_wrap=True)


@app.command()
def predict(model: Path = typer.Argument(..., help="an exported .onnx / TorchScript .pt file, a run folder, or a "
                                                  "published MONAI Bundle or Hub repository folder"),
            inputs: list[Path] = typer.Argument(..., help="image (or volume) files, folders, or CSV files with a "
                                                          "'path' column"),
            out: Path = typer.Option(Path("predictions"), help="folder for predictions.csv"),
            network: Optional[str] = typer.Option(None, help="with a run folder: which network (default: the first "
                                                             "student) or ensemble"),
            batch_size: int = typer.Option(32, min=1),
            skip_unreadable: bool = typer.Option(False, "--skip-unreadable",
                                                 help="predict the readable inputs and list the others (with "
                                                      "the reason) in OUT/skipped.csv, instead of stopping"),
            allow_rejected: bool = typer.Option(False, "--allow-rejected",
                                                help="use a quantized model that export rejected (it lost more "
                                                     "than --max-drop); refused without it")) -> None:
    """Predict for new images (or NIfTI/NRRD volumes for a 3D model); writes OUT/predictions.csv
    (classes, masks under OUT/masks/, or boxes, as the task does)."""
    from .deploy.predict import SKIPPED
    from .deploy.predict import predict as run_predict

    path = run_predict(model, inputs, out, network, batch_size, skip_unreadable=skip_unreadable,
                       allow_rejected=allow_rejected,
                       say=lambda m: print(f"warning: {one_line(m)}", file=sys.stderr))
    console.print(f"predictions: {path}", highlight=False)
    if (out / SKIPPED).is_file():
        skipped = len((out / SKIPPED).read_text(encoding="utf-8").splitlines()) - 1
        console.print(f"[yellow]skipped {skipped} unreadable input(s):[/yellow] {out / SKIPPED}", highlight=False)


@app.command()
def presets(students: int = typer.Option(2, help="number of students (ctsl-mkt spans all of them)")) -> None:
    """List the routing presets and their edges."""
    from .styles.routing import PRESETS

    names = [f"s{i + 1}" for i in range(students)]
    for name, preset in PRESETS.items():
        try:
            edges = ", ".join(f"{s}->{d} {st}" for s, d, st in preset.triples(names)) or \
                ("(the teacher alone, on labels: a shared teacher's run)" if preset.teacher_only else
                 "(no edges: cross-entropy only)")
        except KDError:
            edges = "(needs two students)"
        console.print(f"[bold]{name}[/bold]: {edges}", highlight=False)


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), help="comparison folder for the demo's runs"),
         set_: Optional[list[str]] = SetOpt,
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Train one teacher on the embedded histology patches, then its students alone, with the
    paper's `diverse` routing and with the best recipe, and print their test accuracy and how
    much of the teacher's lead each recovers. Re-running reuses finished runs."""
    from .workflows.compare import DEMO_VARIANTS, run_demo
    from .common.metrics import label
    from .report import render
    from .report.analysis import gap_closure
    from .report.trust import deploy_line, external_studies

    study = run_demo(out, set_ or [], quiet=quiet, echo=lambda line: console.print(line, highlight=False))
    metric = study.metric
    closed = {(g["preset"], g["network"]): g for g in gap_closure(study)}
    table = Table(title=f"demo: test {label(metric)}, one shared teacher; in brackets, the share of the teacher's "
                        "lead over the students trained alone that each recovers [95% interval over test images]")
    table.add_column("network")
    for preset in DEMO_VARIANTS:
        table.add_column("trained alone" if preset == "student" else preset, justify="right")
    params = {r["network"]: r.get("parameters") for r in study.rows}
    table.add_column("parameters", justify="right")
    networks = ["teacher", *[n for n in dict.fromkeys(r["network"] for r in study.rows) if n != "teacher"]]
    seed = study.seeds[0]
    teacher = next((v for p in DEMO_VARIANTS if (v := study.value(p, seed, "teacher")) is not None), None)
    for name in networks:
        if name == "teacher":  # trained alone too, on labels: the lead the students should close
            cells = [_fmt(float(teacher)) if teacher is not None else "", *[""] * (len(DEMO_VARIANTS) - 1)]
        else:
            cells = []
            for preset in DEMO_VARIANTS:
                value, gap = study.value(preset, seed, name), closed.get((preset, name))
                cells.append("" if value is None else _fmt(float(value)) + (f" ({gap['text']})" if gap else ""))
        table.add_row(name, *cells, _fmt(params.get(name)))
    console.print(table)
    console.print("One seed on the embedded data shows the tool, not the verdict: which recipe to use comes from "
                  "real photos (docs/realimages.md: kd at temperature 4 with unlabelled images, trained long), and "
                  "'kdstyles compare --seeds 3 --teacher shared --recipes FILE' gives intervals over seeds and "
                  "images on your data.", highlight=False)
    externals = external_studies(out)
    line = deploy_line(study, externals)
    if line:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"runs and report: {out} ({render(out, study, externals)})", highlight=False)


PATH_ERRORS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.ELOOP, errno.ENOSPC, errno.EEXIST}


def main() -> None:
    """The ``kdstyles`` command. Every error a user can cause ends in one ``error:`` line on
    stderr and exit status 2, whoever finds it: kdstyles (KDError) or the option parser (an
    unknown command or option, a value out of range, a missing argument)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:torchmetrics")
    try:
        code = app(standalone_mode=False)
        raise SystemExit(code if isinstance(code, int) else 0)  # typer.Exit(N) inside a command returns N
    except typer.TyperException as exc:  # the parser's (typer's own click): usage, bad values, no such command
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `kdstyles` or `kdstyles data` alone: its help
            text = ctx.get_help() if ctx is not None else ""  # typer prints rich help itself and returns ""
            if text:
                print(text)
            raise SystemExit(2) from None
        message = " ".join((exc.format_message() if hasattr(exc, "format_message") else str(exc)).split())
        where = f" ('{ctx.command_path} --help' lists what is allowed)" if ctx is not None else ""
        print(f"error: {one_line(message + where)}", file=sys.stderr)
        raise SystemExit(2) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except Interrupted as exc:
        print(f"interrupted: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None
    except KDError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # a path no check foresaw (a name too long, a folder not writable): one line
        if exc.errno not in PATH_ERRORS or exc.filename is None:
            raise
        print(f"error: '{one_line(exc.filename, 200)}': {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
