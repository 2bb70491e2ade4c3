"""Weight-map preview: shows the weights the trainer uses, in every labels mode, live; its
settings are Train's; one preview layer per viewer (issue 11, point 2)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_unetseg.targets import training_targets
from napari_unetseg.weightmap import weight_map

MODES = {"sparse": "sparse scribbles (0 = unlabeled)", "dense": "dense (every value is a class)",
         "instances": "instances (U-Net weight map)"}


def _previews(viewer):
    return [layer for layer in viewer.layers if layer.name.endswith("weight map")]


def _map(viewer):
    (layer,) = _previews(viewer)
    return layer


def _trainer_weights(layer, mode, z, **kw):
    return training_targets(np.asarray(layer.data), mode, slices=[z], **kw).weight[z]


def test_dense_membranes_show_the_trainers_border_weights(viewer, gt, dock, qtbot, notes):
    w = dock("Weight map preview")
    w.labels_picker.set_layer(gt.name)
    w.mode.setCurrentText(MODES["dense"])
    qtbot.waitUntil(lambda: bool(_previews(viewer)) and _map(viewer).data[0].max() > 2,
                    timeout=5000)
    layer = _map(viewer)
    assert layer.data.shape == gt.data.shape and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.data[0], _trainer_weights(gt, "dense", 0), rtol=1e-6)
    membrane = np.asarray(gt.data[0]) == 1
    assert layer.data[0][membrane].mean() > 3 * layer.data[0][~membrane].mean()  # not flat
    assert not layer.data[1].any()  # only the displayed slice is computed
    assert not [n for n in notes if n[0] == "error"]


def test_instances_show_the_separated_objects_the_trainer_sees(viewer, gt, dock, qtbot):
    inst = np.stack([ndi.label(plane == 2)[0] for plane in np.asarray(gt.data)])
    inst[0, 40:60, 40:60] = inst.max() + 1  # touches its neighbours: contact pixels matter
    cells = viewer.add_labels(inst.astype(np.int32), name="cells")
    w = dock("Weight map preview")
    w.mode.setCurrentText(MODES["instances"])
    w.labels_picker.set_layer("cells")
    qtbot.waitUntil(lambda: any(bool(p.data[0].any()) for p in _previews(viewer)), timeout=5000)
    shown = _map(viewer).data[0]
    np.testing.assert_allclose(shown, _trainer_weights(cells, "instances", 0), rtol=1e-6)
    raw = weight_map(inst[0])  # on the raw instances, as the preview used to
    assert np.abs(shown - raw).max() > 1.0


def test_sparse_strokes_show_the_class_balance(viewer, scribbles, dock, qtbot):
    w = dock("Weight map preview")
    w.labels_picker.set_layer(scribbles.name)
    w.mode.setCurrentText(MODES["sparse"])
    qtbot.waitUntil(lambda: any(bool(p.data[0].any()) for p in _previews(viewer)), timeout=5000)
    shown = _map(viewer).data[0]
    np.testing.assert_allclose(shown, _trainer_weights(scribbles, "sparse", 0), rtol=1e-6)
    painted = np.asarray(scribbles.data[0]) > 0
    assert (shown[~painted] == 0).all() and len(np.unique(shown[painted])) == 2
    assert not w.w0.isEnabled()  # no border term on strokes


def test_settings_are_trains_and_changes_update_one_layer(viewer, gt, scribbles, dock, qtbot):
    w = dock("Weight map preview")
    train = dock("Train")
    w.labels_picker.set_layer(gt.name)
    w.mode.setCurrentText(MODES["dense"])
    assert train.form.mode() == "dense"  # the preview's mode is Train's
    train.form.labels_mode.setCurrentText(MODES["instances"])
    assert w.labels_mode() == "instances"
    w.mode.setCurrentText(MODES["dense"])
    qtbot.waitUntil(lambda: len(_previews(viewer)) == 1, timeout=5000)
    for value in (20.0, 3.0, 15.0):  # each change updates the same layer
        before = _map(viewer).data[0].copy()
        w.w0.setValue(value)
        qtbot.waitUntil(lambda b=before: not np.allclose(_map(viewer).data[0], b), timeout=5000)
    w.sigma.setValue(7.0)
    w.balance.setChecked(False)
    cfg = train.weights.apply(train.form.train_config())
    assert (cfg.w0, cfg.sigma, cfg.class_balance) == (15.0, 7.0, False)
    qtbot.waitUntil(lambda: np.allclose(_map(viewer).data[0], _trainer_weights(
        gt, "dense", 0, w0=15.0, sigma=7.0, balance=False), rtol=1e-6), timeout=5000)
    w.labels_picker.set_layer(scribbles.name)  # another labels layer: the same preview layer
    w.mode.setCurrentText(MODES["sparse"])
    qtbot.waitUntil(lambda: _map(viewer).name == "scribbles weight map", timeout=5000)
    viewer.window.remove_dock_widget(w)  # a reopened dock reuses it too
    again = dock("Weight map preview")
    assert again.balance.isChecked() is False and again.sigma.value() == 7.0
    again.labels_picker.set_layer(gt.name)
    again.mode.setCurrentText(MODES["dense"])
    qtbot.waitUntil(lambda: _map(viewer).name == f"{gt.name} weight map", timeout=5000)
    assert len(viewer.layers) == 4  # image, membranes, scribbles, one preview


def test_painting_and_slices_update_the_preview(viewer, gt, dock, qtbot):
    w = dock("Weight map preview")
    w.labels_picker.set_layer(gt.name)
    w.mode.setCurrentText(MODES["dense"])
    qtbot.waitUntil(lambda: bool(_previews(viewer)) and _map(viewer).data[0].any(), timeout=5000)
    before = _map(viewer).data[0].copy()
    gt.brush_size = 9
    gt.paint((0, 60, 60), 1)  # a membrane stroke across cells: events.paint
    qtbot.waitUntil(lambda: not np.allclose(_map(viewer).data[0], before), timeout=5000)
    np.testing.assert_allclose(_map(viewer).data[0], _trainer_weights(gt, "dense", 0),
                               rtol=1e-6)
    viewer.dims.set_current_step(0, 1)  # napari's Z slider
    qtbot.waitUntil(lambda: _map(viewer).data[1].any(), timeout=5000)
    w.blending.setCurrentText("translucent")
    assert _map(viewer).blending == "translucent"


def test_whole_stack_button(viewer, gt, dock, qtbot, wait_job):
    w = dock("Weight map preview")
    w.labels_picker.set_layer(gt.name)
    w.mode.setCurrentText(MODES["dense"])
    w.balance.setChecked(False)
    w.timer.stop()
    w.compute_stack()
    wait_job(w)
    expected = training_targets(np.asarray(gt.data), "dense", balance=False).weight
    np.testing.assert_allclose(_map(viewer).data, expected, rtol=1e-6)


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
