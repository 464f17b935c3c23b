"""What a task's labels are, as the data code needs to know it: one kind of label per task
(``Task.label_kind`` names it), each kind the one place that says how its labels are read
from folders and CSV files, made from generated data, moved by augmentation, checked and
counted. The data code asks ``LABELS[task.label_kind]`` and never which task runs or what
its labels look like.

Kinds: ``class-index`` (one class per image: classification), ``multi-hot`` (any number of
classes per image), ``mask`` (a class per pixel: segmentation) and ``box-list`` (boxes with a
class each: detection). Adding a task whose labels are one of these needs nothing here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import KDError
from . import checks, files
from .options import option

VOLUME_FILES = ("volume files in class folders are for 3D classification (and a box CSV for 3D detection); "
                "3D segmentation reads data.source: decathlon")


class Labels:
    name: ClassVar[str]
    multi_hot: ClassVar[bool] = False  # (N, K) rows of 0/1 rather than (N,) class indices
    per_pixel: ClassVar[bool] = False  # a class per pixel (voxel): predictions are masks

    # ---------------------------------------------------------------- reading

    def folder(self, root: Path, cfg: Any, space: Any) -> tuple[list[files.Record], dict[str, Any], Any]:
        """``source: folder``: the records of ``root`` (files of ``space``, a
        :class:`~kdstyles.common.dims.Dims`), what :func:`~kdstyles.data.sources.from_files`
        takes besides (``mask_of`` / ``boxes_of``) and the files left out (a Counter, or None)."""
        from .listing import list_folder

        records, others = list_folder(root, space)
        return records, {}, others

    def csv(self, path: Path, cfg: Any, space: Any) -> tuple[list[files.Record], dict[str, Any]]:
        """``source: csv``: the records of a CSV file and what the loaders take besides."""
        from .listing import list_csv

        return list_csv(path, self.multi_hot, cfg.classes, cfg.uncertain), {}

    def of_records(self, records: list[files.Record], cfg: Any, where: str) -> tuple[list[str], np.ndarray]:
        """The class names and labels of files with a class each (``records[i].label``)."""
        names = files.class_list(records, option(cfg, "classes"), where, cfg.is_external)
        if not names:
            raise KDError(f"{where}: no images found (a path relative to the folder the command runs in?)")
        if len(names) < 2:
            raise KDError(f"{where}: holds one class only ('{names[0]}'); a classifier needs at least two "
                          "(class folders, or label values in the CSV)")
        index = {n: k for k, n in enumerate(names)}
        return names, np.array([index[r.label] for r in records], dtype=np.int64)

    def generated(self, images: np.ndarray, labels: Any) -> tuple:
        """A generated split as :func:`~kdstyles.data.sources.from_arrays` takes it."""
        return images, labels

    # ---------------------------------------------------------------- checking and using

    def check(self, split: str, labels: np.ndarray, num_classes: int, names: list[str],
              report: checks.DataReport) -> None:
        """The labels are of this kind and inside the class list; counts per class into the report
        (masks and boxes: their image-level labels, with and without foreground or objects)."""
        checks.check_class_labels(split, labels, num_classes, names, report)

    def strata(self, labels: np.ndarray) -> np.ndarray:
        """One group per image for stratified splits: its class."""
        return labels

    def target(self, labels: np.ndarray, index: int) -> Any:
        """What the supervised loss takes for an image without a mask or boxes: its class."""
        return int(labels[index])

    def draw_weights(self, labels: np.ndarray) -> np.ndarray:
        """Each training image's chance of a draw under ``data.sampler: balanced``: one over its
        class's count, so every class is drawn equally often."""
        return 1.0 / np.bincount(labels)[labels]

    def augment(self, aug: Any) -> dict[str, Any]:
        """How augmentation treats these labels: what ``build_augment`` and ``ImageDataset`` take."""
        return {"with_mask": False, "geometric": True}

    def box_moves(self, aug: Any | None) -> dict[str, Any]:
        """The box transforms a split's dataset applies (``aug``: the training split's
        ``data.augment``; None: a split that is not augmented). Only boxes move themselves."""
        return {"box_flips": (False, False, False), "box_affine": (0.0, 0.0, 0.0, 0.0)}

    def check_counts(self, report: checks.DataReport, cfg: Any, remedy: str, unit: str) -> None:
        """Warnings about the class counts: the counts are of images per class."""
        checks.check_balance(report, cfg.imbalance_ratio, remedy, unit)
        checks.check_class_names(report)

    def table_rows(self, bundle: Any, splits: list[str], unit: str) -> list[tuple[str, ...]]:
        """The rows under the per-class counts in ``kdstyles data inspect``."""
        return [("[bold]total", *(f"[bold]{sum(bundle.report.counts[s])}" for s in splits))]


class ClassIndex(Labels):
    name = "class-index"


class MultiHot(Labels):
    name = "multi-hot"
    multi_hot = True

    def of_records(self, records, cfg, where):
        return files.multi_hot(records, option(cfg, "classes"), where, option(cfg, "none_label"))

    def check(self, split, labels, num_classes, names, report):  # counts: the images showing each class
        checks.check_multi_hot(split, labels, num_classes, names, report)

    def strata(self, labels):  # each image's first class; images without any: a group of their own
        return np.where(labels.any(1), labels.argmax(1), labels.shape[1])

    def target(self, labels, index):  # a (K,) float vector
        import torch

        return torch.from_numpy(labels[index].astype(np.float32))

    def draw_weights(self, labels):
        """Multi-hot labels have no one class: an image counts as its rarest label (images
        without any as one more group), so every image of the rarest finding is drawn as often
        as in a single-label balanced draw, and a common label is drawn at least as often as the
        rarest (more where it travels with rarer ones)."""
        groups = np.c_[labels.astype(bool), ~labels.astype(bool).any(1)]
        share = 1.0 / np.maximum(groups.sum(0), 1)
        return np.where(groups, share, 0.0).max(1)

    def table_rows(self, bundle, splits, unit):  # an image counts under each of its classes
        return [(f"[bold]{unit}", *(f"[bold]{len(bundle.splits[s])}" for s in splits))]


class Mask(Labels):
    """The image-level label says whether the mask has foreground."""
    name = "mask"
    per_pixel = True

    def folder(self, root, cfg, space):
        from . import segfolder

        if space.volumes:  # validation: volume folders of masks are decathlon's
            raise KDError(f"data.root '{root}': {VOLUME_FILES}")
        records, mask_of = segfolder.list_pairs(root)
        return records, {"mask_of": mask_of}, None

    def csv(self, path, cfg, space):
        if space.volumes:  # validation: volume masks are decathlon's
            raise KDError(f"data.path '{path}': {VOLUME_FILES}")
        raise KDError(f"data.path '{path}': a CSV of images with masks is not read; segmentation reads "
                      "data.source: folder (images/ and masks/)")

    def generated(self, images, labels):
        return images, (labels.reshape(len(labels), -1).max(1) > 0).astype(np.int64), labels

    def augment(self, aug):
        return {"with_mask": True, "geometric": True}

    def check_counts(self, report, cfg, remedy, unit):
        pass  # counts of images with and without foreground: no classes to balance


class BoxList(Labels):
    """The image-level label says whether an image has objects; boxes are moved by the
    dataset itself (flips, affine), augmentation changes intensities only."""
    name = "box-list"

    def folder(self, root, cfg, space):
        from .boxfiles import read_kvasir

        if space.volumes:  # validation: volume boxes come in a CSV
            raise KDError(f"data.root '{root}': {VOLUME_FILES}")
        records, listing = read_kvasir(root, cfg.classes)
        return records, {"boxes_of": listing}, None

    def csv(self, path, cfg, space):
        from .boxfiles import read_box_csv

        records, listing = read_box_csv(path, cfg.classes, dims=space.n)
        return records, {"boxes_of": listing}

    def generated(self, images, labels):
        return images, np.array([len(b) > 0 for b in labels], dtype=np.int64), None, labels

    def augment(self, aug):
        return {"with_mask": False, "geometric": False}

    def box_moves(self, aug):
        if aug is None:
            return super().box_moves(aug)
        return {"box_flips": (aug.hflip, aug.vflip, aug.rotate90),
                "box_affine": (aug.rotate, aug.zoom, aug.shift, aug.shear)}

    def check_counts(self, report, cfg, remedy, unit):
        pass  # counts of images with and without objects

    def table_rows(self, bundle, splits, unit):  # the rows above count images with and without objects
        return super().table_rows(bundle, splits, unit) + [
            (f"boxes: {name}", *(str(sum(int((b[:, -1] == k).sum()) for b in bundle.splits[s].boxes))
                                 for s in splits))
            for k, name in enumerate(bundle.class_names)]


CLASS_INDEX = ClassIndex()  # images without a task's labels (unlabelled images) are read as this kind
LABELS: dict[str, Labels] = {k.name: k for k in (CLASS_INDEX, MultiHot(), Mask(), BoxList())}


def labels_of(task: Any) -> Labels:
    """The label kind of a task (a :class:`~kdstyles.tasks.Task` class or instance)."""
    return LABELS[task.label_kind]
