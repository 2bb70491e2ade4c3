"""Labels painted while training runs: relabel() and TrainRun.update_labels()."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_unetseg import training
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.data import prepare_data, relabel
from napari_unetseg.live import LabelsInbox
from napari_unetseg.sampler import PatchSampler
from napari_unetseg.synthetic import touching_cells
from napari_unetseg.training import TrainConfig, train

TINY = ModelConfig(depth=2, width=4, classes=3)
FAST = TrainConfig(iterations=1000, batch_size=2, patch_size=32, lr=1e-2, device="cpu",
                   augment=AugmentConfig.off(), val_fraction=0, log_every=1)


@pytest.fixture(scope="module")
def stack():
    """Two 64x64 slices of touching cells and their instances."""
    pairs = [touching_cells((64, 64), 8, seed=s) for s in (0, 1)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _strokes(inst, where, fg, bg):
    """Sparse labels: value ``fg`` on a few cell pixels, ``bg`` on a few background pixels of
    the slices in ``where``."""
    lab = np.zeros(inst.shape, np.uint8)
    for z in where:
        lab[z][(inst[z] > 0) & (np.arange(64)[None, :] % 7 == 0)] = fg
        lab[z][(inst[z] == 0) & (np.arange(64)[:, None] % 7 == 0)] = bg
    return lab


def test_relabel_matches_prepare_data_and_keeps_the_image(stack):
    image, inst = stack
    first = _strokes(inst, [0], 3, 1)
    kw = {"val_fraction": 0.3, "min_size": 80, "margin": 4, "seed": 2}
    data = prepare_data(image, first, **kw)
    later = _strokes(inst, [0, 1], 3, 1)
    later[1][inst[1] > 0] = 2  # class 2 was not painted at the start
    new = relabel(data, later, val_fraction=0.3, seed=2)
    ref = prepare_data(image, later, normalization=data.normalization, **kw)
    assert new.image is data.image and new.normalization is data.normalization
    np.testing.assert_array_equal(new.train_target, ref.train_target)
    np.testing.assert_array_equal(new.val_target, ref.val_target)
    assert (new.train_slices, new.val_slices) == (ref.train_slices, ref.val_slices)
    assert new.class_values == (1, 2, 3)


@pytest.mark.parametrize(("labels", "match"), [
    (lambda lab: np.where(lab > 0, 4, 0), "label 4 is new"),
    (lambda lab: np.where(lab > 0, 1, 0), "single class"),
    (lambda lab: lab[:, :60], "does not match"),
    (lambda lab: lab[:1], "does not match"),
])
def test_relabel_refuses_what_the_model_cannot_train_on(stack, labels, match):
    image, inst = stack
    first = _strokes(inst, [0], 3, 1)
    data = prepare_data(image, first, val_fraction=0)
    with pytest.raises(ValueError, match=match):
        relabel(data, labels(first), val_fraction=0)


def test_relabel_dense_keeps_the_class_values(stack):
    image, inst = stack
    dense = np.where(inst > 0, 255, 0).astype(np.uint8)
    data = prepare_data(image, dense, labels_mode="dense", val_fraction=0)
    flipped = 255 - dense
    new = relabel(data, flipped, val_fraction=0)
    assert new.class_values == (0, 255)
    np.testing.assert_array_equal(new.train_target, (flipped == 255).astype(np.int16))
    with pytest.raises(ValueError, match=r"\[7\] are new"):
        relabel(data, np.where(dense == 0, 7, dense), val_fraction=0)


def _spy(monkeypatch):
    """Record the slice and target classes of every training patch."""
    seen = []
    original = PatchSampler.sample

    def sample(self, n):
        batch = original(self, n)
        seen.append(set(np.unique(batch[1].numpy()).tolist()) - {-1})
        return batch

    monkeypatch.setattr(PatchSampler, "sample", sample)
    return seen


def test_strokes_painted_mid_run_enter_the_sampled_patches(stack, monkeypatch):
    image, inst = stack
    seen = _spy(monkeypatch)
    first = _strokes(inst, [0], 3, 1)  # classes 1 and 3 on slice 0; class 2 not painted yet
    run = train(image, first, TINY, FAST)
    for _ in range(8):
        next(run)
    assert all(1 not in classes for classes in seen)  # class index 1 = label 2
    later = first.copy()
    later[1][inst[1] > 0] = 2  # the user paints label 2 on slice 1
    run.update_labels(later)
    later[:] = 0  # the run took a copy
    assert run.labels.version == 0
    before = len(seen)
    for _ in range(20):
        next(run)
    assert run.labels.version == 1 and run.labels.problem is None
    assert run.data.train_slices == (0, 1)
    assert (run.data.train_target[1][inst[1] > 0] == 1).all()
    assert any(1 in classes for classes in seen[before:])
    run.close()


def test_labels_the_model_cannot_use_are_skipped_with_a_reason(stack):
    image, inst = stack
    first = _strokes(inst, [0], 3, 1)
    run = train(image, first, TINY, FAST)
    next(run)
    target = run.data.train_target.copy()
    run.update_labels(np.where(first > 0, 4, 0))
    next(run)
    assert "label 4 is new" in run.labels.problem and run.labels.version == 0
    np.testing.assert_array_equal(run.data.train_target, target)  # trains on as before
    with pytest.raises(ValueError, match="differs from the shape"):
        run.update_labels(first[:, :10])
    run.update_labels(first)
    next(run)
    assert run.labels.problem is None and run.labels.version == 1
    run.close()


def test_best_model_is_chosen_among_those_validated_after_the_update(stack, monkeypatch):
    image, inst = stack
    first = _strokes(inst, [0, 1], 3, 1)
    dice = iter([0.9, 0.2, 0.5])  # the best before the update must not count after it
    monkeypatch.setattr(training, "_evaluate", lambda s, batches: (1.0, next(dice)))
    cfg = dataclasses.replace(FAST, iterations=9, val_every=3, val_fraction=0.5)
    run = train(image, first, TINY, cfg)
    for _ in range(4):
        next(run)
    run.update_labels(first)
    while True:
        try:
            next(run)
        except StopIteration as done:
            result = done.value
            break
    assert result.metadata["best_step"] == 9 and result.metadata["best_val_dice"] == 0.5
    assert result.metadata["labels_updates"] == 1


def test_inbox_keeps_only_the_newest_labels():
    box = LabelsInbox((2, 3))
    assert not box.waiting and box.take() is None
    box.put(np.zeros((2, 3)))
    box.put(np.ones((2, 3)))
    assert box.waiting and box.take().sum() == 6 and box.take() is None
    box.done("no")
    assert (box.version, box.problem) == (0, "no")
    box.done()
    assert (box.version, box.problem) == (1, None)
