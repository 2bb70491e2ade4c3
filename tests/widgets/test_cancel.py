"""Cancel: training keeps its best model so far, segmentation leaves no half-made layer."""

from __future__ import annotations

import time

import numpy as np

from napari_unetseg._widgets import segment as segment_module
from napari_unetseg._widgets._registry import store_for


def test_cancel_training_keeps_model(viewer, image, scribbles, dock, tiny, wait_job, click,
                                     qtbot, notes, train_tiny):
    train = train_tiny(arch="U-Net", iterations=100_000, preview_every=0)
    n_layers = len(viewer.layers)
    click(train.train_button)
    qtbot.waitUntil(lambda: bool(train.loss_plot.data["train"]), timeout=20_000)  # it is training
    assert train.cancel_button.isEnabled()
    click(train.cancel_button)
    wait_job(train, timeout=10_000)
    meta = train.saved.metadata
    assert meta["stopped"] and 0 < meta["steps"] < 100_000
    assert store_for(viewer).saved is train.saved
    assert "stopped after" in train.status.text()
    assert len(viewer.layers) == n_layers and not notes
    assert train.train_button.isEnabled()  # usable again


def test_cancel_segmentation_leaves_no_layer(viewer, image, scribbles, dock, tiny, wait_job,
                                             click, qtbot, monkeypatch, notes, train_tiny):
    train = train_tiny(arch="ResUNet", iterations=2, preview_every=0)
    click(train.train_button)
    wait_job(train)
    real = segment_module.segment

    def slow_segment(*args, **kwargs):  # the real inference, one tile at a time, slowly
        gen = real(*args, **kwargs)
        try:
            while True:
                event = next(gen)
                time.sleep(0.05)
                yield event
        except StopIteration as done:
            return done.value
        finally:
            gen.close()

    monkeypatch.setattr(segment_module, "segment", slow_segment)
    seg = dock("Segment")
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.tile.setValue(32)
    seg.batch.setValue(1)
    names = [layer.name for layer in viewer.layers]
    click(seg.run_button)
    qtbot.waitUntil(lambda: seg.job.bar is not None and seg.job.bar.n > 0, timeout=10_000)
    click(seg.cancel_button)
    wait_job(seg)
    assert seg.job.cancelled and seg.job.failed is None
    assert [layer.name for layer in viewer.layers] == names  # nothing half-made
    assert "cancelled" in seg.status.text()
    assert seg.run_button.isEnabled() and not notes
    # usable afterwards: a full run works
    monkeypatch.setattr(segment_module, "segment", real)
    seg.tile.setValue(128)
    click(seg.run_button)
    wait_job(seg)
    assert viewer.layers[f"{image.name} segmentation"].data.shape == (2, 128, 128)
    assert np.isin(viewer.layers[f"{image.name} segmentation"].data, [1, 2]).all()
