"""napari dock widgets: the only part of napari-unetseg that imports qtpy and napari.

Each widget is thin: it reads its fields, builds a config, runs a core generator in a worker
(:mod:`._worker`) and writes layers. The widgets of one viewer share its model through
:func:`._registry.store_for`. The manifest names the classes in their modules, so opening
one widget imports only what it needs.
"""

from __future__ import annotations

__all__ = ["LevelsWidget", "SegmentWidget", "TrainWidget", "WeightMapWidget"]

_WHERE = {
    "LevelsWidget": "levels",
    "SegmentWidget": "segment",
    "TrainWidget": "train",
    "WeightMapWidget": "weightmap",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
