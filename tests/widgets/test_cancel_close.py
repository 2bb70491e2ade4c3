"""Cancel at any moment, or close the viewer mid-run: the worker stops, nothing is raised, no
half-made layer appears, a model so far is kept, and model files on disk are untouched.

The moments are drawn from seeded generators (a number of progress events to wait for).
"""

from __future__ import annotations

import time

import numpy as np

from napari_unetseg import Normalization, build_model
from napari_unetseg._widgets import _files
from napari_unetseg._widgets import segment as segment_module
from napari_unetseg._widgets._registry import store_for
from napari_unetseg.config import ModelConfig
from napari_unetseg.io import SavedModel


def _names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def _slow(real, delay=0.03):
    """The real ``segment``, pausing after every batch of tiles so a cancel can land."""

    def slow_segment(*args, **kwargs):
        gen = real(*args, **kwargs)
        try:
            while True:
                try:
                    event = next(gen)
                except StopIteration as done:
                    return done.value
                time.sleep(delay)
                yield event
        finally:
            gen.close()

    return slow_segment


def test_cancel_training_at_random_moments(viewer, image, scribbles, dock, tiny, wait_job,
                                           click, qtbot, notes, train_tiny):
    train = train_tiny(arch="U-Net", iterations=100_000, preview_every=0)
    names = _names(viewer)
    kept = None
    for wait_for in np.random.default_rng(23).integers(0, 8, 4):
        click(train.train_button)
        qtbot.waitUntil(lambda n=int(wait_for): len(train.loss_plot.data["train"]) >= n,
                        timeout=20_000)
        click(train.cancel_button)
        wait_job(train, timeout=20_000)
        assert not notes and _names(viewer) == names and train.train_button.isEnabled()
        steps = len(train.loss_plot.data["train"])
        if train.status.text().startswith("cancelled before the first step"):
            assert steps == 0 and train.saved is kept  # the previous model stays
        else:
            meta = train.saved.metadata
            assert meta["stopped"] and wait_for <= meta["steps"] < 100_000
            assert store_for(viewer).saved is train.saved
            kept = train.saved


def test_cancel_segmentation_at_random_moments(viewer, image, dock, wait_job, click, qtbot,
                                               monkeypatch, notes):
    cfg = ModelConfig(arch="unet", depth=2, width=4, classes=2)
    store_for(viewer).set_model(SavedModel(build_model(cfg).eval(), cfg, Normalization.fit(
        image.data), [1, 2]), "test")
    seg = dock("Segment")
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.device.setCurrentText("cpu")
    seg.tile.setValue(32)
    seg.batch.setValue(2)
    click(seg.run_button)  # a finished run first: its layers must survive the cancels
    wait_job(seg)
    names = _names(viewer)
    before = {n: np.array(viewer.layers[n].data) for n in names}
    monkeypatch.setattr(segment_module, "segment", _slow(segment_module.segment))
    for wait_for in np.random.default_rng(29).integers(0, 12, 3):
        click(seg.run_button)
        qtbot.waitUntil(lambda n=int(wait_for): seg.job.bar is None or seg.job.bar.n >= n,
                        timeout=20_000)
        click(seg.cancel_button)
        wait_job(seg)
        assert seg.job.cancelled and seg.job.failed is None and not notes
        assert _names(viewer) == names and seg.run_button.isEnabled()
        for n in names:
            np.testing.assert_array_equal(viewer.layers[n].data, before[n])


def test_closing_the_viewer_mid_training(viewer, image, scribbles, dock, tiny, wait_job,
                                         click, qtbot, notes, tmp_path, monkeypatch, train_tiny):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    click(train.train_button)
    wait_job(train)
    target = tmp_path / "previous.unetseg"
    monkeypatch.setattr(_files, "ask_save_path", lambda parent: str(target))
    assert train.save_model() == target
    before = target.read_bytes()

    wait_for = int(np.random.default_rng(31).integers(1, 6))
    tiny(train, arch="U-Net", iterations=100_000, preview_every=0)
    click(train.train_button)
    qtbot.waitUntil(lambda: len(train.loss_plot.data["train"]) >= wait_for, timeout=20_000)
    job = train.job
    viewer.close()  # mid-run: the dock widget and its plots are deleted, the layers removed
    names = _names(viewer)
    qtbot.waitUntil(lambda: not job.worker.is_running and not job.running, timeout=20_000)
    assert job.cancelled and job.failed is None
    assert job._gen.gi_frame is None  # the training generator was closed, its finally ran
    qtbot.wait(200)  # late signals from the stopped worker reach no deleted widget
    assert _names(viewer) == names and not any("preview" in n for n in names)
    assert notes == [("info", f"Saved the model to {target}")]  # the save, before the run
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [
        target.name]


def test_closing_the_viewer_mid_segmentation(viewer, image, dock, wait_job, click, qtbot,
                                             monkeypatch, notes):
    cfg = ModelConfig(arch="unet", depth=2, width=4, classes=2)
    store_for(viewer).set_model(SavedModel(build_model(cfg).eval(), cfg, Normalization.fit(
        image.data), [1, 2]), "test")
    seg = dock("Segment")
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.device.setCurrentText("cpu")
    seg.tile.setValue(32)
    seg.batch.setValue(1)
    monkeypatch.setattr(segment_module, "segment", _slow(segment_module.segment))
    click(seg.run_button)
    qtbot.waitUntil(lambda: seg.job.bar is not None and seg.job.bar.n >= 2, timeout=20_000)
    job = seg.job
    viewer.close()
    names = _names(viewer)
    qtbot.waitUntil(lambda: not job.worker.is_running and not job.running, timeout=20_000)
    qtbot.wait(200)
    assert job.cancelled and job.failed is None and not notes
    assert _names(viewer) == names  # no segmentation layer, not even a partial one
    assert not any("segmentation" in n or "probabilities" in n for n in names)
