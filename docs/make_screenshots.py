"""Regenerate the user-guide screenshots in docs/images/ from a real napari window.

Runs the user story on the bundled EM sample in the window ``napari-unetseg gui`` opens (the
screen's size, the four widgets in one tabbed dock): paint sparse labels, Train (UNet++, CPU)
with the Advanced section open, show where to paint next (the entropy map, the worst slice),
Segment the stack, preview the weight map of touching cells, and compare UNet++ levels. Every
scene is taken with all four widgets docked, on a 1600 x 1000 screen, and the script fails if
a widget's main button (or the button the scene is about) is hidden.

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

(Any display works; xvfb-run gives a virtual one on a headless machine.)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from skimage import measure

OUT = Path(__file__).resolve().parent / "images"
WIDGETS = ("Train", "Segment", "Weight map preview", "UNet++ levels")
#: The button of each widget that must be fully on screen in its scene.
PRIMARY = {"Train": "Train", "Segment": "Segment", "Weight map preview": "Whole stack",
           "UNet++ levels": "Measure all levels"}


def pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def wait(widget, timeout: float = 1800.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while widget.job is None or widget.job.running:
        QApplication.processEvents()
        time.sleep(0.05)
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {type(widget).__name__}")
    pump(0.5)


def show_tab(widget) -> None:
    from napari_unetseg._widgets._layout import dock_of

    dock_of(widget).raise_()
    pump(0.5)


def check_visible(name: str, widget, button_text: str | None = None) -> None:
    """Exit if the widget's main button is not entirely inside the visible part of its dock
    and of the window (the scene would hide what the guide talks about)."""
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QPushButton

    from napari_unetseg._widgets._layout import dock_of, scroll_area

    window = widget.window()

    def rect(w) -> QRect:
        return QRect(w.mapTo(window, w.rect().topLeft()), w.size())

    text = button_text or PRIMARY[name]
    button = next(b for b in widget.findChildren(QPushButton) if b.text() == text)
    inside = rect(scroll_area(widget).viewport()) & rect(dock_of(widget)) & window.rect()
    if not (dock_of(widget).isVisible() and inside.contains(rect(button))):
        sys.exit(f"{name}: button {text!r} is hidden: {rect(button)} not in {inside}")


def shot(viewer, name: str, widget_name: str, widget, button_text: str | None = None) -> None:
    from skimage.io import imsave

    pump(0.5)
    check_visible(widget_name, widget, button_text)
    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(OUT / name, img, check_contrast=False)
    print("wrote", OUT / name, img.shape)


def main() -> None:
    import napari

    from napari_unetseg._sample_data import IMAGE_NAME, LABELS_NAME
    from napari_unetseg._widgets.launch import TITLE, launch

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title=TITLE)
    docks = launch(viewer, widgets=WIDGETS)
    pump(1.0)
    image, gt = viewer.layers[IMAGE_NAME], viewer.layers[LABELS_NAME]
    for layer in list(viewer.layers):  # the docked weight-map preview's layer waits its turn
        layer.visible = layer is image
    # sparse scribbles, as a user paints them in a new labels layer: short strokes of
    # membrane and interior (Train follows the new layer)
    truth = np.asarray(gt.data)
    painted = np.zeros_like(truth)
    painted[:, ::16, ::4] = truth[:, ::16, ::4]
    scribbles = viewer.add_labels(painted, name="Labels")
    viewer.dims.set_current_step(0, 6)

    train = docks["Train"]
    show_tab(train)
    if train.labels_picker.currentText() != scribbles.name:
        sys.exit(f"Train did not follow the new labels layer: {train.labels_picker.currentText()}")
    form = train.form
    form.preset.setCurrentText("fast, CPU friendly")
    form.arch.setCurrentText("UNet++")
    form.iterations.setValue(150)
    form.patch.setValue(128)
    form.device.setCurrentText("cpu")
    form.preview_every.setValue(20.0)  # a few previews: most of the time goes to training
    form.advanced.expand(animate=False)
    train.train_button.click()
    wait(train)
    shot(viewer, "train.png", "Train", train)

    # where to paint next: the entropy map of the trained model, the viewer on the worst slice
    from napari_unetseg._widgets._layout import scroll_area

    panel = train.paint_next
    if panel.method() != "entropy":
        sys.exit(f"where to paint next does not default to entropy: {panel.method()}")
    panel.compute_button.click()
    wait(panel)
    panel.jump_button.click()
    scroll_area(train).ensureWidgetVisible(panel)
    shot(viewer, "paint_next.png", "Train", train, "Worst slice")
    viewer.layers[f"{image.name} uncertainty"].visible = False
    scroll_area(train).verticalScrollBar().setValue(0)

    seg = docks["Segment"]
    show_tab(seg)
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.run_button.click()
    wait(seg)
    scribbles.visible = False
    shot(viewer, "segment.png", "Segment", seg)

    # weight map of touching cells: instances from the membrane labels
    for layer in list(viewer.layers):
        layer.visible = layer is image
    inst = np.stack([measure.label(s == 2, connectivity=1) for s in truth]).astype(np.int32)
    cells = viewer.add_labels(inst, name="cells (instances)", opacity=0.3)
    wm = docks["Weight map preview"]
    show_tab(wm)
    wm.labels_picker.set_layer(cells.name)
    wm.mode.setCurrentText("instances (U-Net weight map)")  # the mode is shared with Train
    pump(2.0)
    for layer in list(viewer.layers):  # the image, the cells and their weight map on screen
        layer.visible = layer is image or layer is cells or "weight map" in layer.name
    pump(0.5)
    if "w0 10" not in wm.status.text():
        sys.exit(f"the weight map shows no border term: {wm.status.text()}")
    shot(viewer, "weightmap.png", "Weight map preview", wm)
    cells.visible = False
    for layer in list(viewer.layers):
        if "weight" in layer.name:
            layer.visible = False

    lv = docks["UNet++ levels"]
    show_tab(lv)
    lv.image_picker.set_layer(image.name)
    lv.gt_picker.set_layer(gt.name)
    lv.measure_button.click()
    wait(lv)
    lv.slider.setValue(1)
    pump(3.0)
    for layer in list(viewer.layers):  # only the image and the level output on screen
        layer.visible = layer is image or "level output" in layer.name
    shot(viewer, "levels.png", "UNet++ levels", lv)
    viewer.close()


if __name__ == "__main__":
    main()
