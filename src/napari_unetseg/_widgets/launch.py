"""Open napari ready to work: the EM sample loaded and the plugin's widgets docked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-unetseg"
TITLE = "napari-unetseg"
DEFAULT_WIDGETS = ("Train", "Segment")
#: The widgets' display names, as in the manifest (napari.yaml).
WIDGETS = ("Train", "Segment", "Weight map preview", "UNet++ levels")


def launch(
    viewer: napari.Viewer, *, sample: bool = True, widgets: Sequence[str] = DEFAULT_WIDGETS,
    fit: bool = True,
) -> dict[str, Any]:
    """Load the bundled EM sample into ``viewer`` and dock the named widgets.

    The widgets share one tabbed dock on the right (the first one shown), so each gets the
    window's full height. With ``fit``, the window is sized to the screen's available area
    with the docks taking at most :data:`._layout.DOCK_SHARE` of its width.

    Returns the docked widgets by display name (``"Train"``, ``"Segment"``,
    ``"Weight map preview"``, ``"UNet++ levels"``).
    """
    from qtpy.QtCore import QTimer

    from ._layout import dock_of, fit_window

    if sample:
        viewer.open_sample(PLUGIN, "em_stack")
    docked = {}
    for name in widgets:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        docked[name] = widget
    if docked:
        first = dock_of(next(iter(docked.values())))
        if fit:
            fit_window(list(docked.values()))

        def settle() -> None:  # once Qt has made the tab bar and resized the canvas
            if first is not None:
                first.raise_()
            if fit:
                viewer.reset_view()  # the sample fills the canvas at its new size

        QTimer.singleShot(0, settle)
    return docked


def main(sample: bool = True, widgets: Sequence[str] = DEFAULT_WIDGETS) -> None:
    """Start napari with :func:`launch` applied, maximised, and run its event loop."""
    import napari

    viewer = napari.Viewer(title=TITLE)
    docked = launch(viewer, sample=sample, widgets=widgets)
    if docked:  # a window manager may not honour the geometry fit_window set: ask it too
        next(iter(docked.values())).window().showMaximized()
    napari.run()
