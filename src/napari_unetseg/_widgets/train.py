"""Train dock widget: pick an image and painted labels, train, watch, save.

Thin: the fields become a ModelConfig and a TrainConfig (:mod:`._train_form`), the
:func:`napari_unetseg.training.train` generator runs in a worker (:class:`._worker.Job`)
through :class:`._live.LiveTraining`, its events feed a progress bar, a status line and a live
plot. The live loop (:mod:`._live`): strokes painted while it trains enter its training set
within a second, and every ``preview every`` seconds (and when the user moves to another
slice) a copy of the model segments the slice on screen into a preview layer, without taking
the selection or the brush from the painted layer. Cancel asks the training loop to stop
(its ``stop`` callback), so the best model so far is kept. The trained model belongs to this
widget and is shared with the other widgets of the viewer through :func:`._registry.store_for`.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QPushButton, QWidget

from ..finetune import config_for, resolve_init
from ..io import SavedModel
from ..training import TrainResult
from . import _ask, _bioimageio, _common, _files
from ._common import LayerPicker, current_index
from ._layout import scroll_body
from ._live import (
    LabelsApplied,
    LabelsFeed,
    LiveTraining,
    ModelCopy,
    Preview,
    show_preview,
    status_text,
    weak_callback,
)
from ._paint_next import PaintNextPanel
from ._plot import LinePlot
from ._registry import store_for
from ._train_form import LABELS_MODES, TrainForm
from ._weights import weight_settings_for
from ._worker import Job

if TYPE_CHECKING:
    import napari

__all__ = ["Preview", "TrainWidget", "validation_note"]


def validation_note(metadata: dict) -> str:
    """Why a finished training has no validation Dice (see ``data._split``: sparse labels
    hold out whole strokes, so each class needs two separate strokes)."""
    if not metadata.get("val_slices"):
        return ("no validation: too few labels to hold some out without losing a class. "
                "Paint a second, separate stroke of every class (one is kept to validate).")
    return "no validation: training stopped before the first validation"


class TrainWidget(QWidget):
    """Dock widget that trains a U-Net / UNet++ / ResUNet on the viewer's layers."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.store = store_for(napari_viewer)
        self.owner = _common.new_owner_id("train")
        self.saved: SavedModel | None = None
        self.result: TrainResult | None = None
        self.job: Job | None = None
        self._stop = False
        self._preview_z = 0
        self._source: Any = None
        self.live: LiveTraining | None = None
        self._sparse_ok: weakref.WeakSet = weakref.WeakSet()  # layers the user keeps sparse
        self.subscriptions = _common.Subscriptions(self)  # cut when the widget is closed
        self.image_picker = LayerPicker(napari_viewer, Image, exclude_marked=True)
        self.labels_picker = LayerPicker(napari_viewer, Labels, follow_active=True)
        self.form = TrainForm()
        self.weights = weight_settings_for(napari_viewer)  # set in the Weight map preview
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Stop")
        self.cancel_button.setToolTip("stop after the current step and keep the best model")
        self.save_button, self.load_button = QPushButton("Save model…"), QPushButton("Load model…")
        self.export_button = QPushButton("Export bioimage.io…")
        self.export_button.setToolTip("write the model as a bioimage.io model package (.zip) "
                                      "for the model zoo and other bioimage.io tools")
        self.status = _common.status_label()
        self.loss_plot = LinePlot("loss", ("train", "val"))
        self.dice_plot = LinePlot("validation Dice", ("val",), y_range=(0.0, 1.0))
        self.feed = LabelsFeed(self.subscriptions, self._painted, self)
        self.paint_next = PaintNextPanel(napari_viewer, self.owner, self._model_for_paint_next,
                                         self, painted=self._painted_slices)
        self._layout()
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self.save_model)
        self.load_button.clicked.connect(self.load_model)
        self.export_button.clicked.connect(self.export_bioimageio)
        self.subscriptions.connect(self.viewer.dims.events.current_step, self._track_slice)
        self.subscriptions.connect(self.weights.changed, self._weights_changed)
        self._weights_changed()
        self.form.labels_mode.currentTextChanged.connect(self._mode_changed)
        self._set_running(False)

    def _layout(self) -> None:
        pick = QFormLayout()
        pick.addRow("image", self.image_picker)
        pick.addRow("labels", self.labels_picker)
        run, files = QHBoxLayout(), QHBoxLayout()
        run.addWidget(self.train_button)
        run.addWidget(self.cancel_button)
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        files.addWidget(self.export_button)
        box = scroll_body(self)
        box.addLayout(pick)
        box.addWidget(self.form)
        box.addLayout(run)
        box.addWidget(self.status)
        box.addWidget(self.loss_plot)
        box.addWidget(self.dice_plot)
        box.addWidget(self.paint_next)
        box.addLayout(files)
        box.addStretch(1)

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.load_button.setEnabled(not running)

    def _mode_changed(self, *args: Any) -> None:
        self.weights.update(labels_mode=self.form.mode())

    def _weights_changed(self) -> None:
        """The shared labels mode (the preview may set it) shown in the form."""
        names = {v: k for k, v in LABELS_MODES.items()}
        self.form.labels_mode.blockSignals(True)
        self.form.labels_mode.setCurrentText(names[self.weights.labels_mode])
        self.form.labels_mode.blockSignals(False)
        self.form.loss.setToolTip(f"wce / bce_dice use the {self.weights.describe()} "
                                  "(set in the Weight map preview)")

    def _track_slice(self, event: Any = None) -> None:
        layer = self._source
        if layer is not None:
            self._preview_z = current_index(self.viewer, layer)

    # ------------------------------------------------------------------ checks

    def _inputs(self) -> tuple[Any, Any, int] | None:
        """The image and labels layers and the number of classes, or None (after a message)."""
        image, labels = self.image_picker.layer(), self.labels_picker.layer()
        if image is None or labels is None:
            _common.error("Train: choose an image layer and a labels layer first.", self)
            return None
        if image.rgb or image.multiscale or image.ndim not in (2, 3):
            _common.error(
                f"Train: image {image.name!r} must be a single-channel 2D image or 3D stack "
                f"(Z, Y, X); got {'an RGB image' if image.rgb else f'shape {image.data.shape}'}.",
                self,
            )
            return None
        if tuple(labels.data.shape) != tuple(image.data.shape):
            _common.error(
                f"Train: labels {labels.name!r} have shape {tuple(labels.data.shape)} but the "
                f"image has shape {tuple(image.data.shape)}; they must match.",
                self,
            )
            return None
        lab = np.asarray(labels.data)
        mode = self.form.mode()
        if mode != "dense" and not lab.any():
            _common.error(f"Train: labels {labels.name!r} have no painted pixel; paint at least "
                          "two classes (values 1, 2, ...).", self)
            return None
        classes = len(np.unique(lab)) if mode == "dense" else 2 if mode == "instances" else int(
            lab.max())
        if classes < 2:
            _common.error(f"Train: labels {labels.name!r} hold a single class; paint at least "
                          "two (e.g. 1 = background, 2 = object).", self)
            return None
        if mode == "sparse":
            mode = self._sparse_or_dense(labels, lab)
            if not mode:
                return None
            if mode == "dense":
                classes = len(np.unique(lab))
        return image, labels, classes

    def _sparse_or_dense(self, layer: Any, lab: np.ndarray) -> str:
        """Sparse mode on labels that cover most of the image: ask whether they are dense
        (once per layer when the answer is "keep sparse"); sets the form to the answer.
        Returns the labels mode to train with, or "" when the user cancelled."""
        coverage = np.count_nonzero(lab) / max(lab.size, 1)
        real = getattr(layer, "__wrapped__", layer)  # napari hands widgets proxies
        if coverage < _ask.DENSE_COVERAGE or real in self._sparse_ok:
            return "sparse"
        answer = _ask.ask_dense(self, layer.name, coverage)
        if answer == "dense":
            self.form.labels_mode.setCurrentText(
                next(k for k, v in LABELS_MODES.items() if v == "dense"))
        elif answer == "sparse":
            self._sparse_ok.add(real)
        return answer

    # ------------------------------------------------------------------ running

    def start(self) -> Job | None:
        """Check the inputs and start training in a worker; returns the job or None."""
        if self.job is not None and self.job.running:
            return None
        checked = self._inputs()
        if checked is None:
            return None
        image, labels, classes = checked
        try:
            init = self._init()
            model_cfg = (self.form.model_config(classes) if init is None
                         else config_for(init, classes))
            train_cfg = self.weights.apply(self.form.train_config())
        except (ValueError, TypeError, OSError) as e:
            _common.error(f"Train: {e}", self)
            return None
        self._stop = False
        self._source = image
        self._track_slice()
        self.loss_plot.clear()
        self.dice_plot.clear()
        every = min(train_cfg.val_every, train_cfg.iterations)
        self.dice_plot.set_note(f"validation on held-out labels every {every} steps")
        self.live = LiveTraining(
            np.asarray(image.data), np.array(labels.data), model_cfg, train_cfg,
            self.form.mode(), stop=weak_callback(self._stopping),
            every_s=self.form.preview_every.value(), where=weak_callback(self._where),
            init=init,
        )
        self.feed.watch(labels)
        self._note = ""
        self._budget = train_cfg.time_budget_s
        total = int(self._budget) if self._budget else train_cfg.iterations
        self.job = Job(self.live.events(), "Training", total=total,
                       on_event=self._on_event, on_result=self._on_result,
                       on_finished=self._on_finished, owner=self)
        self._set_running(True)
        self.status.setText("preparing the data…")
        return self.job.start()

    def _init(self) -> Any:
        """The model training starts from (None: scratch); ValueError when there is none."""
        choice = self.form.init()
        if choice == "current":
            if self.store.saved is None:
                raise ValueError("no current model to start from; load or train one, or "
                                 "start from scratch or the bundled model")
            return self.store.saved
        return resolve_init(choice)

    def _stopping(self) -> bool:
        return self._stop

    def _where(self) -> int:
        return self._preview_z

    def cancel(self) -> None:
        """Stop training after the current step; the best model so far is kept."""
        if self.job is not None and self.job.running:
            self._stop = True
            self.status.setText("stopping…")

    def _painted(self, labels: np.ndarray) -> None:
        if self.live is not None and self.job is not None and self.job.running:
            self.live.update_labels(labels)

    def _painted_slices(self) -> list[int]:
        """The slices of the labels layer that hold strokes (none for a 2D layer)."""
        labels = self.labels_picker.layer()
        data = None if labels is None else np.asarray(labels.data)
        if data is None or data.ndim != 3:
            return []
        return [int(z) for z in np.flatnonzero(data.reshape(len(data), -1).any(1))]

    def _model_for_paint_next(self) -> bool:
        """Hand the panel a model: a copy of the one training (at its next step), else the
        trained or loaded one."""
        if self.live is not None and self.job is not None and self.job.running:
            self.live.request_model()
            return True
        image = self._source if self._source in self.viewer.layers else (
            self.image_picker.layer())
        if self.saved is None or image is None:
            _common.error("Where to paint next: train or load a model, and pick the image.")
            return False
        self.paint_next.compute(self.saved.model, self.saved.normalization, image,
                                self.form.device.currentText())
        return True

    def _on_event(self, event: Any) -> int | None:
        if isinstance(event, Preview):
            self._show_preview(event)
            return None
        if isinstance(event, ModelCopy):
            self.paint_next.compute(event.model, event.normalization, self._source,
                                    self.form.device.currentText())
            return None
        if isinstance(event, LabelsApplied):
            self._note = (f"new strokes not used: {event.problem}" if event.problem
                          else f"strokes updated ({event.version}×)")
            return None
        self.loss_plot.add("train", event.step, event.loss)
        self.loss_plot.add("val", event.step, event.val_loss)
        self.dice_plot.add("val", event.step, event.val_dice)
        val = self.dice_plot.data["val"]
        self.status.setText(status_text(event, val[-1][1] if val else None, self._note,
                                        self._budget))
        return int(event.elapsed_s) if self._budget else event.step

    def _show_preview(self, preview: Preview) -> None:
        image = self._source
        if image is not None and image.name in self.viewer.layers:
            show_preview(self.viewer, self.owner, image, preview)

    def _on_result(self, result: TrainResult) -> None:
        if not self.dice_plot.data["val"]:
            self.dice_plot.set_note(validation_note(result.metadata))
        steps = int(result.metadata.get("steps", 0))
        if steps == 0:
            self.status.setText("cancelled before the first step: no model")
            return
        self.result = result
        self.saved = SavedModel(result.model, result.model_config, result.normalization,
                                list(result.class_values), metadata=result.metadata)
        name = self._source.name if self._source is not None else "image"
        self.store.set_model(self.saved, f"trained on {name}, {steps} steps")
        best, dice = result.metadata.get("best_step"), result.metadata.get("best_val_dice")
        how = "stopped" if result.metadata.get("stopped") else "done"
        text = f"{how} after {steps} steps in {result.metadata.get('seconds', 0):.1f} s"
        if dice is not None:
            text += f"; kept the best model (step {best}, val Dice {dice:.3f})"
        self.status.setText(text)

    def _on_finished(self, job: Job) -> None:
        self._set_running(False)
        self.feed.watch(None)
        if job.failed is not None:
            kept = getattr(job.failed, "result", None)  # TrainingDiverged: the last good model
            if kept is not None and kept.metadata.get("steps"):
                self._on_result(kept)
            self.status.setText(f"failed: {job.failed}")

    # ------------------------------------------------------------------ files

    def save_model(self) -> Any:
        """Save model…: ask for a path (and before replacing a file) and write the model."""
        return _files.save_with_dialog(self, self.saved)

    def export_bioimageio(self) -> Any:
        """Export bioimage.io…: write the model as a bioimage.io package, in a worker; the
        test input and the cover come from the slice on screen of the training image."""
        image = self._source if self._source is not None and (
            self._source in self.viewer.layers) else self.image_picker.layer()
        sample, about = None, ""
        if image is not None and not image.rgb and image.ndim in (2, 3):
            sample = np.asarray(image.data[current_index(self.viewer, image)]
                                if image.ndim == 3 else image.data)
            about = f"napari image layer {image.name!r}, shape {tuple(image.data.shape)}"
            source = (image.metadata or {}).get("source")
            about += f"; {source}" if source else "; source and terms of use: (fill in)"
        return _bioimageio.start_export(self, self.saved, sample, about)

    def load_model(self) -> SavedModel | None:
        """Load model…: read a model file; it becomes this widget's and the viewer's model."""
        saved = _files.load_with_dialog(self, self.store)
        if saved is not None:
            self.saved, self.result = saved, None
            self.status.setText(f"loaded {self.store.source}")
        return saved
