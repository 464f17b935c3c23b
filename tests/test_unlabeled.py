"""Images without labels (data.unlabeled) and mixed views (data.mix): what each step draws,
what each loss sees, leakage refused, every source and task, and bad input in one line."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, SEG, tiny, write_npz
from PIL import Image

from kdstyles.api import Experiment
from kdstyles.config import load_config
from kdstyles.data import EpochBatchSampler, JointBatchSampler
from kdstyles.data.mix import MixDraw, Mixer, cut_box
from kdstyles.errors import KDError
from kdstyles.tasks import TASKS

UNL = ["data.unlabeled.source=synthetic", "data.unlabeled.samples=20", "data.unlabeled_batch_size=8"]


# ----------------------------------------------------------------------------- what each step draws


def _keys(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_unlabeled_draws_are_a_function_of_seed_epoch_and_step_and_cover_each_pass():
    def make(rank=0, world=1):
        return JointBatchSampler(EpochBatchSampler(40, 8, shuffle=True, seed=3, shard=(rank, world)), 13, 6, seed=3)

    s = make()
    epochs = [_keys(s, e) for e in range(4)]
    assert len(epochs[0]) == 5 and all(len(b) == 8 + 6 for b in epochs[0])
    assert [b[:8] for b in epochs[0]] == [[(0, 0, i) for _, i in lab] for lab in
                                          _keys(EpochBatchSampler(40, 8, shuffle=True, seed=3), 0)]
    # the unlabelled stream runs on across epochs, each pass a permutation of all 13 images
    stream = [k for ep in epochs for b in ep for k in b[8:]]
    assert len(stream) == 4 * 5 * 6
    for k in range(len(stream) // 13):
        part = stream[13 * k:13 * (k + 1)]
        assert {p for _, p, _ in part} == {k} and sorted(i for _, _, i in part) == list(range(13))
    assert stream[:13] != stream[13:26]  # a new order each pass
    # a resumed epoch (from step 2) draws what the uninterrupted one drew there; a new sampler too
    assert _keys(make(), 2, start=2) == epochs[2][2:]
    # two processes draw strided shares of the same global batches
    r0, r1 = _keys(make(0, 2), 1), _keys(make(1, 2), 1)
    for whole, a, b in zip(epochs[1], r0, r1):
        assert sorted(a + b) == sorted(whole)


def test_joint_loader_batches_labelled_then_unlabelled(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, *UNL), quiet=True)
    data = exp.data
    assert len(data.unlabeled) == 20 and "20 images like the embedded synthetic histology" in data.unlabeled_about
    batch = next(iter(data.loader("train", 16, train=True, unlabeled_batch=8)))
    x, y, keys = batch.images, batch.targets, batch.keys
    assert x.shape == (24, 3, 16, 16) and y.shape == (16,) and batch.labelled == 16 and len(keys) == 24
    # the labelled images first, then the unlabelled ones, each prepared as a training image (normalised,
    # augmented by its own seed); an unlabelled image's key comes after every labelled key
    n = data.splits["train"].keys
    assert bool((keys[:16] < n).all()) and bool((keys[16:] >= n).all())
    assert torch.equal(x[0], data.splits["train"][(0, int(keys[0]))][0])
    assert torch.equal(x[16], data.unlabeled[(0, int(keys[16]) - n)][0])
    alone = next(iter(data.loader("train", 16, train=True)))  # without unlabelled: every row labelled
    assert alone.labelled is None and len(alone.images) == len(alone.targets) == len(alone.keys) == 16


# ----------------------------------------------------------------------------- mixing


def test_mixup_and_cutmix_by_hand():
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 4, 6).clone()  # image i is all i
    mixed = MixDraw("mixup", 0.7).images(x, labelled=3)
    # labelled rows 0..2 with their reverse (2, 1, 0); the unlabelled row 3 with itself
    assert torch.allclose(mixed[:, 0, 0, 0], torch.tensor([0.7 * 0 + 0.3 * 2, 1.0, 0.7 * 2 + 0.3 * 0, 3.0]))
    draw = MixDraw("cutmix", 0.5, (slice(1, 3), slice(0, 3)))
    cut = draw.images(x)
    assert torch.equal(cut[0, :, 1:3, 0:3], torch.full((2, 2, 3), 3.0)) and cut[0, :, 0].eq(0).all()
    assert cut[0, :, 1:3, 3:].eq(0).all()
    masks = torch.zeros(4, 4, 6, dtype=torch.long)
    masks[3] = 1
    assert draw.masks(masks)[0].sum() == 6 and draw.masks(masks)[3].sum() == 24 - 6


def test_cutmix_box_corrects_lambda_to_the_pasted_area():
    rng = np.random.default_rng(0)
    for lam in (0.1, 0.5, 0.9):
        for spatial in ((32, 32), (8, 16, 16)):
            d = cut_box(lam, spatial, rng)
            area = np.prod([s.stop - s.start for s in d.box])
            assert d.lam == pytest.approx(1 - area / np.prod(spatial))
            assert all(0 <= s.start <= s.stop <= n for s, n in zip(d.box, spatial))
    centred = cut_box(0.75, (32, 32), np.random.default_rng(1))  # side sqrt(0.25) = half, unless clipped
    assert max(s.stop - s.start for s in centred.box) <= 16


def test_mixer_draws_from_seed_epoch_and_step():
    cfg = load_config(None, ["data.mix.mixup=0.8", "data.mix.cutmix=1.0"]).data.mix
    a, b = Mixer(cfg, 0), Mixer(cfg, 0)
    draws = [a.draw(e, s, (16, 16)) for e in range(3) for s in range(20)]
    assert draws == [b.draw(e, s, (16, 16)) for e in range(3) for s in range(20)]
    kinds = {d.kind for d in draws}
    assert kinds == {"mixup", "cutmix"} and len({d.lam for d in draws}) > 30
    off = load_config(None, ["data.mix.mixup=0.8", "data.mix.prob=0"]).data.mix
    assert Mixer(off, 0).draw(0, 0, (16, 16)) is None
    half = load_config(None, ["data.mix.cutmix=1", "data.mix.prob=0.5"]).data.mix
    mixed = sum(Mixer(half, 0).draw(0, s, (16, 16)) is not None for s in range(400))
    assert 150 < mixed < 250


def test_mixed_supervised_loss_is_the_cross_entropy_of_mixed_targets():
    task = TASKS["classification"](3)
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1])
    draw = MixDraw("mixup", 0.3)
    soft = 0.3 * F.one_hot(y, 3) + 0.7 * F.one_hot(y.flip(0), 3)
    by_hand = -(soft * logits.log_softmax(1)).sum(1).mean()
    assert task.supervised_mixed(logits, task.mix_targets(y, draw), None).item() == pytest.approx(by_hand.item(),
                                                                                                rel=1e-6)
    seg = TASKS["segmentation"](2)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[1] = 1
    cut = MixDraw("cutmix", 0.75, (slice(0, 2), slice(0, 2)))
    y_a, y_b, lam = seg.mix_targets(masks, cut)
    assert lam == 1.0 and y_a[0].sum() == 4 and y_a[1].sum() == 12


@pytest.mark.parametrize("extra, message", [
    (["task=detection", "networks.teacher.arch=unet", "networks.students.s1.arch=unet",
      "networks.students.s2.arch=unet", "data.mix.cutmix=1"],
     "data.mix.cutmix: task detection cannot mix its boxes"),
    ([*SEG, "data.mix.mixup=0.5"], "data.mix.mixup: task segmentation mixes masks by CutMix only"),
    (["networks.teacher.mode=offline", "networks.teacher.checkpoint=x", "networks.teacher.cache=true",
      "data.augment.hflip=false", "data.augment.vflip=false", "data.mix.mixup=1"],
     "networks.teacher.cache: mixed views (data.mix) differ at every step"),
    (["data.unlabeled.source=folder"], "source 'folder' needs data.unlabeled.root"),
    (["data.unlabeled.source=synthetic"], "source 'synthetic' needs data.unlabeled.samples"),
    (["data.unlabeled.source=web"], "data.unlabeled.source"),
    (["data.mix.mixup=-1"], "data.mix.mixup"),
    (["data.mix.prob=2"], "data.mix.prob"),
    (["data.unlabeled_batch_size=0"], "data.unlabeled_batch_size"),
])
def test_bad_options_are_one_line(extra, message):
    with pytest.raises(KDError) as err:
        load_config(None, extra)
    assert message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- what each loss sees


def test_supervised_loss_sees_labelled_rows_and_edges_see_all(tmp_path):
    exp = Experiment(None, overrides=tiny(tmp_path, "routing.preset=dkd"), quiet=True)
    cohort = exp.cohort
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    cohort.eval()  # BatchNorm in eval: each row's outputs do not depend on the others
    outs = cohort(x)
    joint = cohort.losses(outs, y, labelled=4)
    for name in ("teacher", "s1", "s2"):  # the supervised term: the labelled rows only
        ce = F.cross_entropy(outs[name].logits[:4], y)
        assert joint[name].terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    # dkd consumes labels: the labelled rows only; equal to the loss of the labelled batch alone
    alone = cohort.losses({n: type(o)(o.logits[:4], {k: v[:4] for k, v in o.features.items()})
                           for n, o in outs.items()}, y)
    dkd = "dkd<-teacher"
    assert joint["s1"].terms[dkd].item() == pytest.approx(alone["s1"].terms[dkd].item(), rel=1e-6)

    kd = Experiment(None, overrides=tiny(tmp_path / "kd", "routing.preset=kd"), quiet=True).cohort.eval()
    outs = kd(x)
    joint, labelled = kd.losses(outs, y, labelled=4), kd.losses(
        {n: type(o)(o.logits[:4], {}) for n, o in outs.items()}, y)
    p_t, log_s = outs["teacher"].logits.softmax(1), outs["s1"].logits.log_softmax(1)
    by_hand = (p_t * (p_t.log() - log_s)).sum(1).mean()  # KL over all six rows (T = 1)
    kl = "predictions<-teacher"
    assert joint["s1"].terms[kl].item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert joint["s1"].terms[kl].item() != pytest.approx(labelled["s1"].terms[kl].item(), rel=1e-3)


def test_dkd_on_a_mixed_batch_takes_the_labels_of_the_larger_share(tmp_path):
    from kdstyles.styles import STYLES, Context

    cohort = Experiment(None, overrides=tiny(tmp_path, "routing.preset=dkd"), quiet=True).cohort.eval()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    outs = cohort(x)
    edge = next(e for e in cohort.edges if e.dst == "s1")
    source, target = outs["teacher"].logits.detach(), outs["s1"].logits
    for lam, labels in ((0.3, y.flip(0)), (0.7, y)):  # the reversed batch's labels when it is the larger share
        got = cohort.losses(outs, y, mix=MixDraw("mixup", lam))["s1"].terms["dkd<-teacher"]
        want = STYLES["dkd"].compute(source, target, edge.options, cohort.task, Context(labels, cohort.epoch))
        other = STYLES["dkd"].compute(source, target, edge.options, cohort.task,
                                      Context(labels.flip(0), cohort.epoch))
        assert got.item() == pytest.approx(want.item(), rel=1e-6) and got.item() != pytest.approx(other.item())


def test_online_teacher_learns_from_its_labels_only(tmp_path):
    """The teacher's loss has no distillation term, and its supervised term ignores the
    unlabelled rows: its gradient is the labelled batch's."""
    cohort = Experiment(None, overrides=tiny(tmp_path, "data.augment.hflip=false"), quiet=True).cohort.eval()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = cohort.losses(cohort(x), y, labelled=4)["teacher"]
    assert set(loss.terms) == {"ce"}
    grad = torch.autograd.grad(loss.total, x, allow_unused=True)[0] if x.requires_grad else None
    assert grad is None
    xg = x.clone().requires_grad_(True)
    loss = cohort.losses(cohort(xg), y, labelled=4)["teacher"]
    g = torch.autograd.grad(loss.total, xg)[0]
    assert g[4:].abs().sum() == 0 and g[:4].abs().sum() > 0


# ----------------------------------------------------------------------------- leakage


def _folder_tree(root, n=4, size=12):
    """A class-per-folder tree with train/val/test, distinct random images; returns {split: [paths]}."""
    rng = np.random.default_rng(0)
    out = {}
    for split in ("train", "val", "test"):
        out[split] = []
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                p = d / f"{split}{c}{i}.png"
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
                out[split].append(p)
    return out


def _folder_exp(tmp_path, root, extra=()):
    return Experiment(None, overrides=tiny(tmp_path / "runs", "data.source=folder", f"data.root={root}",
                                           "data.batch_size=4", "data.on_duplicates=error", *extra), quiet=True)


def test_unlabelled_image_that_is_a_test_image_is_refused_naming_both(tmp_path):
    files = _folder_tree(tmp_path / "lab")
    unl = tmp_path / "unl" / "deep" / "er"
    unl.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(unl / f"u{i}.png")
    shutil.copy(files["test"][3], unl / "copied.png")
    exp = _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=folder",
                                                   f"data.unlabeled.root={unl.parents[1]}"])
    with pytest.raises(KDError) as err:
        exp.data
    msg = str(err.value)
    assert "copied.png" in msg and files["test"][3].name in msg and "test image" in msg and "\n" not in msg
    # the same pixels in another file format (bytes differ): refused too
    (unl / "copied.png").unlink()
    Image.open(files["val"][0]).save(unl / "again.bmp")
    with pytest.raises(KDError, match=r"again\.bmp.*val image"):
        _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=folder",
                                                 f"data.unlabeled.root={unl}"]).data
    # a copy of a labelled training image: a warning, and training goes ahead
    (unl / "again.bmp").unlink()
    shutil.copy(files["train"][0], unl / "train-copy.png")
    exp = _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=folder", f"data.unlabeled.root={unl}"])
    warnings = [w.message for w in exp.data.report.warnings]
    assert any("also labelled training images" in w and "train-copy.png" in w for w in warnings)
    assert len(exp.data.unlabeled) == 6  # found at any depth


def test_unlabeled_csv_and_bad_files_in_one_line(tmp_path):
    _folder_tree(tmp_path / "lab")
    imgs = tmp_path / "u"
    imgs.mkdir()
    rng = np.random.default_rng(9)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8)).save(imgs / f"g{i}.png")  # grey: made RGB
    csv = tmp_path / "u.csv"
    csv.write_text("path,comment\n" + "".join(f"u/g{i}.png,x\n" for i in range(3)))
    exp = _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=csv", f"data.unlabeled.path={csv}",
                                                   "data.unlabeled.samples=2"])
    assert len(exp.data.unlabeled) == 2 and exp.data.unlabeled.raw(0).shape == (16, 16, 3)
    (imgs / "g1.png").write_bytes(b"not a png")
    with pytest.raises(KDError) as err:
        _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=csv", f"data.unlabeled.path={csv}"]).data
    assert "g1.png" in str(err.value) and str(err.value).startswith("data.unlabeled.path")
    for text, message in [("file\nu/g0.png\n", "needs the column"), ("path\nu/none.png\n", "does not exist"),
                          ("path\n\"\"\n", "line 2: empty path")]:
        csv.write_text(text)
        with pytest.raises(KDError, match=message):
            _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=csv", f"data.unlabeled.path={csv}"]).data
    with pytest.raises(KDError, match="folder does not exist"):
        _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=folder",
                                                 f"data.unlabeled.root={tmp_path / 'nope'}"]).data
    (tmp_path / "empty").mkdir()
    with pytest.raises(KDError, match="holds no image files"):
        _folder_exp(tmp_path, tmp_path / "lab", ["data.unlabeled.source=folder",
                                                 f"data.unlabeled.root={tmp_path / 'empty'}"]).data


def test_medmnist_split_without_labels_and_its_own_test_split_refused(tmp_path):
    write_npz(tmp_path / "pathmnist.npz")
    base = ["data.source=medmnist", "data.flag=pathmnist", f"data.root={tmp_path}", "data.unlabeled.source=medmnist",
            "data.unlabeled.flag=pathmnist", f"data.unlabeled.root={tmp_path}", "data.on_duplicates=warn"]
    with pytest.raises(KDError, match=r"test\[0\] is the same image as test image"):
        Experiment(None, overrides=tiny(tmp_path / "r", *base, "data.unlabeled.split=test"), quiet=True).data
    exp = Experiment(None, overrides=tiny(tmp_path / "r2", *base, "data.unlabeled.split=train"), quiet=True)
    assert len(exp.data.unlabeled) == 40
    assert any("40 unlabelled image(s) are also labelled training images" in w.message
               for w in exp.data.report.warnings)


# ----------------------------------------------------------------------------- training, every task


def test_cli_trains_with_unlabelled_images_and_mixing_and_records_them(tmp_path, cli):
    from kdstyles.deploy.export import export_run

    args = [a for o in tiny(tmp_path, *UNL, "train.epochs=1", "data.mix.mixup=0.8", "data.mix.cutmix=1")
            for a in ("--set", o)]
    code, _, err = cli("train", *args, "--quiet", "--no-evaluate")
    assert code == 0, err
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["unlabeled"] == {"source": "synthetic", "images": 20, "batch_size": 8, "about":
                                 "20 images like the embedded synthetic histology patches (labels withheld)"}
    assert info["mix"]["mixup"] == 0.8 and info["mix"]["cutmix"] == 1.0
    export_run(run, "s1", fmt="torchscript")
    card = (run / "export" / "s1.md").read_text()
    assert "also learned from 20 images like the embedded synthetic histology patches" in card
    assert "mixed (mixup 0.8, CutMix 1" in card
    # a run without edges has no use for unlabelled images: not loaded, not recorded
    alone = Experiment(None, overrides=tiny(tmp_path / "alone", *UNL, "routing.preset=student"), quiet=True)
    assert alone.data.unlabeled is None


def test_unlabelled_images_change_what_students_learn_and_cached_teacher_matches(tmp_path):
    """An offline teacher cached per image (unlabelled ones after the labelled) gives the same
    training as the teacher run at every step."""
    teacher = Experiment(None, overrides=tiny(tmp_path / "t", "routing.preset=teacher", "train.epochs=1"), quiet=True)
    teacher.fit()
    common = [*UNL, "routing.preset=kd", "networks.teacher.mode=offline",
              f"networks.teacher.checkpoint={teacher.run_dir}", "data.augment.hflip=false", "data.augment.vflip=false"]
    runs = {}
    for name, extra in (("cached", ["networks.teacher.cache=true"]), ("uncached", []),
                        ("labelled", ["data.unlabeled=null"])):
        exp = Experiment(None, overrides=tiny(tmp_path / name, *common, *extra), quiet=True)
        exp.fit()
        runs[name] = exp.cohort.networks["s1"].state_dict()
    for k, v in runs["cached"].items():
        assert torch.allclose(v.float(), runs["uncached"][k].float(), atol=1e-5), k
    assert any(not torch.allclose(v.float(), runs["labelled"][k].float()) for k, v in runs["uncached"].items())


@pytest.mark.parametrize("extra", [
    [*SEG, *DATA, "data.mix.cutmix=1"],
    ["task=multilabel", *DATA, "data.image_size=32", "data.mix.mixup=0.5"],
    ["task=detection", "networks.teacher.arch=unet", "networks.teacher.widen=0.5", "networks.students.s1.arch=unet",
     "networks.students.s2.arch=unet", "data.image_size=16", *DATA],
    ["data.spatial_dims=3", "data.image_size=16", "data.train_samples=8", "data.val_samples=4", "data.test_samples=4",
     "data.batch_size=4", "data.mix.cutmix=1", "data.mix.mixup=1"],
], ids=["segmentation", "multilabel", "detection", "volumes"])
def test_every_task_trains_with_unlabelled_images(tmp_path, extra):
    exp = Experiment(None, overrides=tiny(tmp_path, *extra, "data.unlabeled.source=synthetic",
                                          "data.unlabeled.samples=6", "data.unlabeled_batch_size=4", "train.epochs=1"),
                     quiet=True)
    exp.fit()
    assert json.loads((exp.run_dir / "run.json").read_text())["unlabeled"]["images"] == 6
    loader = exp.data.loader("train", exp.cfg.data.batch_size, train=True, unlabeled_batch=4)
    batch = next(iter(loader))
    assert batch.images.shape[0] == batch.labelled + 4 == len(batch.keys) == exp.cfg.data.batch_size + 4


def test_compare_shared_teacher_stays_uncached_with_unlabelled_images_or_mixing(tmp_path):
    from kdstyles.workflows.compare import plan

    flat = ["data.augment.hflip=false", "data.augment.vflip=false"]
    for extra, cached in (([], "true"), (UNL, "false"), (["data.mix.mixup=1"], "false")):
        _, specs, _ = plan(None, ["kd"], 1, tmp_path / "c", [*flat, *extra], teacher="shared")
        assert dict(specs[0].changes)["networks.teacher.cache"] is (cached == "true")


def test_offline_teacher_sees_each_steps_exact_view(tmp_path):
    """Without the cache, the frozen teacher forwards exactly the images the students train on
    at every step: augmented, mixed, unlabelled ones included (a consistent teacher)."""
    teacher = Experiment(None, overrides=tiny(tmp_path / "t", "routing.preset=teacher", "train.epochs=1"), quiet=True)
    teacher.fit()
    exp = Experiment(None, overrides=tiny(tmp_path / "s", *UNL, "routing.preset=kd", "networks.teacher.mode=offline",
                                          f"networks.teacher.checkpoint={teacher.run_dir}", "train.epochs=1",
                                          "data.augment.rotate90=true", "data.mix.cutmix=1", "data.mix.mixup=1"),
                     quiet=True)
    seen: dict[str, list] = {"teacher": [], "s1": []}
    for name in seen:
        exp.cohort.networks[name].register_forward_hook(
            lambda m, inp, out, name=name: seen[name].append(inp[0].detach().clone()) if exp.cohort.training else None)
    exp.fit()
    assert len(seen["s1"]) == 3 and len(seen["teacher"]) == 3  # 48 images, batch 16: three steps
    for t, s in zip(seen["teacher"], seen["s1"]):
        assert t.shape[0] == 16 + 8 and torch.equal(t, s)


def test_unlabelled_medmnist_names_its_own_keys_and_ignores_label_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("KDSTYLES_OFFLINE", "1")
    base = tiny(tmp_path, "data.unlabeled.source=medmnist", f"data.unlabeled.root={tmp_path}")
    with pytest.raises(KDError, match=r"^data\.unlabeled\.flag: 'nosuch' is not a MedMNIST flag"):
        Experiment(None, overrides=[*base, "data.unlabeled.flag=nosuch"], quiet=True).data
    with pytest.raises(KDError, match=r"^data\.unlabeled\.root: 'chestmnist\.npz' is not in .* set data\.unlabeled"):
        Experiment(None, overrides=[*base, "data.unlabeled.flag=chestmnist"], quiet=True).data  # multi-label: fine
    write_npz(tmp_path / "chestmnist.npz", multilabel=True)
    exp = Experiment(None, overrides=[*base, "data.unlabeled.flag=chestmnist"], quiet=True)
    assert len(exp.data.unlabeled) == 40  # a multi-label file's images serve a classifier's distillation
