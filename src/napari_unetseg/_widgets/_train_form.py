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
from ..finetune import FINETUNE_LR
from ..training import TrainConfig
from ._common import available_devices
from ._live import PREVIEW_S

__all__ = ["ARCHS", "LABELS_MODES", "PRESETS", "PRESET_NAMES", "STARTS", "TrainForm"]

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
#: Shown name -> core preset (:mod:`napari_unetseg.presets`).
PRESET_NAMES = {
    "fast, CPU friendly": "fast",
    "paper (Ronneberger 2015)": "paper",
    "wide (width 64, same padding)": "wide",
    "ResUNet EM (Drozdzal 2016)": "resunet-em",
}
#: Form fields a preset sets (shown), and settings it keeps out of sight until edited.
_SHOWN = ("arch", "depth", "width", "iterations", "patch", "batch", "block", "blocks",
          "dropout", "loss", "lr", "features", "self_training", "teacher")
#: Check boxes: the setting's value when checked (unchecked: "none").
_CHECKED = {"features": "multiscale", "teacher": "forest"}
_HIDDEN = ("padding", "batchnorm", "optimizer", "blocks_per_level")
#: TrainConfig settings of a preset's recipe without a field of their own, kept when the shown
#: fields are edited: how fast BatchNorm statistics follow the weights, and which predictions
#: self-training takes as pseudo labels
_RECIPE = ("bn_momentum", "pseudo_confidence", "pseudo_portion")


def _form_values(name: str) -> dict[str, object]:
    v = core_presets.preset(name)
    blocks = v.get("blocks_per_level", 1)
    return {"arch": v.get("arch", "unet"), "depth": v["depth"], "width": v["width"],
            "iterations": v["iterations"], "patch": v["patch_size"], "batch": v["batch_size"],
            "block": v.get("block", "basic"),
            "blocks": blocks if isinstance(blocks, int) else max(blocks),
            "dropout": v.get("dropout", 0.0), "loss": v.get("loss", "wce"),
            "lr": v.get("lr", 1e-3), "features": v.get("features", "none"),
            "self_training": float(v.get("self_training_s", 0.0)),
            "teacher": v.get("teacher", "none"),
            **{k: float(v.get(k, getattr(TrainConfig, k))) for k in _RECIPE},
            **{k: v[k] for k in _HIDDEN if k in v}}


PRESETS = {shown: _form_values(core) for shown, core in PRESET_NAMES.items()}
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
        self.loss.setToolTip("wce: U-Net weighted cross entropy with the weight map")
        self.block = QComboBox()
        self.block.addItems(["basic", "bottleneck", "simple"])
        self.block.setToolTip("ResUNet residual block")
        self.blocks = _spin(1, 64, 1)
        self.blocks.setToolTip("ResUNet: residual blocks per level")
        self.dropout = QDoubleSpinBox()
        self.dropout.setRange(0.0, 0.9)
        self.dropout.setSingleStep(0.05)
        self.dropout.setToolTip("ResUNet: in every block; U-Net: at the deepest levels")
        self.features = QCheckBox("multiscale features (filter bank)")
        self.features.setToolTip(
            "feed the network the features of ilastik's pixel classifier (smoothed intensity, "
            "gradient, Hessian at 1-16 px): learns from a few strokes within a minute")
        self.self_training = QDoubleSpinBox()
        self.self_training.setRange(0.0, 3600.0)
        self.self_training.setDecimals(0)
        self.self_training.setSuffix(" s")
        self.self_training.setSpecialValueText("off")
        self.self_training.setToolTip(
            "strokes only: every so many seconds, the network's surest predictions on a few "
            "slices (fast preset: the surer half of each class) become extra training targets "
            "where nothing is painted (off: 0)")
        self.teacher = QCheckBox("random-forest teacher")
        self.teacher.setToolTip(
            "strokes, from scratch: a random forest fitted on the strokes in a few seconds "
            "labels the pixels it is sure of on a few slices; the network trains on them where "
            "nothing is painted and soon outdoes its teacher (the first preview is the "
            "forest's)")
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
        self._hidden: dict[str, object] = {}
        self._recipe = {k: getattr(TrainConfig, k) for k in _RECIPE}
        self._layout()
        self.preset.currentTextChanged.connect(self.apply_preset)
        self.start_from.currentTextChanged.connect(self._start_changed)
        for field in self._fields().values():
            signal = (field.currentTextChanged if isinstance(field, QComboBox)
                      else field.toggled if isinstance(field, QCheckBox)
                      else field.valueChanged)
            signal.connect(self._edited)
        self.apply_preset(self.preset.currentText())

    def _layout(self) -> None:
        top = QFormLayout()
        top.addRow("labels are", self.labels_mode)
        top.addRow("start from", self.start_from)
        top.addRow("architecture", self.arch)
        top.addRow("preset", self.preset)
        adv = QFormLayout()
        for label, field in (
            ("depth", self.depth), ("width", self.width), ("residual block", self.block),
            ("blocks per level", self.blocks), ("dropout", self.dropout), ("loss", self.loss),
            ("", self.features), ("", self.teacher), ("", self.augment),
            ("iterations", self.iterations),
            ("time budget", self.budget), ("self-train every", self.self_training),
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

    def _fields(self) -> dict[str, QWidget]:
        return {"arch": self.arch, "depth": self.depth, "width": self.width,
                "iterations": self.iterations, "patch": self.patch, "batch": self.batch,
                "block": self.block, "blocks": self.blocks, "dropout": self.dropout,
                "loss": self.loss, "lr": self.lr, "features": self.features,
                "self_training": self.self_training, "teacher": self.teacher}

    def _values(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, field in self._fields().items():
            if key == "arch":
                out[key] = ARCHS[field.currentText()]
            elif isinstance(field, QCheckBox):
                out[key] = _CHECKED[key] if field.isChecked() else "none"
            elif isinstance(field, QComboBox):
                out[key] = field.currentText()
            else:
                out[key] = field.value()
        return out

    def apply_preset(self, name: str) -> None:
        """Set the fields from the preset ``name`` and keep its other settings (padding,
        BatchNorm, optimizer, per-level blocks) for as long as the fields stay as set."""
        values = PRESETS.get(name)
        if values is None:
            return
        names = {v: k for k, v in ARCHS.items()}
        for key, field in self._fields().items():
            field.blockSignals(True)
            value = values[key]
            if key == "arch":
                field.setCurrentText(names[value])
            elif isinstance(field, QCheckBox):
                field.setChecked(value == _CHECKED[key])
            elif isinstance(field, QComboBox):
                field.setCurrentText(str(value))
            else:
                field.setValue(value)
            field.blockSignals(False)
        self._hidden = {k: values[k] for k in _HIDDEN if k in values}
        self._recipe = {k: values[k] for k in _RECIPE}  # the preset's, kept through edits
        self._start_changed()

    def _preset_values(self, values: dict[str, object]) -> dict[str, object]:
        """A preset's shown fields, with the learning rate for where training starts: from a
        model, Adam takes :data:`~napari_unetseg.finetune.FINETUNE_LR` (small steps keep
        what the model knows)."""
        shown = {k: values[k] for k in _SHOWN}
        if self.init() != "scratch" and values.get("optimizer", "adam") == "adam":
            shown["lr"] = FINETUNE_LR
        return shown

    def _start_changed(self, *args: object) -> None:
        """A preset's learning rate follows "start from" (a custom one stays as set); the
        forest teacher is for scratch only (training from a model does not use it)."""
        self.teacher.setEnabled(self.init() == "scratch")
        values = PRESETS.get(self.preset.currentText())
        if values is None:
            return
        self.lr.blockSignals(True)
        self.lr.setValue(float(self._preset_values(values)["lr"]))
        self.lr.blockSignals(False)

    def _edited(self, *args: object) -> None:
        values = PRESETS.get(self.preset.currentText())
        if values is not None and self._preset_values(values) != self._values():
            self._hidden = {}
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
        arch = ARCHS[self.arch.currentText()]
        residual = {}
        if arch == "resunet":
            residual = {"block": self.block.currentText(),
                        "blocks_per_level": self._hidden.get("blocks_per_level",
                                                             self.blocks.value())}
        extra = {k: self._hidden[k] for k in ("padding", "batchnorm") if k in self._hidden}
        return ModelConfig(
            arch=arch, depth=self.depth.value(), width=self.width.value(), classes=classes,
            in_channels=in_channels, features=self._values()["features"],
            dropout=0.0 if arch == "unetpp" else round(float(self.dropout.value()), 4),
            **residual, **extra,
        )

    def train_config(self) -> TrainConfig:
        """The training settings; raises ValueError/TypeError on bad values."""
        return TrainConfig(
            iterations=self.iterations.value(), batch_size=self.batch.value(),
            time_budget_s=float(self.budget.value()) or None,
            self_training_s=float(self.self_training.value()),
            teacher=self._values()["teacher"],
            **self._recipe,
            patch_size=self.patch.value(), lr=float(self.lr.value()),
            loss=self.loss.currentText(), device=self.device.currentText(),
            augment=AugmentConfig() if self.augment.isChecked() else AugmentConfig.off(),
            **({"optimizer": self._hidden["optimizer"]} if "optimizer" in self._hidden else {}),
        )
