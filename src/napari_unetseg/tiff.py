"""TIFF images and stacks in and out (re-exported by :mod:`napari_unetseg.io`)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write, available_memory, describe_bytes, one_line, open_regular

__all__ = ["MAX_IMAGE_BYTES", "read_tif", "write_tif"]

#: Largest image read into memory; None: half the machine's free memory (when known).
MAX_IMAGE_BYTES: int | None = None


def read_tif(path: str | os.PathLike) -> np.ndarray:
    """Read a TIFF image or stack into memory with tifffile, with clear errors.

    Only a regular file is opened. Its declared size is checked against :data:`MAX_IMAGE_BYTES`
    (or the free memory) before the pixels are read. A file holding pages of different shapes,
    or that tifffile reports damaged (a broken page chain, a stack whose metadata declare more
    pages than it has, corrupt compressed data), is refused: never silently reduced to part of
    its pages.

    Raises
    ------
    FileNotFoundError, IsADirectoryError, OSError
        No such file, a folder, a permission or I/O error.
    ValueError
        Not a TIFF, damaged, mixed page shapes, too large (``files.SpecialFileError`` for a
        device, FIFO or socket).
    """
    import tifffile

    path = Path(path)
    with open_regular(path, "a TIFF file") as fh, _tifffile_errors() as damage:
        try:
            with tifffile.TiffFile(fh) as tif:
                _check_series(tif, path, damage)
                data = tif.asarray()
        except MemoryError:
            raise
        except OSError as e:
            if e.errno:  # a real I/O error, not tifffile's "not a TIFF"
                raise
            raise ValueError(f"{path} is not a readable TIFF file: {one_line(e)}") from e
        except Exception as e:  # noqa: BLE001 - any decoder error of untrusted bytes
            if damage:
                raise ValueError(f"{path} is a damaged TIFF file: {damage[0]}") from e
            raise ValueError(f"{path} is not a readable TIFF file: {one_line(e)}") from e
    if damage:
        raise ValueError(f"{path} is a damaged TIFF file: {damage[0]}")
    return data


def _check_series(tif: Any, path: Path, damage: list[str]) -> None:
    """One image (series) of a size that fits: checked before any pixel is read."""
    if damage:
        raise ValueError(f"{path} is a damaged TIFF file: {damage[0]}")
    series = tif.series
    if not series:
        raise ValueError(f"{path} holds no image")
    if len(series) > 1:
        shapes = ", ".join(f"{tuple(s.shape)} {np.dtype(s.dtype)}" for s in series[:4])
        raise ValueError(f"{path} holds {len(series)} images of different shapes or types "
                         f"({shapes}{', …' if len(series) > 4 else ''}); expected one image or "
                         "a stack of equal pages")
    shape, dtype = tuple(series[0].shape), np.dtype(series[0].dtype)
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    free = available_memory()
    limit = MAX_IMAGE_BYTES if MAX_IMAGE_BYTES is not None else (
        None if free is None else free // 2)
    if limit is not None and need > limit:
        raise ValueError(f"{path} declares an image of {describe_bytes(need)} (shape {shape}, "
                         f"{dtype}), more than napari-unetseg reads into memory here "
                         f"({describe_bytes(limit)}); crop it, or convert it to zarr and "
                         "predict blockwise (-o OUT.zarr)")


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs in this thread (it logs damage such as a broken page
    chain or a stack shorter than its metadata, then reads what it can) and keep them out of
    the log: the caller turns them into one error."""
    messages: list[str] = []
    me = threading.get_ident()

    def keep(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or record.thread != me:
            return True
        text = re.sub(r"<[^>]*> ?", "", record.getMessage())  # drop object reprs
        messages.append(" ".join(text.split())[:300])
        return False

    logger = logging.getLogger("tifffile")
    logger.addFilter(keep)
    try:
        yield messages
    finally:
        logger.removeFilter(keep)


def write_tif(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    overwrite: bool = False,
    compression: str | None = "zlib",
) -> Path:
    """Write ``array`` as a (multi-page) TIFF atomically; never replaces a file silently
    (see :func:`napari_unetseg.files.atomic_write` for what may be replaced and file modes)."""
    import tifffile

    with atomic_write(path, overwrite=overwrite) as fh:
        tifffile.imwrite(fh, np.asarray(array), compression=compression, photometric="minisblack")
    return Path(path)
