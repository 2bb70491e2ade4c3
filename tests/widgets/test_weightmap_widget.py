"""Weight-map preview: live for the displayed slice, follows sliders and painting."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_unetseg.weightmap import weight_map


def _instances(viewer, gt):
    inst = np.stack([ndi.label(plane == 2)[0] for plane in gt.data]).astype(np.int32)
    return viewer.add_labels(inst, name="cells")


def _map(viewer):
    return viewer.layers["cells weight map"]


def test_live_preview_follows_sliders_painting_and_slices(viewer, gt, dock, qtbot, notes):
    cells = _instances(viewer, gt)
    w = dock("Weight map preview")
    w.labels_picker.set_layer("cells")
    qtbot.waitUntil(lambda: "cells weight map" in viewer.layers, timeout=3000)
    layer = _map(viewer)
    assert layer.data.shape == cells.data.shape and layer.data.dtype == np.float32
    expected = weight_map(cells.data[0], 10.0, 5.0, "balanced")
    np.testing.assert_allclose(layer.data[0], expected, rtol=1e-5)
    assert not layer.data[1].any()  # only the displayed slice is computed
    assert layer.blending == "additive"

    before = layer.data[0].copy()
    w.w0.setValue(25.0)  # moving a slider recomputes after the debounce
    qtbot.waitUntil(lambda: not np.allclose(_map(viewer).data[0], before), timeout=3000)
    np.testing.assert_allclose(_map(viewer).data[0], weight_map(cells.data[0], 25.0, 5.0),
                               rtol=1e-5)

    before = _map(viewer).data[0].copy()
    cells.brush_size = 9
    cells.paint((0, 50, 50), int(cells.data.max()) + 1)  # a brush stroke: events.paint
    qtbot.waitUntil(lambda: not np.allclose(_map(viewer).data[0], before), timeout=3000)
    np.testing.assert_allclose(_map(viewer).data[0], weight_map(cells.data[0], 25.0, 5.0),
                               rtol=1e-5)
    before = _map(viewer).data[0].copy()
    cells.data = np.where(cells.data == 1, 0, cells.data)  # new data: events.data
    qtbot.waitUntil(lambda: not np.allclose(_map(viewer).data[0], before), timeout=3000)

    viewer.dims.set_current_step(0, 1)  # napari's Z slider
    qtbot.waitUntil(lambda: _map(viewer).data[1].any(), timeout=3000)
    w.blending.setCurrentText("translucent")
    assert _map(viewer).blending == "translucent"
    assert not [n for n in notes if n[0] == "error"]


def test_whole_stack_button(viewer, gt, dock, qtbot, wait_job):
    cells = _instances(viewer, gt)
    w = dock("Weight map preview")
    w.labels_picker.set_layer("cells")
    w.balance.setChecked(False)
    w.timer.stop()
    w.compute_stack()
    wait_job(w)
    np.testing.assert_allclose(_map(viewer).data, weight_map(cells.data, 10.0, 5.0, None),
                               rtol=1e-5)


def test_no_labels_layer_is_a_notification(make_napari_viewer, qtbot, notes):
    from napari_unetseg._widgets.weightmap import WeightMapWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32), np.float32))
    w = WeightMapWidget(viewer)
    viewer.dims.set_current_step(0, 2)  # live updates only say it in the widget
    qtbot.waitUntil(lambda: "choose a labels layer" in w.status.text(), timeout=3000)
    assert not notes
    assert w.compute_stack() is None  # a click does notify
    assert [kind for kind, _ in notes] == ["error"] and "labels layer" in notes[0][1]
    assert len(viewer.layers) == 1
