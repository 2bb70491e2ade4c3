"""The weight map where the papers use it: dense membranes, sparse strokes, instances, the
trainer and the CLI (issue 11, point 1)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_unetseg import ModelConfig
from napari_unetseg.data import prepare_data
from napari_unetseg.targets import class_balance, training_targets
from napari_unetseg.training import TrainConfig, train
from napari_unetseg.weightmap import instance_targets, weight_map


def _membranes() -> np.ndarray:
    """Four cells (255) cut by a 2-px cross of membrane (0), ISBI's convention."""
    lab = np.full((40, 40), 255, np.uint8)
    lab[19:21, :] = 0
    lab[:, 19:21] = 0
    return lab


def test_dense_weights_come_from_the_cells_between_membranes():
    lab = _membranes()
    t = training_targets(lab[None], "dense", w0=10, sigma=5)
    cells, n = ndi.label(lab > 0)
    assert n == 4
    expected = weight_map(cells, w0=10, sigma=5)  # wc + border term of the four cells
    np.testing.assert_allclose(t.weight[0], expected, rtol=1e-6)
    # the membrane between two cells weighs most; a cell far from the cross gets wc only
    assert t.weight[0][19, 5] > 5 * t.weight[0][5, 5]
    assert t.weight[0][5, 5] == pytest.approx(1600 / (2 * (1600 - 156)))


def test_dense_regions_of_each_class_are_separate_objects():
    lab = np.zeros((30, 30), np.uint8)
    lab[2:14, 2:28] = 1
    lab[16:28, 2:28] = 2  # two classes facing each other across a 2-px background gap
    t = training_targets(lab[None], "dense", w0=10, sigma=3, balance=False)
    gap = t.weight[0][14:16, 10:20]
    assert gap.min() > 5.0 and t.weight[0][8, 15] == 1.0


def test_sparse_strokes_get_the_class_balance_only():
    lab = np.zeros((2, 30, 30), np.uint8)
    lab[0, 5, 2:17] = 1  # 15 px of class 0 on slice 0
    lab[1, 20, 0:30] = 2  # 30 px of class 1 on slice 1: balanced over the stack
    t = training_targets(lab, "sparse", w0=10, sigma=5)
    w = t.weight
    assert (w[lab == 0] == 0).all()
    np.testing.assert_allclose(w[0, 5, 2:17], 45 / (2 * 15))
    np.testing.assert_allclose(w[1, 20], 45 / (2 * 30))
    off = training_targets(lab, "sparse", balance=False)
    np.testing.assert_array_equal(off.weight, (lab > 0).astype(np.float32))
    # one slice alone (what the preview computes) equals the stack-wide computation
    one = training_targets(lab, "sparse", slices=[1])
    np.testing.assert_array_equal(one.weight[1], w[1])
    assert not one.weight[0].any()


def test_instances_weights_see_the_separated_objects():
    inst = np.zeros((40, 40), np.int32)
    inst[8:32, 4:20] = 1
    inst[8:32, 20:36] = 2
    t = training_targets(inst[None], "instances", w0=10, sigma=5)
    target = instance_targets(inst)
    np.testing.assert_array_equal(t.target[0], target)
    np.testing.assert_allclose(t.weight[0], weight_map(np.where(target > 0, inst, 0)),
                               rtol=1e-6)


def test_class_balance_mean_is_one_and_ignores_unlabelled():
    target = np.array([[0, 0, 0, 1], [-1, -1, 1, 0]], np.int16)
    wc = class_balance(target, 2)
    assert wc[target < 0].sum() == 0
    assert wc[target >= 0].mean() == pytest.approx(1.0)
    assert wc[0, 0] == pytest.approx(6 / (2 * 4)) and wc[0, 3] == pytest.approx(6 / (2 * 2))


def test_no_weights_when_switched_off():
    lab = _membranes()
    assert training_targets(lab[None], "dense", weights=False).weight is None
    d = prepare_data(lab.astype(np.float32), lab, labels_mode="dense", val_fraction=0,
                     weights=False)
    assert d.weight is None


def _first_loss(train_cfg: TrainConfig, mode: str, labels: np.ndarray) -> float:
    image = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    cfg = ModelConfig(depth=2, width=4, classes=2)
    gen = train(image, labels, cfg, train_cfg, labels_mode=mode)
    first = next(gen)
    gen.close()
    return first.loss


@pytest.mark.parametrize("mode", ["dense", "instances"])
def test_trainer_uses_the_weight_map(mode):
    lab = _membranes() if mode == "dense" else ndi.label(_membranes() > 0)[0]
    base = {"iterations": 2, "batch_size": 2, "patch_size": 32, "device": "cpu",
            "val_fraction": 0.0, "log_every": 1, "amp": False}
    flat = TrainConfig(**base, w0=0.0, class_balance=False)
    weighted = TrainConfig(**base)
    assert _first_loss(weighted, mode, lab) != pytest.approx(_first_loss(flat, mode, lab),
                                                             rel=1e-3)
    assert _first_loss(TrainConfig(**base, loss="ce"), mode, lab) == pytest.approx(
        _first_loss(flat, mode, lab), rel=1e-6)


def test_instances_with_a_loss_that_ignores_weights_warns(caplog):
    lab = ndi.label(_membranes() > 0)[0]
    cfg = TrainConfig(iterations=1, batch_size=1, patch_size=32, device="cpu", loss="dice",
                      val_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="napari_unetseg.training"):
        train(np.zeros(lab.shape, np.float32), lab, ModelConfig(depth=2, width=4), cfg,
              labels_mode="instances").close()
    assert "ignores the U-Net weight map" in caplog.text


def test_weight_of_one_makes_wce_plain_cross_entropy():
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    from napari_unetseg.losses import make_loss

    assert make_loss("wce")(logits, target, torch.ones(2, 8, 8)).item() == pytest.approx(
        make_loss("ce")(logits, target).item())


def test_live_relabel_makes_the_same_weights_as_a_fresh_start():
    from napari_unetseg.data import relabel

    image = np.random.default_rng(0).random((2, 30, 30)).astype(np.float32)
    lab = np.zeros((2, 30, 30), np.uint8)
    lab[0, 5, 2:17] = 1
    lab[1, 20, 0:30] = 2
    d = prepare_data(image, lab, val_fraction=0)
    more = lab.copy()
    more[0, 10, :] = 2  # new strokes change the class counts, so the balance
    d2 = relabel(d, more, val_fraction=0)
    np.testing.assert_array_equal(d2.weight, training_targets(more, "sparse").weight)
    flat = relabel(prepare_data(image, lab, val_fraction=0, weights=False), more,
                   val_fraction=0)
    assert flat.weight is None
