"""Tests of the layers -> training tensors path: label modes, checks, sampler, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unetseg.data import IGNORE, as_stack, prepare_data
from napari_unetseg.normalize import Normalization
from napari_unetseg.sampler import PatchSampler


def _discs(shape=(48, 48), seed=0, n=6):
    """Instance labels of random discs (some touching) and a noisy image of them."""
    rng = np.random.default_rng(seed)
    inst = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(1, n + 1):
        cy, cx = rng.integers(6, shape[0] - 6), rng.integers(6, shape[1] - 6)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = i
    image = (inst > 0) * 150 + rng.integers(0, 50, shape)
    return image.astype(np.uint8), inst


def test_as_stack_shapes():
    assert as_stack(np.zeros((5, 7))).shape == (1, 1, 5, 7)
    assert as_stack(np.zeros((3, 5, 7))).shape == (3, 1, 5, 7)
    assert as_stack(np.zeros((5, 7, 2)), channel_axis=-1).shape == (1, 2, 5, 7)
    assert as_stack(np.zeros((3, 2, 5, 7)), channel_axis=1).shape == (3, 2, 5, 7)
    with pytest.raises(ValueError, match="channel_axis"):
        as_stack(np.zeros((3, 2, 5, 7)))
    with pytest.raises(ValueError, match="empty"):
        as_stack(np.zeros((0, 5, 7)))
    with pytest.raises(ValueError, match="shape"):
        as_stack(np.zeros((1, 1, 2, 5, 7)), channel_axis=0)


def test_dense_membranes_keep_class_values():
    image, inst = _discs()
    labels = np.where(inst > 0, 255, 0).astype(np.uint8)
    d = prepare_data(image, labels, labels_mode="dense", val_fraction=0)
    assert d.class_values == (0, 255)
    assert d.train_target.dtype == np.int16
    np.testing.assert_array_equal(d.train_target[0], (labels == 255).astype(np.int16))
    assert d.val_target is None
    assert d.image.dtype == np.float32 and d.image.shape == (1, 1, 48, 48)
    # normalisation fitted on the data: percentiles map to ~0..1
    assert -0.1 < np.percentile(d.image, 1) < 0.1 and 0.9 < np.percentile(d.image, 99.8) < 1.1


def test_sparse_scribbles_map_to_classes_and_ignore():
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    labels = np.zeros((40, 40), np.uint8)
    labels[5, 5:20] = 1
    labels[30, 10:30] = 3
    d = prepare_data(image, labels, val_fraction=0)
    assert d.class_values == (1, 2, 3)
    t = d.train_target[0]
    assert (t[labels == 0] == IGNORE).all()
    assert (t[5, 5:20] == 0).all() and (t[30, 10:30] == 2).all()


def test_instances_give_fg_target_and_weight_map():
    image, inst = _discs(seed=1)
    d = prepare_data(image, inst, labels_mode="instances", val_fraction=0, w0=10, sigma=5)
    assert d.class_values == (0, 1)
    assert set(np.unique(d.train_target).tolist()) == {0, 1}
    assert d.weight is not None and d.weight.shape == (1, 48, 48)
    assert d.weight.max() > 2 * np.median(d.weight)  # border term between close objects


def test_touching_instances_contact_is_background_with_high_weight():
    inst = np.zeros((40, 40), np.int32)
    inst[8:32, 4:20] = 1
    inst[8:32, 20:36] = 2  # touches object 1 along x = 19/20, no gap
    image = inst.astype(np.float32)
    d = prepare_data(image, inst, labels_mode="instances", val_fraction=0, w0=10, sigma=5)
    t, w = d.train_target[0], d.weight[0]
    contact = t[8:32, 19:21]
    assert (contact == 0).all()  # separated: the contact line is background
    interior = w[8:32, 8:14]
    assert w[12:28, 19:21].min() > 5 * interior.max()  # and weighs most (U-Net eq. 2)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.zeros((48, 40), int), {}, r"\(48, 40\).*\(48, 48\)"),
        (np.zeros((48, 48), int), {}, "no painted pixel"),
        (np.ones((48, 48), int), {"labels_mode": "dense"}, "single class"),
        (np.full((48, 48), -1), {}, ">= 0"),
        (np.full((48, 48), 0.5), {}, "integer"),
        (np.zeros((48, 48), int), {"labels_mode": "instances"}, "no object"),
        (np.ones((48, 48), int), {"labels_mode": "bogus"}, "labels_mode"),
        (np.ones((48, 48), int), {"val_fraction": 1.0}, "val_fraction"),
    ],
)
def test_bad_inputs_raise(labels, kwargs, match):
    image, _ = _discs()
    with pytest.raises(ValueError, match=match):
        prepare_data(image, labels, **kwargs)


def test_nan_image_raises():
    image = np.ones((20, 20), np.float32)
    image[3, 3] = np.nan
    labels = np.zeros((20, 20), int)
    labels[0, 0], labels[5, 5] = 1, 2
    with pytest.raises(ValueError, match="NaN"):
        prepare_data(image, labels)


def test_small_image_is_mirror_padded_and_padding_ignored():
    image, inst = _discs(shape=(20, 30))
    d = prepare_data(image, inst > 0, labels_mode="dense", min_size=32, margin=4, val_fraction=0)
    assert d.image.shape == (1, 1, 40, 40)
    assert (d.train_target >= 0).sum() == 20 * 30  # only the original pixels are labelled
    np.testing.assert_array_equal(d.train_target[0, 10:30, 5:35], (inst > 0).astype(np.int16))


def test_stack_split_holds_out_whole_slices():
    imgs, labs = zip(*[_discs(seed=s) for s in range(5)], strict=True)
    labels = np.stack(labs)
    labels[2] = 0  # an unlabelled slice is skipped
    d = prepare_data(np.stack(imgs), labels, labels_mode="instances", val_fraction=0.3, seed=1)
    assert 2 not in d.train_slices and 2 not in d.val_slices
    assert len(d.val_slices) == 1 and len(d.train_slices) == 3
    assert not set(d.train_slices) & set(d.val_slices)
    v = d.val_slices[0]
    assert (d.train_target[v] == IGNORE).all() and (d.val_target[v] >= 0).any()
    d2 = prepare_data(np.stack(imgs), labels, labels_mode="instances", val_slices=[0, 4])
    assert d2.val_slices == (0, 4) and d2.train_slices == (1, 3)
    with pytest.raises(ValueError, match="val_slices"):
        prepare_data(np.stack(imgs), labels, labels_mode="instances", val_slices=[7])
    with pytest.raises(ValueError, match="no labels"):
        prepare_data(np.stack(imgs), labels, labels_mode="instances", val_slices=[2])
    with pytest.raises(ValueError, match="every labelled slice"):
        prepare_data(np.stack(imgs), labels, labels_mode="instances", val_slices=[0, 1, 3, 4])


def test_single_image_split_holds_out_pixel_blocks():
    image, inst = _discs(shape=(64, 64))
    d = prepare_data(image, inst > 0, labels_mode="dense", val_fraction=0.25, seed=0)
    train, val = d.train_target[0] >= 0, d.val_target[0] >= 0
    assert not (train & val).any() and (train | val).all()
    assert 0.15 < val.mean() < 0.45


def test_normalization_fitted_on_training_slices_or_given():
    imgs, labs = zip(*[_discs(seed=s) for s in range(3)], strict=True)
    stack = np.stack(imgs).astype(np.float32)
    stack[0] *= 10  # the held-out slice would change the percentiles
    d = prepare_data(stack, np.stack(labs), labels_mode="instances", val_slices=[0])
    assert d.normalization == Normalization.fit(stack[1:])
    given = Normalization(0.0, 255.0)
    d = prepare_data(stack, np.stack(labs), labels_mode="instances", normalization=given)
    assert d.normalization == given


def test_sampler_centres_sparse_patches_on_labels():
    image = np.random.default_rng(0).random((1, 100, 100)).astype(np.float32)
    labels = np.zeros((1, 100, 100), np.uint8)
    labels[0, 80, 80] = 1
    labels[0, 10:12, 10:12] = 2
    d = prepare_data(image, labels, val_fraction=0)
    s = PatchSampler(d, 16, "cpu", seed=0)
    img, tgt, wgt = s.sample(64)
    assert img.shape == (64, 1, 16, 16) and tgt.shape == (64, 16, 16)
    assert wgt.shape == tgt.shape and (wgt[tgt >= 0] > 0).all() and (wgt[tgt < 0] == 0).all()
    assert tgt.dtype == torch.long
    has = torch.stack([(tgt == c).flatten(1).any(1) for c in (0, 1)])
    assert has.any(0).all()  # every patch holds a labelled pixel
    assert 0.3 < has[0].float().mean() < 0.7  # classes drawn uniformly, not by pixel count
    # crops are exact copies of the data
    pos = s.positions(4)
    img, tgt, _ = s.crop(*pos)
    sl, y, x = (int(p[0]) for p in pos)
    np.testing.assert_array_equal(img[0].numpy(), d.image[sl, :, y : y + 16, x : x + 16])


def test_sampler_dense_uniform_and_seeded():
    imgs, labs = zip(*[_discs(seed=s) for s in range(3)], strict=True)
    d = prepare_data(np.stack(imgs), np.stack(labs), labels_mode="instances", val_slices=[1])
    a = PatchSampler(d, 32, "cpu", seed=3).positions(50)
    b = PatchSampler(d, 32, "cpu", seed=3).positions(50)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert set(a[0].tolist()) == {0, 2}  # only training slices
    assert a[1].max() <= 48 - 32 and a[2].min() >= 0
    _, _, w = PatchSampler(d, 32, "cpu").sample(2)
    assert w is not None and w.shape == (2, 32, 32)


def test_validation_batches_cover_val_labels():
    imgs, labs = zip(*[_discs(shape=(32, 32), seed=s) for s in range(3)], strict=True)
    d = prepare_data(np.stack(imgs), np.stack(labs) > 0, labels_mode="dense", val_slices=[2],
                     margin=4)
    batches = PatchSampler(d, 24, "cpu").validation_batches(batch_size=3)
    n = sum(b[0].shape[0] for b in batches)
    assert n == 4  # a 2x2 grid of 16 px output windows tiles the 32 px slice
    covered = sum(int((b[1][:, 4:-4, 4:-4] >= 0).sum()) for b in batches)
    assert covered == 32 * 32
    assert all((b[1] >= 0).sum() > 0 for b in batches)
