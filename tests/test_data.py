import numpy as np
import pytest
import torch

from kdstyles import KDError, load_config
from kdstyles.data import EpochBatchSampler, build_data
from kdstyles.data.generators import synthetic
from conftest import DATA, SEG


def test_generator_is_deterministic_and_seeded():
    a, la = synthetic.generate(3, "train", 6, 32)
    b, lb = synthetic.generate(3, "train", 6, 32)
    c, _ = synthetic.generate(4, "train", 6, 32)
    assert a.dtype == np.uint8 and a.shape == (6, 32, 32, 3)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    # a sample depends only on (seed, split, index): a longer split starts with the same images
    longer, _ = synthetic.generate(3, "train", 9, 32)
    assert np.array_equal(longer[:6], a)
    val, _ = synthetic.generate(3, "val", 6, 32)
    assert not np.array_equal(val, a)


@pytest.mark.parametrize("module, size", [("synthetic", 16), ("synthetic_seg", 16), ("synthetic_det", 16),
                                          ("synthetic_multi", 32), ("synthetic_vol", 16), ("synthetic_vol_seg", 16),
                                          ("synthetic_vol_det", 16), ("synthetic_vol_multi", 16)])
def test_every_generator_renders_any_range_of_a_split_alike(module, size):
    """Items start.. of a split equal the same items of the whole split: chunks rendered apart
    (in parallel processes) put together are the split."""
    from importlib import import_module

    gen = import_module(f"kdstyles.data.generators.{module}").generate
    whole, labels = gen(2, "val", 5, size)
    part, part_labels = gen(2, "val", 3, size, start=2)
    assert np.array_equal(part, whole[2:]) and not np.array_equal(part, whole[:3])
    if isinstance(labels, list):  # boxes, one array per item
        assert all(np.array_equal(a, b) for a, b in zip(part_labels, labels[2:], strict=True))
    else:
        assert np.array_equal(part_labels, labels[2:])


@pytest.mark.parametrize("size", [28, 64, 224])
def test_generator_sizes(size):
    img, label = synthetic.render_patch(0, "test", 1, size)
    assert img.shape == (size, size, 3) and 0 <= label < len(synthetic.CLASS_NAMES)
    assert img.std() > 5  # not a flat image


def test_classes_present_and_differ_in_nuclei_density():
    images, labels = synthetic.generate(0, "train", 160, 32)
    counts = np.bincount(labels, minlength=4)
    assert (counts > 20).all()
    # haematoxylin absorbs red far more than eosin: nuclei-rich classes are darker in red than stroma
    darkness = 255 - images[..., 0].reshape(len(images), -1).mean(1)
    mean = [darkness[labels == k].mean() for k in range(4)]
    assert mean[1] > mean[3] and mean[2] > mean[3]


def test_size_outside_range_is_rejected():
    with pytest.raises(KDError, match="data.image_size: 600 is outside"):
        synthetic.generate(0, "train", 1, 600)


def test_sampler_order_depends_on_seed_and_epoch_only():
    s = EpochBatchSampler(10, 4, shuffle=True, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s2 = EpochBatchSampler(10, 4, shuffle=True, seed=1)
    s2.set_epoch(1)
    assert e1 == list(s2) and e0 != e1
    assert sorted(i for b in e0 for _, i in b) == list(range(10))
    assert EpochBatchSampler(9, 4, shuffle=True).drop_last  # a batch of one would break BatchNorm


def test_bundle_normalisation_and_augmentation_are_reproducible():
    cfg = load_config(None, ["data.image_size=16", "data.train_samples=40", "data.val_samples=4",
                             "data.test_samples=4", "data.augment.rotate=20", "data.augment.zoom=0.1"])
    bundle = build_data(cfg.data, seed=0)
    assert bundle.num_classes == 4 and bundle.channels == 3
    train = bundle.splits["train"]
    x1, y1, i1 = train[(2, 5)]
    x2, _, _ = train[(2, 5)]
    x3, _, _ = train[(3, 5)]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)  # seeded per (epoch, index)
    assert type(x1) is torch.Tensor and x1.shape == (3, 16, 16) and i1 == 5 and y1 == train.labels[5]
    raw = torch.from_numpy(train.images).float().div(255)  # (N, H, W, C)
    standardised = (raw - torch.tensor(bundle.mean)) / torch.tensor(bundle.std)
    assert standardised.mean().abs() < 0.05  # the training split standardised per channel
    gray = build_data(load_config(None, ["data.image_size=16", "data.train_samples=40", "data.val_samples=2",
                                         "data.test_samples=2", "data.channels=1"]).data, seed=0)
    assert gray.splits["test"][0][0].shape == (1, 16, 16)


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


def test_batch_augmentation_gives_each_item_its_own_moves_wherever_it_is_drawn():
    """A batch is augmented at once, each item by its own (seed, epoch, index): an item alone,
    first or last in a batch, is the same tensor; images and masks move together (flips and
    quarter turns are exact: an image drawn from its own mask keeps matching it)."""
    cfg = load_config(None, [*SEG, *DATA, "data.augment.rotate90=true", "data.augment.shift=0.1",
                             "data.augment.intensity=0.2", "data.normalize=none"])
    ds = build_data(cfg.data, seed=0, task="segmentation").splits["train"]
    keys = [(3, i) for i in range(6)]
    batch = ds.__getitems__(keys)
    for j, key in enumerate(keys):
        alone = ds[key]
        assert torch.equal(alone[0], batch[j][0]) and torch.equal(alone[1], batch[j][1])
    assert torch.equal(ds.__getitems__(keys[::-1])[0][0], batch[-1][0])
    exact = load_config(None, [*SEG, *DATA, "data.augment.rotate90=true", "data.normalize=none"])
    bundle = build_data(exact.data, seed=0, task="segmentation")
    ds = bundle.splits["train"]
    i = next(k for k in range(len(ds)) if ds.masks[k].any())
    ds.images = np.repeat(ds.masks[:, :, :, None] * 255, ds.images.shape[-1], axis=3).astype(np.uint8)
    moved = 0
    for epoch in range(6):
        x, mask, _ = ds[(epoch, i)]
        assert torch.equal((x[0] > 0.5).long(), mask)  # the image's pixels went where the mask's did
        moved += not torch.equal(mask, torch.from_numpy(ds.masks[i]).long())
    assert moved  # and they did move
