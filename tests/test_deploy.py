import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_same_prediction_rows
from kdstyles import Experiment, KDError
from kdstyles.deploy.export import Deployable, export_run
from kdstyles.deploy.predict import load_predictor
from conftest import DATA, SEG


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import tiny

    tmp = tmp_path_factory.mktemp("deploy")
    exp = Experiment(None, overrides=tiny(tmp, "train.epochs=1"), quiet=True)
    exp.fit()
    return exp.run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from kdstyles.data.generators.synthetic import render_patch

    folder = tmp_path_factory.mktemp("images")
    for i in range(5):
        img, _ = render_patch(9, "test", i, 24)  # another size: predict resizes
        Image.fromarray(img).save(folder / f"img{i}.png")
    Image.fromarray(render_patch(9, "test", 7, 16)[0]).convert("L").save(folder / "gray.png")
    return folder


def reference(run_dir, network):
    exp = Experiment.from_run(run_dir, quiet=True)
    exp.load_weights("best")
    from kdstyles.deploy.export import deployable

    return deployable(exp, network)


def test_onnx_export_of_the_ensemble(run_dir):
    import onnxruntime as ort

    side = export_run(run_dir, "ensemble", "onnx")
    model = run_dir / "export" / "ensemble.onnx"
    assert model.is_file() and side["verification"]["max_abs_diff"] < 1e-4
    for key in ("task", "input", "output", "normalisation", "class_names", "checkpoint", "metrics", "network"):
        assert key in side
    assert side["input"] == {"name": "image", "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0],
                             "channels": 3, "height": 16, "width": 16}
    assert side["class_names"] == ["normal", "lymphocytic", "tumour", "stroma"]
    assert side["metrics"]["accuracy"] == json.loads((run_dir / "eval.json").read_text())["networks"]["ensemble"]["accuracy"]
    assert json.loads((run_dir / "export" / "ensemble.json").read_text()) == side

    # new inputs, another batch size: onnxruntime == PyTorch, and the ensemble is the students' mean
    x = torch.rand(3, 3, 16, 16)
    got = ort.InferenceSession(str(model)).run(None, {"image": x.numpy()})[0]
    ref = reference(run_dir, "ensemble")
    with torch.inference_mode():
        np.testing.assert_allclose(got, ref(x).numpy(), atol=1e-4)
        s1, s2 = reference(run_dir, "s1")(x), reference(run_dir, "s2")(x)
    np.testing.assert_allclose(got, ((s1 + s2) / 2).numpy(), atol=1e-4)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)

    card = (run_dir / "export" / "ensemble.md").read_text()
    assert "| ensemble |" in card and "| teacher (reference) |" in card and "MFLOPs" in card
    assert "Preset `diverse`" in card


def test_torchscript_export(run_dir, tmp_path):
    out = tmp_path / "student.pt"
    side = export_run(run_dir, "s2", "torchscript", out=out)
    assert side["verification"]["max_abs_diff"] < 1e-4 and out.with_suffix(".json").is_file()
    loaded = torch.jit.load(str(out))
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), reference(run_dir, "s2")(x), atol=1e-4, rtol=0)


def test_export_errors(run_dir):
    with pytest.raises(KDError, match="--network 's7' is not in this run; allowed: teacher, s1, s2, ensemble"):
        export_run(run_dir, "s7")
    with pytest.raises(KDError, match="--format 'tflite' is not known; allowed: onnx, torchscript"):
        export_run(run_dir, "s1", "tflite")


def test_students_named_otherwise_train_export_and_predict_by_default(tmp_path):
    """Presets fill their roles with students of any name; export and predict default to the
    first student, not to a name 's1' the run may not have."""
    from conftest import tiny

    net = {"arch": "resnet10", "widen": 0.125}
    exp = Experiment({"networks": {"students": {"mobile": net, "tiny": net}}},
                     overrides=[o for o in tiny(tmp_path, "train.epochs=1") if ".students." not in o], quiet=True)
    assert {(e.src, e.dst) for e in exp.cfg.edges} == {("teacher", "mobile"), ("teacher", "tiny"),
                                                       ("mobile", "tiny"), ("tiny", "mobile")}
    exp.fit()
    said = []
    side = export_run(exp.run_dir, fmt="torchscript", say=said.append)
    assert side["network"] == "mobile" and (exp.run_dir / "export" / "mobile.pt").is_file()
    assert load_predictor(exp.run_dir).source == f"{exp.run_dir} (mobile)"
    # no eval.json yet: the run is evaluated first, and export says so; then its eval.json is read
    assert len(said) == 1 and "the best checkpoint has not been evaluated" in said[0]
    export_run(exp.run_dir, fmt="torchscript", say=said.append)
    assert len(said) == 1
    side = export_run(exp.run_dir, fmt="torchscript", checkpoint="last", say=said.append)
    assert len(said) == 2 and "the last checkpoint has not been evaluated" in said[1]
    assert side["metrics"]["accuracy"] == json.loads((exp.run_dir / "eval.json").read_text())["networks"]["mobile"][
        "accuracy"]


def test_predict_onnx_without_torch_matches_run_folder(run_dir, images, tmp_path, cli):
    if not (run_dir / "export" / "ensemble.onnx").is_file():
        export_run(run_dir, "ensemble", "onnx")
    code = ("import sys; sys.modules['torch'] = None\n"  # importing torch would now fail
            "from kdstyles.cli import main\n"
            f"sys.argv = ['kdstyles', 'predict', {str(run_dir / 'export' / 'ensemble.onnx')!r}, {str(images)!r},"
            f" '--out', {str(tmp_path / 'onnx')!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    code, _, err = cli("predict", run_dir, images, "--network", "ensemble", "--out", tmp_path / "run", "--batch-size", 2)
    assert code == 0, err
    a = list(csv.DictReader((tmp_path / "onnx" / "predictions.csv").open()))
    b = list(csv.DictReader((tmp_path / "run" / "predictions.csv").open()))
    assert len(a) == 6
    assert_same_prediction_rows(a, b)
    for ra in a:
        assert abs(sum(float(ra[f"p_{c}"]) for c in ("normal", "lymphocytic", "tumour", "stroma")) - 1) < 1e-4


def test_predict_inputs_from_csv_and_errors(run_dir, images, tmp_path):
    from kdstyles.deploy.predict import collect_inputs, predict

    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + f"{images / 'img0.png'}\n{images / 'img3.png'}\n")
    assert collect_inputs([listing]) == [images / "img0.png", images / "img3.png"]
    with pytest.raises(KDError, match="is not an image"):
        collect_inputs([tmp_path / "notes.txt"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(KDError, match=f"image file '{broken}' is unreadable.*; --skip-unreadable predicts the other"):
        predict(run_dir, [broken, images / "img0.png"], tmp_path / "out", quiet=True)
    # skipping: the readable images keep their place and rows; the others are listed with the reason
    good = [images / "img0.png", images / "img3.png"]
    out = predict(run_dir, [good[0], broken, good[1]], tmp_path / "out", quiet=True, skip_unreadable=True, batch_size=2)
    alone = predict(run_dir, good, tmp_path / "alone", quiet=True)
    assert_same_prediction_rows(*(list(csv.DictReader(p.open())) for p in (out, alone)))  # batches of 1 and 2
    skipped = list(csv.DictReader((tmp_path / "out" / "skipped.csv").open()))
    assert [r["path"] for r in skipped] == [str(broken)] and "unreadable" in skipped[0]["reason"]
    with pytest.raises(KDError, match="none of the 1 inputs could be read; see .*skipped.csv"):
        predict(run_dir, [broken], tmp_path / "none", quiet=True, skip_unreadable=True)
    predict(run_dir, good, tmp_path / "out", quiet=True, skip_unreadable=True)
    assert not (tmp_path / "out" / "skipped.csv").exists()  # a clean prediction leaves no stale list
    with pytest.raises(KDError, match="has no sidecar"):
        (tmp_path / "lonely.onnx").write_bytes(b"x")
        load_predictor(tmp_path / "lonely.onnx")


def test_evaluating_gives_each_network_its_own_mode_back(run_dir, tmp_path):
    """A network put in evaluation mode (as export puts the one it traces) stays so after the run
    is evaluated, and one in training mode stays in training mode."""
    import shutil

    shutil.copytree(run_dir, tmp_path / "run")  # the shared run folder keeps no eval.json of this test's
    exp = Experiment.from_run(tmp_path / "run", quiet=True)
    exp.load_weights("best")
    exp.cohort.networks["s1"].eval()
    exp.cohort.networks["s2"].train()
    exp.evaluate()
    assert not any(m.training for m in exp.cohort.networks["s1"].modules())
    assert all(m.training for m in exp.cohort.networks["s2"].modules())


def test_deployable_normalises_inside():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    from kdstyles.tasks import TASKS

    model = Deployable([net], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], TASKS["classification"](2))
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(model(x), torch.softmax(net((x - 0.5) / 0.25), 1))


def test_segmentation_export_and_predict_masks(tiny_overrides, tmp_path):
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict
    from kdstyles.data.generators.synthetic_seg import render_frame

    exp = Experiment(None, overrides=tiny_overrides(*SEG, *DATA, "train.epochs=1", "eval.overlays=0"), quiet=True)
    exp.fit()
    side = export_run(exp.run_dir, "ensemble", "onnx")
    assert side["task"] == "segmentation" and side["output"]["shape"] == ["batch", 2, "height", "width"]
    assert side["verification"]["max_abs_diff"] < 1e-4
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):  # frames wider than high: masks come back at 56 x 40, the right way round
        Image.fromarray(render_frame(4, "test", i, 40)[0]).resize((56, 40)).save(folder / f"f{i}.png")
    a = predict(exp.run_dir / "export" / "ensemble.onnx", [folder], tmp_path / "onnx", quiet=True)
    b = predict(exp.run_dir, [folder], tmp_path / "run", network="ensemble", quiet=True)
    rows_a, rows_b = a.read_text().splitlines(), b.read_text().splitlines()
    assert rows_a[0] == "path,mask,foreground_fraction" and len(rows_a) == 4
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        mask_a, mask_b = ra.split(",")[1], rb.split(",")[1]
        with Image.open(mask_a) as ma, Image.open(mask_b) as mb:
            assert ma.size == (56, 40)  # back at the input image's size
            # the same mask, but for a pixel or two whose classes tie to float order (an untrained net)
            assert (np.array(ma) != np.array(mb)).mean() <= 0.005
            assert set(np.unique(np.array(ma))) <= {0, 255}
    # the MONAI Bundle writes the same masks, resized back to each image's size as predict does
    from conftest import run_bundle
    from kdstyles.deploy.bundle import export_bundle

    bundle = export_bundle(exp.run_dir, "ensemble", tmp_path / "bundle", say=lambda m: None)
    assert bundle["output"]["shape"] == ["batch", 2, "height", "width"]
    written = run_bundle(tmp_path / "bundle", folder, tmp_path / "bundle-out")
    for rb in rows_b[1:]:
        path, mask_b = rb.split(",")[:2]
        with Image.open(written / f"{Path(path).stem}_mask.png") as m, Image.open(mask_b) as mb:
            assert m.size == (56, 40)  # the network saw 32 x 32
            assert (np.array(m) != np.array(mb)).mean() <= 0.005 and set(np.unique(np.array(m))) <= {0, 255}


def test_a_calibrated_export_outputs_the_probabilities_evaluate_scored(run_dir, tmp_path):
    """export --calibrated puts the temperature evaluate --calibrated fitted inside the model: its
    ONNX outputs are the network's probabilities tempered as evaluation tempered them (the
    ensemble's mean too); the sidecar and card say T and the validation ECE; without a fit it
    is one line saying what to run."""
    import shutil

    import onnxruntime as ort

    from kdstyles.common.calibration import tempered

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with pytest.raises(KDError, match=r"export --calibrated: no temperature fitted for 's1' at the best checkpoint; "
                                      rf"run 'kdstyles evaluate {run} --calibrated' first"):
        export_run(run, "s1", "onnx", calibrated=True)
    assert not (run / "export" / "s1.onnx").exists()  # refused before anything is written
    Experiment.from_run(run, quiet=True).evaluate(calibrated=True)
    fitted = json.loads((run / "eval.json").read_text())["calibration"]
    sample = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for network in ("s1", "ensemble"):
        side = export_run(run, network, "onnx", calibrated=True)
        t = fitted["temperature"][network]
        sets = fitted["conformal"]["methods"]["lac"][network]
        assert side["calibration"] == {"temperature": t, "fitted_on": "val", "val_ece": fitted["val"][network]["ece"],
                                       "prediction_sets": {"method": "lac", "coverage": 0.9,
                                                           "threshold": sets["threshold"],
                                                           "test_coverage": sets["coverage"],
                                                           "test_set_size": sets["set_size"]}}
        assert side["metrics"]["ece"] == fitted["networks"][network]["ece"]  # the card's metrics are at T
        got = ort.InferenceSession(str(run / "export" / f"{network}.onnx")).run(None, {"image": sample.numpy()})[0]
        with torch.inference_mode():
            want = tempered(reference(run, network)(sample), t)
        assert np.abs(got - want.numpy()).max() < 1e-5
        assert f"temperature-scaled (temperature {t:.3f}), fitted on the validation split" in (run / "export" / f"{network}.md").read_text()
    # a calibrated MONAI Bundle: its TorchScript model outputs the same tempered probabilities
    from kdstyles.deploy.bundle import export_bundle

    export_bundle(run, "s1", tmp_path / "bundle", calibrated=True, say=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["kdstyles"]["calibration"]["temperature"] == fitted["temperature"]["s1"]
    with torch.inference_mode():
        got = torch.jit.load(str(tmp_path / "bundle" / "models" / "model.ts"))(sample)
        want = tempered(reference(run, "s1")(sample), fitted["temperature"]["s1"])
    assert (got - want).abs().max() < 1e-5
    # predict writes each image's set: the classes whose score is within the threshold, most likely first
    from kdstyles.common.sets import prediction_sets
    from kdstyles.deploy.predict import predict

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray((sample[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(images / f"{i}.png")
    rows = list(csv.DictReader(open(predict(run / "export" / "s1.onnx", [images], tmp_path / "pred", quiet=True))))
    names = side["class_names"]
    probs = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    s1 = fitted["conformal"]["methods"]["lac"]["s1"]["threshold"]
    for row, member, p in zip(rows, prediction_sets(probs, s1, "lac"), probs, strict=True):
        listed = row["prediction_set"].split("|")
        assert listed[0] == row["prediction"] and set(listed) == {names[k] for k in np.flatnonzero(member)}
        assert [p[names.index(c)] for c in listed] == sorted([p[names.index(c)] for c in listed], reverse=True)


def test_a_monai_bundle_runs_in_monais_runner_and_predicts_what_kdstyles_predicts(run_dir, images, tmp_path):
    """export --format bundle: the folder MONAI's bundle specification asks for; its metadata
    declares the input and output tensors MONAI's own check verifies against the network; MONAI's
    inference workflow has every property it requires; run by MONAI's runner over a folder of
    images (other sizes, a grey one, a 16-bit and a float one) it writes each image's probabilities, which are kdstyles
    predict's on the same files (float32 through the same Pillow steps: 1e-5)."""
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    from conftest import bundle_probabilities, run_bundle
    from kdstyles.deploy.bundle import export_bundle
    from kdstyles.deploy.predict import predict

    out = tmp_path / "s1_bundle"
    side = export_bundle(run_dir, "s1", out, license="MIT", authors="A. Tester", say=lambda m: None)
    assert side["verification"]["max_abs_diff"] < 1e-5
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["configs/inference.json", "configs/metadata.json", "docs/README.md", "docs/license.txt",
                     "models/model.json", "models/model.pt", "models/model.ts"]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    required = {"version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
                "description", "authors", "copyright", "network_data_format"}
    assert required <= set(meta) and meta["authors"] == "A. Tester" and "MIT" in (out / "docs/license.txt").read_text()
    tensor = {"type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
              "channel_def"}
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert tensor <= set(image) and tensor <= set(pred)
    assert image["spatial_shape"] == [16, 16] and image["num_channels"] == 3 and image["value_range"] == [0, 1]
    assert pred["channel_def"] == {"0": "normal", "1": "lymphocytic", "2": "tumour", "3": "stroma"}
    assert meta["kdstyles"]["networks"] == [{"name": "s1", "arch": "resnet10", "widen": 0.125, "stem": "auto"}]
    assert "arXiv:2212.02931" in " ".join(meta["references"])
    import shutil

    images = Path(shutil.copytree(images, tmp_path / "images"))
    rng = np.random.default_rng(0)  # a 16-bit grey image and a float one: stretched to 8 bits, as kdstyles reads them
    Image.fromarray(rng.integers(300, 40000, (20, 24)).astype(np.uint16)).save(images / "deep.png")
    Image.fromarray(rng.normal(0, 1, (18, 18)).astype(np.float32)).save(images / "float.tif")
    assert Image.open(images / "deep.png").mode.startswith("I") and Image.open(images / "float.tif").mode == "F"
    workflow = ConfigWorkflow(config_file=str(out / "configs" / "inference.json"), logging_file=False,
                              workflow_type="inference", bundle_root=str(out), dataset_dir=str(images))
    workflow.initialize()
    assert workflow.check_properties() == []
    verify_net_in_out(net_id="network_def", config_file=str(out / "configs" / "inference.json"),
                      meta_file=str(out / "configs" / "metadata.json"), device="cpu", bundle_root=str(out))
    got = bundle_probabilities(run_bundle(out, images, tmp_path / "bundle-out"))
    rows = list(csv.DictReader(predict(run_dir, [images], tmp_path / "pred", network="s1", quiet=True).open()))
    assert sorted(got) == sorted(Path(r["path"]).name for r in rows) and len(rows) == 8
    for r in rows:
        want = [float(r[f"p_{c}"]) for c in ("normal", "lymphocytic", "tumour", "stroma")]
        assert np.abs(np.array(got[Path(r["path"]).name]) - want).max() < 1e-5
    # kdstyles predict takes the bundle folder itself (its TorchScript model and the sidecar beside it)
    again = list(csv.DictReader(predict(out, [images], tmp_path / "pred-bundle", quiet=True).open()))
    assert_same_prediction_rows(again, rows)
    assert "python -m monai.bundle run --config_file configs/inference.json" in (out / "docs/README.md").read_text()
    # exported again: the earlier bundle replaced whole; a folder of other files is refused untouched
    (out / "models" / "stray.bin").write_bytes(b"x")
    export_bundle(run_dir, "s1", out, say=lambda m: None)
    assert not (out / "models" / "stray.bin").exists() and "No licence was chosen" in (out / "docs/license.txt").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(KDError, match=rf"^--out '{other}' is a folder of other files; give a new or empty folder$"):
        export_bundle(run_dir, "s1", other, say=lambda m: None)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(KDError, match="--license 'MIT license!': give an SPDX identifier"):
        export_bundle(run_dir, "s1", tmp_path / "b2", license="MIT license!")

