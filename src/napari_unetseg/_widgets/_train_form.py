"""The Train widget's settings: architecture, presets and the advanced section.

The form only turns fields into a :class:`~napari_unetseg.config.ModelConfig` and a
:class:`~napari_unetseg.training.TrainConfig`; the configs validate themselves.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .. import presets as core_presets
from ..augment import AugmentConfig
from ..config import ModelConfig
from ..training import TrainConfig
from ._common import available_devices
from ._live import PREVIEW_S

__all__ = ["ARCHS", "LABELS_MODES", "PRESETS", "STARTS", "TrainForm"]

#: Shown name -> ``ModelConfig.arch``.
ARCHS = {"U-Net": "unet", "UNet++": "unetpp", "ResUNet": "resunet"}
#: Shown name -> ``labels_mode`` of :func:`napari_unetseg.training.train`.
LABELS_MODES = {
    "sparse scribbles (0 = unlabeled)": "sparse",
    "dense (every value is a class)": "dense",
    "instances (U-Net weight map)": "instances",
}
#: Shown name -> where training starts (``init`` of :func:`napari_unetseg.training.train`;
#: "current": the viewer's model, loaded or trained before).
STARTS = {
    "scratch (random weights)": "scratch",
    "bundled EM membranes": "bundled",
    "current model (loaded or trained)": "current",
}
#: Preset -> field values it sets. "paper": Ronneberger et al. (2015) width 64, depth 4.
def _form_values(name: str) -> dict[str, int]:
    v = core_presets.preset(name)
    return {"depth": v["depth"], "width": v["width"], "iterations": v["iterations"],
            "patch": v["patch_size"], "batch": v["batch_size"]}


PRESETS = {
    "fast, CPU friendly": _form_values("fast"),
    "paper": _form_values("paper"),
}
CUSTOM = "custom"
LOSSES = ("wce", "ce", "dice", "bce_dice")


def _spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    return s


class TrainForm(QWidget):
    """Fields of the Train widget; read them with :meth:`model_config` / :meth:`train_config`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels_mode = QComboBox()
        self.labels_mode.addItems(list(LABELS_MODES))
        self.start_from = QComboBox()
        self.start_from.addItems(list(STARTS))
        self.start_from.setToolTip(
            "scratch: random weights; bundled: the pretrained EM membrane model; current: the "
            "model in the viewer. From a model, the network is that model's (depth and width "
            "do not apply) and another class count gets a new output layer")
        self.arch = QComboBox()
        self.arch.addItems(list(ARCHS))
        self.preset = QComboBox()
        self.preset.addItems([*PRESETS, CUSTOM])
        self.depth, self.width = _spin(1, 8, 3), _spin(1, 512, 16)
        self.loss = QComboBox()
        self.loss.addItems(list(LOSSES))
        self.loss.setToolTip("wce: U-Net weighted cross entropy (weights in instances mode)")
        self.augment = QCheckBox("augmentation (flips, rotations, elastic)")
        self.augment.setChecked(True)
        self.iterations, self.batch = _spin(1, 1_000_000, 300, 50), _spin(1, 256, 4)
        self.budget = _spin(0, 7 * 24 * 3600, 0, 30)
        self.budget.setSuffix(" s")
        self.budget.setSpecialValueText("no limit")
        self.budget.setToolTip("stop after this many seconds of training, with the learning "
                               "rate decayed over them (no limit: after the iterations)")
        self.patch = _spin(16, 2048, 128, 16)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.device = QComboBox()
        self.device.addItems(available_devices())
        self.preview_every = QDoubleSpinBox()
        self.preview_every.setRange(0.0, 3600.0)
        self.preview_every.setDecimals(1)
        self.preview_every.setSuffix(" s")
        self.preview_every.setValue(PREVIEW_S)
        self.preview_every.setToolTip(
            "refresh the live preview of the slice on screen every so many seconds, and at "
            "once when you move to another slice (0 = no preview)")
        self._layout()
        self.preset.currentTextChanged.connect(self.apply_preset)
        for spin in (self.depth, self.width, self.iterations, self.patch, self.batch):
            spin.valueChanged.connect(self._edited)
        self.apply_preset(self.preset.currentText())

    def _layout(self) -> None:
        top = QFormLayout()
        top.addRow("labels are", self.labels_mode)
        top.addRow("start from", self.start_from)
        top.addRow("architecture", self.arch)
        top.addRow("preset", self.preset)
        adv = QFormLayout()
        for label, field in (
            ("depth", self.depth), ("width", self.width), ("loss", self.loss),
            ("", self.augment), ("iterations", self.iterations), ("time budget", self.budget),
            ("learning rate", self.lr), ("batch", self.batch), ("patch size", self.patch),
            ("device", self.device), ("preview every", self.preview_every),
        ):
            adv.addRow(label, field)
        inner = QWidget()
        inner.setLayout(adv)
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(inner)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(top)
        box.addWidget(self.advanced)

    def apply_preset(self, name: str) -> None:
        """Set depth, width, iterations, patch and batch from the preset ``name``."""
        values = PRESETS.get(name)
        if values is None:
            return
        fields = {"depth": self.depth, "width": self.width, "iterations": self.iterations,
                  "patch": self.patch, "batch": self.batch}
        for key, value in values.items():
            fields[key].blockSignals(True)
            fields[key].setValue(value)
            fields[key].blockSignals(False)

    def _edited(self, *args: object) -> None:
        values = PRESETS.get(self.preset.currentText())
        current = {"depth": self.depth.value(), "width": self.width.value(),
                   "iterations": self.iterations.value(), "patch": self.patch.value(),
                   "batch": self.batch.value()}
        if values is not None and values != current:
            self.preset.blockSignals(True)
            self.preset.setCurrentText(CUSTOM)
            self.preset.blockSignals(False)

    def init(self) -> str:
        """Where training starts: ``"scratch"``, ``"bundled"`` or ``"current"``."""
        return STARTS[self.start_from.currentText()]

    def mode(self) -> str:
        """The chosen ``labels_mode``."""
        return LABELS_MODES[self.labels_mode.currentText()]

    def model_config(self, classes: int, in_channels: int = 1) -> ModelConfig:
        """The architecture; raises ValueError/TypeError on bad values."""
        return ModelConfig(
            arch=ARCHS[self.arch.currentText()], depth=self.depth.value(),
            width=self.width.value(), classes=classes, in_channels=in_channels,
        )

    def train_config(self) -> TrainConfig:
        """The training settings; raises ValueError/TypeError on bad values."""
        return TrainConfig(
            iterations=self.iterations.value(), batch_size=self.batch.value(),
            time_budget_s=float(self.budget.value()) or None,
            patch_size=self.patch.value(), lr=float(self.lr.value()),
            loss=self.loss.currentText(), device=self.device.currentText(),
            augment=AugmentConfig() if self.augment.isChecked() else AugmentConfig.off(),
        )
