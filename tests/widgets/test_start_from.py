"""Train's "start from" choice reaches the trainer; Segment uses the bundled model untrained."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg.bundled import bundled_path, is_bundled

pytestmark = pytest.mark.gui


@pytest.fixture
def spy_train(monkeypatch):
    """The ``init`` and model config every training the Train widget starts receives."""
    from napari_unetseg._widgets import _live

    seen = []
    real = _live.train

    def spy(image, labels, model_config, train_config, **kw):
        seen.append((kw.get("init"), model_config))
        return real(image, labels, model_config, train_config, **kw)

    monkeypatch.setattr(_live, "train", spy)
    return seen


def test_start_from_the_current_model(train_tiny, spy_train, wait_job, notes):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    train.form.start_from.setCurrentText("current model (loaded or trained)")
    assert train.start() is None  # nothing trained or loaded yet: one message, no job
    assert notes and "no current model" in notes[-1][1] and not spy_train
    train.form.start_from.setCurrentText("scratch (random weights)")
    train.start()
    wait_job(train)
    first = train.saved
    assert spy_train[-1][0] is None and first is not None
    train.form.start_from.setCurrentText("current model (loaded or trained)")
    train.form.width.setValue(8)  # ignored: the network is the starting model's
    train.start()
    wait_job(train)
    init, cfg = spy_train[-1]
    assert init is first and cfg == first.config
    assert train.result.metadata["init"] == "SavedModel"


@pytest.mark.skipif(not bundled_path().exists(), reason="the bundled model file is missing")
def test_start_from_bundled_trains_its_architecture(train_tiny, spy_train, wait_job):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    train.form.start_from.setCurrentText("bundled EM membranes")
    train.start()
    wait_job(train, timeout=60_000)
    init, cfg = spy_train[-1]
    assert is_bundled(init) and cfg == init.config and cfg.width != train.form.width.value()
    assert train.result.metadata["init"] == "SavedModel" and train.saved is not None
    assert train.result.metadata["init_class_order"] == [0, 1]  # 1 = membrane, as ISBI's 0


@pytest.mark.skipif(not bundled_path().exists(), reason="the bundled model file is missing")
def test_segment_with_the_bundled_model_untrained(viewer, image, gt, dock, wait_job, click):
    seg = dock("Segment")
    seg.image_picker.set_layer(image.name)
    seg.device.setCurrentText("cpu")
    click(seg.bundled_button)
    assert is_bundled(seg.store.saved) and "bundled" in seg.model_label.text()
    seg.scope.setCurrentText("current slice")
    seg.start()
    wait_job(seg, timeout=60_000)
    out = np.asarray(viewer.layers[f"{image.name} segmentation"].data)[0]
    truth = np.asarray(gt.data)[0]  # 1 = membrane, 2 = cell
    pred_membrane, true_membrane = out == 0, truth == 1
    dice = 2 * (pred_membrane & true_membrane).sum() / (pred_membrane.sum() + true_membrane.sum())
    assert dice > 0.6  # a random-weight network stays below 0.45 here (test_bundled.py)


def test_learning_rate_follows_start_from(qtbot):
    """A preset's learning rate is 1e-4 from a model (Adam) and the preset's from scratch,
    without turning the preset into "custom"; a learning rate the user set stays."""
    from napari_unetseg._widgets._train_form import TrainForm
    from napari_unetseg.finetune import FINETUNE_LR

    form = TrainForm()
    qtbot.addWidget(form)
    form.preset.setCurrentText("fast, CPU friendly")
    scratch_lr = form.lr.value()
    assert scratch_lr == pytest.approx(1e-3)
    form.start_from.setCurrentText("bundled EM membranes")
    assert form.train_config().lr == pytest.approx(FINETUNE_LR)
    assert form.preset.currentText() == "fast, CPU friendly"
    form.iterations.setValue(form.iterations.value())  # a no-op edit keeps the preset
    assert form.preset.currentText() == "fast, CPU friendly"
    form.start_from.setCurrentText("scratch (random weights)")
    assert form.train_config().lr == pytest.approx(scratch_lr)
    form.preset.setCurrentText("paper (Ronneberger 2015)")  # SGD keeps its own rate
    paper_lr = form.lr.value()
    form.start_from.setCurrentText("current model (loaded or trained)")
    assert form.lr.value() == pytest.approx(paper_lr)
    form.preset.setCurrentText("fast, CPU friendly")
    assert form.lr.value() == pytest.approx(FINETUNE_LR)  # the preset, from a model
    form.lr.setValue(5e-4)
    assert form.preset.currentText() == "custom"
    form.start_from.setCurrentText("scratch (random weights)")
    assert form.lr.value() == pytest.approx(5e-4)
