"""What the widgets tell the user: which layer Train takes, a question before training
dense-looking labels as scribbles, why the validation plot is empty, where a model was
saved, full error texts, and a levels output that leaves the image visible."""

from __future__ import annotations

import numpy as np

from napari_unetseg._widgets import _ask, _files


def test_train_follows_the_labels_the_user_adds_and_selects(viewer, image, gt, dock):
    train = dock("Train")
    assert train.labels_picker.currentText() == gt.name  # the only labels so far
    painted = viewer.add_labels(np.zeros_like(gt.data), name="Labels")  # Layers > New labels
    assert train.labels_picker.currentText() == painted.name
    viewer.layers.selection.active = gt  # the user clicks the ground truth in the layer list
    assert train.labels_picker.currentText() == gt.name
    viewer.layers.selection.active = painted
    assert train.labels_picker.currentText() == painted.name
    viewer.layers.selection.active = image  # an image: the labels choice stays
    assert train.labels_picker.currentText() == painted.name
    assert train.image_picker.currentText() == image.name
    out = viewer.add_labels(np.zeros_like(gt.data), name="made by the plugin",
                            metadata={"napari-unetseg": {"role": "segmentation"}})
    viewer.layers.selection.active = out  # e.g. Segment's output: not followed
    assert train.labels_picker.currentText() == painted.name
    # a widget opened later prefers the user's labels to the sample's ground truth
    viewer.layers.selection.active = image
    later = type(train)(viewer)
    assert later.labels_picker.currentText() == painted.name
    later.close()


def test_dense_labels_in_sparse_mode_ask_first(viewer, gt, dock, tiny, monkeypatch, notes,
                                               wait_job):
    train = dock("Train")
    tiny(train, iterations=2, preview_every=0)
    train.labels_picker.set_layer(gt.name)
    assert train.form.mode() == "sparse"
    asked, answers = [], ["", "sparse", "dense"]
    monkeypatch.setattr(_ask, "ask_dense", lambda parent, name, coverage: (
        asked.append((name, round(coverage, 2))), answers.pop(0))[1])
    assert train.start() is None and train.job is None  # cancelled: nothing runs
    assert asked == [(gt.name, 1.0)]
    job = train.start()  # "keep sparse": trains, and is not asked again for this layer
    assert job is not None and train.form.mode() == "sparse"
    wait_job(train)
    assert train.start() is not None and len(asked) == 2
    wait_job(train)
    painted = np.array(gt.data)  # a second dense layer is asked about, and "dense" sticks
    viewer.add_labels(painted, name="mine")
    train.labels_picker.set_layer("mine")
    assert train.start() is not None and len(asked) == 3 and train.form.mode() == "dense"
    wait_job(train)
    assert train.saved.metadata["labels_mode"] == "dense" and not notes


def test_sparse_scribbles_are_not_questioned(train_tiny, monkeypatch, wait_job):
    train = train_tiny(iterations=2, preview_every=0)
    monkeypatch.setattr(_ask, "ask_dense", lambda *a: (_ for _ in ()).throw(AssertionError))
    assert train.start() is not None
    wait_job(train)


def test_empty_validation_plot_says_why(viewer, gt, dock, tiny, wait_job):
    few = np.zeros_like(gt.data)
    few[0, 10, 10], few[0, 60, 60] = 1, 2  # one pixel per class: nothing to hold out
    viewer.add_labels(few, name="two dots")
    train = dock("Train")
    tiny(train, iterations=2, preview_every=0)
    train.labels_picker.set_layer("two dots")
    train.start()
    assert "every 2 steps" in train.dice_plot.note  # while it trains: when Dice will come
    wait_job(train)
    assert not train.dice_plot.data["val"]
    assert train.dice_plot.note.startswith("no validation: too few labels")
    assert "separate stroke of every class" in train.dice_plot.note


def test_error_text_stays_in_full_in_the_status_line(viewer, image, dock, notes):
    train = dock("Train")
    viewer.add_labels(np.zeros((3, 5, 5), np.uint8), name="wrong shape")
    train.labels_picker.set_layer("wrong shape")
    assert train.start() is None
    (kind, text), = notes
    assert kind == "error" and len(text) > 100 and train.status.text() == text


def test_dialogs_open_in_the_last_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_last", {})
    seen = []

    def dialog(parent, caption, start, *args, **kwargs):
        seen.append(start)
        return "", ""

    monkeypatch.setattr(_files.QFileDialog, "getOpenFileName", dialog)
    monkeypatch.setattr(_files.QFileDialog, "getSaveFileName", dialog)
    _files.ask_open_path(None)
    _files.remember_folder(tmp_path / "saved.unetseg")
    _files.ask_open_path(None)
    _files.ask_save_path(None)
    assert seen == ["", str(tmp_path), str(tmp_path / "model.unetseg")]


def test_levels_offers_unetpp_and_its_output_leaves_the_image_visible(
        viewer, image, dock, train_tiny, wait_job, qtbot):
    levels = dock("UNet++ levels")
    assert "choose architecture UNet++" in levels.status.text()
    assert levels.unetpp_button.isVisibleTo(levels)
    train = levels.train_unetpp()  # opens Train set to UNet++
    assert train is dock("Train") and train.form.arch.currentText() == "UNet++"
    train = train_tiny(arch="UNet++", iterations=2, preview_every=0)
    train.start()
    wait_job(train)
    assert not levels.unetpp_button.isVisibleTo(levels)
    levels.image_picker.set_layer(image.name)
    levels.request()
    qtbot.waitUntil(lambda: any("level output" in layer.name for layer in viewer.layers),
                    timeout=30_000)
    out = next(layer for layer in viewer.layers if "level output" in layer.name)
    assert out.blending == "translucent" and out.opacity <= 0.6


def test_the_level_output_keeps_the_brush_on_the_painted_layer(
        viewer, image, scribbles, dock, train_tiny, wait_job, qtbot):
    """Moving to another slice makes the docked levels widget show its level there: that
    must not select its output layer (the brush would be lost) nor lay it over the strokes."""
    levels = dock("UNet++ levels")
    train = train_tiny(arch="UNet++", iterations=2, preview_every=0)
    train.start()
    wait_job(train)
    levels.image_picker.set_layer(image.name)
    viewer.layers.selection.active = scribbles
    scribbles.mode = "paint"
    name = f"{image.name} level output"
    assert name not in viewer.layers
    viewer.dims.set_current_step(0, 1 - viewer.dims.current_step[0])
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=30_000)
    assert viewer.layers.selection.active is scribbles and scribbles.mode == "paint"
    names = [layer.name for layer in viewer.layers]
    assert names.index(name) == names.index(image.name) + 1 < names.index(scribbles.name)
