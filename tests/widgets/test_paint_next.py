"""Where to paint next: the uncertainty layer over the image and the jump to the worst slice."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image

from napari_unetseg._widgets._paint_next import MEASURES, display_limits

FOREVER = 100_000


def _measure(train, name):
    train.paint_next.measure.setCurrentText(next(k for k, v in MEASURES.items() if v == name))


def test_uncertainty_layer_keeps_the_image_visible_and_the_jump_goes_to_the_worst(
        viewer, image, scribbles, train_tiny, click, qtbot, wait_job, notes):
    train = train_tiny(arch="UNet++", iterations=6, preview_every=0)
    panel = train.paint_next
    assert panel.method() == "entropy"  # one pass; points at errors as well as flip TTA
    click(train.train_button)
    wait_job(train)
    viewer.layers.selection.active = scribbles
    scribbles.mode = "erase"
    viewer.dims.set_current_step(0, 0)
    _measure(train, "heads")
    click(panel.compute_button)
    name = f"{image.name} uncertainty"
    qtbot.waitUntil(lambda: name in viewer.layers and bool(panel.ranking), timeout=30_000)
    layer = viewer.layers[name]
    assert isinstance(layer, Image) and layer.data.shape == image.data.shape
    assert viewer.layers.selection.active is scribbles and scribbles.mode == "erase"
    names = [lyr.name for lyr in viewer.layers]
    assert names.index(name) == names.index(image.name) + 1  # under the strokes
    # the image shows through: sure pixels are transparent, nothing is added on top of it
    assert layer.blending == "translucent" and layer.opacity < 1
    assert layer.colormap.map(np.array([0.0]))[0, 3] == 0
    assert layer.colormap.map(np.array([1.0]))[0, 3] > 0.5
    assert layer.data.min() >= 0 and layer.data.max() <= 1 and layer.data.max() > 0
    # the surer half of the pixels is clear, whatever the model's overall uncertainty
    assert layer.contrast_limits[0] == pytest.approx(float(np.median(layer.data)), abs=1e-6)
    means = layer.data.reshape(2, -1).mean(1)
    click(panel.jump_button)
    assert viewer.dims.current_step[0] == int(np.argmax(means))
    click(panel.jump_button)
    assert viewer.dims.current_step[0] == int(np.argmin(means))
    assert viewer.layers.selection.active is scribbles and not notes


def test_worst_slice_goes_to_unpainted_slices_first(
        viewer, image, scribbles, train_tiny, click, qtbot, wait_job, notes):
    train = train_tiny(arch="UNet++", iterations=6, preview_every=0)
    click(train.train_button)
    wait_job(train)
    panel = train.paint_next
    _measure(train, "heads")
    click(panel.compute_button)
    qtbot.waitUntil(lambda: bool(panel.ranking), timeout=30_000)
    worst, better = (z for z, _ in panel.ranking)
    data = np.asarray(scribbles.data).copy()
    data[better] = 0  # the less uncertain slice has no strokes now
    scribbles.data = data
    panel.ranking = []
    click(panel.compute_button)
    qtbot.waitUntil(lambda: bool(panel.ranking), timeout=30_000)
    assert [z for z, _ in panel.ranking] == [worst, better]
    assert panel.order == [better, worst]
    click(panel.jump_button)
    assert viewer.dims.current_step[0] == better
    assert f"slice {better}: uncertainty rank 2 of 2" in panel.status.text()
    click(panel.jump_button)
    assert viewer.dims.current_step[0] == worst
    assert not notes


def test_where_to_paint_next_during_training_uses_the_running_model(
        viewer, image, scribbles, train_tiny, click, qtbot, wait_job, notes):
    train = train_tiny(arch="U-Net", iterations=FOREVER, preview_every=0)
    click(train.train_button)
    qtbot.waitUntil(lambda: len(train.loss_plot.data["train"]) >= 2, timeout=30_000)
    _measure(train, "tta")
    click(train.paint_next.compute_button)
    name = f"{image.name} uncertainty"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=30_000)
    assert train.job.running  # training went on
    click(train.cancel_button)
    wait_job(train)
    assert not notes


def test_unsure_cell_boundaries_are_shown_over_the_stack(
        viewer, image, scribbles, train_tiny, click, qtbot, wait_job, notes):
    train = train_tiny(arch="U-Net", iterations=4, preview_every=0)
    click(train.train_button)
    wait_job(train)
    panel = train.paint_next
    _measure(train, "ridges")
    assert panel.measure.currentText() == "unsure cell boundaries"
    click(panel.compute_button)
    name = f"{image.name} uncertainty"
    qtbot.waitUntil(lambda: name in viewer.layers and bool(panel.ranking), timeout=30_000)
    data = viewer.layers[name].data
    assert data.shape == image.data.shape and data.min() >= 0 and data.max() <= 1
    assert sorted(z for z, _ in panel.ranking) == [0, 1]
    assert panel.status.text().startswith("paint next: slices") and not notes


def test_where_to_paint_next_explains_what_is_missing(viewer, image, scribbles, train_tiny,
                                                      click, wait_job, notes):
    train = train_tiny(arch="U-Net", iterations=2, preview_every=0)
    click(train.paint_next.compute_button)
    assert notes and "train or load a model" in notes[-1][1]
    click(train.train_button)
    wait_job(train)
    _measure(train, "heads")  # a U-Net has no heads to compare
    click(train.paint_next.compute_button)
    assert "deep supervision" in notes[-1][1]
    assert f"{image.name} uncertainty" not in viewer.layers


def test_display_limits_leave_the_surer_half_clear():
    low, top = display_limits(np.linspace(0.0, 1.0, 1001, dtype=np.float32))
    assert low == pytest.approx(0.5) and top == pytest.approx(0.995)
    assert display_limits(np.full((2, 4, 4), 0.7, np.float32)) == pytest.approx((0.7, 0.701))
    assert display_limits(np.zeros((0, 4), np.float32)) == (0.0, 1.0)
