"""Detection: boxes around objects (polyps in colonoscopy frames), learned CenterNet-style
(:mod:`kdstyles.common.boxes`): every network outputs a heatmap per class and four box channels
at the input's resolution, from an encoder-decoder body (:mod:`kdstyles.models.centernet`).

Why CenterNet and not MONAI's RetinaNet: anchor-based heads need anchor matching and NMS
(parts of MONAI's detection stack lean on torchvision, which kdstyles cannot install), and
their outputs are lists of anchors per level. A dense heatmap output is one tensor
(B, K + 4, H, W) for the teacher and every student, whatever their sizes: the engine,
the output cache, DDP, ONNX export and the adapters treat it like a segmentation map, and
distillation compares two networks pixel by pixel. The ensemble averages the students'
heatmaps and box channels before decoding (CenterNet's own way of merging flipped
predictions), so it is scored as one more network.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from ..common.dims import dims as space
from ..errors import KDError
from .base import EncoderDecoderTask, TaskOptions


class DetectionOptions(TaskOptions):
    box_weight: float = Field(1.0, ge=0, description="weight of the box L1 (centre offset, log size) beside the "
                                                     "heatmap's focal loss, in the supervised loss")
    max_detections: int = Field(100, ge=1, description="boxes kept per image (the highest peaks)")
    resumable: ClassVar[tuple[str, ...]] = ("max_detections",)
    legacy: ClassVar[dict[str, str]] = {"loss.box_weight": "box_weight", "eval.max_detections": "max_detections"}

# the body's output channels at widen 1 (the heads' width; at least 8), by spatial dimensions: volumes' heads run at
# full resolution, where a 3x3x3 convolution costs 27 MACs a weight
HEAD_WIDTH = {2: 64, 3: 16}
PREDICT_MIN_SCORE = 0.05  # boxes predict writes (objects: those scoring 0.5 or more)


class Detection(EncoderDecoderTask):
    name = "detection"
    exclusive_classes = False
    classes_are = "scores each class at each pixel with its own sigmoid (heatmaps and boxes)"
    loss_name = "focal_box"
    selection = "map"
    sources = ("synthetic", "csv", "coco", "folder")
    label_kind = "box-list"
    patches = True
    synthetic = {2: "synthetic_det", 3: "synthetic_vol_det"}
    spatial_dims = (2, 3)
    arch_hint = "an encoder-decoder body for the CenterNet head (unet, basicunet, flexunet-<encoder>)"
    title = "Detection"
    output_kind = "heatmaps"
    hub_pipeline = "object-detection"
    bundle_refusal = ("its output (a heatmap per class and box channels per pixel, decoded into boxes by kdstyles) "
                      "has no format in MONAI's bundle conventions, whose detection bundles return decoded boxes; "
                      "export it with --format onnx or torchscript")
    output_words = "heatmap probabilities per class and the box channels per pixel"
    mixes = ()
    mix_refusal = "cannot mix its boxes (a box-correct mix is not built)"
    overlay_writers = {2: "write_box_overlays", 3: "write_volume_box_overlays"}

    Options = DetectionOptions

    def __init__(self, num_classes: int, box_weight: float = 1.0, max_detections: int = 100):
        super().__init__(num_classes, box_weight=box_weight, max_detections=max_detections)

    # ------------------------------------------------------------------ training

    def build_network(self, spec, channels, image_size, where, dims=2):
        from ..models.centernet import CenterNet
        from ..models.zoo import build_network

        width = max(8, int(round(HEAD_WIDTH[dims] * spec.widen)))
        body = build_network(spec.arch, channels, width, image_size, spec.widen, spec.stem, spec.pretrained,
                             where=where, spatial_dims=dims)
        return CenterNet(body, width, self.num_classes, dims)

    def supervised(self, logits, y, class_weights):
        from ..common.boxes import encode, focal_loss

        k = self.num_classes
        heat, regress, centres = encode(y, k, logits.shape[2:])
        focal = focal_loss(logits[:, :k], heat)
        mask = centres.unsqueeze(1).float()
        box = ((logits[:, k:].float() - regress).abs() * mask).sum() / mask.sum().clamp_min(1)
        return focal + self.options.box_weight * box

    def check_output(self, where, logits, sample):
        boxes = 2 * (sample.ndim - 2)
        want = (self.num_classes + boxes, *sample.shape[2:])
        if logits.ndim != sample.ndim or tuple(logits.shape[1:]) != want:
            size = ", ".join(map(str, sample.shape[2:]))
            raise KDError(f"{where}: output shape {tuple(logits.shape)} does not match (batch, "
                          f"{self.num_classes} classes + {boxes} box channels, {size}); a detection network "
                          "returns heatmaps and box channels at the input's size")

    def activate(self, logits):
        from ..common.boxes import activate

        return activate(logits, self.num_classes)

    def condense(self, probs):
        import torch

        from ..common.boxes import decode

        return torch.from_numpy(decode(probs.detach().cpu().numpy(), self.num_classes, self.options.max_detections))

    def fidelity(self, teacher, student):
        """No KL between box lists: ``agreement`` is the student's AP50 against the teacher's
        confident detections (boxes.fidelity)."""
        from ..common.boxes import fidelity, unpad

        return fidelity([unpad(d) for d in teacher.numpy()], [unpad(d) for d in student.numpy()], self.num_classes)

    def metrics(self, probs, labels, spacing=None):
        from ..common.boxes import detection_metrics, unpad

        dets = [unpad(d) for d in probs.numpy()]
        gts = [unpad(g) for g in labels.numpy()]
        return detection_metrics(dets, gts, self.num_classes)

    def per_image(self, probs, labels):
        return {}  # mAP is not a mean over images: comparisons draw images from outputs.npz (kept_outputs)

    @classmethod
    def drawable(cls, outputs, labels, num_classes):
        from ..common.boxes import Matches, unpad

        gts = [unpad(g) for g in labels]
        return {n: Matches([unpad(d) for d in dets], gts, num_classes) for n, dets in outputs.items()}

    # ------------------------------------------------------------------ deployment

    def output_shape(self, dims: int = 2):
        return ["batch", "channels", *space(dims).axes]

    def prediction_header(self, class_names, space=None):
        return ["path", "objects", "detections"]

    def prediction_row(self, path: Path, probs, class_names, out_dir, index, volume=None):
        """``objects``: boxes scoring at least 0.5; ``detections``: a JSON list of every box scoring
        at least 0.05, best first (equal written scores by class, then corners),
        ``[x1, y1, x2, y2, score, class]`` in the input file's pixels; for a volume
        ``[x1, y1, z1, x2, y2, z2, score, class]`` in world millimetres (the file's affine, after
        reorientation)."""
        import json

        import numpy as np

        from ..common.boxes import decode

        dets = decode(probs[None], self.num_classes, self.options.max_detections)[0]
        dets = dets[dets[:, -2] >= PREDICT_MIN_SCORE]
        d = probs.ndim - 1
        if volume is None:
            from ..store.imageio import image_size

            extent = image_size(path)
        else:
            extent = volume[0][::-1]  # the prepared volume's x, y, z extent in voxels
        scale = np.array([e / n for e, n in zip(extent, probs.shape[1:][::-1])] * 2)  # resized back
        boxes = dets[:, :2 * d] * scale
        if volume is not None and len(boxes):  # voxel edges -> world mm through the affine
            from ..common.boxes import grid_to_world

            boxes = grid_to_world(boxes, volume[1])
        rows = [[*(round(float(v), 1) for v in b), round(float(det[-2]), 4), class_names[int(det[-1])]]
                for b, det in zip(boxes, dets)]
        # Best first as written; boxes of equal written score by class, then corners, so that two
        # runtimes whose scores differ below the fourth decimal write them in the same order.
        rows.sort(key=lambda r: (-r[-2], r[-1], *r[:-2]))
        return [str(path), str(int((dets[:, -2] >= 0.5).sum())), json.dumps(rows)]
