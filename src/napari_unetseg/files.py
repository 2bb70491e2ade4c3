"""Paths the package reads and writes, checked against hostile and careless input.

Inputs (model files, TIFFs) must be regular files: a symbolic link is followed, but a device,
FIFO, socket or folder is refused *before* it is opened for reading (opening some devices has
side effects; reading ``/dev/zero`` never ends), and checked again on the open descriptor.

Outputs (:func:`check_output`, :func:`atomic_write`):

- only a regular file is ever replaced, and only with ``overwrite=True``; a device, FIFO,
  socket, folder or **symbolic link** at the output path is refused with or without it (a link is
  not followed: writing through it would change a file the caller did not name, and replacing it
  would silently turn a link into a file);
- an output that is the same file as one of the run's inputs is refused, even with
  ``overwrite=True``;
- the output's folder must exist (it is never created) and be writable;
- the data go to a temporary file in that folder, which is moved into place only when complete
  (``os.link`` when not overwriting, so a file that appears meanwhile is not replaced;
  ``os.replace`` otherwise); on any error or interruption it is removed;
- a new file gets the mode the umask gives (``0o666 & ~umask``, as ``open`` would), a replaced
  file keeps its mode (and, where permitted, its owner and group).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["SpecialFileError", "atomic_write", "available_memory", "check_output",
           "describe_bytes", "one_line", "open_regular"]


class SpecialFileError(ValueError):
    """A path names a device, FIFO, socket or symbolic link where a regular file is needed."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def describe_bytes(n: float) -> str:
    """``1536 -> '1.5 kB'`` (decimal units, as file managers show sizes)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def one_line(e: BaseException, limit: int = 300) -> str:
    """The message of ``e`` on one line, cut to ``limit`` characters (a message may quote data
    from a file)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: Linux's ``MemAvailable``, else the
    physical memory where the OS says (macOS), else None."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


# ---------------------------------------------------------------------------- inputs


def open_regular(path: str | os.PathLike, expected: str) -> IO[bytes]:
    """Open ``path`` for reading if it is (a link to) a regular file; ``expected`` names what
    it should be in messages ("a TIFF file").

    Raises FileNotFoundError, IsADirectoryError, :class:`SpecialFileError` (a device, FIFO or
    socket: never opened), or OSError (permission, I/O).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    _check_input_mode(path, st.st_mode, expected)
    # O_NONBLOCK: a FIFO swapped in after the check must not block the open
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_input_mode(path, os.fstat(fd).st_mode, expected)
        os.set_blocking(fd, True)
        fh = open(fd, "rb")  # noqa: SIM115 - returned to the caller
    except BaseException:
        os.close(fd)
        raise
    fh.raw.name = str(path)  # for messages (the descriptor's name is its number)
    return fh


def _check_input_mode(path: Path, mode: int, expected: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path} is a directory; expected {expected}")
    if not stat.S_ISREG(mode):
        raise SpecialFileError(f"{path} is {_kind(mode)}, not a regular file; expected "
                               f"{expected}")


# ---------------------------------------------------------------------------- outputs


def check_output(path: str | os.PathLike, overwrite: bool,
                 inputs: Iterable[str | os.PathLike] = (), *, flag: str = "overwrite=True"
                 ) -> Path:
    """Raise unless ``path`` may be written (see the module docstring); returns it as a Path.

    ``inputs`` are the files the run reads: the output may be none of them. ``flag`` is how
    the caller's user asks to overwrite (the CLI passes ``"--overwrite"``).

    Raises IsADirectoryError, :class:`SpecialFileError`, ValueError (an input), FileExistsError,
    FileNotFoundError (no such folder) or PermissionError.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except NotADirectoryError:
        raise NotADirectoryError(f"{path.parent} is not a folder") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a directory; expected a file path to write")
        if stat.S_ISLNK(st.st_mode):
            raise SpecialFileError(
                f"{path} is a symbolic link (to {os.readlink(path)}); links are not written "
                "through: give the path of a regular file, or remove the link")
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFileError(f"{path} is {_kind(st.st_mode)}, not a regular file; "
                                   "refusing to write over it")
        for other in inputs:
            with contextlib.suppress(OSError):
                if os.path.samefile(path, other):
                    raise ValueError(f"{path} is the same file as the input {other}; write the "
                                     "output to another path")
        if not overwrite:
            raise FileExistsError(f"{path} already exists; pass {flag} to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"no permission to write in {path.parent}")
    return path


def _temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` in ``folder``, created with mode 0o666 so that the
    umask (and a default ACL) applies as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except PermissionError as e:
            raise PermissionError(e.errno, f"no permission to write in {folder}") from e
    raise FileExistsError(f"could not create a temporary file in {folder}")  # pragma: no cover


def _keep_owner_and_mode(fd: int, old: os.stat_result) -> None:
    """Give the new file the replaced file's permissions (and owner/group where allowed)."""
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (old.st_uid, old.st_gid):
        with contextlib.suppress(OSError):  # only root may give a file away
            os.fchown(fd, old.st_uid, old.st_gid)
    os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)  # never carry set-id bits over


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; on success move it to ``path`` atomically.

    ``path`` is checked with :func:`check_output` first. On any exception (including a cancel
    or a signal that raises into the ``with`` body) the temporary file is removed and an
    existing ``path`` is left byte-identical.
    """
    path = check_output(path, overwrite)
    old = os.lstat(path) if overwrite and os.path.lexists(path) else None
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with open(fd, "wb") as fh:  # a named handle (tifffile looks at fh.name)
            fh.raw.name = str(tmp)
            if old is not None:
                _keep_owner_and_mode(fd, old)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _move_into_place(tmp, path, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    exists = FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if overwrite:
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)  # swapped for a link, device or folder since the check?
            if not stat.S_ISREG(st.st_mode):
                raise SpecialFileError(f"{path} became {_kind(st.st_mode)} while writing; "
                                       "refusing to replace it")
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path appeared meanwhile: no silent overwrite
    except FileExistsError:
        raise exists from None
    except OSError:  # file systems without hard links
        if os.path.lexists(path):
            raise exists from None
        os.replace(tmp, path)
