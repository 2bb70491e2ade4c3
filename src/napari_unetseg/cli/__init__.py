"""Command line: ``napari-unetseg train | predict | evaluate | demo | gui``.

Works on TIFF files through tifffile. Every command reports progress on stderr, and any input
error ends with a one-line message and a non-zero exit code instead of a traceback. One module
per subcommand (each has ``add_parser(sub)`` and ``run(args)``); ``_common`` holds what they
share.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import demo, evaluate, gui, predict, train
from ._common import CliError, Progress, one_line, parse_slices
from .evaluate import evaluate_arrays
from .predict import run_prediction

__all__ = ["CliError", "Progress", "build_parser", "evaluate_arrays", "main", "parse_slices",
           "run_prediction"]

SUBCOMMANDS = (train, predict, evaluate, demo, gui)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-unetseg",
        description="Train and apply U-Net / UNet++ / residual U-Net segmentation models.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, TypeError, OSError) as e:
        print(f"napari-unetseg {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # CUDA OOM is a RuntimeError; others are bugs
        text = str(e).lower()
        if not isinstance(e, MemoryError) and "out of memory" not in text and (
                "out of gpu memory" not in text):
            raise
        print(f"napari-unetseg {args.command}: error: out of memory ({one_line(e)[:200]}); "
              "try a smaller --batch-size, --patch-size or --tile, or --device cpu",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unetseg {args.command}: interrupted", file=sys.stderr)
        return 130
