"""The whole user story: open the sample, paint, train, segment, look at UNet++ levels."""

from __future__ import annotations

import numpy as np

from napari_unetseg._widgets import _common
from napari_unetseg._widgets._registry import store_for


def test_train_segment_levels(viewer, image, gt, scribbles, dock, tiny, wait_job,
                              click, qtbot, notes, train_tiny):
    train = train_tiny(arch="UNet++", iterations=10, preview_every=5)
    click(train.train_button)
    assert train.job is not None and not train.train_button.isEnabled()
    wait_job(train)
    assert not [n for n in notes if n[0] == "error"], notes
    assert train.saved is not None and train.saved.config.arch == "unetpp"
    assert train.saved.class_values == [1, 2]
    assert train.train_button.isEnabled() and not train.cancel_button.isEnabled()
    assert train.loss_plot.data["train"], "the live plot got the losses"
    assert "step 10" in train.status.text() or "done after 10 steps" in train.status.text()
    preview = viewer.layers[f"{image.name} preview"]  # the live preview of the shown slice
    assert preview.data.shape == image.data.shape
    assert set(np.unique(preview.data[0])) <= {1, 2} and not preview.data[1].any()

    # the Segment widget finds the trained model through the viewer's store
    seg = dock("Segment")
    assert store_for(viewer).saved is train.saved
    assert "UNet++" in seg.model_label.text()
    user = viewer.add_labels(np.zeros((2, 128, 128), np.uint8),
                             name=f"{image.name} segmentation")  # a layer the user made
    seg.image_picker.set_layer(image.name)
    seg.scope.setCurrentText("whole stack")
    seg.tile.setValue(64)
    click(seg.run_button)
    wait_job(seg)
    probs = [lyr for lyr in viewer.layers if lyr.name.startswith(f"{image.name} probabilities")]
    segs = [lyr for lyr in viewer.layers if _common.MARKER in lyr.metadata
            and lyr.metadata[_common.MARKER]["role"] == "segmentation"]
    assert len(probs) == 1 and len(segs) == 1
    p, s = probs[0], segs[0]
    assert s is not user and s.name != user.name and not user.data.any()
    assert p.data.shape == s.data.shape == image.data.shape
    assert p.data.dtype == np.float32 and p.data.min() >= 0.0 and p.data.max() <= 1.0
    assert s.data.dtype == np.uint8 and set(np.unique(s.data)) <= {1, 2}
    assert "per slice" in seg.status.text()

    # re-running on the current slice updates the same layers (no new ones)
    n_layers = len(viewer.layers)
    seg.scope.setCurrentText("current slice")
    seg.level.setCurrentText("L1")
    click(seg.run_button)
    wait_job(seg)
    assert len(viewer.layers) == n_layers

    # UNet++ levels: moving the slider shows another level's output
    lv = dock("UNet++ levels")
    lv.image_picker.set_layer(image.name)
    lv.gt_picker.set_layer(gt.name)
    assert lv.slider.maximum() == 3 and lv.level() == "accurate"
    name = f"{image.name} level output"
    qtbot.waitUntil(lambda: name in viewer.layers and viewer.layers[name].data[0].any(),
                    timeout=10_000)
    accurate = viewer.layers[name].data[0].copy()
    lv.slider.setValue(1)
    qtbot.waitUntil(lambda: not np.array_equal(viewer.layers[name].data[0], accurate),
                    timeout=10_000)
    assert lv.level_label.text() == "L1"
    assert lv.table.item(0, 2).text() and lv.table.item(0, 3).text()  # ms, Dice of L1
    assert int(lv.table.item(0, 0).text().replace(",", "")) < int(
        lv.table.item(2, 0).text().replace(",", ""))  # L1 is a smaller network
    viewer.dims.set_current_step(0, 1)  # the Z slider computes the new slice
    qtbot.waitUntil(lambda: viewer.layers[name].data[1].any(), timeout=10_000)
    assert (image.name, 1, 1) in lv.cache
    lv.apply()
    assert seg.level.currentText() == "L1"
