"""A run's network as a MONAI Bundle: the folder MONAI Label, MONAI Deploy and the MONAI Model
Zoo load, run by MONAI's own runner (``python -m monai.bundle run``).

::

    NAME/
      configs/metadata.json   MONAI's metadata (versions, task, authors, the network's input and
                              output tensors, the test metrics, references; ``kdstyles``: the network)
      configs/inference.json  preprocessing exactly as the run's (size, channels, [0, 1] scaling;
                              volumes: orientation, spacing, window), the task's postprocessing
      models/model.ts         TorchScript: [0, 1] inputs -> probabilities (normalisation inside)
      models/model.pt         the network's plain state dict (kdstyles' names; loaded back by
                              ``pretrained`` or an offline teacher's ``checkpoint``)
      models/model.json       the sidecar, as beside any export (``kdstyles predict BUNDLE``)
      docs/README.md          the model card, with how to run the bundle
      docs/license.txt        the licence the exporter chose (--license)

The bundle needs MONAI (and pytorch-ignite, as MONAI's evaluator does), not kdstyles: its
network is the TorchScript file, its steps MONAI's transforms.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..errors import KDError
from ..store.fileio import atomic_write, check_folder_text, write_folder, write_json, write_text
from ..store.runfolder import RunFolder
from .export import (_export_torchscript, card_evaluation, describe, model_card, open_export,
                     plain_state_dict, publication_record)

SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
REFERENCES = [
    "Niyaz U, Sambyal AS, Bathula DR. Leveraging different learning styles for improved knowledge distillation "
    "in biomedical imaging. Computers in Biology and Medicine 168, 2024. arXiv:2212.02931",
    "Niyaz U, Bathula DR. Augmenting knowledge distillation with peer-to-peer mutual learning for model "
    "compression. ISBI 2022. arXiv:2110.11023",
    "Hinton G, Vinyals O, Dean J. Distilling the knowledge in a neural network. arXiv:1503.02531, 2015",
    "Zhang Y, Xiang T, Hospedales TM, Lu H. Deep mutual learning. CVPR 2018. arXiv:1706.00384",
]
BUNDLE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # what Pillow reads (no DICOM)
VERSION = "0.1.0"


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` is a bundle kdstyles wrote (its metadata has a ``kdstyles`` record)."""
    meta = folder / "configs" / "metadata.json"
    try:
        return "kdstyles" in json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


# 16-bit, 32-bit integer and float images to 8 bits as kdstyles reads them (store.imageio._to_uint8): kept
# where the values fit 0..255 as integers, else stretched from their minimum to their maximum
TO_8_BIT = ("(Image.fromarray((lambda a, kind: a.astype(numpy.uint8) if kind in 'ui' and a.min() >= 0 and "
            "a.max() <= 255 else (((a - a.min()) / (a.max() - a.min()) * 255 if a.max() > a.min() else a * 0) + 0.5)"
            ".astype(numpy.uint8))(numpy.asarray(im).astype(numpy.float64), numpy.asarray(im).dtype.kind)) "
            "if im.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F') else im)")


def _image_steps(inputs: Any, preparation: dict | None, per_pixel: bool) -> tuple[list[dict], dict, tuple]:
    """Images: read with Pillow, 16-bit and float ones brought to 8 bits, converted to grey or RGB
    and resized (bilinear) to the input as kdstyles reads them (``store.imageio.convert``),
    channels first, scaled to [0, 1]."""
    mode, side = ("L" if inputs.channels == 1 else "RGB"), inputs.side
    steps = [
        {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "reverse_indexing": False,
         "converter": f"$lambda im: {TO_8_BIT}.convert('{mode}').resize(({side}, {side}), Image.Resampling.BILINEAR)"},
        {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel" if mode == "L" else -1},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 255.0, "b_min": 0.0,
         "b_max": 1.0},
    ]
    return steps, {"_target_": "SimpleInferer"}, BUNDLE_IMAGE_SUFFIXES


def _volume_steps(inputs: Any, preparation: dict | None, per_pixel: bool) -> tuple[list[dict], dict, tuple]:
    """Volumes, prepared as kdstyles prepares them for training and predict: orientation,
    spacing (bilinear), the window (or the 0.5-99.5 percentiles per channel) to [0, 1] in 8-bit
    steps, the modalities kept; resized whole to the input (trilinear), or slid over by windows
    of the input's size where masks are predicted or the model was trained on patches."""
    from ..common.dims import VOLUME_SUFFIXES

    p = preparation or {}
    steps: list[dict] = [{"_target_": "LoadImaged", "keys": "image"},
                         {"_target_": "EnsureChannelFirstd", "keys": "image"}]
    if p.get("orientation"):
        steps.append({"_target_": "Orientationd", "keys": "image", "axcodes": p["orientation"]})
    if p.get("spacing"):
        steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(p["spacing"]), "mode": "bilinear"})
    if p.get("window"):
        lo, hi = p["window"]
        steps.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(lo), "a_max": float(hi),
                      "b_min": 0.0, "b_max": 1.0, "clip": True})
    else:
        steps.append({"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": 0.5, "upper": 99.5,
                      "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True})
    steps.append({"_target_": "Lambdad", "keys": "image", "func": "$lambda x: torch.floor(x * 255 + 0.5) / 255"})
    if p.get("modalities") is not None:
        steps.append({"_target_": "Lambdad", "keys": "image", "func": f"$lambda x: x[{list(p['modalities'])}]"})
    size = [inputs.side] * 3
    if per_pixel or p.get("windows"):
        inferer = {"_target_": "SlidingWindowInferer", "roi_size": size, "sw_batch_size": 4,
                   "overlap": p.get("overlap", 0.25), "mode": "gaussian"}
    else:
        steps.append({"_target_": "Resized", "keys": "image", "spatial_size": size, "mode": "trilinear",
                      "align_corners": False})
        inferer = {"_target_": "SimpleInferer"}
    return steps, inferer, VOLUME_SUFFIXES


STEPS: dict[int, Callable] = {2: _image_steps, 3: _volume_steps}  # the bundle's reading, by spatial dimensions
# what reads the inputs, by spatial dimensions: the package, its module, the files
READERS = {2: ("pillow", "PIL", "png/jpeg/tiff/bmp/webp (Pillow)"), 3: ("nibabel", "nibabel", "nifti/nrrd")}


def inference_config(side: dict[str, Any], output: dict[str, Any], per_pixel: bool, batch: int = 8) -> dict:
    """configs/inference.json: MONAI's inference workflow (its required properties: bundle_root,
    device, dataset_dir, dataset, evaluator, network_def, inferer) over every input file under
    ``dataset_dir``, writing under ``output_dir``."""
    from ..common.dims import of_axes
    from ..common.inputs import Inputs

    inp = side["input"]
    space = of_axes(inp)
    inputs = Inputs(inp["channels"], inp["height"], space.n)
    steps, inferer, suffixes = STEPS[space.n](inputs, side.get("volumes"), per_pixel)
    steps.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    return {
        "imports": ["$import glob", "$import os", "$import numpy", "$import torch", "$from PIL import Image"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "torch.jit.load", "f": "$@bundle_root + '/models/model.ts'",
                        "map_location": "@device"},
        "network": "$@network_def.eval()",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '**', '*'), recursive=True))"
                    f" if f.lower().endswith({tuple(suffixes)!r}) and not os.path.basename(f).startswith('.')]",
        "preprocessing": {"_target_": "Compose", "transforms": steps},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1 if per_pixel else batch,
                       "shuffle": False, "num_workers": 0},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": output["postprocessing"]},
        "handlers": output["handlers"],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def metadata(side: dict[str, Any], output: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """configs/metadata.json: the keys MONAI's bundle specification requires (versions, task,
    description, authors, copyright, network_data_format) and the optional ones it knows."""
    import numpy
    import monai

    from ..common.dims import of_axes

    inp, names = side["input"], side["class_names"]
    space = of_axes(inp)
    package, module, files = READERS[space.n]
    metrics = {k: v for k, v in side["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "changelog": {VERSION: f"exported by kdstyles {__version__} from the run {side['run_dir']} "
                               f"({side['network']}, {side['checkpoint']} checkpoint)"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {package: _version(module), "pytorch-ignite": _version("ignite") or "0.4.11"},
        "name": card["name"],
        "task": card["task"],
        "description": card["description"],
        "authors": card["authors"],
        "copyright": card["copyright"],
        "license": card["license"] or "not chosen (see docs/license.txt)",
        "data_source": card["data_source"],
        "data_type": files,
        "image_classes": f"{inp['channels']}-channel {space.unit} scaled to [0, 1]; the "
                         "training normalisation is inside the model",
        "pred_classes": f"{len(names)} channels: " + ", ".join(f"{k} {n}" for k, n in enumerate(names)),
        "eval_metrics": metrics,
        "intended_use": "A research model: validate it on data from your own site before any use on patients.",
        "references": REFERENCES,
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": card["modality"],
                "num_channels": inp["channels"], "spatial_shape": [inp[a] for a in space.axes], "dtype": "float32",
                "value_range": [0, 1], "is_patch_data": bool(side.get("volumes", {}).get("windows")),
                "channel_def": {str(k): f"channel {k}" for k in range(inp["channels"])}}},
            "outputs": {"pred": {
                "type": output["type"], "format": output["format"], "modality": "n/a", "num_channels": len(names),
                "spatial_shape": output["spatial_shape"], "dtype": "float32", "value_range": output["value_range"],
                "is_patch_data": False, "channel_def": {str(k): n for k, n in enumerate(names)}}},
        },
        "kdstyles": publication_record(side, "models/model.pt"),
    }


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return ""


def _license_text(license: str | None, copyright: str) -> str:
    if not license:
        return (f"{copyright}\n\nNo licence was chosen when this bundle was exported (kdstyles export --format bundle "
                "--license SPDX-ID). Without one, ask the authors before reusing the weights. The licence of the "
                "training data applies to them too.\n")
    return (f"SPDX-License-Identifier: {license}\n\n{copyright}\n\nThe weights in models/ are released under "
            f"{license} (https://spdx.org/licenses/{license}.html). The licence of the training data applies to "
            "them too.\n")


def bundle_usage(output: dict[str, Any]) -> str:
    """The model card's section on running the bundle."""
    return f"""
## Run this MONAI Bundle

With MONAI and pytorch-ignite installed (no kdstyles needed), from this folder:

```
python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
    --dataset_dir /path/to/inputs --output_dir /path/to/predictions
```

Every input file under `dataset_dir` is read and prepared as in training (configs/inference.json's
`preprocessing`), run through `models/model.ts`, and written to `output_dir`: {output['writes']}.
`models/model.pt` holds the network's own weights (kdstyles' names): `kdstyles` takes this folder
as `networks.<name>.pretrained` or as an offline teacher's `checkpoint`.
"""


def export_bundle(run_dir: str | Path, network: str | None = None, out: str | Path | None = None,
                  checkpoint: str = "best", calibrated: bool = False, authors: str | None = None,
                  license: str | None = None, modality: str = "n/a", samples: int = 8,
                  say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write a run's network (None: its first student) as a MONAI Bundle folder (default
    RUN/export/NETWORK_bundle); returns its sidecar-like description (``folder`` added). A task
    whose output a bundle cannot describe (detection) is one line before anything is written."""
    from ..data.sources import SOURCES

    say = say or (lambda m: print(m, file=sys.stderr))
    run_dir = Path(run_dir)
    if out is not None:
        check_folder_text(out, "--out")
    if license is not None and not license.replace("-", "").replace(".", "").replace("+", "").isalnum():
        raise KDError(f"--license '{license}': give an SPDX identifier such as MIT, Apache-2.0 or CC-BY-4.0")
    exp, model, info, network, tempered = open_export(run_dir, network, checkpoint, calibrated)
    task = exp.cohort.task
    if task.bundle_refusal:
        raise KDError(f"--format bundle: task {task.name}: {task.bundle_refusal}")
    folder = Path(out) if out is not None else RunFolder(run_dir).export_dir / f"{network}_bundle"
    if folder.exists() and not folder.is_dir():
        raise KDError(f"--out '{folder}' is a file; a bundle is a folder")
    inputs = exp.inputs(info)
    evaluation = card_evaluation(exp, run_dir, checkpoint, say)
    sample = inputs.sample(samples, random=True, generator=torch.Generator().manual_seed(0))
    output = task.bundle_output(info.class_names, inputs.side, inputs.spatial_dims)
    authors = authors or f"the authors of the kdstyles run {run_dir.name} (kdstyles export --authors)"
    year = datetime.date.today().year
    source = SOURCES[exp.cfg.data.source].describe(exp.cfg.data, task)

    def fill(root: Path) -> dict[str, Any]:
        (root / "models").mkdir()
        diff = _export_torchscript(model, sample, root / "models" / "model.ts")
        weights = plain_state_dict(exp, network)  # a bare state dict, as MONAI's CheckpointLoader reads one
        atomic_write(root / "models" / "model.pt", lambda tmp: torch.save(weights, tmp))
        side = {"format": "bundle", "file": "models/model.ts",
                **describe(exp, info, network, inputs, evaluation, checkpoint, run_dir, tempered),
                "verification": {"samples": samples, "max_abs_diff": diff, "against": "torch.jit.load"}}
        write_json(root / "models" / "model.json", {**side, "file": "model.ts"})  # the sidecar, beside its model
        card_text = model_card(exp, info, network, model, side, sample)
        card = {"name": f"{network} ({task.title.lower()}, kdstyles)",
                "task": f"{task.title} of {inputs.space.unit} into {len(side['class_names'])} classes: "
                        + ", ".join(side["class_names"]),
                "description": f"A network distilled with kdstyles (preset {info.preset}) from run "
                               f"{run_dir.name}; it outputs {task.output_words}.",
                "authors": authors, "copyright": f"Copyright (c) {year} {authors}", "license": license,
                "data_source": source,
                "modality": modality}
        write_json(root / "configs" / "metadata.json", metadata(side, output, card))
        write_json(root / "configs" / "inference.json", inference_config(side, output, task.per_pixel))
        write_text(root / "docs" / "README.md", card_text + bundle_usage(output))
        write_text(root / "docs" / "license.txt", _license_text(license, card["copyright"]))
        return side

    side = write_folder(folder, fill, is_bundle, "--out")
    return {**side, "folder": str(folder)}

