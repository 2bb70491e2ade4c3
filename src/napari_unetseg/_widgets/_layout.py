"""Dock layout: contents that scroll instead of growing the window, and a window fitted to
the screen.

napari stacks plugin dock widgets in one column and makes the main window at least as tall
as the sum of their minimum heights, so a long widget (an open Advanced section, a table)
pushed the window past the screen, and once the window was sized to the screen the docks
were squeezed over each other. :func:`scroll_body` puts a widget's contents in a
:class:`~qtpy.QtWidgets.QScrollArea`: the dock's minimum height is then small, and what does
not fit scrolls. Its minimum width follows the contents (no horizontal scrolling), and combo
boxes are made compact (they no longer widen the dock to their longest entry, which their
popup still shows in full). A widget of this plugin docked in the same area as another one
joins it as a tab (as ``add_plugin_dock_widget(..., tabify=True)`` does), so each keeps the
full height instead of a slice of it. :func:`fit_window` sizes the main window to the
screen's available area with the plugin docks taking a bounded share of its width.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QComboBox,
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

__all__ = ["COMBO_CHARS", "DOCK_SHARE", "compact_combos", "dock_of", "fit_window", "scroll_area",
           "scroll_body"]

#: Characters a combo box shows at least (longer entries are elided; the popup shows them).
COMBO_CHARS = 14
#: Largest share of the window's width given to the plugin's docks by :func:`fit_window`.
DOCK_SHARE = 0.3


def compact_combos(widget: QWidget) -> None:
    """Let the combo boxes under ``widget`` shrink to :data:`COMBO_CHARS` characters."""
    policy = QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
    for combo in widget.findChildren(QComboBox):
        if combo.sizeAdjustPolicy() != policy:
            combo.setSizeAdjustPolicy(policy)
            combo.setMinimumContentsLength(COMBO_CHARS)


class _FitWidth(QObject):
    """Keeps the scroll area as wide as its contents need (no horizontal scroll bar) and the
    combo boxes added to the contents compact."""

    def __init__(self, area: QScrollArea, body: QWidget) -> None:
        super().__init__(area)
        self._area, self._body = area, body
        body.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt override)
        if obj is self._body and event.type() == QEvent.Type.LayoutRequest:
            compact_combos(self._body)
            bar = self._area.verticalScrollBar().sizeHint().width()
            width = self._body.minimumSizeHint().width() + bar + 2 * self._area.frameWidth()
            if self._area.minimumWidth() != width:
                self._area.setMinimumWidth(width)
        return False


def _join_tabs(ref: weakref.ref) -> None:
    """Tabify the dock of the widget ``ref()`` with the last visible dock of this plugin in
    the same area of the main window (unless it is not docked or already tabified)."""
    widget = ref()
    if widget is None:
        return
    dock = dock_of(widget)
    window = None if dock is None else dock.parentWidget()
    if not isinstance(window, QMainWindow) or dock.isFloating():
        return
    if window.tabifiedDockWidgets(dock):
        return
    area = window.dockWidgetArea(dock)
    ours = [d for d in window.findChildren(QDockWidget)
            if d is not dock and not d.isFloating() and d.isVisibleTo(window)
            and window.dockWidgetArea(d) == area and d.widget() is not None
            and scroll_area(d.widget()) is not None]
    if ours:
        window.tabifyDockWidget(ours[-1], dock)
        dock.show()
        dock.raise_()


def scroll_body(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area filling it and return the layout of its contents.

    Use it instead of ``QVBoxLayout(widget)``: what is added to the returned layout scrolls
    vertically when the dock is shorter than the contents, so opening a section or adding
    rows never makes the dock (or napari's window) taller. The contents are reachable as
    ``scroll_area(widget).widget()``.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setObjectName("napari-unetseg-scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    body = QWidget()
    area.setWidget(body)
    outer.addWidget(area)
    _FitWidth(area, body)
    # napari docks a widget right after making it: join the other docks once it is there
    # (a timer of the widget, so it never fires for a widget deleted before)
    timer = QTimer(widget)
    timer.setSingleShot(True)
    timer.timeout.connect(functools.partial(_join_tabs, weakref.ref(widget)))
    timer.start(0)
    return QVBoxLayout(body)


def scroll_area(widget: QWidget) -> QScrollArea | None:
    """The scroll area :func:`scroll_body` gave ``widget``, or None."""
    return widget.findChild(QScrollArea, "napari-unetseg-scroll",
                            Qt.FindChildOption.FindDirectChildrenOnly)


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock widget holding ``widget``, or None when it is not docked."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def fit_window(widgets: Sequence[QWidget], share: float = DOCK_SHARE) -> QMainWindow | None:
    """Size the main window holding ``widgets`` to its screen's available area and give
    their docks at most ``share`` of its width (at least what they need), so the canvas,
    not the widgets, takes most of the screen. Returns the window (None without docks)."""
    docks = [d for d in (dock_of(w) for w in widgets) if d is not None]
    if not docks:
        return None
    window = docks[0].parentWidget()
    if not isinstance(window, QMainWindow):
        return None
    screen = window.screen() or QApplication.primaryScreen()
    geometry = screen.availableGeometry()
    window.setGeometry(geometry)
    need = max(d.minimumSizeHint().width() for d in docks)
    width = max(need, int(share * geometry.width()))
    window.resizeDocks(docks, [width] * len(docks), Qt.Orientation.Horizontal)
    return window
