"""A widget behind another tab does not compute for the screen: the weight-map preview and the
UNet++ levels recompute on slice moves and strokes, which would compete with a training the
user watches in the Train tab. What they were asked for is computed when their tab is shown."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg._widgets._layout import dock_of
from napari_unetseg._widgets.launch import launch

PLUGIN = "napari-unetseg"
IMAGE = "EM image (ISBI sample)"
GT = "membrane ground truth (ISBI sample)"


def _shown(widget) -> bool:
    dock = dock_of(widget)
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


@pytest.fixture
def shown_viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "em_stack")
    for layer in viewer.layers:
        layer.data = np.ascontiguousarray(layer.data[:2, :128, :128])
    viewer.dims.set_current_step(0, 0)
    return viewer


@pytest.mark.gui
def test_the_weight_map_behind_a_tab_waits_until_its_tab_is_shown(shown_viewer, qtbot):
    widgets = launch(shown_viewer, widgets=("Train", "Weight map preview"))
    train, wmap = widgets["Train"], widgets["Weight map preview"]
    dock_of(train).raise_()
    qtbot.waitUntil(lambda: _shown(train) and not _shown(wmap), timeout=5000)
    wmap.labels_picker.set_layer(GT)
    shown_viewer.dims.set_current_step(0, 1)
    qtbot.wait(500)  # five times the preview's debounce
    assert wmap._output() is None and wmap.onscreen.pending
    dock_of(wmap).raise_()
    qtbot.waitUntil(lambda: wmap._output() is not None, timeout=10_000)
    assert not wmap.onscreen.pending


@pytest.mark.gui
def test_the_levels_behind_the_train_tab_wait_for_their_tab(shown_viewer, qtbot, tiny,
                                                            wait_job):
    widgets = launch(shown_viewer, widgets=("Train", "UNet++ levels"))
    train, levels = widgets["Train"], widgets["UNet++ levels"]
    painted = np.zeros_like(shown_viewer.layers[GT].data)
    painted[:, ::6, ::6] = np.asarray(shown_viewer.layers[GT].data)[:, ::6, ::6]
    shown_viewer.add_labels(painted, name="scribbles")
    train.image_picker.set_layer(IMAGE)
    train.labels_picker.set_layer("scribbles")
    tiny(train, arch="UNet++", iterations=2, preview_every=0)
    dock_of(train).raise_()
    qtbot.waitUntil(lambda: _shown(train) and not _shown(levels), timeout=5000)
    train.start()
    wait_job(train)
    levels.image_picker.set_layer(IMAGE)
    name = f"{IMAGE} level output"
    shown_viewer.dims.set_current_step(0, 1)  # the user looks at another slice in Train
    qtbot.wait(300)
    assert name not in shown_viewer.layers and levels.job is None and levels.onscreen.pending
    dock_of(levels).raise_()
    qtbot.waitUntil(lambda: name in shown_viewer.layers, timeout=30_000)
    assert np.asarray(shown_viewer.layers[name].data)[1].any()  # the slice on screen
