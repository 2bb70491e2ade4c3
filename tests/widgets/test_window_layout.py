"""The window stays usable with every widget docked: on the 1600 x 1000 screen pytest-xvfb
gives (pyproject), no window manager, the docks scroll instead of growing the window, share
one tabbed dock instead of being squeezed over each other, and every button can be seen."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QRect
from qtpy.QtWidgets import QApplication, QPushButton

from napari_unetseg._widgets._layout import DOCK_SHARE, dock_of, scroll_area
from napari_unetseg._widgets.launch import launch

PLUGIN = "napari-unetseg"

ALL = ("Train", "Segment", "Weight map preview", "UNet++ levels")
#: The button of each widget that must be on screen without scrolling.
PRIMARY = {"Train": "Train", "Segment": "Segment", "Weight map preview": "Whole stack",
           "UNet++ levels": "Measure all levels"}


def _in_window(widget, window) -> QRect:
    return QRect(widget.mapTo(window, widget.rect().topLeft()), widget.size())


def _shown(dock) -> bool:
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


def _check_buttons(name, widget, docks, window, scrolled: bool) -> list[str]:
    """Buttons of ``widget`` that are clipped (outside its scroll viewport or dock, or the
    window) or covered by another dock on screen."""
    area, dock = scroll_area(widget), dock_of(widget)
    view, frame = _in_window(area.viewport(), window), _in_window(dock, window)
    others = [_in_window(d, window) for d in docks if d is not dock and _shown(d)]
    bad = []
    for button in widget.findChildren(QPushButton):
        if not button.isVisibleTo(widget) or button.parent() is None:
            continue
        if scrolled:
            area.ensureWidgetVisible(button, 0, 0)
            QApplication.processEvents()
        elif button.text() != PRIMARY[name]:
            continue
        rect = _in_window(button, window)
        if not (view.contains(rect) and frame.contains(rect) and window.rect().contains(rect)
                and not any(o.intersects(rect) for o in others)):
            bad.append(f"{name}: {button.text()!r} at {rect} (view {view}, dock {frame})")
    return bad


@pytest.mark.gui
def test_four_widgets_fit_the_screen_with_advanced_open(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    widgets = launch(viewer, widgets=ALL)
    docks = [dock_of(w) for w in widgets.values()]
    window = docks[0].window()
    screen = window.screen().availableGeometry()
    qtbot.waitUntil(lambda: _shown(docks[0]), timeout=5000)  # Train is the tab shown first
    widgets["Train"].form.advanced.expand(animate=False)
    qtbot.wait(50)
    assert screen.contains(window.frameGeometry()), (window.frameGeometry(), screen)
    assert window.minimumSizeHint().height() <= screen.height()
    assert docks[0].width() <= DOCK_SHARE * window.width() + 1  # the canvas gets the rest
    # 'gui' fills the screen, and the canvas is its widest part: at 1600 px about 770 px, with
    # napari's layer docks (320 px, their minimum) on the left and the plugin's (480) right
    assert window.width() >= 0.9 * screen.width() and window.height() >= 0.9 * screen.height()
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= max(0.45 * screen.width(), 1.5 * docks[0].width()), (
        canvas.width(), docks[0].width(), screen.width())
    assert len(window.tabifiedDockWidgets(docks[0])) == len(ALL) - 1
    for (name, widget), dock in zip(widgets.items(), docks, strict=True):
        dock.raise_()
        qtbot.waitUntil(lambda d=dock: _shown(d), timeout=5000)
        assert [d for d in docks if _shown(d)] == [dock]  # tabs: one shown, never overlapping
        assert _check_buttons(name, widget, docks, window, scrolled=False) == []
        assert _check_buttons(name, widget, docks, window, scrolled=True) == []


@pytest.mark.gui
def test_advanced_scrolls_and_collapses_back(make_napari_viewer, qtbot):
    """Docked from the Plugins menu (no tabify asked), the widgets still join one tabbed
    dock; opening Advanced makes Train's contents scroll, not the window taller, and
    closing it gives the height back."""
    viewer = make_napari_viewer(show=True)
    widgets = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[1] for n in ALL}
    train = widgets["Train"]
    window = dock_of(train).window()
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(dock_of(train))) == len(ALL) - 1,
                    timeout=5000)
    body = scroll_area(train).widget()
    start_window, start_body = window.size(), body.minimumSizeHint().height()
    start_min = window.minimumSizeHint().height()
    train.form.advanced.expand(animate=False)
    qtbot.waitUntil(lambda: body.minimumSizeHint().height() > start_body + 100, timeout=5000)
    qtbot.wait(50)
    assert window.size() == start_window
    assert window.minimumSizeHint().height() == start_min  # the contents did not push it
    train.form.advanced.collapse(animate=False)
    qtbot.waitUntil(lambda: body.minimumSizeHint().height() == start_body, timeout=5000)
    assert window.size() == start_window
