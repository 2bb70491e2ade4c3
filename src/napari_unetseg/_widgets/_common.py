"""Pieces every dock widget uses: notifications, layer pickers, output layers, devices.

Errors on user input never raise out of a widget: they become napari notifications through
:func:`error` / :func:`warning` (tests monkeypatch ``show_error`` / ``show_warning`` here).
Output layers carry a marker in ``layer.metadata[MARKER]`` naming the widget that made them and
their role, so a re-run updates its own layer and never a layer the user made with that name.
Every connection a widget makes to something that outlives it (the viewer's dims and layer
list, layers, the viewer's model store) goes through its :class:`Subscriptions`, which cuts
them all when the widget is closed.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import QComboBox, QLabel, QWidget

from .._sample_data import GROUND_TRUTH

if TYPE_CHECKING:
    import napari

__all__ = [
    "MARKER",
    "LayerPicker",
    "Subscriptions",
    "available_devices",
    "class_lut",
    "close_widget",
    "current_index",
    "error",
    "find_output",
    "info",
    "new_owner_id",
    "put_output",
    "status_label",
    "warning",
]

MARKER = "napari-unetseg"
_owner_ids = itertools.count(1)


def _to_status(message: str, where: QWidget | None) -> None:
    label = where if isinstance(where, QLabel) else getattr(where, "status", None)
    if isinstance(label, QLabel):
        with contextlib.suppress(RuntimeError):  # the widget was deleted meanwhile
            label.setText(message)


def error(message: str, where: QWidget | None = None) -> None:
    """Show ``message`` as a napari error notification (never raises).

    napari's toast shows one elided line and fades after a few seconds, so the full text
    also goes to the status line of ``where`` (a QLabel, or a widget with a ``status``
    label, see :func:`status_label`), where it stays, wrapped and selectable.
    """
    show_error(message)
    _to_status(message, where)


def warning(message: str, where: QWidget | None = None) -> None:
    """Show ``message`` as a napari warning notification (and in ``where``'s status)."""
    show_warning(message)
    _to_status(message, where)


def info(message: str, where: QWidget | None = None) -> None:
    """Show ``message`` as a napari info notification (and in ``where``'s status)."""
    show_info(message)
    _to_status(message, where)


def status_label() -> QLabel:
    """A widget's status line: wraps long messages and lets the user select and copy them."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


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


class _Links:
    """The connections of one :class:`Subscriptions` (plain Python, so that they can still be
    cut from the ``destroyed`` signal, when the Qt side is gone)."""

    def __init__(self) -> None:
        self.closed = False
        self.pairs: list[tuple[Any, _Guard]] = []

    def drop(self, pair: tuple[Any, _Guard]) -> None:
        emitter, guard = pair
        with contextlib.suppress(TypeError, RuntimeError, ValueError):  # not (or no longer) there
            emitter.disconnect(guard)
        with contextlib.suppress(ValueError):
            self.pairs.remove(pair)

    def close(self) -> None:
        self.closed = True
        for pair in list(self.pairs):
            self.drop(pair)


class _Guard:
    """The callable actually connected: calls ``callback`` unless the subscriptions were
    closed (a late signal reaches no closed or deleted widget); holds a bound method weakly,
    so a connection never keeps a widget alive."""

    def __init__(self, links: _Links, emitter: Any, callback: Callable) -> None:
        self.links, self.emitter = links, emitter
        if inspect.ismethod(callback):
            self._ref: Callable[[], Callable | None] = weakref.WeakMethod(callback)
        else:
            self._ref = lambda: callback
        self._nargs = _positional(callback)

    def __call__(self, *args: Any) -> Any:
        callback = self._ref()
        if self.links.closed or callback is None:
            self.links.drop((self.emitter, self))
            return None
        return callback(*(args if self._nargs is None else args[:self._nargs]))

    def calls(self, callback: Callable) -> bool:
        return self._ref() == callback


def _same(a: Any, b: Any) -> bool:
    """The same emitter (a Qt bound signal is a new object at every attribute access, equal
    to the others)."""
    return a is b or a == b


def _positional(callback: Callable) -> int | None:
    """How many positional arguments ``callback`` takes (None: any number), so that a signal
    with more arguments than a slot takes calls it as Qt and napari would."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


class Subscriptions(QObject):
    """The connections a widget makes to objects that outlive it, all cut when it closes.

    A dock widget follows the viewer's dims and layer list, layers and the viewer's model
    store; each :meth:`connect` goes through a guard recorded here. When the user closes the
    dock, napari does not delete the widget: ``remove_dock_widget`` (what the dock's close
    button calls) takes it out of its dock (parent set to None) and deletes the dock. That
    (a parent change to None after having had one), a Close event on the widget, or its
    deletion ends it: :func:`close_widget` cuts the connections of the widget and of its
    children (their layer pickers), stops their timers and emits :attr:`closed`, on which a
    :class:`~._worker.Job` of the widget is cancelled. Hiding the dock closes nothing.

    Works for napari event emitters, psygnal signals and Qt signals (anything with
    ``connect(callback)`` / ``disconnect(callback)``).

    Signals
    -------
    closed()
        The widget was closed (not emitted when it is deleted: jobs watch ``destroyed``).
    """

    closed = Signal()

    def __init__(self, widget: QWidget) -> None:
        super().__init__(widget)
        self._links = links = _Links()
        self._had_parent = widget.parent() is not None
        self.destroyed.connect(lambda *_: links.close())  # only the plain part: Qt side is gone
        widget.installEventFilter(self)

    @staticmethod
    def of(widget: QObject) -> Subscriptions | None:
        """The subscriptions of ``widget`` (not of its children), or None."""
        return widget.findChild(Subscriptions, "", Qt.FindChildOption.FindDirectChildrenOnly)

    @property
    def is_closed(self) -> bool:
        return self._links.closed

    def connect(self, emitter: Any, callback: Callable) -> None:
        """``emitter.connect(callback)``, cut on close; connecting the same pair again does
        nothing, and nothing is connected once closed."""
        links = self._links
        if links.closed or any(_same(e, emitter) and g.calls(callback) for e, g in links.pairs):
            return
        guard = _Guard(links, emitter, callback)
        emitter.connect(guard)
        links.pairs.append((emitter, guard))

    def disconnect(self, emitter: Any, callback: Callable) -> None:
        """Cut the connection of ``callback`` to ``emitter`` made by :meth:`connect`."""
        pairs = self._links.pairs
        for pair in [p for p in pairs if _same(p[0], emitter) and p[1].calls(callback)]:
            self._links.drop(pair)

    def close(self) -> None:
        """Cut every connection and emit :attr:`closed` (once)."""
        if self._links.closed:
            return
        self._links.close()
        self.closed.emit()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self.parent():
            kind = event.type()
            if kind == QEvent.Type.ParentChange:
                if obj.parent() is not None:
                    self._had_parent = True
                elif self._had_parent:  # taken out of its dock: napari closed it
                    close_widget(obj)
            elif kind == QEvent.Type.Close:
                close_widget(obj)
        return False


def close_widget(widget: QWidget) -> None:
    """End ``widget``: cut the :class:`Subscriptions` of it and of its children, stop their
    timers (a pending debounced update must not run) and cancel their jobs."""
    for timer in widget.findChildren(QTimer):
        timer.stop()
    for subs in widget.findChildren(Subscriptions):
        subs.close()


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
    follow_active : bool
        Choose the layer the user selects in the layer list (a layer they add or paint is
        selected), unless this plugin made it; with nothing chosen yet, prefer the selected
        layer, then a layer that is not a sample's ground truth (``metadata["ground_truth"]``).
    """

    NONE = "(none)"

    def __init__(
        self,
        viewer: napari.Viewer,
        layer_type: type,
        optional: bool = False,
        exclude_marked: bool = False,
        follow_active: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._optional = optional
        self._exclude_marked = exclude_marked
        self._follow = follow_active
        self.subscriptions = Subscriptions(self)
        self._renames: list[Any] = []  # the name emitters of the layers followed
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.changed):
            self.subscriptions.connect(emitter, self.refresh)
        if follow_active:
            self.subscriptions.connect(viewer.layers.selection.events.active, self._activated)
        self.refresh()

    def _followable(self, layer: Any) -> bool:
        return (isinstance(layer, self._type) and MARKER not in layer.metadata
                and layer.name in self._viewer.layers)

    def _activated(self, event: Any = None) -> None:
        layer = self._viewer.layers.selection.active
        if layer is not None and self._followable(layer):
            self.set_layer(layer.name)

    def _preferred(self, names: list[str]) -> str | None:
        """The layer to choose when the current one is gone (or at the start)."""
        if not self._follow:
            return None
        active = self._viewer.layers.selection.active
        if active is not None and self._followable(active) and active.name in names:
            return active.name
        layers = self._viewer.layers
        return next((n for n in names if n in layers and not layers[n].metadata.get(
            GROUND_TRUTH)), None)

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
        elif (preferred := self._preferred(names)) is not None:
            self.setCurrentText(preferred)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())
        renames = [layer.events.name for layer in self._viewer.layers]  # follow renames
        for emitter in self._renames:
            if not any(emitter is e for e in renames):  # a removed layer
                self.subscriptions.disconnect(emitter, self.refresh)
        for emitter in renames:
            self.subscriptions.connect(emitter, self.refresh)
        self._renames = renames

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
