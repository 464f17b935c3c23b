"""Detection (CenterNet on the same engine): targets and decoding agree, the metrics match
COCO's definitions (hand cases and MONAI's COCOMetric), boxes move exactly with flips,
bad boxes and configs fail in one line, distillation on boxes keeps gradients isolated, and
a detection run trains, evaluates, draws boxes, exports and predicts."""

import csv
import json
import sys

import numpy as np
import pytest
import torch

from conftest import DATA, assert_gradient_isolation, assert_same_detections
from kdstyles import Experiment, KDError, build_cohort, load_config
from kdstyles.common.boxes import decode, detection_metrics, encode, iou
from kdstyles.data import affine_boxes, flip_boxes, pad_boxes
from kdstyles.store.runfolder import RunFolder

DET = ["task=detection", "networks.teacher.arch=unet", "networks.teacher.widen=0.5",
       "networks.students.s1.arch=unet", "networks.students.s1.widen=0.25",
       "networks.students.s2.arch=basicunet", "networks.students.s2.widen=0.25", "data.image_size=32"]


def test_targets_decode_back_to_the_boxes():
    gt = torch.tensor([[[4.0, 6.0, 14.0, 20.0, 0], [17.5, 3.0, 30.0, 11.0, 1]], [[8, 8, 9, 10, 1], [-1] * 5]])
    heat, regress, centres = encode(gt, 2, (32, 32))
    assert heat.shape == (2, 2, 32, 32) and centres.sum() == 3
    assert heat[0, 0, 13, 9] == 1 and heat[0, 1, 7, 23] == 1 and heat[1, 1, 9, 8] == 1  # centre pixels (y, x)
    assert heat.max() == 1 and 0 < heat[0, 0, 13, 10] < 1  # a Gaussian around each centre
    dets = decode(torch.cat([heat, regress], 1).numpy(), 2, max_detections=5)
    assert dets.shape == (2, 5, 6)
    found = {tuple(np.round(d, 4)) for d in dets[0] if d[4] == 1}
    assert found == {(4.0, 6.0, 14.0, 20.0, 1.0, 0.0), (17.5, 3.0, 30.0, 11.0, 1.0, 1.0)}
    np.testing.assert_allclose(dets[1, 0], [8, 8, 9, 10, 1, 1], atol=1e-4)


def test_metrics_follow_coco_on_hand_cases():
    gt = [np.array([[10, 10, 30, 30, 0]], np.float32)]
    perfect = [np.array([[10, 10, 30, 30, 0.9, 0]], np.float32)]
    m = detection_metrics(perfect, gt, 1)
    assert m["map"] == m["ap50"] == m["ap75"] == m["mean_recall"] == 1 and m["froc_0.5"] == 1
    shifted = np.array([[10, 10, 30, 30]], np.float32) + [4, 0, 4, 0]  # IoU 16*20 / (2*400 - 320) = 0.667
    assert iou(shifted, gt[0][:, :4])[0, 0] == pytest.approx(2 / 3)
    m = detection_metrics([np.c_[shifted, [[0.9, 0]]]], gt, 1)
    assert m["ap50"] == 1 and m["ap75"] == 0 and m["map"] == pytest.approx(0.4)  # 0.50, .55, .60, .65 pass
    # a false positive scored above the true one: precision 1/2 at recall 1
    fp_first = [np.array([[40, 40, 50, 50, 0.95, 0], [10, 10, 30, 30, 0.9, 0]], np.float32)]
    m = detection_metrics(fp_first, gt, 1)
    assert m["ap50"] == pytest.approx(0.5) and m["froc_0.5"] == 0 and m["froc_1"] == 1
    wrong_class = [np.array([[10, 10, 30, 30, 0.9, 1]], np.float32)]
    assert detection_metrics(wrong_class, [np.c_[gt[0][:, :4], [[0]]]], 2)["ap50"] == 0


def test_fidelity_is_the_students_ap50_against_the_teachers_confident_boxes():
    from kdstyles.common.boxes import fidelity

    teacher = [np.array([[10, 10, 30, 30, 0.9, 0], [40, 40, 50, 50, 0.2, 0]], np.float32),  # one confident box
               np.array([[5, 5, 15, 15, 0.8, 1]], np.float32)]
    assert fidelity(teacher, teacher, 2) == {"agreement": 1.0}
    half = [teacher[0], np.zeros((0, 6), np.float32)]  # misses the second image's box
    assert fidelity(teacher, half, 2)["agreement"] == pytest.approx(0.5)  # class 0 found, class 1 not
    unsure = [t * [1, 1, 1, 1, 0.1, 1] for t in teacher]
    assert np.isnan(fidelity(unsure, teacher, 2)["agreement"])


def random_detections(rng, images, dims=2, classes=2, noise=2.5):
    """Images with 0-3 objects each, jittered detections of most (some of the wrong class) and
    false positives, with distinct scores."""
    gts, dets = [], []
    for _ in range(images):
        n = rng.integers(0, 4)
        lo = rng.uniform(0, 40, (n, dims))
        g = np.c_[lo, lo + rng.uniform(5, 20, (n, dims)), rng.integers(0, classes, n)]
        cls = np.where(rng.random(n) < 0.9, g[:, -1], (g[:, -1] + 1) % classes)
        d = np.c_[g[:, :-1] + rng.normal(0, noise, (n, 2 * dims)), rng.uniform(0.3, 1, n), cls]
        extra = rng.integers(0, 5)
        flo = rng.uniform(0, 40, (extra, dims))
        f = np.c_[flo, flo + 10, rng.uniform(0, 0.8, extra), rng.integers(0, classes, extra)]
        gts.append(g)
        dets.append(np.r_[d, f])
    return dets, gts


@pytest.mark.parametrize("dims", [2, 3])
def test_map_matches_monai_coco_metric(dims):
    from monai.apps.detection.metrics.coco import COCOMetric
    from monai.apps.detection.metrics.matching import matching_batch

    # MONAI sums true positives in float32 (pycocotools and kdstyles in float64), so a recall of
    # exactly k/100 can fall on either side of a recall point: draw sets whose objects per class
    # are prime to 10, where no recall but 0 and 1 is a multiple of 1/100
    for seed in range(100):
        dets, gts = random_detections(np.random.default_rng(seed), 12, dims, noise=2.5 if dims == 2 else 1.2)
        per_class = np.bincount(np.concatenate([g[:, -1] for g in gts]).astype(int), minlength=2)
        if all(n % 2 and n % 5 for n in per_class):
            break
    ours = detection_metrics(dets, gts, 2)
    metric = COCOMetric(classes=["a", "b"], iou_list=[0.5, 0.75], iou_range=(0.5, 0.95, 0.05), max_detection=(100,))
    results = matching_batch(iou_fn=lambda a, b: iou(a, b), iou_thresholds=metric.iou_thresholds,
                             pred_boxes=[d[:, :-2] for d in dets], pred_classes=[d[:, -1].astype(int) for d in dets],
                             pred_scores=[d[:, -2] for d in dets], gt_boxes=[g[:, :-1] for g in gts],
                             gt_classes=[g[:, -1].astype(int) for g in gts])
    theirs = metric(results)[0]
    assert ours["map"] == pytest.approx(theirs["mAP_IoU_0.50_0.95_0.05_MaxDet_100"], abs=1e-6)
    assert ours["ap50"] == pytest.approx(theirs["AP_IoU_0.50_MaxDet_100"], abs=1e-6)
    assert ours["ap75"] == pytest.approx(theirs["AP_IoU_0.75_MaxDet_100"], abs=1e-6)
    assert ours["mean_recall"] == pytest.approx(theirs["mAR_IoU_0.50_0.95_0.05_MaxDet_100"], abs=1e-6)
    assert 0 < ours["map"] < 1


@pytest.mark.parametrize("dims", [2, 3])
def test_matches_give_the_metrics_of_any_draw_of_the_images(dims):
    """boxes.Matches (what comparisons draw test images from) equals matching the drawn images
    again: all once, and images drawn 0-3 times as a bootstrap does."""
    from kdstyles.common.boxes import Matches

    rng = np.random.default_rng(dims)
    dets, gts = random_detections(rng, 25, dims)
    matches = Matches(dets, gts, 2)
    counts = np.stack([np.ones(25, dtype=int), *(rng.multinomial(25, np.ones(25) / 25) for _ in range(6))])
    drawn = matches.metrics(counts)
    for row, c in enumerate(counts):
        again = detection_metrics([d for d, k in zip(dets, c) for _ in range(k)],
                                  [g for g, k in zip(gts, c) for _ in range(k)], 2)
        assert {k: v[row] for k, v in drawn.items()} == pytest.approx(again, abs=1e-9)
    nothing = np.zeros((1, 25))
    nothing[0, [i for i, g in enumerate(gts) if len(g) == 0][0]] = 1  # one image without objects
    assert np.isnan(matches.metrics(nothing)["map"][0])


def painted(boxes, shape):
    """An image (or volume) with a channel per box (x1, y1[, z1], x2, y2[, z2], class), 1 inside it."""
    img = torch.zeros(len(boxes), *shape)
    d = len(shape)
    for c, b in enumerate(np.asarray(boxes).astype(int)):
        img[(c, *(slice(b[j], b[d + j]) for j in reversed(range(d))))] = 1  # x runs along the last axis
    return img


@pytest.mark.parametrize("dims,seed", [(2, s) for s in range(4)] + [(3, s) for s in range(2)])
def test_boxes_follow_rotation_zoom_shift_and_shear(dims, seed):
    """A moved box is the smallest box around the moved rectangle: the painted pixels' extent
    after the move (to 1.5 px: bilinear edges, thin turned corners), whatever the rotation, zoom,
    shift and shear."""
    if dims == 2:
        shape, boxes = (48, 48), np.array([[8, 10, 20, 18, 0], [26, 4, 40, 30, 1], [14, 30, 24, 44, 2]], np.float32)
    else:
        shape, boxes = (16, 24, 24), np.array([[4, 6, 3, 12, 14, 9, 0], [14, 2, 8, 22, 12, 14, 1]], np.float32)
    out, moved = affine_boxes(painted(boxes, shape), boxes, np.random.default_rng(seed), 25, 0.2, 0.1, 0.05)
    assert len(moved) >= 1 and moved.dtype == boxes.dtype
    for box in moved:
        at = torch.nonzero(out[int(box[-1])] > 0.5)  # (n, axes); coordinate j is axis dims-1-j
        extent = [*(at[:, dims - 1 - j].min().item() for j in range(dims)),
                  *(at[:, dims - 1 - j].max().item() + 1 for j in range(dims))]
        np.testing.assert_allclose(box[:2 * dims], extent, atol=1.5)


def test_boxes_moved_out_of_the_image_are_dropped_and_the_rest_clipped():
    class Highest:  # every random draw at its upper bound: no turn, zoom 1.2, shift +0.4 x 48 = 19.2 px
        def uniform(self, lo, hi, n):
            return np.full(n, hi)

    boxes = np.array([[8, 10, 20, 18, 0], [30, 4, 40, 14, 1], [2, 2, 8, 8, 2], [16, 10, 30, 16, 3]], np.float32)
    out, moved = affine_boxes(painted(boxes, (48, 48)), boxes, Highest(), 0, 0.2, 0.4, 0)
    # x' = 1.2 (x - 24) + 24 + 19.2, the same for y: box 1 leaves the image (x from 50.4), box 3
    # keeps 14.4 of its 16.8 px of width
    assert moved[:, -1].tolist() == [0, 2, 3]
    np.testing.assert_allclose(moved[:, :4], [[24, 26.4, 38.4, 36], [16.8, 16.8, 24, 24], [33.6, 26.4, 48, 33.6]],
                               atol=1e-4)
    assert out[1].abs().max() < 1e-6  # box 1's pixels left the image


def test_a_detection_run_loads_zoomed_and_rotated_frames(tmp_path):
    from kdstyles.data import build_data

    cfg = load_config(None, [*DET, *DATA, "data.augment.rotate=20", "data.augment.zoom=0.2",
                             "data.augment.shift=0.1", "data.augment.shear=0.05"])
    ds = build_data(cfg.data, 0, task="detection").splits["train"]
    for i in range(len(ds)):
        img, boxes, _ = ds[(1, i)]
        kept = boxes[boxes[:, -1] >= 0]
        assert img.shape == (3, 32, 32) and (kept[:, :4] >= 0).all() and (kept[:, :4] <= 32).all()
        assert (kept[:, 2:4] > kept[:, :2]).all()
    assert torch.equal(ds[(1, 3)][0], ds[(1, 3)][0]) and not torch.equal(ds[(1, 3)][0], ds[(2, 3)][0])


@pytest.mark.parametrize("seed", range(8))
def test_boxes_move_exactly_with_flips_and_quarter_turns(seed):
    boxes = np.array([[3, 5, 10, 9, 0], [12, 1, 16, 16, 0]], np.float32)
    img = torch.zeros(2, 16, 16)
    for c, (x1, y1, x2, y2, _) in enumerate(boxes.astype(int)):
        img[c, y1:y2, x1:x2] = 1  # channel c paints box c
    out, moved = flip_boxes(img, boxes, np.random.default_rng(seed), True, True, True)
    for c in range(2):
        ys, xs = torch.nonzero(out[c], as_tuple=True)
        assert moved[c, :4].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert pad_boxes(moved, 4)[2:].eq(-1).all()


def test_bad_boxes_and_configs_are_one_line():
    from kdstyles.data import checks
    from kdstyles.data.checks import DataReport

    for box, why in [([33, 2, 40, 9, 0], "outside the 32x32 image"), ([5, 2, 5, 9, 0], "x2 <= x1 or y2 <= y1"),
                     ([1, 1, 4, 4, 3], "class outside 0..0"), ([1, 1, float("nan"), 4, 0], "not a number")]:
        report = DataReport(["no objects", "objects"])
        checks.check_boxes("train", [np.zeros((0, 5)), np.array([box], np.float32)], 1, (32, 32),
                           ["frame a", "frame b"], report)
        with pytest.raises(KDError) as err:
            report.raise_errors()
        assert str(err.value).startswith("frame b: box (") and why in str(err.value) and "\n" not in str(err.value)
    # boxes that cross the border (a pixel over, 1-based tools) are clipped to the image: one warning for all
    report = DataReport(["no objects", "objects"])
    crossing = [np.array([[2, 2, 33, 9, 0], [4, 4, 8, 8, 0]], np.float32), np.array([[-1.5, 3, 5, 32, 0]], np.float32)]
    checks.check_boxes("train", crossing, 1, (32, 32), ["frame a", "frame b"], report)
    report.raise_errors()
    np.testing.assert_array_equal(crossing[0], [[2, 2, 32, 9, 0], [4, 4, 8, 8, 0]])
    np.testing.assert_array_equal(crossing[1], [[0, 3, 5, 32, 0]])
    assert [p.message for p in report.problems] == [
        "2 box(es) in 2 image(s) crossed the border by up to 1.5 pixel(s) and were clipped to it (first: frame a)"]
    # one size per image (files and volumes of their own sizes): each box against its own
    report = DataReport(["no objects", "objects"])
    boxes = [np.array([[2, 2, 2, 20, 9, 9, 0]], np.float32), np.array([[2, 2, 2, 20, 9, 9, 0]], np.float32)]
    checks.check_boxes("data", boxes, 1, [(24, 16, 16), (16, 16, 16)], ["v0", "v1"], report)
    np.testing.assert_array_equal(boxes[0], [[2, 2, 2, 20, 9, 9, 0]])
    np.testing.assert_array_equal(boxes[1], [[2, 2, 2, 16, 9, 9, 0]])
    assert [p.message for p in report.problems] == [
        "1 box(es) in 1 volume(s) crossed the border by up to 4 voxel(s) and were clipped to it (first: v1)"]
    with pytest.raises(KDError, match="'resnet10' does not fit task detection; it needs an encoder-decoder"):
        load_config(None, [*DET, "networks.students.s1.arch=resnet10"])
    with pytest.raises(KDError, match="train.selection_metric: 'dice' is not a detection metric"):
        load_config(None, [*DET, "train.selection_metric=dice"])


@pytest.mark.parametrize("preset", ["diverse", "kdml", "diverse-full"])
def test_gradient_isolation_detection(preset):
    torch.manual_seed(0)
    cohort = build_cohort(load_config(None, [*DET, f"routing.preset={preset}"]), num_classes=1, channels=3,
                          image_size=32)
    cohort.train()
    y = torch.tensor([[[4.0, 6.0, 14.0, 20.0, 0]], [[-1.0] * 5]])
    losses = cohort.losses(cohort(torch.randn(2, 3, 32, 32)), y)
    assert all(torch.isfinite(nl.total) for nl in losses.values())
    assert_gradient_isolation(cohort, losses)


def test_box_distillation_follows_the_source_where_it_is_confident():
    from kdstyles.styles.predictions import PredictionsOptions
    from kdstyles.tasks import TASKS

    from kdstyles.styles import STYLES
    from kdstyles.styles.base import Context

    task, opts = TASKS["detection"](1), PredictionsOptions(temperature=2)
    context = Context(output_kind=task.output_kind, classes=task.num_classes)  # as the cohort hands it

    def distill(a, b, options):  # the predictions style on the detection task's outputs
        return STYLES["predictions"].compute(a, b, options, task, context)

    source = torch.full((1, 5, 8, 8), -6.0)
    source[0, 0, 3, 3], source[0, 1:, 3, 3] = 4.0, torch.tensor([0.2, -0.1, 2.0, 1.5])
    assert distill(source, source.clone(), opts) == pytest.approx(0, abs=1e-6)
    off_object = source.clone()
    off_object[0, 1:, 6, 6] += 3  # boxes differ where the source sees only background
    on_object = source.clone()
    on_object[0, 1:, 3, 3] += 3  # the same difference where it sees an object
    assert distill(source, on_object, opts) > 50 * distill(source, off_object, opts)
    no_boxes = PredictionsOptions(temperature=2, box_weight=0)
    assert distill(source, on_object, no_boxes) == pytest.approx(0, abs=1e-6)
    # self-distillation compares a network with its shadow the same way, with a box weight of its own
    from kdstyles.styles.self_distill import SelfOptions

    mine = STYLES["self"].compute(source, on_object, SelfOptions(temperature=2), task, context)
    assert mine == pytest.approx(float(distill(source, on_object, opts)), rel=1e-6)
    assert STYLES["self"].compute(source, on_object, SelfOptions(temperature=2, box_weight=0), task,
                                  context) == pytest.approx(0, abs=1e-6)


def test_predicted_boxes_of_equal_score_come_in_class_then_corner_order(tmp_path):
    from PIL import Image

    from kdstyles.tasks import TASKS

    Image.new("RGB", (8, 8)).save(tmp_path / "f.png")
    probs = np.zeros((6, 8, 8), np.float32)  # 2 classes: heatmaps, then 4 box channels
    probs[1, 0, 0] = probs[0, 1, 6] = probs[0, 5, 2] = 0.7  # ties; decode meets (x 6, y 1) before (x 2, y 5)
    probs[0, 3, 4] = 0.9
    row = TASKS["detection"](2).prediction_row(tmp_path / "f.png", probs, ["a", "b"], None, 0)
    found = [(d[-1], d[-2], d[0], d[1]) for d in json.loads(row[2])]
    assert found == [("a", 0.9, 4.0, 3.0), ("a", 0.7, 2.0, 5.0), ("a", 0.7, 6.0, 1.0), ("b", 0.7, 0.0, 0.0)]


def test_detections_compare_as_sets():
    a = [[1, 1, 4, 4, 0.9, "p"], [5, 5, 8, 8, 0.30001, "p"], [2, 2, 3, 3, 0.3, "p"], [0, 0, 1, 1, 0.05, "p"]]
    b = [a[0], a[2], a[1]]  # near-equal scores swapped; the last box cut by the 0.05 floor in one list only
    assert_same_detections(a, b)
    with pytest.raises(AssertionError, match="no partner"):
        assert_same_detections(a, [a[0], a[1], [2, 2, 3.5, 3, 0.3, "p"]])  # a corner moved
    with pytest.raises(AssertionError, match="no partner"):
        assert_same_detections(a, [a[0], a[1], [2, 2, 3, 3, 0.3, "q"]])  # another class


def test_detection_trains_evaluates_draws_exports_and_predicts(tiny_overrides, tmp_path):
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict

    exp = Experiment(None, overrides=tiny_overrides(*DET, *DATA, "train.epochs=1", "eval.overlays=2"), quiet=True)
    exp.fit()
    result = exp.evaluate()
    assert set(result["networks"]) == {"teacher", "s1", "s2", "ensemble"}
    for m in result["networks"].values():
        assert 0 <= m["map"] <= m["ap50"] <= 1 and {"ap75", "mean_recall", "froc_1"} <= set(m)
    assert "agreement" not in result["networks"]["teacher"]
    assert all(np.isnan(result["networks"][n]["agreement"]) or 0 <= result["networks"][n]["agreement"] <= 1
               for n in ("s1", "s2", "ensemble"))
    assert result["overlays"] == ["overlays/test-000.png", "overlays/test-001.png"]
    assert "val_map" in (exp.run_dir / "metrics.csv").read_text()
    kept = RunFolder(exp.run_dir).read_outputs()  # what comparisons draw test images from
    assert result["outputs"] == "outputs.npz" and len(kept["labels"]) == result["samples"]
    drawable = exp.cohort.task.drawable({k[4:]: v for k, v in kept.items() if k != "labels"}, kept["labels"], 2)
    for name, m in result["networks"].items():
        assert drawable[name].metrics()["map"][0] == pytest.approx(m["map"], abs=1e-9)
    from kdstyles.deploy.bundle import export_bundle

    with pytest.raises(KDError, match=r"^--format bundle: task detection: its output \(a heatmap per class"):
        export_bundle(exp.run_dir, "ensemble", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    side = export_run(exp.run_dir, "ensemble")
    assert side["task"] == "detection" and side["verification"]["max_abs_diff"] < 1e-4
    images = tmp_path / "frames"
    images.mkdir()
    from PIL import Image

    from kdstyles.data.generators.synthetic_det import generate

    frames, _ = generate(5, "test", 2, 48)  # another size than the model's 32 px: boxes come back in 48 px
    for i, f in enumerate(frames):
        Image.fromarray(f).save(images / f"f{i}.png")
    outs = [predict(exp.run_dir / "export" / "ensemble.onnx", [images], tmp_path / "onnx", quiet=True),
            predict(exp.run_dir, [images], tmp_path / "run", network="ensemble", quiet=True)]
    rows = [list(csv.DictReader(o.open())) for o in outs]
    assert [r["path"] for r in rows[0]] == [str(images / "f0.png"), str(images / "f1.png")]
    for a, b in zip(*rows):
        da, db = json.loads(a["detections"]), json.loads(b["detections"])
        assert da and all(0 <= v <= 48 for d in da for v in d[:4])
        assert [d[-2] for d in da] == sorted((d[-2] for d in da), reverse=True)  # best first
        assert_same_detections(da, db)  # as sets: near-equal scores may come in either order


def _frames(tmp_path, n=6, size=40):
    """Frames with separate rectangles (so a mask's regions are its boxes), as image files,
    masks, a box CSV, a COCO JSON and Kvasir-SEG's box JSON."""
    from PIL import Image

    (tmp_path / "kv" / "images").mkdir(parents=True)
    (tmp_path / "kv" / "masks").mkdir()
    rng = np.random.default_rng(1)
    rows, coco, kvasir, truth = ["path,x1,y1,x2,y2,label"], {"images": [], "annotations": [],
                                                             "categories": [{"id": 3, "name": "polyp"}]}, {}, {}
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        boxes = [] if i % 3 == 0 else [[2 + i, 4, 12 + i, 16], [24, 20 + i, 36, 30 + i]][:1 + i % 2]
        for x1, y1, x2, y2 in boxes:
            mask[y1:y2, x1:x2] = 255
        name = f"kv/images/f{i}.png"
        Image.fromarray(img).save(tmp_path / name)
        Image.fromarray(mask).save(tmp_path / "kv" / "masks" / f"f{i}.png")
        coco["images"].append({"id": 10 + i, "file_name": name})
        kvasir[f"f{i}"] = {"bbox": [{"label": "polyp", "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]}
                                    for b in boxes]}
        rows += [f"{name},{','.join(map(str, b))},polyp" for b in boxes] or [f"{name},,,,,"]
        for b in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": 10 + i, "category_id": 3,
                                        "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
        truth[str(tmp_path / name)] = sorted(boxes)
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return truth, kvasir


@pytest.mark.parametrize("source", ["csv", "coco", "folder-masks", "folder-json"])
def test_box_files_load_the_same_boxes_scaled_to_the_training_size(tmp_path, source):
    from kdstyles.data import build_data

    truth, kvasir = _frames(tmp_path)
    keys = {"csv": ["data.source=csv", f"data.path={tmp_path / 'boxes.csv'}"],
            "coco": ["data.source=coco", f"data.path={tmp_path / 'coco.json'}"],
            "folder-masks": ["data.source=folder", f"data.root={tmp_path / 'kv'}"],
            "folder-json": ["data.source=folder", f"data.root={tmp_path / 'kv'}"]}[source]
    if source == "folder-json":
        (tmp_path / "kv" / "kavsir_bboxes.json").write_text(json.dumps(kvasir))
    cfg = load_config(None, [*DET, "data.image_size=80", "data.val_fraction=0.2", "data.test_fraction=0.2",
                             "data.augment.hflip=false", "data.augment.vflip=false", *keys])
    bundle = build_data(cfg.data, 0, task="detection")
    assert bundle.class_names == ["polyp"] and len(bundle.splits) == 3
    seen = 0
    for ds in bundle.splits.values():
        for i, path in enumerate(ds.paths):
            label = ds[i][1]
            got = sorted(label[label[:, 4] >= 0][:, :4].tolist())
            assert got == [[v * 2 for v in b] for b in truth[str(path)]]  # 40 px files, 80 px training size
            seen += 1
    assert seen == 6


def test_data_inspect_reads_a_coco_file_as_detection_and_clips_boxes_that_cross_the_border(tmp_path, monkeypatch,
                                                                                            capsys):
    from kdstyles.cli import main

    _frames(tmp_path)
    coco = json.loads((tmp_path / "coco.json").read_text())
    x, y, w, h = coco["annotations"][0]["bbox"]
    coco["annotations"][0]["bbox"] = [x, y, 41 - x, h]  # one pixel past the 40 px frame, as 1-based tools write
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    monkeypatch.setattr(sys, "argv", ["kdstyles", "data", "inspect", str(tmp_path / "coco.json")])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr().out.replace("\n", " ")
    assert done.value.code in (0, None) and "boxes: polyp" in out
    assert "warning: 1 box(es) in 1 image(s) crossed the border by up to 1 pixel(s) and were clipped to it" in out


def test_data_inspect_counts_boxes_without_naming_networks(tmp_path, monkeypatch, capsys):
    """Looking at a box CSV needs no detection network in the overrides; the table counts the
    images with and without objects, and the boxes of each class, per split."""
    from kdstyles.cli import main

    _frames(tmp_path)
    monkeypatch.setattr(sys, "argv", ["kdstyles", "data", "inspect", str(tmp_path / "boxes.csv"), "--set",
                                      "task=detection", "--set", "data.image_size=40"])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr().out
    rows = {ln.split("│")[1].strip(): [int(v) for v in ln.split("│")[2:5]] for ln in out.splitlines()
            if ln.count("│") > 3 and ln.split("│")[2].strip().isdigit()}
    assert done.value.code in (0, None) and "1 class, images used at 40 px" in out
    assert sum(rows["objects"]) == 4 and sum(rows["no objects"]) == 2 and sum(rows["boxes: polyp"]) == 6


@pytest.mark.parametrize("change, message", [
    (lambda p: p.write_text("path,x1,y1,x2,y2,label\nkv/images/f1.png,3,4,x,9,polyp\n"),
     "line 2: box (3, 4, x, 9) needs four numbers x1,y1,x2,y2"),
    (lambda p: p.write_text("path,x1,y1,x2,y2,label\nkv/images/f1.png,3,3,5,5,polyp\nkv/images/f1.png,41,4,50,9,"
                            "polyp\n"),
     "f1.png': box (41, 4, 50, 9) class 0: outside the 40x40 image; CSV file"),  # and the line:
    (lambda p: p.write_text("path,x1,y1,x2,y2,label\nkv/images/f1.png,3,3,5,5,polyp\nkv/images/f1.png,41,4,50,9,"
                            "polyp\n"), "bad.csv' line 3 (1 such boxes in data)"),
    (lambda p: p.write_text("path,x1,y1,x2,y2,label\nkv/images/f1.png,9,4,3,9,polyp\n"),
     "line 2: box (9, 4, 3, 9) has x2 <= x1; the corners are x1, y1 then x2, y2"),
    (lambda p: p.write_text("path,x1,y1,x2,y2,label\nkv/images/f1.png,3,4,9,9,polyp\nkv/images/f2.png,3,4,9,9,ulcer\n"),
     "label 'ulcer' is not in data.classes (polyp)"),
    (lambda p: p.write_text("path,label\nkv/images/f1.png,polyp\n"), "needs the column(s) path, x1, y1, x2, y2, label"),
])
def test_malformed_box_csvs_are_one_line(tmp_path, change, message):
    from kdstyles.data import build_data

    _frames(tmp_path)
    csv_path = tmp_path / "bad.csv"
    change(csv_path)
    cfg = load_config(None, [*DET, "data.source=csv", f"data.path={csv_path}", "data.classes=[polyp]"])
    with pytest.raises(KDError) as err:
        build_data(cfg.data, 0, task="detection")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["annotations"].append({"id": 99, "image_id": 5, "category_id": 3, "bbox": [1, 1, 2, 2]}),
     "(id 99): image_id 5 is not among the images"),
    (lambda c: c["annotations"][0].update(category_id=4), "category_id 4 is not among the categories"),
    (lambda c: c["annotations"][0].update(bbox=[1, 2]), "bbox [1, 2] is not [x, y, width, height]"),
    (lambda c: c.pop("images"), "not a COCO detection JSON (KeyError"),
    (lambda c: c["annotations"].append(7), "annotation 6: 7 is not an object {image_id, bbox, category_id}"),
    (lambda c: c["images"].append({"id": 99, "file_name": c["images"][0]["file_name"]}),
     "file_name 'kv/images/f0.png' is listed as 2 images (ids 10, 99)"),
    (lambda c: c["images"][1].update(id=c["images"][0]["id"]), "2 image entries have id 10; ids must be unique"),
    (lambda c: c["categories"].append(dict(c["categories"][0], name="ulcer")), "2 category entries have id"),
    (lambda c: c["annotations"][0].update(bbox=[4, 4, 0, 3]), "annotation 0 (id 0): bbox [4, 4, 0, 3] has width 0"),
    (lambda c: c["annotations"][1].update(bbox=[41, 4, 5, 3]),
     "f1.png': box (41, 4, 46, 7) class 0: outside the 40x40 image; COCO file '"),
    (lambda c: c["annotations"][1].update(bbox=[41, 4, 5, 3]), "coco.json' annotation 1 (id 1) (1 such boxes"),
])
def test_malformed_coco_files_are_one_line(tmp_path, change, message):
    from kdstyles.data import build_data

    _frames(tmp_path)
    coco = json.loads((tmp_path / "coco.json").read_text())
    change(coco)
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    cfg = load_config(None, [*DET, "data.source=coco", f"data.path={tmp_path / 'coco.json'}"])
    with pytest.raises(KDError) as err:
        build_data(cfg.data, 0, task="detection")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_quiet_silences_progress_not_the_warning_that_boxes_were_clipped(tmp_path, monkeypatch, capsys):
    from kdstyles.cli import main

    _frames(tmp_path)
    csv_path = tmp_path / "boxes.csv"
    csv_path.write_text(csv_path.read_text().replace("24,21,36,31", "24,21,41,31"))  # a pixel past the 40 px frame
    monkeypatch.setattr(sys, "argv", ["kdstyles", "train", "-q", "--no-evaluate", *sum(
        (["--set", o] for o in (*DET, "data.source=csv", f"data.path={csv_path}", "data.image_size=32",
                                "train.epochs=1", "data.batch_size=2", f"output.dir={tmp_path}",
                                "output.name=run")), [])])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    assert done.value.code == 0
    assert "data warning: 1 box(es) in 1 image(s) crossed the border by up to 1 pixel(s)" in err
    assert "epoch 1/1" not in out + err and "img/s" not in out + err  # no progress lines
