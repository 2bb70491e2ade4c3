"""Weight-map preview: the U-Net pixel weights of painted instances, live.

Shows ``w(x) = wc(x) + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` (Ronneberger et al. 2015,
eq. 2, computed by :func:`napari_unetseg.weightmap.weight_map`) as an Image layer over the
data. The displayed slice is recomputed, debounced by a 100 ms single-shot timer, whenever a
slider moves, the user paints, or the Z slider moves; a button computes the whole stack in a
worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ..weightmap import weight_map
from . import _common
from ._common import LayerPicker, current_index, find_output, put_output
from ._layout import scroll_body
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["WeightMapWidget"]

DEBOUNCE_MS = 100


def _slider(lo: float, hi: float, value: float) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


class WeightMapWidget(QWidget):
    """Dock widget previewing the U-Net weight map of a labels layer of instances."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.owner = _common.new_owner_id("weightmap")
        self.job: Job | None = None
        self._watched: Any = None
        self._filled: dict[int, tuple] = {}  # slice -> parameters it was computed with
        self.subscriptions = _common.Subscriptions(self)  # cut when the widget is closed
        self.labels_picker = LayerPicker(napari_viewer, Labels)
        self.w0 = _slider(0.0, 50.0, 10.0)
        self.sigma = _slider(0.5, 25.0, 5.0)
        self.balance = QCheckBox("class balancing (wc)")
        self.balance.setChecked(True)
        self.blending = QComboBox()
        self.blending.addItems(["additive", "translucent"])
        self.stack_button = QPushButton("Whole stack")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self._layout()
        self.timer.timeout.connect(self._timed_update)
        for signal in (self.w0.valueChanged, self.sigma.valueChanged, self.balance.toggled):
            signal.connect(self.schedule)
        self.blending.currentTextChanged.connect(self._set_blending)
        self.labels_picker.currentTextChanged.connect(self._watch_labels)
        self.stack_button.clicked.connect(self.compute_stack)
        self.subscriptions.connect(self.viewer.dims.events.current_step, self.schedule)
        self._watch_labels()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("instances", self.labels_picker)
        form.addRow("w0", self.w0)
        form.addRow("sigma (px)", self.sigma)
        form.addRow("", self.balance)
        form.addRow("blending", self.blending)
        box = scroll_body(self)
        box.addLayout(form)
        box.addWidget(self.stack_button)
        box.addWidget(self.status)
        box.addStretch(1)

    # ------------------------------------------------------------------ parameters and events

    def params(self) -> tuple[float, float, str | None]:
        """``(w0, sigma, class_weights)`` as set in the widget."""
        balance = "balanced" if self.balance.isChecked() else None
        return float(self.w0.value()), float(self.sigma.value()), balance

    def schedule(self, *args: Any) -> None:
        """Recompute the displayed slice once the user stops changing things for 100 ms."""
        self.timer.start()

    def _watch_labels(self, *args: Any) -> None:
        if self._watched is not None:
            for emitter in (self._watched.events.data, self._watched.events.paint):
                self.subscriptions.disconnect(emitter, self._painted)
        self._watched = self.labels_picker.layer()
        if self._watched is not None:
            for emitter in (self._watched.events.data, self._watched.events.paint):
                self.subscriptions.connect(emitter, self._painted)
        self._filled.clear()
        self.schedule()

    def _timed_update(self) -> None:
        self.update_slice(quiet=True)

    def _painted(self, event: Any = None) -> None:
        self._filled.pop(self._current_z(), None)
        self.schedule()

    def _current_z(self) -> int:
        layer = self.labels_picker.layer()
        return 0 if layer is None else current_index(self.viewer, layer)

    def _set_blending(self, mode: str) -> None:
        layer = self._output()
        if layer is not None:
            layer.blending = mode

    # ------------------------------------------------------------------ computing

    def _checked_labels(self, quiet: bool = False) -> Any:
        """The chosen labels layer, or None after a message (in the widget when ``quiet``)."""
        layer = self.labels_picker.layer()
        if layer is None:
            message = "choose a labels layer of painted instances first"
        elif layer.ndim not in (2, 3):
            message = (f"labels layer {layer.name!r} has {layer.ndim} dimensions; expected a "
                       "2D image or a 3D stack (Z, Y, X)")
        else:
            return layer
        self.status.setText(message)
        if not quiet:
            _common.error(f"Weight map: {message}.")
        return None

    def _output(self) -> Any:
        layer = self.labels_picker.layer()
        if layer is None:
            return None
        return find_output(self.viewer, self.owner, "weights", layer.name)

    def _map_array(self, labels: Any) -> np.ndarray:
        out = self._output()
        if out is not None and out.data.shape == labels.data.shape:
            return np.asarray(out.data)
        self._filled.clear()
        return np.zeros(labels.data.shape, dtype=np.float32)

    def _show(self, labels: Any, weights: np.ndarray) -> Any:
        layer = put_output(
            self.viewer, self.owner, "weights", labels, weights, "image",
            f"{labels.name} weight map", colormap="inferno",
            blending=self.blending.currentText(), opacity=0.7,
        )
        top = float(weights.max()) if weights.size else 1.0
        layer.contrast_limits = (0.0, max(top, 1e-6))
        layer.refresh()
        return layer

    def update_slice(self, quiet: bool = False) -> None:
        """Compute the weight map of the displayed slice and show it.

        ``quiet``: a live update (slider, painting, Z move) reports problems in the widget's
        status line instead of a notification, so moving through a stack never floods popups.
        """
        labels = self._checked_labels(quiet)
        if labels is None:
            return
        params = self.params()
        if any(p != params for p in self._filled.values()):
            self._filled.clear()  # other slices used other settings: blank them
            weights = np.zeros(labels.data.shape, dtype=np.float32)
        else:
            weights = self._map_array(labels)
        z = current_index(self.viewer, labels)
        plane = np.asarray(labels.data[z] if labels.ndim == 3 else labels.data)
        try:
            w = weight_map(plane, *params)
        except (ValueError, TypeError) as e:
            _common.error(f"Weight map: {e}")
            return
        if labels.ndim == 3:
            weights[z] = w
        else:
            weights = w
        self._filled[z] = params
        self._show(labels, weights)
        self.status.setText(f"slice {z}: w from {w.min():.2f} to {w.max():.2f}")

    def compute_stack(self) -> Job | None:
        """Compute every slice in a worker thread; returns the started job."""
        labels = self._checked_labels()
        if labels is None or (self.job is not None and self.job.running):
            return None
        data = np.array(labels.data)  # a snapshot: painting goes on meanwhile
        stack = data if data.ndim == 3 else data[None]
        params = self.params()

        def work():
            out = np.empty(stack.shape, dtype=np.float32)
            for z, plane in enumerate(stack):
                out[z] = weight_map(plane, *params)
                yield z + 1
            return out if data.ndim == 3 else out[0]

        def done(weights: np.ndarray) -> None:
            self._filled = dict.fromkeys(range(len(stack)), params)
            self._show(labels, weights)
            self.status.setText(f"{len(stack)} slices: w up to {weights.max():.2f}")

        self.job = Job(work(), "Weight map", total=len(stack), on_event=lambda n: n,
                       on_result=done, owner=self)
        return self.job.start()
