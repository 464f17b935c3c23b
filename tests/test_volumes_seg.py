"""3D segmentation and detection: the embedded organ/lesion volumes, patches and sliding
windows, the Decathlon layout read from NIfTI files the tests write (orientation, spacing,
window, checks), distances in mm, volume overlays, export and NIfTI predictions on the
input's grid; 3D box targets, exact box moves, and a 3D detection run (its mAP is checked
against MONAI's COCOMetric in test_detection.py)."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import assert_same_detections
from kdstyles import Experiment, KDError, load_config

nib = pytest.importorskip("nibabel")

UNETS = ["task=segmentation", "networks.teacher.arch=unet", "networks.students.s1.arch=unet",
         "networks.students.s2.arch=unet", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
         "networks.students.s2.widen=0.125"]
SYNTH = ["data.spatial_dims=3", "data.image_size=16", "data.train_samples=8", "data.val_samples=3",
         "data.test_samples=3", "data.batch_size=4"]


MODALITY_NAMES = ["FLAIR", "T1w", "t1gd", "T2w"]


def decathlon(root, n=8, las_every=4, spacing=(1.2, 1.2, 1.6), meta=True, modalities=1):
    """A Decathlon folder of ``n`` CT-like cases in HU from the embedded generator: shapes
    differ, some volumes are stored LAS (x flipped), voxels are ``spacing`` mm. With
    ``modalities`` > 1 every image file is 4D like BraTS's (x, y, z, channel), channel m
    shifted by 60 m."""
    from kdstyles.data.generators.synthetic_vol import render_with_mask

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        size = 16 + 4 * (i % 3)
        vol, _, mask = render_with_mask(0, "train", i, size)
        hu = vol[..., 0].astype(np.float32) / 255 * 400 - 150
        depth = size - 2 * (i % 2)
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = [-10, 5, 2]
        if las_every and i % las_every == las_every - 1:
            affine[0, 0] = -spacing[0]
        image = hu[:, :, :depth] if modalities == 1 else \
            np.stack([hu[:, :, :depth] + 60 * m for m in range(modalities)], -1)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(mask[:, :, :depth], affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    if meta:
        (root / "dataset.json").write_text(json.dumps({
            "name": "organs", "modality": {str(m): MODALITY_NAMES[m] for m in range(modalities)}
            if modalities > 1 else {"0": "CT"}, "labels": {"0": "background", "1": "organ", "2": "lesion"},
            "training": training, "test": []}))
    return root


def dec_args(root, *extra):
    return [*UNETS, "data.source=decathlon", f"data.root={root}", "data.spacing=[1.5,1.5,1.5]",
            "data.window=[-150,250]", "data.patch_size=16", "data.batch_size=4", "data.val_fraction=0.25",
            "data.test_fraction=0.25", *extra]


def test_embedded_segmentation_volumes_match_the_classification_ones():
    from kdstyles.data.generators.synthetic_vol import render_volume
    from kdstyles.data.generators.synthetic_vol_seg import CLASS_NAMES, generate

    v, m = generate(1, "val", 6, 20)
    assert v.shape == (6, 20, 20, 20, 1) and m.shape == (6, 20, 20, 20) and CLASS_NAMES[2] == "lesion"
    for i in range(6):
        vol, label = render_volume(1, "val", i, 20)
        assert np.array_equal(vol, v[i])  # the same volume; the mask says where organ and lesion are
        assert (label > 0) == (m[i] == 2).any()  # normal volumes have no lesion
        assert ((m[i] == 2) <= (m[i] > 0)).all() and (m[i] == 1).sum() > 100  # lesions lie inside the organ


def test_patches_balance_foreground_and_pad_small_volumes():
    from kdstyles.data import crop_patch

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (30, 20, 40, 1), dtype=np.uint8)
    mask = np.zeros((30, 20, 40), np.uint8)
    mask[25:28, 2:4, 35:38] = 1  # a small foreground in a corner
    hits = [crop_patch(vol, mask, 12, rng, 1.0)[1].any() for _ in range(20)]
    assert all(hits)  # positive = 1: every patch holds foreground
    misses = [crop_patch(vol, mask, 12, rng, 0.0)[1].any() for _ in range(40)]
    assert sum(misses) < 20  # anywhere: mostly background
    img, m, _ = crop_patch(vol, mask, 24, rng, 0.5)  # 20 < 24 along one axis: padded
    assert img.shape == (24, 24, 24, 1) and m.shape == (24, 24, 24)
    assert img.min() == vol.min()


def test_sliding_windows_over_one_window_equal_the_plain_forward():
    from kdstyles import build_cohort
    from kdstyles.data import Window
    from kdstyles.engine.evaluate import network_outputs

    torch.manual_seed(0)
    cohort = build_cohort(load_config(None, [*UNETS, *SYNTH]), num_classes=3, channels=1, image_size=16).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        plain = network_outputs(cohort, x)
        windowed = network_outputs(cohort, x, window=Window(16, 2, 0.25))
        tiled = network_outputs(cohort, torch.randn(1, 1, 20, 28, 24), window=Window(16, 2, 0.5))
    for name in cohort.names:
        assert torch.allclose(plain[name], windowed[name], atol=1e-5)
        assert tiled[name].shape == (1, 3, 20, 28, 24)  # a volume of any shape, stitched back


def test_surface_distances_are_in_mm_with_the_spacing():
    from kdstyles.common.metrics import per_class_scores, surface_distances

    target = torch.zeros(1, 20, 20, 20, dtype=torch.long)
    target[0, 5:12, 5:12, 5:12] = 1
    pred = torch.roll(target, 2, dims=1)  # shifted by two voxels along the first axis
    hd, asd = surface_distances(pred, target, 2)
    hd_mm, asd_mm = surface_distances(pred, target, 2, spacing=(1.5, 1.0, 1.0))
    assert float(hd[0]) == pytest.approx(2.0) and float(hd_mm[0]) == pytest.approx(3.0)
    _, asd_2mm = surface_distances(pred, target, 2, spacing=(2.0, 2.0, 2.0))
    assert float(asd_2mm[0]) == pytest.approx(2 * float(asd[0])) and float(asd[0]) > 0
    dice, iou = per_class_scores(pred, target, 2)
    assert dice.shape == (1, 1) and float(dice[0, 0]) == pytest.approx(2 * 5 * 49 / (2 * 343))


def test_synthetic_3d_segmentation_on_patches_trains_and_evaluates(tiny_overrides):
    exp = Experiment(None, overrides=tiny_overrides(*UNETS, *SYNTH, "data.patch_size=8", "train.epochs=1",
                                                    "eval.hd95=true", "eval.overlays=1"), quiet=True)
    assert exp.data.splits["train"][0][0].shape == (1, 8, 8, 8)  # training patches
    assert exp.data.splits["test"][0][0].shape == (1, 16, 16, 16)  # whole volumes
    exp.fit()
    result = exp.evaluate()
    assert result["class_names"] == ["background", "organ", "lesion"] and result["samples"] == 3
    s1 = result["networks"]["s1"]
    assert {"dice", "iou", "hd95", "asd", "pixel_accuracy", "nll", "fidelity_kl"} <= set(s1)
    assert len(result["per_image"]["s1"]["dice"]) == 3
    assert s1["dice"] == pytest.approx(np.mean(result["per_image"]["s1"]["dice"]))
    assert len(result["details"]["s1"]["dice_per_class"]) == 2  # organ, lesion
    assert result["overlays"] == ["overlays/test-000.png"] and (exp.run_dir / result["overlays"][0]).is_file()
    assert list(result["networks"])[:3] == ["teacher", "s1", "s2"]


def test_decathlon_volumes_are_reoriented_resampled_and_windowed(tmp_path):
    from kdstyles.data import build_data

    root = decathlon(tmp_path / "dec")
    cfg = load_config(None, dec_args(root))
    assert cfg.data.dims == 3  # the source holds volumes
    bundle = build_data(cfg.data, 0, task="segmentation")
    assert bundle.class_names == ["background", "organ", "lesion"] and bundle.channels == 1
    assert bundle.image_size == 16  # the network input: the patch
    assert sum(len(s) for s in bundle.splits.values()) == 8 and len(bundle.splits["test"]) == 2
    test = bundle.splits["test"]
    assert all(sp == pytest.approx((1.5, 1.5, 1.5)) for sp in test.spacing)
    shapes = {v.shape for v in bundle.splits["train"].images}
    assert len(shapes) > 1  # volumes keep their own (resampled) shape
    assert bundle.splits["train"][0][0].shape == (1, 16, 16, 16)
    assert test.window.size == 16 and bundle.loader("test", 4).batch_sampler.batch_size == 1
    assert max(v.shape[0] for s in bundle.splits.values() for v in s.images) in (19, 20)  # 24 x 1.2 mm / 1.5 mm


def test_prepared_volumes_restore_exactly_onto_the_file_grid(tmp_path, caplog):

    from kdstyles.data.volumes import prepare, restore

    root = decathlon(tmp_path / "dec", n=4)
    image, label = root / "imagesTr" / "case_003.nii.gz", root / "labelsTr" / "case_003.nii.gz"  # stored LAS
    original = np.asarray(nib.load(label).dataobj)
    with caplog.at_level("INFO"):
        ras = prepare(image, label, SimpleNamespace(orientation="RAS", spacing=None, window=[-150, 250]), 3)
    assert "nvImageCodec" not in caplog.text  # MONAI's DICOM reader is quiet about a NIfTI file
    assert np.array_equal(ras.mask, original[::-1])  # x flipped to run to the Right
    assert np.array_equal(restore(ras.mask, ras), original)
    hu = np.asarray(nib.load(image).dataobj)[::-1]
    assert np.abs(ras.image[..., 0] - np.clip((hu + 150) / 400, 0, 1) * 255).max() <= 0.51  # the window
    fine = prepare(image, label, SimpleNamespace(orientation="RAS", spacing=[0.6, 0.6, 0.8], window=None), 3)
    assert fine.mask.shape == tuple(2 * s - 1 for s in original.shape) and fine.spacing == pytest.approx((0.6, 0.6, 0.8))
    assert np.array_equal(restore(fine.mask, fine), original)  # nearest up by two, and back


@pytest.mark.parametrize("mutate, message", [
    (lambda r: (r / "imagesTr" / "case_001.nii.gz").write_bytes(b"garbage"), "case_001.nii.gz' cannot be read"),
    (lambda r: nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), r / "labelsTr" / "case_002.nii.gz"),
     "label map '{r}/labelsTr/case_002.nii.gz' is 5x5x5 but its volume"),
    (lambda r: nib.save(nib.Nifti1Image(np.asarray(nib.load(r / "labelsTr" / "case_000.nii.gz").dataobj),
                                        np.diag([2.0, 2.0, 2.0, 1.0])), r / "labelsTr" / "case_000.nii.gz"),
     "case_000.nii.gz' is not on its volume's grid"),
    (lambda r: nib.save(nib.Nifti1Image(np.asarray(nib.load(r / "labelsTr" / "case_000.nii.gz").dataobj) * 3,
                                        nib.load(r / "labelsTr" / "case_000.nii.gz").affine),
                        r / "labelsTr" / "case_000.nii.gz"), "has value 6, outside 0..2"),
    (lambda r: (r / "labelsTr" / "case_004.nii.gz").unlink(), "case_004.nii.gz' does not exist"),
    (lambda r: (r / "dataset.json").write_text("{"), "dataset.json' is damaged"),
    (lambda r: (r / "dataset.json").write_text('{"labels": {"0": "bg", "2": "x"}}'), "without gaps"),
])
def test_malformed_decathlon_folders_stop_in_one_line(mutate, message, tmp_path):
    root = decathlon(tmp_path / "dec", n=6)
    mutate(root)
    with pytest.raises(KDError) as err:
        Experiment(None, overrides=dec_args(root, f"output.dir={tmp_path / 'runs'}"), quiet=True).data
    assert message.format(r=root) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_decathlon_without_dataset_json_pairs_by_name(tmp_path):
    from kdstyles.data import build_data

    root = decathlon(tmp_path / "dec", n=5, meta=False)
    bundle = build_data(load_config(None, dec_args(root, "data.num_classes=3")).data, 0, task="segmentation")
    assert bundle.class_names == ["0", "1", "2"] and sum(len(s) for s in bundle.splits.values()) == 5
    with pytest.raises(KDError, match="data.image_size: Decathlon volumes keep their own size"):
        build_data(load_config(None, dec_args(root, "data.image_size=32")).data, 0, task="segmentation")


def test_decathlon_run_exports_and_predicts_nifti_masks_on_the_input_grid(tmp_path):
    pytest.importorskip("onnxruntime")
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict

    root = decathlon(tmp_path / "dec", n=8)
    exp = Experiment(None, overrides=dec_args(root, f"output.dir={tmp_path / 'runs'}", "train.epochs=1",
                                              "eval.overlays=0", "eval.hd95=true"), quiet=True)
    exp.fit()
    result = exp.evaluate()
    assert result["samples"] == 2 and result["networks"]["s1"]["hd95"] > 0
    side = export_run(exp.run_dir, "ensemble")
    assert side["input"]["depth"] == 16 and side["volumes"]["spacing"] == [1.5, 1.5, 1.5]
    assert side["output"]["shape"] == ["batch", 3, "depth", "height", "width"]
    case = root / "imagesTr" / "case_003.nii.gz"  # stored LAS, 1.2 x 1.2 x 1.6 mm
    for model in (exp.run_dir / "export" / "ensemble.onnx", exp.run_dir):
        out = predict(model, [case], tmp_path / "pred", network="ensemble", quiet=True)
        rows = out.read_text().splitlines()
        assert rows[0] == "path,mask,foreground_fraction,ml_organ,ml_lesion"
        mask_path = rows[1].split(",")[1]
        written, source = nib.load(mask_path), nib.load(case)
        assert written.shape == source.shape and np.allclose(written.affine, source.affine)
        values = np.asarray(written.dataobj)
        ml = float(rows[1].split(",")[3])
        assert ml == pytest.approx((values == 1).sum() * 1.2 * 1.2 * 1.6 / 1000, abs=1e-3)
    with pytest.raises(KDError, match="this model takes volumes"):
        predict(exp.run_dir, [tmp_path / "x.png"], tmp_path / "pred", quiet=True)
    # the MONAI Bundle prepares the volume as training did (LAS -> RAS, 1.5 mm, the window), slides the
    # same windows and writes the mask back on the file's own grid: predict's mask
    from conftest import run_bundle
    from kdstyles.deploy.bundle import export_bundle

    export_bundle(exp.run_dir, "ensemble", tmp_path / "bundle", say=lambda m: None)
    inputs = tmp_path / "cases"
    inputs.mkdir()
    (inputs / case.name).write_bytes(case.read_bytes())
    written = nib.load(run_bundle(tmp_path / "bundle", inputs, tmp_path / "bundle-out") / "case_003_mask.nii.gz")
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert (np.asarray(written.dataobj) != values).mean() <= 0.005


def test_multi_channel_volumes_keep_the_chosen_modalities_through_export_and_predict(tmp_path):
    """BraTS-like 4-channel files: data.modalities keeps channels 2 and 0 in that order for
    training, evaluation (overlays of a 2-channel volume), export and predict; a file without
    those channels, an index dataset.json does not list, and a 2D source are one line each."""
    pytest.importorskip("onnxruntime")
    from kdstyles.data import volumes
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict

    root = decathlon(tmp_path / "dec", n=6, modalities=4)
    exp = Experiment(None, overrides=dec_args(root, f"output.dir={tmp_path / 'runs'}", "train.epochs=1",
                                              "data.modalities=[2,0]", "eval.overlays=1"), quiet=True)
    data = exp.data
    assert data.channels == 2 and exp.cohort.networks["s1"](torch.zeros(1, 2, 16, 16, 16)).shape[1] == 3
    first = data.splits["test"]
    whole = volumes.prepare(first.paths[0], None, exp.cfg.data)  # every channel, as the file holds them
    assert whole.image.shape[-1] == 4 and np.array_equal(first.images[0], whole.image[..., [2, 0]])
    exp.fit()
    exp.evaluate()
    assert len(list((exp.run_dir / "overlays").glob("*.png"))) == 1
    side = export_run(exp.run_dir, "s1")
    assert side["input"]["channels"] == 2 and side["volumes"]["modalities"] == [2, 0]
    case = root / "imagesTr" / "case_001.nii.gz"
    rows = [predict(m, [case], tmp_path / f"pred{i}", quiet=True).read_text().splitlines()[1].split(",")[2:]
            for i, m in enumerate((exp.run_dir / "export" / "s1.onnx", exp.run_dir))]
    # the exported model keeps the same channels as the run: the same mask, but for a voxel or two
    # on a class boundary that float order may put either side
    np.testing.assert_allclose(*(np.array(r, float) for r in rows), rtol=0.02, atol=0.01)
    # the MONAI Bundle keeps the same channels of the 4-channel file: predict's mask
    from conftest import run_bundle
    from kdstyles.deploy.bundle import export_bundle

    export_bundle(exp.run_dir, "s1", tmp_path / "bundle", say=lambda m: None)
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / case.name).write_bytes(case.read_bytes())
    written = nib.load(run_bundle(tmp_path / "bundle", tmp_path / "cases", tmp_path / "b") / "case_001_mask.nii.gz")
    mask = nib.load(predict(exp.run_dir, [case], tmp_path / "pred-s1", network="s1", quiet=True)
                    .read_text().splitlines()[1].split(",")[1])
    assert written.shape == mask.shape and (np.asarray(written.dataobj) != np.asarray(mask.dataobj)).mean() <= 0.005
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16, 2), np.float32), np.eye(4)), two)
    with pytest.raises(KDError, match=r"has no channel 2 \(it has 2: 0..1\), which data.modalities \[2, 0\] keeps"):
        predict(exp.run_dir, [two], tmp_path / "pred3", quiet=True)
    with pytest.raises(KDError, match=r"data.modalities: 4 is not a channel; .*dataset.json lists 4 modalities "
                                      r"\(FLAIR, T1w, t1gd, T2w\), indices 0..3"):
        Experiment(None, overrides=dec_args(root, "data.modalities=[4]"), quiet=True).data
    with pytest.raises(KDError, match="modalities: selects channels of volume files"):
        load_config(None, ["data.modalities=[0]"])


# ----------------------------------------------------------------------------- 3D detection


def test_3d_box_targets_decode_back_to_the_boxes():
    from kdstyles.common.boxes import decode, encode

    gt = torch.tensor([[[2.0, 3.0, 4.0, 9.0, 7.0, 12.0, 1], [-1] * 7], [[10, 1, 0, 15, 6, 3, 0], [1, 1, 1, 4, 3, 2, 0]]])
    heat, regress, centres = encode(gt, 2, (16, 12, 20))  # (D, H, W); x runs along W, z along D
    assert heat.shape == (2, 2, 16, 12, 20) and regress.shape == (2, 6, 16, 12, 20) and centres.sum() == 3
    assert heat[0, 1, 8, 5, 5] == 1 and heat[1, 0, 1, 3, 12] == 1  # the centre voxels (z, y, x)
    assert 0 < heat[0, 1, 8, 5, 6] < 1  # a 3D Gaussian around each centre
    dets = decode(torch.cat([heat, regress], 1).numpy(), 2, max_detections=4)
    assert dets.shape == (2, 4, 8)
    np.testing.assert_allclose(dets[0, 0], [2, 3, 4, 9, 7, 12, 1, 1], atol=1e-4)
    found = {tuple(np.round(d, 4)) for d in dets[1] if d[6] == 1}
    assert found == {(10, 1, 0, 15, 6, 3, 1, 0), (1, 1, 1, 4, 3, 2, 1, 0)}


@pytest.mark.parametrize("seed", range(6))
def test_3d_boxes_move_exactly_with_flips_and_quarter_turns(seed):
    from kdstyles.data import flip_boxes

    boxes = np.array([[3, 5, 1, 10, 9, 4, 0], [12, 1, 6, 16, 16, 8, 1]], np.float32)
    vol = torch.zeros(2, 8, 16, 16)
    for c, (x1, y1, z1, x2, y2, z2, _) in enumerate(boxes.astype(int)):
        vol[c, z1:z2, y1:y2, x1:x2] = 1
    out, moved = flip_boxes(vol, boxes, np.random.default_rng(seed), True, True, True)
    for c in range(2):
        zs, ys, xs = torch.nonzero(out[c], as_tuple=True)
        assert moved[c, :6].tolist() == [xs.min().item(), ys.min().item(), zs.min().item(), xs.max().item() + 1,
                                         ys.max().item() + 1, zs.max().item() + 1]


def test_3d_detection_trains_evaluates_and_exports(tiny_overrides):
    from kdstyles.data import checks
    from kdstyles.data.generators.synthetic_vol_det import generate
    from kdstyles.deploy.export import export_run

    vols, boxes = generate(0, "train", 9, 16)
    assert vols.shape == (9, 16, 16, 16, 1) and all(b.shape[1] == 7 for b in boxes)
    assert {int(b[0, 6]) for b in boxes if len(b)} == {0, 1} and any(len(b) == 0 for b in boxes)
    report = checks.DataReport(["no objects", "objects"])
    checks.check_boxes("train", [np.array([[1, 1, 17, 4, 4, 20, 0]], np.float32)], 2, (16, 16, 16), ["vol a"], report)
    with pytest.raises(KDError, match=r"vol a: box \(1, 1, 17, 4, 4, 20\) class 0: outside the 16x16x16 volume"):
        report.raise_errors()
    det = ["task=detection", *UNETS[1:], *SYNTH, "data.augment.rotate90=true", "train.epochs=1"]
    exp = Experiment(None, overrides=tiny_overrides(*det), quiet=True)
    assert exp.data.splits["train"][0][1].shape[1] == 7  # padded (M, 7) boxes
    exp.fit()
    result = exp.evaluate()
    assert result["class_names"] == ["cyst", "tumour"] and {"map", "ap50", "froc_1"} <= set(result["networks"]["s1"])
    assert result["overlays"] == [f"overlays/test-{i:03d}.png" for i in range(3)]  # one per test volume
    assert all((exp.run_dir / o).stat().st_size > 1000 for o in result["overlays"])
    side = export_run(exp.run_dir, "s1")
    assert side["output"]["shape"] == ["batch", "channels", "depth", "height", "width"]
    assert side["verification"]["max_abs_diff"] < 1e-4
    from kdstyles.deploy.predict import predict

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    affine[:3, 3] = [-20, 10, 30]
    nib.save(nib.Nifti1Image(vols[1][..., 0].repeat(2, axis=2), affine), exp.run_dir / "v.nii")  # 16x16x32
    rows = predict(exp.run_dir / "export" / "s1.onnx", [exp.run_dir / "v.nii"], exp.run_dir / "pred",
                   quiet=True).read_text().splitlines()
    path, objects, found = next(csv.reader(rows[1:]))
    assert rows[0] == "path,objects,detections" and int(objects) >= 0 and isinstance(json.loads(found), list)
    from kdstyles.tasks import TASKS

    probs = np.zeros((8, 8, 8, 8), np.float32)  # one peak at voxel (z 2, y 3, x 5), class 1, 2 voxels a side
    probs[1, 2, 3, 5] = 0.9
    probs[5:, 2, 3, 5] = np.log(2.0)
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [100, 0, -10]
    row = TASKS["detection"](2).prediction_row(exp.run_dir / "v.nii", probs, ["cyst", "tumour"], None, 0,
                                               volume=((16, 8, 8), affine))  # the model saw 16 slices as 8
    # edges x 4.5..6.5, y 2.5..4.5, z 1.5..3.5 -> z x2 -> array indices (z 2.5..6.5, y 2..4, x 4..6) -> world
    assert row[1] == "1" and json.loads(row[2]) == [[105.0, 2.0, 2.0, 113.0, 4.0, 8.0, 0.9, "tumour"]]


def test_volume_box_overlays_cut_through_the_largest_box_and_draw_the_boxes_crossing_each_slice(monkeypatch):
    """Each row cuts the volume along one axis through the centre of the largest ground-truth
    box; a panel draws the boxes that cross that slice (in the slice's two coordinates) and the
    detections scoring 0.3 or more, captioned with the network's AP50 over the whole volume."""
    import torch

    from kdstyles.tasks import overlays

    drawn, styles = {}, []

    def record(folder, count, mean, std, rows):
        for i in range(count):
            for image, panels in rows(i):
                for title, draw in panels:
                    patches = []
                    ax = SimpleNamespace(add_patch=patches.append, text=lambda *a, **k: None)
                    caption = draw(ax)
                    styles.extend(r.get_linestyle() for r in patches)
                    drawn[(i, title.split(" (")[0], tuple(image.shape))] = (
                        title, caption, [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in patches])
        return []

    monkeypatch.setattr(overlays, "_write_figures", record)
    vols = [torch.zeros(1, 10, 12, 14)]  # (C, z, y, x)
    big, small = [2, 3, 4, 8, 9, 8, 1], [10, 1, 1, 12, 3, 2, 0]  # x1 y1 z1 x2 y2 z2 class; small is at z 1
    labels = torch.tensor([[big, small, [0] * 6 + [-1]]], dtype=torch.float32)
    dets = {"s1": torch.tensor([[[*big[:6], 0.9, 1], [0, 8, 6, 2, 10, 8, 0.2, 0], [0] * 8]], dtype=torch.float32)}
    overlays.write_volume_box_overlays(Path("unused"), vols, labels, dets, [0.0], [1.0])
    # the big box's centre voxel: x (2+8)/2 = 5, y 6, z 6
    title, caption, rects = drawn[(0, "ground truth", (1, 12, 14))]  # axis 0: the z = 6 slice, (y, x)
    assert title == "ground truth (axis 0 6)" and caption is None and rects == [(1.5, 2.5, 6, 6)]
    assert drawn[(0, "s1", (1, 12, 14))][1:] == ("AP50 0.500", [(1.5, 2.5, 6, 6)])  # class 0 missed; 0.2 not drawn
    assert drawn[(0, "ground truth", (1, 10, 14))][2] == [(1.5, 3.5, 6, 4)]  # axis 1, y = 6: (z, x)
    assert drawn[(0, "ground truth", (1, 10, 12))][2] == [(2.5, 3.5, 6, 4)]  # axis 2, x = 5: (z, y)
    vols, labels = [torch.zeros(1, 10, 12, 20)], torch.tensor([[[0] * 6 + [-1]]], dtype=torch.float32)
    drawn.clear()
    overlays.write_volume_box_overlays(Path("unused"), vols, labels, dets, [0.0], [1.0])
    assert drawn[(0, "ground truth", (1, 12, 20))][0] == "ground truth (axis 0 5)"  # no object: the middle
    assert drawn[(0, "s1", (1, 12, 20))][1:] == ("(no object)", [(1.5, 2.5, 6, 6)])  # z = 5 crosses the box
    assert drawn[(0, "s1", (1, 10, 12))][2] == []  # x = 10 does not: the box holds voxels 2-7
    assert styles == ["solid"] * len(styles)
    drawn.clear(), styles.clear()
    dets["s1"][0, 0, 6] = 0.1  # nothing scores 0.3: the best box crossing the slice, dashed
    overlays.write_volume_box_overlays(Path("unused"), vols, labels, dets, [0.0], [1.0])
    assert drawn[(0, "s1", (1, 12, 20))][2] == [(1.5, 2.5, 6, 6)] and styles == ["dashed"] * 2  # axes 0 and 1


@pytest.mark.parametrize("seed", range(4))
def test_3d_detection_patches_carry_their_boxes(seed):
    """A patch's boxes are the voxels their objects keep in it: each box painted in its own
    channel, the painted extent in the patch is the patch's box, or the box is dropped when
    less than MIN_KEPT of it is left; positive patches always hold a box; small volumes pad."""
    from kdstyles.data import MIN_KEPT, crop_patch

    boxes = np.array([[3, 5, 1, 10, 9, 4, 0], [12, 1, 6, 20, 16, 14, 1], [21, 18, 15, 24, 22, 18, 0]], np.float32)
    vol = np.zeros((18, 22, 26, 3), np.uint8)  # z, y, x: a volume of 26 x 22 x 18 voxels (x, y, z)
    for c, (x1, y1, z1, x2, y2, z2, _) in enumerate(boxes.astype(int)):
        vol[z1:z2, y1:y2, x1:x2, c] = 255
    rng = np.random.default_rng(seed)
    for positive in (1.0, 0.0):
        for _ in range(10):
            patch, mask, kept = crop_patch(vol, None, 12, rng, positive, boxes)
            assert patch.shape == (12, 12, 12, 3) and mask is None and kept.shape[1] == 7
            assert len(kept) or positive == 0.0  # centred on a box: that box is (mostly) inside
            for c in range(3):
                zs, ys, xs = np.nonzero(patch[..., c])
                mine = [b for b in kept if b[6] == boxes[c, 6] and (len(xs) and b[0] == xs.min() and b[1] == ys.min())]
                if len(xs) == 0:
                    assert not mine
                    continue
                share = len(xs) / np.prod(boxes[c, 3:6] - boxes[c, :3])
                if share >= MIN_KEPT:
                    assert [list(b[:6]) for b in mine] == [[xs.min(), ys.min(), zs.min(), xs.max() + 1, ys.max() + 1,
                                                            zs.max() + 1]]
                elif share < MIN_KEPT - 1e-6:
                    assert not mine
    small = vol[:10]  # 10 slices < 12: padded half before, half after, boxes moved with the voxels
    patch, _, kept = crop_patch(small, None, 12, np.random.default_rng(seed), 1.0, boxes[:1])
    zs, ys, xs = np.nonzero(patch[..., 0])
    assert kept[:, :6].tolist() == [[xs.min(), ys.min(), zs.min(), xs.max() + 1, ys.max() + 1, zs.max() + 1]]


def test_3d_detection_on_patches_slides_windows_through_evaluate_export_and_predict(tiny_overrides):
    """Trained on 16^3 patches of 32^3 volumes: validation and evaluate cover each whole volume
    with windows and pool the boxes of all volumes (mAP, outputs.npz for compare); the sidecar
    says so and predict slides the exported model's windows over a volume file."""
    from kdstyles.common.boxes import unpad
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import predict
    from kdstyles.store.runfolder import RunFolder

    det = ["task=detection", *UNETS[1:], *SYNTH, "data.image_size=32", "data.patch_size=16", "train.epochs=1"]
    exp = Experiment(None, overrides=tiny_overrides(*det), quiet=True)
    assert exp.data.image_size == 16 and exp.data.splits["train"][(0, 1)][0].shape == (1, 16, 16, 16)
    assert exp.data.splits["test"][0][0].shape == (1, 32, 32, 32) and exp.data.splits["test"].window.size == 16
    exp.fit()
    result = exp.evaluate()
    assert result["samples"] == 3 and result["outputs"] == "outputs.npz"  # pooled: every volume's boxes at once
    kept = RunFolder(exp.run_dir).read_outputs()
    labels = kept["labels"]
    assert labels.shape[0] == 3 and set(kept) == {"labels", "out.teacher", "out.s1", "out.s2", "out.ensemble"}
    truth = [unpad(exp.data.splits["test"][i][1].numpy()) for i in range(3)]
    for got, want in zip(labels, truth):
        np.testing.assert_allclose(unpad(got), want)  # whole-volume boxes, on the volume's own grid
    from kdstyles.store import checkpoints

    best = RunFolder(exp.run_dir).best("s1")  # one epoch scores nothing 0.05 yet: raise the heatmap's bias
    state = checkpoints.load(best)
    heat = [k for k in state["state_dict"] if k.startswith("heat.") and k.endswith(".bias")][-1]
    state["state_dict"][heat] += 4.0
    checkpoints.save(state, best)
    side = export_run(exp.run_dir, "s1")
    assert side["volumes"]["windows"] is True and side["input"]["depth"] == 16
    assert "sliding windows of the input's size over the whole volume" in \
        (exp.run_dir / "export" / "s1.md").read_text()
    vol = exp.data.splits["test"].images[0][..., 0]
    nib.save(nib.Nifti1Image(vol, np.eye(4)), exp.run_dir / "v.nii.gz")  # 32^3, 1 mm voxels at the origin
    found = {}
    for model in (exp.run_dir / "export" / "s1.onnx", exp.run_dir):
        rows = predict(model, [exp.run_dir / "v.nii.gz"], exp.run_dir / "pred", quiet=True).read_text().splitlines()
        found[model.name] = json.loads(next(csv.reader(rows[1:]))[2])
    onnx, run = found["s1.onnx"], found[exp.run_dir.name]
    assert onnx and all(0 <= v <= 32 for d in onnx for v in d[:6])  # boxes in the whole volume (1 mm voxels),
    assert min(d[0] for d in onnx) < 16 < max(d[3] for d in onnx)  # beyond one window
    assert_same_detections(onnx, run)  # ONNX or the run: the same windows, the same boxes


def test_random_patches_rule_out_the_offline_teacher_cache(tmp_path):
    offline = ["networks.teacher.mode=offline", f"networks.teacher.checkpoint={tmp_path}", "networks.teacher.cache=true",
               "data.augment.hflip=false", "data.augment.vflip=false"]
    assert load_config(None, [*UNETS, *SYNTH, *offline]).networks.teacher.cache  # whole volumes, no augmentation
    with pytest.raises(KDError, match="networks.teacher.cache: .*no random patches"):
        load_config(None, [*UNETS, *SYNTH, *offline, "data.patch_size=8"])
    with pytest.raises(KDError, match="networks.teacher.cache: .*no random patches"):
        load_config(None, [*UNETS, "data.source=decathlon", f"data.root={tmp_path}", *offline])


def test_a_network_that_cannot_take_the_input_size_is_named_in_one_line():
    from kdstyles import build_cohort

    class OnlyEven(torch.nn.Module):  # fails like a U-Net on a side that does not halve
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 3, 1)

        def forward(self, x):
            if x.shape[-1] % 2:
                raise RuntimeError("Sizes of tensors must match except in dimension 1")
            return self.conv(x)

    cfg = load_config(None, [*UNETS, *SYNTH, "networks.students.s1.arch=custom", "routing.preset=kd"])
    assert build_cohort(cfg, 3, 1, 16, {"s1": OnlyEven()}).names == ["teacher", "s1", "s2"]
    with pytest.raises(KDError, match=r"^networks.s1: a 17x17x17 input does not pass through it \(Sizes"):
        build_cohort(load_config(None, [*UNETS, *SYNTH, "networks.students.s1.arch=custom", "routing.preset=kd",
                                        "networks.teacher.arch=basicunet", "networks.students.s2.arch=basicunet"]),
                     3, 1, 17, {"s1": OnlyEven()})


def test_prepared_volumes_are_cached_until_their_files_change(tmp_path, monkeypatch):
    from kdstyles.data import build_data, volumes

    monkeypatch.setenv("KDSTYLES_CACHE", str(tmp_path / "cache"))
    root = decathlon(tmp_path / "dec", n=5)
    cfg = load_config(None, dec_args(root)).data
    first = build_data(cfg, 0, task="segmentation")
    assert len(list((tmp_path / "cache" / "volumes").glob("*.npz"))) == 5
    reads = []
    real_read = volumes.read
    monkeypatch.setattr(volumes, "read", lambda path, what="volume": reads.append(path) or real_read(path, what))
    second = build_data(cfg, 0, task="segmentation")
    assert reads == []  # every volume from the cache
    for split in first.splits:
        for a, b in zip(first.splits[split].images, second.splits[split].images):
            assert np.array_equal(a, b)
        assert first.splits[split].spacing == second.splits[split].spacing
    key = volumes._cache_key(root / "imagesTr" / "case_002.nii.gz", root / "labelsTr" / "case_002.nii.gz", cfg)
    (volumes.cache_folder() / f"{key}.npz").write_bytes(b"damaged")  # a damaged cache file is prepared again
    label = root / "labelsTr" / "case_001.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), label)  # and a changed file
    build_data(cfg, 0, task="segmentation")
    assert sorted(p.name for p in reads) == ["case_001.nii.gz"] * 2 + ["case_002.nii.gz"] * 2  # image and label
    spacing = load_config(None, dec_args(root, "data.spacing=[2,2,2]")).data  # other settings: other entries
    build_data(spacing, 0, task="segmentation")
    assert len(list((tmp_path / "cache" / "volumes").glob("*.npz"))) == 11
    off = load_config(None, dec_args(root, "data.spacing=[3,3,3]", "data.volume_cache=false")).data
    build_data(off, 0, task="segmentation")
    assert len(list((tmp_path / "cache" / "volumes").glob("*.npz"))) == 11
    with pytest.raises(KDError, match="has value 2, outside 0..1"):  # the label range is checked on a hit too
        build_data(load_config(None, dec_args(root, "data.classes=[bg,fg]")).data, 0, task="segmentation")


@pytest.mark.parametrize("size", [16, 32, "patches"])
def test_3d_boxes_from_a_csv_in_world_mm_land_on_the_training_grid(tmp_path, size):
    """Boxes given in world millimetres (what predict writes) follow the volume through
    reorientation (LAS files turned to RAS) and resizing to data.image_size; with
    data.patch_size volumes keep their own grid, and so do their boxes."""
    from kdstyles.common.boxes import grid_to_world, unpad
    from kdstyles.data import build_data
    from kdstyles.data.generators.synthetic_vol_det import generate

    vols, boxes = generate(0, "train", 10, 16)
    rows, expected = ["path,x1,y1,z1,x2,y2,z2,label"], {}
    for i, (v, b) in enumerate(zip(vols, boxes)):
        affine = np.diag([1.5, 1.0, 2.0, 1.0])
        affine[:3, 3] = [10, -5, 3]
        if i % 2:
            affine[0, 0] = -1.5  # stored LAS: the first array axis (z in box terms) runs the other way
        nib.save(nib.Nifti1Image(v[..., 0], affine), tmp_path / f"v{i}.nii.gz")
        for w, c in zip(grid_to_world(b, affine), b[:, 6]):
            rows.append(f"v{i}.nii.gz,{','.join(f'{x:.4f}' for x in w)},{('cyst', 'tumour')[int(c)]}")
        if not len(b):
            rows.append(f"v{i}.nii.gz,,,,,,,")
        e = b.copy()
        if i % 2:
            e[:, [2, 5]] = 16 - b[:, [5, 2]]
        e[:, :6] *= (size if size != "patches" else 16) / 16
        expected[str(tmp_path / f"v{i}.nii.gz")] = e
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    grid = ["data.patch_size=8"] if size == "patches" else [f"data.image_size={size}"]
    args = ["task=detection", *UNETS[1:], "data.source=csv", f"data.path={tmp_path / 'boxes.csv'}",
            "data.spatial_dims=3", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.augment.hflip=false",
            "data.augment.vflip=false"]
    cfg = load_config(None, [*args, *grid])
    bundle = build_data(cfg.data, 0, task="detection")
    if size == "patches":  # whole volumes of their own shape for windows, 8^3 patches for training
        assert bundle.image_size == 8 and bundle.splits["test"][0][0].shape == (1, 16, 16, 16)
        assert bundle.splits["test"].spacing[0] == pytest.approx((1.5, 1.0, 2.0))
        with pytest.raises(KDError, match="^data.image_size: with data.patch_size volumes keep their own size"):
            build_data(load_config(None, [*args, *grid, "data.image_size=16"]).data, 0, task="detection")
        for ds in bundle.splits.values():  # look at the stored boxes, as for the other sizes
            ds.crop = ds.window = None
    assert bundle.class_names == ["cyst", "tumour"]
    seen = 0
    for ds in bundle.splits.values():
        for i, path in enumerate(ds.paths):
            got = unpad(ds[i][1].numpy())
            np.testing.assert_allclose(got, expected[str(path)], atol=1e-3)
            seen += 1
    assert seen == 10
    (tmp_path / "boxes.csv").write_text("path,x1,y1,z1,x2,y2,z2,label\nv0.nii.gz,800,0,0,900,5,5,cyst\n")
    with pytest.raises(KDError, match=r"v0.nii.gz' \(world boxes on its prepared grid\): box .* outside the 16x16x16"):
        build_data(cfg.data, 0, task="detection")
