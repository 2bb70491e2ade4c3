"""The live loop: paint while Train runs; the preview follows the slice and leaves the brush
where it was; Stop keeps the best model."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from napari_unetseg import training
from napari_unetseg._widgets import _live
from napari_unetseg._widgets._train_form import TrainForm

FOREVER = 100_000


def _running(train, qtbot, steps=2):
    """Wait until the run exists and has made ``steps`` steps."""
    qtbot.waitUntil(lambda: train.live is not None and train.live.run is not None
                    and len(train.loss_plot.data["train"]) >= steps, timeout=30_000)
    return train.live.run


def test_strokes_painted_mid_training_enter_the_training_set(viewer, scribbles, train_tiny,
                                                             click, qtbot, wait_job, notes):
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0)
    train.form.teacher.setChecked(False)  # its targets fill unpainted pixels (test_teacher.py)
    viewer.layers.selection.active = scribbles
    click(train.train_button)
    run = _running(train, qtbot)
    assert run.labels.version == 0 and (run.data.train_target[0, 40:48, 64] < 0).all()
    # paint label 1 in an unlabelled region of slice 0 and erase the strokes of slice 1's corner
    scribbles.brush_size = 3
    painted_at = time.perf_counter()
    for y in range(40, 48):
        scribbles.paint((0, y, 64), 1)
    viewer.dims.set_current_step(0, 1)
    scribbles.paint((1, 3, 3), 0)
    scribbles.brush_size = 20
    scribbles.paint((1, 100, 100), 0)
    qtbot.waitUntil(lambda: run.labels.version >= 1 and not scribbles.data[1, 96:104, 96:104].any()
                    and (run.data.train_target[1, 96:104, 96:104] < 0).all(), timeout=20_000)
    took = time.perf_counter() - painted_at
    target, val = run.data.train_target, run.data.val_target
    assert (np.maximum(target, val)[0, 40:48, 64] == 0).all()  # class index 0 = label 1
    # training or validation strokes (held out whole) are exactly what the layer holds now
    assert np.array_equal(np.maximum(target, val) >= 0, np.asarray(scribbles.data) > 0)
    assert set(run.data.train_slices) | set(run.data.val_slices) == {0, 1}
    # a label the model has no class for is reported, and training goes on with the old strokes
    version = run.labels.version
    viewer.dims.set_current_step(0, 0)
    scribbles.paint((0, 20, 20), 3)
    qtbot.waitUntil(lambda: run.labels.problem is not None, timeout=20_000)
    qtbot.waitUntil(lambda: "label 3 is new" in train.status.text(), timeout=20_000)
    assert run.labels.version == version and train.job.running
    click(train.cancel_button)
    wait_job(train)
    assert train.saved is not None and train.saved.metadata["labels_updates"] == version
    assert not notes and took < 20


def test_the_feed_is_debounced_and_sends_only_changes(viewer, scribbles, qtbot):
    from qtpy.QtWidgets import QWidget

    from napari_unetseg._widgets._common import Subscriptions

    owner = QWidget()
    qtbot.addWidget(owner)
    sent = []
    feed = _live.LabelsFeed(Subscriptions(owner), sent.append, owner)
    feed.watch(scribbles)
    assert feed.timer.interval() <= 500  # painted strokes reach the run within a second
    for y in range(10, 20):
        scribbles.paint((0, y, 30), 2)
    assert not sent  # still painting
    qtbot.waitUntil(lambda: len(sent) == 1, timeout=5_000)
    assert (sent[0][0, 10:20, 30] == 2).all() and sent[0] is not scribbles.data
    scribbles.undo()
    qtbot.waitUntil(lambda: len(sent) == 2, timeout=5_000)
    np.testing.assert_array_equal(sent[1], scribbles.data)
    scribbles.refresh()  # an event without a change sends nothing
    qtbot.wait(2 * _live.DEBOUNCE_MS)
    assert len(sent) == 2
    feed.watch(None)
    scribbles.paint((0, 50, 50), 1)
    qtbot.wait(2 * _live.DEBOUNCE_MS)
    assert len(sent) == 2


def test_preview_follows_the_slice_and_keeps_the_brush(viewer, image, scribbles, train_tiny,
                                                       click, qtbot, wait_job, monkeypatch):
    shown = []
    real = _live.show_preview
    monkeypatch.setattr("napari_unetseg._widgets.train.show_preview",
                        lambda *a: shown.append(a[-1]) or real(*a))
    train = train_tiny(arch="UNet++", iterations=FOREVER, preview_every=600)  # slice moves only
    viewer.layers.selection.active = scribbles
    scribbles.mode = "paint"
    click(train.train_button)
    preview = f"{image.name} preview"
    qtbot.waitUntil(lambda: preview in viewer.layers, timeout=30_000)
    layer = viewer.layers[preview]
    assert viewer.layers.selection.active is scribbles and set(viewer.layers.selection) == {
        scribbles}
    assert scribbles.mode == "paint"
    names = [lyr.name for lyr in viewer.layers]
    assert names.index(preview) == names.index(image.name) + 1  # under the strokes
    assert shown[-1].z == 0 and layer.data[0].any() and not layer.data[1].any()
    for mode in ("erase", "fill", "paint"):
        scribbles.mode = mode
        viewer.dims.set_current_step(0, 1 - viewer.dims.current_step[0])
        z = viewer.dims.current_step[0]
        qtbot.waitUntil(lambda z=z: shown[-1].z == z, timeout=20_000)  # long before 600 s
        qtbot.wait(50)
        assert layer.data[z].any() and not layer.data[1 - z].any()
        assert viewer.layers.selection.active is scribbles and scribbles.mode == mode
    click(train.cancel_button)
    wait_job(train)
    assert shown[-1].step == train.result.metadata["steps"]  # the kept model, previewed
    assert viewer.layers.selection.active is scribbles


def test_previews_come_every_few_seconds(viewer, image, scribbles, train_tiny, click, qtbot,
                                         wait_job, monkeypatch):
    stamps = []
    monkeypatch.setattr("napari_unetseg._widgets.train.show_preview",
                        lambda *a: stamps.append(time.perf_counter()))
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0.5)
    click(train.train_button)
    qtbot.waitUntil(lambda: len(stamps) >= 4, timeout=30_000)
    click(train.cancel_button)
    wait_job(train)
    gaps = np.diff(stamps[:4])
    assert (gaps >= 0.4).all() and len(train.loss_plot.data["train"]) > 4


def test_the_first_preview_is_the_forest_teachers_then_the_networks(
        viewer, image, gt, scribbles, train_tiny, click, qtbot, wait_job, monkeypatch):
    shown = []
    real = _live.show_preview
    monkeypatch.setattr("napari_unetseg._widgets.train.show_preview",
                        lambda *a: shown.append(a[-1]) or real(*a))
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0.5)
    assert train.form.teacher.isChecked()  # the fast preset's
    click(train.train_button)
    qtbot.waitUntil(lambda: len(shown) >= 3, timeout=30_000)
    click(train.cancel_button)
    wait_job(train)
    first = shown[0]
    assert first.by == "forest" and {p.by for p in shown[1:]} == {"network"}
    truth = np.asarray(gt.data[first.z])
    assert set(np.unique(first.labels)) == {1, 2} and (first.labels == truth).mean() > 0.7
    shown.clear()
    train.form.teacher.setChecked(False)  # no teacher: the network's from the start
    click(train.train_button)
    qtbot.waitUntil(lambda: len(shown) >= 1, timeout=30_000)
    click(train.cancel_button)
    wait_job(train)
    assert shown[0].by == "network"
    assert "teacher_fits" not in train.result.metadata


@pytest.fixture
def validate_often(monkeypatch):
    """Validate every 2 steps with scripted Dice values; remember the weights of the best."""
    real = TrainForm.train_config
    monkeypatch.setattr(TrainForm, "train_config",
                        lambda self: dataclasses.replace(real(self), val_every=2))
    dice = iter([0.3, 0.9, *[0.1] * FOREVER])
    kept = {}

    def evaluate(s, batches):
        d = next(dice)
        if d == 0.9:
            kept["state"] = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
        return 1.0, d

    monkeypatch.setattr(training, "_evaluate", evaluate)
    return kept


def test_stop_keeps_the_best_model(viewer, train_tiny, click, qtbot, wait_job, validate_often):
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0)
    click(train.train_button)
    qtbot.waitUntil(lambda: len(train.loss_plot.data["train"]) >= 8, timeout=30_000)
    click(train.cancel_button)
    wait_job(train)
    meta = train.saved.metadata
    assert meta["stopped"] and meta["steps"] >= 8
    assert meta["best_step"] == 4 and meta["best_val_dice"] == 0.9
    state = train.saved.model.state_dict()
    for key, value in validate_often["state"].items():
        torch.testing.assert_close(state[key], value, msg=key)
    assert "kept the best model (step 4" in train.status.text()


def test_a_time_budget_ends_training_on_time_and_the_status_counts_it(viewer, train_tiny, click,
                                                                       qtbot, wait_job):
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0)
    train.form.budget.setValue(2)
    assert train.form.train_config().time_budget_s == 2.0
    texts, set_text = [], train.status.setText
    train.status.setText = lambda text: texts.append(text) or set_text(text)
    click(train.train_button)
    assert train.job.bar.total == 2  # the progress bar counts seconds
    wait_job(train, timeout=60_000)
    assert any(" of 0:02 · " in text for text in texts)
    meta = train.saved.metadata
    assert meta["out_of_time"] and not meta["stopped"] and meta["steps"] < FOREVER
    train.form.budget.setValue(0)
    assert train.form.budget.text() == "no limit"
    assert train.form.train_config().time_budget_s is None


def test_status_text_says_what_is_left():
    event = training.TrainEvent(12, 0, 0.25, None, None, 8.0, 75.4, 1e-3, 30.0)
    assert _live.status_text(event) == "step 12 · loss 0.2500 · 1:15 left"
    text = _live.status_text(event, 0.8123, "strokes updated (2×)", budget_s=3700)
    assert text == ("step 12 · loss 0.2500 · val Dice 0.812 · 0:30 of 1:01:40 · 1:15 left · "
                    "strokes updated (2×)")


def test_moving_through_the_stack_leaves_time_to_train(monkeypatch):
    """A slice move is previewed at once only when the spacing allows: a user who scrolls
    through the stack must not turn every training step into a slow preview."""
    from napari_unetseg import ModelConfig

    spans = []

    def slow_preview(model, normalization, class_values, device, image, z, step):
        t = time.perf_counter()
        time.sleep(0.1)  # a UNet++ on a big slice, on a slow CPU
        spans.append((t, time.perf_counter(), step))
        return _live.Preview(step, z, np.zeros(image.shape[1:], np.uint8))

    monkeypatch.setattr(_live, "_preview", slow_preview)
    rng = np.random.default_rng(0)
    image = rng.random((2, 48, 48)).astype(np.float32)
    labels = np.zeros((2, 48, 48), np.uint8)
    labels[:, 10:14, :] = 1
    labels[:, 30:34, :] = 2
    moves = iter(range(FOREVER))
    live = _live.LiveTraining(
        image, labels, ModelConfig(depth=2, width=4),
        training.TrainConfig(iterations=60, patch_size=32, batch_size=2, device="cpu",
                             val_every=FOREVER),
        "sparse", stop=lambda: False, every_s=600.0, where=lambda: next(moves) % 2)
    events = live.events()
    while True:
        try:
            next(events)
        except StopIteration:
            break
    network = spans[:-1]  # the last one: the kept model, once the run ended
    assert len(network) >= 2  # it still follows the slice
    for (_, end, step), (start, _, next_step) in zip(network, network[1:], strict=False):
        assert start - end >= _live.PREVIEW_SPACING * 0.1 * 0.9
        assert next_step > step  # training went on between two previews
