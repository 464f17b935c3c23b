import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_gradient_isolation
from kdstyles import Experiment, KDError, build_cohort, load_config
from kdstyles.data import build_data
from kdstyles.styles import STYLES
from kdstyles.styles.predictions import PredictionsOptions
from kdstyles.metrics import per_image_scores, segmentation_metrics

SEG = ["task=segmentation", "networks.teacher.arch=unet", "networks.teacher.widen=1",
       "networks.students.s1.arch=unet", "networks.students.s1.widen=0.5",
       "networks.students.s2.arch=unet", "networks.students.s2.widen=0.5", "data.image_size=32"]
DATA = ["data.train_samples=32", "data.val_samples=8", "data.test_samples=8", "data.batch_size=8"]


def test_per_pixel_kl_and_complete_binary_distribution():
    torch.manual_seed(0)
    src, dst = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)  # binary masks as two classes
    got = STYLES["predictions"].loss(src, dst, PredictionsOptions(temperature=2.0, t2_scaling=False))
    ps, pd = torch.softmax(src / 2, 1), torch.softmax(dst / 2, 1)
    torch.testing.assert_close(ps.sum(1), torch.ones(2, 3, 3))  # complete at every pixel
    by_hand = sum(float(ps[b, c, i, j] * torch.log(ps[b, c, i, j] / pd[b, c, i, j]))
                  for b in range(2) for c in range(2) for i in range(3) for j in range(3)) / (2 * 9)
    assert got.item() == pytest.approx(by_hand, rel=1e-5)


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


def make_seg_folder(root, n=12, size=(20, 24), fg=255):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"case{i}.jpg")
        mask = np.zeros(size, np.uint8)
        if i % 4:
            mask[3:9, 4:12] = fg
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")


def test_segmentation_folder_loader(tmp_path):
    make_seg_folder(tmp_path / "kvasir")
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={tmp_path / 'kvasir'}", "data.image_size=16"])
    bundle = build_data(cfg.data, seed=0, task="segmentation")
    x, mask, _ = bundle.splits["train"][(0, 0)]
    assert x.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0, 1}
    total = sum(len(d) for d in bundle.splits.values())
    assert total == 12
    # a case with a polyp keeps it after the nearest-neighbour resize; 0/255 became 0/1
    fg = [bundle.splits[s].masks.reshape(len(bundle.splits[s]), -1).max(1) for s in bundle.splits]
    assert sum(int(f.sum()) for f in fg) == 9


@pytest.mark.parametrize("problem, message", [
    ("missing", "has no mask in"),
    ("size", "is 10x10 but its image is 24x20"),
    ("value", "has value 7, outside 0..2"),
])
def test_segmentation_folder_errors(tmp_path, problem, message):
    root = tmp_path / "data"
    make_seg_folder(root, fg=2 if problem == "value" else 255)
    extra = []
    if problem == "missing":
        (root / "masks" / "case3.png").unlink()
        named = root / "images" / "case3.jpg"
    elif problem == "size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "case5.png")
        named = root / "masks" / "case5.png"
    else:
        Image.fromarray(np.full((20, 24), 7, np.uint8)).save(root / "masks" / "case2.png")
        named = root / "masks" / "case2.png"
        extra = ["data.num_classes=3"]
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={root}", "data.image_size=16", *extra])
    with pytest.raises(KDError) as err:
        build_data(cfg.data, seed=0, task="segmentation")
    assert message in str(err.value) and str(named) in str(err.value) and "\n" not in str(err.value)


def test_joint_augmentation_moves_mask_with_image():
    cfg = load_config(None, [*SEG, *DATA, "data.augment.rotate90=true", "data.augment.rotate=30",
                             "data.augment.zoom=0.2", "data.normalize=none"])
    bundle = build_data(cfg.data, seed=0, task="segmentation")
    ds = bundle.splits["train"]
    i = next(k for k in range(len(ds)) if ds.masks[k].any())
    plain_mask = torch.from_numpy(ds.masks[i]).long()
    for epoch in range(4):
        x, mask, _ = ds[(epoch, i)]
        assert set(mask.unique().tolist()) <= {0, 1}  # nearest-neighbour: still labels
        if not torch.equal(mask, plain_mask):
            break
    assert not torch.equal(mask, plain_mask)


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


def test_segmentation_export_and_predict_masks(tiny_overrides, tmp_path):
    from kdstyles.export import export_run
    from kdstyles.predict import predict
    from kdstyles.data.synthetic_seg import render_frame

    exp = Experiment(None, overrides=tiny_overrides(*SEG, *DATA, "train.epochs=1", "eval.overlays=0"), quiet=True)
    exp.fit()
    side = export_run(exp.run_dir, "ensemble", "onnx")
    assert side["task"] == "segmentation" and side["output"]["shape"] == ["batch", 2, "height", "width"]
    assert side["verification"]["max_abs_diff"] < 1e-4
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(render_frame(4, "test", i, 40)[0]).save(folder / f"f{i}.png")
    a = predict(exp.run_dir / "export" / "ensemble.onnx", [folder], tmp_path / "onnx", quiet=True)
    b = predict(exp.run_dir, [folder], tmp_path / "run", network="ensemble", quiet=True)
    rows_a, rows_b = a.read_text().splitlines(), b.read_text().splitlines()
    assert rows_a[0] == "path,mask,foreground_fraction" and len(rows_a) == 4
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        mask_a, mask_b = ra.split(",")[1], rb.split(",")[1]
        with Image.open(mask_a) as ma, Image.open(mask_b) as mb:
            assert ma.size == (40, 40)  # back at the input image's size
            assert np.array_equal(np.array(ma), np.array(mb))
            assert set(np.unique(np.array(ma))) <= {0, 255}


def test_multiclass_masks_load_as_labels(tmp_path):
    root = tmp_path / "organs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[:8, :8], mask[8:, 8:] = 1, 2
        Image.fromarray(mask).save(root / "masks" / f"c{i}.png")
    (root / "test.txt").write_text("c0\nc1\n")
    (root / "val.txt").write_text("c2\n")
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={root}", "data.image_size=16",
                             "data.num_classes=3", "data.classes=[background, liver, kidney]",
                             "data.on_duplicates=warn"])
    bundle = build_data(cfg.data, seed=0, task="segmentation")
    assert bundle.class_names == ["background", "liver", "kidney"]
    assert len(bundle.splits["test"]) == 2 and len(bundle.splits["val"]) == 1  # from the split lists
    _, mask, _ = bundle.splits["test"][(0, 0)]
    assert mask[0, 0] == 1 and mask[15, 15] == 2 and mask[0, 15] == 0
