"""Open napari ready to work: the EM sample loaded and the plugin's widgets docked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari

PLUGIN = "napari-unetseg"
DEFAULT_WIDGETS = ("Train", "Segment")
#: The widgets' display names, as in the manifest (napari.yaml).
WIDGETS = ("Train", "Segment", "Weight map preview", "UNet++ levels")


def launch(
    viewer: napari.Viewer, *, sample: bool = True, widgets: Sequence[str] = DEFAULT_WIDGETS
) -> dict[str, Any]:
    """Load the bundled EM sample into ``viewer`` and dock the named widgets.

    Returns the docked widgets by display name (``"Train"``, ``"Segment"``,
    ``"Weight map preview"``, ``"UNet++ levels"``).
    """
    if sample:
        viewer.open_sample(PLUGIN, "em_stack")
    docked = {}
    for name in widgets:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        docked[name] = widget
    return docked


def main(sample: bool = True, widgets: Sequence[str] = DEFAULT_WIDGETS) -> None:
    """Start napari with :func:`launch` applied, and run its event loop."""
    import napari

    viewer = napari.Viewer(title="napari-unetseg")
    launch(viewer, sample=sample, widgets=widgets)
    napari.run()
