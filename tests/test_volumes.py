"""3D volumes (classification, the first 3D task): the embedded CT-like volumes, 3D networks,
adapters and taps, gradient isolation in 3D, MedMNIST 3D files, a run that trains,
evaluates and exports, and the config rules that keep the 2D-only parts 2D."""

import os

import numpy as np
import pytest
import torch

from conftest import assert_gradient_isolation
from kdstyles import Experiment, KDError, build_cohort, load_config
from kdstyles.models.adapters import Adapter

VOL = ["data.spatial_dims=3", "data.image_size=16", "networks.teacher.widen=0.25",
       "networks.students.s1.widen=0.125", "networks.students.s2.widen=0.125"]
DATA = ["data.train_samples=24", "data.val_samples=8", "data.test_samples=8", "data.batch_size=8"]


def test_embedded_volumes_are_deterministic_and_hold_every_class():
    from kdstyles.data.generators.synthetic_vol import CLASS_NAMES, generate

    v, y = generate(3, "train", 30, 20)
    assert v.shape == (30, 20, 20, 20, 1) and v.dtype == np.uint8 and set(y) == set(range(len(CLASS_NAMES)))
    again, y2 = generate(3, "train", 5, 20)  # a pure function of (seed, split, index)
    assert np.array_equal(again, v[:5]) and np.array_equal(y2, y[:5])
    other, _ = generate(3, "val", 5, 20)
    assert not np.array_equal(other, v[:5])
    with pytest.raises(KDError, match="outside the synthetic volumes' range 16..96"):
        generate(0, "train", 1, 8)


def test_3d_adapters_project_and_resize():
    a = Adapter(torch.Size([2, 8, 4, 4, 4]), torch.Size([2, 16, 8, 8, 8]))
    dst, src = a(torch.randn(2, 8, 4, 4, 4), torch.randn(2, 16, 8, 8, 8))
    assert isinstance(a.project[0], torch.nn.Conv3d) and dst.shape == src.shape == (2, 16, 4, 4, 4)
    up = Adapter(torch.Size([2, 16, 8, 8, 8]), torch.Size([2, 16, 4, 4, 4]), project=False)
    _, src = up(torch.randn(2, 16, 8, 8, 8), torch.randn(2, 16, 4, 4, 4))
    assert src.shape == (2, 16, 8, 8, 8)  # trilinear


@pytest.mark.parametrize("preset", ["diverse", "kdml", "diverse-full"])
def test_gradient_isolation_in_3d(preset):
    torch.manual_seed(0)
    cohort = build_cohort(load_config(None, [*VOL, f"routing.preset={preset}"]), num_classes=3, channels=1,
                          image_size=16)
    conv = cohort.networks["s1"].conv1
    assert isinstance(conv, torch.nn.Conv3d)
    for (src, dst) in cohort.edge_taps:
        for path, net in ((src, "teacher"), (dst, "s1")):
            if path:  # the default tap is a map of at least 4 voxels a side
                assert path.startswith("layer")
    cohort.train()
    losses = cohort.losses(cohort(torch.randn(4, 1, 16, 16, 16)), torch.tensor([0, 1, 2, 1]))
    assert_gradient_isolation(cohort, losses)


def test_volumes_train_evaluate_and_export(tiny_overrides):
    from kdstyles.deploy.export import export_run
    from kdstyles.deploy.predict import load_predictor

    exp = Experiment(None, overrides=tiny_overrides(*VOL, *DATA, "train.epochs=1"), quiet=True)
    exp.fit()
    result = exp.evaluate()
    assert result["class_names"] == ["normal", "cyst", "tumour"]
    assert set(result["networks"]) == {"teacher", "s1", "s2", "ensemble"}
    assert exp.data.splits["train"][0][0].shape == (1, 16, 16, 16)
    side = export_run(exp.run_dir, "s1")
    assert side["input"]["depth"] == 16 and side["input"]["layout"] == "NCDHW"
    assert side["verification"]["max_abs_diff"] < 1e-4
    import nibabel as nib

    from kdstyles.data.generators.synthetic_vol import render_volume
    from kdstyles.deploy.predict import predict

    assert load_predictor(exp.run_dir / "export" / "s1.onnx").preparation["orientation"] == "RAS"
    for i in range(2):  # volumes as NIfTI files at another size: resized to the model's 16^3
        nib.save(nib.Nifti1Image(render_volume(0, "test", i, 24)[0][..., 0], np.eye(4)), exp.run_dir / f"v{i}.nii.gz")
    out = predict(exp.run_dir / "export" / "s1.onnx", [exp.run_dir / "v0.nii.gz", exp.run_dir / "v1.nii.gz"],
                  exp.run_dir / "pred", quiet=True)
    rows = out.read_text().splitlines()
    assert rows[0] == "path,prediction,probability,p_normal,p_cyst,p_tumour" and len(rows) == 3
    assert abs(sum(float(v) for v in rows[1].split(",")[3:]) - 1) < 1e-4


def test_medmnist_3d_files(tmp_path):
    from kdstyles.data import build_data

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(tmp_path / "nodulemnist3d.npz", **arrays)
    cfg = load_config(None, ["data.source=medmnist", "data.flag=nodulemnist3d", f"data.root={tmp_path}",
                             "data.image_size=16"])
    assert cfg.data.dims == 3  # from the flag
    bundle = build_data(cfg.data, 0)
    assert bundle.class_names == ["benign", "malignant"] and bundle.channels == 1
    assert bundle.splits["val"][0][0].shape == (1, 16, 16, 16)  # resized from 28^3
    arrays["train_images"] = arrays["train_images"][:, 0]  # 2D images in a 3D file
    np.savez(tmp_path / "nodulemnist3d.npz", **arrays)
    with pytest.raises(KDError, match=r"train_images has shape \(12, 28, 28\).*expected uint8 \(N, D, H, W\)"):
        build_data(cfg.data, 0)


@pytest.mark.parametrize("extra, message", [
    (["data.source=medmnist", "data.flag=pathmnist"], "spatial_dims: 3 needs volumes; source 'medmnist' flag "
                                                      "pathmnist gives 2D images"),
    (["data.source=coco", "data.path=x.json"], "spatial_dims: 3 needs volumes; source 'coco'"),
    (["networks.students.s1.arch=mobilenet_v2"], "mobilenet_v2 is 2D only"),
    (["networks.teacher.pretrained=imagenet"], "ImageNet weights are 2D"),
    (["data.source=medmnist", "data.flag=nodulemnist3d", "data.size=128"], "data.size: 128 is not a size of "
                                                                           "nodulemnist3d; allowed: 28, 64"),
])
def test_what_stays_2d_says_so_in_one_line(extra, message, tmp_path):
    with pytest.raises(KDError) as err:
        exp = Experiment(None, overrides=[*VOL, *DATA, *extra, f"output.dir={tmp_path}"], quiet=True)
        _ = exp.cohort
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(KDError, match="spatial_dims: 2, but data.flag nodulemnist3d holds volumes"):
        load_config(None, ["data.source=medmnist", "data.flag=nodulemnist3d", "data.spatial_dims=2"])


def test_volume_files_in_class_folders_and_csv(tmp_path, cli):
    """NIfTI volumes in class folders (or listed in a CSV) for 3D classification: read,
    oriented and windowed like Decathlon volumes, resized to data.image_size^3."""
    nib = pytest.importorskip("nibabel")
    from kdstyles.data import build_data
    from kdstyles.data.generators.synthetic_vol import render_volume

    rows = ["path,label"]
    for i in range(12):
        vol, label = render_volume(0, "train", i, 20 + (i % 3) * 2)
        name = ("normal", "cyst", "tumour")[label]
        (tmp_path / "vols" / name).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(vol[..., 0], np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "vols" / name / f"v{i}.nii.gz")
        rows.append(f"vols/{name}/v{i}.nii.gz,{name}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "vols" / "cyst" / "notes.txt").write_text("not a volume")
    nrrd = pytest.importorskip("nrrd")  # one volume as NRRD (an LPS volume, 2 mm slices)
    first = rows[1].split(",")[1]
    os.remove(tmp_path / "vols" / first / "v0.nii.gz")
    nrrd.write(str(tmp_path / "vols" / first / "v0.nrrd"), render_volume(0, "train", 0, 20)[0][..., 0],
               {"space": "left-posterior-superior", "space directions": np.diag([1.0, 1.0, 2.0]).tolist(),
                "space origin": [0.0, 0.0, 0.0]})
    rows[1] = f"vols/{first}/v0.nrrd,{first}"
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    for source in (["data.source=folder", f"data.root={tmp_path / 'vols'}"],
                   ["data.source=csv", f"data.path={tmp_path / 'list.csv'}"]):
        cfg = load_config(None, [*source, "data.spatial_dims=3", "data.image_size=16", "data.val_fraction=0.2",
                                 "data.test_fraction=0.2"])
        bundle = build_data(cfg.data, 0)
        assert bundle.class_names == ["cyst", "normal", "tumour"] and bundle.channels == 1
        assert sum(len(s) for s in bundle.splits.values()) == 12
        assert bundle.splits["train"][0][0].shape == (1, 16, 16, 16)
    for i in range(6):  # two-channel volumes: averaged to data.channels, or the ones data.modalities keeps
        (tmp_path / "two" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        vol = render_volume(0, "train", i, 16)[0][..., 0].astype(np.float32)
        nib.save(nib.Nifti1Image(np.stack([vol, vol / 2], -1), np.eye(4)), tmp_path / "two" / f"c{i % 2}" / f"{i}.nii")
    for keep, channels in ((None, 1), ([1], 1), ([1, 0], 2)):
        sets = [] if keep is None else [f"data.modalities={keep}"]
        cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path / 'two'}", "data.spatial_dims=3",
                                 "data.image_size=16", "data.window=[0,255]", "data.val_fraction=0.2",
                                 "data.test_fraction=0.2", *sets])
        bundle = build_data(cfg.data, 0)
        split = bundle.splits["train"]
        vol = np.asarray(nib.load(split.paths[0]).dataobj)  # RAS already: the identity affine
        got = split.images[0].astype(np.float32)
        assert bundle.channels == channels and got.shape == (16, 16, 16, channels)
        expect = {None: vol.mean(-1, keepdims=True), (1,): vol[..., 1:], (1, 0): vol[..., ::-1]}[
            None if keep is None else tuple(keep)]
        assert np.abs(got - expect).max() <= 1
    (tmp_path / "vols" / "normal" / "v99.nii.gz").write_bytes(b"not gzip")
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path / 'vols'}", "data.spatial_dims=3"])
    with pytest.raises(KDError, match="v99.nii.gz' cannot be read as a volume"):
        build_data(cfg.data, 0)
    with pytest.raises(KDError, match="volume files in class folders are for 3D classification"):
        build_data(cfg.data, 0, task="segmentation")
    # data inspect lists every bad volume (reading volumes stops before the splits are made)
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "vols" / "cyst" / "flat.nii.gz")
    code, out, err = cli("data", "inspect", tmp_path / "vols", "--set", "data.spatial_dims=3", "--set",
                         "data.image_size=16")
    lines = out.replace("\n ", " ").strip().splitlines()
    assert code == 1 and len(lines) == 2, out + err
    assert "flat.nii.gz' has 2 spatial dimensions" in lines[0] and "v99.nii.gz' cannot be read" in lines[1]
    assert "run 'kdstyles data inspect'" not in out + err
