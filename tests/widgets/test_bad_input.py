"""Bad input becomes a napari notification; nothing is raised and no layer is made."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg._widgets import _live
from napari_unetseg._widgets.levels import LevelsWidget
from napari_unetseg._widgets.segment import SegmentWidget
from napari_unetseg._widgets.train import TrainWidget


@pytest.fixture
def bare(make_napari_viewer):
    v = make_napari_viewer()
    v.add_image(np.random.default_rng(0).random((2, 64, 64), dtype=np.float32), name="img")
    return v


def _errors(notes):
    return [text for kind, text in notes if kind == "error"]


@pytest.mark.parametrize(
    ("labels", "rgb", "expected"),
    [
        (None, False, "choose an image layer and a labels layer"),
        (np.zeros((2, 64, 64), np.uint8), False, "no painted pixel"),
        (np.ones((2, 64, 64), np.uint8), False, "single class"),
        (np.ones((2, 32, 32), np.uint8), False, "must match"),
        (np.ones((64, 64), np.uint8), True, "RGB"),
    ],
    ids=["no-labels", "nothing-painted", "one-class", "shape-mismatch", "rgb"],
)
def test_train_refuses_bad_input(bare, notes, labels, rgb, expected):
    if rgb:
        bare.layers.clear()
        bare.add_image(np.zeros((64, 64, 3), np.uint8), name="rgb", rgb=True)
    if labels is not None:
        bare.add_labels(labels, name="labels")
    w = TrainWidget(bare)
    n_layers = len(bare.layers)
    assert w.start() is None
    assert any(expected in text for text in _errors(notes)), notes
    assert len(bare.layers) == n_layers and w.job is None and w.train_button.isEnabled()


def test_segment_and_levels_without_model(bare, notes):
    seg, lv = SegmentWidget(bare), LevelsWidget(bare)
    assert seg.start() is None
    lv.apply()
    errors = _errors(notes)
    assert any("no model yet" in text for text in errors)
    assert any("no UNet++ model" in text for text in errors)
    assert not lv.slider.isEnabled() and "only for UNet++" in lv.status.text()
    assert len(bare.layers) == 1


def test_worker_error_is_one_notification(bare, notes, wait_job, monkeypatch):
    bare.add_labels(np.tile(np.array([1, 2], np.uint8), (2, 64, 32)), name="labels")

    def broken(*args, **kwargs):
        raise ValueError("labels give 3 classes but the model has 2")

    monkeypatch.setattr(_live, "train", broken)  # the live loop calls the core's train()
    w = TrainWidget(bare)
    w.form.device.setCurrentText("cpu")
    w.form.labels_mode.setCurrentIndex(1)  # dense: these labels cover every pixel
    assert w.start() is not None
    wait_job(w)
    errors = _errors(notes)
    assert errors == ["Training failed: labels give 3 classes but the model has 2"]
    assert w.saved is None and w.train_button.isEnabled() and "failed" in w.status.text()
