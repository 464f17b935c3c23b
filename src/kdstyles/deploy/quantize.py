"""Smaller still: 8-bit (or 16-bit) exported students, and what that costs, measured.

``kdstyles export RUN --quantize int8`` exports the float model as always, then quantizes it
with onnxruntime's static post-training quantization (QDQ format, per-channel int8 weights,
uint8 activations) calibrated on training images prepared exactly as training prepares them
(resized and scaled to [0, 1], patches of volumes cropped as training crops them; not
augmented), drawn with the run's seed; ``fp16`` converts the weights and activations to
16-bit floats. Where static quantization cannot apply, dynamic quantization (weights only) is
used and said in one line.

Either way the quantized file is verified on the run's test split through onnxruntime with
the task's own metrics, against the float file scored the same way: the headline metric and
its change with a paired bootstrap interval over the test images (as ``compare`` pairs
runs), how often the two models agree, file sizes and CPU latency at batch 1 and 32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import KDError

QUANTIZE = ("int8", "fp16")
METHODS = ("minmax", "entropy", "percentile")
CALIBRATION = 256  # training images quantization is calibrated on, by default
MAX_DROP = 1.0  # points of the headline metric a quantized model may lose
REJECTED = ".rejected"  # a quantized file that lost more than --max-drop keeps this before its suffix


class TooLossy(KDError):
    """A quantized model lost more than ``--max-drop`` points (its files are kept, renamed);
    ``sidecar``: the float model's, with the quantized one's under ``quantized``."""

    def __init__(self, message: str, sidecar: dict[str, Any]):
        super().__init__(message)
        self.sidecar = sidecar


def check_options(quantize: str | None, method: str | None, calibration: int | None, max_drop: float | None,
                  fmt: str) -> None:
    """One line naming the option and what is allowed, before anything is exported (None: an
    option not given, its default applies)."""
    if quantize is None:
        given = next((flag for flag, v in (("--calibration", calibration), ("--calibration-method", method),
                                           ("--max-drop", max_drop)) if v is not None), None)
        if given:
            raise KDError(f"{given} applies to a quantized export; add --quantize int8 (or leave {given} out)")
        return
    method = method or METHODS[0]
    calibration = CALIBRATION if calibration is None else calibration
    max_drop = MAX_DROP if max_drop is None else max_drop
    if quantize not in QUANTIZE:
        raise KDError(f"--quantize '{quantize}' is not known; allowed: {', '.join(QUANTIZE)}")
    if fmt != "onnx":
        raise KDError(f"--quantize {quantize}: quantized models are ONNX files; leave out --format {fmt}")
    if method not in METHODS:
        raise KDError(f"--calibration-method '{method}' is not known; allowed: {', '.join(METHODS)}")
    if calibration < 1:
        raise KDError(f"--calibration {calibration}: at least 1 training image is needed to calibrate int8")
    if not max_drop >= 0:
        raise KDError(f"--max-drop {max_drop}: a number of points at least 0")


def quantized_path(path: Path, quantize: str) -> Path:
    """``s1.onnx`` -> ``s1.int8.onnx``."""
    return path.with_name(f"{path.stem}.{quantize}{path.suffix}")


def rejected_path(path: Path) -> Path:
    """``s1.int8.onnx`` -> ``s1.int8.rejected.onnx``: a model that lost more than allowed."""
    return path.with_name(f"{path.stem}{REJECTED}{path.suffix}")


# ----------------------------------------------------------------------------- calibration

def calibration_batches(dataset: Any, count: int, seed: int, batch: int = 32) -> list[np.ndarray]:
    """``count`` training items drawn without replacement with the run's ``seed`` (all of them
    where there are fewer), as the network takes them before augmentation and normalisation
    (``ImageDataset.plain``), in batches of at most ``batch`` (float32, channels first)."""
    n = len(dataset)
    if n == 0:
        raise KDError("--calibration: the training split is empty; nothing to calibrate int8 on")
    pick = np.sort(np.random.default_rng([seed, 0x8B17]).permutation(n)[:count])
    items = [dataset.plain(int(i)).numpy() for i in pick]
    return [np.stack(items[i:i + batch]).astype(np.float32) for i in range(0, len(items), batch)]


class _Reader:
    """onnxruntime's CalibrationDataReader over fixed batches."""

    def __init__(self, batches: list[np.ndarray], name: str = "image"):
        self.batches, self.name, self.i = batches, name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize_file(source: Path, out: Path, quantize: str, batches: list[np.ndarray], method: str = "minmax",
                  say: Callable[[str], None] = print) -> str:
    """Write ``out``, the quantized ``source``; returns how: ``static`` (QDQ, calibrated),
    ``dynamic`` (weights only; said through ``say``) or ``fp16``."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..store.fileio import atomic_write

    if quantize == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        import onnx

        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        atomic_write(out, lambda tmp: onnx.save(model, tmp))
        return "fp16"
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                     "percentile": CalibrationMethod.Percentile}[method]
        head = output_head(str(prepared))
        try:
            atomic_write(out, lambda tmp: quantize_static(
                str(prepared), tmp, _Reader(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                nodes_to_exclude=head))
            return "static"
        except Exception as exc:  # an operator static quantization cannot calibrate
            say(f"static int8 quantization did not apply ({type(exc).__name__}: {str(exc)[:120]}); quantizing the "
                "weights only (dynamic quantization: activations stay float)")
            atomic_write(out, lambda tmp: quantize_dynamic(str(prepared), tmp, weight_type=QuantType.QInt8,
                                                           per_channel=True))
            return "dynamic"


LAYERS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # where the weights are: quantized


def output_head(path: str) -> list[str]:
    """The nodes between the last weighted layers and the model's outputs (softmax or sigmoid,
    the ensemble's mean, box decoding): left in float, so the probabilities a model returns
    are not rounded to 256 steps."""
    import onnx

    graph = onnx.load(path).graph
    producer = {o: n for n in graph.node for o in n.output}
    head, todo = [], [o.name for o in graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen or node.op_type in LAYERS:
            continue
        seen.add(node.name)
        head.append(node.name)
        todo += list(node.input)
    return head


# ----------------------------------------------------------------------------- measuring

def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class Scored:
    """A model's condensed outputs on a split (pooled), its metrics and per-image values."""

    probs: torch.Tensor | None
    labels: torch.Tensor | None
    metrics: dict[str, float]
    per_image: dict[str, list[float]]


def score_files(sessions: dict[str, Any], loader, task, inputs, window=None, spacing: list | None = None
                ) -> dict[str, Scored]:
    """Model files' outputs on a loader's split, read once for all of them and scored by the one
    scorer (:func:`kdstyles.engine.evaluate.score_split`), as ``evaluate`` scores networks: the
    loader's images are normalised and the models normalise inside, so each batch is taken back
    to [0, 1] first; whole volumes are covered by sliding ``window`` s of the model's input (on
    its probabilities, as ``predict`` does)."""
    from ..engine.evaluate import score_split

    mean = torch.tensor(inputs.mean).view(1, -1, *(1,) * inputs.spatial_dims)
    std = torch.tensor(inputs.std).view(1, -1, *(1,) * inputs.spatial_dims)

    def output(sess, x: torch.Tensor) -> torch.Tensor:
        def run(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(sess.run(None, {"image": np.ascontiguousarray(batch.numpy(),
                                                                                             np.float32)})[0]))

        if window is None:
            return task.condense(run(x))
        from monai.inferers import sliding_window_inference

        return task.condense(sliding_window_inference(x, (window.size,) * inputs.spatial_dims, window.batch, run,
                                                      overlap=window.overlap, mode="gaussian"))

    def outputs(x: torch.Tensor, skip: frozenset) -> dict[str, torch.Tensor]:
        x = x * std + mean
        return {n: output(sess, x) for n, sess in sessions.items()}

    with torch.inference_mode():
        scores = score_split(outputs, loader, task, window, spacing, details=False)
    return {n: Scored(scores.probs[n] if scores.pooled else None, scores.labels if scores.pooled else None,
                      scores.metrics.get(n, {}), scores.per_image.get(n, {})) for n in sessions}


def paired_change(task, metric: str, a: Scored, b: Scored, num_classes: int) -> tuple[float, float, float]:
    """``b`` minus ``a`` on the headline metric with its 95% paired bootstrap interval over
    the test images: per-image values subtracted, or (a metric that is not a mean over images)
    the metric of both drawn on the same images."""
    from ..report.analysis import paired_difference
    from ..report.significance import paired_interval

    if metric in a.per_image and metric in b.per_image:
        diff = paired_difference(np.asarray(b.per_image[metric], np.float64),
                                 np.asarray(a.per_image[metric], np.float64), metric)
    elif a.probs is not None and b.probs is not None:
        kept = task.kept_outputs({"a": a.probs, "b": b.probs}, a.labels)
        drawable = task.drawable({k[4:]: v for k, v in kept.items() if k.startswith("out.")}, kept.get("labels"),
                                 num_classes) if kept else {}
        diff = paired_difference(drawable.get("b"), drawable.get("a"), metric) if drawable else None
    else:
        diff = None
    if diff is None:
        value = b.metrics.get(metric, float("nan")) - a.metrics.get(metric, float("nan"))
        return value, float("nan"), float("nan")
    return paired_interval([diff])


def _latency_ms(sess, sample: np.ndarray) -> float:
    from .measure import median_ms

    return median_ms(lambda: sess.run(None, {"image": sample}), repeats=10, warmup=2)


def file_mb(path: Path) -> float:
    return os.path.getsize(path) / 1e6


def verify(exp: Any, float_path: Path, quant_path: Path, inputs: Any, metric: str, threads: int | None = None
           ) -> dict[str, Any]:
    """Both model files scored on the run's test split through onnxruntime with the task's
    metrics; the headline ``metric``'s change in points with its paired interval, the two
    models' agreement (the task's fidelity measure), file sizes, and CPU latency at batch 1 and
    32 on ``threads`` threads (default: all the cores torch uses)."""
    threads = threads or torch.get_num_threads()
    task, data = exp.cohort.task, exp.data
    split = data.splits["test"]
    loader = data.loader("test", exp.cfg.data.batch_size)
    sessions = {"float32": session(float_path, threads), "quantized": session(quant_path, threads)}
    scored = score_files(sessions, loader, task, inputs, split.window, split.spacing)
    change, lo, hi = paired_change(task, metric, scored["float32"], scored["quantized"], data.num_classes)
    both = scored["float32"].probs is not None
    agreement = task.fidelity(scored["float32"].probs, scored["quantized"].probs).get("agreement") if both else None
    if agreement is not None and not agreement == agreement:  # NaN: nothing to agree on (no confident boxes)
        agreement = None
    gen = torch.Generator().manual_seed(0)
    rows = {}
    for name, sess in sessions.items():
        path = float_path if name == "float32" else quant_path
        rows[name] = {"metrics": scored[name].metrics, "mb": file_mb(path),
                      **{f"latency_b{b}_ms": _latency_ms(sess, inputs.sample(b, random=True, generator=gen).numpy())
                         for b in (1, 32)}}
    return {"split": "test", "images": len(split), "metric": metric, "threads": threads,
            "change_points": 100 * change, "interval_points": [100 * lo, 100 * hi], "agreement": agreement,
            **rows}
