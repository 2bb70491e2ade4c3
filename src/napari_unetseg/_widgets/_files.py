"""Save model… / Load model…: file dialogs, an explicit overwrite question, io calls.

The dialogs are module functions so that tests can replace them. A model file is written with
:func:`napari_unetseg.io.save_model` (atomically, with the mode a new file gets from the
umask), with ``overwrite=True`` only after the user said yes, and a notification says where.
The dialogs open in the folder last saved to or loaded from in this session
(:func:`last_folder`), so Load finds the model just saved.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from ..io import MODEL_SUFFIX, SavedModel, load_model, save_model
from . import _common

__all__ = ["ask_open_path", "ask_save_path", "confirm_overwrite", "last_folder", "load_package",
           "load_with_dialog", "remember_folder", "save_with_dialog"]

_FILTER = f"napari-unetseg model (*{MODEL_SUFFIX});;All files (*)"
_last: dict[str, Path] = {}  # "folder" -> the folder of the last model file saved or loaded


def last_folder() -> Path | None:
    """The folder of the model file last saved or loaded in this session, or None."""
    return _last.get("folder")


def remember_folder(path: str | Path) -> None:
    """Make the folder of ``path`` the one the next file dialog opens in."""
    _last["folder"] = Path(path).resolve().parent


def _start(name: str = "") -> str:
    folder = last_folder()
    if folder is None or not folder.is_dir():
        return name
    return str(folder / name) if name else str(folder)
_OPEN_FILTER = (f"napari-unetseg model or bioimage.io package (*{MODEL_SUFFIX} *.zip *.yaml);;"
                f"{_FILTER}")


def ask_save_path(parent: QWidget | None) -> str:
    """Ask where to save; '' when cancelled. Overwriting is asked separately."""
    path, _ = QFileDialog.getSaveFileName(
        parent, "Save model", _start(f"model{MODEL_SUFFIX}"), _FILTER,
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    return path


def ask_open_path(parent: QWidget | None) -> str:
    """Ask which model file to open; '' when cancelled."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", _start(), _OPEN_FILTER)
    return path


def confirm_overwrite(parent: QWidget | None, path: Path) -> bool:
    """Ask whether to replace the existing file ``path``."""
    answer = QMessageBox.question(
        parent, "Replace model file?", f"{path} already exists. Replace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def save_with_dialog(parent: QWidget | None, saved: SavedModel | None) -> Path | None:
    """Ask for a path and write ``saved`` there; returns the path written, or None."""
    if saved is None:
        _common.error("Save model: there is no model yet; train one first.", parent)
        return None
    text = ask_save_path(parent)
    if not text:
        return None
    path = Path(text)
    if not path.suffix:
        path = path.with_suffix(MODEL_SUFFIX)
    overwrite = path.exists()
    if overwrite and not confirm_overwrite(parent, path):
        return None
    try:
        written = save_model(
            path, saved.model, normalization=saved.normalization,
            class_values=saved.class_values, class_names=saved.class_names or None,
            metadata=saved.metadata, overwrite=overwrite,
        )
    except (OSError, ValueError, TypeError) as e:
        _common.error(f"Save model: could not write {path}: {e}", parent)
        return None
    remember_folder(written)
    _common.info(f"Saved the model to {written}", parent)
    return written


def load_with_dialog(parent: QWidget | None, store: Any) -> SavedModel | None:
    """Ask for a model file, load it and make it the viewer's model; returns it or None.

    A bioimage.io package is read in a worker instead (it is validated for a few seconds);
    it becomes the viewer's model when done, and None is returned."""
    text = ask_open_path(parent)
    if not text:
        return None
    remember_folder(text)
    from ..bioimageio_import import is_bioimageio

    if Path(text).is_file() and is_bioimageio(text):  # read in a worker; the store gets it
        load_package(parent, store, text)
        return None
    try:
        saved = load_model(text)
    except (OSError, ValueError) as e:
        _common.error(f"Load model: {e}", parent)
        return None
    store.set_model(saved, f"file {Path(text).name}")
    return saved


def _read_package(path: str) -> Generator[str, None, SavedModel]:
    from ..bioimageio_import import load_bioimageio

    yield f"reading the bioimage.io package {Path(path).name}"
    return load_bioimageio(path)


def load_package(owner: Any, store: Any, path: str) -> Any:
    """Read a bioimage.io package in a worker (kept as ``owner.bioimageio_job``: Qt holds
    the slots weakly) and make it the viewer's model; returns the job."""
    from ._worker import Job

    name = Path(path).name

    def done(saved: SavedModel) -> None:
        store.set_model(saved, f"bioimage.io package {name}")
        _common.info(f"Loaded the bioimage.io package {name}", owner)

    job = Job(_read_package(path), "Load bioimage.io package", on_result=done, owner=owner)
    owner.bioimageio_job = job
    return job.start()
