"""Weight-map preview: the U-Net pixel weights training will use, live.

Shows the weights of :func:`napari_unetseg.targets.training_targets`, the function the
trainer calls, for the chosen labels layer read in the chosen labels mode: the border term
``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` of Ronneberger et al. (2015, eq. 2) between the
objects of dense labels (the cells between membranes) and of instances (after their contact
pixels became background), plus the class balance; sparse strokes get the class balance. The
mode and the sliders are the viewer's shared weight settings (:mod:`._weights`): Train trains
with them and its labels mode is this one. The displayed slice is recomputed, debounced by a
100 ms single-shot timer, whenever a setting changes, the user paints, or the Z slider moves;
a button computes the whole stack in a worker thread. A preview dock has one layer: each
change updates it, another labels layer reuses it, and a reopened dock takes over the layer a
closed one left (so previews never pile up, additive, into a white canvas).
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

from ..targets import training_targets
from . import _common
from ._common import MARKER, LayerPicker, current_index
from ._layout import scroll_body
from ._onscreen import OnScreen
from ._train_form import LABELS_MODES
from ._weights import weight_settings_for
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["WeightMapWidget"]

DEBOUNCE_MS = 100
ROLE = "weights"
_OPEN: set[str] = set()  # owner ids of the preview docks that are open


def _slider(lo: float, hi: float, value: float) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setRange(lo, hi)
    s.setValue(value)
    return s


class WeightMapWidget(QWidget):
    """Dock widget previewing the training weight map of a labels layer."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.settings = weight_settings_for(napari_viewer)
        self.owner = _common.new_owner_id("weightmap")
        _OPEN.add(self.owner)
        self.job: Job | None = None
        self._watched: Any = None
        self._filled: dict[int, tuple] = {}  # slice -> parameters it was computed with
        self.subscriptions = _common.Subscriptions(self)  # cut when the widget is closed
        self.onscreen = OnScreen(self, self.schedule)
        owner = self.owner
        self.subscriptions.closed.connect(lambda: _OPEN.discard(owner))
        self.subscriptions.destroyed.connect(lambda *_: _OPEN.discard(owner))
        self.labels_picker = LayerPicker(napari_viewer, Labels)
        self.mode = QComboBox()
        self.mode.addItems(list(LABELS_MODES))
        self.mode.setToolTip("how Train reads the labels (shared with Train)")
        self.w0 = _slider(0.0, 50.0, self.settings.w0)
        self.sigma = _slider(0.5, 25.0, self.settings.sigma)
        self.balance = QCheckBox("class balancing (wc)")
        self.balance.setChecked(self.settings.class_balance)
        self.blending = QComboBox()
        self.blending.addItems(["additive", "translucent"])
        self.stack_button = QPushButton("Whole stack")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self._layout()
        self._show_settings()
        self.timer.timeout.connect(self._timed_update)
        for signal in (self.w0.valueChanged, self.sigma.valueChanged, self.balance.toggled,
                       self.mode.currentTextChanged):
            signal.connect(self._edited)
        self.subscriptions.connect(self.settings.changed, self._settings_changed)
        self.blending.currentTextChanged.connect(self._set_blending)
        self.labels_picker.currentTextChanged.connect(self._watch_labels)
        self.stack_button.clicked.connect(self.compute_stack)
        self.subscriptions.connect(self.viewer.dims.events.current_step, self.schedule)
        self._watch_labels()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("labels", self.labels_picker)
        form.addRow("labels are", self.mode)
        form.addRow("w0", self.w0)
        form.addRow("sigma (px)", self.sigma)
        form.addRow("", self.balance)
        form.addRow("blending", self.blending)
        box = scroll_body(self)
        box.addLayout(form)
        box.addWidget(self.stack_button)
        box.addWidget(self.status)
        box.addStretch(1)

    # ------------------------------------------------------------------ settings and events

    def labels_mode(self) -> str:
        return LABELS_MODES[self.mode.currentText()]

    def params(self) -> tuple[str, float, float, bool]:
        """``(labels_mode, w0, sigma, class_balance)`` as set in the widget."""
        return (self.labels_mode(), float(self.w0.value()), float(self.sigma.value()),
                self.balance.isChecked())

    def _edited(self, *args: Any) -> None:
        mode, w0, sigma, balance = self.params()
        self.settings.update(labels_mode=mode, w0=w0, sigma=sigma, class_balance=balance)
        self.schedule()

    def _show_settings(self) -> None:
        """Put the shared settings into the fields (they may come from Train)."""
        s = self.settings
        names = {v: k for k, v in LABELS_MODES.items()}
        fields = (self.mode, self.w0, self.sigma, self.balance)
        for f in fields:
            f.blockSignals(True)
        self.mode.setCurrentText(names[s.labels_mode])
        self.w0.setValue(s.w0)
        self.sigma.setValue(s.sigma)
        self.balance.setChecked(s.class_balance)
        for f in fields:
            f.blockSignals(False)
        border = s.labels_mode != "sparse"
        self.w0.setEnabled(border)
        self.sigma.setEnabled(border)

    def _settings_changed(self) -> None:
        self._show_settings()
        self.schedule()

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
        if self.onscreen.allows():  # behind another tab: updated when it comes to the front
            self.update_slice(quiet=True)

    def _painted(self, event: Any = None) -> None:
        self._filled.clear()  # strokes change the class counts of every slice
        self.schedule()

    def _set_blending(self, mode: str) -> None:
        layer = self._output()
        if layer is not None:
            layer.blending = mode

    # ------------------------------------------------------------------ computing

    def _checked_labels(self, quiet: bool = False) -> Any:
        """The chosen labels layer, or None after a message (in the widget when ``quiet``)."""
        layer = self.labels_picker.layer()
        if layer is None:
            message = "choose a labels layer first"
        elif layer.ndim not in (2, 3):
            message = (f"labels layer {layer.name!r} has {layer.ndim} dimensions; expected a "
                       "2D image or a 3D stack (Z, Y, X)")
        else:
            return layer
        self._say(message, quiet)
        return None

    def _say(self, message: str, quiet: bool) -> None:
        self.status.setText(message)
        if not quiet:
            _common.error(f"Weight map: {message}.")

    def _output(self) -> Any:
        """This dock's preview layer (whichever labels layer it shows), else the one a closed
        preview dock left, which this dock takes over; None if there is neither."""
        orphan = None
        for layer in self.viewer.layers:
            mark = layer.metadata.get(MARKER)
            if not isinstance(mark, dict) or mark.get("role") != ROLE:
                continue
            owner = str(mark.get("owner", ""))
            if owner == self.owner:
                return layer
            if orphan is None and owner.startswith("weightmap") and owner not in _OPEN:
                orphan = layer
        if orphan is not None and not self.subscriptions.is_closed:
            orphan.metadata[MARKER]["owner"] = self.owner
            return orphan
        return None

    def _weights(self, labels: Any, z: int | None) -> np.ndarray:
        """The training weights of slice ``z`` (None: all) of ``labels``, as a stack."""
        data = np.asarray(labels.data)
        stack = data if data.ndim == 3 else data[None]
        mode, w0, sigma, balance = self.params()
        made = training_targets(stack, mode, w0=w0, sigma=sigma, balance=balance,
                                slices=None if z is None else [z])
        return made.weight

    def _show(self, labels: Any, weights: np.ndarray) -> Any:
        """Write ``weights`` into the preview layer (made once, then updated in place)."""
        data = weights if labels.ndim == 3 else weights[0]
        layer = self._output()
        name = f"{labels.name} weight map"
        if layer is not None and layer.data.shape != data.shape:
            self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            meta = {MARKER: {"owner": self.owner, "role": ROLE, "source": labels.name}}
            layer = self.viewer.add_image(
                data, name=name, metadata=meta, colormap="inferno", opacity=0.7,
                blending=self.blending.currentText(), scale=tuple(labels.scale),
                translate=tuple(labels.translate))
        else:
            layer.data = data
            if layer.metadata[MARKER].get("source") != labels.name:  # now for another layer
                layer.metadata[MARKER]["source"] = labels.name
                if name not in self.viewer.layers:
                    layer.name = name
        top = float(data.max()) if data.size else 1.0
        layer.contrast_limits = (0.0, max(top, 1e-6))
        layer.refresh()
        return layer

    def update_slice(self, quiet: bool = False) -> None:
        """Compute the training weights of the displayed slice and show them.

        ``quiet``: a live update (slider, painting, Z move) reports problems in the widget's
        status line instead of a notification, so moving through a stack never floods popups.
        """
        labels = self._checked_labels(quiet)
        if labels is None:
            return
        params = self.params()
        z = current_index(self.viewer, labels) if labels.ndim == 3 else 0
        try:
            w = self._weights(labels, z)
        except (ValueError, TypeError) as e:
            self._say(f"slice {z}: {e}", quiet)
            return
        out = self._output()
        keep = (out is not None and out.metadata[MARKER].get("source") == labels.name
                and out.data.shape == labels.data.shape
                and all(p == params for p in self._filled.values()))
        if keep and labels.ndim == 3:
            w[[k for k in self._filled if k != z]] = np.asarray(out.data)[
                [k for k in self._filled if k != z]]
        else:
            self._filled.clear()
        self._filled[z] = params
        self._show(labels, w)
        wz = w[z]
        self.status.setText(f"slice {z}: w from {wz.min():.2f} to {wz.max():.2f} "
                            f"({self.settings.describe()})")

    def compute_stack(self) -> Job | None:
        """Compute every slice in a worker thread; returns the started job."""
        labels = self._checked_labels()
        if labels is None or (self.job is not None and self.job.running):
            return None
        data = np.array(labels.data)  # a snapshot: painting goes on meanwhile
        stack = data if data.ndim == 3 else data[None]
        params = self.params()
        mode, w0, sigma, balance = params

        def work():
            out = np.zeros(stack.shape, np.float32)
            for z in range(len(stack)):
                try:
                    made = training_targets(stack, mode, w0=w0, sigma=sigma,
                                            balance=balance, slices=[z])
                except ValueError:  # e.g. a slice without objects: not trained on, 0
                    made = None
                if made is not None:
                    out[z] = made.weight[z]
                yield z + 1
            return out

        def done(weights: np.ndarray) -> None:
            self._filled = dict.fromkeys(range(len(stack)), params)
            self._show(labels, weights)
            self.status.setText(f"{len(stack)} slices: w up to {weights.max():.2f}")

        self.job = Job(work(), "Weight map", total=len(stack), on_event=lambda n: n,
                       on_result=done, owner=self)
        return self.job.start()
