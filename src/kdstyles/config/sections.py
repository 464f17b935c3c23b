"""The experiment config's sections as pydantic models: every key, its type, bounds,
default and description (the configuration reference is generated from them), and the
checks that span keys (a source's own keys, what a task or style allows). The defaults
describe the demo: a small online teacher and two compact students on the embedded
histology patches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from ..common.dims import dims as spatial
from ..common.metrics import METRICS
from ..data.sources import SOURCES, sources_for, unlabeled_sources
from ..data.options import home as _home, own_keys
from ..errors import KDError, unknown
from ..store import sbatch
from ..store.fileio import NAME_MAX
from ..styles.routing import Edge, RoutingConfig, check_style_options, resolve_edges
from ..tasks import DEFAULT_TASK, TASKS

SELECTION_METRICS = ("auto", *(m.name for m in METRICS.values() if m.selectable))


def registered(name: str, registry: dict, what: str) -> str:
    """A name a registry holds (checked when a config is validated, so names a plugin registered
    count), or the "did you mean" line."""
    if name not in registry:
        raise ValueError(unknown(what, name, list(registry)))
    return name


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class BySource(BaseModel):
    """A section whose keys are its own fields plus those of the source it names
    (:mod:`kdstyles.data.options`): the source's keys are validated by its options
    model, kept with their defaults and read as attributes (``cfg.data.root``)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    def _source_options(self, info: ValidationInfo, model: str, given_only: bool = False) -> Any:
        """Validate the keys beyond the fields as the named source's ``model`` ("Options" or
        "Unlabeled") and keep them (``given_only``: those given, without defaults)."""
        source = SOURCES[self.source]
        options = getattr(source, model)
        clash = sorted(set(options.model_fields) & set(type(self).model_fields))
        if clash:
            raise ValueError(f"source '{self.source}' declares '{clash[0]}' in its {model} model, a key every source "
                             "has; its plugin must name that key otherwise")
        others = [getattr(s, model) for s in SOURCES.values()]
        opts = own_keys(dict(self.model_extra or {}), options, self.source, others, type(self).model_fields,
                        bool((info.context or {}).get("recorded")))
        self.__pydantic_extra__ = {k: getattr(opts, k) for k in opts.model_fields
                                   if not given_only or k in opts.model_fields_set}
        return opts


class AugmentConfig(Strict):
    """Random augmentation of training images (MONAI transforms, seeded per sample and epoch)."""

    hflip: bool = Field(True, description="random horizontal flips")
    vflip: bool = Field(True, description="random vertical flips")
    rotate90: bool = Field(False, description="random quarter turns (volumes: in the slice plane)")
    rotate: float = Field(0.0, ge=0, le=180, description="max rotation in degrees")
    zoom: float = Field(0.0, ge=0, lt=1, description="max relative zoom in or out")
    shift: float = Field(0.0, ge=0, lt=1, description="max shift as a fraction of the image size")
    shear: float = Field(0.0, ge=0, lt=1, description="max shear")
    intensity: float = Field(0.0, ge=0, lt=1, description="max relative change of brightness and contrast")

    @property
    def random(self) -> bool:
        """Whether any random augmentation is on (a training image then differs between epochs)."""
        return bool(self.hflip or self.vflip or self.rotate90 or self.rotate or self.zoom or self.shift or self.shear
                    or self.intensity)


def _folder_name(v: str | None) -> str | None:
    """A name that becomes a folder inside output.dir: one folder, not a path."""
    if v is not None and (v.strip() in (".", "..") or "/" in v or "\\" in v or "\0" in v):
        raise ValueError("a folder name, not a path, goes here (where runs go is output.dir)")
    if v is not None and (not v.strip() or any(not c.isprintable() for c in v)):
        raise ValueError("a folder name needs printable characters (no line breaks or tabs), e.g. demo")
    if v is not None and len(v.encode()) > NAME_MAX:
        raise ValueError(f"{len(v.encode())} bytes; a folder name holds at most {NAME_MAX} (the file system's limit)")
    return v


class MixConfig(Strict):
    """Mixed views (timm's conventions): each training batch is mixed, with probability ``prob``,
    by mixup (the batch blended with itself reversed, lambda ~ Beta(mixup, mixup)) or CutMix (a
    box of the reversed batch pasted in, its area 1 - lambda, lambda ~ Beta(cutmix, cutmix));
    with both on, CutMix is chosen with probability ``switch_prob``. Every network sees the
    mixed images; the supervised loss mixes the labels (or, CutMix, the masks) and distillation
    compares outputs on the mixed image."""

    mixup: float = Field(0.0, ge=0, description="mixup's Beta alpha (0: off; timm's recipes use 0.8)")
    cutmix: float = Field(0.0, ge=0, description="CutMix's Beta alpha (0: off; timm's recipes use 1.0)")
    prob: float = Field(1.0, ge=0, le=1, description="share of training batches that are mixed")
    switch_prob: float = Field(0.5, ge=0, le=1, description="with mixup and cutmix both on: the chance of CutMix")

    @property
    def on(self) -> bool:
        return bool(self.kinds)

    @property
    def kinds(self) -> list[str]:
        """The mixes this config can draw: mixup, cutmix."""
        return [k for k in ("mixup", "cutmix") if getattr(self, k) > 0] if self.prob > 0 else []


class UnlabeledConfig(BySource):
    """Images without labels for the distillation edges (the supervised loss never sees them),
    listed by a source (``data.unlabeled.source``): the embedded generator's extra images
    (``synthetic``, ``samples`` of them, their labels withheld), a folder tree searched at any
    depth (``folder``, ``root``; labels and class folders ignored; volume files with spatial_dims
    3), a CSV's ``path`` column (``csv``, ``path``), a MedMNIST file's split without its labels
    (``medmnist``, ``flag``, ``size``, ``split``), an npz file's split (``npz``, ``path``,
    ``split``), or a plugin's source that lists images without labels."""

    source: str = Field(..., description="which source lists them: synthetic, folder, csv, medmnist, npz, or a "
                        "plugin's", json_schema_extra={"registry": "sources that list images without labels"})
    samples: Optional[int] = Field(None, ge=1, description="synthetic: how many images (required); others: use at "
                                                            "most this many (a seeded draw)")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return registered(v, unlabeled_sources(), "source of images without labels")

    @model_validator(mode="after")
    def _needs(self, info: ValidationInfo) -> "UnlabeledConfig":
        self._source_options(info, "Unlabeled")
        needs = SOURCES[self.source].unlabeled_requires
        if needs and getattr(self, needs) is None:
            raise ValueError(f"source '{self.source}' needs data.unlabeled.{needs}")
        return self


SPLIT_NAMES = ("train", "val", "test")


class ExternalSet(BySource):
    """A test set from elsewhere (another hospital, scanner or stain): every image a source lists
    for it (or one of its splits), prepared as the test split is and scored after it. Its
    source's keys (``root``, ``path``, ...: the keys that source has in ``data``) are its own;
    everything else (input size, channels, classes, volume preparation) is the training data's,
    so its images reach the networks exactly as the test split's do."""

    name: str = Field(..., description="how results name it (a short word: site2, hospital_b, scanner-2)")
    source: str = Field(..., description="which source reads it (any labelled source kdstyles reads)",
                        json_schema_extra={"registry": "sources"})
    split: Optional[Literal["all", "train", "val", "test"]] = Field(
        None, description="which of the source's splits are the set; default: all of them (files), its test split "
                          "(the embedded data)")
    samples: Optional[int] = Field(None, ge=1, description="synthetic: how many images (default data.test_samples; "
                                   "the set is the second site, site: 2, unless it says site: 1)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,39}", v) or v in SPLIT_NAMES:
            raise ValueError(f"'{v}' cannot name an external set: a short word of letters, digits, - and _ "
                             f"starting with a letter, and not {', '.join(SPLIT_NAMES)}")
        return v

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return registered(v, SOURCES, "source")

    @model_validator(mode="after")
    def _own_keys(self, info: ValidationInfo) -> "ExternalSet":
        self._source_options(info, "Options", given_only=True)
        return self


class DataConfig(BySource):
    """Where images come from and how they are prepared: the keys every source shares, and
    those of the source ``source`` names (its :class:`~kdstyles.data.options.SourceOptions`
    model: ``root`` for ``folder``, ``path`` for ``csv``, ``flag`` for ``medmnist``, ...), read
    as attributes (``cfg.data.root``); :attr:`options` is the source's validated model.
    """

    source: str = Field("synthetic", description="where labelled images come from (the data page lists each source "
                        "and its format; a plugin may register more)", json_schema_extra={"registry": "sources"})
    image_size: Optional[int] = Field(None, ge=8, le=1024, description="network input size; default: the source's "
                                      "(synthetic 64, synthetic volumes 32, medmnist its size, folder/csv 224, "
                                      "volume files 64)")
    spatial_dims: Optional[Literal[2, 3]] = Field(None, description="2: images; 3: volumes (synthetic volumes, "
                                                  "MedMNIST 3D); default: the source's (a MedMNIST flag ending "
                                                  "in 3d is 3)")
    patch_size: Optional[int] = Field(None, ge=8, le=512, description="3D segmentation and detection: train on "
                                      "random patch_size^3 crops and evaluate/predict whole volumes with sliding "
                                      "windows of that size; default: whole volumes (synthetic, csv), 64 (decathlon)")
    patch_positive: float = Field(0.5, ge=0, le=1, description="3D patches: the share centred on a "
                                  "foreground voxel or a box (the rest anywhere)")
    patch_overlap: float = Field(0.25, ge=0, lt=1, description="3D patches: overlap of the sliding "
                                 "windows (Gaussian-weighted) that cover whole volumes in evaluation and predict")
    spacing: Optional[list[float]] = Field(None, description="decathlon: resample every volume to this voxel size "
                                           "in mm (three values, along the oriented axes); default: keep each's own")
    orientation: Optional[str] = Field("RAS", description="decathlon: reorient volumes to these axis codes (RAS, "
                                       "LPS, ...); null keeps the files' own")
    window: Optional[list[float]] = Field(None, description="decathlon: intensity window [low, high] mapped to "
                                          "[0, 1] and clipped (CT in HU, e.g. [-160, 240] for the abdomen); "
                                          "default: each volume's 0.5th..99.5th percentiles")
    volume_cache: bool = Field(True, description="decathlon, volume folders/CSV: keep prepared volumes in "
                               "$KDSTYLES_CACHE/volumes (default ~/.cache/kdstyles/volumes) for the next run, "
                               "evaluate and export")
    channels: Optional[int] = Field(None, ge=1, le=3, description="1 or 3; default: the source's (synthetic and "
                                    "folder/csv 3, medmnist its own)")
    modalities: Optional[list[int]] = Field(None, description="volume files with several channels (MRI sequences, "
                                            "e.g. BraTS's FLAIR, T1w, T1gd, T2w): the channels to keep, by index "
                                            "(dataset.json's modality keys), in this order; default: all "
                                            "(decathlon), averaged to data.channels (volume folders/CSV)")
    train_samples: int = Field(2000, ge=2, description="synthetic only (other sources leave it alone, so a config "
                               "written for the embedded data can be pointed at files)")
    val_samples: int = Field(500, ge=1, description="synthetic only")
    test_samples: int = Field(1000, ge=1, description="synthetic only")
    normalize: Literal["auto", "dataset", "imagenet", "none"] = Field(
        "auto", description="dataset: per-channel mean/std of the training split; imagenet: ImageNet's; none: [0, 1]; "
                            "auto: imagenet when a network is pretrained, else dataset")
    batch_size: int = Field(32, ge=2, description="labelled images per training batch (and per evaluation batch)")
    num_workers: Union[int, Literal["auto"]] = Field(
        "auto", description="DataLoader worker processes; auto: 0 on a CPU (the main process keeps up), "
                            "min(8, CPUs - 1) when training on a GPU")

    _external: bool = PrivateAttr(False)

    @field_validator("num_workers")
    @classmethod
    def _workers(cls, v: Union[int, str]) -> Union[int, str]:
        if isinstance(v, int) and not 0 <= v <= 64:
            raise ValueError("must be auto or a number of worker processes from 0 to 64")
        return v
    persistent_workers: bool = Field(True, description="keep DataLoader workers alive between epochs (with "
                                     "forkserver or spawn, each start copies the in-memory set into every worker)")
    sampler: Literal["uniform", "balanced"] = Field("uniform", description="balanced: classes drawn equally often "
                                                    "(multi-label: images by their rarest label)")
    cache_gb: float = Field(4.0, ge=0, description="folder/csv: decode into memory when the set fits in this")
    on_duplicates: Literal["error", "warn"] = Field("error", description="identical images across splits")
    imbalance_ratio: float = Field(20.0, gt=1, description="warn when largest/smallest class count exceeds this")
    augment: AugmentConfig = AugmentConfig()
    unlabeled: Optional[UnlabeledConfig] = Field(
        None, description="images without labels, used by every distillation edge (teacher and peer) beside the "
                          "labelled ones: {source: synthetic, samples: N}, {source: folder, root: DIR}, "
                          "{source: csv, path: FILE}, {source: medmnist, flag: F, split: train}, "
                          "{source: npz, path: FILE, split: train}")
    unlabeled_batch_size: Optional[int] = Field(None, ge=1, description="unlabelled images drawn with every "
                                                "labelled batch; default: data.batch_size")
    external: list[ExternalSet] = Field(
        [], description="test sets from other sites, each {name, source, split, ...its source's keys}, checked like "
                        "the test split (classes, leakage against training and validation images) and scored after it by "
                        "train, evaluate --split NAME and compare")
    mix: MixConfig = MixConfig()
    views: Optional[int] = Field(None, ge=1, le=64, description="fixed augmented views per training image: epoch e "
                                 "shows view e mod views (unlabelled images: each pass), so a frozen teacher's "
                                 "outputs can be kept for every view (networks.teacher.cache) and its forward "
                                 "skipped once each view was seen; null: a new view every epoch")

    @field_validator("spacing")
    @classmethod
    def _spacing(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is not None and (len(v) != 3 or min(v) <= 0):
            raise ValueError(f"needs three voxel sizes in mm, each > 0 (got {v})")
        return v

    @field_validator("window")
    @classmethod
    def _window(cls, v: Optional[list[float]]) -> Optional[list[float]]:
        if v is not None and (len(v) != 2 or v[0] >= v[1]):
            raise ValueError(f"needs [low, high] with low < high (got {v})")
        return v

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            v = v.upper()
            axes = sorted(next((k for k, pair in enumerate(("RL", "AP", "SI")) if c in pair), 9) for c in v)
            if axes != [0, 1, 2]:
                raise ValueError(f"'{v}' is not three axis codes, one of R/L, A/P and S/I each (e.g. RAS, LPS)")
        return v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError(f"needs distinct channel indices >= 0, e.g. [0, 3] (got {v})")
        return v

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return registered(v, SOURCES, "source")

    @model_validator(mode="after")
    def _source_keys(self, info: ValidationInfo) -> "DataConfig":
        self._source_options(info, "Options")
        needs = SOURCES[self.source].requires
        if needs and getattr(self, needs) is None:
            raise ValueError(f"source '{self.source}' needs data.{needs}")
        given = SOURCES[self.source].spatial_dims(self)  # None: either, as spatial_dims says
        if self.spatial_dims == 3 and given == 2:
            flag = f" flag {self.flag}" if getattr(self, "flag", None) else ""
            raise ValueError(f"spatial_dims: 3 needs volumes; source '{self.source}'{flag} gives 2D images (volume "
                             "sources: synthetic, medmnist with a 3D flag, decathlon)")
        if self.spatial_dims == 2 and given == 3:
            what = f"data.flag {self.flag}" if getattr(self, "flag", None) else f"source '{self.source}'"
            raise ValueError(f"spatial_dims: 2, but {what} holds volumes; leave spatial_dims out")
        if self.modalities is not None:
            if not SOURCES[self.source].volume_files or self.dims != 3:
                readers = ", ".join(n for n, s in SOURCES.items() if s.volume_files)
                raise ValueError(f"modalities: selects channels of volume files (sources {readers}, with "
                                 f"spatial_dims 3), not of source '{self.source}'"
                                 f"{' with 2D images' if self.dims == 2 else ''}; leave it out")
            if self.channels is not None and self.channels != len(self.modalities):
                raise ValueError(f"channels: {self.channels}, but modalities keeps {len(self.modalities)}; "
                                 "leave channels out")
        return self

    @property
    def options(self) -> Any:
        """The source's own keys as its options model (``Source.Options``)."""
        return SOURCES[self.source].Options.model_validate(self.model_extra or {})

    @model_validator(mode="after")
    def _external_sets(self) -> "DataConfig":
        """Every external set a valid data section of its own (its source's keys, the rest this
        one's), with a name of its own."""
        names = [e.name for e in self.external]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice:
            raise ValueError(f"external: two sets are named '{twice}'; each needs a name of its own")
        for entry in self.external:
            try:
                self.external_data(entry)
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"external set '{entry.name}': {key + ': ' if key else ''}"
                                 f"{first['msg'].removeprefix('Value error, ')}") from None
        return self

    def external_data(self, entry: ExternalSet) -> "DataConfig":
        """The data section an external set is read with: its source and source keys, the
        training data's class list (where its source reads one) and everything else of this
        section (so its images are prepared as the test split's)."""
        source = SOURCES[entry.source]
        base = self.model_dump(exclude={*(self.model_extra or {}), "source", "external", "unlabeled"},
                               exclude_unset=True)
        inherited = {k: v for k, v in (self.model_extra or {}).items()
                     if k in ("classes", "num_classes") and k in source.Options.model_fields}
        update = {**inherited, **source.external_defaults, **(entry.model_extra or {})}
        if entry.samples is not None:
            update["test_samples"] = entry.samples
        sub = DataConfig.model_validate({**base, **update, "source": entry.source})
        sub._external = True
        return sub

    @property
    def is_external(self) -> bool:
        """Whether this section reads an external test set (:meth:`external_data`)."""
        return self._external

    @property
    def fixed_views(self) -> bool:
        """Whether a training image is only ever shown in a fixed set of views (one: no random
        augmentation or patches; ``views`` of them), unmixed: what keeping a frozen teacher's
        outputs per image and view needs."""
        return not ((self.random_items and not self.views) or self.mix.on)

    @property
    def unlabeled_batch(self) -> int:
        """Unlabelled images drawn with every labelled batch (``unlabeled_batch_size`` or ``batch_size``)."""
        return self.unlabeled_batch_size or self.batch_size

    @property
    def random_items(self) -> bool:
        """Whether a training item differs between epochs (random augmentation or random patches)."""
        return self.augment.random or self.patch_size is not None or SOURCES[self.source].patches

    @property
    def preparation(self) -> dict[str, Any] | None:
        """How volume files are prepared (orientation, spacing, window, the channels kept), whether
        whole volumes are covered by sliding windows of the network's input (trained on patches)
        and how the windows overlap: the export sidecar's ``volumes``, what predict repeats. None
        for images (they are only resized as they are read)."""
        if spatial(self.dims).resized_on_read:
            return None
        return {"orientation": self.orientation, "spacing": self.spacing, "window": self.window,
                "windows": self.patch_size is not None or SOURCES[self.source].patches,
                "overlap": self.patch_overlap, "modalities": self.modalities}

    @property
    def dims(self) -> int:
        """2 (images) or 3 (volumes): ``spatial_dims``, else what the source gives."""
        return self.spatial_dims or SOURCES[self.source].spatial_dims(self) or 2


class NetworkConfig(Strict):
    """One network: an architecture by name (or ``custom`` for a module passed through the API)."""

    arch: str = Field("resnet10", description="a network of the zoo (resnet10/18/34/50, mobilenetv2, efficientnet-b0, "
                                              "densenet121, vit-tiny, vit-small, unet, basicunet, ...), custom (a module passed "
                                              "through the Python API), or for an offline teacher a vision "
                                              "transformer from the Hugging Face Hub: hf:ID[@REVISION] or hf:FOLDER")
    widen: float = Field(1.0, gt=0, description="width multiplier (resnets only)")
    stem: Literal["auto", "imagenet", "small"] = Field(
        "auto", description="small: 3x3 stride-1 stem, no max pool; auto: small below 32 px")
    tap: Optional[str] = Field(None, description="module path of the map used by features/attention edges")
    embedding_tap: Optional[str] = Field(None, description="penultimate embedding for relations edges; "
                                         "default: input of the last Linear ('fc:in')")
    pretrained: Union[bool, str] = Field(
        False, description="imagenet (or true): ImageNet weights from the Hugging Face hub (ResNets, DenseNets, "
                           "EfficientNets, mobilenet_v2); the path of a .safetensors/.pth/.pt file in "
                           "torchvision's or timm's naming; or a network kdstyles published (any arch, 2D or 3D): a "
                           "MONAI Bundle folder (export --format bundle), a Hub repository's folder or hf:ORG/NAME"
                           "[@REVISION] (kdstyles push), with this network's arch, widen and stem")

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v: Union[bool, str]) -> Union[bool, str]:
        from ..models.published import names_published

        # a published network's folder is not checked here (a run folder keeps naming it after it moved), but a
        # file of another kind is refused at once
        if names_published(v) and not v.startswith("hf:") and (not v.strip() or (
                Path(v).suffix and not Path(os.path.expanduser(v)).is_dir())):
            raise ValueError(f"'{v}' is neither imagenet, a .safetensors/.pth/.pt file, nor the folder or hf:ORG/NAME "
                             "of a network kdstyles published; allowed: false, imagenet, PATH, FOLDER, hf:ORG/NAME")
        return "imagenet" if v is True else v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from ..models.hf import is_hf, parse
        from ..models.zoo import ARCHS, unknown_arch

        if is_hf(v):
            try:
                parse(v)
            except KDError as exc:
                raise ValueError(str(exc)) from None
            return v
        if v != "custom" and v not in ARCHS:
            raise ValueError(unknown_arch(v))
        return v


class TeacherConfig(NetworkConfig):
    arch: str = Field("resnet18", description="the teacher's network (as a student's arch)")
    widen: float = Field(0.5, gt=0, description="width multiplier (resnets only)")
    mode: Literal["online", "offline"] = Field(
        "online", description="online: trained with the students; offline: loaded from checkpoint and frozen")
    checkpoint: Optional[str] = Field(None, description="offline teacher: a run folder, a .pt state dict, or a "
                                                        "network kdstyles published (a MONAI Bundle folder, a Hub "
                                                        "repository's folder or hf:ORG/NAME[@REVISION]) built as "
                                                        "networks.teacher")
    cache: bool = Field(False, description="offline teacher without random augmentation (or with data.views): keep "
                                           "its outputs per training image and view once seen and skip its forward "
                                           "from then on; stored in $KDSTYLES_CACHE/teacher-outputs for the next run "
                                           "of the same teacher, data and seed")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="offline teacher: run its forward in half precision (autocast; its outputs back in "
                            "float32), for a large teacher on a device that supports it (bf16 on CPUs and recent GPUs)")

    _checkpoint = field_validator("checkpoint")(_home)

    @model_validator(mode="after")
    def _offline_needs_checkpoint(self) -> "TeacherConfig":
        from ..models.hf import is_hf

        if self.precision != "fp32" and self.mode != "offline":
            raise ValueError(f"precision {self.precision}: for a frozen teacher (mode offline); an online teacher "
                             "trains at train.precision")
        if is_hf(self.arch):
            if self.mode != "offline":
                raise ValueError(f"arch {self.arch}: a Hugging Face teacher is frozen; set networks.teacher.mode: "
                                 "offline (without a checkpoint, a probe fits its head on the training images first)")
            return self
        if self.mode == "offline" and not self.checkpoint:
            raise ValueError("mode 'offline' needs checkpoint: a run folder or a .pt file with the teacher's weights")
        return self


def _default_students() -> dict[str, NetworkConfig]:
    return {"s1": NetworkConfig(arch="resnet10", widen=0.25), "s2": NetworkConfig(arch="resnet10", widen=0.25)}


class NetworksConfig(Strict):
    teacher: TeacherConfig = TeacherConfig()
    students: dict[str, NetworkConfig] = Field(default_factory=_default_students, description="the students by name "
                                                "(any number; default s1 and s2, resnet10 x 0.25)")

    @field_validator("students")
    @classmethod
    def _no_hf_students(cls, v: dict) -> dict:
        from ..models.hf import is_hf

        hf = next((name for name, spec in v.items() if is_hf(spec.arch)), None)
        if hf is not None:
            raise ValueError(f"{hf}.arch: {v[hf].arch} is a teacher; a student is a network of the zoo (a vision "
                             "transformer student is not built yet)")
        return v

    @field_validator("students")
    @classmethod
    def _student_names(cls, v: dict[str, NetworkConfig]) -> dict[str, NetworkConfig]:
        if not v:
            raise ValueError("at least one student is needed")
        for name in v:
            if name == "teacher" or not name.isidentifier():
                raise ValueError(f"student name '{name}' is not allowed; use identifiers such as s1, s2 (not 'teacher')")
        return v


class LossConfig(Strict):
    """L_i = ce_weight * CE + (1 - ce_weight) * sum_e weight_e * L_style(e); CE alone without edges."""

    ce_weight: float = Field(0.1, ge=0, le=1, description="a: weight of the supervised loss (CE, or Dice+CE)")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="balanced: CE weighted by inverse class frequency of the training split")
    teacher_weight: float = Field(0.2, ge=0, description="default weight of edges from the teacher")
    peer_weight: float = Field(0.1, ge=0, description="default weight of edges between students")
    self_weight: float = Field(0.1, ge=0, description="default weight of self-distillation edges")


class OptimConfig(Strict):
    name: Literal["adam", "sgd"] = Field("adam", description="the optimizer of every network")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")


class ScheduleConfig(Strict):
    name: Literal["plateau", "cosine", "none"] = Field(
        "cosine", description="learning-rate schedule: cosine over the epochs, cut on a validation plateau, or none")
    factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr multiplier")
    patience: int = Field(10, ge=0, description="plateau: epochs without gain before the lr is cut")
    min_lr: float = Field(1e-7, ge=0, description="the schedule's floor")


class TrainConfig(Strict):
    epochs: int = Field(8, ge=1, description="training epochs")
    early_stopping: Optional[int] = Field(40, ge=1, description="epochs without any student gaining; null: off")
    selection_metric: Literal[SELECTION_METRICS] = Field(  # type: ignore[valid-type]
        "auto", description="per-network checkpoint selection; auto: accuracy (classification), dice (segmentation)")
    seed: int = Field(0, description="seeds the data split, sampling, augmentation and every network's initialisation")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    max_steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap on training batches per epoch")
    val_every: int = Field(1, ge=1, description="validate every N epochs (and always after the last): best "
                                                "checkpoints, early stopping and the plateau schedule see only "
                                                "validated epochs; long schedules spend less on validation")
    checkpoint_every_steps: Optional[int] = Field(
        None, ge=1, description="also write last.pt every N steps within an epoch (long epochs); resume continues "
                                "at the next step")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; fp16 uses a GradScaler; auto: bf16 on a GPU that supports it, else fp32")
    deterministic: bool = Field(False, description="GPU: deterministic cuDNN kernels, so a resume ends bit-identical "
                                                   "(slower); off: cuDNN picks the fastest kernels")
    channels_last: bool = Field(False, description="channels-last memory format (faster convolutions on GPUs)")
    compile: bool = Field(False, description="torch.compile every trainable network")
    qat: bool = Field(False, description="quantization-aware training: students compute with int8-rounded weights "
                                         "and outputs, every edge still on; resume a finished run with it and a few "
                                         "more epochs when export --quantize int8 loses too much")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda", "mps") and not v.startswith("cuda:"):
            raise ValueError(f"device '{v}' is not known; allowed: auto, cpu, cuda, cuda:N, mps")
        return v


class EvalConfig(Strict):
    overlays: int = Field(4, ge=0, description="segmentation, detection: test images drawn as overlay PNGs "
                                               "by evaluate")
    coverage: float = Field(0.9, gt=0, lt=1, description="classification, evaluate --calibrated and compare: the "
                                                         "target coverage of the conformal prediction sets (the share "
                                                         "of images whose set holds the true class)")
    min_group: int = Field(20, ge=1, description="data.groups: groups with fewer test images are flagged (shown, "
                                                 "left out of the worst group and the gap)")
    coverage_confidence: Optional[float] = Field(
        0.95, gt=0, lt=1, description="how sure the prediction sets reach eval.coverage over the draw of the "
                                      "validation split they are fitted on (training-conditional); null: reached on "
                                      "average over such draws (the classical marginal guarantee, smaller sets)")


class ParamSpace(Strict):
    """One searched key: a float range (``log`` for scales such as learning rates), an integer
    range (``int: true``), or ``choices``."""

    low: Optional[float] = Field(None, description="a number range's lower end")
    high: Optional[float] = Field(None, description="its upper end")
    log: bool = Field(False, description="draw the range on a log scale")
    int: bool = Field(False, description="draw whole numbers")
    choices: Optional[list[Any]] = Field(None, description="a list of values to choose from, instead of a range")

    @model_validator(mode="after")
    def _range_or_choices(self) -> "ParamSpace":
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (a non-empty list) or low and high")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs low < high (or give choices)")
        elif self.log and self.low <= 0:
            raise ValueError("log: true needs low > 0")
        return self


class TuneConfig(Strict):
    """``kdstyles tune``: what to search (config keys), what to maximise, how many trials."""

    space: dict[str, ParamSpace] = Field(
        default_factory=dict, description="config key -> {low, high[, log, int]} or {choices: [...]}")
    objective: str = Field("students", description="validation value maximised: students (their mean), ensemble, "
                                                   "or a student's name")
    trials: int = Field(20, ge=1, description="trials in the study (all workers together)")
    startup_trials: int = Field(5, ge=0, description="random trials before TPE, and before pruning starts")
    pruner: Literal["median", "none"] = Field("median", description="stop a trial whose validation curve falls "
                                                                    "below the median of earlier trials")


class OutputConfig(Strict):
    dir: str = Field("runs", description="folder that holds run folders")
    name: Optional[str] = Field(None, description="run folder name; default: <experiment name>-<preset>-seed<seed>")
    tensorboard: bool = Field(True, description="write TensorBoard scalars into the run folder")

    _name = field_validator("name")(_folder_name)
    _dir = field_validator("dir")(_home)


class LauncherConfig(Strict):
    """Where compare's runs and tune's workers run: as jobs of a Slurm cluster (through
    submitit), or of submitit's local executor; the command line's --launcher options override."""

    type: Optional[Literal["slurm", "local"]] = Field(None, description="slurm: every run a Slurm job; local: "
                                                                      "every run a job on this machine; null: "
                                                                      "runs in this process (--jobs)")
    partition: Optional[str] = Field(None, description="slurm: the partition (#SBATCH --partition)")
    time_min: int = Field(240, ge=1, description="a job's time limit in minutes (a run near it checkpoints and "
                                                 "requeues itself)")
    gpus_per_run: int = Field(0, ge=0, description="GPUs per run; above 1, one process per GPU (one DDP run)")
    cpus_per_run: int = Field(4, ge=1, description="CPUs per run (and its threads)")
    mem: Optional[str] = Field(None, description="slurm: memory per node, e.g. 32G")
    account: Optional[str] = Field(None, description="slurm: the account to charge")
    extra: dict[str, str] = Field(default_factory=dict, description="slurm: more #SBATCH options, e.g. {qos: high}")

    @field_validator("partition", "account")
    @classmethod
    def _slurm_names(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else sbatch.check_name(v)

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else sbatch.check_mem(v)

    @field_validator("extra")
    @classmethod
    def _slurm_extra(cls, v: dict[str, str]) -> dict[str, str]:
        return dict(sbatch.check_extra(k, val) for k, val in v.items())


class ExperimentConfig(Strict):
    name: str = Field("demo", description="the experiment's name: the first part of its run folders' names")
    plugins: list[str] = Field(default_factory=list, description="Python files (.py) or module names imported "
                               "before the rest of the config is read: each registers tasks, data sources, networks "
                               "or styles (the extending page); a file is recorded by its absolute path")
    task: str = Field(DEFAULT_TASK, description="what the networks learn: one class per image, several, a mask or "
                      "boxes (a plugin may register more)", json_schema_extra={"registry": "tasks"})
    data: DataConfig = DataConfig()
    networks: NetworksConfig = NetworksConfig()
    routing: RoutingConfig = RoutingConfig()
    loss: LossConfig = LossConfig()
    styles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="default options per style, e.g. predictions: {temperature: 4}")
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="each task's own settings, e.g. segmentation: {hd95: true} (the task "
                                          "options below)")
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    tune: TuneConfig = TuneConfig()
    launcher: LauncherConfig = LauncherConfig()

    _edges: list[Edge] = PrivateAttr(default_factory=list)
    _name = field_validator("name")(_folder_name)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        return registered(v, TASKS, "task")

    @model_validator(mode="before")
    @classmethod
    def _legacy_task_keys(cls, raw: Any) -> Any:
        """Keys that held a task's settings before tasks had sections (loss.dice_weight,
        eval.hd95, ...; config.yaml of earlier releases holds them all) move to ``tasks.<task>``;
        an old key given beside the new one overrides it (a --set on the old key changes the
        setting). A default value for a task the config does not run is dropped."""
        if not isinstance(raw, dict):
            return raw
        for name, task in TASKS.items():
            for old, key in task.Options.legacy.items():
                section, field = old.split(".")
                given = raw.get(section)
                if not isinstance(given, dict) or field not in given:
                    continue
                tasks = raw.get("tasks") or {}
                if not isinstance(tasks, dict) or not isinstance(tasks.get(name) or {}, dict):
                    continue  # a malformed tasks section: validation names it
                value = given[field]
                raw = {**raw, section: {k: v for k, v in given.items() if k != field}}
                if value != task.Options.model_fields[key].default or name == raw.get("task"):
                    raw["tasks"] = {**tasks, name: {**(tasks.get(name) or {}), key: value}}
        return raw

    @field_validator("tasks")
    @classmethod
    def _task_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from pydantic import ValidationError

        for name, opts in v.items():
            registered(name, TASKS, "task")
            try:
                TASKS[name].Options.model_validate(opts or {})
            except ValidationError as err:
                first = err.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                allowed = ", ".join(TASKS[name].Options.model_fields) or "none"
                if first["type"] == "extra_forbidden":
                    raise ValueError(f"{name}.{key}: not a setting of task {name}; its settings: {allowed}") from None
                raise ValueError(f"{name}.{key}: {first['msg']} (got {first.get('input')!r})") from None
        return v

    @property
    def task_options(self) -> Any:
        """The chosen task's settings (``tasks.<task>``, defaults filled in)."""
        return TASKS[self.task].Options.model_validate(self.tasks.get(self.task) or {})

    @field_validator("plugins")
    @classmethod
    def _plugin_paths(cls, v: list[str]) -> list[str]:
        from ..plugins import plugin_path

        return [plugin_path(e) for e in v]

    @model_validator(mode="after")
    def _check_styles_and_edges(self) -> "ExperimentConfig":
        for style, opts in self.styles.items():
            check_style_options(style, opts, f"styles.{style}")
        self._edges = resolve_edges(self.routing, list(self.networks.students), self.styles, self.loss,
                                    offline_teacher=self.networks.teacher.mode == "offline")
        task = TASKS[self.task]
        if self.data.source not in sources_for(task):
            raise KDError(f"data.source: '{self.data.source}' is not read for task {task.name}; allowed: "
                          f"{', '.join(sources_for(task))}")
        task.check_config(self)
        if self.train.qat and self.routing.teacher_only:
            raise KDError("train.qat: this run trains the teacher alone (preset teacher); quantization-aware "
                          "epochs are for students, which deploy: set train.qat: false")
        t = self.networks.teacher
        if t.cache and (t.mode != "offline" or (self.data.random_items and not self.data.views)):
            raise KDError("networks.teacher.cache: needs mode offline, and either a fixed number of augmented views "
                          "(data.views: K, e.g. 8) or no random augmentation (data.augment: hflip, vflip, rotate90 "
                          "false and rotate, zoom, shift, shear, intensity 0) and no random patches (data.patch_size, "
                          "decathlon)")
        if t.cache and self.data.mix.on:
            raise KDError("networks.teacher.cache: mixed views (data.mix) differ at every step, so the teacher's "
                          "outputs cannot be kept; set networks.teacher.cache: false")

        run = self.run_name()
        if len(run.encode()) > NAME_MAX:
            raise KDError(f"output.name: the run folder's name '{run[:40]}...' is {len(run.encode())} bytes; a folder "
                          f"name holds at most {NAME_MAX}: shorten name (or set output.name)")
        return self

    @property
    def edges(self) -> list[Edge]:
        """The routing resolved into edges (validated when the config was loaded)."""
        return list(self._edges)

    @property
    def normalisation(self) -> str:
        """data.normalize with auto resolved: ImageNet's statistics for pretrained networks."""
        if self.data.normalize != "auto":
            return self.data.normalize
        nets = [self.networks.teacher, *self.networks.students.values()]
        from ..models.published import names_published

        # a network kdstyles published is fine-tuned from the run's own statistics (its own are in its record)
        return "imagenet" if any(n.pretrained and not names_published(n.pretrained) for n in nets) else "dataset"

    def run_name(self) -> str:
        return self.output.name or f"{self.name}-{self.routing.label}-seed{self.train.seed}"

    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.run_name()
