"""The model shared by the dock widgets of one viewer.

The Train widget puts the model it trained here, the Segment and level widgets read it, and
any of them may load one from a file. There is one :class:`ModelStore` per viewer, kept in a
weak mapping keyed by the viewer itself (so it goes away with the viewer): no global model.
"""

from __future__ import annotations

import weakref
from typing import Any

from qtpy.QtCore import QObject, Signal

__all__ = ["ModelStore", "store_for"]


class ModelStore(QObject):
    """Holds the current :class:`~napari_unetseg.io.SavedModel` of one viewer.

    Signals
    -------
    model_changed()
        A model was set (trained, loaded) or cleared.
    level_chosen(object)
        A UNet++ output level (``"accurate"`` or an int) was picked for segmentation.
    """

    model_changed = Signal()
    level_chosen = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.saved: Any = None
        self.source: str = ""

    def set_model(self, saved: Any, source: str) -> None:
        """Make ``saved`` (a SavedModel, or None) the viewer's model; ``source`` describes it."""
        self.saved = saved
        self.source = source if saved is not None else ""
        self.model_changed.emit()

    def describe(self) -> str:
        """One line naming the model, for labels in the widgets."""
        if self.saved is None:
            return "no model yet: train one or load a model file"
        cfg = self.saved.config
        package = (self.saved.metadata or {}).get("bioimageio")
        if package:
            return f"bioimage.io model {package['name']!r}, {cfg.classes} classes ({self.source})"
        names = {"unet": "U-Net", "unetpp": "UNet++", "resunet": "ResUNet"}
        arch = names.get(cfg.arch, cfg.arch)
        return f"{arch} depth {cfg.depth} width {cfg.width}, {cfg.classes} classes ({self.source})"


_STORES: weakref.WeakKeyDictionary[Any, ModelStore] = weakref.WeakKeyDictionary()


def store_for(viewer: Any) -> ModelStore:
    """The :class:`ModelStore` of ``viewer`` (created on first use).

    Dock widgets receive the viewer wrapped in napari's ``PublicOnlyProxy``, a new wrapper per
    widget, so the wrapped viewer is the key.
    """
    real = getattr(viewer, "__wrapped__", viewer)
    store = _STORES.get(real)
    if store is None:
        store = _STORES[real] = ModelStore()
    return store
