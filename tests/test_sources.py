import csv
import json
import re
import shutil
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from kdstyles import Experiment, KDError, load_config
from kdstyles.data import EpochBatchSampler, build_data
from kdstyles.data.sources import medmnist
from conftest import SEG, write_npz

FAST = ["data.batch_size=8", "networks.teacher.widen=0.25", "networks.students.s1.widen=0.125",
        "networks.students.s2.widen=0.125", "train.epochs=1"]




def test_medmnist_multiclass_rgb_and_gray(tmp_path):
    arrays = write_npz(tmp_path / "pathmnist.npz")
    cfg = load_config(None, ["data.source=medmnist", "data.flag=pathmnist", f"data.root={tmp_path}"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.num_classes == 9 and bundle.class_names[0] == "adipose"
    assert bundle.channels == 3 and bundle.image_size == 28
    assert len(bundle.splits["train"]) == 40 and len(bundle.splits["test"]) == 10
    np.testing.assert_array_equal(bundle.splits["val"].labels, arrays["val_labels"][:, 0])
    np.testing.assert_array_equal(bundle.splits["test"].images, arrays["test_images"])
    x, y, _ = bundle.splits["train"][(0, 3)]
    assert x.shape == (3, 28, 28) and y == 3

    write_npz(tmp_path / "octmnist_64.npz", size=64, channels=1, classes=4)
    cfg = load_config(None, ["data.source=medmnist", "data.flag=octmnist", "data.size=64", f"data.root={tmp_path}",
                             "data.image_size=32"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.channels == 1 and bundle.image_size == 32 and bundle.class_names[0] == "choroidal neovascularization"
    assert bundle.splits["train"].images.shape == (40, 32, 32, 1)


def test_medmnist_trains_end_to_end(tmp_path):
    write_npz(tmp_path / "bloodmnist.npz", classes=8)
    exp = Experiment(None, overrides=["data.source=medmnist", "data.flag=bloodmnist", f"data.root={tmp_path}",
                                      f"output.dir={tmp_path}", *FAST], quiet=True)
    exp.fit()
    assert exp.evaluate()["samples"] == 10


def test_multilabel_chestmnist_reads_with_task_multilabel_only(tmp_path):
    write_npz(tmp_path / "chestmnist.npz", channels=1, multilabel=True)
    args = ["data.source=medmnist", "data.flag=chestmnist", f"data.root={tmp_path}"]
    with pytest.raises(KDError, match=r"chestmnist is multi-label \(14 findings per image\); set task: multilabel"):
        build_data(load_config(None, args).data, seed=0)
    bundle = build_data(load_config(None, ["task=multilabel", *args]).data, seed=0, task="multilabel")
    assert bundle.num_classes == 14 and bundle.class_names[0] == "atelectasis"
    x, y, _ = bundle.splits["train"][3]
    raw = np.load(tmp_path / "chestmnist.npz")["train_labels"][3]
    assert x.shape == (1, 28, 28) and y.dtype == torch.float32 and y.tolist() == raw.astype(float).tolist()
    with pytest.raises(KDError, match="pathmnist has one class per image; task multilabel reads chestmnist"):
        build_data(load_config(None, ["task=multilabel", "data.source=medmnist", "data.flag=pathmnist",
                                      f"data.root={tmp_path}"]).data, seed=0, task="multilabel")
    # a multi-label file under a multi-class name is caught by its labels' shape
    write_npz(tmp_path / "dermamnist.npz", multilabel=True)
    cfg = load_config(None, ["data.source=medmnist", "data.flag=dermamnist", f"data.root={tmp_path}"])
    with pytest.raises(KDError, match=r"train_labels has shape \(40, 14\); multi-label"):
        build_data(cfg.data, seed=0)


def test_missing_npz_offline_names_file_folder_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSTYLES_OFFLINE", "1")
    with pytest.raises(KDError) as err:
        medmnist.locate("dermamnist", 64, str(tmp_path))
    msg = str(err.value)
    assert f"'dermamnist_64.npz' is not in '{tmp_path}'" in msg
    assert "https://zenodo.org/records/10519652/files/dermamnist_64.npz" in msg and "\n" not in msg


def test_missing_npz_without_network_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.delenv("KDSTYLES_OFFLINE", raising=False)
    calls = []

    def no_network(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(medmnist.urllib.request, "urlopen", no_network)
    with pytest.raises(KDError, match=r"could not be downloaded \(no network: Name or service not known\)"):
        medmnist.locate("pathmnist", 28, str(tmp_path / "m"))
    assert len(calls) == 1  # no retry loop
    assert not list((tmp_path / "m").glob("*.part"))


def test_download_checks_md5(tmp_path, monkeypatch):
    class Resp:
        headers = {"Content-Length": "4"}

        def __init__(self):
            self.chunks = [b"junk", b""]

        def read(self, _n):
            return self.chunks.pop(0)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.delenv("KDSTYLES_OFFLINE", raising=False)
    monkeypatch.setattr(medmnist.urllib.request, "urlopen", lambda url, timeout=None: Resp())
    with pytest.raises(KDError, match="has MD5 .* expected a8b06965200029087d5bd730944a56c1; the file was discarded"):
        medmnist.locate("pathmnist", 28, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_bad_npz_files(tmp_path):
    write_npz(tmp_path / "pathmnist.npz", drop="val_labels")
    cfg = load_config(None, ["data.source=medmnist", "data.flag=pathmnist", f"data.root={tmp_path}"])
    with pytest.raises(KDError, match=f"npz file '{tmp_path / 'pathmnist.npz'}' lacks key 'val_labels'"):
        build_data(cfg.data, seed=0)
    (tmp_path / "pathmnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(KDError, match="is unreadable or truncated"):
        build_data(cfg.data, seed=0)


def test_label_outside_class_list_in_npz(tmp_path):
    arrays = write_npz(tmp_path / "breastmnist.npz", classes=2)
    arrays["train_labels"][5] = 7
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    cfg = load_config(None, ["data.source=medmnist", "data.flag=breastmnist", f"data.root={tmp_path}"])
    with pytest.raises(KDError, match=r"breastmnist.npz train\[5\]: label 7 is outside the class list 0..1"):
        build_data(cfg.data, seed=0)


# ------------------------------------------------------------------ folders and CSV


def make_mixed_folder(root, per_class=12):
    """Two classes, every pixel format a user may have; images are distinct."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            base = rng.integers(0, 256, (20, 24), dtype=np.uint8)
            kind = i % 6
            if kind == 0:
                Image.fromarray(base).save(d / f"{i}.png")
            elif kind == 1:
                Image.fromarray(np.stack([base, base // 2, 255 - base], -1)).save(d / f"{i}.png")
            elif kind == 2:
                Image.fromarray(np.stack([base, base, base, base], -1)).save(d / f"{i}.png")
            elif kind == 3:
                Image.fromarray(base.astype(np.uint16) * 257).save(d / f"{i}.png")
            elif kind == 4:
                Image.fromarray(np.stack([base] * 3, -1)).save(d / f"{i}.jpg", quality=95)
            else:
                Image.fromarray(base).convert("P").save(d / f"{i}.png")


def test_mixed_modes_are_converted(tmp_path):
    from kdstyles.store.imageio import read_image

    make_mixed_folder(tmp_path)
    d = tmp_path / "benign"
    gray = read_image(d / "0.png", 3, 24)[0]
    assert gray.shape == (24, 24, 3) and (gray[..., 0] == gray[..., 2]).all()
    rgb = read_image(d / "1.png", 3, 24)[0]
    assert (rgb[..., 2].astype(int) + rgb[..., 0] > 200).mean() > 0.9  # channel order kept (B = 255 - R)
    rgba = read_image(d / "2.png", 3, 24)[0]
    assert rgba.shape == (24, 24, 3)
    sixteen = read_image(d / "3.png", 1, 24)[0]
    eight = read_image(d / "0.png", 1, 24)[0]
    assert sixteen.shape == (24, 24, 1) and sixteen.dtype == np.uint8 and sixteen.max() > 200
    with Image.open(d / "3.png") as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    assert read_image(d / "4.jpg", 1, 24)[0].shape == (24, 24, 1)
    assert read_image(d / "5.png", 3, 24)[0].shape == (24, 24, 3)
    assert np.abs(eight.astype(int) - read_image(d / "0.png", 1, 24)[0]).max() == 0


def test_folder_source_stratified_split_saved_and_reused(tmp_path):
    make_mixed_folder(tmp_path / "data", per_class=20)
    over = ["data.source=folder", f"data.root={tmp_path / 'data'}", "data.image_size=16", f"output.dir={tmp_path}",
            "output.name=run", *FAST]
    exp = Experiment(None, overrides=over, quiet=True)
    d = exp.data
    assert d.class_names == ["benign", "malignant"] and d.channels == 3
    counts = d.report.counts
    assert counts["val"] == [3, 3] and counts["test"] == [3, 3] and counts["train"] == [14, 14]
    assert d.splits["train"].images is not None  # small set: decoded into memory during the check
    exp.fit()
    rows = list(csv.DictReader((exp.run_dir / "splits.csv").open()))
    assert len(rows) == 40 and {r["split"] for r in rows} == {"train", "val", "test"}
    assert rows[0]["path"].startswith("benign/")
    # the same seed gives the same split; another seed another one
    again = build_data(load_config(None, over).data, seed=0)
    other = build_data(load_config(None, over).data, seed=1)
    assert list(map(str, again.splits["val"].paths)) == list(map(str, d.splits["val"].paths))
    assert list(map(str, other.splits["val"].paths)) != list(map(str, d.splits["val"].paths))
    # evaluate reads the saved split back, even after a file was added to the folder
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "data" / "benign" / "new.png")
    with pytest.raises(KDError, match="the files changed since this run was created"):
        Experiment.from_run(exp.run_dir, quiet=True).evaluate()


def test_folder_with_split_subfolders_and_lazy_loading(tmp_path):
    for split in ("train", "test"):
        make_mixed_folder(tmp_path / split, per_class=10)
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16", "data.cache_gb=0",
                             "data.on_duplicates=warn"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.report.counts["test"] == [10, 10]
    assert sum(bundle.report.counts["val"]) == 4  # val made from train (stratified)
    assert bundle.splits["train"].images is None and bundle.splits["train"][(0, 0)][0].shape == (3, 16, 16)
    # identical files in train and test (the same generator seed) are leakage
    assert any("duplicate images across splits" in p.message for p in bundle.report.warnings)


def test_folder_reads_webp_and_names_the_files_it_leaves_out(tmp_path):
    make_mixed_folder(tmp_path, per_class=6)
    Image.open(tmp_path / "benign" / "1.png").save(tmp_path / "benign" / "photo.webp")
    for name in ("slide.svs", "slide2.svs", "notes.txt", "Thumbs.db", ".DS_Store", "._1.png"):
        (tmp_path / "malignant" / name).write_bytes(b"not an image")  # ._1.png: macOS's shadow of a copied file
    (tmp_path / ".ipynb_checkpoints").mkdir()  # a hidden folder beside the classes is not a class
    (tmp_path / "benign" / ".thumbnails").mkdir()  # a viewer's cache: copies that are not more data
    Image.open(tmp_path / "benign" / "1.png").save(tmp_path / "benign" / ".thumbnails" / "1.png")
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.class_names == ["benign", "malignant"]
    assert sum(bundle.report.counts[s][0] for s in bundle.report.counts) == 7  # the WebP photo is read
    from kdstyles.deploy.predict import collect_inputs

    assert len(collect_inputs([tmp_path])) == 13  # predict skips the same hidden files
    left = [p.message for p in bundle.report.warnings if "left out" in p.message]
    assert left == ["files in the class folders that are not images kdstyles reads were left out: 2 .svs, 1 .txt"]


def test_an_empty_split_is_an_error_that_data_inspect_lists_too(tmp_path):
    make_mixed_folder(tmp_path, per_class=2)  # 4 images: 0.15 of each class leaves the test split empty
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16"])
    looked = build_data(cfg.data, seed=0, check=False)
    assert [p.message for p in looked.report.errors] == [
        f"data.root '{tmp_path}': the test split is empty (4 images in all); give it files, or raise "
        "data.val_fraction / data.test_fraction"]
    with pytest.raises(KDError, match="the test split is empty"):
        build_data(cfg.data, seed=0)


def test_split_folders_as_data_sets_name_them(tmp_path):
    """Kaggle's Training/Testing (and validation/, any case) are splits, never classes; a folder
    beside them that is not one, or two folders for one split, stop the run in one line."""
    make_mixed_folder(tmp_path / "Training", per_class=6)
    make_mixed_folder(tmp_path / "validation", per_class=3)
    make_mixed_folder(tmp_path / "Testing", per_class=4)
    (tmp_path / ".git").mkdir()  # hidden folders are neither splits nor classes
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16",
                             "data.on_duplicates=warn"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.class_names == ["benign", "malignant"]
    assert bundle.report.counts == {"train": [6, 6], "val": [3, 3], "test": [4, 4]}
    for extra, message in [("notes", r"holds split folders \(Testing, Training, validation\) and 'notes', which is "
                                     r"not one \(train\|training"),
                           ("VAL", "'VAL' and 'validation' are both the val split")]:
        (tmp_path / extra).mkdir()
        with pytest.raises(KDError, match=message):
            build_data(cfg.data, seed=0)
        (tmp_path / extra).rmdir()
    (tmp_path / "Training").rename(tmp_path / "benign")  # a class folder beside split folders
    with pytest.raises(KDError, match="'benign', which is not one"):
        build_data(cfg.data, seed=0)
    shutil.rmtree(tmp_path / "benign")
    with pytest.raises(KDError, match=r"holds split folders \(Testing, validation\) but none for training"):
        build_data(cfg.data, seed=0)


def test_csv_header_and_split_names_in_any_case(tmp_path):
    make_mixed_folder(tmp_path / "imgs", per_class=6)
    lines = ["Path, Label, Split"]  # a spreadsheet's header: capitalised, spaces after the commas
    for cls in ("benign", "malignant"):
        lines += [f"imgs/{cls}/{i}.{'jpg' if i == 4 else 'png'}, {cls}, {['Train', 'Validation', 'TEST'][i % 3]}"
                  for i in range(6)]
    (tmp_path / "labels.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")  # Excel's BOM, CRLF
    cfg = load_config(None, ["data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.image_size=16"])
    assert build_data(cfg.data, seed=0).report.counts == {"train": [2, 2], "val": [2, 2], "test": [2, 2]}
    (tmp_path / "labels.csv").write_text("path,label,split\nimgs/benign/0.png,benign,holdout\n")
    with pytest.raises(KDError, match="labels.csv' line 2: split 'holdout' is not one of train\\|training"):
        build_data(cfg.data, seed=0)


def test_csv_with_a_column_per_class_one_hot_as_isic_ships_it(tmp_path):
    make_mixed_folder(tmp_path / "imgs", per_class=8)
    rows = ["path,MEL,NV,age"]  # ISIC's ground truth: a 1.0 in the image's class, other columns ignored
    for cls, hot in (("benign", "0.0,1.0"), ("malignant", "1.0,0.0")):
        rows += [f"imgs/{cls}/{i}.{'jpg' if i % 6 == 4 else 'png'},{hot},{40 + i}" for i in range(8)]
    (tmp_path / "gt.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, ["data.source=csv", f"data.path={tmp_path / 'gt.csv'}", "data.image_size=16",
                             "data.classes=[MEL, NV]"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.class_names == ["MEL", "NV"]
    assert [sum(bundle.report.counts[s][k] for s in bundle.report.counts) for k in (0, 1)] == [8, 8]
    assert [p.parent.name for p in bundle.splits["train"].paths] == [
        ("malignant", "benign")[int(y)] for y in bundle.splits["train"].labels]  # MEL rows are the malignant ones
    for row, message in [("imgs/benign/0.png,1,1,50", "line 18: MEL, NV are 1; a row of one class has exactly one"),
                         ("imgs/benign/0.png,0,0,50", "line 18: no class column is 1")]:
        (tmp_path / "gt.csv").write_text("\n".join([*rows, row]) + "\n")
        with pytest.raises(KDError, match=message):
            build_data(cfg.data, seed=0)
    with pytest.raises(KDError, match=r"data.classes: CSV file .* has no label column; name its class columns in "
                                      r"data.classes \(of MEL, NV, age\), or give a label column \(columns path"):
        build_data(load_config(None, ["data.source=csv", f"data.path={tmp_path / 'gt.csv'}"]).data, seed=0)


def test_csv_source(tmp_path):
    make_mixed_folder(tmp_path / "imgs", per_class=8)
    rows = [("imgs/benign/%d.png" % i if i % 6 != 4 else "imgs/benign/%d.jpg" % i, "benign") for i in range(8)]
    rows += [("imgs/malignant/%d.png" % i if i % 6 != 4 else "imgs/malignant/%d.jpg" % i, "malignant")
             for i in range(8)]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for k, (p, lbl) in enumerate(rows):
            w.writerow([p, lbl, "test" if k % 8 == 0 else "val" if k % 8 == 1 else "train"])
    cfg = load_config(None, ["data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.image_size=16",
                             "data.channels=1"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.report.counts == {"train": [6, 6], "val": [1, 1], "test": [1, 1]}
    assert bundle.splits["val"][(0, 0)][0].shape == (1, 16, 16)
    bad = load_config(None, ["data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.classes=[benign, other]"])
    with pytest.raises(KDError, match="imgs/malignant/0.png' has label 'malignant', which is not in data.classes"):
        build_data(bad.data, seed=0)


@pytest.mark.parametrize("problem, message", [
    ("truncated", "is unreadable or truncated"),
    ("not_image", "is unreadable or truncated"),
    ("empty_class", "holds no images"),
    ("duplicate", "duplicate images across splits (leakage)"),
])
def test_bad_folder_inputs_fail_before_training(tmp_path, problem, message):
    root = tmp_path / "data"
    make_mixed_folder(root)
    if problem == "truncated":
        target = root / "benign" / "1.png"
        target.write_bytes(target.read_bytes()[:120])
    elif problem == "not_image":
        target = root / "malignant" / "3.png"
        target.write_text("this is not a png")
    elif problem == "empty_class":
        target = root / "empty"
        target.mkdir()
    else:
        (root / "benign" / "copy.png").write_bytes((root / "benign" / "0.png").read_bytes())
        target = root / "benign" / "copy.png"
    exp = Experiment(None, overrides=["data.source=folder", f"data.root={root}", "data.image_size=16",
                                      f"output.dir={tmp_path}", "output.name=run", *FAST], quiet=True)
    with pytest.raises(KDError) as err:
        exp.fit()
    msg = str(err.value)
    assert message in msg and "\n" not in msg
    if problem != "duplicate":
        assert str(target) in msg
    assert not (tmp_path / "run").exists()  # nothing was written, no training step ran


def test_imbalance_warning_printed_and_saved(tmp_path, capsys):
    root = tmp_path / "data"
    make_mixed_folder(root, per_class=6)
    rng = np.random.default_rng(1)
    for i in range(150):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / "benign" / f"extra{i}.png")
    exp = Experiment(None, overrides=["data.source=folder", f"data.root={root}", "data.image_size=16",
                                      f"output.dir={tmp_path}", "output.name=run", *FAST,
                                      "data.sampler=balanced", "loss.class_weights=balanced"])
    exp.fit()
    out = capsys.readouterr().err  # warnings go to stderr
    assert "data warning: class imbalance: 'benign' has" in out
    report = json.loads((exp.run_dir / "data_report.json").read_text())
    assert any(p["level"] == "warning" and "imbalance" in p["message"] for p in report["problems"])
    # 6 malignant images leave 1 each to val and test: those splits' metrics are noise, and the run says so
    val = report["counts"]["val"]
    assert val[1] == 1 and f"data warning: the val split is small: {sum(val)} images, 1 of class 'malignant'" in out
    assert any(p["message"].startswith("the test split is small") for p in report["problems"])
    w = exp.cohort.class_weights
    assert w[1] > 10 * w[0]  # the rare class weighs more in CE


def test_balanced_sampler_draws_classes_equally():
    from kdstyles.data.labels import LABELS

    labels = np.array([0] * 90 + [1] * 10)
    s = EpochBatchSampler(100, 10, shuffle=True, seed=0, weights=LABELS["class-index"].draw_weights(labels))
    drawn = [labels[i] for b in s for _, i in b]
    assert 35 < sum(drawn) < 65  # about half from the rare class
    s.set_epoch(0)
    assert [i for b in s for _, i in b] == [i for b in s for _, i in b]  # seeded per epoch


def test_balanced_sampler_draws_multi_label_images_by_their_rarest_label():
    """Findings at 30% down to 0.5% of the images (half with none): uniform draws see them as
    often as that; balanced draws the rarest in about 1 image of 8, every label within a
    factor 2.5 of the others, and images without findings as one more group."""
    from kdstyles.data.labels import LABELS

    rng = np.random.default_rng(0)
    prevalence = np.array([0.3, 0.15, 0.08, 0.04, 0.02, 0.01, 0.005])
    labels = (rng.random((20000, 7)) < prevalence).astype(np.float32)
    w = LABELS["multi-hot"].draw_weights(labels)
    rare = labels[:, -1] == 1
    assert np.allclose(w[rare], 1 / rare.sum())  # as in a single-label balanced draw
    s = EpochBatchSampler(len(labels), 500, shuffle=True, seed=0, weights=w)
    drawn = labels[[i for b in s for _, i in b]]
    share, none = drawn.mean(0), (~drawn.astype(bool).any(1)).mean()
    assert share.max() / share.min() < 3 < labels.mean(0).max() / labels.mean(0).min()
    assert 0.11 < share[-1] < 0.16 and 0.11 < none < 0.16  # the rarest finding and "no finding", like the others
    assert np.all(np.diff(share) <= 0.01)  # common findings still at least as often (they travel with rare ones)


def test_class_weighted_ce_matches_manual():
    from kdstyles import build_cohort

    cfg = load_config(None, ["routing.preset=student", "data.image_size=16", "networks.students.s1.widen=0.125",
                             "networks.students.s2.widen=0.125"])
    cohort = build_cohort(cfg, 4, 3, 16, class_counts=[10, 20, 30, 40])
    outs = cohort(torch.randn(5, 3, 16, 16))
    y = torch.tensor([0, 1, 2, 3, 0])
    w = torch.tensor([100 / 40, 100 / 80, 100 / 120, 100 / 160])
    expected = torch.nn.functional.cross_entropy(outs["s1"].logits, y, weight=w)
    torch.testing.assert_close(cohort.losses(outs, y)["s1"].total, expected)


def test_data_inspect_cli(tmp_path, monkeypatch, capsys):
    from kdstyles.cli import main

    root = tmp_path / "data"
    make_mixed_folder(root)
    (root / "malignant" / "3.png").write_text("broken")
    monkeypatch.setattr(sys, "argv", ["kdstyles", "data", "inspect", str(root), "--set", "data.image_size=16"])
    with pytest.raises(SystemExit) as code:
        main()
    out = capsys.readouterr().out
    assert code.value.code == 1
    assert "benign" in out and "malignant" in out and "train" in out
    assert "is unreadable or truncated" in out and "3.png" in out.replace("\n", "")


def test_source_sizes_are_listed_when_few_and_summarised_when_many():
    from kdstyles.data.checks import DataReport

    few = DataReport(["a"], sources={"50x40 RGB": 3, "50x40 L": 2})
    assert few.describe_sources() == "50x40 L (2), 50x40 RGB (3)"
    # a folder of photographs in many sizes: one line with the ranges, the modes and the commonest
    many = DataReport(["a"], sources={**{f"{600 + i}x{400 + 2 * i} RGB": 1 for i in range(20)},
                                      "640x480 RGB": 7, "640x480 L": 5})
    assert many.describe_sources() == ("32 in 21 sizes, 600-640x400-480; modes RGB (27), L (5); "
                                       "most common 640x480 (12)")
    volumes = DataReport(["a"], sources={f"{d}x64x64": 1 for d in range(20, 40)})  # arrays: no mode
    assert volumes.describe_sources() == "20 in 20 sizes, 20-39x64x64"  # none more common than another


def test_class_names_spelled_two_ways_are_a_warning(tmp_path):
    make_mixed_folder(tmp_path, per_class=8)
    (tmp_path / "malignant").rename(tmp_path / "Benign ")  # a class folder typed again, capitalised, with a space
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16"])
    warned = [p.message for p in build_data(cfg.data, seed=0).report.warnings if "differ only" in p.message]
    assert warned == ["classes 'Benign ' and 'benign' differ only in case or spaces and are trained as two classes; "
                      "if they are one, spell it one way in the labels"]


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


def test_segmentation_folders_as_data_sets_name_them(tmp_path):
    """CVC-ClinicDB's Original/ and "Ground Truth"/, ISIC's and BUSI's mask names (the image's
    name plus _segmentation, _mask) pair up as Kvasir-SEG's images/ and masks/ do."""
    make_seg_folder(tmp_path / "kvasir")
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={tmp_path / 'kvasir'}", "data.image_size=16"])
    want = build_data(cfg.data, seed=0, task="segmentation")
    cvc = tmp_path / "cvc"
    (tmp_path / "kvasir").rename(cvc)
    (cvc / "images").rename(cvc / "Original")
    (cvc / "masks").rename(cvc / "Ground Truth")
    for i, mask in enumerate(sorted((cvc / "Ground Truth").iterdir())):
        mask.rename(mask.with_name(f"{mask.stem}{['_segmentation', '_mask', ''][i % 3]}.png"))
    got = build_data(cfg.data.model_copy(update={"root": str(cvc)}), seed=0, task="segmentation")
    for split in want.splits:
        assert [p.name for p in got.splits[split].paths] == [p.name for p in want.splits[split].paths]
        np.testing.assert_array_equal(got.splits[split].masks, want.splits[split].masks)
    # the layout polyp benchmarks ship: a split folder each, images/ and masks/ inside
    split_root = tmp_path / "polyps"
    make_seg_folder(split_root / "TrainDataset", n=8)
    make_seg_folder(split_root / "TestDataset", n=4)
    (split_root / "TrainDataset").rename(split_root / "Training")
    (split_root / "TestDataset").rename(split_root / "test")
    split = build_data(cfg.data.model_copy(update={"root": str(split_root), "on_duplicates": "warn"}), seed=0,
                       task="segmentation")  # (the fixture draws the same images for both)
    assert {s: len(d) for s, d in split.splits.items()} == {"train": 6, "val": 2, "test": 4}
    assert {p.parent.parent.name for p in split.splits["test"].paths} == {"test"}
    (cvc / "Ground Truth").rename(cvc / "labels")
    with pytest.raises(KDError, match=r"has no masks folder \(masks/, mask/, ground truth/, groundtruth/, gt/, any"):
        build_data(cfg.data.model_copy(update={"root": str(cvc)}), seed=0, task="segmentation")


def test_colour_masks_count_any_colour_as_foreground_or_are_refused(tmp_path):
    """A red outline on black is foreground (as a gray level it read as 76: background);
    a colour mask of three classes is refused, since colours are not class indices."""
    from kdstyles.data.segfolder import read_mask

    red = np.zeros((4, 4, 3), np.uint8)
    red[1:3, 1:3, 0] = 200
    Image.fromarray(red).save(tmp_path / "red.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "red.png", 2, 4, (4, 4)), (red[..., 0] > 0).astype(np.uint8))
    gray = np.stack([np.arange(16, dtype=np.uint8).reshape(4, 4) % 3] * 3, -1)  # class indices stored as RGB
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "gray.png", 3, 4, (4, 4)), gray[..., 0])
    red[0, 0, 1] = 255
    Image.fromarray(red).save(tmp_path / "colours.png")
    with pytest.raises(KDError, match=r"colours.png' is a colour image \(3 colours\); with data.num_classes 3 a mask "
                                      r"holds class indices 0..2"):
        read_mask(tmp_path / "colours.png", 3, 4, (4, 4))


@pytest.mark.parametrize("problem, message", [
    ("missing", "has no mask in"),
    ("size", "is 10x10 but its image is 24x20"),
    ("turned", "is 20x24 but its image is 24x20; the sizes are transposed: an EXIF orientation tag"),
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
    elif problem == "turned":  # drawn on the photo as a viewer shows it, turned by its EXIF tag
        Image.fromarray(np.zeros((24, 20), np.uint8)).save(root / "masks" / "case5.png")
        named = root / "masks" / "case5.png"
    else:
        Image.fromarray(np.full((20, 24), 7, np.uint8)).save(root / "masks" / "case2.png")
        named = root / "masks" / "case2.png"
        extra = ["data.num_classes=3"]
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={root}", "data.image_size=16", *extra])
    with pytest.raises(KDError) as err:
        build_data(cfg.data, seed=0, task="segmentation")
    assert message in str(err.value) and str(named) in str(err.value) and "\n" not in str(err.value)


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
    (root / "validation.txt").write_text("c2\n")  # as some data sets name it
    cfg = load_config(None, [*SEG, "data.source=folder", f"data.root={root}", "data.image_size=16",
                             "data.num_classes=3", "data.classes=[background, liver, kidney]",
                             "data.on_duplicates=warn"])
    bundle = build_data(cfg.data, seed=0, task="segmentation")
    assert bundle.class_names == ["background", "liver", "kidney"]
    assert len(bundle.splits["test"]) == 2 and len(bundle.splits["val"]) == 1  # from the split lists
    _, mask, _ = bundle.splits["test"][(0, 0)]
    assert mask[0, 0] == 1 and mask[15, 15] == 2 and mask[0, 15] == 0


def write_dicom(path, pixels, photometric="MONOCHROME2", compressed=False, preamble=True, **tags):
    """A single-frame DICOM file written with pydicom (uncompressed, or a JPEG 2000 one whose
    codestream is junk: no decoder is installed to find out)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if compressed else ExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    rgb = photometric == "RGB"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.PhotometricInterpretation, ds.SamplesPerPixel = photometric, 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([b"junk" * 10]) if compressed else pixels.tobytes()
    if preamble:
        ds.file_meta = meta
        ds.save_as(path, enforce_file_format=True)
    else:  # an old file: the bare data set, implicit VR, no preamble or 'DICM'
        from pydicom.filewriter import dcmwrite

        dcmwrite(path, ds, implicit_vr=True, little_endian=True)


def test_dicom_images_read_as_a_radiologist_sees_them(tmp_path):
    from kdstyles.store.imageio import image_size, read_image

    # CT-like stored values: HU = 2 * stored - 1024, shown through the file's window (40 +- 200 HU)
    hu = np.array([[-1000, 40, 240], [1000, -160, 40]])
    write_dicom(tmp_path / "ct.dcm", ((hu + 1024) // 2).astype(np.uint16), RescaleSlope=2, RescaleIntercept=-1024,
                WindowCenter=40, WindowWidth=400)
    gray, info = read_image(tmp_path / "ct.dcm", 1, 3)
    assert info == (3, 2, "DICOM MONOCHROME2") and image_size(tmp_path / "ct.dcm") == (3, 2)
    ct = read_image(tmp_path / "ct.dcm", 1, 3)[0][..., 0]  # resized 3x2 -> 3x3: look at the top row only
    assert ct[0, 0] == 0 and abs(int(ct[0, 1]) - 128) <= 1 and ct[0, 2] == 255  # air black, window top white
    # soft tissue only (0..80 HU) through the same window keeps its gray levels: the window is a
    # fixed mapping, not stretched to each image's range; a multi-valued window takes the first
    soft = np.array([[0, 40], [40, 80]])
    write_dicom(tmp_path / "soft.dcm", ((soft + 1024) // 2).astype(np.uint16), RescaleSlope=2,
                RescaleIntercept=-1024, WindowCenter=[40, 300], WindowWidth=[400, 1500])
    expect = np.clip((soft - (40 - 0.5 - 399 / 2)) / 399, 0, 1) * 255
    np.testing.assert_allclose(read_image(tmp_path / "soft.dcm", 1, 2)[0][..., 0], expect, atol=0.51)
    # MONOCHROME1 (many radiographs): low values are bright
    write_dicom(tmp_path / "xray.dcm", np.array([[0, 255], [128, 64]], np.uint8), "MONOCHROME1", preamble=False)
    np.testing.assert_array_equal(read_image(tmp_path / "xray.dcm", 1, 2)[0][..., 0], [[255, 0], [127, 191]])
    rgb = (np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20)
    write_dicom(tmp_path / "derm.dcm", rgb, "RGB")
    np.testing.assert_array_equal(read_image(tmp_path / "derm.dcm", 3, 2)[0], rgb)
    # what a 2D image cannot be, and what cannot be decoded here: one line naming the file
    write_dicom(tmp_path / "cine.dcm", np.zeros((2, 4, 4), np.uint8), NumberOfFrames=2)
    write_dicom(tmp_path / "j2k.dcm", np.zeros((4, 4), np.uint8), compressed=True)
    (tmp_path / "notes.dcm").write_text("not DICOM")
    write_dicom(tmp_path / "palette.dcm", np.zeros((4, 4), np.uint8), "PALETTE COLOR")
    for name, message in [("cine.dcm", "holds 2 frames; kdstyles reads single-frame 2D DICOM"),
                          ("palette.dcm", "is PALETTE COLOR; kdstyles reads MONOCHROME1/2, RGB and YBR DICOM"),
                          ("j2k.dcm", "its pixels are compressed (JPEG 2000 Image Compression (Lossless Only)) and "
                                      "no decoder for them is installed; pip install pylibjpeg"),
                          ("notes.dcm", "is not a DICOM image")]:
        with pytest.raises(KDError, match=re.escape(f"DICOM file '{tmp_path / name}'") + ".*" + re.escape(message)):
            read_image(tmp_path / name, 1, 4)


def test_a_folder_of_dicom_radiographs_is_a_data_set(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        for i in range(8):
            write_dicom(tmp_path / cls / f"{i}.dcm", rng.integers(0, 4096, (20, 24)).astype(np.uint16),
                        "MONOCHROME1" if i % 2 else "MONOCHROME2", BitsStored=12)
    cfg = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.image_size=16", "data.channels=1"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.report.sources == {"24x20 DICOM MONOCHROME1": 8, "24x20 DICOM MONOCHROME2": 8}
    assert sum(map(len, bundle.splits.values())) == 16 and bundle.splits["train"][(0, 0)][0].shape == (1, 16, 16)


def test_large_embedded_splits_are_rendered_in_parallel_and_kept_on_disk(tmp_path, monkeypatch):
    """A split above PARALLEL_PIXELS is rendered by several processes and equals the split
    rendered in one; above CACHE_PIXELS it is written to the cache and read back from it (a
    damaged cache file is rendered again); boxes survive the round trip."""
    from importlib import import_module

    from kdstyles.data.sources import synthetic as source

    monkeypatch.setenv("KDSTYLES_CACHE", str(tmp_path))
    monkeypatch.setattr(source, "CACHE_PIXELS", 1)
    monkeypatch.setattr(source, "PARALLEL_PIXELS", 1)
    monkeypatch.setattr(source.os, "cpu_count", lambda: 2)
    source.generate.cache_clear()
    for module in ("synthetic_det", "synthetic"):
        alone = import_module(f"kdstyles.data.generators.{module}").generate(1, "train", 130, 16)
        got = source.generate(module, 1, "train", 130, 16)  # 2 processes (n // 64 = 2)
        for out in (got, source._read(next(tmp_path.glob(f"synthetic/{module}-*.npz")))):
            assert np.array_equal(out[0], alone[0])
            if module == "synthetic_det":
                assert len(out[1]) == 130 and all(np.array_equal(a, b) for a, b in zip(out[1], alone[1]))
            else:
                assert np.array_equal(out[1], alone[1])
    cached = next(tmp_path.glob("synthetic/synthetic-*.npz"))
    monkeypatch.setattr(source, "_in_parallel", lambda *a: pytest.fail("rendered again"))
    source.generate.cache_clear()
    images = got[0]
    assert np.array_equal(source.generate("synthetic", 1, "train", 130, 16)[0], images)  # from the cache
    cached.write_bytes(b"damaged")
    source.generate.cache_clear()
    monkeypatch.setattr(source, "PARALLEL_PIXELS", 10**12)  # rendered again, in this process
    assert np.array_equal(source.generate("synthetic", 1, "train", 130, 16)[0],
                          import_module("kdstyles.data.generators.synthetic").generate(1, "train", 130, 16)[0])
    assert source._read(cached) is not None  # and written again whole
    source.generate.cache_clear()


def test_check_generates_a_few_embedded_images_not_the_whole_set(monkeypatch, capsys, tmp_path):
    """`kdstyles check` on embedded data renders PREVIEW items of each split (seconds at 224 px);
    a bad size is still found."""
    from kdstyles.cli import main
    from kdstyles.data.sources import synthetic as source

    drawn = []
    real = source.generate.__wrapped__

    def spy(module, seed, split, n, size, dims=2):
        drawn.append(n)
        return real(module, seed, split, n, size, dims)

    monkeypatch.setattr(source, "generate", spy)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["kdstyles", "check", "--set", "data.image_size=224", "--set",
                                      "networks.teacher.widen=0.25", "--set", "networks.students.s1.widen=0.125",
                                      "--set", "networks.students.s2.widen=0.125"])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr().out
    assert done.value.code == 0 and drawn == [4, 4, 4] and "config ok" in out and "224 px images" in out
    assert "4 images of each split generated and checked; the 3,500 are generated when training starts" in out
    monkeypatch.setattr(sys, "argv", ["kdstyles", "check", "--set", "data.image_size=600"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2 and "data.image_size: 600 is outside" in capsys.readouterr().err


def test_npz_source_reads_your_arrays_with_their_class_names(tmp_path):
    """source: npz reads any file in MedMNIST's layout (grey or RGB, labels (N,) or (N, 1)),
    class names from the file, data.classes or 0..K-1; a pool of images alone serves
    data.unlabeled."""
    rng = np.random.default_rng(0)
    arrays = {f"{s}_{k}": v for s, n in (("train", 30), ("val", 8), ("test", 10)) for k, v in (
        ("images", rng.integers(0, 256, (n, 20, 20), dtype=np.uint8)), ("labels", np.arange(n) % 3))}
    np.savez(tmp_path / "mine.npz", **arrays, class_names=np.array(["cat", "dog", "owl"]))
    cfg = load_config(None, ["data.source=npz", f"data.path={tmp_path / 'mine.npz'}"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.class_names == ["cat", "dog", "owl"] and bundle.channels == 1 and bundle.image_size == 20
    np.testing.assert_array_equal(bundle.splits["test"].images[..., 0], arrays["test_images"])
    np.testing.assert_array_equal(bundle.splits["val"].labels, arrays["val_labels"])
    named = load_config(None, ["data.source=npz", f"data.path={tmp_path / 'mine.npz'}", "data.classes=[a, b, c]",
                               "data.image_size=16"])
    assert build_data(named.data, seed=0).class_names == ["a", "b", "c"]
    from kdstyles.cli import _data_spec

    assert _data_spec(str(tmp_path / "mine.npz"), []).data.source == "npz"  # data inspect: your own arrays
    write_npz(tmp_path / "pathmnist.npz")
    assert _data_spec(str(tmp_path / "pathmnist.npz"), []).data.source == "medmnist"  # a MedMNIST file by its name
    np.savez(tmp_path / "plain.npz", **arrays)
    plain = load_config(None, ["data.source=npz", f"data.path={tmp_path / 'plain.npz'}"])
    assert build_data(plain.data, seed=0).class_names == ["0", "1", "2"]

    np.savez(tmp_path / "pool.npz", train_images=rng.integers(0, 256, (12, 20, 20), dtype=np.uint8))
    exp = Experiment(None, overrides=["data.source=npz", f"data.path={tmp_path / 'mine.npz'}", "routing.preset=kd",
                                      "data.unlabeled.source=npz", f"data.unlabeled.path={tmp_path / 'pool.npz'}",
                                      f"output.dir={tmp_path}", *FAST], quiet=True)
    assert len(exp.data.unlabeled) == 12 and "pool.npz train" in exp.data.unlabeled_about
    with pytest.raises(KDError, match="data.unlabeled.path: npz file .*gone.npz' does not exist"):
        Experiment(None, overrides=["data.source=npz", f"data.path={tmp_path / 'mine.npz'}", "routing.preset=kd",
                                    "data.unlabeled.source=npz", f"data.unlabeled.path={tmp_path / 'gone.npz'}",
                                    f"output.dir={tmp_path}", *FAST], quiet=True).data
    with pytest.raises(KDError, match="needs data.unlabeled.path"):
        load_config(None, ["data.unlabeled.source=npz"])
    np.savez(tmp_path / "five.npz", **{**arrays, "train_images": rng.integers(0, 256, (30, 20, 20, 5), np.uint8)})
    with pytest.raises(KDError, match="train_images has 5 channels"):
        build_data(load_config(None, ["data.source=npz", f"data.path={tmp_path / 'five.npz'}"]).data, seed=0)
    np.savez(tmp_path / "float.npz", **{**arrays, "val_labels": np.zeros(8, np.float32)})
    with pytest.raises(KDError, match="val_labels has dtype float32; expected whole numbers"):
        build_data(load_config(None, ["data.source=npz", f"data.path={tmp_path / 'float.npz'}"]).data, seed=0)


def test_external_sets_are_checked_before_training(tmp_path, cli):
    """data.external: a set of another site is read by its own source with the training data's
    classes and input; a name of a split or used twice, a key its source does not read, a missing
    required key, a class the training data lacks, images of the training or validation split
    (leakage) and an empty set are each one line before anything trains; a set lacking a class
    is fine."""
    from kdstyles.data.checks import array_digest

    make_mixed_folder(tmp_path / "data", per_class=20)
    base = ["data.source=folder", f"data.root={tmp_path / 'data'}", "data.image_size=16", f"output.dir={tmp_path}",
            "output.name=run", *FAST]

    def external(text: str) -> list[str]:
        return [*base, f"data.external=[{text}]"]

    for text, message in [
        ("{name: test, source: folder, root: x}", r"'test' cannot name an external set: .* not train, val, test"),
        ("{name: b, source: folder, root: x}, {name: b, source: csv, path: y}", "two sets are named 'b'"),
        ("{name: b, source: folder}", "external set 'b': source 'folder' needs data.root"),
        ("{name: b, source: csv, path: y, root: z}", "data.external.0.root: source 'csv' does not read it"),
        ("{name: b, source: foldr, root: x}", r"data.external.0.source: unknown source 'foldr' \(did you mean folder\?\)"),
    ]:
        with pytest.raises(KDError, match=message):
            load_config(None, external(text))
    site = tmp_path / "site_b"
    make_mixed_folder(site, per_class=3)
    (site / "malignant").rename(site / "atypical")  # a class training never saw
    with pytest.raises(KDError, match=r"data.external 'b': data.root '.*site_b': .*'atypical', which is not in the training data's classes \(benign, malignant\)"):
        Experiment(None, overrides=external(f"{{name: b, source: folder, root: {site}}}"), quiet=True).data
    with pytest.raises(KDError, match="leakage"):  # the training folder itself: its images are training's
        Experiment(None, overrides=external(f"{{name: b, source: folder, root: {tmp_path / 'data'}}}"), quiet=True).data
    one = tmp_path / "site_c"
    (one / "benign").mkdir(parents=True)
    for i in range(4):  # benign only, images of its own
        Image.fromarray(np.full((20, 24), 40 * i + 7, np.uint8)).save(one / "benign" / f"{i}.png")
    data = Experiment(None, overrides=external(f"{{name: c, source: folder, root: {one}}}"), quiet=True).data
    c = data.external["c"]
    assert len(c) == 4 and c.labels.tolist() == [0] * 4 and data.external_about["c"].startswith("4 images from")
    x, y, _ = next(iter(data.loader("c", 8)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0] * 4  # the training input, normalised as its test split
    # the embedded data: its second site is other images than any split's, shifted
    synth = build_data(load_config(None, ["data.train_samples=16", "data.val_samples=8", "data.test_samples=8",
                                          "data.image_size=16",
                                          "data.external=[{name: s2, source: synthetic, samples: 12}]"]).data, 0)
    s2 = synth.external["s2"]
    assert len(s2) == 12 and synth.external_about["s2"] == "12 images from synthetic site 2"
    seen = {array_digest(i) for split in synth.splits.values() for i in split.images}
    assert not seen & {array_digest(i) for i in s2.images}
    unets = [f"networks.{n}.arch=unet" for n in ("teacher", "students.s1", "students.s2")]
    for task, nets in (("multilabel", []), ("segmentation", unets), ("detection", unets)):  # every 2D task's site 2
        cfg = load_config(None, [f"task={task}", "data.train_samples=8", "data.val_samples=4", "data.test_samples=4",
                                 "data.image_size=32", "data.external=[{name: s2, source: synthetic, samples: 6}]",
                                 *nets])
        shifted = build_data(cfg.data, 0, task=task).external["s2"]
        assert len(shifted) == 6 and shifted[(0, 0)][0].shape == (3, 32, 32)
    code, out, err = cli("check", *(a for o in external(f"{{name: c, source: folder, root: {one}}}")
                                    for a in ("--set", o)))
    assert code == 0, err
    assert "external  c: 4 images from data.root" in out and "checked against the training and validation" in out


def test_subgroups_split_every_metric_with_the_gap_and_its_change_from_the_teacher(tmp_path, cli):
    """data.groups: CSV columns whose values split the test metrics per group (each image's group
    kept); the report's subgroup rows give the gap between the groups of at least eval.min_group
    images (smaller ones flagged, not ranked) and the change from the teacher's gap, as a hand
    computation from the per-image values gives them; a missing column, a column of one value or
    a source without such columns is one line."""
    from kdstyles.report import load_rows, load_study
    from kdstyles.report.trust import group_rows, group_table

    make_mixed_folder(tmp_path / "imgs", per_class=30)
    sites = ["A", "B"] * 12 + ["C"]  # in the test split: C has too few images to rank
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "site", "sex", "scanner"])
        for cls in ("benign", "malignant"):
            for i in range(30):
                split = "test" if i < 13 else "val" if i < 18 else "train"
                site = sites[(i if cls == "benign" else i + 13) % len(sites)] if split == "test" else "A"
                w.writerow([f"imgs/{cls}/{i}.{'jpg' if i % 6 == 4 else 'png'}", cls, split, site, "FM"[i % 2], "X"])
    base = ["data.source=csv", f"data.path={tmp_path / 'labels.csv'}", "data.image_size=16", f"output.dir={tmp_path}",
            "output.name=run", "eval.min_group=3", *FAST]
    with pytest.raises(KDError, match=r"needs the column\(s\) path, site, age; found: path, label, split, site, sex"):
        Experiment(None, overrides=[*base, "data.groups=[site, age]"], quiet=True).data
    with pytest.raises(KDError, match=r"data.groups: column 'scanner' of '.*labels.csv' has one value only \('X'\)"):
        Experiment(None, overrides=[*base, "data.groups=[scanner]"], quiet=True).data
    with pytest.raises(KDError, match="groups: source 'synthetic' does not read it"):
        load_config(None, ["data.groups=[site]"])
    exp = Experiment(None, overrides=[*base, "data.groups=[site, sex]"], quiet=True)
    exp.fit()
    result = exp.evaluate()
    g = result["groups"]["columns"]["site"]
    assert g["values"] == ["A", "B", "C"] and g["counts"] == [13, 12, 1] and g["small"] == ["C"]
    assert set(result["groups"]["columns"]) == {"site", "sex"} and len(g["of_image"]) == 26
    of = np.array(g["of_image"])
    correct = {n: np.array(v["accuracy"]) for n, v in result["per_image"].items()}
    for name, per in g["networks"].items():
        for value in g["values"]:
            assert per[value]["accuracy"] == pytest.approx(correct[name][of == value].mean())
    rows = group_rows(load_study(exp.run_dir, load_rows(exp.run_dir)))
    site = {r["network"]: r for r in rows if r["column"] == "site"}
    assert list(site) == ["teacher", "s1", "s2", "ensemble"]
    gap = {n: abs(correct[n][of == "A"].mean() - correct[n][of == "B"].mean()) for n in site}  # C is not ranked
    for name, r in site.items():
        est, lo, hi = r["gap"]
        assert est == pytest.approx(gap[name]) and lo <= est <= hi
        if name != "teacher":
            d, lo, hi = r["change"]
            assert d == pytest.approx(gap[name] - gap["teacher"]) and lo <= d <= hi
    assert site["teacher"]["change"] is None and "C" not in {r["worst"] for r in rows}
    header, body = group_table(rows)
    assert "C " in body[0][3] and "(1*)" in body[0][3]
    code, out, err = cli("evaluate", exp.run_dir)
    assert code == 0 and "accuracy per site (n images; * fewer than 3)" in out and "C (1*)" in out
