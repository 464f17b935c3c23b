"""The Python API: the same experiment as the CLI, from a notebook, with your own modules.

    from kdstyles import Experiment
    exp = Experiment("configs/demo.yaml", overrides=["routing.preset=kdml"])
    exp.fit()
    exp.evaluate()          # -> metrics per network + ensemble, also in RUN/eval.json

    # your own networks (any nn.Module returning class logits); taps by module path
    exp = Experiment({"networks": {"students": {"s1": {"arch": "custom", "tap": "features.3"}, ...}}},
                     networks={"s1": my_small_cnn, "s2": other_cnn})
"""

from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .common import distributed
from .store import checkpoints
from .engine.cohort import Cohort, build_cohort, pinned_taps
from .config import (MOVABLE, ExperimentConfig, build_config, check_resumable, config_changes,
                     dump_config, load_config, resumable, resumable_keys, yaml_value)
from .data import DataBundle, build_data
from .engine import Callback, Trainer, pick_device, resolve_workers
from .errors import KDError, one_line
from .common.inputs import Inputs
from .engine.evaluate import ENSEMBLE, score_cohort
from .models.zoo import count_parameters
from .styles.routing import T
from .store.runfolder import Evaluation, RunFolder, RunInfo, now
from .styles import learner_parts
from .tasks import TASKS


# What run.json recorded before it kept the whole config: the keys it names, as the config reads them.
RECORDED = {"task": lambda c: c.task, "preset": lambda c: c.routing.label,
            "image_size": lambda c: c.data.image_size, "channels": lambda c: c.data.channels,
            "spatial_dims": lambda c: c.data.dims}


def check_edited(folder: RunFolder, cfg: ExperimentConfig) -> None:
    """A run folder's config.yaml against what run.json recorded when the run was created (and
    after each resume): a key that may not change on resume (the task, the data's shape, the
    routing, the networks...) and was edited by hand is one line, before anything is touched.
    Paths (data, the teacher's checkpoint) may move; a changed file set is caught by splits.csv."""
    info = folder.info()
    recorded = info.config
    if isinstance(recorded, dict):
        try:
            before = build_config(recorded, recorded=True)
        except KDError:
            return  # written by another version of kdstyles: nothing to hold it against
        for key, (was, edited) in config_changes(before, cfg).items():
            if resumable(key) or key in MOVABLE or key.endswith(".pretrained") and isinstance(was, str):
                continue
            raise KDError(f"'{folder.config_path}' was edited: {key} is {yaml_value(edited)} there, but the run was "
                          f"created with {yaml_value(was)} ({folder.info_path.name}); restore it (a resume may change "
                          f"only {resumable_keys()}, with --set)")
        return
    for key, read in RECORDED.items():  # an older run.json: the keys it names
        was, edited = getattr(info, key), read(cfg)
        if key in ("image_size", "channels") and edited is None:
            continue  # left to the source's default, which run.json resolved
        if was is not None and edited is not None and was != edited:
            raise KDError(f"'{folder.config_path}' was edited: {key} is {yaml_value(edited)} there, but the run was "
                          f"created with {yaml_value(was)} ({folder.info_path.name}); restore it")


def _as_config(config: ExperimentConfig | str | Path | dict | None, overrides: list[str]) -> ExperimentConfig:
    if isinstance(config, ExperimentConfig):
        return build_config(config.model_dump(mode="json"), overrides) if overrides else config
    if isinstance(config, dict):
        return build_config(config, overrides)
    return load_config(config, overrides)


class Experiment:
    """One run: a config, its data, its cohort of networks, and its run folder."""

    def __init__(self, config: ExperimentConfig | str | Path | dict | None = None, *,
                 overrides: list[str] | None = None, networks: dict[str, nn.Module] | None = None,
                 run_dir: str | Path | None = None, quiet: bool = False):
        cfg = _as_config(config, list(overrides or []))
        if networks:  # record that these networks came from Python, not from a name
            raw = cfg.model_dump(mode="json")
            for name in networks:
                spec = raw["networks"]["teacher"] if name == T else raw["networks"]["students"].get(name)
                if spec is not None:
                    spec["arch"] = "custom"
            cfg = build_config(raw, recorded=True)  # a validated config (or a run's), its networks from Python
        self.cfg = cfg
        self.modules = dict(networks or {})
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir()
        self.folder = RunFolder(self.run_dir)
        self.quiet = quiet
        self.changes: dict[str, tuple] = {}  # from_run with overrides: key -> (saved, new)
        self._data: DataBundle | None = None
        self._cohort: Cohort | None = None
        self._warnings: list[tuple[str, str]] = []  # shown once everything is checked (show_warnings)
        # the validation split scored per checkpoint, for calibrating every set evaluate scores (dropped by fit)
        self._val_scores: dict[str, Any] = {}

    @classmethod
    def from_run(cls, run_dir: str | Path, *, overrides: list[str] | None = None,
                 networks: dict[str, nn.Module] | None = None, quiet: bool = False) -> "Experiment":
        """Reopen a run folder with the config saved in it (optionally with overrides)."""
        folder = RunFolder(run_dir).require()
        if not folder.info_path.is_file():
            raise KDError(f"'{folder.path}' is not a whole run folder: {folder.info_path.name} is missing (it records "
                          "the run's shapes and status); restore it, or train again in a new folder")
        raw = folder.read_config()
        try:
            saved = build_config(raw, recorded=True)
        except KDError as exc:
            raise KDError(f"{folder.config_path}: {exc}") from None
        check_edited(folder, saved)
        cfg = build_config(raw, overrides, recorded=True) if overrides else saved
        exp = cls(cfg, networks=networks, run_dir=folder.path, quiet=quiet)
        exp.changes = config_changes(saved, cfg)
        return exp

    def show_warnings(self) -> None:
        """What the checks of the data and the networks warned about, on stderr, once, when the
        work goes ahead (a run stopped by an error shows its one line only); also when quiet:
        quiet silences progress, not what was found."""
        from rich.console import Console
        from rich.markup import escape

        console = Console(stderr=True)
        for kind, line in self._warnings:
            console.print(f"[yellow]{kind}:[/yellow] {escape(one_line(line))}", highlight=False, soft_wrap=True)
        self._warnings = []

    # ------------------------------------------------------------------ parts

    @property
    def data(self) -> DataBundle:
        if self._data is None:
            from rich.console import Console

            d = self.cfg.data
            n = d.train_samples + d.val_samples + d.test_samples
            console = Console(quiet=self.quiet)
            status = f"preparing {n} synthetic images" if d.source == "synthetic" else f"loading {d.source} data"
            with console.status(status) if d.source != "folder" and d.source != "csv" else nullcontext():
                self._data = build_data(d, self.cfg.train.seed, folder=self.folder, quiet=self.quiet,
                                        task=self.cfg.task, normalize=self.cfg.normalisation,
                                        unlabeled=bool(self.cfg.edges))
            self._warnings += [("data warning", w.message) for w in self._data.report.warnings]
        return self._data

    @property
    def cohort(self) -> Cohort:
        """Every network and adapter. An existing run folder describes the shapes, so
        evaluating or exporting a run builds its networks without loading data first."""
        if self._cohort is None:
            info = self.run_info() if self.folder.trained() else None
            if info is not None:
                inputs = self.inputs(info)
                shape = (len(info.class_names), inputs.channels, inputs.side)
                counts, images = info.train_counts, info.train_images
            else:
                self.find_weights()  # before the data: a missing weights file stops the run in seconds
                d = self.data
                shape, counts = (d.num_classes, d.channels, d.image_size), d.report.counts.get("train")
                images = len(d.splits["train"])
            counts = counts if self.cfg.loss.class_weights == "balanced" else None
            self._cohort = build_cohort(self.cfg, *shape, self.modules, class_counts=counts, train_images=images,
                                        pinned=info.taps if info is not None else None,
                                        inputs=self.inputs(info) if info is not None else self.data.inputs,
                                        reopened=info is not None)
            self._warnings += [("warning", w) for w in self._cohort.warnings]
        return self._cohort

    def find_weights(self) -> None:
        """Find (download, where a network is reachable) the pretrained weights of every network
        the run builds from a name; one line naming the key and the file when one is missing."""
        from .models.pretrained import locate_weights
        from .models.published import check_fits, names_published, read_published
        from .models.zoo import PRETRAINED_DIMS
        from .styles.routing import used_networks

        specs = {T: self.cfg.networks.teacher, **self.cfg.networks.students}
        for name in used_networks(list(self.cfg.networks.students), self.cfg.edges, self.cfg.routing.teacher_only):
            spec, where = specs[name], f"networks.{name}"
            if name in self.modules:
                continue
            if names_published(spec.pretrained):  # a network kdstyles published: found (downloaded) and checked now
                check_fits(read_published(spec.pretrained, f"{where}.pretrained"), spec.arch, spec.widen, spec.stem,
                           where)
            elif self.cfg.data.dims in PRETRAINED_DIMS:  # 3D networks start from scratch otherwise
                locate_weights(spec.arch, spec.pretrained, where)

    PREVIEW = 4  # items of each split `check` generates for a source that previews (embedded data)

    def check(self) -> tuple[Cohort, DataBundle, bool]:
        """Build and check every network and the data without training (``kdstyles check``);
        returns the cohort, the data it was built for, and whether that data is a preview.
        Files are read and checked whole; embedded data (a source that ``previews``) is
        checked on a few generated items of each split, so that a 224 px config answers in
        seconds, not after minutes of rendering."""
        from .data.sources import SOURCES

        d = self.cfg.data
        if self._data is not None or not SOURCES[d.source].previews:
            return self.cohort, self.data, False
        few = d.model_copy(update={k: min(getattr(d, k), self.PREVIEW)
                                   for k in ("train_samples", "val_samples", "test_samples")})
        if d.unlabeled is not None and SOURCES[d.unlabeled.source].previews and d.unlabeled.samples:
            few.unlabeled = d.unlabeled.model_copy(update={"samples": min(d.unlabeled.samples, self.PREVIEW)})
        # check=False: the counts of a few items (a class without images) say nothing of the data
        bundle = build_data(few, self.cfg.train.seed, quiet=True, check=False, task=self.cfg.task,
                            normalize=self.cfg.normalisation, unlabeled=bool(self.cfg.edges))
        if self._cohort is None and not self.folder.trained():  # (a trained run's shapes are in run.json)
            self._cohort = build_cohort(self.cfg, bundle.num_classes, bundle.channels, bundle.image_size, self.modules,
                                        inputs=bundle.inputs)
            self._warnings += [("warning", w) for w in self._cohort.warnings]
        return self.cohort, bundle, True

    def run_info(self) -> RunInfo:
        """The run folder's run.json (edges, shapes, class names, normalisation, status)."""
        if not self.folder.info_path.is_file():
            raise KDError(f"'{self.run_dir}' is not a run folder: run.json is missing")
        info = self.folder.info()
        missing = [k for k in ("class_names", "normalize") if getattr(info, k) is None]
        if missing:
            raise KDError(f"'{self.folder.info_path}' is damaged (no '{missing[0]}'); restore it, or train again "
                          "in a new folder")
        taps = info.taps if info.taps is not None else []
        if not (isinstance(taps, list) and all(isinstance(t, list) and len(t) == 5 and
                                                all(v is None or isinstance(v, str) for v in t) for t in taps)):
            raise KDError(f"'{self.folder.info_path}' is damaged ('taps' is not a list of [source, target, style, "
                          "source tap, target tap]); restore it, or delete the 'taps' key to tap today's defaults")
        if info.image_size is None:  # a run folder written before run.json recorded shapes: ask the data
            info = info.model_copy(update={"image_size": self.data.image_size, "channels": self.data.channels})
        return info

    def inputs(self, info: RunInfo | None = None) -> Inputs:
        """What the run's networks take, as run.json records it."""
        return Inputs.from_record(info or self.run_info(), self.folder.info_path, self.cfg.data.dims)

    def _write_run_info(self) -> None:
        c = self.cohort
        params = {n: count_parameters(net) for n, net in c.networks.items()}
        info = RunInfo.model_validate({
            "kdstyles": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "created": now(), "task": self.cfg.task,
            "preset": self.cfg.routing.label, "edges": [str(e) for e in c.edges],
            "adapters": sorted(c.adapters), "taps": pinned_taps(c), "parameters": params,
            "reused_heads": {n: parts for n, net in c.networks.items() if (parts := learner_parts(net))} or None,
            "class_names": self.data.class_names, **self.data.inputs.record(),
            "train_counts": self.data.report.counts.get("train"), "train_images": len(self.data.splits["train"]),
            "unlabeled": None if self.data.unlabeled is None else {
                "source": self.cfg.data.unlabeled.source, "images": len(self.data.unlabeled),
                "about": self.data.unlabeled_about,
                "batch_size": self.cfg.data.unlabeled_batch},
            "mix": self.cfg.data.mix.model_dump() if self.cfg.data.mix.on else None,
            "config": self.cfg.model_dump(mode="json"),  # what config.yaml must keep (Experiment.from_run checks)
            "status": "created",
        })
        self.folder.write_info(info)
        self.folder.write_config(dump_config(self.cfg))

    def _check_dirs(self, resume: bool) -> None:
        if not resume:  # the run folder, or the first of its parents that exists, must be a writable folder
            there = next(p for p in (self.run_dir, *self.run_dir.parents) if p.exists())
            if not there.is_dir():
                raise KDError(f"output.dir: '{there}' is a file, not a folder; choose another output.dir "
                              "(or output.name)")
            if not os.access(there, os.W_OK | os.X_OK):
                raise KDError(f"output.dir: folder '{there}' is not writable by you; choose another output.dir")
        last = self.folder.last
        if resume and not last.is_file():
            raise KDError(f"cannot resume '{self.run_dir}': checkpoints/last.pt is missing (no epoch finished yet?)")
        if not resume and last.is_file():
            raise KDError(f"run folder '{self.run_dir}' already holds a run; resume it with "
                          f"'kdstyles train --resume {self.run_dir}' or choose another --set output.name=NAME")

    # ------------------------------------------------------------------ actions

    def fit(self, resume: bool = False, callbacks: list[Callback] | None = None) -> dict[str, Any]:
        """Train (or resume) the cohort; returns the best validation value per network.

        Everything that can be wrong (config, data, networks, the checkpoint to resume from,
        overrides a resume cannot take) fails before anything is written. Then the run
        folder is locked for this process, stale temporary files are removed, and training
        starts (see :class:`kdstyles.engine.Trainer` for signals and crashes)."""
        self._check_dirs(resume)
        self._val_scores = {}  # the weights will change
        if resume:
            check_resumable(self.changes)
        cohort = self.cohort  # builds and checks every network (and the data) before anything is written
        main = distributed.setup(self.cfg.train.device).main  # under torchrun, rank 0 writes the files
        trainer = Trainer(self.cfg, cohort, self.data, self.run_dir, quiet=self.quiet, callbacks=callbacks)
        if resume:
            trainer.load_last()
            if self.changes.get("train.qat") == (False, True) and trainer.state.epoch >= self.cfg.train.epochs:
                raise KDError(f"--set train.qat=true: the run has done all its {trainer.state.epoch} epochs, so no "
                              "epoch would learn the rounding; add --set train.epochs=N with N above "
                              f"{trainer.state.epoch} (a few more epochs are usually enough)")
        self.show_warnings()
        # a frozen backbone's head, fitted before anything is written (a failure leaves no run folder behind)
        probed = self.probe(cohort) if not resume and T in cohort.frozen and self.needs_probe else None
        with self.folder.lock() if main else nullcontext():
            if main:
                self.folder.clean_temp_files()
                if not resume:
                    self._check_dirs(resume)  # again, now that no other process can be writing
                    self._write_run_info()
                    self.data.save(self.folder)
                    if probed is not None:
                        self.folder.write_probe(probed)
                    if T in cohort.frozen:
                        checkpoints.save({"network": T, "epoch": 0, "state_dict": cohort.networks[T].state_dict()},
                                         self.folder.best(T))
                else:
                    self.folder.record_resume(trainer.state.epoch, trainer.state.step, self.changes,
                                              self.cfg.model_dump(mode="json"))
                    if self.changes:
                        self.folder.write_config(dump_config(self.cfg))
            if resume and self.changes:
                trainer.apply_changes(self.changes)
            state = trainer.fit(resume=resume)
        return {"run_dir": str(self.run_dir), "status": state.status, "epochs": state.epoch, "best": state.best}

    @property
    def needs_probe(self) -> bool:
        """Whether the teacher is a frozen backbone without a head for this run's classes (a
        Hugging Face model and no checkpoint): the probe stage fits one before training."""
        from .models.hf import is_hf

        teacher = self.cfg.networks.teacher
        return is_hf(teacher.arch) and not teacher.checkpoint and T not in self.modules

    def probe(self, cohort: Cohort) -> dict[str, Any]:
        """Fit the frozen teacher's head on its embeddings of the training images, chosen on the
        validation split (:mod:`kdstyles.engine.probe`); what :meth:`fit` writes to probe.json."""
        from .engine.probe import fit_probe
        from .store import outputs

        device = pick_device(self.cfg.train.device)
        teacher = cohort.networks[T]
        store = outputs.path_for(outputs.key({"probe": 1, **outputs.run_parts(self.cfg)}, {T: teacher.state_dict()}))
        found = fit_probe(cohort, self.data, device, self.cfg.data.batch_size, self.cfg.train.seed, self.quiet,
                          store)
        cohort.to(torch.device("cpu"))
        return found

    def load_weights(self, checkpoint: str = "best") -> None:
        """Load each network's best checkpoint (or the last epoch's weights) from the run folder."""
        cohort = self.cohort
        if checkpoint == "last":
            path = self.folder.last
            checkpoints.load_into(cohort, checkpoints.load(path).get("cohort"), path, "this run's networks")
            return
        if checkpoint != "best":
            raise KDError(f"checkpoint '{checkpoint}' is not known; allowed: best, last")
        for name in cohort.names:
            path = self.folder.best(name)
            checkpoints.load_into(cohort.networks[name], checkpoints.state_dict_of(checkpoints.load(path), path, name),
                                  path, f"network '{name}'")

    def evaluate_sets(self, checkpoint: str = "best") -> list[dict[str, Any]]:
        """The test split, then every external set (``data.external``), each calibrated where it
        can be (:meth:`can_calibrate`): what ``train`` and ``compare`` evaluate after training."""
        return [self.evaluate(checkpoint, split, calibrated=self.can_calibrate(split) is None)
                for split in ("test", *self.data.external)]

    def can_calibrate(self, split: str = "test") -> str | None:
        """Why temperature scaling (and prediction sets) cannot be fitted for ``split`` (None: they
        can). They need probabilities the task calibrates, a validation split to fit on, and
        the split's outputs together (not whole volumes scored one by one)."""
        task = TASKS[self.cfg.task]
        if not task.calibrates:
            return (f"temperature scaling is built for classification, multi-label and segmentation so far; task "
                    f"{task.name} is not yet")
        if split == "val" or not len(self.data.splits.get("val", ())):
            return ("the temperatures and prediction sets are fitted on the validation split; "
                    + ("evaluate another split with it" if split == "val" else "this run has none"))
        if self.data.dataset(split).window is not None or self.data.splits["val"].window is not None:
            return "whole volumes scored one by one on sliding windows are not calibrated yet"
        return None

    def _calibration(self, cohort: Cohort, device: torch.device, scores: Any, coverage: float,
                     checkpoint: str) -> dict[str, Any]:
        """The validation split scored (once per checkpoint: the test split and every external set
        are calibrated on the same scores), then temperatures and prediction sets fitted on it for
        the evaluated split's ``scores`` (:func:`kdstyles.engine.evaluate.calibration`)."""
        from .engine.evaluate import calibration

        val = self._val_scores.get(checkpoint)
        if val is None:
            ds = self.data.splits["val"]
            loader = self.data.loader("val", self.cfg.data.batch_size,
                                      num_workers=resolve_workers(self.cfg.data.num_workers, device))
            val = self._val_scores[checkpoint] = score_cohort(cohort, loader, device, ds.window, ds.spacing,
                                                              per_image=False, details=False)
        return calibration(cohort.task, val, scores, coverage, self.cfg.eval.coverage_confidence, self.cfg.train.seed)

    def evaluate(self, checkpoint: str = "best", split: str = "test", calibrated: bool = False,
                 coverage: float | None = None) -> dict[str, Any]:
        """Metrics of every network and the ensemble on a split; written to RUN/eval.json (the
        test split) or RUN/eval-<split>.json. ``calibrated``: also a temperature per network
        (and one for the ensemble) fitted on the validation split, the split's metrics at
        those temperatures beside the plain ones, and conformal prediction sets at ``coverage``
        (default ``eval.coverage``) (the result's ``calibration``)."""
        known = [*self.data.splits, *self.data.external]
        if split not in known:
            raise KDError(f"split '{split}' is not known; allowed: {', '.join(known)}"
                          + ("" if self.data.external else " (and the names of data.external's sets)"))
        coverage = self.cfg.eval.coverage if coverage is None else coverage
        if not 0 < coverage < 1:
            raise KDError(f"coverage {coverage:g}: the share of images whose prediction set holds the true class "
                          "is between 0 and 1, e.g. 0.9")
        why = self.can_calibrate(split) if calibrated else None
        if why:
            raise KDError(f"evaluate --calibrated: {why}")
        self.load_weights(checkpoint)
        device = pick_device(self.cfg.train.device)
        cohort = self.cohort.to(device)
        loader = self.data.loader(split, self.cfg.data.batch_size,
                                  num_workers=resolve_workers(self.cfg.data.num_workers, device))
        shown = self.cfg.eval.overlays
        ds = self.data.dataset(split)
        scores = score_cohort(cohort, loader, device, ds.window, ds.spacing, keep=shown)
        metrics, samples, details, per_image = scores.metrics, scores.samples, scores.details, scores.per_image
        probs, labels = scores.probs, scores.labels
        params = {n: count_parameters(net) for n, net in cohort.networks.items()}
        if len(cohort.students) > 1:
            params[ENSEMBLE] = sum(params[s] for s in cohort.students)
        for name, p in params.items():
            metrics[name]["parameters"] = p
            if T in params and name != T:
                metrics[name]["compression"] = params[T] / p
        result = {"run_dir": str(self.run_dir), "task": self.cfg.task, "spatial_dims": self.cfg.data.dims,
                  "split": split, "checkpoint": checkpoint,
                  **({"about": self.data.external_about[split]} if split in self.data.external else {}),
                  "samples": samples, "preset": self.cfg.routing.label, "seed": self.cfg.train.seed,
                  "class_names": self.data.class_names,
                  "networks": metrics, "details": details, "per_image": per_image}
        shown = min(shown, samples) if split == "test" else 0  # overlays/ pictures the test split
        images = [self.data.splits[split][i][0] for i in range(shown)]
        if images and ds.window is None:  # not volumes of their own shapes
            images = torch.stack(images)
        pictures = cohort.task.write_visuals(self.folder.overlays, images, labels, probs, self.data.mean,
                                             self.data.std, shown)
        if pictures:
            result["overlays"] = [str(p.relative_to(self.run_dir)) for p in pictures]
        kept = cohort.task.kept_outputs(probs, labels) if scores.pooled else {}
        if kept:  # before eval.json, which says the evaluation is complete
            self.folder.write_outputs(kept, split)
            result["outputs"] = self.folder.outputs_file(split).name
        if calibrated:
            result["calibration"] = self._calibration(cohort, device, scores, coverage, checkpoint)
        if ds.groups and scores.pooled:
            from .engine.evaluate import group_metrics

            result["groups"] = group_metrics(probs, labels, ds.groups, cohort.task, self.cfg.eval.min_group)
        self.folder.write_eval(Evaluation.model_validate(result))
        return result
