"""Boxes for the detection task: the CenterNet targets a network learns, the decoding of its
output into boxes, and the detection metrics (COCO mAP, AP@0.5/0.75, mean recall, FROC).

Conventions: a box is ``(x1, y1, x2, y2)`` in pixels of the network's input, ``x2 > x1``,
``y2 > y1`` (pixel edges: a box covering pixels 3..5 is ``(3, y1, 6, y2)``); in volumes
``(x1, y1, z1, x2, y2, z2)`` (x runs along the last array axis, z along the first: MONAI's
``xyzxyz``). A set of ground-truth boxes is a float array (M, 2d + 1): the box and its
class index; rows whose class is -1 are padding (a batch of images with different numbers
of boxes is one tensor). A set of detections is (D, 2d + 2): the box, its score and its
class, padded with score 0. So the class is always the last column.

The network's output (B, K + 2d, *spatial) at the input's resolution holds, per pixel
(voxel), a heatmap logit per class and 2d box channels: the box centre's sub-pixel offset
along each coordinate and its log size along each. A box is learned at the pixel of its
centre; the heatmap's target is a Gaussian around it (penalty-reduced focal loss, as in
CenterNet, Zhou et al. 2019, "Objects as Points"; in 3D the radius is the smallest of the
three planes' radii). Decoding keeps each heatmap peak (a pixel that is the maximum of its
3x3 or 3x3x3 neighbourhood) as a box: no anchors and no NMS.

Decoding and the metrics use numpy only (``kdstyles predict`` decodes an ONNX model's
output where torch is not installed); the training targets and losses import torch inside.
Nothing here imports the rest of kdstyles.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def box_channels(dims: int) -> int:
    """Box channels per pixel: the centre's offset and the log size along each coordinate."""
    return 2 * dims


# the heatmap's initial foreground probability (bias of its last convolution), by spatial dimensions: volumes have
# 8-30x more background voxels per object; a lower start keeps the first focal losses (negatives summed over every
# voxel) from dwarfing the positives
HEAT_PRIOR = {2: 0.1, 3: 0.01}
MIN_OVERLAP = 0.7  # CenterNet: a centre within the Gaussian's radius keeps IoU >= this with the box
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # COCO: 0.50:0.05:0.95
FROC_RATES = (0.5, 1.0, 2.0, 4.0)  # false positives per image at which FROC sensitivity is read


# ----------------------------------------------------------------------------- targets

def gaussian_radius(w: torch.Tensor, h: torch.Tensor, min_overlap: float = MIN_OVERLAP) -> torch.Tensor:
    """The largest shift of a box's corners that keeps IoU >= ``min_overlap`` with it (the three
    cases of CenterNet's radius: both corners in, one out, both out), per box."""
    import torch

    a1, b1 = 1.0, h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + torch.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).clamp_min(0)


def encode(boxes: torch.Tensor, num_classes: int, shape: tuple[int, ...]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets for a batch of padded ground truth (B, M, 2d + 1) on a grid of ``shape`` (H, W)
    or (D, H, W): the heatmaps (B, K, *shape) with a peak of exactly 1 at each box's centre
    pixel; the box channels (B, 2d, *shape) at those pixels; and the mask (B, *shape) of
    centre pixels (where the box channels are learned)."""
    import torch

    shape = tuple(int(v) for v in shape)
    d = len(shape)
    b_ = boxes.shape[0]
    device = boxes.device
    heat = torch.zeros(b_, num_classes, *shape, device=device)
    regress = torch.zeros(b_, 2 * d, *shape, device=device)
    centres = torch.zeros(b_, *shape, dtype=torch.bool, device=device)
    valid = boxes[..., -1] >= 0
    if not bool(valid.any()):
        return heat, regress, centres
    img, _ = valid.nonzero(as_tuple=True)
    b = boxes[valid].float()
    size = (b[:, d:2 * d] - b[:, :d]).clamp_min(1e-3)  # per coordinate x, y(, z)
    centre = (b[:, :d] + b[:, d:2 * d]) / 2
    extent = torch.tensor(shape[::-1], device=device, dtype=torch.float)  # coordinate j runs along axis d-1-j
    index = torch.minimum(centre.floor().clamp_min(0), extent - 1)
    pairs = [(0, 1)] if d == 2 else [(0, 1), (0, 2), (1, 2)]
    radius = torch.stack([gaussian_radius(size[:, i], size[:, j]) for i, j in pairs]).amin(0)
    sigma = (2 * radius.floor() + 1) / 6
    dist = torch.zeros(len(b), *shape, device=device)
    for j in range(d):  # squared distance to the centre pixel, coordinate by coordinate
        axis = d - 1 - j
        grid = torch.arange(shape[axis], device=device, dtype=torch.float).view(
            1, *[-1 if a == axis else 1 for a in range(d)])
        dist = dist + (grid - index[:, j].view(-1, *(1,) * d)) ** 2
    g = torch.exp(-dist / (2 * sigma.view(-1, *(1,) * d) ** 2))  # (n, *shape), exactly 1 at the centre
    cls = b[:, -1].long()
    cells = math.prod(shape)
    flat = heat.view(b_ * num_classes, cells)
    flat.scatter_reduce_(0, (img * num_classes + cls).view(-1, 1).expand(-1, cells), g.view(len(g), -1),
                         reduce="amax")
    at = tuple(index[:, d - 1 - a].long() for a in range(d))  # the centre pixel's array index
    for j in range(d):
        regress[(img, torch.full_like(img, j), *at)] = centre[:, j] - index[:, j] - 0.5
        regress[(img, torch.full_like(img, d + j), *at)] = size[:, j].log()
    centres[(img, *at)] = True
    return heat, regress, centres


def focal_loss(logits: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss, normalised by the number of boxes."""
    import torch.nn.functional as F

    logits = logits.float()
    log_p, log_1p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = log_p.exp()
    pos = heat.eq(1).float()
    pos_loss = -((1 - p) ** alpha * log_p * pos).sum()
    neg_loss = -((1 - heat) ** beta * p ** alpha * log_1p * (1 - pos)).sum()
    return (pos_loss + neg_loss) / pos.sum().clamp_min(1)


# ----------------------------------------------------------------------------- decoding

def activate(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The network's output with heatmap probabilities (sigmoid) and the raw box channels."""
    import torch

    logits = logits.float()
    return torch.cat([logits[:, :num_classes].sigmoid(), logits[:, num_classes:]], dim=1)


def decode(maps: np.ndarray, num_classes: int, max_detections: int = 100) -> np.ndarray:
    """Activated maps (B, K + 2d, *spatial) to detections (B, D, 2d + 2) ``box, score, class``,
    best first: the ``D = max_detections`` highest heatmap peaks (pixels that are the maximum
    of their 3x3, or 3x3x3, neighbourhood) over all classes."""
    maps = np.asarray(maps, dtype=np.float32)
    heat, reg = maps[:, :num_classes], maps[:, num_classes:]
    b_, k_, *shape = heat.shape
    d = len(shape)
    padded = np.pad(heat, ((0, 0), (0, 0), *((1, 1),) * d), constant_values=-np.inf)
    neighbours = np.full_like(heat, -np.inf)
    for shift in np.ndindex(*(3,) * d):
        np.maximum(neighbours, padded[(slice(None), slice(None), *(slice(o, o + n) for o, n in zip(shift, shape)))],
                   out=neighbours)
    peaks = np.where(neighbours == heat, heat, 0).reshape(b_, -1)
    cells = math.prod(shape)
    n = min(max_detections, k_ * cells)
    idx = np.argpartition(-peaks, n - 1, axis=1)[:, :n] if n < peaks.shape[1] else np.tile(np.arange(n), (b_, 1))
    scores = np.take_along_axis(peaks, idx, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    idx, scores = np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)
    cls, pix = idx // cells, idx % cells
    at = np.unravel_index(pix, shape)  # array index along each spatial axis
    r = np.take_along_axis(reg.reshape(b_, 2 * d, -1), pix[:, None, :].repeat(2 * d, 1), 2)
    lo, hi = [], []
    for j in range(d):  # coordinate j (x, y, z) runs along array axis d-1-j
        extent = shape[d - 1 - j]
        c = at[d - 1 - j] + 0.5 + r[:, j]
        half = np.exp(np.clip(r[:, d + j], -10, 10)) / 2
        lo.append(np.clip(c - half, 0, extent))
        hi.append(np.clip(c + half, 0, extent))
    out = np.stack([*lo, *hi, scores, cls.astype(np.float32)], axis=2)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- metrics

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (n, 2d) and b (m, 2d): (n, m) (areas, or volumes in 3D)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    d = a.shape[1] // 2
    lt = np.maximum(a[:, None, :d], b[None, :, :d])
    rb = np.minimum(a[:, None, d:2 * d], b[None, :, d:2 * d])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, d:2 * d] - a[:, :d]).prod(-1)
    area_b = (b[:, d:2 * d] - b[:, :d]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _match(dets: list[np.ndarray], gts: list[np.ndarray], cls: int, threshold: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one class at one IoU threshold over all images: each
    detection, best score first, takes the unmatched ground-truth box it overlaps most (IoU
    >= threshold). Returns the true-positive flag and the image index of every detection, best
    first."""
    scores, tps, images = [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        d = d[(d[:, -1] == cls) & (d[:, -2] > 0)]
        d = d[np.argsort(-d[:, -2], kind="stable")]
        g = g[g[:, -1] == cls]
        hit = np.zeros(len(d), dtype=bool)
        if len(d) and len(g):
            overlaps = iou(d[:, :-2], g[:, :-1])
            taken = np.zeros(len(g), dtype=bool)
            for j in np.flatnonzero(overlaps.max(1) >= threshold):  # the others can take no box
                cand = np.where(taken, -1.0, overlaps[j])
                best = int(cand.argmax())
                if cand[best] >= threshold:
                    taken[best], hit[j] = True, True
        tps.extend(hit.tolist())
        scores.extend(d[:, -2].tolist())
        images.extend([i] * len(d))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(tps, dtype=bool)[order], np.asarray(images, dtype=np.int64)[order]


def detection_metrics(dets: list[np.ndarray], gts: list[np.ndarray], num_classes: int) -> dict[str, float]:
    """mAP over IoU 0.50:0.95, AP at 0.5 and 0.75 (COCO's 101-point interpolated AP), mean
    recall (at up to D detections per image, over the same thresholds) and FROC sensitivity at
    0.5/1/2/4 false positives per image (IoU >= 0.5), each the mean over classes that have
    ground truth; {} when no image has any."""
    if not any(len(g) for g in gts):
        return {}
    return {k: float(v[0]) for k, v in Matches(dets, gts, num_classes).metrics().items()}


TEACHER_SCORE = 0.5  # the teacher's detections a student is asked to reproduce (fidelity)


def fidelity(teacher: list[np.ndarray], student: list[np.ndarray], num_classes: int) -> dict[str, float]:
    """How closely a student's detections follow the teacher's, per image: the student's AP50
    against the teacher's detections scoring at least ``TEACHER_SCORE`` taken as ground truth
    (``agreement``; NaN when the teacher is confident about nothing)."""
    pseudo = [np.delete(t[t[:, -2] >= TEACHER_SCORE], -2, axis=1) for t in teacher]  # drop the score column
    if not any(len(p) for p in pseudo):
        return {"agreement": float("nan")}
    return {"agreement": detection_metrics(student, pseudo, num_classes)["ap50"]}


def unpad(boxes: np.ndarray) -> np.ndarray:
    """Drop padding rows (class -1 for ground truth, (2d + 1) columns; score 0 for detections,
    (2d + 2) columns)."""
    if boxes.shape[-1] % 2:
        return boxes[boxes[:, -1] >= 0]
    return boxes[boxes[:, -2] > 0]


# ----------------------------------------------------------------------------- volumes in the world

def grid_to_world(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """3D boxes (n, 6+) in voxel edges of a grid (x along its last axis) to world millimetres
    through the grid's 4x4 affine (array index -> world): (n, 6) ``x1, y1, z1, x2, y2, z2`` along
    the world's axes, the smallest box that holds the 8 corners."""
    import itertools

    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) == 0:
        return np.zeros((0, 6))
    edges = boxes[:, :6].reshape(-1, 2, 3)[:, :, ::-1] - 0.5  # (n, lo/hi, array axis): index of the edge
    corners = np.stack([edges[:, pick, range(3)] for pick in itertools.product((0, 1), repeat=3)], 1)
    world = corners @ np.asarray(affine, dtype=np.float64)[:3, :3].T + np.asarray(affine, dtype=np.float64)[:3, 3]
    return np.concatenate([world.min(1), world.max(1)], axis=1)


def world_to_grid(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of :func:`grid_to_world`: world boxes (n, 6+) to voxel edges of the grid
    whose affine is given, ``x1, y1, z1, x2, y2, z2`` with x along the grid's last axis."""
    import itertools

    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) == 0:
        return np.zeros((0, 6))
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    ends = boxes[:, :6].reshape(-1, 2, 3)  # (n, lo/hi, world axis)
    corners = np.stack([ends[:, pick, range(3)] for pick in itertools.product((0, 1), repeat=3)], 1)
    index = corners @ inverse[:3, :3].T + inverse[:3, 3] + 0.5  # (n, 8, array axis) as voxel edges
    lo, hi = index.min(1)[:, ::-1], index.max(1)[:, ::-1]  # array axes (0, 1, 2) -> coordinates (z, y, x) reversed
    return np.concatenate([lo, hi], axis=1)


# ----------------------------------------------------------------------------- test images drawn again

class Matches:
    """What COCO matching decided on a set of test images, kept so that the detection metrics of
    any multiset of them (a bootstrap draw of the images) follow from how often each image is
    drawn, without matching again: matching is per image, so each detection stays a true or a
    false positive whatever else is drawn, and the detections keep their order by score.

    Per class and IoU threshold, over the detections in score order, only the true positives
    matter for AP (recall rises only there, and the interpolated precision is a maximum over
    them): kept are the image of each true positive and, sparse (images, T + 1), how many false
    positives each image has between consecutive true positives."""

    def __init__(self, dets: list[np.ndarray], gts: list[np.ndarray], num_classes: int):
        from scipy import sparse

        self.images, self.num_classes = len(gts), num_classes
        self.gt = np.zeros((self.images, num_classes))
        for i, g in enumerate(gts):
            self.gt[i] = np.bincount(g[:, -1].astype(np.int64), minlength=num_classes)[:num_classes]
        self.tables: dict[tuple[int, float], tuple[np.ndarray, sparse.csr_matrix]] = {}
        for c in range(num_classes):
            if not self.gt[:, c].any():
                continue
            for t in IOU_THRESHOLDS:
                tp, image = _match(dets, gts, c, t)
                at = np.flatnonzero(tp)  # positions of the true positives in score order
                before = np.searchsorted(at, np.flatnonzero(~tp))  # true positives ranked above each false one
                fps = sparse.csr_matrix((np.ones(len(before)), (image[~tp], before)),
                                        shape=(self.images, len(at) + 1))  # duplicates are summed
                self.tables[(c, t)] = (image[at], fps)

    def same_images(self, other: object) -> bool:
        """Scored on the same test images (as far as their objects tell)."""
        return isinstance(other, Matches) and np.array_equal(self.gt, other.gt)

    def metrics(self, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """:func:`detection_metrics` of the images drawn ``counts`` (k, images) times each, for
        each of the k draws: ``{metric: (k,)}``; all ones gives the test split's own metrics.
        A draw without ground truth of a class leaves that class out (NaN if no class is left)."""
        counts = np.ones((1, self.images)) if counts is None else np.asarray(counts, dtype=np.float64)
        k = len(counts)
        points = np.linspace(0, 1, 101)
        ap = np.full((len(IOU_THRESHOLDS), self.num_classes, k), np.nan)
        recall = np.full_like(ap, np.nan)
        sens = np.full((self.num_classes, len(FROC_RATES), k), np.nan)
        drawn = counts.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            for (c, t), (tp_image, fps) in self.tables.items():
                i = IOU_THRESHOLDS.index(t)
                n_gt = counts @ self.gt[:, c]
                has = n_gt > 0
                n_tp = len(tp_image)
                if n_tp == 0:
                    ap[i, c] = recall[i, c] = np.where(has, 0.0, np.nan)
                    if t == 0.5:
                        sens[c] = np.where(has, 0.0, np.nan)
                    continue
                ctp = np.cumsum(counts[:, tp_image], 1)  # (k, T): drawn true positives up to each
                cfp = np.cumsum(np.asarray((fps.T @ counts.T).T), 1)[:, :n_tp]  # and false ones above it
                rec = ctp / n_gt[:, None]
                envelope = np.maximum.accumulate((ctp / np.maximum(ctp + cfp, 1))[:, ::-1], axis=1)[:, ::-1]
                first = (rec[:, :, None] < points).sum(1)  # the first true positive reaching each recall point
                at = np.take_along_axis(envelope, np.minimum(first, n_tp - 1), 1)
                ap[i, c] = np.where(has, np.where(first < n_tp, at, 0.0).mean(1), np.nan)
                recall[i, c] = np.where(has, rec[:, -1], np.nan)
                if t == 0.5:
                    rate = cfp / np.maximum(drawn, 1)[:, None]
                    sens[c] = np.where(has, np.stack([np.where(rate <= r, rec, 0).max(1) for r in FROC_RATES]), np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a draw with no ground truth at all: NaN
                per_t = np.nanmean(ap, axis=1)  # (thresholds, k): the mean over classes with ground truth
                out = {"map": np.mean(per_t, 0), "ap50": per_t[IOU_THRESHOLDS.index(0.5)],
                       "ap75": per_t[IOU_THRESHOLDS.index(0.75)],
                       "mean_recall": np.mean(np.nanmean(recall, axis=1), 0)}
                for j, r in enumerate(FROC_RATES):
                    out[f"froc_{r:g}"] = np.nanmean(sens[:, j], axis=0)
        return out
