"""Predict classes for new images with an exported model or a run folder.

An ONNX model runs on onnxruntime with numpy and Pillow only: this module imports torch
only for TorchScript models and run folders, so a deployment machine needs no torch.

Volumes (NIfTI/NRRD, for models trained with ``data.spatial_dims: 3``) are prepared as in
training (orientation, spacing, window: recorded in the sidecar) with MONAI, so they need
torch and MONAI: classification resizes each volume to the model's input; segmentation
slides windows of the input's size over the whole volume and writes the mask as NIfTI on
the input's own grid, with its affine; detection resizes, or slides windows when the model
was trained on patches, and writes boxes in world millimetres.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.dims import VOLUME_SUFFIXES, Dims, dims, of_axes
from ..errors import KDError
from ..store.imageio import read_image, visible_files
from ..tasks import DEFAULT_TASK


class Predictor:
    """Images in [0, 1] (N, C, H, W) float32 -> class probabilities (N, K, ...); ``task`` writes the rows."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], class_names: list[str], channels: int, size: int,
                 source: str, task: str = DEFAULT_TASK, preparation: dict | None = None, sets: dict | None = None,
                 spatial_dims: int = 2):
        from ..tasks import TASKS

        self.run, self.class_names, self.channels, self.size, self.source = run, class_names, channels, size, source
        self.task = TASKS[task](len(class_names))
        self.space = dims(spatial_dims)  # what it takes: images or volumes
        self.preparation = preparation  # volume models: orientation, spacing, window, overlap
        self.sets = sets  # export --calibrated: the conformal method and threshold of prediction sets

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


def _sidecar(model: Path) -> dict:
    """The JSON sidecar written next to an exported model, checked for what predict needs."""
    from ..store.fileio import read_json
    from ..tasks import TASKS

    path = model.with_suffix(".json")
    again = "export the model again with 'kdstyles export RUN_DIR' to rewrite it"
    if not path.is_file():
        raise KDError(f"'{model}' has no sidecar '{path.name}' next to it (written by kdstyles export)")
    side = read_json(path, again)
    try:
        names, inp = side["class_names"], side["input"]
        ok = isinstance(names, list) and len(names) >= 1 and all(isinstance(n, str) for n in names) and all(
            isinstance(inp[k], int) and not isinstance(inp[k], bool) and inp[k] > 0
            for k in ("channels", "height", *(["depth"] if "depth" in inp else [])))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise KDError(f"sidecar '{path}' is damaged (needs class_names, a list of names, and input.channels/height, "
                      f"whole numbers); {again}")
    task = side.get("task", DEFAULT_TASK)
    if side.get("plugins"):  # the run's plugins (a task of their own): imported as its config imported them
        from ..plugins import load_plugins

        load_plugins(side["plugins"], where=f"sidecar '{path}' plugins")
    if task not in TASKS:
        raise KDError(f"sidecar '{path}': task {task!r} is not known (allowed: {', '.join(TASKS)}); {again}")
    if "depth" in inp and not isinstance(side.get("volumes"), dict):
        raise KDError(f"sidecar '{path}' of a volume model lacks 'volumes' (how inputs are prepared); {again}")
    return side


def _check_model(run: Callable[[np.ndarray], np.ndarray], side: dict, model: Path, declared: list | None) -> None:
    """The sidecar against the model, before any input is read: the input shape the model
    declares (ONNX), then one forward of a blank input, whose output must have the task's shape
    for the sidecar's class list. A class list shorter or longer than the model's outputs, or
    the wrong channels or size, is one line naming both files."""
    from ..tasks import TASKS

    inp = side["input"]
    shape = of_axes(inp).shape(1, inp["channels"], inp["height"])
    where = f"sidecar '{model.with_suffix('.json')}' does not fit model '{model}'"
    again = "export the model again with 'kdstyles export RUN_DIR'"
    given = f"input {'x'.join(map(str, shape[1:]))} (channels x size)"
    if declared is not None:
        wrong = next(((axis, got) for axis, (want, got) in enumerate(zip(shape, declared)) if axis
                      and isinstance(got, int) and got != want), None)
        if len(declared) != len(shape) or wrong:
            takes = f"{len(declared) - 2}D inputs" if len(declared) != len(shape) else \
                f"{wrong[1]} channels" if wrong[0] == 1 else f"inputs of size {wrong[1]}"
            raise KDError(f"{where}: the sidecar gives {given}, the model takes {takes}; {again}")
    blank = np.zeros(shape, np.float32)
    try:
        out = np.asarray(run(blank))
    except Exception as exc:  # noqa: BLE001 (onnxruntime and TorchScript raise their own types)
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise KDError(f"{where}: the sidecar gives {given}, on which the model fails ({reason}); {again}") from None
    task = TASKS[side.get("task", DEFAULT_TASK)](len(side["class_names"]))
    try:
        task.check_output(where, out, blank)
    except KDError as exc:
        raise KDError(f"{exc} (the sidecar lists {len(side['class_names'])} class names); {again}") from None


def rejected(side: dict, model: Path) -> str | None:
    """Why a quantized model's sidecar says export rejected it (it lost more than --max-drop on
    the test split), or None."""
    q = side.get("quantization")
    if not isinstance(q, dict) or q.get("accepted") is not False:
        return None
    try:
        lost = f"lost {-float(q['change_points']):.2f} points of {q['metric']} on the test split (more than " \
               f"--max-drop {float(q['max_drop_points']):g})"
    except (KeyError, TypeError, ValueError):
        lost = "lost more than --max-drop allowed on the test split"
    return f"model '{model}' was rejected by kdstyles export: its {q.get('type', 'quantized')} weights {lost}"


PUBLISHED_MODELS = ("model.onnx", "models/model.ts", "model.torchscript.pt")  # a Hub repository's, a bundle's


def published_model(path: Path) -> Path:
    """A folder kdstyles published (a Hub repository: its ONNX model; a MONAI Bundle: its
    TorchScript model), as the model file in it with its sidecar; any other path as it is."""
    from ..store.runfolder import RunFolder

    if path.is_dir() and not RunFolder(path).info_path.is_file():
        return next((path / m for m in PUBLISHED_MODELS if (path / m).is_file() and (path / m).with_suffix(".json")
                     .is_file()), path)
    return path


def load_predictor(model: str | Path, network: str | None = None, checkpoint: str = "best",
                   allow_rejected: bool = False, say: Callable[[str], None] | None = None) -> Predictor:
    """An exported .onnx or TorchScript .pt file (with its sidecar), or a run folder. A
    quantized model that export rejected is refused unless ``allow_rejected`` (then ``say``
    is told what it lost)."""
    model = published_model(Path(model))
    if model.is_dir():
        import torch

        from .export import open_run

        exp, net, info, network = open_run(model, network, checkpoint)

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(batch)).numpy()

        inputs = exp.inputs(info)
        return Predictor(run, info.class_names, inputs.channels, inputs.side, f"{model} ({network})",
                         exp.cfg.task, exp.cfg.data.preparation, spatial_dims=exp.cfg.data.dims)
    if not model.is_file():
        raise KDError(f"model '{model}' does not exist (give an exported .onnx/.pt file or a run folder)")
    if model.suffix not in (".onnx", ".pt", ".ts"):
        raise KDError(f"model '{model}': expected an .onnx or TorchScript .pt/.ts file, a run folder, or a folder "
                      "kdstyles published (a MONAI Bundle, a Hub repository)")
    side = _sidecar(model)
    why = rejected(side, model)
    if why and not allow_rejected:
        raise KDError(f"{why}; predict with the float model beside it, or add --allow-rejected to use it anyway")
    if why and say is not None:
        say(f"{why}; used anyway (--allow-rejected)")
    names, ch, size = side["class_names"], side["input"]["channels"], side["input"]["height"]
    declared = None  # the input shape an ONNX model declares
    if model.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise KDError("predicting with an .onnx model needs onnxruntime: pip install onnxruntime") from None
        try:
            session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise KDError(f"model '{model}' is not a valid ONNX file ({str(exc).splitlines()[0][:100]})") from None
        inputs = session.get_inputs()
        if [i.name for i in inputs] != ["image"]:
            raise KDError(f"model '{model}' takes inputs {', '.join(repr(i.name) for i in inputs) or '(none)'}; a "
                          "kdstyles model takes one, 'image' (export it with 'kdstyles export RUN_DIR')")
        declared = list(inputs[0].shape)

        def run(batch: np.ndarray) -> np.ndarray:
            return session.run(None, {"image": batch})[0]
    else:
        import torch

        try:
            scripted = torch.jit.load(str(model), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise KDError(f"model '{model}' is not a TorchScript file ({str(exc).splitlines()[0][:100]})") from None

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return scripted(torch.from_numpy(batch)).numpy()
    _check_model(run, side, model, declared)
    return Predictor(run, names, ch, size, str(model), side.get("task", DEFAULT_TASK), side.get("volumes"),
                     side.get("calibration", {}).get("prediction_sets"), of_axes(side["input"]).n)


def collect_inputs(inputs: list[str | Path], space: Dims = dims(2)) -> list[Path]:
    """Image files (volume files for a volume model), folders (searched recursively) and CSV
    files of paths (column 'path')."""
    what, suffixes, fits = space.item, space.suffixes, space.takes
    files: list[Path] = []
    searched: list[str] = []  # folders and CSV files that gave nothing, and what they hold instead
    for item in map(Path, inputs):
        if item.is_dir():
            found = visible_files(item)
            files += [p for p in found if fits(p)]
            if not any(fits(p) for p in found):
                other = Counter(_suffix(p) for p in found)
                held = ", ".join(f"{n} {suffix}" for suffix, n in other.most_common(3))
                searched.append(f"folder '{item}' ({f'it holds {held}' if found else 'empty'})")
        elif item.suffix.lower() == ".csv":
            from ..store.fileio import read_csv

            rows = read_csv(item, f"give a CSV with a 'path' column of {what} files", required=("path",))
            listed = [item.parent / row["path"] for row in rows if row["path"]]
            files += listed
            if not listed:
                searched.append(f"CSV file '{item}' (no paths in its 'path' column)")
        elif fits(item):
            if not item.is_file():
                raise KDError(f"input {what} '{item}' does not exist")
            files.append(item)
        else:
            elsewhere = any(dims(n).takes(item) for n in (2, 3))  # an input of the other kind
            other = f" (this model takes {space.kind})" if elsewhere else ""
            raise KDError(f"input '{item}' is not a{'n' if what == 'image' else ''} {what} "
                          f"({', '.join(suffixes)}), a folder or a .csv{other}")
    if not files:
        raise KDError(f"no input {what}s found ({', '.join(suffixes)}) in {'; '.join(searched)}")
    return files


def _suffix(path: Path) -> str:
    """A file's kind for messages: its suffix in lower case (``.nii.gz`` whole), or 'no suffix'."""
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), path.suffix.lower() or "(no suffix)") + " file(s)"


def predict(model: str | Path, inputs: list[str | Path], out_dir: str | Path, network: str | None = None,
            batch_size: int = 32, quiet: bool = False, skip_unreadable: bool = False, allow_rejected: bool = False,
            say: Callable[[str], None] | None = None) -> Path:
    """``OUT/predictions.csv``, one row per image as the task writes it (classification: path,
    predicted class, its probability, one column per class, and with a model exported
    ``--calibrated`` its prediction set; segmentation: path, the mask PNG
    written in ``OUT/masks/``, foreground fraction). An input that cannot be read stops
    everything with its one line, or with ``skip_unreadable`` is listed in ``OUT/skipped.csv``
    (path, reason) while the rest are predicted."""
    from ..store.fileio import write_text
    from ..common.progress import Steps

    from ..store.fileio import check_path_text

    try:
        check_path_text(str(out_dir))
    except ValueError as exc:
        raise KDError(f"--out '{out_dir}': {exc}") from None
    predictor = load_predictor(model, network, allow_rejected=allow_rejected, say=say)
    files = collect_inputs(inputs, predictor.space)
    out_dir = Path(out_dir)
    task, names = predictor.task, predictor.class_names
    skipped: list[tuple[Path, str]] = []

    def attempt(path: Path, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except KDError as exc:
            if not skip_unreadable:
                raise KDError(f"{exc}; --skip-unreadable predicts the other inputs and lists such files in "
                              f"{out_dir / SKIPPED}") from None
            skipped.append((path, str(exc)))
            return None

    with Steps(quiet) as bar:
        progress = bar.add_task(f"predicting {len(files)} {predictor.space.unit}", len(files))
        rows = PREDICT[predictor.space.n](predictor, files, out_dir, batch_size, attempt,
                                          lambda n: bar.advance(progress, n))
    (out_dir / SKIPPED).unlink(missing_ok=True)  # from an earlier prediction into this folder
    if skipped:
        buf = io.StringIO()
        csv.writer(buf).writerows([["path", "reason"], *[[str(p), why] for p, why in skipped]])
        write_text(out_dir / SKIPPED, buf.getvalue())
        if not rows:
            raise KDError(f"none of the {len(files)} inputs could be read; see {out_dir / SKIPPED}")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(task.prediction_header(names, predictor.space)
               + (["prediction_set"] if predictor.sets else []))
    w.writerows(rows)
    out = out_dir / "predictions.csv"
    write_text(out, buf.getvalue())
    return out


SKIPPED = "skipped.csv"


def _set_cells(predictor: Predictor, probs: np.ndarray) -> list[list[str]]:
    """Each image's prediction set as one cell, its classes joined by '|' (most likely first;
    nothing when the model carries no conformal threshold)."""
    if not predictor.sets:
        return [[] for _ in probs]
    from ..common.sets import prediction_sets

    sets = prediction_sets(probs, predictor.sets["threshold"], predictor.sets["method"])
    return [["|".join(predictor.class_names[k] for k in np.argsort(-p, kind="stable") if member[k])]
            for p, member in zip(probs, sets, strict=True)]


def _predict_images(predictor: Predictor, files: list[Path], out_dir: Path, batch_size: int,
                    attempt: Callable, advance: Callable[[int], Any]) -> list[list[str]]:
    """Every image's row, ``batch_size`` images a batch (``attempt``: one read, its error kept
    or raised)."""
    rows: list[list[str]] = []
    for start in range(0, len(files), batch_size):
        read = [(start + n, p, attempt(p, lambda p=p: read_image(p, predictor.channels, predictor.size)[0]))
                for n, p in enumerate(files[start:start + batch_size])]
        read = [item for item in read if item[2] is not None]
        if read:
            batch = np.stack([image for _, _, image in read])
            probs = predictor(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0)
            rows += [predictor.task.prediction_row(path, p, predictor.class_names, out_dir, index) + in_set
                     for (index, path, _), p, in_set in zip(read, probs, _set_cells(predictor, probs), strict=True)]
        advance(min(batch_size, len(files) - start))
    return rows


def _predict_volumes(predictor: Predictor, files: list[Path], out_dir: Path, window_batch: int,
                     attempt: Callable, advance: Callable[[int], Any]) -> list[list[str]]:
    """Every volume's row, one volume at a time (:func:`_predict_volume`)."""
    rows: list[list[str]] = []
    for index, path in enumerate(files):
        row = attempt(path, lambda: _predict_volume(predictor, path, out_dir, index, window_batch))
        rows += [row] if row is not None else []
        advance(1)
    return rows


def _predict_volume(predictor: Predictor, path: Path, out_dir: Path, index: int, window_batch: int) -> list[str]:
    """One volume's row: classification (and detection of a model trained on whole volumes) of the
    volume resized to the model's input; detection of a model trained on patches by sliding
    windows of its input over the whole volume; or a segmentation by sliding windows written
    as a NIfTI mask on the input's grid. Windows blend the exported model's outputs
    (probabilities), where evaluate blends logits: the two agree closely, not to the bit."""
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from ..data import volumes
    from ..data.labels import labels_of

    settings = predictor.preparation
    prepared = volumes.select_modalities(volumes.prepare(path, None, volumes.Preparation.of(settings)),
                                         settings.get("modalities"), path)
    if prepared.image.shape[-1] != predictor.channels:
        raise KDError(f"volume '{path}' has {prepared.image.shape[-1]} channels; the model takes "
                      f"{predictor.channels}")
    x = torch.from_numpy(prepared.image).movedim(-1, 0)[None].float().div_(255)
    size = (predictor.size,) * predictor.space.n

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(predictor(np.ascontiguousarray(batch.numpy(), dtype=np.float32))))

    masks = labels_of(predictor.task).per_pixel  # a class per voxel: a mask on the input's grid
    if masks or settings.get("windows", False):
        with torch.inference_mode():
            probs = sliding_window_inference(x, size, window_batch, run, overlap=settings.get("overlap", 0.25),
                                             mode="gaussian")[0].numpy()
    else:  # the whole volume resized to the model's input
        probs = run(F.interpolate(x, size=size, mode=predictor.space.interpolation, align_corners=False))[0].numpy()
    if not masks:
        return predictor.task.prediction_row(path, probs, predictor.class_names, out_dir, index,
                                             volume=(prepared.image.shape[:3], prepared.affine))
    mask = volumes.restore(probs.argmax(0).astype(np.uint8), prepared)  # on the input's own grid
    mask_path = out_dir / "masks" / f"{index:05d}-{volumes.stem(path)}.nii.gz"
    volumes.write_nifti(mask_path, mask, prepared.source_affine)
    voxel_ml = abs(float(np.linalg.det(prepared.source_affine[:3, :3]))) / 1000.0
    return predictor.task.volume_prediction_row(path, mask_path, mask, voxel_ml, predictor.class_names)


PREDICT = {2: _predict_images, 3: _predict_volumes}  # how inputs are predicted, by spatial dimensions
