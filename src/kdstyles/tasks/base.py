"""What a task is: everything that differs between classification and segmentation (and
later detection, volumes) lives in one Task subclass, so the engine, the cohort, the data
code, export and predict ask the task and never which task runs.

A task owns: its name and the data sources it reads; the kind of its labels (a class, several,
a mask or boxes per image: :mod:`kdstyles.data.labels` reads and moves each kind); the supervised loss; the
check of a network's output; its metrics, the default selection metric and per-network
details; the default feature tap; the ensemble rule; the pictures ``evaluate`` draws; the
output shape an exported model declares; and how ``predict`` writes its results.

Task modules import torch only inside the methods that compute, so ``kdstyles predict``
with an ONNX model runs where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..common.dims import dims as space
from ..errors import KDError


class TaskOptions(BaseModel):
    """A task's own settings, in the config's ``tasks.<task>`` section (none by default). A
    subclass adds fields (each with a default and a description: the configuration reference
    lists them), names those a resume may change (``resumable``: settings of evaluation, not of
    training), and the keys that held them before tasks had sections (``legacy``: 'loss.dice_weight'
    -> 'dice_weight'), which a config may still use."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    resumable: ClassVar[tuple[str, ...]] = ()
    legacy: ClassVar[dict[str, str]] = {}


class Task:
    name: ClassVar[str]
    loss_name: ClassVar[str]  # the supervised loss term's name in logs
    selection: ClassVar[str]  # default checkpoint-selection metric (metrics.METRICS)
    sources: ClassVar[tuple[str, ...]]  # data.source values it reads
    # what its labels are, for the data code (kdstyles.data.labels): class-index, multi-hot (any
    # number of classes per image), mask (a class per pixel) or box-list (a padded (M, 5) tensor per image)
    label_kind: ClassVar[str] = "class-index"
    # a class per pixel: a frozen backbone's head (the probe) is fitted on its patch tokens and
    # upsampled to the image, not on its pooled embedding
    per_pixel: ClassVar[bool] = False
    # what its outputs are to the styles that compare two networks' outputs (kdstyles.styles.outputs):
    # classes (a softmax over dim 1), labels (a sigmoid per class) or heatmaps (detection)
    output_kind: ClassVar[str] = "classes"
    patches: ClassVar[bool] = False  # trains on patches of whole volumes (data.patch_size) and slides over them
    # one class per image or pixel, a softmax over classes: styles that need it (dkd, dist) apply
    exclusive_classes: ClassVar[bool] = True
    # temperature scaling fitted on validation (evaluate --calibrated) applies to its probabilities
    # (calibration_rows, tempered); prediction_sets: one class per image, so conformal sets too
    calibrates: ClassVar[bool] = False
    prediction_sets: ClassVar[bool] = False
    # what the class-imbalance warning suggests
    imbalance_remedy: ClassVar[str] = "data.sampler: balanced or loss.class_weights: balanced"
    # the embedded generators by spatial dimensions: a module of kdstyles.data.generators each (its
    # CLASS_NAMES, DEFAULT_SIZE, CHANNELS and DESCRIPTION), e.g. {2: "synthetic", 3: "synthetic_vol"}
    synthetic: ClassVar[dict[int, str]] = {}
    spatial_dims: ClassVar[tuple[int, ...]] = (2,)  # what it trains on (data.spatial_dims): 2D images, 3D volumes
    title: ClassVar[str]  # the task in a model card's words ("Multi-label classification")
    classes_are: ClassVar[str] = ""  # where exclusive_classes is False: what its classes are instead
    output_words: ClassVar[str]  # what an exported model returns, for model cards
    # data.mix: the mixes whose labels this task can mix, and why the others are refused
    mixes: ClassVar[tuple[str, ...]] = ("mixup", "cutmix")
    mix_refusal: ClassVar[str] = ""

    Options: ClassVar[type[TaskOptions]] = TaskOptions  # its settings (config: tasks.<name>)

    def __init__(self, num_classes: int, **options: Any):
        self.num_classes = num_classes
        self.options = self.Options(**options)

    @classmethod
    def from_config(cls, num_classes: int, cfg: Any) -> "Task":
        """The task for an experiment config: its options from the config's ``tasks.<name>``."""
        return cls(num_classes, **cfg.task_options.model_dump())

    # ------------------------------------------------------------------ configuration

    @classmethod
    def lineage(cls) -> tuple[str, ...]:
        """Its name and those of the tasks it derives from (a plugin's task that subclasses
        Classification selects checkpoints by classification's metrics)."""
        return tuple(dict.fromkeys(c.name for c in cls.__mro__ if isinstance(c.__dict__.get("name"), str)))

    @classmethod
    def accepts_arch(cls, arch: str) -> bool:
        """Whether a network of this name produces this task's outputs."""
        raise NotImplementedError

    arch_hint: ClassVar[str] = ""  # what accepts_arch wants, for the error line
    stand_in_arch: ClassVar[str] = "resnet18"  # a network of this task, where one is needed only to look at data

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Task-specific rules of an experiment config; one-line KDError naming the key."""
        from ..common.metrics import METRICS

        for name, spec in {"teacher": cfg.networks.teacher, **cfg.networks.students}.items():
            key = "networks.teacher" if name == "teacher" else f"networks.students.{name}"
            if spec.arch != "custom" and not cls.accepts_arch(spec.arch):
                raise KDError(f"{key}.arch: '{spec.arch}' does not fit task {cls.name}; it needs {cls.arch_hint}")
        metric = cfg.train.selection_metric
        if metric != "auto" and METRICS[metric].task not in cls.lineage():
            raise KDError(f"train.selection_metric: '{metric}' is not a {cls.name} metric")
        if cfg.data.patch_size is not None and not (cls.patches and space(cfg.data.dims).volumes):  # validation
            raise KDError(f"data.patch_size: patches are for 3D segmentation and detection (task {cls.name}, "
                          f"spatial_dims {cfg.data.dims}); leave it out")
        refused = [k for k in cfg.data.mix.kinds if k not in cls.mixes]
        if refused:
            raise KDError(f"data.mix.{refused[0]}: task {cls.name} {cls.mix_refusal}; set data.mix.{refused[0]}: 0")
        if cfg.data.dims not in cls.spatial_dims:
            raise KDError(f"data.spatial_dims: task {cls.name} is 2D only; use spatial_dims: 2")
        if not cls.exclusive_classes:
            from ..styles import STYLES

            for e in cfg.edges:
                why = STYLES[e.style].needs_exclusive_classes(e.options)
                if why:
                    raise KDError(f"edge {e}: {why}, one class per image or pixel; task {cls.name} "
                                  f"{cls.classes_are}; use predictions, features, attention or relations")

    # ------------------------------------------------------------------ training

    def build_network(self, spec: Any, channels: int, image_size: int, where: str, dims: int = 2):
        """A network of the config's ``spec`` (arch, widen, stem, pretrained) giving this task's
        output, 2D or 3D (``dims``)."""
        from ..models.zoo import build_network

        return build_network(spec.arch, channels, self.num_classes, image_size, spec.widen, spec.stem,
                             spec.pretrained, where=where, spatial_dims=dims, dense=self.per_pixel)

    def supervised(self, logits, y, class_weights):
        raise NotImplementedError

    def mix_targets(self, y, mix):
        """What the supervised loss learns on a mixed batch (``mix``: a
        :class:`~kdstyles.data.mix.MixDraw`): ``(y_a, y_b, lam)`` for ``lam * L(y_a) + (1 - lam)
        * L(y_b)``; by default the labels and those of the reversed batch (the loss of mixed
        one-hot or multi-hot targets, as timm's mixup targets)."""
        return y, y.flip(0), mix.lam

    def supervised_mixed(self, logits, targets, class_weights):
        """The supervised loss of a batch's ``targets`` (:meth:`mix_targets`' triple; an unmixed
        batch is ``(y, y, 1.0)``)."""
        y_a, y_b, lam = targets
        if lam >= 1:
            return self.supervised(logits, y_a, class_weights)
        return lam * self.supervised(logits, y_a, class_weights) + (1 - lam) * self.supervised(logits, y_b,
                                                                                                 class_weights)

    def class_weights(self, counts: list[int], images: int | None):
        """``loss.class_weights: balanced`` from the training split's count per class: each
        class weighted by its inverse frequency (mean weight over classes 1)."""
        import torch

        c = torch.tensor(counts, dtype=torch.float).clamp_min(1)
        return c.sum() / (len(c) * c)

    def check_output(self, where: str, logits, sample) -> None:
        """A one-line KDError, starting with ``where`` (e.g. ``networks.s1``), when ``logits`` (a
        network's output for the input batch ``sample``; torch or numpy) is not this task's shape."""
        raise NotImplementedError

    def default_tap(self, model, sample) -> str:
        """The module path a features/attention edge compares when none is configured."""
        raise NotImplementedError

    # ------------------------------------------------------------------ evaluation

    def activate(self, logits):
        """A batch of network outputs as probabilities (softmax over classes)."""
        return logits.float().softmax(1)

    def condense(self, probs):
        """What evaluation keeps of a batch of (activated, ensembled) outputs; all of it by default."""
        return probs

    def fidelity(self, teacher, student) -> dict[str, float]:
        """How closely a student follows the teacher (KL and top-1 agreement)."""
        from ..common.metrics import fidelity

        return fidelity(teacher, student)

    def metrics(self, probs, labels, spacing=None) -> dict[str, float]:
        """The task's metrics of a batch of activated outputs; ``spacing``: the voxel size in mm
        along each spatial axis, where distances are measured (volumes)."""
        raise NotImplementedError

    def details(self, probs, labels) -> dict[str, Any]:
        """Per-network details kept in eval.json (confusion matrices, reliability bins, ...)."""
        return {}

    def per_image(self, probs, labels) -> dict[str, list[float]]:
        """Each test image's value of the metrics that are means over images (``Metric.per_image``),
        kept in eval.json so comparisons can pair runs image by image."""
        raise NotImplementedError

    @classmethod
    def keeps_outputs(cls) -> bool:
        """Whether the task's metrics are not means over images (``Metric.drawn`` in
        ``metrics.METRICS``: mAP, mean AUROC): evaluate then keeps every network's outputs for
        comparisons to draw test images from (:meth:`kept_outputs`), and whole volumes are
        pooled, not scored one by one (``evaluate.score_split``)."""
        from ..common.metrics import METRICS

        return any(m.drawn and m.task in cls.lineage() for m in METRICS.values())

    def kept_outputs(self, probs: dict, labels) -> dict[str, Any]:
        """Arrays evaluate keeps beside eval.json (``RunFolder.write_outputs``): the labels and
        every network's condensed outputs, where :meth:`keeps_outputs`, so comparisons can draw
        test images again (:meth:`drawable`)."""
        if not self.keeps_outputs():
            return {}
        return {"labels": labels.numpy(), **{f"out.{n}": p.numpy() for n, p in probs.items()}}

    @classmethod
    def drawable(cls, outputs: dict[str, Any], labels: Any, num_classes: int) -> dict[str, Any]:
        """Per network, from what :meth:`kept_outputs` wrote (numpy arrays), an object with
        ``images``, ``same_images(other)`` and ``metrics(counts)``: the drawn metrics for images
        drawn ``counts`` (k, images) times each, ``{metric: (k,)}``."""
        return {}

    def calibration_rows(self, probs, labels) -> tuple:
        """Its probabilities as calibration rows (:mod:`kdstyles.common.calibration`): (rows (M, C),
        their labels (M,), each row's image (M,) or None where a row is an image, each row's label
        (M,) or None where one temperature serves all). A softmax per image: the images."""
        return probs, labels, None, None

    def tempered(self, probs, temperature):
        """Its probabilities at a temperature fitted on its calibration rows: softmax(log p / T)
        over the classes (dimension 1)."""
        from ..common.calibration import tempered

        return tempered(probs, temperature)

    def ensemble(self, probs: list):
        """The students' ensemble: the mean of their probabilities (per pixel when dense)."""
        import torch

        return torch.stack(list(probs)).mean(0)

    # the writers in tasks.overlays that draw this task's pictures: (images, volumes); None: no pictures
    overlay_writers: ClassVar[dict[int, str]] = {}  # by spatial dimensions: a function of tasks.overlays

    def write_visuals(self, folder: Path, images, labels, probs: dict, mean: list[float], std: list[float],
                      count: int) -> list[Path]:
        """Up to ``count`` test images drawn into ``folder`` (the run folder's overlays) with every
        network's output, by the task's ``overlay_writers``; none by default."""
        n = min(count, len(labels))
        writer = self.overlay_writers.get(images[0].ndim - 1) if n else None  # an item is (C, *spatial)
        if writer is None:
            return []
        from . import overlays

        write = getattr(overlays, writer)
        return write(folder, images[:n], labels[:n], {k: p[:n] for k, p in probs.items()}, mean, std)

    # ------------------------------------------------------------------ deployment (no torch)

    def output_shape(self, dims: int = 2) -> list[str]:
        return ["batch", "classes"]

    def prediction_header(self, class_names: list[str], space: Any = None) -> list[str]:
        """The predictions.csv header for a model of ``space`` (a :class:`~kdstyles.common.dims.Dims`; None: images)."""
        raise NotImplementedError

    def volume_prediction_words(self, windows: bool) -> str:
        """How ``predict`` treats a whole volume, for model cards (``windows``: the model was
        trained on patches and slides over the volume)."""
        return " (sliding windows of the input's size over the whole volume)." if windows else "."

    def prediction_row(self, path: Path, probs, class_names: list[str], out_dir: Path, index: int,
                       volume=None) -> list[str]:
        """One CSV row for an input image (and any file written beside it); ``probs`` is numpy.
        ``volume``: for a volume file, its prepared grid as (shape (D, H, W), 4x4 affine), which the
        model saw resized to its input."""
        raise NotImplementedError

    # ------------------------------------------------------------------ MONAI Bundle

    bundle_refusal: ClassVar[str] = ""  # why a MONAI Bundle cannot describe this task's output ('': it can)
    hub_pipeline: ClassVar[str] = "image-classification"  # the Hugging Face Hub's pipeline tag for its models

    def bundle_output(self, class_names: list[str], side: int, dims: int = 2) -> dict[str, Any]:
        """How a MONAI Bundle declares and writes this task's output ('pred', what the exported
        model returns): its tensor format (metadata.json's ``network_data_format``) and the
        ``postprocessing`` transforms and ``handlers`` of its inference.json (MONAI config
        dicts; ``@output_dir`` is the folder written). Per-image probabilities, one CSV row per
        image (MONAI's ClassificationSaver: the file, then a value per class)."""
        return {"type": "probabilities", "format": "classes", "spatial_shape": [], "value_range": [0, 1],
                "postprocessing": [],
                "handlers": [{"_target_": "ClassificationSaver", "output_dir": "@output_dir",
                              "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                              "output_transform": "$lambda output: [item['pred'] for item in output]"}],
                "writes": "predictions.csv: a row per image, its file then its probability of each class in the "
                          "order of channel_def"}


class EncoderDecoderTask(Task):
    """A task whose networks are encoder-decoders giving a map at the input's size
    (segmentation, detection): it takes the segmentation archs and taps the bottleneck by
    default."""

    stand_in_arch = "basicunet"

    @classmethod
    def accepts_arch(cls, arch: str) -> bool:
        from ..models.zoo import ARCHS

        return arch in ARCHS and ARCHS[arch].dense

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        side = cfg.data.patch_size or cfg.data.image_size
        key = "data.patch_size" if cfg.data.patch_size else "data.image_size"
        for name, spec in {"teacher": cfg.networks.teacher, **cfg.networks.students}.items():
            if spec.arch == "unet" and side is not None and side % 8:  # three stride-2 levels, no padding
                where = "networks.teacher" if name == "teacher" else f"networks.students.{name}"
                raise KDError(f"{key}: {side} does not halve three times for {where}.arch unet; use a multiple "
                              f"of 8 (e.g. {max(8, side // 8 * 8)})")

    def default_tap(self, model, sample):
        from ..models.zoo import bottleneck_tap

        return bottleneck_tap(model, sample)

    def output_shape(self, dims: int = 2):
        return ["batch", "classes", *space(dims).axes]
