"""Tasks (kdstyles.tasks): what each task owns (default taps, output checks, config rules,
overlays, prediction rows), for classification and segmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DATA, SEG, assert_gradient_isolation
from kdstyles import Experiment, KDError, build_cohort, load_config


def seg_cohort(preset, *extra):
    cfg = load_config(None, [*SEG, f"routing.preset={preset}", *extra])
    return build_cohort(cfg, num_classes=2, channels=3, image_size=32)


def test_bottleneck_taps_and_adapters():
    cohort = seg_cohort("fitnet")
    assert cohort.edge_taps[0][0] == cohort.edge_taps[0][1]  # same UNet layout: the same bottleneck path
    outs = cohort(torch.randn(2, 3, 32, 32))
    t_map = outs["teacher"].features[cohort.edge_taps[0][0]]
    s_map = outs["s1"].features[cohort.edge_taps[0][1]]
    assert t_map.shape[-1] == s_map.shape[-1] == 4 and t_map.shape[1] == 2 * s_map.shape[1]
    adapter = cohort.adapters["teacher__s1__features__0"]
    assert not adapter.resize and adapter.project[0].in_channels == s_map.shape[1]
    # a decoder tap on the students (full resolution) against the teacher's bottleneck: resized and projected
    deep = seg_cohort("fitnet", "networks.students.s1.tap=model.2.0.conv")  # last decoder up-conv
    a = deep.adapters["teacher__s1__features__0"]
    assert a.resize
    losses = deep.losses(deep(torch.randn(2, 3, 32, 32)), torch.randint(0, 2, (2, 32, 32)))
    assert set(losses["s1"].terms) == {"dice_ce", "features<-teacher"}


@pytest.mark.parametrize("preset", ["diverse", "kdml", "diverse-full"])
def test_gradient_isolation_segmentation(preset):
    torch.manual_seed(0)
    cohort = seg_cohort(preset)
    cohort.train()
    losses = cohort.losses(cohort(torch.randn(4, 3, 32, 32)), torch.randint(0, 2, (4, 32, 32)))
    assert_gradient_isolation(cohort, losses)


def test_classifier_for_segmentation_is_rejected():
    with pytest.raises(KDError, match="networks.students.s1.arch: 'resnet10' does not fit task segmentation"):
        load_config(None, [*SEG, "networks.students.s1.arch=resnet10"])


def test_segmentation_train_evaluate_overlays(tiny_overrides):
    exp = Experiment(None, overrides=tiny_overrides(*SEG, *DATA, "train.epochs=1", "eval.overlays=2",
                                                    "eval.hd95=true"), quiet=True)
    exp.fit()
    result = exp.evaluate()
    nets = result["networks"]
    assert set(nets) == {"teacher", "s1", "s2", "ensemble"}
    for m in nets.values():
        assert 0 <= m["dice"] <= 1 and 0 <= m["iou"] <= m["dice"] + 1e-9 and "hd95" in m
    assert result["overlays"] == ["overlays/test-000.png", "overlays/test-001.png"]
    with Image.open(exp.run_dir / result["overlays"][0]) as im:
        assert im.size[0] > 5 * im.size[1] / 1.5  # image, ground truth, 4 networks side by side
    rows = (exp.run_dir / "metrics.csv").read_text()
    assert "val_dice" in rows and "train_dice_ce" in rows


def test_each_task_writes_its_own_prediction_rows(tmp_path):
    from kdstyles.tasks import TASKS

    names = ["benign", "malignant"]
    cls = TASKS["classification"](2)
    assert cls.prediction_header(names) == ["path", "prediction", "probability", "p_benign", "p_malignant"]
    assert cls.prediction_row(tmp_path / "a.png", np.array([0.2, 0.8]), names, tmp_path, 0) == [
        str(tmp_path / "a.png"), "malignant", "0.800000", "0.200000", "0.800000"]
    image = tmp_path / "b.png"
    Image.new("RGB", (10, 6)).save(image)
    seg = TASKS["segmentation"](2)
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0], probs[1, :2] = 1, 2  # the top half is foreground
    row = seg.prediction_row(image, probs, ["background", "polyp"], tmp_path / "out", 3)
    assert row[0] == str(image) and row[1].endswith("masks/00003-b.png") and float(row[2]) == 0.5
    with Image.open(row[1]) as mask:
        assert mask.size == (10, 6) and set(np.unique(np.array(mask))) == {0, 255}  # the input's own size
    assert seg.output_shape() == ["batch", "classes", "height", "width"]


def test_task_config_rules_name_the_key():
    with pytest.raises(KDError, match=r"data.source: 'csv' is not read for task segmentation; allowed: synthetic, "
                                      r"folder"):
        load_config(None, [*SEG, "data.source=csv", "data.path=x.csv"])
    with pytest.raises(KDError, match="train.selection_metric: 'accuracy' is not a segmentation metric"):
        load_config(None, [*SEG, "train.selection_metric=accuracy"])


def test_tasks_whose_metrics_are_not_means_over_images_keep_their_outputs():
    """Detection (mAP) and multi-label (mean AUROC) metrics are drawn again from outputs.npz,
    so evaluate keeps those tasks' outputs; the others pair per-image values."""
    from kdstyles.common.metrics import METRICS
    from kdstyles.tasks import TASKS

    assert {n for n, t in TASKS.items() if t.keeps_outputs()} == {"detection", "multilabel"}
    for name, task in TASKS.items():
        assert task.keeps_outputs() == METRICS[task.selection].drawn, name
