"""The weight-map settings one viewer's widgets share: the Weight map preview sets them, Train
trains with them, so what the preview shows is what training uses.

One :class:`WeightSettings` per viewer, in a weak mapping keyed by the viewer (as
:func:`._registry.store_for`): the labels mode and the ``w0``, ``sigma`` and class-balance
settings of :func:`napari_unetseg.targets.training_targets`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from qtpy.QtCore import QObject, Signal

from ..training import TrainConfig

__all__ = ["WeightSettings", "weight_settings_for"]

_DEFAULTS = TrainConfig()


class WeightSettings(QObject):
    """Labels mode and weight-map parameters; ``changed`` is emitted when one changes."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.labels_mode = "sparse"
        self.w0 = _DEFAULTS.w0
        self.sigma = _DEFAULTS.sigma
        self.class_balance = _DEFAULTS.class_balance

    def update(self, **values: Any) -> None:
        """Set some of ``labels_mode``, ``w0``, ``sigma``, ``class_balance``."""
        unknown = set(values) - {"labels_mode", "w0", "sigma", "class_balance"}
        if unknown:
            raise TypeError(f"unknown weight setting(s) {sorted(unknown)}")
        new = {k: v for k, v in values.items() if getattr(self, k) != v}
        for k, v in new.items():
            setattr(self, k, v)
        if new:
            self.changed.emit()

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """``cfg`` with these weight-map parameters."""
        return dataclasses.replace(cfg, w0=float(self.w0), sigma=float(self.sigma),
                                   class_balance=bool(self.class_balance))

    def describe(self) -> str:
        balance = "with" if self.class_balance else "without"
        border = "no border term" if self.labels_mode == "sparse" or not self.w0 else (
            f"w0 {self.w0:g}, sigma {self.sigma:g} px")
        return f"weight map: {border}, {balance} class balance"


_SETTINGS: weakref.WeakKeyDictionary[Any, WeightSettings] = weakref.WeakKeyDictionary()


def weight_settings_for(viewer: Any) -> WeightSettings:
    """The :class:`WeightSettings` of ``viewer`` (created on first use)."""
    real = getattr(viewer, "__wrapped__", viewer)
    settings = _SETTINGS.get(real)
    if settings is None:
        settings = _SETTINGS[real] = WeightSettings()
    return settings
