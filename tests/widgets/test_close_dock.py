"""Closing a dock widget (its close button, or ``viewer.window.remove_dock_widget``) ends it.

napari does not delete the inner widget when its dock is closed: it takes it out of the dock
(``setParent(None)``) and deletes the dock. A closed widget must then stop following the
viewer: no callback of it runs when the Z slider moves, a labels layer is painted, the layer
list changes or the viewer's model changes; it writes no layer (not even one the user deleted)
and a job it was running is cancelled. Widgets that stay open keep reacting.
"""

from __future__ import annotations

import functools
import gc
import weakref
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetseg import Normalization, build_model
from napari_unetseg._widgets._common import LayerPicker, find_output
from napari_unetseg._widgets._registry import store_for
from napari_unetseg._widgets.levels import LevelsWidget
from napari_unetseg._widgets.segment import SegmentWidget
from napari_unetseg._widgets.train import TrainWidget
from napari_unetseg._widgets.weightmap import DEBOUNCE_MS, WeightMapWidget
from napari_unetseg.config import ModelConfig
from napari_unetseg.io import SavedModel

WATCHED = {
    WeightMapWidget: ("schedule", "_painted", "_watch_labels", "update_slice"),
    LevelsWidget: ("_model_changed", "request", "_next", "_fill_table"),
    SegmentWidget: ("_model_changed", "set_level"),
    TrainWidget: ("_track_slice",),
    LayerPicker: ("refresh",),
}


@pytest.fixture
def calls(monkeypatch):
    """Calls of the widgets' event handlers, counted per object: ``calls[obj]`` is a Counter
    of method names. Patched on the classes before any widget is made, so every connection
    (napari events, Qt signals, timers) reaches the counting wrapper."""
    seen: dict[int, Counter] = {}
    for cls, names in WATCHED.items():
        for name in names:
            real = getattr(cls, name)

            @functools.wraps(real)
            def counted(self, *args, _real=real, _name=name, **kwargs):
                seen.setdefault(id(self), Counter())[_name] += 1
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(cls, name, counted)

    class Calls:
        def __getitem__(self, obj) -> Counter:
            return seen.setdefault(id(obj), Counter())

        def of(self, widget, pickers=None) -> Counter:
            """The widget's calls and those of its layer pickers together."""
            total = Counter(self[widget])
            for picker in widget.findChildren(LayerPicker) if pickers is None else pickers:
                total.update(self[picker])
            return total

        def reset(self) -> None:
            seen.clear()

    return Calls()


def _instances(viewer, gt):
    inst = np.stack([ndi.label(plane == 2)[0] for plane in gt.data]).astype(np.int32)
    return viewer.add_labels(inst, name="cells")


def _dock_of(widget):
    return widget.parent()  # napari's QtViewerDockWidget, with its title bar buttons


def _unetpp(image, depth=2):
    cfg = ModelConfig(arch="unetpp", depth=depth, width=4, classes=2)
    return SavedModel(build_model(cfg).eval(), cfg, Normalization.fit(image.data), [1, 2])


def _stir(viewer, cells, store=None, image=None):
    """Everything a closed widget used to follow: Z slider, painting, new labels data, the
    layer list (add, rename, remove) and the viewer's model."""
    viewer.dims.set_current_step(0, 1 - viewer.dims.current_step[0])
    cells.brush_size = 9
    cells.paint((viewer.dims.current_step[0], 40, 40), int(cells.data.max()) + 1)
    cells.data = np.where(cells.data == 1, 0, cells.data)
    extra = viewer.add_labels(np.zeros((2, 16, 16), np.int32), name="extra")
    extra.name = "extra renamed"
    viewer.layers.remove(extra)
    if store is not None:
        store.set_model(_unetpp(image), "another model")
        store.level_chosen.emit(1)


def test_closed_weight_map_widget_stops_following_the_viewer(viewer, gt, dock, qtbot, notes,
                                                             calls):
    cells = _instances(viewer, gt)
    w = dock("Weight map preview")
    w.labels_picker.set_layer("cells")
    qtbot.waitUntil(lambda: find_output(viewer, w.owner, "weights", "cells") is not None,
                    timeout=3000)
    other = WeightMapWidget(viewer)  # a second one, which stays open
    viewer.window.add_dock_widget(other, name="another weight map")
    other.labels_picker.set_layer("cells")
    qtbot.waitUntil(lambda: find_output(viewer, other.owner, "weights", "cells") is not None,
                    timeout=3000)
    hide = _dock_of(other)
    hide.title.hide_button.click()  # hiding a dock (it can be shown again) is not closing
    hide.show()
    hide.setFloating(True)  # nor is floating it and docking it again
    hide.setFloating(False)
    _stir(viewer, cells)  # both widgets follow while open
    qtbot.wait(3 * DEBOUNCE_MS)
    assert calls.of(w)["update_slice"] and calls.of(other)["update_slice"]

    _dock_of(w).title.close_button.click()  # the dock's close button
    qtbot.wait(10)  # the dock is deleted later
    mine = find_output(viewer, w.owner, "weights", "cells")
    viewer.layers.remove(mine)  # the user deletes the closed widget's map
    names = [layer.name for layer in viewer.layers]
    calls.reset()
    theirs = find_output(viewer, other.owner, "weights", "cells")
    before = np.array(theirs.data)
    _stir(viewer, cells)
    qtbot.wait(3 * DEBOUNCE_MS)

    assert not calls.of(w), calls.of(w)  # nothing of the closed widget ran
    assert find_output(viewer, w.owner, "weights", "cells") is None  # not made again
    assert [layer.name for layer in viewer.layers] == names
    assert calls.of(other)["update_slice"] and calls.of(other)["refresh"]  # the open one
    assert not np.array_equal(theirs.data, before)  # ... follows painting and Z
    job = w.compute_stack()  # called on the closed widget anyway: the job never runs
    qtbot.waitUntil(lambda: not job.running, timeout=3000)
    assert job.cancelled and find_output(viewer, w.owner, "weights", "cells") is None
    assert [layer.name for layer in viewer.layers] == names and not notes


def test_a_widget_closed_as_a_window_stops_too(viewer, gt, qtbot, calls):
    """A widget shown as a window of its own (not docked) ends on its Close event; one that
    was never docked or closed keeps following the viewer."""
    cells = _instances(viewer, gt)
    shown, kept = WeightMapWidget(viewer), WeightMapWidget(viewer)
    for w in (shown, kept):
        qtbot.addWidget(w)
        w.labels_picker.set_layer("cells")
    shown.show()
    shown.close()
    calls.reset()
    _stir(viewer, cells)
    qtbot.wait(3 * DEBOUNCE_MS)
    assert not calls.of(shown)
    assert calls.of(kept)["update_slice"] and calls.of(kept)["refresh"]


def test_closed_levels_and_segment_widgets_ignore_the_model_store(viewer, image, gt, dock,
                                                                  qtbot, notes, calls, wait_job):
    cells = _instances(viewer, gt)
    store = store_for(viewer)
    store.set_model(_unetpp(image), "test")
    levels, seg, train = dock("UNet++ levels"), dock("Segment"), dock("Train")
    levels.image_picker.set_layer(image.name)
    qtbot.waitUntil(lambda: find_output(viewer, levels.owner, "level", image.name) is not None,
                    timeout=20_000)
    wait_job(levels)
    assert calls.of(train)["_track_slice"] == 0
    _stir(viewer, cells, store, image)
    wait_job(levels)
    assert calls.of(levels)["_model_changed"] and calls.of(seg)["set_level"]
    assert calls.of(train)["_track_slice"]

    viewer.window.remove_dock_widget(levels)  # as napari does when the user closes it
    viewer.layers.remove(find_output(viewer, levels.owner, "level", image.name))
    names, job = [layer.name for layer in viewer.layers], levels.job
    calls.reset()
    _stir(viewer, cells, store, image)
    qtbot.wait(300)
    assert not calls.of(levels), calls.of(levels)
    assert levels.job is job and not job.running  # no computing for a closed widget
    assert [layer.name for layer in viewer.layers] == names
    assert calls.of(seg)["_model_changed"] and calls.of(seg)["set_level"]  # Segment is open
    assert seg.level.currentText() == "L1"

    viewer.window.remove_dock_widget(seg)
    viewer.window.remove_dock_widget(train)
    calls.reset()
    seg.level.setCurrentText("accurate")
    _stir(viewer, cells, store, image)
    qtbot.wait(100)
    assert not calls.of(seg) and not calls.of(train) and not calls.of(levels)
    assert seg.level.currentText() == "accurate"
    assert [layer.name for layer in viewer.layers] == names and not notes


def test_closing_train_mid_run_cancels_it(viewer, image, scribbles, dock, tiny, click, qtbot,
                                          notes, train_tiny):
    train = train_tiny(arch="U-Net", iterations=100_000, preview_every=1)
    click(train.train_button)
    preview = f"{image.name} preview"
    qtbot.waitUntil(lambda: preview in viewer.layers, timeout=20_000)
    job = train.job
    viewer.window.remove_dock_widget(train)
    shown = np.array(viewer.layers[preview].data)
    names = [layer.name for layer in viewer.layers]
    qtbot.waitUntil(lambda: not job.running, timeout=20_000)
    qtbot.wait(100)
    assert job.cancelled and job.failed is None and store_for(viewer).saved is None
    assert [layer.name for layer in viewer.layers] == names
    np.testing.assert_array_equal(viewer.layers[preview].data, shown)  # no later preview
    assert not notes


@pytest.mark.parametrize("how", ["closed, then deleted", "viewer closed"])
def test_deleted_widgets_are_not_touched(viewer, image, gt, dock, qtbot, notes, calls, how):
    """Once the Qt objects of widgets are deleted (after their docks were closed, or with the
    viewer's window), events reach nothing of them."""
    cells = _instances(viewer, gt)
    store = store_for(viewer)
    store.set_model(_unetpp(image), "test")
    gone = [dock(name) for name in ("Weight map preview", "UNet++ levels", "Segment", "Train")]
    gone[0].labels_picker.set_layer("cells")
    pickers = {id(w): w.findChildren(LayerPicker) for w in gone}
    deleted = []
    for widget in gone:
        widget.destroyed.connect(lambda *_: deleted.append(1))
    if how == "viewer closed":
        viewer.close()
    else:
        for widget in gone:
            viewer.window.remove_dock_widget(widget)
            widget.deleteLater()
    qtbot.waitUntil(lambda: len(deleted) == len(gone), timeout=3000)
    names = [layer.name for layer in viewer.layers]
    calls.reset()
    if how == "viewer closed":  # the models outlive the window: dims, layer, model store
        viewer.dims.set_current_step(0, 1)
        cells.paint((1, 40, 40), int(cells.data.max()) + 1)
        cells.data = np.where(cells.data == 1, 0, cells.data)
        store.set_model(_unetpp(image), "another model")
        store.level_chosen.emit(1)
    else:
        _stir(viewer, cells, store, image)
    qtbot.wait(3 * DEBOUNCE_MS)
    for widget in gone:
        assert not calls.of(widget, pickers[id(widget)]), calls.of(widget, pickers[id(widget)])
    assert [layer.name for layer in viewer.layers] == names and not notes


def test_closed_widgets_can_be_garbage_collected(viewer, gt, dock, qtbot):
    """The connections hold the widgets weakly: once closed and forgotten, they go away, as
    does one that was never docked."""
    _instances(viewer, gt)
    refs = [weakref.ref(WeightMapWidget(viewer))]
    for name in ("Weight map preview", "UNet++ levels", "Segment", "Train"):
        w = dock(name)
        if name == "Weight map preview":
            w.labels_picker.set_layer("cells")
        refs.append(weakref.ref(w))
        viewer.window.remove_dock_widget(w)
    del w
    qtbot.wait(20)
    gc.collect()
    assert [r() for r in refs] == [None] * 5


def test_subscriptions_cut_napari_psygnal_and_qt_connections_on_close(qtbot):
    """The shared mechanism on its own: a connection of each kind reaches the callback (with
    the arguments it takes) until the owner widget closes, and only its own connections go."""
    from napari.utils.events import EmitterGroup
    from psygnal import Signal as PsygnalSignal
    from qtpy.QtCore import QObject, Signal
    from qtpy.QtWidgets import QWidget

    from napari_unetseg._widgets._common import Subscriptions

    class QtSource(QObject):
        changed = Signal(object)

    class PsygnalSource:
        changed = PsygnalSignal(object)

    class Owner(QWidget):
        def __init__(self):
            super().__init__()
            self.seen = []
            self.subscriptions = Subscriptions(self)

        def with_event(self, event=None):
            self.seen.append("event")

        def without_arguments(self):
            self.seen.append("none")

    napari_events, qt_source, psy = EmitterGroup(source=None, changed=None), QtSource(), \
        PsygnalSource()
    owner, other = Owner(), Owner()
    for w in (owner, other):
        qtbot.addWidget(w)
        for emitter in (napari_events.changed, qt_source.changed, psy.changed):
            w.subscriptions.connect(emitter, w.with_event)
            w.subscriptions.connect(emitter, w.with_event)  # once is enough
            w.subscriptions.connect(emitter, w.without_arguments)

    def fire():
        napari_events.changed()
        qt_source.changed.emit(1)
        psy.changed.emit(2)

    fire()
    assert owner.seen == other.seen == ["event", "none"] * 3
    owner.close()  # a Close event ends the widget
    assert Subscriptions.of(owner).is_closed and not Subscriptions.of(other).is_closed
    fire()
    assert len(owner.seen) == 6 and len(other.seen) == 12
    other.subscriptions.disconnect(qt_source.changed, other.with_event)
    fire()
    assert len(other.seen) == 17
