"""The run folder: the one reader and writer of its files, so each file's format lives here.

    RUN/config.yaml          the fully resolved config (kept current after a resume with overrides)
    RUN/run.json             edges, adapters, shapes, class names, normalisation, status, resumes
    RUN/metrics.csv          one row per epoch and network (the same on a resumed run)
    RUN/times.csv            one row per epoch: its seconds, waiting for data, validation, checkpoints
    RUN/eval.json            test metrics (after evaluate); eval-val.json, eval-train.json for other splits
    RUN/outputs.npz          what evaluate kept of every network's test outputs, where a comparison
                             draws test images again from them (detection: boxes); outputs-<split>.npz
    RUN/checkpoints/last.pt  everything to resume; best-<network>.pt per network
    RUN/data_report.json, RUN/splits.csv, RUN/tensorboard/, RUN/overlays/, RUN/export/
    RUN/.lock                the PID of the process training in it (see fileio.FolderLock)

A comparison folder (:class:`ComparisonFolder`) holds a run folder per variant and seed beside

    CMP/comparison.json      the manifest: variants, seeds, the shared teachers, the ablation
    CMP/results.csv          every network's test metrics, a row per run and network
    CMP/compression.json     parameters, FLOPs and CPU latency of one run's networks
    CMP/jobs.json, CMP/jobs/ each run's scheduler job (compare --launcher) and the jobs' scripts and logs
    CMP/report.html          the self-contained report
    TUNE/tune.json, TUNE/study.db, TUNE/study.journal, TUNE/workers/
                             kdstyles tune: the summary, the study (SQLite, or Optuna's journal
                             for workers launched as jobs) and the workers' scripts and logs

These two classes are the only code that names the files (``tests/test_package.py`` checks).
Every read of a file kdstyles wrote fails, when the file is damaged, with one line naming
it and what to do. No torch here: ``predict`` and ``report`` use it without torch.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import KDError
from .fileio import FolderLock, clean_temp_files, read_csv, read_json, read_yaml, write_json, write_npz, write_text

STATUS_DONE = ("finished", "stopped early", "pruned")  # "pruned": kdstyles tune stopped it


class RunInfo(BaseModel):
    """run.json: what a run is and where it stands, read and written only by :class:`RunFolder`
    (keys a later or earlier release wrote are kept; a key an earlier one lacked is its default).

    Written when the run is created (versions, task, preset, edges, adapters, pinned ``taps``,
    ``parameters``, ``class_names``, the input: ``image_size``, ``channels``, ``spatial_dims``,
    ``normalize``; the training split's counts, images without labels, the mix, the whole
    ``config``) and as it goes (``status``, ``epochs_done``, ``best`` epoch and value per
    network, ``stopped_at`` or ``error``, ``resumes``)."""

    model_config = ConfigDict(extra="allow")

    task: str | None = None
    preset: str | None = None
    edges: list[str] = []
    adapters: list[Any] = []
    taps: Any = None  # [source, target, style, source tap, target tap] per edge (None: an older run; checked by run_info)
    parameters: dict[str, Any] = {}
    reused_heads: dict[str, Any] | None = None
    class_names: list[str] | None = None
    image_size: Any = None
    channels: Any = None
    spatial_dims: Any = None
    normalize: Any = None
    train_counts: Any = None
    train_images: Any = None
    unlabeled: dict[str, Any] | None = None
    mix: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    status: str | None = None
    epochs_done: int | None = None
    best: dict[str, Any] = {}
    stopped_at: dict[str, Any] | None = None
    error: str | None = None
    resumes: list[dict[str, Any]] = []


class Evaluation(BaseModel):
    """eval.json: one split of a run evaluated (``kdstyles evaluate``, ``Experiment.evaluate``),
    read and written only by :class:`RunFolder` (keys a later or earlier release wrote are kept).

    ``networks``: each network's (and the ensemble's) metrics by name; ``per_image``: the values
    comparisons pair (metrics that are means over images); ``details``: the task's lists
    (confusion matrix, per-class scores, reliability bins); ``overlays``: pictures drawn, relative
    to the run folder; ``outputs``: the file of kept outputs beside it (drawn metrics)."""

    model_config = ConfigDict(extra="allow")

    run_dir: str = ""
    task: str | None = None
    spatial_dims: int | None = None
    split: str = "test"  # or an external set's name (data.external)
    about: str | None = None  # an external set: what it is, e.g. "500 images from synthetic site 2"
    checkpoint: str = "best"
    samples: int | None = None
    preset: str | None = None
    seed: int | None = None
    class_names: list[str] = []
    networks: dict[str, dict[str, Any]]
    details: dict[str, dict[str, Any]] = {}
    per_image: dict[str, dict[str, Any]] = {}
    overlays: list[str] | None = None
    outputs: str | None = None
    # evaluate --calibrated: the temperatures fitted on the validation split (``temperature``: a
    # number, or one per label for multi-label), the validation and this split's ECE, classwise
    # ECE, Brier and NLL before and after them (``val``, ``test``: pairs), this split's metrics at
    # them (``networks``) and its change in ECE with a 95% interval (``change``),
    # conformal prediction sets fitted on the validation split (``conformal``: target coverage, the
    # default method, and per method and network the threshold, coverage, set size, ...)
    calibration: dict[str, Any] | None = None
    # data.groups: per column the groups (``values``), their ``counts``, the ``small`` ones, each
    # image's group (``of_image``) and every network's metrics per group (``networks``)
    groups: dict[str, Any] | None = None

    def trust(self, network: str) -> dict[str, Any]:
        """What the calibration block says of ``network`` in a results row: ``temperature``,
        ``ece_calibrated`` (this split's ECE at it), and the default method's prediction sets'
        ``coverage`` and ``set_size`` (empty when the split was evaluated without calibration)."""
        c = self.calibration or {}
        if network not in c.get("temperature", {}):
            return {}
        test = c.get("test", {}).get(network)  # the evaluated split's calibration rows before and after
        out = {"temperature": c["temperature"][network] if isinstance(c["temperature"][network], (int, float))
               else None, "ece_calibrated": test["ece"][1] if test else c["networks"][network].get("ece")}
        sets = c.get("conformal", {}).get("methods", {}).get(c.get("conformal", {}).get("default"), {})
        if network in sets:
            out |= {"coverage": sets[network]["coverage"], "set_size": sets[network]["set_size"]}
        return out

    def rows(self, preset: str | None = None, seed: int | None = None, run_dir: str | None = None,
             columns_only: bool = False) -> list["ResultRow"]:
        """Result rows, one per network (what results.csv holds): the run's preset and seed (or
        those given: a comparison's variant), the checkpoint, split, run folder and the
        metrics (``columns_only``: those results.csv has columns for)."""
        out, columns = [], ResultRow.metric_columns()
        for network, metrics in self.networks.items():
            values = {k: v for k, v in (metrics | self.trust(network)).items() if not columns_only or k in columns}
            out.append(ResultRow(preset=preset or self.preset or "run", seed=self.seed or 0 if seed is None else seed,
                                 network=network, checkpoint=self.checkpoint, split=self.split,
                                 run_dir=run_dir or self.run_dir or "", **values))
        return out


class ResultRow(BaseModel):
    """One network of one run on one split: a row of results.csv, which only
    :class:`ComparisonFolder` reads and writes. The metrics (names of ``METRICS``, and the
    calibration columns) are its extra fields, numbers or empty."""

    model_config = ConfigDict(extra="allow")

    preset: str
    seed: int
    network: str
    checkpoint: str | None = None
    split: str = "test"  # a file written before external sets: every row is the test split's
    run_dir: str

    @staticmethod
    def metric_columns() -> tuple[str, ...]:
        from ..common.metrics import METRICS

        return tuple(METRICS)

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """results.csv's header, in order (the run folder last: a row cut short lacks it)."""
        return ("preset", "seed", "network", "checkpoint", "split", *cls.metric_columns(), "run_dir")

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def values(self) -> dict[str, Any]:
        """The row as a mapping (what the report's tables read)."""
        return self.model_dump()

    @classmethod
    def from_cells(cls, cells: dict[str, str]) -> "ResultRow":
        """A row as the CSV holds it (text cells): numbers read back as numbers, empty cells as
        absent."""
        def number(v: str) -> Any:
            try:
                f = float(v)
            except (TypeError, ValueError):
                return v
            return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f

        fixed = {"preset", "network", "checkpoint", "split", "run_dir"}
        return cls.model_validate({k: (v if k in fixed else number(v)) for k, v in cells.items()
                                   if v not in ("", None) or k in ("preset", "network", "run_dir")})


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def times_path(self) -> Path:
        return self.path / "times.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    def best(self, network: str) -> Path:
        return self.checkpoints / f"best-{network}.pt"

    @property
    def splits_path(self) -> Path:
        return self.path / "splits.csv"

    @property
    def data_report_path(self) -> Path:
        return self.path / "data_report.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def overlays(self) -> Path:
        return self.path / "overlays"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def quantized_exports(self) -> list[dict[str, Any]]:
        """The sidecars of the run's quantized exports (``export --quantize``: those with a
        ``quantization`` record, rejected ones too); a damaged sidecar is left out."""
        sides = [_whole_json(p) for p in (sorted(self.export_dir.glob("*.json")) if self.export_dir.is_dir() else [])]
        return [s for s in sides if s is not None and isinstance(s.get("quantization"), dict)
                and isinstance(s["quantization"].get("quantized"), dict)]

    def teacher_weights(self) -> Path | None:
        """The checkpoint an offline teacher loads from this run folder: its best teacher (or a
        plain ``teacher.pt`` put in checkpoints/ by hand); None when there is neither."""
        return next((c for c in (self.best("teacher"), self.checkpoints / "teacher.pt") if c.is_file()), None)

    # ------------------------------------------------------------------ state

    def require(self) -> "RunFolder":
        """This must be a run folder (it holds config.yaml)."""
        if not self.path.is_dir():
            raise KDError(f"run folder '{self.path}' does not exist")
        if not self.config_path.is_file():
            runs = sorted(d.name for d in self.path.iterdir() if (d / self.config_path.name).is_file())
            hint = (f"; it holds run folders ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}): give one of "
                    "them" + (f", or see them all with 'kdstyles report {self.path}'"
                              if ComparisonFolder(self.path).manifest_path.is_file() else "")) if runs else ""
            raise KDError(f"'{self.path}' is not a run folder: {self.config_path.name} is missing{hint}")
        return self

    def trained(self) -> bool:
        """Training started here: run.json and checkpoints/ exist (shapes can be read back)."""
        return self.info_path.is_file() and self.checkpoints.is_dir()

    RECOVER_INFO = "it records the run's shapes and status; restore it, or train again in a new folder " \
                   "(--set output.name=NEW)"

    def info(self) -> RunInfo:
        """run.json, checked; one line naming it where it is damaged."""
        found = read_json(self.info_path, self.RECOVER_INFO)
        try:
            return RunInfo.model_validate(found)
        except ValueError as exc:
            where = ".".join(map(str, exc.errors()[0]["loc"])) if hasattr(exc, "errors") else "?"
            raise KDError(f"'{self.info_path}' is damaged ({where}); {self.RECOVER_INFO}") from None

    def status(self) -> str | None:
        return self.info().status if self.info_path.is_file() else None

    def task(self) -> str | None:
        """The task this run trained, as eval.json or run.json records it (None: a run folder
        written before they recorded it, or none readable; readers then go by the metrics)."""
        for path in (self.eval_path, self.info_path):
            try:
                task = read_json(path, "").get("task") if path.is_file() else None
            except (KDError, AttributeError):
                task = None
            if isinstance(task, str):
                return task
        return None

    def write_info(self, info: RunInfo) -> None:
        write_json(self.info_path, info.model_dump(mode="json", exclude_unset=True))

    def update_info(self, **fields: Any) -> RunInfo:
        """run.json with ``fields`` set (the others as they were)."""
        info = self.info() if self.info_path.is_file() else RunInfo()
        info = RunInfo.model_validate({**info.model_dump(exclude_unset=True), **fields})
        self.write_info(info)
        return info

    def record_resume(self, epoch: int, step: int, changes: dict[str, tuple[Any, Any]],
                      config: dict[str, Any] | None = None) -> None:
        """A resume joins run.json's ``resumes`` with how the run had ended (status, and where it
        stopped or the error, which leave the top level: it describes the run as it goes on);
        ``config``: the config it goes on with (what config.yaml must keep from now on)."""
        info = self.info().model_dump(exclude_unset=True)
        if config is not None and "config" in info:
            info["config"] = config
        resumes = info.get("resumes", [])
        ended = {"status": info.get("status"), **{k: info.pop(k) for k in ("stopped_at", "error") if k in info}}
        resumes.append({"at": now(), "after_epoch": epoch, "step": step, "ended": ended,
                        "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
        info["resumes"] = resumes
        self.write_info(RunInfo.model_validate(info))

    def read_config(self) -> dict[str, Any]:
        return read_yaml(self.config_path)

    def write_config(self, text: str) -> None:
        write_text(self.config_path, text)

    def read_eval(self, split: str = "test") -> Evaluation:
        """eval.json (or another split's), as its record; one line when it is missing or damaged."""
        path = self.eval_file(split)
        again = f"write it again with 'kdstyles evaluate {self.path}{'' if split == 'test' else ' --split ' + split}'"
        try:
            return Evaluation.model_validate(read_json(path, again))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(part) for part in first["loc"]) or "its top level"
            raise KDError(f"'{path}' is damaged ({key}: {first['msg'].lower()}); {again}") from None

    def evaluation(self, split: str = "test") -> Evaluation | None:
        """eval.json's record, or None where the run was not evaluated on that split."""
        return self.read_eval(split) if self.eval_file(split).is_file() else None

    @property
    def probe_path(self) -> Path:
        return self.path / "probe.json"

    def write_probe(self, found: dict[str, Any]) -> None:
        """What the probe stage tried and chose for a frozen teacher's head (engine.probe)."""
        write_json(self.probe_path, found)

    def probe(self) -> dict[str, Any] | None:
        return read_json(self.probe_path, "train the run again") if self.probe_path.is_file() else None

    def external_evaluated(self) -> list[str]:
        """The external sets this run was evaluated on, as its config names them (data.external)."""
        try:
            external = ((self.read_config() or {}).get("data") or {}).get("external") or []
        except KDError:
            return []
        names = [e.get("name") for e in external if isinstance(e, dict)]
        return [n for n in names if isinstance(n, str) and self.eval_file(n).is_file()]

    def eval_checkpoint(self) -> str | None:
        """Which checkpoint eval.json describes (None when there is no eval.json)."""
        evaluation = self.evaluation()
        return evaluation.checkpoint if evaluation is not None else None

    def eval_file(self, split: str = "test") -> Path:
        """eval.json holds the test split (what compare, report and export read); another
        split's evaluation goes beside it, eval-<split>.json, and never replaces it."""
        return self.eval_path if split == "test" else self.path / f"eval-{split}.json"

    def write_eval(self, evaluation: Evaluation) -> None:
        unset = {k for k in ("overlays", "outputs", "calibration", "about", "groups") if getattr(evaluation, k) is None}
        write_json(self.eval_file(evaluation.split), evaluation.model_dump(exclude=unset))

    def outputs_file(self, split: str = "test") -> Path:
        return self.path / ("outputs.npz" if split == "test" else f"outputs-{split}.npz")

    def write_outputs(self, arrays: dict[str, Any], split: str = "test") -> None:
        """Arrays beside eval.json: ``labels`` and ``out.<network>`` for each network (numpy, no pickles)."""
        write_npz(self.outputs_file(split), arrays, compressed=True)

    def read_outputs(self, split: str = "test") -> dict[str, Any]:
        import zipfile

        import numpy as np

        path = self.outputs_file(split)
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise KDError(f"'{path}' cannot be read ({str(exc).splitlines()[0][:80] or type(exc).__name__}); "
                          f"write it again with 'kdstyles evaluate {self.path}'") from None

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, restval="")
        w.writeheader()
        w.writerows(history)
        write_text(self.metrics_path, buf.getvalue())

    def append_times(self, row: dict[str, Any]) -> None:
        """One epoch's timing row added to times.csv (wall-clock seconds: kept apart from
        metrics.csv, which a resumed run reproduces exactly). Rows of this epoch or later, left
        by a run that went further than the checkpoint it resumed from, are dropped."""
        header = ",".join(row)
        old = self.times_path.read_text(encoding="utf-8", errors="replace").splitlines() \
            if self.times_path.is_file() else []
        kept = [ln for ln in old[1:] if ln.split(",")[0].isdigit() and int(ln.split(",")[0]) < row["epoch"]] \
            if old and old[0] == header else []
        values = ",".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values())
        write_text(self.times_path, "\n".join([header, *kept, values]) + "\n")

    def read_times(self) -> dict[str, float]:
        """times.csv summed over its epochs (column -> seconds; empty without the file)."""
        if not self.times_path.is_file():
            return {}
        total: dict[str, float] = {}
        with self.times_path.open(encoding="utf-8", errors="replace", newline="") as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    try:
                        total[key] = total.get(key, 0.0) + float(value)
                    except (TypeError, ValueError):
                        continue  # a damaged cell: the summary is only a summary
        return total

    def read_metrics(self) -> list[dict[str, str]]:
        from .fileio import read_csv

        return read_csv(self.metrics_path, "it is rewritten from the checkpoint when training resumes", own=True)

    # ------------------------------------------------------------------ writers' discipline

    def lock(self) -> FolderLock:
        return FolderLock(self.path, "run folder")

    def clean_temp_files(self) -> list[Path]:
        return clean_temp_files(self.path)


def _whole_json(path: Path, kind: type = dict) -> Any:
    """A JSON file kdstyles wrote, or None where it is missing or damaged (what it records can
    be measured or found again)."""
    if not path.is_file():
        return None
    try:
        return read_json(path, "", kind=kind)
    except KDError:
        return None


class Manifest(BaseModel):
    """comparison.json: what a comparison ran, read and written only by :class:`ComparisonFolder`
    (keys a later or earlier release wrote are kept; a missing key is its default, so folders of
    earlier releases open).

    ``runs``: each run's record (:meth:`kdstyles.workflows.runs.RunSpec.record`); ``target``: the
    recipe the comparison asks about (an ablation's full recipe); ``ablation``: the full recipe and
    each variant without one edge (``removed``); ``baselines``: recipes never chosen; ``notes``: a
    line per variant; ``teacher``: its mode, the shared teachers' run folders by seed and their
    overrides; ``halving``: compare --budget's rungs."""

    model_config = ConfigDict(extra="allow")

    config: str | None = None
    presets: list[str] | None = None
    recipes: Any = None
    seeds: int | None = None
    overrides: list[str] = []
    checkpoint: str = "best"
    runs: list[dict[str, Any]] = []
    target: str | None = None
    ablation: dict[str, Any] | None = None
    baselines: list[str] = []
    notes: dict[str, str] = {}
    teacher: dict[str, Any] = {}
    halving: dict[str, Any] | None = None


class ComparisonFolder:
    """A comparison's folder: its manifest, results, compression table and report; the run
    folders inside it are read through :class:`RunFolder`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "comparison.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.csv"

    @property
    def compression_path(self) -> Path:
        return self.path / "compression.json"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def jobs_path(self) -> Path:
        """jobs.json: each run's scheduler job (``compare --launcher``)."""
        return self.path / "jobs.json"

    @property
    def study_db(self) -> Path:
        """kdstyles tune: the study's default database (SQLite) in the tune folder."""
        return self.path / "study.db"

    @property
    def study_journal(self) -> Path:
        """kdstyles tune with workers launched as jobs: the study's journal file (Optuna's)."""
        return self.path / "study.journal"

    @property
    def tune_summary_path(self) -> Path:
        """kdstyles tune: the search's summary (best trials, their runs, counts by state)."""
        return self.path / "tune.json"

    @property
    def workers_dir(self) -> Path:
        """kdstyles tune with workers launched as jobs: their scripts and logs."""
        return self.path / "workers"

    def write_tune_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.tune_summary_path, summary)

    @property
    def jobs_dir(self) -> Path:
        """The launcher's folder: job scripts, submitted functions, each job's logs."""
        return self.path / "jobs"

    def jobs(self) -> dict[str, Any]:
        """jobs.json: run folder -> its last job ({} before the first submission). Damaged, or
        missing while jobs/ holds submitted jobs, it is one line: which runs are queued would be
        unknown, and a second job for a run still queued would write into the same run folder."""
        recover = (f"cancel this comparison's queued jobs (squeue --me --name 'kdstyles-*'; scancel) or let them end, "
                   f"then delete '{self.jobs_path}' and run the command again")
        if not self.jobs_path.is_file():
            submitted = sorted(self.jobs_dir.glob("*_submitted.pkl")) if self.jobs_dir.is_dir() else []
            if submitted:
                raise KDError(f"'{self.jobs_path}' is missing, but {self.jobs_dir} holds {len(submitted)} submitted "
                              f"job(s) whose state is then unknown; {recover}")
            return {}
        jobs = read_json(self.jobs_path, recover)
        bad = next((k for k, v in jobs.items() if not (isinstance(v, dict) and isinstance(v.get("job_id"), str)
                                                       and isinstance(v.get("launcher"), str))), None)
        if bad is not None:
            raise KDError(f"'{self.jobs_path}' is damaged (the record of '{bad}' has no job_id and launcher); {recover}")
        return jobs

    def write_jobs(self, jobs: dict[str, Any]) -> None:
        write_json(self.jobs_path, jobs)

    def write_manifest(self, manifest: Manifest) -> None:
        write_json(self.manifest_path, manifest.model_dump(mode="json"))

    def manifest(self) -> Manifest:
        """comparison.json, or an empty record when it is missing or damaged (a folder of results
        alone)."""
        found = _whole_json(self.manifest_path)
        try:
            return Manifest.model_validate(found or {})
        except ValueError:  # a hand-edited file of other types: what it records is read as absent
            return Manifest()

    def write_results(self, rows: list[ResultRow]) -> None:
        """results.csv: a row per run and network, the columns of :meth:`ResultRow.columns`."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ResultRow.columns(), restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(r.values() for r in rows)
        write_text(self.results_path, buf.getvalue())

    def results(self, split: str | None = None, whole: bool = True) -> list[ResultRow]:
        """results.csv's rows (of ``split``: the test split or an external set's name; all by
        default), checked: every row complete (a file cut short ends in a row whose last cells
        are empty) and, with ``whole``, every evaluated run of the manifest in it (one cut at a
        row's end lacks whole runs; this reads each run's eval.json). What is damaged is one
        line naming the file, never a table silently left out."""
        path = self.results_path
        again = "run the same 'kdstyles compare' command again to rebuild it (finished runs are kept)"
        cells = read_csv(path, again, required=("preset", "seed", "network", "run_dir"))
        rows = []
        for line, row in enumerate(cells, start=2):  # run_dir is the last column, and names the row's preset and seed
            if Path(row.get("run_dir") or "").name != f"{row.get('preset')}-seed{row.get('seed')}" or not row["network"]:
                raise KDError(f"'{path}' is damaged: line {line} is cut short or altered (its run_dir "
                              f"'{row.get('run_dir')}' is not {row.get('preset')}-seed{row.get('seed')}); {again}")
            try:
                rows.append(ResultRow.from_cells(row))
            except ValidationError as exc:
                first = exc.errors()[0]
                raise KDError(f"'{path}' is damaged: line {line}, column {'.'.join(map(str, first['loc']))}: "
                              f"{first['msg']}; {again}") from None
        listed = {(Path(r.run_dir).name, r.network) for r in rows}  # by folder name: a run_dir may be
        # relative, absolute or moved (the report resolves it by name too)
        for run in self.manifest().runs if whole else []:
            rf = RunFolder(str(run.get("run_dir", ""))) if isinstance(run, dict) else None
            if rf is None or not rf.eval_path.is_file():
                continue
            try:
                networks = rf.read_eval().networks
            except KDError:
                continue  # a damaged eval.json is reported where it is read
            missing = next((n for n in networks if (rf.path.name, n) not in listed), None)
            if missing is not None:
                raise KDError(f"'{path}' is damaged: it lacks network '{missing}' of {rf.path}, whose eval.json "
                              f"holds it; {again}")
        return [r for r in rows if split is None or r.split == split]

    def compression(self) -> list[dict[str, Any]] | None:
        """compression.json when it was measured and is whole, else None."""
        return _whole_json(self.compression_path, list)

    def write_compression(self, rows: list[dict[str, Any]]) -> None:
        write_json(self.compression_path, rows)

    def lock(self) -> FolderLock:
        return FolderLock(self.path, "comparison folder")
