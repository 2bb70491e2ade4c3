"""Work for the screen only while it can be seen.

The plugin's docks are tabs of one dock (:mod:`._layout`). A widget behind another tab still
receives every slice move and every stroke, and a widget that recomputes its view on those
(the UNet++ levels, the weight-map preview) would compete with a training the user watches in
the Train tab. :class:`OnScreen` tells such a widget whether to compute now; when it says no,
the widget's ``run`` is called once its tab comes to the front.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from qtpy.QtWidgets import QDockWidget, QWidget

from ._layout import dock_of


class OnScreen:
    """Whether ``widget`` can be seen; ``run`` is called when it comes on screen after a
    :meth:`allows` that said no.

    A widget that is not docked, or whose window is not shown (scripts, tests that do not show
    the viewer), always computes. A docked widget in a shown window computes while its dock is
    on screen: not a tab behind another, not hidden (the dock's ``visibilityChanged``).
    """

    def __init__(self, widget: QWidget, run: Callable[[], object]) -> None:
        # weak: the widget holds this object, and a cycle would keep a closed widget's
        # wrapper for the garbage collector to delete at any later moment
        self._widget = weakref.ref(widget)
        self._run = weakref.WeakMethod(run)
        self._dock: weakref.ref[QDockWidget] | None = None
        self._visible = True
        self.pending = False  # asked while off screen: run when it comes back

    def allows(self) -> bool:
        """True when the widget can be seen now; else remembers to :attr:`run` later."""
        widget = self._widget()
        dock = None if widget is None else dock_of(widget)
        if dock is None or not dock.window().isVisible():
            return True
        if self._dock is None or dock is not self._dock():  # first look, or docked elsewhere
            self._dock = weakref.ref(dock)
            dock.visibilityChanged.connect(self._changed)
            self._visible = not (dock.isHidden() or dock.visibleRegion().isEmpty())
        if self._visible:
            return True
        self.pending = True
        return False

    def _changed(self, visible: bool) -> None:
        self._visible = bool(visible)
        run = self._run()
        if visible and self.pending and run is not None:
            self.pending = False
            run()
