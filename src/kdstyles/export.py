"""Export a trained network (or the student ensemble) as a self-contained model file.

The exported model takes float32 images in [0, 1], shape (N, C, H, W), and returns class
probabilities (N, K): the training normalisation is inside, and the ensemble averages its
students' softmax probabilities. Next to the model: a JSON sidecar (everything ``predict``
needs, and the export's numerical check) and a Markdown model card.
"""

from __future__ import annotations

import io
import sys
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from . import __version__
from .api import Experiment
from .data.sources import SOURCES
from .errors import KDError
from .evaluate import ENSEMBLE
from .fileio import atomic_write, write_json, write_text
from .measure import cpu_latency_ms
from .metrics import label, task_metrics
from .models.zoo import count_parameters, flops_per_image
from .routing import T
from .runfolder import RunFolder

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class Deployable(nn.Module):
    """[0, 1] images -> probabilities as the task activates them (softmax over classes;
    detection: heatmap probabilities and box channels); one network or the mean of several."""

    def __init__(self, networks: list[nn.Module], mean: list[float], std: list[float], task, dims: int = 2):
        super().__init__()
        self.networks = nn.ModuleList(networks)
        self.task = task
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, *(1,) * dims))
        self.register_buffer("std", torch.tensor(std).view(1, -1, *(1,) * dims))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        probs = [self.task.activate(net(x)) for net in self.networks]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


def deployable(exp: Experiment, network: str, info: dict[str, Any] | None = None) -> Deployable:
    """The network of a run (weights already loaded) wrapped for deployment."""
    cohort = exp.cohort
    allowed = cohort.names + ([ENSEMBLE] if len(cohort.students) > 1 else [])
    if network not in allowed:
        raise KDError(f"--network '{network}' is not in this run; allowed: {', '.join(allowed)}")
    names = cohort.students if network == ENSEMBLE else [network]
    info = info or exp.run_info()
    inputs = exp.inputs(info)
    return Deployable([cohort.networks[n] for n in names], list(inputs.mean), list(inputs.std), cohort.task,
                      inputs.spatial_dims).eval()


def open_run(run_dir: str | Path, network: str | None, checkpoint: str = "best"
             ) -> tuple[Experiment, Deployable, dict[str, Any], str]:
    """A run folder's network (or ensemble; None: its first student) with its weights, ready to
    deploy, its run.json and the network's name."""
    exp = Experiment.from_run(run_dir, quiet=True)
    info = exp.run_info()
    exp.load_weights(checkpoint)
    network = network or exp.cohort.students[0]
    return exp, deployable(exp, network, info), info, network


def _export_onnx(model: nn.Module, sample: torch.Tensor, path: Path) -> float:
    import numpy as np
    import onnxruntime as ort

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
    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, sample), tmp)

    atomic_write(path, write)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return float((loaded(sample) - model(sample)).abs().max())


def export_run(run_dir: str | Path, network: str | None = None, fmt: str = "onnx", out: str | Path | None = None,
               checkpoint: str = "best", samples: int = 8,
               say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export one network of a run (None: its first student); returns the sidecar (also
    written next to the model). The model card's metrics are the run's evaluation of that
    checkpoint (eval.json); where there is none, the run is evaluated first and ``say`` (default:
    standard error) is told so before it starts."""
    if fmt not in FORMATS:
        raise KDError(f"--format '{fmt}' is not known; allowed: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    exp, model, info, network = open_run(run_dir, network, checkpoint)
    inputs = exp.inputs(info)
    path = Path(out) if out is not None else RunFolder(run_dir).export_dir / f"{network}{FORMATS[fmt]}"
    if path.suffix != FORMATS[fmt]:
        raise KDError(f"--out '{path}': a {fmt} model file ends in {FORMATS[fmt]}")
    gen = torch.Generator().manual_seed(0)
    sample = inputs.sample(samples, random=True, generator=gen)
    diff = (_export_onnx if fmt == "onnx" else _export_torchscript)(model, sample, path)

    evaluation = exp.folder.read_eval() if exp.folder.eval_path.is_file() else None
    if evaluation is None or evaluation.get("checkpoint") != checkpoint:
        (say or (lambda m: print(m, file=sys.stderr)))(
            f"{run_dir}: the {checkpoint} checkpoint has not been evaluated (no eval.json of it); evaluating it on "
            "the test split first, for the model card's metrics (kdstyles evaluate writes the same eval.json)")
        evaluation = exp.evaluate(checkpoint=checkpoint)
    metrics = evaluation["networks"].get(network, {})
    best = info.get("best", {})
    epochs = {n: best.get(n, {}).get("epoch") for n in (exp.cohort.students if network == ENSEMBLE else [network])}
    task = exp.cohort.task
    sidecar = {
        "format": fmt, "file": path.name, "kdstyles": __version__, "torch": torch.__version__,
        "task": task.name, "network": network, "run_dir": str(run_dir), "run_status": info.get("status"),
        "preset": info.get("preset"),
        "checkpoint": checkpoint, "epochs": epochs if checkpoint == "best" else {"last": info.get("epochs_done")},
        "input": inputs.sidecar(),
        "output": {"name": "probabilities",
                   "shape": [len(info["class_names"]) if d == "classes" else d for d in task.output_shape(inputs.spatial_dims)]},
        "normalisation": {"mean": list(inputs.mean), "std": list(inputs.std),
                          "applied": "inside the model"},
        "class_names": info["class_names"],
        **({"volumes": exp.cfg.data.preparation} if inputs.space.volumes else {}),
        "metrics": {"split": evaluation.get("split"), **metrics},
        "verification": {"samples": samples, "max_abs_diff": diff,
                         "against": "onnxruntime" if fmt == "onnx" else "torch.jit.load"},
    }
    write_json(path.with_suffix(".json"), sidecar)
    write_text(path.with_suffix(".md"), model_card(exp, info, network, model, sidecar, sample))
    return sidecar


def model_card(exp: Experiment, info: dict[str, Any], network: str, model: nn.Module, sidecar: dict[str, Any],
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
    unl, mix = info.get("unlabeled"), info.get("mix")
    extra = (f" Its distillation edges also learned from {unl['about']}, without their labels." if unl else "") + \
        (f" Training batches were mixed (mixup {mix['mixup']:g}, CutMix {mix['cutmix']:g}, probability "
         f"{mix['prob']:g})." if mix else "")
    unfinished = "" if info.get("status") == "finished" else \
        f" of {cfg.train.epochs} (**the run is {info.get('status')}: it has not finished**)"
    return f"""# Model card: `{network}` from `{sidecar['run_dir']}`

Exported by kdstyles {__version__} as {sidecar['format']} (`{sidecar['file']}`), from the
`{sidecar['checkpoint']}` checkpoint.

## Task and data

{task.title} of {sidecar['input']['channels']}-channel {sidecar['input']['height']} px {kind} into
{len(sidecar['class_names'])} classes: {', '.join(sidecar['class_names'])}. Trained on {source}.{extra}

## Training

Preset `{info.get('preset')}` (edges: {'; '.join(info.get('edges', [])) or 'none'}), seed {cfg.train.seed},
{info.get('epochs_done')} epochs{unfinished}, model selection on validation {selection}.

## Metrics ({m.get('split', 'test')} split)

| metric | value |
|---|---|
{metric_rows}

## Size and speed (CPU, batch 1, {torch.get_num_threads()} threads)

| network | parameters | MFLOPs / image | latency (ms) |
|---|---|---|---|
{size_rows}

## Use

Input: float32 {kind} in [0, 1], shape (N, {sidecar['input']['channels']}, {shape}); the training
normalisation is inside the model. Output: {output}. {how} The exported model matched
PyTorch to {sidecar['verification']['max_abs_diff']:.2e} (max absolute difference on
{sidecar['verification']['samples']} inputs, checked with {sidecar['verification']['against']}).

A research model: validate it on data from your own site before any use.
"""
