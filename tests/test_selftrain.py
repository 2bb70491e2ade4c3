"""Self-training: rounds on time, slices in turn, pseudo labels only where nothing is painted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.data import IGNORE, prepare_data
from napari_unetseg.models import build_model
from napari_unetseg.selftrain import PseudoLabels, confident
from napari_unetseg.strokes import membrane_strokes
from napari_unetseg.synthetic import membrane_labels, touching_cells
from napari_unetseg.training import TrainConfig, fit

TINY = ModelConfig(depth=2, width=4)


@pytest.fixture(scope="module")
def stack():
    image, inst = touching_cells((4, 48, 48), 8, seed=0)
    strokes = membrane_strokes(membrane_labels(inst), slices=(0,), n_strokes=8, length=10)
    return image, strokes


def test_pick_takes_painted_slices_then_the_others_in_turn(stack):
    image, strokes = stack
    data = prepare_data(image, strokes, val_fraction=0)
    p = PseudoLabels(10.0, 2, 0.9)
    assert [p.pick(data) for _ in range(4)] == [[0, 1], [0, 2], [0, 3], [0, 1]]


def test_pseudo_labels_fill_only_unpainted_pixels_and_follow_confidence(stack):
    image, strokes = stack
    data = prepare_data(image, strokes, val_fraction=0)
    model = build_model(TINY)
    p = PseudoLabels(10.0, 2, 0.5)  # two classes: every pixel has a class at >= 0.5
    p.apply(data)
    out = p.update(model, torch.device("cpu"), 12.0)
    assert p.rounds == 1 and p.next_s == 22.0 and not p.due(21.9) and p.due(22.0)
    painted = data.train_target >= 0
    assert np.array_equal(out.train_target[painted], data.train_target[painted])
    assert (out.train_target[:2] >= 0).all()  # slices 0 and 1 fully labelled
    assert (out.train_target[2:] == IGNORE).all() and out.train_slices == (0, 1)
    sure = PseudoLabels(10.0, 2, 1.0)  # nothing is that certain
    sure.apply(data)
    assert np.array_equal(sure.update(model, torch.device("cpu"), 0.0).train_target,
                          data.train_target)


def test_class_balanced_pseudo_labels_keep_the_surest_share_of_each_class():
    # class 0 predicted on 6 pixels (p 0.99, 0.98, 0.97, 0.96, 0.95, 0.6), class 1 on 2 (0.9, 0.7)
    p1 = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.4, 0.9, 0.7], np.float32)
    probs = np.stack([1 - p1, p1])[None, :, None, :]  # (N=1, K=2, H=1, W=8)
    cls, sure = confident(probs, 0.5)
    assert cls.tolist() == [[[0, 0, 0, 0, 0, 0, 1, 1]]] and sure.all()
    _, half = confident(probs, 0.5, portion=0.5)  # the surer half of each class
    assert half[0, 0].tolist() == [True, True, True, False, False, False, True, False]
    _, both = confident(probs, 0.95, portion=0.5)  # and the confidence floor still holds
    assert both[0, 0].tolist() == [True, True, True, False, False, False, False, False]


def test_pseudo_labels_count_in_a_weighted_loss(stack):
    image, strokes = stack
    data = prepare_data(image, strokes, val_fraction=0, weights=True)
    assert data.weight is not None and (data.weight[data.train_target == IGNORE] == 0).all()
    p = PseudoLabels(10.0, 2, 0.5)
    p.apply(data)
    out = p.update(build_model(TINY), torch.device("cpu"), 0.0)
    pseudo = (out.train_target >= 0) & (data.train_target == IGNORE)
    assert pseudo.any() and (out.weight[pseudo] == 1.0).all()
    painted = data.train_target >= 0
    assert np.array_equal(out.weight[painted], data.weight[painted])
    assert (out.weight[out.train_target == IGNORE] == 0).all()


def test_pseudo_labels_never_cover_validation_strokes(stack):
    image, strokes = stack
    data = prepare_data(image, strokes, val_fraction=0.3, seed=1)
    assert data.val_target is not None and (data.val_target >= 0).any()
    p = PseudoLabels(1.0, 1, 0.5)
    p.apply(data)
    out = p.update(build_model(TINY), torch.device("cpu"), 0.0)
    held = data.val_target >= 0
    assert (out.train_target[held] == IGNORE).all()
    assert np.array_equal(out.val_target, data.val_target)


def test_training_runs_rounds_on_its_clock(stack):
    image, strokes = stack
    n = [0]

    def stop() -> bool:  # one fake second per loop turn
        n[0] += 1
        return False

    cfg = TrainConfig(iterations=9, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), self_training_s=3.0, pseudo_slices=2)
    res = fit(image, strokes, TINY, cfg, stop=stop, clock=lambda: float(n[0]))
    assert res.metadata["pseudo_rounds"] == 3  # at 3, 6 and 9 s
    off = fit(image, strokes, TINY, TrainConfig(**{**cfg.to_dict(), "self_training_s": 0.0,
                                                   "augment": AugmentConfig.off()}))
    assert off.metadata["pseudo_rounds"] == 0
    # dense labels leave no pixel to fill: no rounds (no time spent predicting)
    n[0] = 0
    dense = membrane_labels(touching_cells((4, 48, 48), 8, seed=0)[1]) + 1
    res = fit(image, dense, TINY, cfg, labels_mode="dense", stop=stop,
              clock=lambda: float(n[0]))
    assert res.metadata["pseudo_rounds"] == 0


def test_a_slow_round_leaves_time_to_train(stack, monkeypatch):
    """A round slower than its period (a slow CPU, big slices) does not come after every
    step: the next one waits ROUND_SPACING times as long as the last one took."""
    from napari_unetseg.training import ROUND_SPACING

    image, strokes = stack
    n = [0.0]

    def stop() -> bool:  # one fake second per loop turn
        n[0] += 1
        return False

    update = PseudoLabels.update

    def slow(self, *args, **kwargs):  # each round takes 10 fake seconds
        n[0] += 10
        return update(self, *args, **kwargs)

    monkeypatch.setattr(PseudoLabels, "update", slow)
    cfg = TrainConfig(iterations=30, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), self_training_s=3.0, pseudo_slices=2)
    res = fit(image, strokes, TINY, cfg, stop=stop, clock=lambda: n[0])
    # rounds at turn 3 (3 s -> 13 s), then not before 13 + 2 * 10 = 33 s (turn 23, -> 43 s)
    assert ROUND_SPACING == 2.0
    assert res.metadata["pseudo_rounds"] == 2  # without the spacing: a round every turn


def test_training_takes_the_class_balanced_share_of_pseudo_labels(stack, monkeypatch):
    import napari_unetseg.selftrain as selftrain
    from napari_unetseg.training import train

    image, strokes = stack
    seen = []

    def spy(probs, confidence, portion=1.0):
        seen.append((confidence, portion))
        return confident(probs, confidence, portion)

    monkeypatch.setattr(selftrain, "confident", spy)
    n = [0]

    def clock() -> float:
        n[0] += 1
        return float(n[0])

    cfg = TrainConfig(iterations=2, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), self_training_s=1.0, pseudo_slices=2,
                      pseudo_confidence=0.5, pseudo_portion=0.25)
    run = train(image, strokes, TINY, cfg, clock=clock)
    for _ in run:
        pass
    assert seen and set(seen) == {(0.5, 0.25)}
    assert ((run.data.train_target >= 0) & (strokes == 0)).any()  # the round's labels are used


def test_fast_preset_trains_strokes_with_features_and_self_training():
    """The loop's defaults (docs/performance.md): what the CLI, the widget and the
    benchmark's "scribbles" recipe take from the fast preset."""
    from napari_unetseg.presets import preset, split

    model_kw, train_kw = split(preset("fast"))
    assert model_kw["features"] == "multiscale" and train_kw["self_training_s"] == 20.0
    assert train_kw["bn_momentum"] == 0.5
    # class-balanced pseudo labels: the surer half of each class (no drift to one class)
    assert (train_kw["pseudo_portion"], train_kw["pseudo_confidence"]) == (0.5, 0.5)
    for other in ("paper", "wide", "resunet-em"):
        model_kw, train_kw = split(preset(other))
        assert model_kw.get("features", "none") == "none"
        assert train_kw.get("self_training_s", 0.0) == 0.0


def test_config_bounds():
    with pytest.raises(ValueError, match="pseudo_confidence"):
        TrainConfig(pseudo_confidence=0.3)
    with pytest.raises(ValueError, match="self_training_s"):
        TrainConfig(self_training_s=-1.0)
    with pytest.raises(ValueError, match="pseudo_portion"):
        TrainConfig(pseudo_portion=0.0)
