"""Pieces every dock widget uses: notifications, layer pickers, output layers, devices.

Errors on user input never raise out of a widget: they become napari notifications through
:func:`error` / :func:`warning` (tests monkeypatch ``show_error`` / ``show_warning`` here).
Output layers carry a marker in ``layer.metadata[MARKER]`` naming the widget that made them and
their role, so a re-run updates its own layer and never a layer the user made with that name.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QComboBox, QWidget

if TYPE_CHECKING:
    import napari

__all__ = [
    "MARKER",
    "LayerPicker",
    "available_devices",
    "class_lut",
    "current_index",
    "error",
    "find_output",
    "info",
    "new_owner_id",
    "put_output",
    "warning",
]

MARKER = "napari-unetseg"
_owner_ids = itertools.count(1)


def error(message: str) -> None:
    """Show ``message`` as a napari error notification (never raises)."""
    show_error(message)


def warning(message: str) -> None:
    """Show ``message`` as a napari warning notification."""
    show_warning(message)


def info(message: str) -> None:
    """Show ``message`` as a napari info notification."""
    show_info(message)


def new_owner_id(kind: str) -> str:
    """A process-unique id for a widget instance, stored in the metadata of its layers."""
    return f"{kind}-{next(_owner_ids)}"


def available_devices() -> list[str]:
    """Devices to offer: ``auto`` first, then what torch sees here (cpu, cuda:N, mps)."""
    from ..devices import available_devices as devices

    return ["auto", *devices()]


def class_lut(class_values: Any) -> np.ndarray:
    """Map class index -> label value (see :func:`napari_unetseg.postprocess.class_lut`)."""
    from ..postprocess import class_lut as lut

    return lut(class_values)


class LayerPicker(QComboBox):
    """A combo box of the viewer's layers of one type that follows the layer list.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are offered.
    layer_type : type
        ``napari.layers.Image`` or ``napari.layers.Labels``.
    optional : bool
        Offer a first entry ``"(none)"`` meaning no layer.
    exclude_marked : bool
        Leave out layers this plugin made (its probability maps are not sensible inputs;
        its segmentations are, once corrected, so labels pickers keep them by default).
    """

    NONE = "(none)"

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_type: type,
        optional: bool = False,
        exclude_marked: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._optional = optional
        self._exclude_marked = exclude_marked
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.changed):
            emitter.connect(self.refresh)
        self.refresh()

    def _names(self) -> list[str]:
        names = []
        for layer in self._viewer.layers:
            if not isinstance(layer, self._type):
                continue
            if self._exclude_marked and MARKER in layer.metadata:
                continue
            names.append(layer.name)
        return names

    def refresh(self, event: Any = None) -> None:
        """Re-read the layer list, keeping the current choice when it still exists."""
        current = self.currentText()
        names = ([self.NONE] if self._optional else []) + self._names()
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())
        for layer in self._viewer.layers:  # follow renames
            layer.events.name.disconnect(self.refresh)
            layer.events.name.connect(self.refresh)

    def layer(self) -> Any:
        """The chosen layer, or None (nothing to choose or ``"(none)"``)."""
        name = self.currentText()
        if not name or name == self.NONE or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def set_layer(self, name: str) -> None:
        """Choose the layer called ``name`` (ignored when it is not offered)."""
        self.refresh()
        if self.findText(name) >= 0:
            self.setCurrentText(name)


def current_index(viewer: napari.Viewer, layer: Any) -> int:
    """Index of the displayed slice along the first axis of a stack layer (0 for 2D)."""
    if layer.ndim < 3:
        return 0
    z = int(round(float(layer.world_to_data(viewer.dims.point)[0])))
    return int(np.clip(z, 0, layer.data.shape[0] - 1))


def find_output(viewer: napari.Viewer, owner: str, role: str, source: str) -> Any:
    """The layer ``owner`` made for ``role`` from the layer named ``source``, or None."""
    for layer in viewer.layers:
        mark = layer.metadata.get(MARKER)
        if isinstance(mark, dict) and (mark.get("owner"), mark.get("role"), mark.get(
            "source")) == (owner, role, source):
            return layer
    return None


def put_output(
    viewer: napari.Viewer,
    owner: str,
    role: str,
    source: Any,
    data: np.ndarray,
    kind: str,
    name: str,
    **kwargs: Any,
) -> Any:
    """Write ``data`` into this widget's ``role`` layer for ``source``, adding it if needed.

    An existing layer made by ``owner`` for the same role and source layer is updated in place
    (its data replaced); otherwise a new layer is added. If a layer the user made already has
    ``name``, napari gives the new one a unique name, so user layers are never touched.
    """
    layer = find_output(viewer, owner, role, source.name)
    if layer is not None and layer.data.shape == data.shape:
        layer.data = data
        return layer
    if layer is not None:
        viewer.layers.remove(layer)
    meta = {MARKER: {"owner": owner, "role": role, "source": source.name}}
    add = viewer.add_image if kind == "image" else viewer.add_labels
    kwargs.setdefault("scale", tuple(source.scale))
    kwargs.setdefault("translate", tuple(source.translate))
    return add(data, name=name, metadata=meta, **kwargs)
