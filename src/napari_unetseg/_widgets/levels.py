"""UNet++ deep-supervision levels: look at each pruned level's output on the current slice.

UNet++ (Zhou et al. 2018) has one output head per level L1..Ldepth; level L needs only the
nodes X(i, j) with i + j <= L, so a lower level is a smaller, faster network ("pruned"), and
"accurate" averages every head. The slider picks a level; its output for the displayed slice
is computed in a worker and cached per (slice, level), so moving back and forth is instant and
moving napari's Z slider computes the new slice. The table lists each level's parameters and
FLOPs per pixel (:func:`napari_unetseg.models.describe`), the measured time per slice, and,
with a ground-truth labels layer, the Dice against it. A button hands the chosen level to the
Segment widget of the same viewer.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..inference import InferenceConfig, segment
from ..metrics import dice
from ..models import describe
from . import _common
from ._common import LayerPicker, current_index
from ._layout import scroll_body
from ._live import put_overlay
from ._onscreen import OnScreen
from ._registry import store_for
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["NO_UNETPP", "OUTPUT_STYLE", "LevelsWidget"]

CACHE_SIZE = 64
COLUMNS = ("params", "MFLOPs/px", "ms/slice", "Dice")
NO_UNETPP = ("Levels exist only for UNet++ models: in Train, choose architecture UNet++ and "
             "train (or load a UNet++ model file).")
#: The level output layer: translucent over the image, which stays visible under it.
OUTPUT_STYLE = {"colormap": "magma", "contrast_limits": (0.0, 1.0), "blending": "translucent",
                "opacity": 0.5}


class LevelsWidget(QWidget):
    """Dock widget comparing the output levels of a UNet++ model."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.store = store_for(napari_viewer)
        self.owner = _common.new_owner_id("levels")
        self.job: Job | None = None
        self.cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
        self._queue: list[tuple] = []
        self._wanted: tuple | None = None
        self._model: Any = None  # a private copy: never moved between devices under Segment
        self.subscriptions = _common.Subscriptions(self)  # cut when the widget is closed
        self.onscreen = OnScreen(self, self.request)
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.image_picker = LayerPicker(napari_viewer, Image, exclude_marked=True)
        self.gt_picker = LayerPicker(napari_viewer, Labels, optional=True, exclude_marked=True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setPageStep(1)
        self.level_label = QLabel()
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.measure_button = QPushButton("Measure all levels")
        self.apply_button = QPushButton("Use this level in Segment")
        self.unetpp_button = QPushButton("Train a UNet++…")
        self.unetpp_button.setToolTip("open the Train widget with architecture UNet++")
        self.status = _common.status_label()
        self._layout()
        self.slider.valueChanged.connect(self.request)
        self.image_picker.currentTextChanged.connect(self.request)
        self.gt_picker.currentTextChanged.connect(self._fill_table)
        self.subscriptions.connect(self.viewer.dims.events.current_step, self.request)
        self.measure_button.clicked.connect(self.measure_all)
        self.apply_button.clicked.connect(self.apply)
        self.unetpp_button.clicked.connect(self.train_unetpp)
        self.subscriptions.connect(self.store.model_changed, self._model_changed)
        self._model_changed()

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        form.addRow("ground truth", self.gt_picker)
        row = QHBoxLayout()
        row.addWidget(self.slider)
        row.addWidget(self.level_label)
        form.addRow("level", row)
        box = scroll_body(self)
        box.addWidget(self.model_label)
        box.addLayout(form)
        box.addWidget(self.table)
        box.addWidget(self.measure_button)
        box.addWidget(self.apply_button)
        box.addWidget(self.status)
        box.addWidget(self.unetpp_button)
        box.addStretch(1)

    # ------------------------------------------------------------------ model and levels

    def levels(self) -> list[int | str]:
        """Selectable outputs: ``1..depth`` then ``"accurate"`` (empty without a UNet++).

        Without deep supervision only the last head was trained: ``depth`` and "accurate".
        """
        saved = self.store.saved
        if saved is None or saved.config.arch != "unetpp":
            return []
        first = 1 if saved.config.deep_supervision else saved.config.depth
        return [*range(first, saved.config.depth + 1), "accurate"]

    def level(self) -> int | str | None:
        """The level the slider points at."""
        levels = self.levels()
        return levels[self.slider.value() - 1] if levels else None

    def _model_changed(self) -> None:
        self.cache.clear()
        self._queue.clear()
        self._wanted = None
        self._model = None
        levels = self.levels()
        self.model_label.setText(f"model: {self.store.describe()}")
        usable = bool(levels)
        for w in (self.slider, self.measure_button, self.apply_button):
            w.setEnabled(usable)
        self.table.setRowCount(len(levels))
        self.table.setVerticalHeaderLabels([_name(lv) for lv in levels])
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(
            self.table.verticalHeader().length() + header + 2 * self.table.frameWidth() + 2
        )
        self.unetpp_button.setVisible(not usable)
        if not usable:
            self.level_label.setText("")
            self.status.setText(NO_UNETPP)
            return
        self.slider.blockSignals(True)
        self.slider.setRange(1, len(levels))
        self.slider.setValue(len(levels))
        self.slider.blockSignals(False)
        info = describe(self.store.saved.config)
        params = [*info["params_by_level"], info["params"]]
        flops = [*info["flops_per_pixel_by_level"], info["flops_per_pixel"]]
        for row, (p, f) in enumerate(zip(params, flops, strict=True)):
            self.table.setItem(row, 0, QTableWidgetItem(f"{p:,}"))
            self.table.setItem(row, 1, QTableWidgetItem(f"{f / 1e6:.3g}"))
        self.status.setText("")
        self.request()

    # ------------------------------------------------------------------ computing

    def _key(self, level: Any) -> tuple | None:
        image = self.image_picker.layer()
        if image is None or level is None:
            return None
        return image.name, current_index(self.viewer, image), level

    def request(self, *args: Any) -> None:
        """Show the slider's level on the displayed slice (computed if not cached)."""
        self.level_label.setText(_name(self.level()) if self.level() is not None else "")
        key = self._key(self.level())
        if key is None:
            return
        if key in self.cache:
            self._show(key)
        elif self.onscreen.allows():  # behind another tab: computed when it comes to the front
            self._wanted = key  # only the latest view request is kept while scrubbing
            self._next()

    def measure_all(self) -> None:
        """Compute every level on the displayed slice (fills the time and Dice columns)."""
        keys = [self._key(lv) for lv in self.levels()]
        self._queue.extend(k for k in keys if k is not None and k not in self.cache)
        self._next()

    def _next(self) -> None:
        if self.job is not None and self.job.running:
            return
        key, self._wanted = self._wanted, None
        while key is None or key in self.cache:
            if not self._queue:
                return
            key = self._queue.pop(0)
        image, saved = self.image_picker.layer(), self.store.saved
        if image is None or image.name != key[0] or image.rgb or image.ndim not in (2, 3):
            # reached from slider and Z moves too: say it in the widget, not in a popup
            self.status.setText("choose a single-channel 2D image or 3D stack (Z, Y, X)")
            self._queue.clear()
            return
        if self._model is None:
            self._model = copy.deepcopy(saved.model)
        plane = np.asarray(image.data[key[1]] if image.ndim == 3 else image.data)
        config = InferenceConfig(level=key[2], batch_size=4)
        gen = segment(self._model, plane, normalization=saved.normalization, config=config)
        self.job = Job(gen, f"UNet++ {_name(key[2])}", on_result=lambda res: self._done(
            key, res), on_finished=lambda job: self._next(), owner=self)
        self.status.setText(f"computing {_name(key[2])} on slice {key[1]}…")
        self.job.start()

    def _done(self, key: tuple, res: Any) -> None:
        self.cache[key] = (np.asarray(res.probabilities), np.asarray(res.labels), res.seconds)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        self._fill_table()
        if key == self._key(self.level()):
            self._show(key)
        else:
            self.status.setText(f"{_name(key[2])} on slice {key[1]}: {res.seconds * 1e3:.0f} ms")

    def _show(self, key: tuple) -> None:
        image = self.image_picker.layer()
        if image is None or image.name != key[0]:
            return
        probs = self.cache[key][0][-1]  # the last class, as the Segment widget shows it
        layer = _common.find_output(self.viewer, self.owner, "level", image.name)
        shape = tuple(image.data.shape)
        data = np.zeros(shape, np.float32)
        if layer is not None and layer.data.shape == shape:
            data = np.asarray(layer.data)
        if image.ndim == 3:
            data[:] = 0
            data[key[1]] = probs
        else:
            data = probs.astype(np.float32)
        # a slice move must neither take the brush away nor cover the strokes
        put_overlay(self.viewer, self.owner, "level", image, data, "image",
                    f"{image.name} level output", **OUTPUT_STYLE)
        self.status.setText(f"{_name(key[2])} on slice {key[1]}")

    def _fill_table(self, *args: Any) -> None:
        image = self.image_picker.layer()
        if image is None:
            return
        z = current_index(self.viewer, image)
        for row, level in enumerate(self.levels()):
            hit = self.cache.get((image.name, z, level))
            ms = "" if hit is None else f"{hit[2] * 1e3:.1f}"
            self.table.setItem(row, 2, QTableWidgetItem(ms))
            self.table.setItem(row, 3, QTableWidgetItem("" if hit is None else self._dice(
                hit[1], z)))

    def _dice(self, labels: np.ndarray, z: int) -> str:
        gt_layer, saved = self.gt_picker.layer(), self.store.saved
        if gt_layer is None or saved is None:
            return ""
        gt = np.asarray(gt_layer.data[z] if gt_layer.ndim == 3 else gt_layer.data)
        values = np.asarray(saved.class_values)
        if gt.shape != labels.shape:
            return "shape?"
        pred = values[labels]
        outside = ~np.isin(gt, values)  # unlabeled pixels (0 in sparse scribbles) don't count
        filler = int(values.max()) + 1
        gt, pred = np.where(outside, filler, gt), np.where(outside, filler, pred)
        return f"{dice(pred, gt, classes=values)['mean']:.3f}"

    def train_unetpp(self) -> Any:
        """Open (or show) the Train widget of this viewer set to UNet++; returns it."""
        from ._layout import dock_of
        from .launch import PLUGIN

        try:
            _, train = self.viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
        except (KeyError, ValueError, RuntimeError) as e:  # e.g. a viewer without a window
            _common.error(f"Levels: could not open the Train widget: {e}", self)
            return None
        train.form.arch.setCurrentText("UNet++")
        dock = dock_of(train)
        if dock is not None:
            dock.show()
            dock.raise_()
        return train

    def apply(self) -> None:
        """Use the chosen level in the Segment widget(s) of this viewer."""
        level = self.level()
        if level is None:
            _common.error(f"Levels: there is no UNet++ model to choose a level of. {NO_UNETPP}",
                          self)
            return
        self.store.level_chosen.emit(level)
        _common.info(f"Segment widget set to UNet++ {_name(level)}")


def _name(level: Any) -> str:
    return "accurate" if level == "accurate" else f"L{level}"
