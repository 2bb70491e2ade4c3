"""Segment dock widget: apply the viewer's model to an image layer, slice or stack.

Runs :func:`napari_unetseg.inference.segment` in a worker with a progress bar and Cancel.
The result goes to two layers named after the image, ``"<image> probabilities"`` (the chosen
class) and ``"<image> segmentation"`` (labels in the training label values), and with
*instances* a third, ``"<image> instances"``: the connected objects of the chosen class, or the
cells between boundaries when the chosen class is the boundary (a seeded watershed,
:func:`napari_unetseg.postprocess.iter_instances`). A re-run updates
the layers this widget made (found by their metadata marker), never a layer the user made.
Layers are written only when the run completes, so a cancelled run leaves nothing half-made.
A lazy stack (dask or zarr data, e.g. ``viewer.add_image(dask.array.from_zarr(...))``) is read
one slice at a time and, when zarr is installed, its outputs are zarr arrays in a temporary
folder, written slice by slice, so neither the image nor the result is held whole in memory.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ..bundled import load_bundled, normalization_for
from ..inference import InferenceConfig, ProgressEvent, SegmentResult, segment
from ..postprocess import BoundaryInstances, iter_instances
from . import _common, _files
from ._common import LayerPicker, current_index, find_output, put_output
from ._layout import scroll_body
from ._registry import store_for
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]

SCOPES = ("current slice", "whole stack")
#: Instances made after segmenting: none, the connected objects of the chosen class, or the
#: regions between the boundaries of the chosen class (EM membranes: cells, neurites).
INSTANCES = ("none", "objects of this class", "cells between (class = boundary)")


class SegmentWidget(QWidget):
    """Dock widget running tiled inference of the viewer's model."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.store = store_for(napari_viewer)
        self.owner = _common.new_owner_id("segment")
        self.job: Job | None = None
        self.subscriptions = _common.Subscriptions(self)  # cut when the widget is closed
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.load_button = QPushButton("Load model…")
        self.bundled_button = QPushButton("Use bundled EM membranes")
        self.bundled_button.setToolTip(
            "the pretrained EM membrane model shipped with napari-unetseg (ISBI 2012, "
            "non-commercial terms): segments membranes with no training")
        self.image_picker = LayerPicker(napari_viewer, Image, exclude_marked=True)
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPES))
        self.tile, self.batch = QSpinBox(), QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(32)
        self.tile.setSpecialValueText("auto")  # 0
        self.tile.setValue(0)
        self.tile.setToolTip(
            "largest input tile; tiles are balanced to cover the image; auto: 1024 px on "
            "CUDA, 768 px elsewhere"
        )
        self.halo = QSpinBox()
        self.halo.setRange(-1, 512)
        self.halo.setSpecialValueText("auto")  # -1
        self.halo.setValue(-1)
        self.halo.setToolTip(
            "context pixels around every tile, computed and discarded (U-Net's overlap-tile); "
            "auto: 80 px for a depth-4 'same' network (seamless: the tile size does not change "
            "the labels), 0 for 'valid' networks; 0 with an overlap blends tiles instead"
        )
        self.batch.setRange(0, 256)
        self.batch.setSpecialValueText("auto")
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(-0.05, 0.9)
        self.overlap.setSingleStep(0.05)
        self.overlap.setSpecialValueText("auto")  # -0.05
        self.overlap.setValue(-0.05)
        self.overlap.setToolTip(
            "overlap of output tiles, blended, a fraction; auto: 0 with a halo, else 0.125"
        )
        self.device = QComboBox()
        self.device.addItems(_common.available_devices())
        self.tta = QCheckBox("flip test-time augmentation")
        self.level, self.show_class = QComboBox(), QComboBox()
        self.instances = QComboBox()
        self.instances.addItems(list(INSTANCES))
        self.instances.setToolTip(
            "also make an instances layer: the connected objects of the class above, or the "
            "cells between boundaries when that class is the boundary (membrane), by a seeded "
            "watershed on its probability"
        )
        self.level.setToolTip("UNet++: mean of all heads (accurate) or a pruned level")
        self.run_button, self.cancel_button = QPushButton("Segment"), QPushButton("Cancel")
        self.status = _common.status_label()
        self._layout()
        self.load_button.clicked.connect(self.load_model)
        self.bundled_button.clicked.connect(self.use_bundled)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.subscriptions.connect(self.store.model_changed, self._model_changed)
        self.subscriptions.connect(self.store.level_chosen, self.set_level)
        self._model_changed()
        self._set_running(False)

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("image", self.image_picker)
        form.addRow("segment", self.scope)
        form.addRow("max tile size", self.tile)
        form.addRow("tile halo", self.halo)
        form.addRow("blended overlap", self.overlap)
        form.addRow("batch", self.batch)
        form.addRow("device", self.device)
        form.addRow("", self.tta)
        form.addRow("UNet++ level", self.level)
        form.addRow("probability of", self.show_class)
        form.addRow("instances", self.instances)
        run = QHBoxLayout()
        run.addWidget(self.run_button)
        run.addWidget(self.cancel_button)
        box = scroll_body(self)
        box.addWidget(self.model_label)
        models = QHBoxLayout()
        models.addWidget(self.load_button)
        models.addWidget(self.bundled_button)
        box.addLayout(models)
        box.addLayout(form)
        box.addLayout(run)
        box.addWidget(self.status)
        box.addStretch(1)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _model_changed(self) -> None:
        saved = self.store.saved
        self.model_label.setText(f"model: {self.store.describe()}")
        self.level.clear()
        self.show_class.clear()
        if saved is None:
            return
        depth = saved.config.depth if saved.config.arch == "unetpp" else 0
        first = 1 if saved.config.deep_supervision else depth  # untrained heads: not offered
        self.level.addItems(["accurate"] + [f"L{i}" for i in range(first, depth + 1) if i])
        self.level.setEnabled(depth > 0)
        names = saved.class_names or [str(v) for v in saved.class_values]
        self.show_class.addItems([f"{v}: {n}" if str(v) != n else n
                                  for v, n in zip(saved.class_values, names, strict=False)])
        self.show_class.setCurrentIndex(self.show_class.count() - 1)

    def set_level(self, level: Any) -> None:
        """Choose the UNet++ output: ``"accurate"`` or a level ``1..depth``."""
        text = "accurate" if level in (None, "accurate") else f"L{int(level)}"
        if self.level.findText(text) >= 0:
            self.level.setCurrentText(text)

    def chosen_level(self) -> int | str | None:
        """The level to pass to :class:`InferenceConfig` (None for U-Net and ResUNet)."""
        if not self.level.isEnabled() or not self.level.currentText():
            return None
        text = self.level.currentText()
        return "accurate" if text == "accurate" else int(text[1:])

    def load_model(self) -> Any:
        """Load model…: read a model file and make it the viewer's model."""
        return _files.load_with_dialog(self, self.store)

    def use_bundled(self) -> Any:
        """Make the bundled EM membrane model the viewer's model (no training needed)."""
        try:
            saved = load_bundled()
        except (OSError, ValueError) as e:
            _common.error(f"Segment: {e}")
            return None
        self.store.set_model(saved, "bundled EM membranes, no training")
        return saved

    # ------------------------------------------------------------------ running

    def _config(self) -> InferenceConfig:
        batch = self.batch.value()
        return InferenceConfig(
            tile=self.tile.value() or "auto",
            halo="auto" if self.halo.value() < 0 else self.halo.value(),
            overlap="auto" if self.overlap.value() < 0 else float(self.overlap.value()),
            batch_size="auto" if batch == 0 else batch, device=self.device.currentText(),
            tta=self.tta.isChecked(), level=self.chosen_level(),
        )

    def _checked_image(self, saved: Any) -> Any:
        image = self.image_picker.layer()
        if image is None:
            _common.error("Segment: choose an image layer first.", self)
        elif image.rgb or image.multiscale or image.ndim not in (2, 3):
            _common.error(f"Segment: image {image.name!r} must be a single-channel 2D image or "
                          f"3D stack (Z, Y, X); got shape {tuple(image.data.shape)}"
                          f"{' (RGB)' if image.rgb else ''}.", self)
        elif saved.config.in_channels != 1:
            _common.error(f"Segment: the model expects {saved.config.in_channels} channels; "
                          "this widget segments single-channel images.", self)
        else:
            return image
        return None

    def start(self) -> Job | None:
        """Check the inputs and start segmenting in a worker; returns the job or None."""
        if self.job is not None and self.job.running:
            return None
        saved = self.store.saved
        if saved is None:
            _common.error("Segment: no model yet. Train one or load a model file first.", self)
            return None
        image = self._checked_image(saved)
        if image is None:
            return None
        try:
            config = self._config()
        except (ValueError, TypeError) as e:
            _common.error(f"Segment: {e}", self)
            return None
        z = current_index(self.viewer, image)
        one = self.scope.currentText() == "current slice" and image.ndim == 3
        slices = [z] if one else None
        n = 1 if one or image.ndim == 2 else image.data.shape[0]
        if image.ndim == 3 and not isinstance(image.data, np.ndarray) and find_spec("zarr"):
            out, targets = self._lazy_outputs(image, saved, slices)

            def on_result(res: SegmentResult) -> None:
                self._write_lazy(res, image, targets, n)
            if self.instances.currentIndex():
                _common.warning("Segment: instances are made for in-memory images; this "
                                "stack is read lazily, so none are made.", self)
        else:
            out = None

            def on_result(res: Any) -> None:
                res, inst = res if isinstance(res, tuple) else (res, None)
                self._write(res, image, saved, z if one else None, n)
                if inst is not None:
                    self._write_instances(inst, image, z if one else None)
        gen = segment(saved.model, image.data, normalization=normalization_for(saved, image.data),
                      config=config, slices=slices, out=out)
        if out is None and self.instances.currentIndex():
            gen = self._with_instances(gen)
        self.job = Job(gen, "Segmentation", total=0, on_event=self._on_event,
                       on_result=on_result, on_finished=self._on_finished, owner=self)
        self._set_running(True)
        self.status.setText("segmenting…")
        return self.job.start()

    def _with_instances(self, gen: Any) -> Any:
        """``gen``, then the instances of its chosen class (one event per slice); returns
        ``(result, instances)``."""
        k = max(self.show_class.currentIndex(), 0)
        boundaries = BoundaryInstances() if self.instances.currentIndex() == 2 else None
        res = yield from gen
        maps = np.asarray(res.probabilities)[..., k, :, :].astype(np.float32)
        steps, n = iter_instances(maps, boundaries), 1 if maps.ndim == 2 else len(maps)
        while True:
            try:
                z = next(steps)
            except StopIteration as stop:
                return res, stop.value
            yield ProgressEvent(z + 1, n, z, f"instances: slice {z + 1}/{n}")

    def _write_instances(self, inst: np.ndarray, image: Any, z: int | None) -> None:
        if z is not None:  # one slice of a stack: keep the other slices of earlier runs
            whole = self._target("instances", image, np.int32)
            whole[z] = inst[0]
            inst = whole
        put_output(self.viewer, self.owner, "instances", image, inst, "labels",
                   f"{image.name} instances", opacity=0.5)

    def cancel(self) -> None:
        """Stop after the current batch of tiles; no output layer is written or changed."""
        if self.job is not None and self.job.running:
            self.job.cancel()

    def _on_event(self, event: Any) -> int:
        if self.job is not None and self.job.bar is not None and self.job.bar.total != event.total:
            self.job.bar.total = event.total
        self.status.setText(event.message)
        return event.done

    def _target(self, role: str, image: Any, dtype: Any) -> np.ndarray:
        layer = find_output(self.viewer, self.owner, role, image.name)
        shape = tuple(image.data.shape)
        if layer is not None and layer.data.shape == shape and layer.data.dtype == dtype:
            return np.array(layer.data)
        return np.zeros(shape, dtype=dtype)

    def _write(self, res: SegmentResult, image: Any, saved: Any, z: int | None, n: int) -> None:
        k = max(self.show_class.currentIndex(), 0)
        probs = np.asarray(res.probabilities)[..., k, :, :].astype(np.float32)
        labels = _common.class_lut(saved.class_values)[np.asarray(res.labels)]
        dtype = labels.dtype
        if z is not None:  # one slice of a stack: keep the other slices of earlier runs
            p, lab = self._target("probabilities", image, np.float32), self._target(
                "segmentation", image, dtype)
            p[z], lab[z] = probs[0], labels[0]
            probs, labels = p, lab
        put_output(self.viewer, self.owner, "probabilities", image, probs, "image",
                   f"{image.name} probabilities", colormap="magma", blending="additive",
                   contrast_limits=(0.0, 1.0), opacity=0.6)
        put_output(self.viewer, self.owner, "segmentation", image, labels, "labels",
                   f"{image.name} segmentation", opacity=0.5)
        self.status.setText(f"{n} slice(s) in {res.seconds:.2f} s "
                            f"({res.seconds / max(n, 1):.3f} s per slice)")

    def _lazy_outputs(self, image: Any, saved: Any, slices: list[int] | None) -> tuple:
        """``out`` sinks for :func:`segment` and the zarr arrays they fill, for a lazy stack.

        A whole-stack run writes new arrays (the old layers stay as they were until it
        completes); a one-slice run writes its slice into this widget's existing arrays.
        """
        shape, k = tuple(image.data.shape), max(self.show_class.currentIndex(), 0)
        lut = _common.class_lut(saved.class_values)
        targets = [_zarr_like(find_output(self.viewer, self.owner, role, image.name) if slices
                              else None, shape, dtype)
                   for role, dtype in (("probabilities", np.float32), ("segmentation", lut.dtype))]
        zs = list(range(shape[0])) if slices is None else slices
        sinks = (_Sink(targets[0], zs, (len(zs), saved.config.classes, *shape[1:]),
                       lambda p: p[k]),
                 _Sink(targets[1], zs, (len(zs), *shape[1:]), lambda lab: lut[lab]))
        return sinks, targets

    def _write_lazy(self, res: SegmentResult, image: Any, targets: list, n: int) -> None:
        for (role, kind, kw), data in zip(
            (("probabilities", "image", {"colormap": "magma", "blending": "additive",
                                         "contrast_limits": (0.0, 1.0), "opacity": 0.6}),
             ("segmentation", "labels", {"opacity": 0.5})), targets, strict=True):
            layer = put_output(self.viewer, self.owner, role, image, data, kind,
                               f"{image.name} {role}", **kw)
            layer.refresh()
        self.status.setText(f"{n} slice(s) in {res.seconds:.2f} s "
                            f"({res.seconds / max(n, 1):.3f} s per slice)")

    def _on_finished(self, job: Job) -> None:
        self._set_running(False)
        if job.cancelled:
            self.status.setText("cancelled: output layers left as they were")
        elif job.failed is not None:
            self.status.setText(f"failed: {job.failed}")


class _Sink:
    """Write-only ``out`` array for :func:`segment`: result slice ``i`` goes, through ``fn``,
    to slice ``zs[i]`` of ``target`` (a zarr array), as soon as that slice is done."""

    def __init__(self, target: Any, zs: list[int], shape: tuple, fn: Callable) -> None:
        self.target, self.zs, self.shape, self.fn = target, zs, shape, fn

    def __setitem__(self, i: int, value: np.ndarray) -> None:
        self.target[self.zs[i]] = self.fn(value)


def _zarr_like(layer: Any, shape: tuple, dtype: Any) -> Any:
    """The layer's zarr data if it fits, else a new zarr array in a temporary folder that is
    removed once nothing uses the array any more."""
    import zarr

    data = None if layer is None else layer.data
    if isinstance(data, zarr.Array) and data.shape == shape and data.dtype == dtype:
        return data
    folder = tempfile.mkdtemp(prefix="napari-unetseg-")
    arr = zarr.open_array(folder, mode="w", shape=shape, dtype=dtype, fill_value=0,
                          chunks=(1, *shape[1:]))
    weakref.finalize(arr, shutil.rmtree, folder, True)
    return arr
