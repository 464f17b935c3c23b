"""Export a trained network (or the student ensemble) as a self-contained model file.

The exported model takes float32 images in [0, 1], shape (N, C, H, W), and returns class
probabilities (N, K): the training normalisation is inside, and the ensemble averages its
students' softmax probabilities. Next to the model: a JSON sidecar (everything ``predict``
needs, and the export's numerical check) and a Markdown model card.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .. import __version__
from ..api import Experiment
from ..data.sources import SOURCES
from ..errors import KDError
from ..engine.evaluate import ENSEMBLE
from ..store.fileio import atomic_write, write_json, write_text
from .measure import cpu_latency_ms
from ..common.metrics import label, task_metrics
from ..models.fakequant import float_copy
from ..models.zoo import count_parameters, flops_per_image
from ..report.tables import worded
from ..store.runfolder import RunFolder, RunInfo
from ..styles.routing import T
from .quantize import (CALIBRATION, MAX_DROP, TooLossy, calibration_batches, check_options, quantize_file,
                       quantized_path, rejected_path, verify)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INT8_KERNEL_DIMS = (2,)  # convolutions onnxruntime's CPU provider runs in int8 (3D ones it runs dequantized)


class Deployable(nn.Module):
    """[0, 1] images -> probabilities as the task activates them (softmax over classes;
    detection: heatmap probabilities and box channels); one network or the mean of several.
    ``temperature`` (export --calibrated): the class probabilities at it, softmax(log p / T), as
    ``evaluate --calibrated`` scored them."""

    def __init__(self, networks: list[nn.Module], mean: list[float], std: list[float], task, dims: int = 2):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.task = task
        self.temperature: float | None = None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, *(1,) * dims))
        self.register_buffer("std", torch.tensor(std).view(1, -1, *(1,) * dims))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        probs = [self.task.activate(net(x)) for net in self.networks]
        p = probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)
        return p if self.temperature is None else self.task.tempered(p, self.temperature)


def deployable(exp: Experiment, network: str, info: RunInfo | None = None) -> Deployable:
    """The network of a run (weights already loaded) wrapped for deployment."""
    cohort = exp.cohort
    allowed = cohort.names + ([ENSEMBLE] if len(cohort.students) > 1 else [])
    if network not in allowed:
        raise KDError(f"--network '{network}' is not in this run; allowed: {', '.join(allowed)}")
    names = cohort.students if network == ENSEMBLE else [network]
    info = info or exp.run_info()
    inputs = exp.inputs(info)
    # a student trained with train.qat deploys its float weights (--quantize rounds them)
    return Deployable([float_copy(cohort.networks[n]) for n in names], list(inputs.mean), list(inputs.std),
                      cohort.task, inputs.spatial_dims).eval()


def external_rows(exp: Experiment, network: str, checkpoint: str, calibrated: bool) -> str:
    """The model card's section on the external test sets the run was scored on (data.external,
    at the same checkpoint): the headline metrics on each, at the fitted temperature where the model
    outputs calibrated probabilities, and the prediction sets' coverage there; '' without any."""
    from ..common.metrics import label, task_metrics

    lines = []
    for name in exp.folder.external_evaluated():
        evaluation = exp.folder.read_eval(name)
        if evaluation.checkpoint != checkpoint or network not in evaluation.networks:
            continue
        c = evaluation.calibration or {}
        metrics = c["networks"][network] if calibrated and network in c.get("networks", {}) else \
            evaluation.networks[network]
        cells = [f"{label(k)} {metrics[k]:.4f}" for k in task_metrics(evaluation.task or exp.cohort.task.name,
                                                                      metrics, headline=True)
                 if isinstance(metrics.get(k), float)]
        trust = evaluation.trust(network)
        if "coverage" in trust:
            cells.append(f"prediction sets' coverage {trust['coverage']:.3f} (fitted for "
                         f"{c['conformal']['target']:.0%} on this run's validation split)")
        lines.append(f"| {name} | {evaluation.about or ''} | {'; '.join(cells)} |")
    if not lines:
        return ""
    return ("\n## External test sets\n\nScored after the test split, on images from elsewhere (data.external)"
            + (", at the fitted temperature" if calibrated else "") + ":\n\n| set | what | metrics |\n|---|---|---|\n"
            + "\n".join(lines) + "\n")


def calibrated_with(exp: Experiment, network: str, checkpoint: str) -> dict[str, Any]:
    """The temperature ``evaluate --calibrated`` fitted for ``network`` (eval.json of the same
    checkpoint), the validation ECE before and after it, the test metrics at it, and the
    conformal threshold of its prediction sets (``prediction_sets``, where fitted)."""
    evaluation = exp.folder.evaluation()
    c = evaluation.calibration if evaluation is not None and evaluation.checkpoint == checkpoint else None
    if not c or network not in c.get("temperature", {}):
        raise KDError(f"export --calibrated: no temperature fitted for '{network}' at the {checkpoint} checkpoint; "
                      f"run 'kdstyles evaluate {exp.folder.path} --calibrated"
                      f"{'' if checkpoint == 'best' else ' --checkpoint ' + checkpoint}' first")
    out = {"temperature": c["temperature"][network], "fitted_on": c.get("fitted_on", "val"),
           "val_ece": c["val"][network]["ece"], "metrics": c["networks"][network]}
    conformal = c.get("conformal")
    if conformal:  # the default method's threshold (evaluate --calibrated fits every method)
        method = conformal["default"]
        m = conformal["methods"][method][network]
        out["prediction_sets"] = {"method": method, "coverage": conformal["target"], "threshold": m["threshold"],
                                  "test_coverage": m["coverage"], "test_set_size": m["set_size"]}
    return out


def open_run(run_dir: str | Path, network: str | None, checkpoint: str = "best"
             ) -> tuple[Experiment, Deployable, dict[str, Any], str]:
    """A run folder's network (or ensemble; None: its first student) with its weights, ready to
    deploy, its run.json and the network's name."""
    exp = Experiment.from_run(run_dir, quiet=True)
    info = exp.run_info()
    exp.load_weights(checkpoint)
    network = network or exp.cohort.students[0]
    return exp, deployable(exp, network, info), info, network


def open_export(run_dir: Path, network: str | None, checkpoint: str, calibrated: bool
                ) -> tuple[Experiment, Deployable, dict[str, Any], str, dict[str, Any] | None]:
    """:func:`open_run`, and with ``calibrated`` the model set to output its probabilities at
    the fitted temperature (:func:`calibrated_with`, also returned; else None)."""
    exp, model, info, network = open_run(run_dir, network, checkpoint)
    tempered = calibrated_with(exp, network, checkpoint) if calibrated else None
    if tempered is not None:
        model.temperature = tempered["temperature"]
    return exp, model, info, network, tempered


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> float:
    import numpy as np
    import onnxruntime as ort

    # torch's ONNX exporter names every torchvision operator it cannot register (kdstyles has no torchvision)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

    def write(tmp: str) -> None:
        batch = torch.export.Dim("batch", min=1, max=4096)
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), tmp, input_names=["image"], output_names=["probabilities"],
                              dynamic_shapes={"image": {0: batch}}, dynamo=True, external_data=False,
                              verbose=False)

    atomic_write(path, write)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": sample.numpy()})[0]
    with torch.inference_mode():
        want = model(sample).numpy()
    return float(np.abs(got - want).max())


def _export_torchscript(model: nn.Module, sample: torch.Tensor, path: Path) -> float:
    """Traced on the first two inputs of ``sample`` and checked on all of them (a trace that
    kept anything of its own inputs, e.g. batch statistics, differs on the others)."""
    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, sample[:2]), tmp)

    atomic_write(path, write)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return float((loaded(sample) - model(sample)).abs().max())


def card_evaluation(exp: Experiment, run_dir: Path, checkpoint: str, say: Callable[[str], None]) -> Any:
    """The run's evaluation of ``checkpoint`` (eval.json), for a model card's metrics; where there
    is none, the checkpoint is evaluated on the test split first (``say`` is told so)."""
    evaluation = exp.folder.evaluation()
    if evaluation is None or evaluation.checkpoint != checkpoint:
        say(f"{run_dir}: the {checkpoint} checkpoint has not been evaluated (no eval.json of it); evaluating it on "
            "the test split first, for the model card's metrics (kdstyles evaluate writes the same eval.json)")
        exp.evaluate(checkpoint=checkpoint)
        evaluation = exp.folder.read_eval()
    return evaluation


def describe(exp: Experiment, info: RunInfo, network: str, inputs: Any, evaluation: Any, checkpoint: str,
             run_dir: Path, tempered: dict[str, Any] | None) -> dict[str, Any]:
    """What every export says of its model (the sidecar less its file, format and verification):
    the run, the checkpoint, the input and output, the classes, the metrics (at the fitted
    temperature where ``tempered``) and the network it holds (:func:`network_record`)."""
    metrics = tempered["metrics"] if tempered is not None else evaluation.networks.get(network, {})
    best = info.best
    epochs = {n: best.get(n, {}).get("epoch") for n in (exp.cohort.students if network == ENSEMBLE else [network])}
    task = exp.cohort.task
    return {
        "kdstyles": __version__, "torch": torch.__version__,
        "task": task.name, "plugins": exp.cfg.plugins, "network": network, "run_dir": str(run_dir),
        "run_status": info.status, "preset": info.preset,
        "checkpoint": checkpoint, "epochs": epochs if checkpoint == "best" else {"last": info.epochs_done},
        "input": inputs.sidecar(),
        "output": {"name": "probabilities",
                   "shape": [len(info.class_names) if d == "classes" else d
                             for d in task.output_shape(inputs.spatial_dims)]},
        "normalisation": {"mean": list(inputs.mean), "std": list(inputs.std),
                          "applied": "inside the model"},
        "class_names": info.class_names,
        **({"volumes": exp.cfg.data.preparation} if exp.cfg.data.preparation is not None else {}),
        "metrics": {"split": evaluation.split, **metrics},
        **({"calibration": {k: v for k, v in tempered.items() if k != "metrics"}} if tempered is not None else {}),
        "networks": network_record(exp, network),
    }


def network_record(exp: Experiment, network: str) -> list[dict[str, Any]]:
    """The network(s) an export holds, as a config builds them again (arch, widen, stem): what
    ``pretrained`` or an offline teacher's ``checkpoint`` check a published model against."""
    names = exp.cohort.students if network == ENSEMBLE else [network]
    specs = {T: exp.cfg.networks.teacher, **exp.cfg.networks.students}
    return [{"name": n, "arch": specs[n].arch, "widen": specs[n].widen, "stem": specs[n].stem} for n in names]


def publication_record(side: dict[str, Any], weights: str) -> dict[str, Any]:
    """What a published model (a MONAI Bundle's metadata, a Hub repository's config.json) says of
    its network for kdstyles to load it back (``pretrained``, an offline teacher's ``checkpoint``):
    the network(s) and how they were built, the file of their plain weights, the input, the
    normalisation, the classes and the test metrics."""
    keys = ("task", "network", "networks", "input", "normalisation", "class_names", "metrics", "volumes",
            "calibration")
    return {"format": "kdstyles-network", "version": __version__, "weights": weights,
            **{k: side[k] for k in keys if k in side}}


def plain_state_dict(exp: Experiment, network: str) -> dict[str, torch.Tensor]:
    """The exported network's own weights by kdstyles' names (an ensemble's prefixed by each
    student's name), contiguous and on the CPU, for a safetensors or torch file."""
    names = exp.cohort.students if network == ENSEMBLE else [network]
    out = {}
    for n in names:
        prefix = f"{n}." if network == ENSEMBLE else ""
        for k, v in float_copy(exp.cohort.networks[n]).state_dict().items():
            out[prefix + k] = v.detach().cpu().contiguous()
    return out


def export_run(run_dir: str | Path, network: str | None = None, fmt: str = "onnx", out: str | Path | None = None,
               checkpoint: str = "best", samples: int = 8, quantize: str | None = None,
               calibration: int | None = None, calibration_method: str | None = None, max_drop: float | None = None,
               say: Callable[[str], None] | None = None, calibrated: bool = False) -> dict[str, Any]:
    """Export one network of a run (None: its first student); returns the sidecar (also
    written next to the model). The model card's metrics are the run's evaluation of that
    checkpoint (eval.json); where there is none, the run is evaluated first and ``say`` (default:
    standard error) is told so before it starts.

    ``quantize`` (int8, fp16): the float model is then quantized too (:mod:`kdstyles.deploy.quantize`)
    and verified against it on the test split; its file, sidecar and card sit beside the float
    model's (``s1.int8.onnx``), the float sidecar returned gains ``quantized``. A quantized model
    that loses more than ``max_drop`` points of the headline metric is kept as
    ``s1.int8.rejected.onnx`` and :class:`~kdstyles.deploy.quantize.TooLossy` is raised.

    ``calibrated``: the model outputs its probabilities at the temperature ``evaluate
    --calibrated`` fitted on the validation split (read from eval.json of the same checkpoint:
    one line saying what to run where there is none); the sidecar and the card say the
    temperature and the validation ECE it came from, and give the calibrated metrics."""
    say = say or (lambda m: print(m, file=sys.stderr))
    if fmt not in FORMATS:
        raise KDError(f"--format '{fmt}' is not known; allowed: {', '.join(FORMATS)}, bundle")
    check_options(quantize, calibration_method, calibration, max_drop, fmt)
    calibration = CALIBRATION if calibration is None else calibration
    calibration_method = calibration_method or "minmax"
    max_drop = MAX_DROP if max_drop is None else max_drop
    run_dir = Path(run_dir)
    exp, model, info, network, tempered = open_export(run_dir, network, checkpoint, calibrated)
    inputs = exp.inputs(info)
    path = Path(out) if out is not None else RunFolder(run_dir).export_dir / f"{network}{FORMATS[fmt]}"
    if path.suffix != FORMATS[fmt]:
        raise KDError(f"--out '{path}': a {fmt} model file ends in {FORMATS[fmt]}")
    gen = torch.Generator().manual_seed(0)
    sample = inputs.sample(samples, random=True, generator=gen)
    diff = (_export_onnx if fmt == "onnx" else _export_torchscript)(model, sample, path)

    evaluation = card_evaluation(exp, run_dir, checkpoint, say)
    sidecar = {"format": fmt, "file": path.name,
               **describe(exp, info, network, inputs, evaluation, checkpoint, run_dir, tempered),
               "verification": {"samples": samples, "max_abs_diff": diff,
                                "against": "onnxruntime" if fmt == "onnx" else "torch.jit.load"}}
    write_json(path.with_suffix(".json"), sidecar)
    write_text(path.with_suffix(".md"), model_card(exp, info, network, model, sidecar, sample))
    if quantize is not None:
        q_side = export_quantized(exp, info, network, model, sidecar, path, inputs, sample, quantize, calibration,
                                  calibration_method, max_drop, say)
        sidecar = {**sidecar, "quantized": q_side}
        if not q_side["quantization"]["accepted"]:
            q = q_side["quantization"]
            raise TooLossy(f"{quantize} {network} lost {-q['change_points']:.2f} points of {q['metric']} on the test "
                           f"split (interval {q['interval_points'][0]:+.2f} to {q['interval_points'][1]:+.2f}; "
                           f"--max-drop {max_drop:g}); kept as {path.parent / q_side['file']} (try "
                           "--calibration-method entropy or percentile, more --calibration images, or fp16)",
                           sidecar)
    return sidecar


def export_quantized(exp: Experiment, info: RunInfo, network: str, model: nn.Module, sidecar: dict[str, Any],
                     path: Path, inputs: Any, sample: torch.Tensor, quantize: str, calibration: int, method: str,
                     max_drop: float, say: Callable[[str], None]) -> dict[str, Any]:
    """The quantized model beside the float one at ``path``, verified against it on the test
    split; its sidecar (also written) and card."""
    q_path = quantized_path(path, quantize)
    seed = exp.cfg.train.seed
    if quantize == "int8" and inputs.spatial_dims not in INT8_KERNEL_DIMS:
        say("int8 volumes: onnxruntime's CPU provider has no int8 kernel for 3D convolutions and runs them "
            "dequantized (smaller file, slower); the verification below measures it")
    batches = calibration_batches(exp.data.splits["train"], calibration, seed) if quantize == "int8" else []
    how = quantize_file(path, q_path, quantize, batches, method, say)
    task = exp.cohort.task
    metric = exp.cfg.train.selection_metric if exp.cfg.train.selection_metric != "auto" else task.selection
    check = verify(exp, path, q_path, inputs, metric)
    accepted = -check["change_points"] <= max_drop
    rejected = rejected_path(q_path)
    # the other name's files are an earlier export's verdict, now replaced
    stale = [rejected] if accepted else [q_path.with_suffix(".json"), q_path.with_suffix(".md")]
    if not accepted:  # kept under a name that says so
        os.replace(q_path, rejected)
        q_path = rejected
    for old in stale:
        for f in (old, old.with_suffix(".json"), old.with_suffix(".md")):
            f.unlink(missing_ok=True)
    q_side = {
        **sidecar, "file": q_path.name,
        "metrics": {"split": "test", "through": "onnxruntime", **check["quantized"]["metrics"]},
        "verification": {"against": "the float32 model on the test split", "images": check["images"],
                         "agreement": check["agreement"]},
        "quantization": {"type": quantize, "how": how, "accepted": accepted, "max_drop_points": max_drop,
                         "calibration": {"images": sum(len(b) for b in batches), "method": method if batches else None,
                                         "from": "train split, prepared as in training, not augmented",
                                         "seed": seed},
                         **check},
    }
    write_json(q_path.with_suffix(".json"), q_side)
    write_text(q_path.with_suffix(".md"), model_card(exp, info, network, model, q_side, sample)
               + quantization_card(q_side))
    return q_side


def quantization_card(side: dict[str, Any]) -> str:
    """The model card's section comparing the quantized model with the float one."""
    q = side["quantization"]
    w = worded(q)
    f, m = w["float32"], w["quantized"]
    calibrated = (f"calibrated ({q['how']}, {q['calibration']['method']}) on {q['calibration']['images']} training "
                  f"images drawn with seed {q['calibration']['seed']}" if q["calibration"]["images"] else q["how"])
    verdict = "accepted" if q["accepted"] else f"**rejected: it lost more than {q['max_drop_points']:g} points**"
    return f"""
## Quantization ({q['type']}, {verdict})

{q['type']} model {calibrated}; both files scored through onnxruntime on the {q['images']}
{q['split']} images with the task's metrics ({q['threads']} CPU threads for the latencies).

| | float32 | {q['type']} |
|---|---|---|
| {w['metric']} | {f['metric']} | {m['metric']} |
| file (MB) | {f['mb']} | {m['mb']} |
| latency, batch 1 (ms) | {f['b1']} | {m['b1']} |
| latency, batch 32 (ms) | {f['b32']} | {m['b32']} |

Change of {w['metric']}: {w['change']} (95% paired interval); agreement of the two models'
predictions: {w['agreement']}.
"""


def model_card(exp: Experiment, info: RunInfo, network: str, model: nn.Module, sidecar: dict[str, Any],
               sample: torch.Tensor) -> str:
    cfg = exp.cfg
    one = sample[:1]
    rows = [(network, count_parameters(model), flops_per_image(model, one), cpu_latency_ms(model, one))]
    if T in exp.cohort.networks and network != T:
        teacher = deployable(exp, T, info)
        rows.append((f"{T} (reference)", count_parameters(teacher), flops_per_image(teacher, one),
                     cpu_latency_ms(teacher, one)))
    m = sidecar["metrics"]
    source = SOURCES[cfg.data.source].describe(cfg.data, exp.cohort.task)
    selection = cfg.train.selection_metric if cfg.train.selection_metric != "auto" else exp.cohort.task.selection
    metric_rows = "\n".join(f"| {label(k)} | {m[k]:.4f} |" for k in task_metrics(exp.cohort.task.name, m)
                            if isinstance(m.get(k), float))
    c = sidecar.get("calibration")
    if c:  # the model outputs probabilities at the fitted temperature: say so under the metrics
        from ..common.calibration import temperature_words

        metric_rows += (f"\n\nProbabilities are temperature-scaled ({temperature_words(c['temperature'])}), fitted on the "
                        f"{'validation' if c['fitted_on'] == 'val' else c['fitted_on']} split (its ECE "
                        f"{c['val_ece'][0]:.4f} before, {c['val_ece'][1]:.4f} after); the metrics above are at it.")
        ps = c.get("prediction_sets")
        if ps:
            metric_rows += (f" `kdstyles predict` also writes each image's prediction set ({ps['method'].upper()}, "
                            f"split-conformal, fitted on the validation split for {ps['coverage']:.0%} coverage): "
                            f"on the test split it held the true class for {ps['test_coverage']:.1%} of images, "
                            f"with {ps['test_set_size']:.2f} classes on average. The guarantee holds for images "
                            "like the validation split's; on another site's images, measure it again.")
    size_rows = "\n".join(f"| {n} | {p:,} | {f / 1e6:.1f} | {lat:.2f} |" for n, p, f, lat in rows)
    inp = sidecar["input"]
    kind = "volumes" if "depth" in inp else "images"
    shape = ", ".join(str(inp[k]) for k in ("depth", "height", "width") if k in inp)
    task = exp.cohort.task
    output = task.output_words
    how = (f"`kdstyles predict {sidecar['file']} IMAGES...` does the resizing and writes a CSV." if kind == "images"
           else f"`kdstyles predict {sidecar['file']} VOLUMES...` (NIfTI/NRRD) prepares each volume as in training "
                f"(orientation, spacing, window: the sidecar's `volumes`) and writes a CSV"
                + task.volume_prediction_words(sidecar["volumes"]["windows"]))
    v = sidecar["verification"]
    checked = (f"The exported model matched PyTorch to {v['max_abs_diff']:.2e} (max absolute difference on "
               f"{v['samples']} inputs, checked with {v['against']})." if "max_abs_diff" in v else
               f"It was checked against {v['against']} ({v['images']} images; below).")
    unl, mix = info.unlabeled, info.mix
    extra = (f" Its distillation edges also learned from {unl['about']}, without their labels." if unl else "") + \
        (f" Training batches were mixed (mixup {mix['mixup']:g}, CutMix {mix['cutmix']:g}, probability "
         f"{mix['prob']:g})." if mix else "")
    unfinished = "" if info.status == "finished" else \
        f" of {cfg.train.epochs} (**the run is {info.status}: it has not finished**)"
    parts = (info.reused_heads or {}).get(network)
    if parts:  # simkd: the student classifies through the teacher's head, carried in this file
        size_rows += (f"\n\nOf {network}'s {sum(parts.values()):,} parameters, {parts['own']:,} are its own network's; "
                      f"{parts['projector']:,} are the projector and {parts['teacher_head']:,} the teacher's classifier "
                      "it learned to use (SimKD), both part of this model.")
    external = external_rows(exp, network, sidecar["checkpoint"], sidecar.get("calibration") is not None)
    return f"""# Model card: `{network}` from `{sidecar['run_dir']}`

Exported by kdstyles {__version__} as {sidecar['format']} (`{sidecar['file']}`), from the
`{sidecar['checkpoint']}` checkpoint.

## Task and data

{task.title} of {sidecar['input']['channels']}-channel {sidecar['input']['height']} px {kind} into
{len(sidecar['class_names'])} classes: {', '.join(sidecar['class_names'])}. Trained on {source}.{extra}

## Training

Preset `{info.preset}` (edges: {'; '.join(info.edges) or 'none'}), seed {cfg.train.seed},
{info.epochs_done} epochs{unfinished}, model selection on validation {selection}.

## Metrics ({m.get('split', 'test')} split)

| metric | value |
|---|---|
{metric_rows}
{external}
## Size and speed (CPU, batch 1, {torch.get_num_threads()} threads)

| network | parameters | MFLOPs / image | latency (ms) |
|---|---|---|---|
{size_rows}

## Use

Input: float32 {kind} in [0, 1], shape (N, {sidecar['input']['channels']}, {shape}); the training
normalisation is inside the model. Output: {output}. {how} {checked}

A research model: validate it on data from your own site before any use.
"""
