"""Fixtures for the dock-widget tests: a viewer with a small crop of the EM sample, recorded
notifications, and helpers to set the Train widget to a tiny configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

PLUGIN = "napari-unetseg"
IMAGE = "EM image (ISBI sample)"
GT = "membrane ground truth (ISBI sample)"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # (one torch thread for every test: tests/conftest.py)


@pytest.fixture(autouse=True)
def _no_modal_questions(monkeypatch):
    """A modal question would wait for a click that never comes: fail instead. Tests that
    expect one replace ``_ask.ask_dense`` themselves."""
    from napari_unetseg._widgets import _ask

    def unexpected(parent, name, coverage):
        raise AssertionError(f"unexpected question: train {name!r} ({coverage:.0%}) as dense?")

    monkeypatch.setattr(_ask, "ask_dense", unexpected)


@pytest.fixture
def notes(monkeypatch):
    """Messages sent to napari notifications by the widgets, as ``(kind, text)``."""
    from napari_unetseg._widgets import _common

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(_common, "show_error", lambda m: seen.append(("error", m)))
    monkeypatch.setattr(_common, "show_warning", lambda m: seen.append(("warning", m)))
    monkeypatch.setattr(_common, "show_info", lambda m: seen.append(("info", m)))
    return seen


@pytest.fixture
def viewer(make_napari_viewer):
    """A viewer with the packaged sample opened as a user would, cropped to 2 x 128 x 128."""
    v = make_napari_viewer()
    v.open_sample(PLUGIN, "em_stack")
    assert [layer.name for layer in v.layers] == [IMAGE, GT]
    for layer in v.layers:
        layer.data = np.ascontiguousarray(layer.data[:2, :128, :128])
    v.dims.set_current_step(0, 0)
    return v


@pytest.fixture
def gt(viewer):
    """The sample's ground-truth labels layer (1 = membrane, 2 = cell interior)."""
    return viewer.layers[GT]


@pytest.fixture
def image(viewer):
    """The sample's image layer."""
    return viewer.layers[IMAGE]


@pytest.fixture
def scribbles(viewer):
    """A labels layer holding a sparse grid of ground-truth pixels, as painting would."""
    gt = np.asarray(viewer.layers[GT].data)
    painted = np.zeros_like(gt)
    painted[:, ::6, ::6] = gt[:, ::6, ::6]
    return viewer.add_labels(painted, name="scribbles")


@pytest.fixture
def dock(viewer):
    """Open a widget of the plugin the way the Plugins menu does; returns the inner widget."""

    def open_widget(name):
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        return widget

    return open_widget


def _make_tiny(widget, arch="UNet++", iterations=10, preview_every=5):
    form = widget.form
    form.arch.setCurrentText(arch)
    form.depth.setValue(2)
    form.width.setValue(4)
    form.iterations.setValue(iterations)
    form.patch.setValue(64)
    form.batch.setValue(2)
    form.augment.setChecked(False)
    form.device.setCurrentText("cpu")
    form.preview_every.setValue(preview_every)


@pytest.fixture
def tiny():
    """``tiny(train_widget, arch=..., iterations=..., preview_every=...)``: a configuration
    that trains in about a second (width 4, depth 2, patch 64, batch 2, no augmentation)."""
    return _make_tiny


@pytest.fixture
def train_tiny(dock, image, scribbles):
    """``train_tiny(arch=..., iterations=..., preview_every=...)``: a docked Train widget
    picking the EM sample and the scribbles, configured as :func:`tiny` does."""

    def make(**kw):
        train = dock("Train")
        train.image_picker.set_layer(image.name)
        train.labels_picker.set_layer(scribbles.name)
        _make_tiny(train, **kw)
        return train

    return make


@pytest.fixture
def click(qtbot):
    """``click(button)``: a real left mouse click on a Qt button."""
    from qtpy.QtCore import Qt

    return lambda button: qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


@pytest.fixture
def wait_job(qtbot):
    """``wait_job(widget)``: wait until the widget's worker finished and its slots ran."""

    def wait(widget, timeout=30_000):
        qtbot.waitUntil(lambda: widget.job is not None and not widget.job.running,
                        timeout=timeout)

    return wait
