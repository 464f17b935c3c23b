"""Segmentation: per-pixel (per-voxel) logits (B, K, H, W) or (B, K, D, H, W) with K >= 2,
Dice + CE, Dice/IoU metrics (and HD95 / surface distance in mm with the voxel spacing).

A binary mask is two classes (background, foreground), so the predictions style's KL over
classes is complete at every pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ..errors import KDError
from ..common.dims import dims as space
from .base import EncoderDecoderTask, TaskOptions


class SegmentationOptions(TaskOptions):
    dice_weight: float = Field(1.0, ge=0, description="weight of Dice in the supervised Dice + CE loss (CE: 1)")
    hd95: bool = Field(False, description="also the 95th-percentile Hausdorff distance and the average surface "
                                          "distance (pixels; mm for volumes)")
    resumable: ClassVar[tuple[str, ...]] = ("hd95",)
    legacy: ClassVar[dict[str, str]] = {"loss.dice_weight": "dice_weight", "eval.hd95": "hd95"}


class Segmentation(EncoderDecoderTask):
    name = "segmentation"
    loss_name = "dice_ce"
    selection = "dice"
    sources = ("synthetic", "folder", "decathlon")
    label_kind = "mask"
    per_pixel = True
    patches = True
    synthetic = {2: "synthetic_seg", 3: "synthetic_vol_seg"}
    spatial_dims = (2, 3)
    arch_hint = "an encoder-decoder (unet, basicunet, flexunet-<encoder>) or a Hugging Face teacher (hf:...)"
    title = "Segmentation"
    hub_pipeline = "image-segmentation"
    output_words = "per-pixel class probabilities"
    mixes = ("cutmix",)
    mix_refusal = "mixes masks by CutMix only (a blend of two masks is not a mask)"
    overlay_writers = {2: "write_overlays", 3: "write_volume_overlays"}

    Options = SegmentationOptions

    @classmethod
    def accepts_arch(cls, arch: str) -> bool:
        from ..models.hf import is_hf

        return super().accepts_arch(arch) or is_hf(arch)  # a frozen backbone, its head fitted per patch

    def __init__(self, num_classes: int, dice_weight: float = 1.0, hd95: bool = False):
        super().__init__(num_classes, dice_weight=dice_weight, hd95=hd95)
        self._dice_ce = None

    def supervised(self, logits, y, class_weights):
        if self._dice_ce is None:
            from monai.losses import DiceCELoss

            self._dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=self.options.dice_weight, lambda_ce=1.0)
        return self._dice_ce(logits.float(), y.unsqueeze(1))

    def volume_prediction_words(self, windows: bool) -> str:
        return ", with a NIfTI mask per volume on its own grid (sliding windows of the input's size)."

    def mix_targets(self, y, mix):
        """CutMix: the mask of the mixed image (the box taken from the reversed batch's masks)."""
        mixed = mix.masks(y)
        return mixed, mixed, 1.0

    def check_output(self, where, logits, sample):
        want = (self.num_classes, *sample.shape[2:])
        if logits.ndim != sample.ndim or tuple(logits.shape[1:]) != want:
            size = ", ".join(map(str, sample.shape[2:]))
            raise KDError(f"{where}: output shape {tuple(logits.shape)} does not match (batch, "
                          f"{self.num_classes} classes, {size}); a segmentation network returns per-pixel "
                          "class logits at the input's size")

    calibrates = True

    def calibration_rows(self, probs, labels):
        """The pixels (voxels) of a seeded sample, a softmax each, one temperature."""
        from ..common.calibration import pixel_rows

        return (*pixel_rows(probs, labels), None)

    def metrics(self, probs, labels, spacing=None):
        from ..common.metrics import segmentation_metrics

        return segmentation_metrics(probs, labels, self.options.hd95, spacing)

    def details(self, probs, labels):
        from ..common.metrics import segmentation_details

        return segmentation_details(probs, labels)

    def per_image(self, probs, labels) -> dict[str, list[float]]:
        from ..common.metrics import per_image_scores

        dice, iou = per_image_scores(probs.argmax(1), labels, probs.shape[1])
        return {"dice": dice.tolist(), "iou": iou.tolist()}

    def prediction_header(self, class_names, space=None):
        unit = space.mask_unit if space is not None else None  # volumes: each class's size in millilitres
        return ["path", "mask", "foreground_fraction", *((f"{unit}_{c}" for c in class_names[1:]) if unit else ())]

    def volume_prediction_row(self, path: Path, mask_path: Path, mask, voxel_ml: float, class_names) -> list[str]:
        """A volume's row: the input, its mask file (written by predict), the foreground fraction
        and each foreground class's volume in millilitres."""
        import numpy as np

        counts = np.bincount(mask.ravel(), minlength=len(class_names))
        return [str(path), str(mask_path), f"{float((mask > 0).mean()):.6f}",
                *(f"{counts[k] * voxel_ml:.3f}" for k in range(1, len(class_names)))]

    def prediction_row(self, path: Path, probs, class_names, out_dir, index, volume=None):
        mask_path = out_dir / "masks" / f"{index:05d}-{path.stem}.png"
        return [str(path), str(mask_path), f"{write_mask(mask_path, probs, path):.6f}"]

    def bundle_output(self, class_names, side, dims=2):
        """Per-pixel probabilities; the bundle writes each input's argmax mask (class indices; a
        binary mask as 0/255, as ``predict`` writes it): PNG at the input image's own size for
        images (as ``predict`` resizes it back: nearest), NIfTI on the input volume's own grid (the preparation inverted) for volumes."""
        space_ = space(dims)
        binary = len(class_names) == 2 and space_.resized_on_read  # a PNG mask: 0/255 as predict writes it
        save = {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "mask",
                "output_ext": space_.mask_suffix, "output_dtype": "$numpy.uint8", "resample": False,
                "separate_folder": False, "print_log": False, **({"scale": 255} if binary else {})}
        steps = [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
        if space_.resized_on_read:
            # back at the input file's own size (nearest, with Pillow, as predict does), then rows first
            # (kdstyles' layout) -> MONAI's PNG writer's (width first)
            steps += [{"_target_": "Lambda", "func": RESIZE_BACK},
                      {"_target_": "Transposed", "keys": "pred", "indices": [0, 2, 1]}]
        else:  # back through orientation and spacing, onto the volume file's own grid (nearest)
            steps.append({"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                          "nearest_interp": True, "to_tensor": True})
        return {"type": "image", "format": "labels", "spatial_shape": [side] * len(space_.axes),
                "value_range": [0, 1], "postprocessing": [*steps, save], "handlers": [],
                "writes": f"one mask per input, NAME_mask{save['output_ext']}: "
                          + ("at the image's own size" if space_.resized_on_read else "on the volume's own grid")
                          + (", 0/255" if binary else ", class indices")}


# a MONAI Bundle's 2D mask (class indices, rows first) resized back to its input file's own size with
# Pillow's nearest neighbour, as write_mask does (the bundle's reader resized the image on reading)
RESIZE_BACK = ("$lambda d: dict(d, pred=monai.data.MetaTensor(torch.as_tensor(numpy.asarray("
               "Image.fromarray(d['pred'][0].cpu().numpy().astype(numpy.uint8)).resize("
               "Image.open(d['image'].meta['filename_or_obj']).size, Image.Resampling.NEAREST)))[None], "
               "meta=d['pred'].meta))")


def write_mask(path: Path, probs, source: Path) -> float:
    """The argmax mask at the input image's own size (nearest); binary masks as 0/255."""
    import numpy as np
    from PIL import Image

    from ..store.fileio import atomic_write
    from ..store.imageio import image_size

    mask = probs.argmax(0).astype(np.uint8)
    fraction = float((mask > 0).mean())
    if probs.shape[0] == 2:
        mask = mask * 255
    img = Image.fromarray(mask).resize(image_size(source), Image.Resampling.NEAREST)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return fraction

