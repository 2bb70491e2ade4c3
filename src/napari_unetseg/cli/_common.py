"""What every subcommand shares: the one-line error, argument parsing helpers, progress."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


class CliError(Exception):
    """An error to report to the user as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` of every subcommand: each option's one-line help ends with its default
    ("(default: X)", "(default: off)" for a switch) unless it says the default itself (a
    default of None or "" must, in words: tests/test_cli_help.py checks), and the epilog's
    example keeps its lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (isinstance(action, argparse._HelpAction) or not action.option_strings
                or action.required or "default:" in text):
            return text
        if action.nargs == 0:  # store_true / store_const
            return f"{text} (default: off)"
        if action.default in (None, "", argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(("example:", "examples:")):  # command lines, one per line
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def example(*lines: str) -> str:
    """A subcommand's ``--help`` epilog: ``example(s):`` and the command lines, indented."""
    head = "example:" if len(lines) == 1 else "examples:"
    return head + "\n" + "\n".join(f"  {line}" for line in lines)


def interrupted(e: KeyboardInterrupt, detail: str) -> KeyboardInterrupt:
    """``e`` (Ctrl-C, SIGTERM or SIGHUP) with what the command kept, for ``main``'s one line:
    ``raise interrupted(e, "no model written")``."""
    e.detail = detail  # type: ignore[attr-defined]
    return e


def parse_slices(text: str | None) -> slice | None:
    """``"0:25"`` -> slice(0, 25); ``"7"`` -> slice(7, 8); None -> None."""
    if text is None:
        return None
    try:
        if ":" in text:
            parts = [int(p) if p.strip() else None for p in text.split(":")]
            if len(parts) > 3:
                raise ValueError
            return slice(*parts)
        i = int(text)
        return slice(i, i + 1)
    except ValueError:
        raise CliError(f"--slices must look like 0:25 or 7, got {text!r}") from None


def select_slices(text: str | None, n: int) -> slice | None:
    """``--slices`` for a stack of ``n`` slices, as Python indexes it (``-1`` is the last,
    ``-5:`` the last five, ``::2`` every other one), as a slice with non-negative bounds.

    Raises CliError for an index or bound beyond the stack (Python would clamp it silently),
    a step of 0, a reversed range and a range that selects nothing.
    """
    sl = parse_slices(text)
    if sl is None:
        return None
    if ":" not in text:
        if not -n <= sl.start < n:
            raise CliError(f"--slices {text} is out of range for a stack of {n} slices "
                           f"(0..{n - 1}, or -{n}..-1 from the end)")
        i = sl.start % n
        return slice(i, i + 1)
    if sl.step == 0:
        raise CliError("--slices step must not be 0")
    if any(v is not None and not -n <= v <= n for v in (sl.start, sl.stop)):
        raise CliError(f"--slices {text} is out of range for a stack of {n} slices "
                       f"(bounds -{n}..{n})")
    r = range(n)[sl]
    if not r:
        a, b = (range(n)[slice(v, v + 1 if v != -1 else None)].start if v is not None else None
                for v in (sl.start, sl.stop))
        if (sl.step or 1) > 0 and a is not None and b is not None and a > b:
            raise CliError(f"--slices {text} is a reversed range (did you mean {b}:{a}?)")
        raise CliError(f"--slices {text} selects no slice of a stack of {n}")
    return slice(r.start, r.stop if r.stop >= 0 else None, r.step)


def z_slices(image: np.ndarray, text: str | None, channel_axis: int | None,
             what: str) -> np.ndarray:
    """``image`` cut to ``--slices`` along its z axis (the first axis that is not the channel
    axis); CliError for a 2-D image (``what`` names it)."""
    if text is None:
        return image
    c = None if channel_axis is None else channel_axis % image.ndim
    if image.ndim - (c is not None) < 3:
        raise CliError(f"--slices needs a stack (Z, Y, X); {what} is 2-D")
    z = 1 if c == 0 else 0
    index = [slice(None)] * image.ndim
    index[z] = select_slices(text, image.shape[z])
    return image[tuple(index)]


def check_channel_axis(shape: tuple[int, ...], axis: int | None) -> None:
    """``--channel-axis`` must name an axis of the image, as Python indexes it."""
    if axis is not None and not -len(shape) <= axis < len(shape):
        raise CliError(f"--channel-axis {axis} is out of range for an image of shape "
                       f"{tuple(shape)} (0..{len(shape) - 1}, or -1 for the last)")


#: How the core's messages name an API argument, and the CLI flag that sets it.
_WORDING = [
    (re.compile(r"pass overwrite=True"), "pass --overwrite"),
    (re.compile(r"pass resume=False"), "pass --overwrite"),
    (re.compile(r"pass block=None"), "leave out --block"),
    (re.compile(r"pass channel_axis\b"), "pass --channel-axis"),
    (re.compile(r"labels_mode='(\w+)'"), r"--labels-mode \1"),
    (re.compile(r"device='(\w+)'"), r"--device \1"),
    (re.compile(r"model_config\.classes\b"), "--classes"),
]
_ARGUMENT = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)(=| must\b)")


def cli_wording(text: str, flags: dict[str, str] | None = None) -> str:
    """A core message with API argument names replaced by the CLI flags that set them:
    fixed phrases, then ``name must ...`` / ``name=value`` for every ``name`` in ``flags``
    (argparse dest -> option string, e.g. ``{"batch_size": "--batch-size"}``)."""
    for pattern, repl in _WORDING:
        text = pattern.sub(repl, text)
    if flags:
        text = _ARGUMENT.sub(lambda m: (flags[m[1]] + (" " if m[2] == "=" else m[2]))
                             if m[1] in flags else m[0], text)
    return text


class Progress:
    """A one-line progress bar on stderr (redrawn at most a few times a second)."""

    def __init__(self, label: str, stream=None, min_interval: float = 0.25) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, total: int, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval and done < total:
            return
        self._last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 24)
        line = f"{self.label} [{bar:<24}] {done}/{total} {extra}"
        if self._tty:
            self.stream.write("\r" + line[:120].ljust(120))
        elif force or done >= total or now - getattr(self, "_last_nl", 0.0) > 5.0:
            self._last_nl = now
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def read_image(path: str) -> np.ndarray:
    from ..io import read_tif

    return read_tif(path)


def check_output(out: Path, overwrite: bool, inputs: tuple = ()) -> None:
    """Refuse an output path that cannot be written before any long work starts: not a
    regular file (a device, FIFO, link, folder), one of the ``inputs``, an existing file
    without ``--overwrite``, a missing folder, no permission."""
    from ..files import check_output as check

    check(out, overwrite, [i for i in inputs if i], flag="--overwrite")


def check_output_store(store: str, source: str) -> None:
    """A zarr output path: a zarr store, an empty folder or a new path in an existing folder,
    and not the input (see :func:`napari_unetseg.blockwise.check_store`)."""
    from ..blockwise import check_store

    check_store(store, source)


def refuse_rgb(image: np.ndarray, channel_axis: int | None) -> None:
    """A (Y, X, 3|4) TIFF is RGB(A), not a stack of 3-pixel-wide slices."""
    if channel_axis is None and image.ndim == 3 and image.shape[-1] in (3, 4) and min(
            image.shape[:2]) > image.shape[-1]:
        raise CliError(f"image of shape {image.shape} looks like RGB(A) (Y, X, channels); "
                       "convert it to one channel, or pass --channel-axis -1 for a model "
                       "trained on that many channels")


def summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps", "seconds", "best_step", "best_val_dice", "device")
    return {k: meta[k] for k in keys if k in meta}


def one_line(e: BaseException, limit: int = 400) -> str:
    """The message of ``e`` on one line, at most ``limit`` characters."""
    from ..files import one_line as short

    return short(e, limit)
