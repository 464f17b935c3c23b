"""Multi-label classification (task: multilabel): the per-label Bernoulli KL, the metrics on
hand cases, the embedded mosaics, multi-hot labels from a CSV, config rules, and runs that
train, evaluate, export to ONNX and predict, on images and on volumes (ChestMNIST files:
test_sources.py)."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kdstyles import Experiment, KDError, build_cohort, load_config
from kdstyles.tasks import TASKS
from conftest import assert_gradient_isolation, assert_same_label_rows, tiny

ML = ["task=multilabel", "data.image_size=32"]


def test_predictions_style_is_a_bernoulli_kl_per_label():
    from kdstyles.styles import STYLES
    from kdstyles.styles.base import Context

    task = TASKS["multilabel"](2)
    context = Context(output_kind=task.output_kind, classes=task.num_classes)  # as the cohort hands it

    def distill(a, b, options):  # the predictions style on the multi-label task's outputs
        return STYLES["predictions"].compute(a, b, options, task, context)

    source, target = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.0, 1.0]])
    for t, scale in ((1.0, False), (2.0, True)):
        p, q = torch.sigmoid(source / t), torch.sigmoid(target / t)
        expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum() * (t * t if scale else 1)
        got = distill(source, target, SimpleNamespace(temperature=t, t2_scaling=scale))
        assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(distill(source, source, SimpleNamespace(temperature=1.0, t2_scaling=True))) == \
        pytest.approx(0, abs=1e-6)


def test_metrics_on_hand_cases():
    from kdstyles.common.metrics import bernoulli_fidelity, multilabel_metrics

    labels = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])  # label 2 is always present
    perfect = labels.float() * 0.8 + 0.1
    m = multilabel_metrics(perfect, labels)
    assert m["mean_auroc"] == m["mean_ap"] == m["label_f1"] == m["label_accuracy"] == m["exact_match"] == 1
    flipped = perfect.clone()
    flipped[:, 0] = 1 - flipped[:, 0]  # label 0 ranked backwards: AUROC 0 there, 1 on label 1 (label 2 left out)
    m = multilabel_metrics(flipped, labels)
    assert m["mean_auroc"] == pytest.approx(0.5) and m["label_accuracy"] == pytest.approx(2 / 3)
    assert m["exact_match"] == 0 and m["label_f1"] == pytest.approx(2 / 3)
    f = bernoulli_fidelity(perfect, perfect)
    assert f["fidelity_kl"] == pytest.approx(0, abs=1e-6) and f["agreement"] == 1
    assert bernoulli_fidelity(perfect, flipped)["agreement"] == pytest.approx(2 / 3)


def test_label_ranks_give_mean_auroc_and_ap_of_any_draw_of_the_images():
    """metrics.LabelRanks (what comparisons draw test images from) equals torchmetrics on the
    drawn images, ties and a label without positives included."""
    from kdstyles.common.metrics import LabelRanks, multilabel_metrics

    rng = np.random.default_rng(0)
    labels = (rng.random((50, 4)) < [0.3, 0.1, 0.5, 0.0]).astype(np.float32)  # label 3 never present
    probs = np.round(np.clip(0.3 * labels + 0.7 * rng.random((50, 4)), 0, 1), 1)  # many ties
    ranks = LabelRanks(probs, labels)
    counts = np.stack([np.ones(50, dtype=int), *(rng.multinomial(50, np.ones(50) / 50) for _ in range(5))])
    drawn = ranks.metrics(counts)
    for row, c in enumerate(counts):
        idx = np.repeat(np.arange(50), c)
        again = multilabel_metrics(torch.tensor(probs[idx], dtype=torch.float32), torch.tensor(labels[idx]))
        assert drawn["mean_auroc"][row] == pytest.approx(again["mean_auroc"], abs=1e-6)
        assert drawn["mean_ap"][row] == pytest.approx(again["mean_ap"], abs=1e-6)
    assert ranks.same_images(LabelRanks(probs[::-1].copy(), labels)) and not ranks.same_images(
        LabelRanks(probs, labels[::-1].copy()))


def test_embedded_mosaics_are_labelled_with_the_classes_they_show():
    from kdstyles.data.generators.synthetic import render_patch
    from kdstyles.data.generators.synthetic_multi import generate

    images, labels = generate(0, "train", 6, 32)
    assert images.shape == (6, 32, 32, 3) and labels.shape == (6, 4) and labels.sum(1).min() >= 1
    for i in range(6):
        tiles = [render_patch(0, "train", 4 * i + q, 16) for q in range(4)]
        assert sorted(np.flatnonzero(labels[i]).tolist()) == sorted({c for _, c in tiles})
        assert np.array_equal(images[i, :16, 16:], tiles[1][0])  # the second tile, top right
    with pytest.raises(KDError, match="even size of at least 32"):
        generate(0, "train", 1, 20)


def test_multilabel_gradient_isolation(monkeypatch):
    from kdstyles.styles import outputs

    cfg = load_config(None, [*ML, "routing.preset=diverse", "networks.teacher.widen=0.25",
                             "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"])
    cohort = build_cohort(cfg, num_classes=4, channels=3, image_size=32)
    seen = []  # the cohort tells the predictions edges what the outputs are: labels, 4 of them
    labels = outputs.OUTPUT_KINDS["labels"]
    monkeypatch.setitem(outputs.OUTPUT_KINDS, "labels", lambda s, t, o, k: seen.append(k) or labels(s, t, o, k))
    y = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    losses = cohort.losses(cohort(torch.randn(3, 3, 32, 32)), y)
    assert set(losses["s1"].terms) == {"bce", "predictions<-teacher", "features<-s2"} and seen == [4, 4]
    assert_gradient_isolation(cohort, losses)


def test_balanced_class_weights_weigh_each_labels_positives_by_its_negatives(tmp_path):
    """loss.class_weights: balanced is BCE's pos_weight: negatives per positive in training."""
    import torch.nn.functional as F

    exp = Experiment(None, overrides=tiny(tmp_path, *ML, "loss.class_weights=balanced"), quiet=True)
    labels = exp.data.splits["train"].labels
    pos = labels.sum(0)
    expected = torch.tensor((len(labels) - pos) / pos, dtype=torch.float)
    assert torch.allclose(exp.cohort.class_weights, expected)
    logits, y = torch.randn(5, 4), torch.tensor(labels[:5], dtype=torch.float)
    assert torch.allclose(exp.cohort.task.supervised(logits, y, exp.cohort.class_weights),
                          F.binary_cross_entropy_with_logits(logits, y, pos_weight=expected))
    exp.fit()  # and the weights are rebuilt from run.json when the run is reopened
    again = Experiment.from_run(exp.run_dir, quiet=True)
    assert torch.allclose(again.cohort.class_weights, expected)


def _outputs(run_dir):
    from kdstyles.store.runfolder import RunFolder

    arrays = RunFolder(run_dir).read_outputs()
    return {k[4:]: v for k, v in arrays.items() if k.startswith("out.")}, arrays["labels"]


def test_multilabel_run_trains_evaluates_exports_and_predicts(tmp_path):
    pytest.importorskip("onnxruntime")
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict

    exp = Experiment(None, overrides=tiny(tmp_path, *ML, "train.epochs=1"), quiet=True)
    exp.fit()
    result = exp.evaluate()
    for name, m in result["networks"].items():
        assert {"mean_auroc", "mean_ap", "label_f1", "label_accuracy", "exact_match", "nll"} <= set(m), name
    assert 0 <= result["networks"]["s1"]["agreement"] <= 1 and result["networks"]["s1"]["fidelity_kl"] >= 0
    assert len(result["per_image"]["s1"]["label_accuracy"]) == 24
    assert len(result["details"]["teacher"]["auroc"]) == 4
    assert "val_mean_auroc" in (exp.run_dir / "metrics.csv").read_text()  # the default selection metric
    kept = TASKS["multilabel"].drawable(*_outputs(exp.run_dir), 4)  # what comparisons draw images from
    for name, m in result["networks"].items():
        assert kept[name].metrics()["mean_auroc"][0] == pytest.approx(m["mean_auroc"], abs=1e-6)
    side = export_run(exp.run_dir, "ensemble")
    assert side["task"] == "multilabel" and side["verification"]["max_abs_diff"] < 1e-4
    card = (exp.run_dir / "export" / "ensemble.md").read_text()
    assert "Multi-label classification of 3-channel 32 px images into\n4 classes" in card
    assert "Output: a probability per class (independent sigmoids" in card and "| mean AUROC |" in card
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(exp.data.splits["test"].images[:3]):
        Image.fromarray(image).save(frames / f"f{i}.png")
    rows = [list(csv.reader(predict(m, [frames], tmp_path / f"p{k}", network="ensemble", quiet=True).open()))
            for k, m in enumerate((exp.run_dir / "export" / "ensemble.onnx", exp.run_dir))]
    assert rows[0][0] == ["path", "labels", "p_normal", "p_lymphocytic", "p_tumour", "p_stroma"]
    assert_same_label_rows(rows[0][1:], rows[1][1:])
    for a in rows[0][1:]:
        assert a[1] == "|".join(c for c, p in zip(rows[0][0][2:], a[2:]) if float(p) >= 0.5).replace("p_", "")
    # the MONAI Bundle writes each image's label probabilities (independent sigmoids), as predict does
    from conftest import bundle_probabilities, run_bundle
    from kdstyles.deploy.bundle import export_bundle

    export_bundle(exp.run_dir, "ensemble", tmp_path / "bundle", say=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["format"] == "classes"
    got = bundle_probabilities(run_bundle(tmp_path / "bundle", frames, tmp_path / "bundle-out"))
    for a in rows[1][1:]:
        assert np.abs(np.array(got[Path(a[0]).name]) - [float(v) for v in a[2:]]).max() < 1e-5


def test_multi_hot_labels_from_a_csv_and_what_is_refused(tmp_path, cli):
    from kdstyles.data import build_data

    rng = np.random.default_rng(0)
    rows, findings = ["path,label"], ["effusion", "mass", "nodule"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"x{i}.png")
        found = "|".join(f for k, f in enumerate(findings) if (i >> k) & 1)  # 0..3 findings
        rows.append(f"x{i}.png," + (found or ("No Finding" if i % 16 else "")))  # NIH's name for none, or empty
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["task=multilabel", "data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.image_size=16"]
    bundle = build_data(load_config(None, args).data, 0, task="multilabel")
    assert bundle.class_names == findings and sum(len(s) for s in bundle.splits.values()) == 30
    split = bundle.splits["train"]
    for k in range(len(split)):
        i = int(split.paths[k].stem[1:])
        assert split.labels[k].tolist() == [(i >> b) & 1 for b in range(3)]
    as_class = build_data(load_config(None, [*args, "data.none_label=null"]).data, 0, task="multilabel")
    assert as_class.class_names == ["No Finding", *findings]  # without none_label it is a class like any other
    code, out, _ = cli("data", "inspect", tmp_path / "labels.csv", "--set", "task=multilabel", "--set",
                       "data.image_size=16")
    rows = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 3}
    assert code == 0 and "mass" in rows
    assert [int(v) for v in rows["images"].split("│")[2:5]] == [len(bundle.splits[s]) for s in ("train", "val", "test")]
    with pytest.raises(KDError, match="has label 'nodule', which is not in data.classes"):
        build_data(load_config(None, [*args, "data.classes=[effusion,mass]"]).data, 0, task="multilabel")
    balanced = build_data(load_config(None, [*args, "data.sampler=balanced"]).data, 0, task="multilabel")
    y = next(iter(balanced.loader("train", 4, train=True))).targets
    assert y.shape == (4, len(bundle.class_names))  # multi-hot batches, drawn by the rarest label
    with pytest.raises(KDError, match="data.source: 'folder' is not read for task multilabel"):
        load_config(None, ["task=multilabel", "data.source=folder", f"data.root={tmp_path}"])


def test_embedded_multi_label_volumes_hold_their_findings():
    """Every finding a volume's labels name is painted in it (its own value in the mask), and
    none other; each finding and the no-finding volume occur; the volumes are a pure function
    of the seed and reach training as multi-hot labels."""
    from kdstyles.data import build_data
    from kdstyles.data.generators.synthetic_vol_multi import CLASS_NAMES, generate, render_findings

    seen = []
    for size in (16, 32):
        for i in range(40):
            vol, findings, mask = render_findings(3, "val", i, size)
            assert findings.tolist() == [int((mask == 2 + k).any()) for k in range(3)]
            assert vol.shape == (size, size, size, 1) and vol.dtype == np.uint8
            if findings[2]:  # the calcification is brighter than the organ around it
                assert vol[mask == 4].max() > np.percentile(vol[mask == 1], 90)
            seen.append(findings)
    seen = np.array(seen)
    assert seen.sum(0).min() >= 5 and (seen.sum(1) == 0).sum() >= 5 and (seen.sum(1) >= 2).sum() >= 5
    a, b = generate(3, "val", 6, 16), generate(3, "val", 6, 16)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], generate(4, "val", 6, 16)[0])
    cfg = load_config(None, ["task=multilabel", "data.spatial_dims=3", "data.image_size=16", "data.train_samples=10",
                             "data.val_samples=4", "data.test_samples=4"])
    bundle = build_data(cfg.data, 0, task="multilabel")
    assert bundle.class_names == list(CLASS_NAMES) and bundle.channels == 1
    x, y = bundle.splits["test"][2][:2]
    assert x.shape == (1, 16, 16, 16) and y.tolist() == generate(0, "test", 4, 16)[1][2].tolist()


def test_multi_label_volumes_from_a_csv_train_evaluate_export_and_predict(tmp_path):
    """CT scans with any number of findings (CT-RATE ships a 0/1 column per abnormality):
    NIfTI volumes listed in a column-per-class CSV train a 3D multi-label cohort, evaluate
    keeps outputs.npz for comparisons, and predict reads NIfTI files alike from ONNX and
    from the run folder."""
    pytest.importorskip("onnxruntime")
    nib = pytest.importorskip("nibabel")
    from kdstyles.data.generators.synthetic_vol import render_with_mask
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict

    rows, truth = ["path,PatientAge,lesion,large organ"], {}
    for i in range(14):
        vol, label, mask = render_with_mask(0, "train", i, 16)
        nib.save(nib.Nifti1Image(vol[..., 0], np.diag([0.8, 0.8, 1.5, 1.0])), tmp_path / f"ct{i}.nii.gz")
        truth[f"ct{i}.nii.gz"] = [int(label > 0), int((mask > 0).mean() > 0.16)]
        rows.append(f"ct{i}.nii.gz,{50 + i},{truth[f'ct{i}.nii.gz'][0]},{truth[f'ct{i}.nii.gz'][1] or ''}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["task=multilabel", "data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.spatial_dims=3",
            "data.classes=[lesion,large organ]", "data.image_size=16", "data.val_fraction=0.2",
            "data.test_fraction=0.2", "networks.teacher.arch=resnet10", "networks.students.s1.arch=resnet10",
            "networks.students.s2.arch=resnet10", "data.sampler=balanced"]
    exp = Experiment(None, overrides=tiny(tmp_path, *args, "train.epochs=1"), quiet=True)
    assert exp.data.class_names == ["lesion", "large organ"]
    for ds in exp.data.splits.values():
        for k, path in enumerate(ds.paths):
            assert ds.labels[k].tolist() == truth[path.name]
    assert exp.data.splits["train"][0][0].shape == (1, 16, 16, 16)
    exp.fit()
    result = exp.evaluate()
    assert result["outputs"] == "outputs.npz" and {"mean_auroc", "label_accuracy"} <= set(result["networks"]["s1"])
    export_run(exp.run_dir, "s1")
    scans = [tmp_path / "ct0.nii.gz", tmp_path / "ct5.nii.gz"]
    got = [list(csv.reader(predict(m, scans, tmp_path / f"p{k}", quiet=True).open()))
           for k, m in enumerate((exp.run_dir / "export" / "s1.onnx", exp.run_dir))]
    assert got[0][0] == ["path", "labels", "p_lesion", "p_large organ"] and len(got[0]) == 3
    assert_same_label_rows(got[0][1:], got[1][1:])


def test_a_column_per_class_csv_as_chexpert_ships_it(tmp_path):
    """path, other columns, and a 1/0/empty/-1 column per finding: data.classes picks the
    class columns; -1 (uncertain) stops the run unless data.uncertain says zeros or ones."""
    from kdstyles.data import build_data

    rng = np.random.default_rng(0)
    rows = ["path,Sex,Age,Edema,Effusion,Pneumonia"]
    values = ["1", "0", "", "-1", "1.0"]
    table = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / f"cxr{i}.png")
        row = [values[(i + k) % 5] if not (i == 0 and k == 2) else "1" for k in range(3)]
        table.append(row)
        rows.append(f"cxr{i}.png,F,{40 + i}," + ",".join(row))
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    args = ["task=multilabel", "data.source=csv", f"data.path={tmp_path / 'train.csv'}", "data.image_size=16",
            "data.classes=[Edema,Effusion,Pneumonia]"]
    with pytest.raises(KDError, match=r"line 3: 'Pneumonia' is -1 \(uncertain\); set data.uncertain: zeros or ones"):
        build_data(load_config(None, args).data, 0, task="multilabel")
    for policy, uncertain in (("zeros", 0), ("ones", 1)):
        bundle = build_data(load_config(None, [*args, f"data.uncertain={policy}"]).data, 0, task="multilabel")
        assert bundle.class_names == ["Edema", "Effusion", "Pneumonia"]
        for split in bundle.splits.values():
            for path, got in zip(split.paths, split.labels):
                row = table[int(path.stem[3:])]
                assert got.tolist() == [1 if v in ("1", "1.0") else uncertain if v == "-1" else 0 for v in row]
    with pytest.raises(KDError, match="name its class columns in data.classes \\(of Sex, Age, Edema, Effusion"):
        build_data(load_config(None, args[:-1]).data, 0, task="multilabel")
    with pytest.raises(KDError, match="'Cardiomegaly' is not a column of CSV file"):
        build_data(load_config(None, [*args[:-1], "data.classes=[Edema,Cardiomegaly]"]).data, 0, task="multilabel")
    (tmp_path / "train.csv").write_text(rows[0] + "\ncxr0.png,F,40,1,2,0\n")
    with pytest.raises(KDError, match="line 2: 'Effusion' is '2'; a class column holds 1, 0, empty or -1"):
        build_data(load_config(None, args).data, 0, task="multilabel")
