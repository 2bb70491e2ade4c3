"""Command line: ``napari-unetseg train | predict | evaluate | export | demo | gui``.

Works on TIFF files through tifffile. Every command reports progress on stderr, and any input
error ends with a one-line message and a non-zero exit code instead of a traceback. One module
per subcommand (each has ``add_parser(sub)`` and ``run(args)``); ``_common`` holds what they
share.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from . import demo, evaluate, export, gui, predict, train
from ._common import (
    CliError,
    HelpFormatter,
    Progress,
    cli_wording,
    example,
    one_line,
    parse_slices,
)
from .evaluate import evaluate_arrays
from .predict import run_prediction

__all__ = ["CliError", "Progress", "build_parser", "evaluate_arrays", "main", "parse_slices",
           "run_prediction"]

SUBCOMMANDS = (train, predict, evaluate, export, demo, gui)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-unetseg",
        description="Train and apply U-Net / UNet++ / residual U-Net segmentation models.",
        formatter_class=HelpFormatter,
        epilog=example("napari-unetseg demo", "napari-unetseg predict bundled stack.tif "
                       "-o labels.tif", "napari-unetseg COMMAND --help   (its options, "
                       "defaults and an example)"),
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for parser in sub.choices.values():  # every option's help names its default
        parser.formatter_class = HelpFormatter
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_negative_values(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    received: list[int] = []
    with _signals_interrupt(received, args.command != "gui"):
        return _run(args, received, _flags(parser, args.command))


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """argparse dest -> option string of ``command`` (``batch_size`` -> ``--batch-size``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.option_strings[-1] for a in sub.choices[command]._actions
            if a.option_strings and a.dest != "help"}


def _negative_values(argv: list[str]) -> list[str]:
    """``--slices -5:`` as ``--slices=-5:``: argparse takes a value starting with '-' (other
    than a plain negative number) for an option, and slices count from the end like Python."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--slices" and arg.startswith("-") and out:
            out[-1] = f"--slices={arg}"
        else:
            out.append(arg)
    return out


def _run(args: argparse.Namespace, received: list[int], flags: dict[str, str]) -> int:
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, TypeError, OSError) as e:
        print(f"napari-unetseg {args.command}: error: {cli_wording(one_line(e), flags)}",
              file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # torch says "out of memory" (CUDA) or
        if not isinstance(e, MemoryError) and not _out_of_memory(str(e)):  # "can't allocate
            raise  # memory" (CPU); any other RuntimeError is a bug
        print(f"napari-unetseg {args.command}: error: out of memory ({one_line(e, 160)}); "
              "try a smaller --batch-size, --patch-size or --tile, or --device cpu",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = received[0] if received else signal.SIGINT
        detail = getattr(e, "detail", "")
        print(f"napari-unetseg {args.command}: interrupted ({signal.Signals(signum).name})"
              + (f"; {detail}" if detail else ""), file=sys.stderr)
        return 128 + signum


def _out_of_memory(text: str) -> bool:
    text = text.lower()
    return any(s in text for s in ("out of memory", "out of gpu memory",
                                   "can't allocate memory", "cannot allocate memory"))


@contextlib.contextmanager
def _signals_interrupt(received: list[int], install: bool) -> Iterator[None]:
    """SIGTERM and SIGHUP end a command as Ctrl-C does: a KeyboardInterrupt that unwinds the
    work, so temporary files are removed and no partial output is left. Later signals are
    ignored while it unwinds."""
    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    if not install or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for name in names:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        received.append(signum)
        raise KeyboardInterrupt

    old = {name: signal.signal(getattr(signal, name), handler) for name in names}
    try:
        yield
    finally:
        for name, previous in old.items():
            signal.signal(getattr(signal, name), previous)
