"""Predictions and scores (kdstyles.evaluate): the ensemble, known networks, fidelity."""

import pytest
import torch

from kdstyles import build_cohort, load_config
from kdstyles.evaluate import ENSEMBLE, predict_probs, score
from kdstyles.tasks import TASKS


def small_cohort(preset="kd"):
    cfg = load_config(None, [f"routing.preset={preset}", "networks.teacher.widen=0.25",
                             "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"])
    return build_cohort(cfg, num_classes=4, channels=3, image_size=16)


def loader(n=10):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return [(x[i:i + 4], y[i:i + 4], torch.arange(i, min(i + 4, n))) for i in range(0, n, 4)]


def test_ensemble_is_the_mean_of_the_students_and_known_networks_are_not_rerun():
    torch.manual_seed(0)
    cohort = small_cohort()
    probs, labels = predict_probs(cohort, loader(), torch.device("cpu"))
    assert set(probs) == {"teacher", "s1", "s2", ENSEMBLE} and len(labels) == 10
    assert torch.allclose(probs[ENSEMBLE], (probs["s1"] + probs["s2"]) / 2)
    assert torch.allclose(probs["s1"].sum(1), torch.ones(10))
    calls = []
    cohort.networks["teacher"].register_forward_hook(lambda *_: calls.append(1))
    again, _ = predict_probs(cohort, loader(), torch.device("cpu"), known={"teacher": probs["teacher"]})
    assert calls == [] and torch.equal(again["teacher"], probs["teacher"])
    assert torch.allclose(again["s2"], probs["s2"])


def test_score_adds_fidelity_only_against_a_teacher():
    task = TASKS["classification"](3)
    p = {"teacher": torch.softmax(torch.randn(6, 3), 1), "s1": torch.softmax(torch.randn(6, 3), 1)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    scored = score(p, labels, task)
    assert "fidelity_kl" in scored["s1"] and "fidelity_kl" not in scored["teacher"]
    assert scored["s1"]["accuracy"] == pytest.approx(float((p["s1"].argmax(1) == labels).float().mean()))
    students_only = score({"s1": p["s1"]}, labels, task)
    assert "fidelity_kl" not in students_only["s1"]
