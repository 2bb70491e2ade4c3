"""``napari-unetseg gui``: open napari with the sample and the widgets docked."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    CliError,
)


def run(args: argparse.Namespace) -> int:
    try:
        from .._widgets.launch import main as launch_napari
    except ImportError as e:
        raise CliError(f"napari is not installed ({e}); pip install 'napari[all]'") from e
    widgets = [w.strip() for w in args.widgets.split(",") if w.strip()]
    launch_napari(sample=not args.no_sample, widgets=widgets)
    return 0


def add_parser(sub: Any) -> None:
    g = sub.add_parser("gui", help="open napari with the EM sample and the widgets docked")
    g.add_argument("--no-sample", action="store_true", help="do not open the EM sample")
    g.add_argument("--widgets", default="Train,Segment",
                   help="comma-separated: Train, Segment, Weight map preview, UNet++ levels")
    g.set_defaults(func=run)
