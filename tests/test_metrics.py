"""Metrics (kdstyles.common.metrics): Dice/IoU/HD95 against hand-made masks, classification metrics,
fidelity, and the registry."""

import pytest
import torch

from kdstyles.common.metrics import (METRICS, classification_details, classification_metrics, fidelity, per_image_scores,
                              segmentation_metrics, task_metrics, task_of)


def test_dice_and_iou_against_hand_made_masks():
    target = torch.zeros(3, 4, 4, dtype=torch.long)
    pred = torch.zeros(3, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1          # 4 pixels
    pred[0, :2, :3] = 1            # 6 pixels, 4 overlap: Dice 8/10, IoU 4/6
    pred[1, 0, 0] = 1              # empty ground truth, one false positive: 0
    # image 2: empty ground truth and empty prediction: 1 (nothing to find, nothing found)
    dice, iou = per_image_scores(pred, target, 2)
    torch.testing.assert_close(dice, torch.tensor([0.8, 0.0, 1.0]))
    torch.testing.assert_close(iou, torch.tensor([4 / 6, 0.0, 1.0]))
    probs = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    m = segmentation_metrics(probs, target)
    assert m["dice"] == pytest.approx(0.6) and m["iou"] == pytest.approx((4 / 6 + 1) / 3)


def test_hd95_option():
    pytest.importorskip("scipy")
    target = torch.zeros(1, 16, 16, dtype=torch.long)
    target[0, 4:8, 4:8] = 1
    pred = torch.zeros_like(target)
    pred[0, 4:8, 7:11] = 1  # shifted by 3 pixels
    probs = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    m = segmentation_metrics(probs, target, hd95=True)
    assert m["hd95"] == pytest.approx(3.0, abs=0.01)


def test_classification_metrics_and_details_against_hand_counts():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 2, 1])  # the last one is wrong
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["nll"] == pytest.approx(-torch.log(torch.tensor([0.9, 0.7, 0.7, 0.3])).mean().item(), rel=1e-5)
    d = classification_details(probs, labels)
    assert d["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]] and d["support"] == [1, 2, 1]
    assert sum(b["count"] for b in d["reliability"]) == 4


def test_fidelity_is_zero_for_the_teacher_itself():
    p = torch.softmax(torch.randn(5, 4), 1)
    assert fidelity(p, p) == {"fidelity_kl": pytest.approx(0.0, abs=1e-6), "agreement": 1.0}
    q = torch.softmax(torch.randn(5, 4), 1)
    assert fidelity(p, q)["fidelity_kl"] > 0


def test_registry_tells_tasks_labels_and_directions():
    assert task_metrics("classification") == ["accuracy", "balanced_accuracy", "f1", "auroc", "ece"]
    assert task_metrics("segmentation", {"dice": 1, "iou": 1}) == ["dice", "iou"]
    assert task_metrics("classification", headline=True) == ["accuracy", "f1"]
    assert task_of({"dice": 0.5, "nll": 1.0, "parameters": 3}) == "segmentation"
    assert task_of({"accuracy": 0.5}) == "classification"
    assert not METRICS["ece"].higher_is_better and METRICS["dice"].selectable
