"""Regenerate the user-guide screenshots in docs/images/ from a real napari window.

Runs the user story on the bundled EM sample: paint sparse labels, Train (UNet++, CPU), Segment
the stack, preview the weight map of touching cells, and compare UNet++ levels.

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


def shot(viewer, name: str) -> None:
    from skimage.io import imsave

    pump(0.5)
    img = viewer.screenshot(canvas_only=False, flash=False)
    imsave(OUT / name, img, check_contrast=False)
    print("wrote", OUT / name, img.shape)


def main() -> None:
    import napari

    from napari_unetseg._widgets.launch import launch

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-unetseg")
    viewer.window.resize(1600, 1000)
    docks = launch(viewer, widgets=["Train", "Segment"])
    image = viewer.layers["EM sample (ISBI 2012)"]
    gt = viewer.layers["EM sample membranes (ISBI 2012)"]
    gt.visible = False
    # sparse scribbles, as a user paints them: short strokes of membrane and interior
    truth = np.asarray(gt.data)
    painted = np.zeros_like(truth)
    painted[:, ::16, ::4] = truth[:, ::16, ::4]
    scribbles = viewer.add_labels(painted, name="scribbles")
    viewer.dims.set_current_step(0, 6)

    train = docks["Train"]
    train.image_picker.set_layer(image.name)
    train.labels_picker.set_layer(scribbles.name)
    form = train.form
    form.preset.setCurrentText("fast, CPU friendly")
    form.arch.setCurrentText("UNet++")
    form.iterations.setValue(150)
    form.patch.setValue(128)
    form.device.setCurrentText("cpu")
    train.train_button.click()
    wait(train)
    shot(viewer, "train.png")

    seg = docks["Segment"]
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.run_button.click()
    wait(seg)
    scribbles.visible = False
    shot(viewer, "segment.png")

    # weight map of touching cells: instances from the membrane labels
    for layer in list(viewer.layers):
        if layer is not image:
            layer.visible = False
    inst = np.stack([measure.label(s == 2, connectivity=1) for s in truth]).astype(np.int32)
    cells = viewer.add_labels(inst, name="cells (instances)", opacity=0.3)
    wm_dock, wm = viewer.window.add_plugin_dock_widget("napari-unetseg", "Weight map preview")
    wm.labels_picker.set_layer(cells.name)
    pump(1.5)
    shot(viewer, "weightmap.png")
    wm.timer.stop()
    viewer.window.remove_dock_widget(wm_dock)
    viewer.layers.remove(cells)
    pump(1.0)  # let a pending preview finish before clearing the weight-map layers
    for layer in list(viewer.layers):
        if "weight" in layer.name:
            viewer.layers.remove(layer)
    image.visible = True

    for widget in (train, seg):  # keep the window at screen height
        viewer.window.remove_dock_widget(widget)
    pump(0.5)
    _, lv = viewer.window.add_plugin_dock_widget("napari-unetseg", "UNet++ levels")
    lv.image_picker.set_layer(image.name)
    lv.gt_picker.set_layer(gt.name)
    lv.measure_button.click()
    wait(lv)
    lv.slider.setValue(1)
    pump(3.0)
    for layer in list(viewer.layers):  # only the image and the level output on screen
        layer.visible = layer is image or "level output" in layer.name
    shot(viewer, "levels.png")
    viewer.close()


if __name__ == "__main__":
    main()
