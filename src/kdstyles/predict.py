"""Predict classes for new images with an exported model or a run folder.

An ONNX model runs on onnxruntime with numpy and Pillow only: this module imports torch
only for TorchScript models and run folders, so a deployment machine needs no torch.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import KDError
from .imageio import IMAGE_SUFFIXES, read_image


class Predictor:
    """Images in [0, 1] (N, C, H, W) float32 -> class probabilities (N, K, ...); ``task`` writes the rows."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], class_names: list[str], channels: int, size: int,
                 source: str, task: str = "classification"):
        from .tasks import TASKS

        self.run, self.class_names, self.channels, self.size, self.source = run, class_names, channels, size, source
        self.task = TASKS[task](len(class_names))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


VOLUMES = ("kdstyles predict reads 2D image files; this model takes volumes (use kdstyles evaluate, or the "
           "exported ONNX model with (N, C, D, H, W) float32 input in [0, 1])")


def _sidecar(model: Path) -> dict:
    """The JSON sidecar written next to an exported model, checked for what predict needs."""
    from .fileio import read_json

    path = model.with_suffix(".json")
    if not path.is_file():
        raise KDError(f"'{model}' has no sidecar '{path.name}' next to it (written by kdstyles export)")
    side = read_json(path, "export the model again with 'kdstyles export RUN_DIR' to rewrite it")
    try:
        names, inp = side["class_names"], side["input"]
        ok = isinstance(names, list) and len(names) >= 1 and all(
            isinstance(inp[k], int) and inp[k] > 0 for k in ("channels", "height"))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise KDError(f"sidecar '{path}' is damaged (needs class_names and input.channels/height); export the "
                      "model again with 'kdstyles export RUN_DIR' to rewrite it")
    return side


def load_predictor(model: str | Path, network: str = "s1", checkpoint: str = "best") -> Predictor:
    """An exported .onnx or TorchScript .pt file (with its sidecar), or a run folder."""
    model = Path(model)
    if model.is_dir():
        import torch

        from .export import open_run

        exp, net, info = open_run(model, network, checkpoint)
        if exp.cfg.data.dims == 3:
            raise KDError(VOLUMES)

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(batch)).numpy()

        return Predictor(run, info["class_names"], info["channels"], info["image_size"], f"{model} ({network})",
                         exp.cfg.task)
    if not model.is_file():
        raise KDError(f"model '{model}' does not exist (give an exported .onnx/.pt file or a run folder)")
    side = _sidecar(model)
    if "depth" in side["input"]:
        raise KDError(VOLUMES)
    names, ch, size = side["class_names"], side["input"]["channels"], side["input"]["height"]
    task = side.get("task", "classification")
    if model.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise KDError("predicting with an .onnx model needs onnxruntime: pip install onnxruntime") from None
        try:
            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise KDError(f"model '{model}' is not a valid ONNX file ({str(exc).splitlines()[0][:100]})") from None
        return Predictor(lambda b: session.run(None, {"image": b})[0], names, ch, size, str(model), task)
    if model.suffix == ".pt":
        import torch

        try:
            scripted = torch.jit.load(str(model), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise KDError(f"model '{model}' is not a TorchScript file ({str(exc).splitlines()[0][:100]})") from None

        def run_ts(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return scripted(torch.from_numpy(batch)).numpy()

        return Predictor(run_ts, names, ch, size, str(model), task)
    raise KDError(f"model '{model}': expected an .onnx or TorchScript .pt file, or a run folder")


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Image files, folders (searched recursively) and CSV files of paths (column 'path')."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.suffix.lower() == ".csv":
            from .fileio import read_csv

            rows = read_csv(item, "give a CSV with a 'path' column of image files", required=("path",))
            files += [item.parent / row["path"] for row in rows if row["path"]]
        elif item.suffix.lower() in IMAGE_SUFFIXES:
            if not item.is_file():
                raise KDError(f"input image '{item}' does not exist")
            files.append(item)
        else:
            raise KDError(f"input '{item}' is not an image ({', '.join(IMAGE_SUFFIXES)}), a folder or a .csv")
    if not files:
        raise KDError("no input images found")
    return files


def predict(model: str | Path, inputs: list[str | Path], out_dir: str | Path, network: str = "s1",
            batch_size: int = 32, quiet: bool = False) -> Path:
    """``OUT/predictions.csv``, one row per image as the task writes it (classification: path,
    predicted class, its probability, one column per class; segmentation: path, the mask PNG
    written in ``OUT/masks/``, foreground fraction)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .fileio import write_text

    predictor = load_predictor(model, network)
    files = collect_inputs(inputs)
    out_dir = Path(out_dir)
    task, names = predictor.task, predictor.class_names
    rows = []
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), disable=quiet, transient=True) as bar:
        progress = bar.add_task("predict", total=len(files))
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            batch = np.stack([read_image(p, predictor.channels, predictor.size)[0] for p in chunk])
            probs = predictor(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
            rows += [task.prediction_row(path, p, names, out_dir, start + n)
                     for n, (path, p) in enumerate(zip(chunk, probs, strict=True))]
            bar.advance(progress, len(chunk))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(task.prediction_header(names))
    w.writerows(rows)
    out = out_dir / "predictions.csv"
    write_text(out, buf.getvalue())
    return out
