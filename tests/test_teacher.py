"""The random-forest teacher: sure pixels of a forest fitted on the strokes, under the strokes
and over the network's own pseudo labels, refitted after new strokes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import napari_unetseg.teacher as teacher_mod
from napari_unetseg.augment import AugmentConfig
from napari_unetseg.config import ModelConfig
from napari_unetseg.data import IGNORE, prepare_data
from napari_unetseg.selftrain import PseudoLabels
from napari_unetseg.teacher import ForestTeacher
from napari_unetseg.training import TrainConfig, fit, train

TINY = ModelConfig(depth=2, width=4)


@pytest.fixture(scope="module")
def blobs():
    """Bright disks (class 2) on a dark noisy background (class 1), 4 slices of 64x64, and
    strokes on slice 0 only: a line across a disk and one across the background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    truth = np.zeros((4, 64, 64), np.uint8)
    for z in range(4):
        for cy, cx in ((16 + 2 * z, 16), (44, 40 - 3 * z), (20, 48)):
            truth[z][(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
    image = (truth * 120 + 60 + rng.normal(0, 12, truth.shape)).clip(0, 255).astype(np.uint8)
    strokes = np.zeros_like(truth)
    strokes[0, 15:18, 11:22] = 2  # inside the disk at (16, 16)
    strokes[0, 4:7, 2:30] = 1  # background above it
    strokes[0, 56:59, 5:60] = 1
    return image, strokes, truth + 1


def test_forest_labels_the_sure_pixels_of_the_painted_slice_then_others(blobs):
    image, strokes, truth = blobs
    data = prepare_data(image, strokes, val_fraction=0)
    t = ForestTeacher(slices=3, confidence=0.8, seed=0)
    assert t.pick(data) == [0, 1, 3]  # painted, then evenly spread others
    out = t.targets(data)
    assert sorted(out) == [0, 1, 3] and t.fits == 1
    for z, target in out.items():
        sure = target != IGNORE
        assert sure.mean() > 0.5  # most pixels of these easy slices
        # class indices (0: background, 1: disk) agree with the truth where sure
        agree = (target[sure] + 1) == truth[z][sure]
        assert agree.mean() > 0.97
    strict = ForestTeacher(slices=3, confidence=1.0, seed=0).targets(data)
    assert sum((v != IGNORE).sum() for v in strict.values()) < sum(
        (v != IGNORE).sum() for v in out.values())


def test_forest_needs_two_painted_classes_and_predicts_a_window_of_big_slices(blobs,
                                                                              monkeypatch):
    image, strokes, _ = blobs
    data = prepare_data(image, strokes, val_fraction=0)
    one = np.where(data.train_target == 1, 1, IGNORE).astype(np.int16)
    assert ForestTeacher().targets(replace(data, train_target=one)) == {}
    monkeypatch.setattr(teacher_mod, "WINDOW", 16)
    out = ForestTeacher(slices=1).targets(data)
    rows, cols = np.nonzero(out[0] != IGNORE)
    assert len(rows) and np.ptp(rows) < 16 and np.ptp(cols) < 16


def test_refit_only_after_new_strokes_and_not_within_refit_s(blobs):
    image, strokes, _ = blobs
    data = prepare_data(image, strokes, val_fraction=0)
    t = ForestTeacher()
    assert t.due(data, 0.0)
    t.targets(data, 0.0)
    assert not t.due(data, 1000.0)  # the same strokes: never again
    newer = prepare_data(image, strokes, val_fraction=0)
    assert not t.due(newer, teacher_mod.REFIT_S - 1)
    assert t.due(newer, teacher_mod.REFIT_S)


def test_strokes_win_over_the_teacher_and_the_teacher_over_the_network(blobs):
    image, strokes, _ = blobs
    data = prepare_data(image, strokes, val_fraction=0)
    p = PseudoLabels(10.0, 2, 0.5)
    p.taught = {0: np.full(data.train_target[0].shape, 1, np.int16)}  # "disk" everywhere
    p.targets = {0: np.full(data.train_target[0].shape, 0, np.int16),
                 1: np.full(data.train_target[1].shape, 0, np.int16)}
    out = p.apply(data)
    painted = data.train_target[0] >= 0
    assert np.array_equal(out.train_target[0][painted], data.train_target[0][painted])
    assert (out.train_target[0][~painted] == 1).all()  # the teacher, not the network
    assert (out.train_target[1] == 0).all()  # the network where the teacher said nothing
    assert p.pick(prepare_data(image, strokes, val_fraction=0)) == [0, 1]
    p.taught = {2: p.taught[0]}  # a taught slice counts as painted
    assert p.pick(data)[:2] == [0, 2]


def test_training_with_the_forest_trains_on_its_labels_and_counts_its_time(blobs):
    image, strokes, _ = blobs
    cfg = TrainConfig(iterations=3, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), teacher="forest", teacher_slices=2,
                      log_every=1)
    run = train(image, strokes, TINY, cfg)
    events = []
    try:
        while True:
            events.append(next(run))
    except StopIteration as done:
        res = done.value
    assert ((run.data.train_target >= 0) & (strokes == 0)).any()
    assert (run.data.train_target[1] >= 0).any()  # a slice nobody painted
    assert res.metadata["teacher_fits"] == 1 and res.metadata["teacher_pixels"] > 0
    assert events[0].elapsed_s >= res.metadata["teacher_s"] > 0  # the fit is on the clock
    off = fit(image, strokes, TINY, TrainConfig(**{**cfg.to_dict(), "teacher": "none",
                                                   "augment": AugmentConfig.off()}))
    assert "teacher_fits" not in off.metadata and off.metadata["pseudo_rounds"] == 0
    light = train(image, strokes, TINY, TrainConfig(**{**cfg.to_dict(), "teacher_weight": 0.25,
                                                       "augment": AugmentConfig.off()}))
    next(light)
    taught = (light.data.train_target[1] >= 0)  # slice 1: the teacher's targets only
    assert taught.any()
    for k in (0, 1):  # a quarter of what the full-weight run gives the same class
        mine = light.data.weight[1][taught & (light.data.train_target[1] == k)]
        full = run.data.weight[1][(run.data.train_target[1] == k)]
        assert np.allclose(mine, 0.25 * full.max()) and np.allclose(full, full.max())
    light.close()


def _fits_with_new_strokes(blobs, clock):
    """Teacher fits of an 8-step run whose strokes change after its first event, and the
    run."""
    image, strokes, _ = blobs
    cfg = TrainConfig(iterations=8, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), teacher="forest", teacher_slices=1,
                      log_every=1)
    run = train(image, strokes, TINY, cfg, clock=clock)
    next(run)
    more = strokes.copy()
    more[2, 40:43, 30:50] = 1
    run.update_labels(more)
    try:
        while True:
            next(run)
    except StopIteration as done:
        return done.value.metadata["teacher_fits"], run


def test_new_strokes_refit_the_forest(blobs):
    n = [0.0]

    def clock() -> float:  # 10 fake seconds per reading
        n[0] += 10.0
        return n[0]

    assert _fits_with_new_strokes(blobs, clock)[0] == 2


def test_dense_labels_have_no_teacher(blobs):
    image, _, truth = blobs
    cfg = TrainConfig(iterations=2, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), teacher="forest")
    res = fit(image, truth, TINY, cfg, labels_mode="dense")
    assert "teacher_fits" not in res.metadata


def test_config_and_presets():
    from napari_unetseg.presets import preset, split

    with pytest.raises(ValueError, match="teacher"):
        TrainConfig(teacher="rf")
    with pytest.raises(ValueError, match="teacher_confidence"):
        TrainConfig(teacher_confidence=0.2)
    with pytest.raises(ValueError, match="teacher_weight"):
        TrainConfig(teacher_weight=1.5)
    assert split(preset("fast"))[1]["teacher"] == "forest"
    for other in ("paper", "wide", "resunet-em"):
        assert split(preset(other))[1].get("teacher", "none") == "none"


def test_the_teachers_targets_weigh_what_the_strokes_of_their_class_weigh(blobs):
    image, strokes, _ = blobs
    data = prepare_data(image, strokes, val_fraction=0)  # weights: the class balance
    painted = data.train_target >= 0
    counts = np.bincount(data.train_target[painted], minlength=2)
    assert counts[0] != counts[1]  # the strokes' balance weighs the classes differently
    taught = np.full(data.train_target[1].shape, IGNORE, np.int16)
    taught[:, :48] = 0  # 3 times as many pixels of class 0 as of class 1
    taught[:, 48:] = 1
    p = PseudoLabels(10.0, 2, 0.5)
    p.taught = {1: taught}
    out = p.apply(data)
    lab = out.train_target >= 0
    for k in (0, 1):  # each target of class k weighs n / (2 n_k), n_k counted on the strokes
        want = counts.sum() / (2 * counts[k])
        assert np.allclose(out.weight[lab & (out.train_target == k)], want, rtol=1e-5)
    assert np.allclose(out.weight[painted], data.weight[painted])  # the strokes keep theirs
    assert out.weight[painted].mean() == pytest.approx(1.0, rel=1e-4)
    flat = PseudoLabels(10.0, 2, 0.5, balance=False)
    flat.taught = {1: taught}
    out = flat.apply(data)
    assert (out.weight[1][taught >= 0] == 1.0).all()
    painted = data.train_target >= 0
    assert np.array_equal(out.weight[painted], data.weight[painted])  # the strokes keep theirs
    light = PseudoLabels(10.0, 2, 0.5, taught_weight=0.1)  # the strokes overrule the teacher
    light.taught = {1: taught}
    out = light.apply(data)
    for k in (0, 1):
        want = 0.1 * counts.sum() / (2 * counts[k])
        assert np.allclose(out.weight[1][taught == k], want, rtol=1e-5)
    assert np.allclose(out.weight[painted], data.weight[painted])


def test_painted_features_by_tiles_match_the_whole_slice(monkeypatch):
    rng = np.random.default_rng(1)
    plane = rng.normal(size=(1, 150, 170)).astype(np.float32)
    target = np.full((150, 170), IGNORE, np.int16)
    target[10:20, 5:160] = 0
    target[140, 30] = target[60:70, 100] = 1
    painted = target >= 0
    whole = teacher_mod.features(plane)[painted]
    monkeypatch.setattr(teacher_mod, "TILE", 64)
    x, y = teacher_mod.painted_features(plane, target)
    assert x.shape == whole.shape and (np.bincount(y) == np.bincount(target[painted])).all()
    # each pixel's features with its class, as computed on the whole slice (64-px halo)
    for k in (0, 1):
        mine = np.sort(x[y == k], axis=0)
        theirs = np.sort(whole[target[painted] == k], axis=0)
        np.testing.assert_allclose(mine, theirs, atol=1e-3)


def test_the_forest_does_not_warn_per_tree():
    import warnings

    from sklearn.ensemble import RandomForestClassifier

    x = np.random.default_rng(0).random((300, 4))
    y = (x[:, 0] > 0.5).astype(int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()  # no filters: scikit-learn's workers then warn per tree
        with teacher_mod._quiet():
            RandomForestClassifier(10, n_jobs=-1).fit(x, y).predict_proba(x)
    assert not [w for w in caught if "sklearn" in str(w.message)]


def test_training_from_a_model_has_no_teacher(blobs):
    image, strokes, _ = blobs
    cfg = TrainConfig(iterations=2, batch_size=2, patch_size=32, device="cpu", val_fraction=0,
                      augment=AugmentConfig.off(), teacher="forest")
    first = fit(image, strokes, TINY, cfg)
    assert first.metadata["teacher_fits"] == 1
    again = fit(image, strokes, TINY, cfg, init=first)  # e.g. the bundled model
    assert "teacher_fits" not in again.metadata
    resumed = fit(image, strokes, TINY, cfg, resume=first)  # going on: the teacher too
    assert resumed.metadata["teacher_fits"] == 1


def test_a_slow_forest_is_not_refitted_at_once(blobs, monkeypatch):
    """New strokes refit the forest REFIT_S after the last fit, but after a fit that took
    ``c`` seconds not before ROUND_SPACING * c more: a slow fit leaves time to train."""
    n = [0.0]

    def clock() -> float:  # 1 fake second per reading
        n[0] += 1.0
        return n[0]

    fit_targets = ForestTeacher._targets

    def slow(self, *args, **kwargs):  # each fit takes 100 fake seconds
        n[0] += 100.0
        return fit_targets(self, *args, **kwargs)

    monkeypatch.setattr(ForestTeacher, "_targets", slow)
    fits, run = _fits_with_new_strokes(blobs, clock)
    assert fits == 1  # REFIT_S (20 s) passed, but not 200 s more
    assert run.forest.not_before_s > run.forest.last_s + 200
