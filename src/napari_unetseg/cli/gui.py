"""``napari-unetseg gui``: open napari with the sample and the widgets docked."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ._common import CliError, example


def run(args: argparse.Namespace) -> int:
    from .._widgets.launch import WIDGETS

    widgets = [w.strip() for w in args.widgets.split(",") if w.strip()]
    for name in widgets:
        if name not in WIDGETS:
            raise CliError(f"--widgets: unknown widget {name!r}; known: {', '.join(WIDGETS)}")
    _check_display()
    try:
        from .._widgets import launch
    except ImportError as e:  # pragma: no cover - napari is a dependency
        raise CliError(f"napari is not installed ({e}); pip install 'napari[all]'") from e
    launch.main(sample=not args.no_sample, widgets=widgets)
    return 0


def _check_display() -> None:
    """On Linux, Qt aborts the process without a display: say so in one line instead."""
    if not sys.platform.startswith("linux"):
        return
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY") or os.environ.get(
            "WAYLAND_DISPLAY"):
        return
    raise CliError("no display: napari needs a graphical session (DISPLAY is not set); run it "
                   "under xvfb-run -a, over ssh -X, or with QT_QPA_PLATFORM=offscreen")


def add_parser(sub: Any) -> None:
    g = sub.add_parser("gui", help="open napari with the EM sample and the widgets docked",
                       epilog=example("napari-unetseg gui --widgets Train,Segment,"
                                      "\"UNet++ levels\""))
    g.add_argument("--no-sample", action="store_true", help="do not open the EM sample")
    g.add_argument("--widgets", default="Train,Segment",
                   help="comma-separated: Train, Segment, Weight map preview, UNet++ levels")
    g.set_defaults(func=run)
